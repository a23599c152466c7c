//! The DINOv3 RoPE (`DINOv3ViTRopePositionEmbedding` of HF transformers 4.56): patch-centre
//! coordinates in [-1, 1] (`y` then `x`), inverse frequencies `100^(−4k/D)` for `k < D/4`, angles
//! `2π·coord·ω` laid out `[y (D/4), x (D/4)]` tiled twice, the **split-half** rotation, and the CLS /
//! register tokens left unrotated. In training mode the coordinates are multiplied by a random
//! `exp(u)`, `u ~ U(−ln 2, ln 2)` (the `pos_embed_rescale = 2` augmentation), passed in explicitly.

use super::{RopeStyle, RopeTable};
use burn::prelude::*;

/// Host `(cos, sin)`, each `(h·w) × head_dim`, in float32 as the reference computes them.
pub fn tables(head_dim: usize, h: usize, w: usize, theta: f32, rescale: Option<f32>) -> (Vec<f32>, Vec<f32>) {
    let quarter = head_dim / 4;
    // `torch.arange(0, 1, 4/D)` then `1 / theta ** x`, float32.
    let inv_freq: Vec<f32> =
        (0..quarter).map(|k| 1.0 / theta.powf((k as f64 * 4.0 / head_dim as f64) as f32)).collect();
    let two_pi = 2.0 * std::f64::consts::PI;
    let mut cos = Vec::with_capacity(h * w * head_dim);
    let mut sin = Vec::with_capacity(h * w * head_dim);
    for i in 0..h {
        for j in 0..w {
            let mut cy = 2.0 * ((i as f32 + 0.5) / h as f32) - 1.0;
            let mut cx = 2.0 * ((j as f32 + 0.5) / w as f32) - 1.0;
            if let Some(r) = rescale {
                cy *= r;
                cx *= r;
            }
            let mut angles: Vec<f32> = Vec::with_capacity(head_dim);
            for coord in [cy, cx] {
                angles.extend(inv_freq.iter().map(|&f| ((two_pi as f32) * coord) * f));
            }
            let half = angles.clone();
            angles.extend(half);
            cos.extend(angles.iter().map(|a| a.cos()));
            sin.extend(angles.iter().map(|a| a.sin()));
        }
    }
    (cos, sin)
}

/// Device table for an `h × w` patch grid after `prefix` CLS/register tokens.
pub fn table(head_dim: usize, h: usize, w: usize, prefix: usize, rescale: Option<f32>, device: &Device) -> RopeTable {
    let (cos, sin) = tables(head_dim, h, w, 100.0, rescale);
    RopeTable::with_style(cos, sin, h * w, head_dim, RopeStyle::SplitHalf, prefix, device)
}
