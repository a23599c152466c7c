//! The tokenizer's 2D RoPE (`get_rope_tensor` in the reference's `models/rectok.py`).
//!
//! For head dim `d` (multiple of 4) and `n = d/4`: frequencies `f_k = 7·(7/7e-4)^(−k/(n−1))`,
//! listed *concatenated* `[f, f]` (not interleaved); the first `d/2` channels carry the row (h)
//! axis, the last `d/2` the column (w) axis; coordinates are `linspace(0, 1, ·)`; angle
//! `2π·coord·f`. Optional CLS/register rows come first with angle 0.
//!
//! **Quirk, reproduced on purpose**: the rotation pairs adjacent channels `(2i, 2i+1)` while the
//! angles are per channel, so the two members of a pair generally use different angles. This is
//! not a norm-preserving rotation, but it is what the released weights were trained with.

use super::{RopeTable, linspace_f32};
use burn::prelude::*;

const MAX_FREQ: f32 = 7.0;
const MIN_FREQ: f64 = 7e-4;

/// Host angles, `(specials + h·w) × dim`, row-major, computed in float32 as PyTorch does.
pub fn angles(dim: usize, seq_h: usize, seq_w: usize, add_cls: bool, n_register: usize) -> Vec<f32> {
    assert!(dim.is_multiple_of(4), "tokenizer RoPE needs a head dim divisible by 4, got {dim}");
    let n = dim / 4;
    // `max_freq / min_freq` is a Python float; PyTorch casts it to float32 for `scalar ** tensor`.
    let ratio = (MAX_FREQ as f64 / MIN_FREQ) as f32;
    let freqs_1d: Vec<f32> = linspace_f32(0.0, -1.0, n).iter().map(|&e| MAX_FREQ * ratio.powf(e)).collect();
    let two_pi = |f: f32| f * 2.0 * std::f32::consts::PI;
    let coord_h = linspace_f32(0.0, 1.0, seq_h);
    let coord_w = linspace_f32(0.0, 1.0, seq_w);
    let specials = usize::from(add_cls) + n_register;
    let mut out = vec![0f32; (specials + seq_h * seq_w) * dim];
    for (i, &yh) in coord_h.iter().enumerate() {
        for (j, &xw) in coord_w.iter().enumerate() {
            let row = &mut out[(specials + i * seq_w + j) * dim..][..dim];
            for c in 0..dim / 2 {
                row[c] = yh * two_pi(freqs_1d[c % n]);
                row[dim / 2 + c] = xw * two_pi(freqs_1d[c % n]);
            }
        }
    }
    out
}

/// The reference's `rope_tensor` layout: `[cos | sin]` along the last dim, `L × 2·dim`.
pub fn reference_table(dim: usize, seq_h: usize, seq_w: usize, add_cls: bool, n_register: usize) -> Vec<f32> {
    let a = angles(dim, seq_h, seq_w, add_cls, n_register);
    let len = a.len() / dim;
    let mut out = Vec::with_capacity(2 * a.len());
    for r in 0..len {
        out.extend(a[r * dim..(r + 1) * dim].iter().map(|v| v.cos()));
        out.extend(a[r * dim..(r + 1) * dim].iter().map(|v| v.sin()));
    }
    out
}

/// Device table for a `seq_h × seq_w` grid without special tokens.
pub fn table(dim: usize, seq_h: usize, seq_w: usize, device: &Device) -> RopeTable {
    table_with_specials(dim, seq_h, seq_w, false, 0, device)
}

/// Device table with optional CLS / register rows (angle 0) before the grid rows.
pub fn table_with_specials(
    dim: usize,
    seq_h: usize,
    seq_w: usize,
    add_cls: bool,
    n_register: usize,
    device: &Device,
) -> RopeTable {
    let a = angles(dim, seq_h, seq_w, add_cls, n_register);
    let len = a.len() / dim;
    RopeTable::from_cos_sin(a.iter().map(|v| v.cos()).collect(), a.iter().map(|v| v.sin()).collect(), len, dim, device)
}
