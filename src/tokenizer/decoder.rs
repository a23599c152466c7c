//! The RecTok pixel decoder (`Decoder` of the reference's `models/rectok.py`; paper §3.1).
//!
//! Latent tokens `(B, L_in, C)` → `decoder_embed` → (mask tokens re-inserted with `ids_restore`
//! when training with masking) → `+ positional_embedding` → `ln_pre` → blocks with 2D RoPE →
//! `ln_post` → 1×1-conv pixel head to `p·p·3` channels per token (colour fastest within a patch) →
//! depth-to-space → 3×3 `conv_out` → image `(B, 3, H, W)` in the model's [-1, 1] range (not clamped).

use super::masking::unshuffle_with_mask;
use crate::nn::rope::tokenizer as rope;
use crate::nn::{TransformerBlock, TransformerBlockConfig, VitSize, block::RMS_EPS};
use crate::trace::Trace;
use burn::module::Param;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{Initializer, Linear, LinearConfig, PaddingConfig2d, RmsNorm, RmsNormConfig};
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
            decoder_embed: LinearConfig::new(self.token_channels, w).with_initializer(Initializer::Zeros).init(device),
            mask_token: Param::from_tensor(Tensor::zeros([1, 1, w], device)),
            positional_embedding: Param::from_tensor(Tensor::zeros([1, grid * grid, w], device)),
            ln_pre: RmsNormConfig::new(w).with_epsilon(RMS_EPS).init(device),
            transformer: (0..self.size.layers)
                .map(|_| TransformerBlockConfig::new(w, self.size.heads).init(device))
                .collect(),
            ln_post: RmsNormConfig::new(w).with_epsilon(RMS_EPS).init(device),
            ffn: Conv2dConfig::new([w, p * p * 3], [1, 1]).with_initializer(Initializer::Zeros).init(device),
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
        let device = z.device();
        let mut h = self.decoder_embed.forward(z);
        trace.record("decoder_embed", &h);
        if let Some(ids) = ids_restore {
            h = unshuffle_with_mask(h, self.mask_token.val(), ids);
        }
        h = h + self.positional_embedding.val();
        h = self.ln_pre.forward(h);
        trace.record("ln_pre", &h);
        let head_dim = self.transformer.first().map(|b| b.attn.head_dim()).unwrap_or(4);
        let table = rope::table(head_dim, self.grid_size, self.grid_size, &device);
        for (i, block) in self.transformer.iter().enumerate() {
            h = block.forward(h, Some(&table));
            if trace.enabled() {
                trace.record(&format!("transformer.{i}"), &h);
            }
        }
        h = self.ln_post.forward(h);
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
        let p = self.patch_size;
        let g = self.grid_size;
        assert_eq!(l, g * g, "the pixel decoder needs the full {g}×{g} token grid, got {l} tokens");
        let weight = self.ffn.weight.val();
        let out_ch = weight.dims()[0];
        let mut y = h.reshape([b * l, w]).matmul(weight.reshape([out_ch, w]).transpose());
        if let Some(bias) = &self.ffn.bias {
            y = y + bias.val().unsqueeze_dim(0);
        }
        y.reshape([b, g, g, p, p, 3]).permute([0, 5, 1, 3, 2, 4]).reshape([b, 3, g * p, g * p])
    }
}
