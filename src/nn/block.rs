//! The tokenizer's pre-norm transformer block (`Block` in the reference's `models/rectok.py`):
//! `x += attn(RMSNorm₁(x), rope)`, `x += SwiGLU(RMSNorm₂(x))`; RMSNorm with ε = 1e-6 and a learned
//! weight, no layer scale, no drop path. Shared by the encoder, the pixel decoder and the semantic
//! transformer decoder.

use super::attention::{Attention, AttentionConfig};
use super::kernels;
use super::rope::RopeTable;
use super::swiglu::{SwiGlu, SwiGluConfig};
use super::swiglu_hidden;
use burn::nn::{RmsNorm, RmsNormConfig};
use burn::prelude::*;

/// RMSNorm ε used throughout the tokenizer.
pub const RMS_EPS: f64 = 1e-6;

/// Configuration of a [`TransformerBlock`].
#[derive(Config, Debug)]
pub struct TransformerBlockConfig {
    /// Token width.
    pub width: usize,
    /// Attention heads.
    pub heads: usize,
    /// MLP ratio (hidden = `int(2/3 · ratio · width)`).
    #[config(default = 4.0)]
    pub mlp_ratio: f64,
}

impl TransformerBlockConfig {
    /// Builds the block (zero linear weights, unit norms).
    pub fn init(&self, device: &Device) -> TransformerBlock {
        let norm = || RmsNormConfig::new(self.width).with_epsilon(RMS_EPS).init(device);
        TransformerBlock {
            norm1: norm(),
            norm2: norm(),
            attn: AttentionConfig::new(self.width, self.heads).init(device),
            mlp: SwiGluConfig::new(self.width, swiglu_hidden(self.width, self.mlp_ratio)).init(device),
        }
    }
}

/// Pre-norm block: RMSNorm → attention → residual, RMSNorm → SwiGLU → residual.
#[derive(Module, Debug)]
pub struct TransformerBlock {
    /// Norm before attention.
    pub norm1: RmsNorm,
    /// Norm before the MLP.
    pub norm2: RmsNorm,
    /// Self-attention.
    pub attn: Attention,
    /// SwiGLU feed-forward.
    pub mlp: SwiGlu,
}

impl TransformerBlock {
    /// `[B, L, D] → [B, L, D]`.
    pub fn forward(&self, x: Tensor<3>, rope: Option<&RopeTable>) -> Tensor<3> {
        let x = self.attn.forward_residual(kernels::rms_norm(&self.norm1, x.clone()), rope, x);
        self.mlp.forward_residual(kernels::rms_norm(&self.norm2, x.clone()), x)
    }
}
