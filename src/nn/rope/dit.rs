//! The DiT^DH RoPE (`DDTVisionRotaryEmbeddingFast` in the reference's `models/layers.py`, EVA
//! style): per axis `dim = head_dim/2` channels with frequencies `10000^(−2i/dim)`, integer
//! positions, each frequency repeated twice *interleaved*, table `[row angles | column angles]`.
//! Because the pair members share one angle, the adjacent-pair rotation is a true rotation here.

use super::RopeTable;
use burn::prelude::*;

/// Host `(freqs_cos, freqs_sin)`, each `(pt_seq_len²) × 2·dim`, computed in float32.
pub fn tables(dim: usize, pt_seq_len: usize) -> (Vec<f32>, Vec<f32>) {
    assert!(dim.is_multiple_of(2), "DiT RoPE needs an even per-axis dim, got {dim}");
    let theta = 10000f32;
    let freqs: Vec<f32> = (0..dim / 2).map(|i| 1.0 / theta.powf((2 * i) as f32 / dim as f32)).collect();
    // `torch.arange(L) / L * pt_seq_len`: float32 division then multiplication, as the reference.
    let l = pt_seq_len;
    let t: Vec<f32> = (0..l).map(|i| i as f32 / l as f32 * pt_seq_len as f32).collect();
    let axis = |p: f32| -> Vec<f32> { freqs.iter().flat_map(|&f| [p * f, p * f]).collect() };
    let width = 2 * dim;
    let mut cos = Vec::with_capacity(l * l * width);
    let mut sin = Vec::with_capacity(l * l * width);
    for &th in &t {
        let row = axis(th);
        for &tw in &t {
            let col = axis(tw);
            for a in row.iter().chain(col.iter()) {
                cos.push(a.cos());
                sin.push(a.sin());
            }
        }
    }
    (cos, sin)
}

/// Device table for a `grid × grid` token grid and head dim `head_dim`.
pub fn table(head_dim: usize, grid: usize, device: &Device) -> RopeTable {
    let (cos, sin) = tables(head_dim / 2, grid);
    RopeTable::from_cos_sin(cos, sin, grid * grid, head_dim, device)
}
