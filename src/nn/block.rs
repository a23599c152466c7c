//! The tokenizer's pre-norm transformer block (`Block` in the reference's `models/rectok.py`):
//! `x += attn(RMSNorm₁(x), rope)`, `x += SwiGLU(RMSNorm₂(x))`; RMSNorm with ε = 1e-6 and a learned
//! weight, no layer scale, no drop path. Shared by the encoder, the pixel decoder and the semantic
//! transformer decoder.

use super::attention::{Attention, AttentionConfig};
use super::checkpoint::checkpointed;
use super::kernels;
use super::rope::RopeTable;
use super::swiglu::{SwiGlu, SwiGluConfig};
use super::{VitSize, rms_norm, swiglu_hidden};
use crate::trace::Trace;
use burn::nn::RmsNorm;
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
        TransformerBlock {
            norm1: rms_norm(self.width, device),
            norm2: rms_norm(self.width, device),
            attn: AttentionConfig::new(self.width, self.heads).init(device),
            mlp: SwiGluConfig::new(self.width, swiglu_hidden(self.width, self.mlp_ratio)).init(device),
        }
    }

    /// The `size.layers` blocks of a ViT of `size` (default MLP ratio).
    pub fn stack(size: VitSize, device: &Device) -> Vec<TransformerBlock> {
        (0..size.layers).map(|_| Self::new(size.width, size.heads).init(device)).collect()
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

/// The tokenizer's 2D RoPE table of a `grid × grid` token grid at the head width of `blocks`.
pub fn rope_table(blocks: &[TransformerBlock], grid: usize, device: &Device) -> RopeTable {
    let head_dim = blocks.first().map(|b| b.attn.head_dim()).unwrap_or(4);
    super::rope::tokenizer::table(head_dim, grid, grid, device)
}

/// Runs `blocks` in order with `rope`, recording each output as `transformer.{i}`; with
/// `checkpoint`, each block's activations are recomputed in the backward pass instead of kept
/// ([`checkpointed`], `run.grad_checkpoint`).
pub fn forward_blocks(
    blocks: &[TransformerBlock],
    mut h: Tensor<3>,
    rope: &RopeTable,
    checkpoint: bool,
    trace: &mut Trace,
) -> Tensor<3> {
    for (i, block) in blocks.iter().enumerate() {
        h = if checkpoint {
            let rope = rope.clone();
            checkpointed(block, [h], move |block, [h]| block.forward(h, Some(&rope)))
        } else {
            block.forward(h, Some(rope))
        };
        if trace.enabled() {
            trace.record(&format!("transformer.{i}"), &h);
        }
    }
    h
}
