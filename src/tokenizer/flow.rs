//! Forward-flow noising of the latents (flow semantic distillation, paper §3; docs/TRAINING.md
//! §2.4).
//!
//! The tokenizer's noise level τ has **τ = 1 = pure noise**: `z_τ = (1 − τ)·z + τ·γ·ε`; the shift
//! `S(u)` with the dimension-dependent `s` is applied even when `s < 1` (see
//! [`crate::rectified_flow`] for both time conventions side by side).

use super::config::NoiseSchedule;
use crate::rectified_flow::shift_map;
use burn::prelude::*;
use burn::tensor::activation::sigmoid;

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
