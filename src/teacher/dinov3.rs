//! DINOv3 ViT, the semantic teacher of RecTok (Siméoni et al., 2025), in the Hugging Face
//! transformers 4.56 layout (`DINOv3ViTModel`) so that the Hub's `model.safetensors` loads as is.
//!
//! `(B, 3, H, W)` → patch embedding (conv 16×16) → `[CLS, 4 registers, patches]` → layers of
//! `h = x + λ₁·attn(LN₁(x))`, `h = h + λ₂·MLP(LN₂(h))` with RoPE on the patch tokens → final
//! LayerNorm → `last_hidden_state (B, 1 + R + N, D)`. No absolute position embedding; `k_proj` has
//! no bias; GELU is exact; LayerNorm ε = 1e-5.

use crate::nn::kernels;
use crate::nn::rope::dinov3 as rope;
use crate::trace::Trace;
use burn::module::Param;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{Initializer, LayerNorm, LayerNormConfig, Linear, LinearConfig};
use burn::prelude::*;
use burn::tensor::activation::gelu;

/// Configuration (the subset of `DINOv3ViTConfig` the teacher uses).
#[derive(Config, Debug)]
pub struct Dinov3Config {
    /// Hidden width `D`.
    pub hidden_size: usize,
    /// Layers.
    pub num_hidden_layers: usize,
    /// Attention heads.
    pub num_attention_heads: usize,
    /// MLP width.
    pub intermediate_size: usize,
    /// Patch size.
    #[config(default = 16)]
    pub patch_size: usize,
    /// Register tokens after CLS.
    #[config(default = 4)]
    pub num_register_tokens: usize,
    /// LayerNorm ε.
    #[config(default = 1e-5)]
    pub layer_norm_eps: f64,
    /// RoPE base.
    #[config(default = 100.0)]
    pub rope_theta: f64,
    /// Training-mode RoPE coordinate rescale range (`pos_embed_rescale`): `exp(U(−ln r, ln r))`.
    #[config(default = 2.0)]
    pub pos_embed_rescale: f64,
}

impl Dinov3Config {
    /// DINOv3 ViT-S/16 (`facebook/dinov3-vits16-pretrain-lvd1689m`).
    pub fn vit_s16() -> Self {
        Self::new(384, 12, 6, 1536)
    }

    /// DINOv3 ViT-B/16 (`facebook/dinov3-vitb16-pretrain-lvd1689m`), the released RecTok's teacher.
    pub fn vit_b16() -> Self {
        Self::new(768, 12, 12, 3072)
    }

    /// DINOv3 ViT-L/16 (`facebook/dinov3-vitl16-pretrain-lvd1689m`), the HEAD script's teacher.
    pub fn vit_l16() -> Self {
        Self::new(1024, 24, 16, 4096)
    }

    /// Builds the model with zero weights (load the Hub file afterwards).
    pub fn init(&self, device: &Device) -> Dinov3Vit {
        let d = self.hidden_size;
        let lin =
            |i, o, bias| LinearConfig::new(i, o).with_bias(bias).with_initializer(Initializer::Zeros).init(device);
        let ln = || LayerNormConfig::new(d).with_epsilon(self.layer_norm_eps).init(device);
        Dinov3Vit {
            embeddings: Dinov3Embeddings {
                cls_token: Param::from_tensor(Tensor::zeros([1, 1, d], device)),
                mask_token: Param::from_tensor(Tensor::zeros([1, 1, d], device)),
                register_tokens: Param::from_tensor(Tensor::zeros([1, self.num_register_tokens, d], device)),
                patch_embeddings: Conv2dConfig::new([3, d], [self.patch_size, self.patch_size])
                    .with_stride([self.patch_size, self.patch_size])
                    .with_initializer(Initializer::Zeros)
                    .init(device),
            },
            layer: (0..self.num_hidden_layers)
                .map(|_| Dinov3Layer {
                    norm1: ln(),
                    attention: Dinov3Attention {
                        q_proj: lin(d, d, true),
                        k_proj: lin(d, d, false),
                        v_proj: lin(d, d, true),
                        o_proj: lin(d, d, true),
                        num_heads: self.num_attention_heads,
                    },
                    layer_scale1: LayerScale { lambda1: Param::from_tensor(Tensor::ones([d], device)) },
                    norm2: ln(),
                    mlp: Dinov3Mlp {
                        up_proj: lin(d, self.intermediate_size, true),
                        down_proj: lin(self.intermediate_size, d, true),
                    },
                    layer_scale2: LayerScale { lambda1: Param::from_tensor(Tensor::ones([d], device)) },
                })
                .collect(),
            norm: ln(),
            config: self.clone(),
        }
    }
}

/// CLS, mask and register tokens and the patch embedding.
#[derive(Module, Debug)]
pub struct Dinov3Embeddings {
    /// `(1, 1, D)`.
    pub cls_token: Param<Tensor<3>>,
    /// `(1, 1, D)`, unused without masked positions.
    pub mask_token: Param<Tensor<3>>,
    /// `(1, R, D)`.
    pub register_tokens: Param<Tensor<3>>,
    /// Conv `3 → D`, kernel = stride = patch.
    pub patch_embeddings: Conv2d,
}

