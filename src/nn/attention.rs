//! Multi-head self-attention with RoPE on queries and keys (the reference's `Attention` in
//! `models/rectok.py` and `NormAttention` in `models/layers.py`; no q/k norm in either official
//! configuration).
//!
//! `qkv: D → 3D` with output channels laid out `(3, heads, head_dim)`; scaled dot-product attention
//! with scale `1/√head_dim`, no mask; heads concatenated back head-major; `proj: D → D`.

use super::rope::RopeTable;
use super::{kernels, zero_linear};
use burn::nn::Linear;
use burn::prelude::*;

/// Configuration of an [`Attention`] layer.
#[derive(Config, Debug)]
pub struct AttentionConfig {
    /// Token width.
    pub width: usize,
    /// Number of heads.
    pub heads: usize,
}

impl AttentionConfig {
    /// Builds the layer (zero weights; load or initialise them afterwards).
    pub fn init(&self, device: &Device) -> Attention {
        assert!(
            self.width.is_multiple_of(self.heads),
            "width {} is not a multiple of heads {}",
            self.width,
            self.heads
        );
        let lin = |i, o| zero_linear(i, o, device);
        Attention { qkv: lin(self.width, 3 * self.width), proj: lin(self.width, self.width), num_heads: self.heads }
    }
}

/// Self-attention with a fused qkv projection.
#[derive(Module, Debug)]
pub struct Attention {
    /// `D → 3D`, output `[q | k | v]`, each head-major.
    pub qkv: Linear,
    /// `D → D`.
    pub proj: Linear,
    /// Number of heads.
    pub num_heads: usize,
}

impl Attention {
    /// Channels per head.
    pub fn head_dim(&self) -> usize {
        self.qkv.weight.dims()[0] / self.num_heads
    }

    /// `[B, L, D] → [B, L, D]`, rotating queries and keys with `rope` when given.
    pub fn forward(&self, x: Tensor<3>, rope: Option<&RopeTable>) -> Tensor<3> {
        let qkv = kernels::linear(&self.qkv, x);
        kernels::linear(&self.proj, kernels::attention(qkv, self.num_heads, rope))
    }

    /// `residual + forward(x, rope)`, the residual folded into the output projection.
    pub fn forward_residual(&self, x: Tensor<3>, rope: Option<&RopeTable>, residual: Tensor<3>) -> Tensor<3> {
        let qkv = kernels::linear(&self.qkv, x);
        kernels::linear_residual(&self.proj, kernels::attention(qkv, self.num_heads, rope), residual)
    }
}
