//! Semantic decoders (training only, discarded at inference): predict the frozen teacher's patch
//! features from the (noisy, masked) latent tokens — the heads of flow semantic distillation and
//! reconstruction–alignment distillation (paper §3.2–3.3; reference `TransformerDecoder` and
//! `MLPDecoder` in `models/rectok.py`).

use super::masking::unshuffle_with_mask;
use crate::nn::block::{forward_blocks, rope_table};
use crate::nn::{TransformerBlock, TransformerBlockConfig, VitSize, rms_norm, zero_linear};
use crate::trace::Trace;
use burn::module::Param;
use burn::nn::{Linear, RmsNorm};
use burn::prelude::*;
use burn::tensor::activation::gelu;

/// Configuration of a [`TransformerSemDecoder`].
#[derive(Config, Debug)]
pub struct TransformerSemDecoderConfig {
    /// Token grid side.
    pub grid_size: usize,
    /// ViT size (official: `tiny`, 192 wide, 3 layers, 4 heads).
    pub size: VitSize,
    /// Latent channels `C`.
    pub token_channels: usize,
    /// Teacher feature width `D`.
    pub teacher_dim: usize,
}

impl TransformerSemDecoderConfig {
    /// Builds the decoder with zero weights (load or initialise them afterwards).
    pub fn init(&self, device: &Device) -> TransformerSemDecoder {
        let w = self.size.width;
        TransformerSemDecoder {
            token_embedding: zero_linear(self.token_channels, w, device),
            mask_embedding: Param::from_tensor(Tensor::zeros([1, 1, w], device)),
            positional_embedding: Param::from_tensor(Tensor::zeros([1, self.grid_size * self.grid_size, w], device)),
            ln_pre: rms_norm(w, device),
            transformer: TransformerBlockConfig::stack(self.size, device),
            grad_checkpoint: false,
            ln_post: rms_norm(w, device),
            out: zero_linear(w, self.teacher_dim, device),
            grid_size: self.grid_size,
        }
    }
}

/// Small ViT: `token_embedding` → mask embeddings → `+ positional_embedding` → `ln_pre` → blocks
/// → `ln_post` → `out` (`W → D`).
#[derive(Module, Debug)]
pub struct TransformerSemDecoder {
    /// `C → W`.
    pub token_embedding: Linear,
    /// Learned embedding of masked positions `(1, 1, W)` (zero-initialised in the reference).
    pub mask_embedding: Param<Tensor<3>>,
    /// Learned positions `(1, L, W)`.
    pub positional_embedding: Param<Tensor<3>>,
    /// RMSNorm before the blocks.
    pub ln_pre: RmsNorm,
    /// Transformer blocks.
    pub transformer: Vec<TransformerBlock>,
    /// Recompute each block's activations in the backward pass instead of keeping them
    /// (`run.grad_checkpoint`; training only, no effect on values).
    #[module(skip)]
    pub grad_checkpoint: bool,
    /// RMSNorm after the blocks.
    pub ln_post: RmsNorm,
    /// `W → D`.
    pub out: Linear,
    /// Token grid side.
    pub grid_size: usize,
}

impl TransformerSemDecoder {
    /// Predicted teacher features `(B, L, D)` from latents `(B, L_in, C)`.
    pub fn forward(&self, z: Tensor<3>, ids_restore: Option<&Tensor<2, Int>>) -> Tensor<3> {
        let table = rope_table(&self.transformer, self.grid_size, &z.device());
        let mut h = self.token_embedding.forward(z);
        if let Some(ids) = ids_restore {
            h = unshuffle_with_mask(h, self.mask_embedding.val(), ids);
        }
        h = self.ln_pre.forward(h + self.positional_embedding.val());
        self.out.forward(self.ln_post.forward(forward_blocks(
            &self.transformer,
            h,
            &table,
            self.grad_checkpoint,
            &mut Trace::off(),
        )))
    }
}

/// Configuration of an [`MlpSemDecoder`].
#[derive(Config, Debug)]
pub struct MlpSemDecoderConfig {
    /// Latent channels `C`.
    pub token_channels: usize,
    /// Teacher feature width `D`.
    pub teacher_dim: usize,
}

impl MlpSemDecoderConfig {
    /// Builds the decoder with zero weights.
    pub fn init(&self, device: &Device) -> MlpSemDecoder {
        let c = self.token_channels;
        MlpSemDecoder { fc1: zero_linear(c, 4 * c, device), fc2: zero_linear(4 * c, self.teacher_dim, device) }
    }
}

/// Per-token `Linear(C, 4C) → GELU (exact) → Linear(4C, D)`; ignores `ids_restore`, so it only sees
/// the visible tokens (reference keys `mlp.0`, `mlp.2`).
#[derive(Module, Debug)]
pub struct MlpSemDecoder {
    /// `C → 4C` (`mlp.0`).
    pub fc1: Linear,
    /// `4C → D` (`mlp.2`).
    pub fc2: Linear,
}

impl MlpSemDecoder {
    /// `(B, L_in, C) → (B, L_in, D)`.
    pub fn forward(&self, z: Tensor<3>) -> Tensor<3> {
        self.fc2.forward(gelu(self.fc1.forward(z)))
    }
}

/// Either semantic decoder.
// One per model; burn's `Module` derive takes the variants by value.
#[allow(clippy::large_enum_variant)]
#[derive(Module, Debug)]
pub enum SemanticDecoder {
    /// Transformer decoder (official).
    Transformer(TransformerSemDecoder),
    /// MLP decoder (ablation).
    Mlp(MlpSemDecoder),
}

impl SemanticDecoder {
    /// Predicted teacher features.
    pub fn forward(&self, z: Tensor<3>, ids_restore: Option<&Tensor<2, Int>>) -> Tensor<3> {
        match self {
            Self::Transformer(d) => d.forward(z, ids_restore),
            Self::Mlp(d) => d.forward(z),
        }
    }
}
