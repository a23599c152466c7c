//! SwiGLU feed-forward layer (`SwiGLUFFN` of the reference): `w3(silu(a) ⊙ b)` with
//! `[a | b] = w12(x)` split in halves (the first half is the gate input).

use super::{kernels, zero_linear};
use burn::nn::Linear;
use burn::prelude::*;

/// Configuration of a [`SwiGlu`] layer.
#[derive(Config, Debug)]
pub struct SwiGluConfig {
    /// Input and output width.
    pub width: usize,
    /// Hidden width (the reference uses `int(2/3 · 4 · width)`).
    pub hidden: usize,
}

impl SwiGluConfig {
    /// Builds the layer (zero weights; load or initialise them afterwards).
    pub fn init(&self, device: &Device) -> SwiGlu {
        SwiGlu {
            w12: zero_linear(self.width, 2 * self.hidden, device),
            w3: zero_linear(self.hidden, self.width, device),
        }
    }
}

/// `w12: D → 2H`, `w3: H → D`, both with bias.
#[derive(Module, Debug)]
pub struct SwiGlu {
    /// Fused gate/value projection.
    pub w12: Linear,
    /// Output projection.
    pub w3: Linear,
}

impl SwiGlu {
    /// `[.., D] → [.., D]`.
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        kernels::linear(&self.w3, kernels::silu_gate(kernels::linear(&self.w12, x)))
    }

    /// `residual + forward(x)`, the residual folded into the output projection.
    pub fn forward_residual<const D: usize>(&self, x: Tensor<D>, residual: Tensor<D>) -> Tensor<D> {
        kernels::linear_residual(&self.w3, kernels::silu_gate(kernels::linear(&self.w12, x)), residual)
    }
}