/// Attention with separate projections (`k_proj` without bias).
#[derive(Module, Debug)]
pub struct Dinov3Attention {
    /// Query projection.
    pub q_proj: Linear,
    /// Key projection (no bias).
    pub k_proj: Linear,
    /// Value projection.
    pub v_proj: Linear,
    /// Output projection.
    pub o_proj: Linear,
    /// Heads.
    pub num_heads: usize,
}

/// Per-channel residual scale.
#[derive(Module, Debug)]
pub struct LayerScale {
    /// `(D,)`.
    pub lambda1: Param<Tensor<1>>,
}

/// `down(GELU(up(x)))`.
#[derive(Module, Debug)]
pub struct Dinov3Mlp {
    /// `D → I`.
    pub up_proj: Linear,
    /// `I → D`.
    pub down_proj: Linear,
}

/// One transformer layer.
#[derive(Module, Debug)]
pub struct Dinov3Layer {
    /// LayerNorm before attention.
    pub norm1: LayerNorm,
    /// Self-attention.
    pub attention: Dinov3Attention,
    /// Attention residual scale.
    pub layer_scale1: LayerScale,
    /// LayerNorm before the MLP.
    pub norm2: LayerNorm,
    /// MLP.
    pub mlp: Dinov3Mlp,
    /// MLP residual scale.
    pub layer_scale2: LayerScale,
}

impl Dinov3Layer {
    fn forward(&self, x: Tensor<3>, rope: &crate::nn::RopeTable) -> Tensor<3> {
        let a = &self.attention;
        let h = self.norm1.forward(x.clone());
        let qkv = Tensor::cat(Vec::from([&a.q_proj, &a.k_proj, &a.v_proj].map(|p| kernels::linear(p, h.clone()))), 2);
        let o = kernels::linear(&a.o_proj, kernels::attention(qkv, a.num_heads, Some(rope)));
        let x = x + o * self.layer_scale1.lambda1.val().unsqueeze_dims(&[0, 1]);
        let mlp = &self.mlp;
        let m = kernels::linear(&mlp.down_proj, gelu(kernels::linear(&mlp.up_proj, self.norm2.forward(x.clone()))));
        x + m * self.layer_scale2.lambda1.val().unsqueeze_dims(&[0, 1])
    }
}

/// The DINOv3 ViT backbone.
#[derive(Module, Debug)]
pub struct Dinov3Vit {
    /// Embeddings.
    pub embeddings: Dinov3Embeddings,
    /// Layers.
    pub layer: Vec<Dinov3Layer>,
    /// Final LayerNorm.
    pub norm: LayerNorm,
    /// Configuration.
    #[module(skip)]
    pub config: Dinov3Config,
}

impl Dinov3Vit {
    /// `last_hidden_state (B, 1 + R + N, D)`. `rope_rescale` is the training-mode coordinate
    /// rescale `exp(u)` (None in eval mode).
    pub fn forward(&self, pixels: Tensor<4>, rope_rescale: Option<f32>) -> Tensor<3> {
        self.forward_traced(pixels, rope_rescale, &mut Trace::off())
    }

    /// [`Dinov3Vit::forward`] recording `embeddings`, `layer.{i}` and `norm`.
    pub fn forward_traced(&self, pixels: Tensor<4>, rope_rescale: Option<f32>, trace: &mut Trace) -> Tensor<3> {
        let device = pixels.device();
        let cfg = &self.config;
        let [b, _, h, w] = pixels.dims();
        let (gh, gw) = (h / cfg.patch_size, w / cfg.patch_size);
        let patches = crate::nn::patchify(&self.embeddings.patch_embeddings, pixels);
        let d = cfg.hidden_size;
        let mut parts = vec![self.embeddings.cls_token.val().expand([b, 1, d])];
        if cfg.num_register_tokens > 0 {
            parts.push(self.embeddings.register_tokens.val().expand([b, cfg.num_register_tokens, d]));
        }
        parts.push(patches);
        let mut x = Tensor::cat(parts, 1);
        trace.record("embeddings", &x);
        let table =
            rope::table(d / cfg.num_attention_heads, gh, gw, 1 + cfg.num_register_tokens, rope_rescale, &device);
        for (i, layer) in self.layer.iter().enumerate() {
            x = layer.forward(x, &table);
            if trace.enabled() {
                trace.record(&format!("layer.{i}"), &x);
            }
        }
        let out = self.norm.forward(x);
        trace.record("norm", &out);
        out
    }

    /// The patch tokens only: `(B, N, D)`, row-major.
    pub fn patch_tokens(&self, pixels: Tensor<4>, rope_rescale: Option<f32>) -> Tensor<3> {
        let out = self.forward(pixels, rope_rescale);
        let [_, n, _] = out.dims();
        let skip = 1 + self.config.num_register_tokens;
        out.narrow(1, skip, n - skip)
    }
}
