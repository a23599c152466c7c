//! The RecTok pixel decoder (`Decoder` of the reference's `models/rectok.py`; paper §3.1).
//!
//! Latent tokens `(B, L_in, C)` → `decoder_embed` → (mask tokens re-inserted with `ids_restore`
//! when training with masking) → `+ positional_embedding` → `ln_pre` → blocks with 2D RoPE →
//! `ln_post` → 1×1-conv pixel head to `p·p·3` channels per token (colour fastest within a patch) →
//! depth-to-space → 3×3 `conv_out` → image `(B, 3, H, W)` in the model's [-1, 1] range (not clamped).

use super::masking::unshuffle_with_mask;
use crate::nn::block::{forward_blocks, rope_table};
use crate::nn::{TransformerBlock, TransformerBlockConfig, VitSize, conv_rows, rms_norm, zero_linear, zero_patch_conv};
use crate::trace::Trace;
use burn::module::Param;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{Initializer, Linear, PaddingConfig2d, RmsNorm};
use burn::prelude::*;

/// Configuration of a [`Decoder`].
#[derive(Config, Debug)]
pub struct DecoderConfig {
    /// Image side.
    pub img_size: usize,
    /// Patch side.
    pub patch_size: usize,
    /// ViT size.
    pub size: VitSize,
    /// Latent channels `C`.
    pub token_channels: usize,
}

impl DecoderConfig {
    /// Builds the decoder with zero weights (load or initialise them afterwards).
    pub fn init(&self, device: &Device) -> Decoder {
        let w = self.size.width;
        let p = self.patch_size;
        let grid = self.img_size / p;
        Decoder {
            decoder_embed: zero_linear(self.token_channels, w, device),
            mask_token: Param::from_tensor(Tensor::zeros([1, 1, w], device)),
            positional_embedding: Param::from_tensor(Tensor::zeros([1, grid * grid, w], device)),
            ln_pre: rms_norm(w, device),
            transformer: TransformerBlockConfig::stack(self.size, device),
            grad_checkpoint: false,
            ln_post: rms_norm(w, device),
            ffn: zero_patch_conv(w, p * p * 3, 1, device),
            conv_out: Conv2dConfig::new([3, 3], [3, 3])
                .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
                .with_initializer(Initializer::Zeros)
                .init(device),
            grid_size: grid,
            patch_size: p,
        }
    }
}

/// ViT decoder from latent tokens to pixels.
#[derive(Module, Debug)]
pub struct Decoder {
    /// `C → W`.
    pub decoder_embed: Linear,
    /// Learned embedding of masked positions `(1, 1, W)`.
    pub mask_token: Param<Tensor<3>>,
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
    /// 1×1 pixel head (`ffn.1` in the reference's `nn.Sequential`).
    pub ffn: Conv2d,
    /// Final 3×3 conv, zero padding.
    pub conv_out: Conv2d,
    /// Token grid side.
    pub grid_size: usize,
    /// Patch side.
    pub patch_size: usize,
}

impl Decoder {
    /// Image `(B, 3, H, W)` from latents `(B, L_in, C)`; with `ids_restore` the `L_in` visible
    /// tokens are completed with mask tokens.
    pub fn forward(&self, z: Tensor<3>, ids_restore: Option<&Tensor<2, Int>>) -> Tensor<4> {
        self.forward_traced(z, ids_restore, &mut Trace::off())
    }

    /// [`Decoder::forward`] recording `decoder_embed`, `ln_pre`, `transformer.{i}`, `ln_post`,
    /// `ffn` and `conv_out`.
    pub fn forward_traced(&self, z: Tensor<3>, ids_restore: Option<&Tensor<2, Int>>, trace: &mut Trace) -> Tensor<4> {
        let table = rope_table(&self.transformer, self.grid_size, &z.device());
        let mut h = self.decoder_embed.forward(z);
        trace.record("decoder_embed", &h);
        if let Some(ids) = ids_restore {
            h = unshuffle_with_mask(h, self.mask_token.val(), ids);
        }
        h = self.ln_pre.forward(h + self.positional_embedding.val());
        trace.record("ln_pre", &h);
        h = self.ln_post.forward(forward_blocks(&self.transformer, h, &table, self.grad_checkpoint, trace));
        trace.record("ln_post", &h);
        let img = self.pixel_head(h);
        trace.record("ffn", &img);
        let img = self.conv_out.forward(img);
        trace.record("conv_out", &img);
        img
    }

    /// 1×1 conv as a matmul, then `b (h w) (p1 p2 c) → b c (h p1) (w p2)`.
    fn pixel_head(&self, h: Tensor<3>) -> Tensor<4> {
        let [b, l, w] = h.dims();
        let (p, g) = (self.patch_size, self.grid_size);
        assert_eq!(l, g * g, "the pixel decoder needs the full {g}×{g} token grid, got {l} tokens");
        conv_rows(&self.ffn, h.reshape([b * l, w])).reshape([b, g, g, p, p, 3]).permute([0, 5, 1, 3, 2, 4]).reshape([
            b,
            3,
            g * p,
            g * p,
        ])
    }
}
