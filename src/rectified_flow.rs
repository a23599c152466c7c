//! The rectified-flow time math shared by the tokenizer and the generator: the
//! dimension-dependent shift, the shift map and the sampler's time grid (paper §3; the
//! reference's `models/rectok.py` and `transport/`; docs/TRAINING.md §0, §2.4, §5 and
//! docs/SAMPLING_EVAL.md §1).
//!
//! Two time conventions meet here, and they run in opposite directions:
//!
//! | | tokenizer (forward flow of the latents) | DiT transport (training and sampling) |
//! |---|---|---|
//! | variable | noise level τ | time t |
//! | τ / t = 0 | clean latent `z` | pure noise `x0` |
//! | τ / t = 1 | pure noise `γ·ε` | data `x1` |
//! | path | `z_τ = (1 − τ)·z + τ·γ·ε` | `x_t = t·x1 + (1 − t)·x0` |
//! | shift applied | always: `τ = S(u)` (also when `s < 1`) | only when `s > 1`: `t = 1 − S(u)` |
//!
//! `S(u) = s·u / (1 + (s − 1)·u)` with the dimension-dependent `s = sqrt(h·w·C / 4096)` (2√2 for
//! the official 16×16×128 latents) pushes `u` towards 1 for `s > 1`: more training at high
//! noise, where large latents still carry signal.

use burn::prelude::*;

/// `s = sqrt(h·w·C / 4096)`: 2√2 for the official 16×16×128 latents, below 1 for small
/// geometries.
pub fn dimension_shift(seq_h: usize, seq_w: usize, channels: usize) -> f64 {
    ((seq_h * seq_w * channels) as f64 / 4096.0).sqrt()
}

/// The shift map `S(u) = s·u / (1 + (s − 1)·u)` on a tensor.
pub fn shift_map<const D: usize>(u: Tensor<D>, s: f64) -> Tensor<D> {
    u.clone() * s / (u * (s - 1.0) + 1.0)
}

/// `S(u)` on one value in float32, as the reference evaluates it (`s − 1` is a Python float).
pub fn shift_f32(u: f32, s: f64) -> f32 {
    (s as f32) * u / (1.0 + ((s - 1.0) as f32) * u)
}

/// The DiT's training time from uniform draws `u`: `1 − S(u)` when `s > 1`, else `u`.
pub fn train_time(u: Tensor<1>, shift: f64) -> Tensor<1> {
    if shift > 1.0 { shift_map(u, shift).neg() + 1.0 } else { u }
}

/// The sampler's time grid of `n` points from 0 (noise) to 1 (data): `flip(S(1) − S(u))` for
/// `s > 1`, `S(u)` for `0 < s ≤ 1`, the plain `linspace(0, 1, n)` for `s ≤ 0` (float32, as the
/// reference's `transport/integrators.py`).
pub fn ode_grid(n: usize, shift: f64) -> Vec<f32> {
    let u = crate::nn::rope::linspace_f32(0.0, 1.0, n);
    if shift <= 0.0 {
        return u;
    }
    let v: Vec<f32> = u.iter().map(|&x| shift_f32(x, shift)).collect();
    if shift > 1.0 {
        let last = *v.last().unwrap_or(&1.0);
        v.iter().rev().map(|&x| last - x).collect()
    } else {
        v
    }
}
