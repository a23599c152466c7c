//! Forward-flow noising of the latents (flow semantic distillation, paper §3; spec TRAINING.md
//! §2.4) and the dimension-dependent time shift.
//!
//! The tokenizer's noise level τ has **τ = 1 = pure noise**: `z_τ = (1 − τ)·z + τ·γ·ε`. (The DiT
//! transport uses the opposite convention, t = 1 = data.)

use super::config::NoiseSchedule;
use burn::prelude::*;
use burn::tensor::activation::sigmoid;

/// `s = sqrt(h·w·C / 4096)`: 2√2 for the official 16×16×128 latents. It is < 1 for small
/// geometries, and the tokenizer applies it anyway (unlike the DiT, which only shifts for s > 1).
pub fn dimension_shift(seq_h: usize, seq_w: usize, channels: usize) -> f64 {
    ((seq_h * seq_w * channels) as f64 / 4096.0).sqrt()
}

/// The shift map `S(u) = s·u / (1 + (s − 1)·u)`, pushing u towards 1 for s > 1.
pub fn shift_map<const D: usize>(u: Tensor<D>, s: f64) -> Tensor<D> {
    u.clone() * s / (u * (s - 1.0) + 1.0)
}

/// Noise level τ from the schedule's raw draw: `u ~ U(0,1)` for `Shift` and `Uniform`,
/// `n ~ N(0,1)` for `Lognorm`. Shape `(B, 1, 1)`.
pub fn noise_level(schedule: NoiseSchedule, draw: Tensor<3>, shift: f64) -> Tensor<3> {
    match schedule {
        NoiseSchedule::Shift => shift_map(draw, shift),
        NoiseSchedule::Lognorm => sigmoid(draw),
        NoiseSchedule::Uniform => draw,
    }
}

/// `z_τ = (1 − τ)·z + τ·(γ·ε)` with τ of shape `(B, 1, 1)` broadcast over tokens and channels.
pub fn add_noise(z: Tensor<3>, tau: Tensor<3>, eps: Tensor<3>, gamma: f64) -> Tensor<3> {
    (tau.clone().neg() + 1.0) * z + tau * (eps * gamma)
}
