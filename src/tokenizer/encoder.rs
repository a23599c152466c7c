//! The RecTok ViT encoder (`Encoder` of the reference's `models/rectok.py`; paper §3.1).
//!
//! `(B, 3, H, W)` in [-1, 1] → patchify (conv p×p, stride p) → `+ positional_embedding` →
//! optional MAE masking → `ln_pre` → blocks with 2D RoPE → `ln_post` → `latent_head` →
//! moments `(B, L_visible, 2C)`.

use super::masking::MaskIds;
use crate::nn::block::{forward_blocks, rope_table};
use crate::nn::{TransformerBlock, TransformerBlockConfig, VitSize, patchify, rms_norm, zero_linear, zero_patch_conv};
use crate::trace::Trace;
use burn::module::Param;
use burn::nn::conv::Conv2d;
use burn::nn::{Linear, RmsNorm};
use burn::prelude::*;

/// Configuration of an [`Encoder`].
#[derive(Config, Debug)]
pub struct EncoderConfig {
    /// Image side.
    pub img_size: usize,
    /// Patch side.
    pub patch_size: usize,
    /// ViT size.
    pub size: VitSize,
    /// Latent channels `C` (the head emits `2C`).
    pub token_channels: usize,
}

impl EncoderConfig {
    /// Builds the encoder with zero weights (load or initialise them afterwards).
    pub fn init(&self, device: &Device) -> Encoder {
        let w = self.size.width;
        let grid = self.img_size / self.patch_size;
        Encoder {
            patch_embed: zero_patch_conv(3, w, self.patch_size, device),
            positional_embedding: Param::from_tensor(Tensor::zeros([1, grid * grid, w], device)),
            ln_pre: rms_norm(w, device),
            transformer: TransformerBlockConfig::stack(self.size, device),
            grad_checkpoint: false,
            ln_post: rms_norm(w, device),
            latent_head: zero_linear(w, 2 * self.token_channels, device),
            grid_size: grid,
            patch_size: self.patch_size,
        }
    }
}

/// ViT encoder producing posterior moments per visible token.
#[derive(Module, Debug)]
pub struct Encoder {
    /// Patch embedding conv (`patch_embed.0` in the reference's `nn.Sequential`).
    pub patch_embed: Conv2d,
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
    /// `W → 2C` moments head.
    pub latent_head: Linear,
    /// Token grid side.
    pub grid_size: usize,
    /// Patch side.
    pub patch_size: usize,
}

impl Encoder {
    /// Moments `(B, L_visible, 2C)`; `mask` (training) keeps only its visible tokens.
    pub fn forward(&self, x: Tensor<4>, mask: Option<&MaskIds>) -> Tensor<3> {
        self.forward_traced(x, mask, &mut Trace::off())
    }

    /// [`Encoder::forward`] recording `patch_embed`, `ln_pre`, `transformer.{i}` and `ln_post`.
    pub fn forward_traced(&self, x: Tensor<4>, mask: Option<&MaskIds>, trace: &mut Trace) -> Tensor<3> {
        let mut table = rope_table(&self.transformer, self.grid_size, &x.device());
        let tokens = patchify(&self.patch_embed, x);
        trace.record("patch_embed", &tokens);
        let mut h = tokens + self.positional_embedding.val();
        if let Some(mask) = mask {
            h = mask.keep_tokens(h);
            table = table.gather_rows(&mask.ids_keep);
        }
        h = self.ln_pre.forward(h);
        trace.record("ln_pre", &h);
        h = self.ln_post.forward(forward_blocks(&self.transformer, h, &table, self.grad_checkpoint, trace));
        trace.record("ln_post", &h);
        self.latent_head.forward(h)
    }
}
