//! DiT^DH: a diffusion transformer with a wide, shallow "DDT head" (the reference's `DiTwDDTHead`
//! in `models/DDT.py` and `models/layers.py`; RAE / DDT lineage), the generator RecTok's latents
//! are evaluated with (paper §4).
//!
//! For latents `x (B, C, h, w)`, time `t (B,)` in [0, 1] (t = 1 is data) and labels `y (B,)`:
//!
//! ```text
//! c = SiLU(t_embedder(t) + y_embedder(y))                      (B, D_enc)
//! s = s_embedder(x) + pos_embed → encoder blocks(·, c)          (B, L, D_enc)
//! s = s_projector(SiLU(t_embedder(t) + s))                      (B, L, D_dec)
//! h = x_embedder(x) → head blocks(·, s) → final_layer(·, s)     (B, L, C)  → unpatchify
//! ```
//!
//! The output is the predicted velocity `x1 − x0`. Blocks are LightningDDT blocks: adaLN
//! shift/scale/gate modulation from the condition, RMSNorm, RoPE attention (the DiT convention of
//! [`crate::nn::rope::dit`]), SwiGLU.

use crate::nn::checkpoint::checkpointed;
use crate::nn::kernels;
use crate::nn::rope::{RopeTable, dit as dit_rope};
use crate::nn::{
    Attention, AttentionConfig, SwiGlu, SwiGluConfig, rms_norm, swiglu_hidden, zero_linear, zero_patch_conv,
};
use crate::trace::Trace;
use burn::module::Param;
use burn::nn::conv::Conv2d;
use burn::nn::{Embedding, EmbeddingConfig, Initializer, Linear, RmsNorm};
use burn::prelude::*;
use burn::tensor::activation::silu;
use std::ops::Range;

/// Configuration of a [`DitDh`] model.
#[derive(Config, Debug)]
pub struct DitDhConfig {
    /// Latent grid side `h = w` (image size / tokenizer patch size; 16 for RecTok at 256 px).
    pub input_size: usize,
    /// Latent channels `C`.
    pub token_channels: usize,
    /// Width of the encoder (`s`) stream.
    pub enc_hidden: usize,
    /// Depth of the encoder stream.
    pub enc_depth: usize,
    /// Heads of the encoder stream.
    pub enc_heads: usize,
    /// Width of the DDT head (`x`) stream.
    #[config(default = 2048)]
    pub dec_hidden: usize,
    /// Depth of the DDT head.
    #[config(default = 2)]
    pub dec_depth: usize,
    /// Heads of the DDT head.
    #[config(default = 16)]
    pub dec_heads: usize,
    /// Patch size of both embedders (1 in every official model).
    #[config(default = 1)]
    pub patch_size: usize,
    /// MLP ratio of the SwiGLU layers.
    #[config(default = 4.0)]
    pub mlp_ratio: f64,
    /// Number of classes; label `num_classes` is the null (unconditional) class.
    #[config(default = 1000)]
    pub num_classes: usize,
    /// Probability of replacing a label by the null class in training.
    #[config(default = 0.1)]
    pub label_dropout_prob: f64,
}

/// A preset's constructor from the latent geometry `(token_channels, input_size)`.
type Preset = fn(usize, usize) -> DitDhConfig;

impl DitDhConfig {
    /// `DiTDDT_xl`: 28 × 1152 (16 heads) encoder, 2 × 2048 head — the released generator.
    pub fn ditdh_xl(token_channels: usize, input_size: usize) -> Self {
        Self::new(input_size, token_channels, 1152, 28, 16)
    }

    /// `DiTDDT_l`: 24 × 1024 (16 heads) encoder, 2 × 2048 head.
    pub fn ditdh_l(token_channels: usize, input_size: usize) -> Self {
        Self::new(input_size, token_channels, 1024, 24, 16)
    }

    /// `DiTDDT_b`: 12 × 768 (12 heads) encoder, 2 × 2048 head.
    pub fn ditdh_b(token_channels: usize, input_size: usize) -> Self {
        Self::new(input_size, token_channels, 768, 12, 12)
    }

    /// `DiTDDT_s`: 12 × 384 (6 heads) encoder, 2 × 2048 head — the AutoGuidance guide.
    pub fn ditdh_s(token_channels: usize, input_size: usize) -> Self {
        Self::new(input_size, token_channels, 384, 12, 6)
    }

    /// A CPU-sized DiT^DH for the built-in recipes: 4 × 128 (4 heads) encoder, 2 × 128 (4 heads)
    /// head, 2×2 latent patches (16 tokens on the tiny RecTok's 8×8 grid) — the same architecture
    /// at a size that trains in minutes on two cores. (The released models use patch 1.)
    pub fn ditdh_tiny(token_channels: usize, input_size: usize) -> Self {
        let patch = if input_size.is_multiple_of(2) { 2 } else { 1 };
        Self::new(input_size, token_channels, 128, 4, 4).with_dec_hidden(128).with_dec_heads(4).with_patch_size(patch)
    }

    /// A preset by name (`xl`, `l`, `b`, `s`, `tiny`, with or without a `ditdh_` prefix).
    pub fn preset(name: &str, token_channels: usize, input_size: usize) -> Option<Self> {
        let name = crate::config::canonical_name(name);
        let presets: [(&str, Preset); 5] = [
            ("xl", Self::ditdh_xl),
            ("l", Self::ditdh_l),
            ("b", Self::ditdh_b),
            ("s", Self::ditdh_s),
            ("tiny", Self::ditdh_tiny),
        ];
        crate::config::find(name.strip_prefix("ditdh-").unwrap_or(&name), &presets)
            .map(|f| f(token_channels, input_size))
    }

    /// Parses a configuration: a preset name (`xl`, `l`, `b`, `s`, `tiny`; `ditdh-s` and
    /// `ditdh_s` too) for the given latent geometry, or a JSON / TOML file with `input_size`,
    /// `token_channels`, `enc_hidden`, `enc_depth`, `enc_heads` (or `"preset": "xl"` plus the
    /// geometry) and optional other fields (see [`crate::config`]).
    pub fn parse(spec: &str, token_channels: usize, input_size: usize) -> Result<Self, String> {
        use crate::config::{merge, read_object, required_usize};
        if let Some(c) = Self::preset(spec, token_channels, input_size) {
            return Ok(c);
        }
        let path = std::path::Path::new(spec);
        if !path.is_file() {
            return Err(format!("{spec}: not a preset (xl, l, b, s, tiny) nor a configuration file"));
        }
        let mut obj = read_object(path, "generator")?;
        let channels = obj.get("token_channels").and_then(|v| v.as_u64()).map(|v| v as usize).unwrap_or(token_channels);
        let size = obj.get("input_size").and_then(|v| v.as_u64()).map(|v| v as usize).unwrap_or(input_size);
        let base = match obj.get("preset").and_then(|v| v.as_str()) {
            Some(p) => Self::preset(p, channels, size).ok_or(format!("{spec}: unknown preset `{p}`"))?,
            None => {
                let field = |key| required_usize(&obj, key).map_err(|e| format!("{spec}: {e}"));
                Self::new(size, channels, field("enc_hidden")?, field("enc_depth")?, field("enc_heads")?)
            }
        };
        obj.remove("preset");
        let config = merge(&base, &obj, &[]).map_err(|e| format!("{spec}: {e}"))?;
        config.validate().map_err(|e| format!("{spec}: {e}"))?;
        Ok(config)
    }

    /// Number of latent tokens.
    pub fn seq_len(&self) -> usize {
        (self.input_size / self.patch_size).pow(2)
    }

    /// The dimension-dependent time shift `s = sqrt(h·w·C / 4096)` of training and sampling.
    pub fn time_shift(&self) -> f64 {
        crate::rectified_flow::dimension_shift(self.input_size, self.input_size, self.token_channels)
    }

    /// Checks the sizes, naming the first problem.
    pub fn validate(&self) -> Result<(), String> {
        for (name, width, heads) in
            [("encoder", self.enc_hidden, self.enc_heads), ("head", self.dec_hidden, self.dec_heads)]
        {
            if heads == 0 || width % heads != 0 {
                return Err(format!("{name} width {width} is not a multiple of its {heads} heads"));
            }
            if (width / heads) % 4 != 0 {
                return Err(format!("{name} head dim {} is not a multiple of 4 (2D RoPE)", width / heads));
            }
        }
        if !self.enc_hidden.is_multiple_of(4) {
            return Err(format!("encoder width {} is not a multiple of 4 (2D sin-cos positions)", self.enc_hidden));
        }
        if self.patch_size == 0 || !self.input_size.is_multiple_of(self.patch_size) {
            return Err(format!(
                "latent size {} is not a multiple of the patch size {}",
                self.input_size, self.patch_size
            ));
        }
        for (name, v, max) in [
            ("enc_hidden", self.enc_hidden, 16384),
            ("dec_hidden", self.dec_hidden, 16384),
            ("enc_depth", self.enc_depth, 256),
            ("dec_depth", self.dec_depth, 256),
            ("num_classes", self.num_classes, 1_000_000),
            ("token_channels", self.token_channels, 8192),
            ("latent tokens", (self.input_size / self.patch_size).pow(2), 65536),
        ] {
            if !(1..=max).contains(&v) {
                return Err(format!("{name} must be between 1 and {max}, got {v}"));
            }
        }
        if !(self.mlp_ratio.is_finite() && self.mlp_ratio > 0.0 && self.mlp_ratio <= 16.0) {
            return Err(format!("mlp_ratio must be in (0, 16], got {}", self.mlp_ratio));
        }
        crate::device::check_parameter_count(self.approx_params(), "the DiT^DH")
    }

    /// Roughly how many parameters the model has (12·width² per block, the label table).
    pub fn approx_params(&self) -> u64 {
        let block = |w: usize, d: usize| 12 * (w as u64).pow(2) * d as u64;
        block(self.enc_hidden, self.enc_depth)
            + block(self.dec_hidden, self.dec_depth)
            + (self.num_classes as u64 + 1) * self.enc_hidden as u64
    }

    /// Builds the model: zero weights except the fixed 2D sin-cos `pos_embed`; load or initialise
    /// the rest afterwards.
    pub fn init(&self, device: &Device) -> DitDh {
        self.validate().unwrap_or_else(|e| panic!("invalid DiT^DH configuration: {e}"));
        let lin = |i, o| zero_linear(i, o, device);
        let p = self.patch_size;
        let embed = |width| PatchEmbed { proj: zero_patch_conv(self.token_channels, width, p, device) };
        let grid = self.input_size / p;
        let pos = TensorData::new(sincos_pos_embed_2d(self.enc_hidden, grid), [1, grid * grid, self.enc_hidden]);
        let block = |width, heads| LightningDdtBlock {
            norm1: rms_norm(width, device),
            norm2: rms_norm(width, device),
            attn: AttentionConfig::new(width, heads).init(device),
            mlp: SwiGluConfig::new(width, swiglu_hidden(width, self.mlp_ratio)).init(device),
            ada_ln_modulation: lin(width, 6 * width),
        };
        let blocks = (0..self.enc_depth)
            .map(|_| block(self.enc_hidden, self.enc_heads))
            .chain((0..self.dec_depth).map(|_| block(self.dec_hidden, self.dec_heads)))
            .collect();
        DitDh {
            x_embedder: embed(self.dec_hidden),
            s_embedder: embed(self.enc_hidden),
            s_projector: (self.enc_hidden != self.dec_hidden).then(|| lin(self.enc_hidden, self.dec_hidden)),
            t_embedder: TimestepEmbedder {
                freqs: Param::from_tensor(Tensor::zeros([256], device)),
                fc1: lin(512, self.enc_hidden),
                fc2: lin(self.enc_hidden, self.enc_hidden),
            },
            y_embedder: LabelEmbedder {
                embedding_table: EmbeddingConfig::new(self.num_classes + 1, self.enc_hidden)
                    .with_initializer(Initializer::Zeros)
                    .init(device),
            },
            pos_embed: Param::from_tensor(Tensor::from_data(pos, device)),
            blocks,
            final_layer: DdtFinalLayer {
                norm_final: rms_norm(self.dec_hidden, device),
                linear: lin(self.dec_hidden, p * p * self.token_channels),
                ada_ln_modulation: lin(self.dec_hidden, 2 * self.dec_hidden),
            },
            config: self.clone(),
            grad_checkpoint: false,
        }
    }
}

/// The reference's `initialize_weights` (docs/MODELS.md §3.5): PyTorch default Linear
/// init, except Xavier-uniform embedder convs with zero bias, `N(0, 0.02)` label table and time-MLP
/// weights, zero adaLN and output layers, `t_embedder.W ~ N(0, 1)`; `pos_embed` keeps its fixed
/// sin-cos values.
pub struct DitInit;

impl crate::nn::init::InitRules for DitInit {
    fn rule(&self, path: &str, module_type: &str, shape: &[usize]) -> crate::nn::init::ParamInit {
        use crate::nn::init::{ParamInit, TorchDefaultInit};
        let name = path.rsplit('.').next().unwrap_or("");
        let embedder = path.starts_with("x_embedder.proj.") || path.starts_with("s_embedder.proj.");
        match path {
            "pos_embed" => ParamInit::Keep,
            "t_embedder.freqs" => ParamInit::Normal(1.0),
            // Xavier-uniform on the (out, in·k·k) view: bound sqrt(6 / (fan_in + fan_out)).
            _ if embedder && name == "weight" => {
                ParamInit::Uniform((6.0 / (shape[0] + shape[1..].iter().product::<usize>()) as f64).sqrt())
            }
            _ if embedder || path.contains("ada_ln_modulation.") || path.starts_with("final_layer.linear.") => {
                ParamInit::Zeros
            }
            "y_embedder.embedding_table.weight" => ParamInit::Normal(0.02),
            _ if path.starts_with("t_embedder.fc") && name == "weight" => ParamInit::Normal(0.02),
            _ => TorchDefaultInit.rule(path, module_type, shape),
        }
    }
}

/// MAE-style fixed 2D sin-cos position embedding (`get_2d_sincos_pos_embed`), computed in float64
/// as NumPy does: the first half of the channels encodes the **column** index (the reference's
/// `np.meshgrid(grid_w, grid_h)` puts w first), the second half the row; each half is
/// `[sin(p·ω) | cos(p·ω)]` with `ω_i = 10000^(−i/(D/4))`.
pub fn sincos_pos_embed_2d(dim: usize, grid: usize) -> Vec<f32> {
    let quarter = dim / 4;
    let omega: Vec<f64> = (0..quarter).map(|i| 1.0 / 10000f64.powf(i as f64 / quarter as f64)).collect();
    let mut out = Vec::with_capacity(grid * grid * dim);
    for h in 0..grid {
        for w in 0..grid {
            for pos in [w as f64, h as f64] {
                out.extend(omega.iter().map(|o| (pos * o).sin() as f32));
                out.extend(omega.iter().map(|o| (pos * o).cos() as f32));
            }
        }
    }
    out
}

/// 1×1 (patch) conv embedding: `(B, C, h, w) → (B, L, D)`, tokens row-major (`proj` in the
/// reference).
#[derive(Module, Debug)]
pub struct PatchEmbed {
    /// Conv `C → D`, kernel = stride = patch size.
    pub proj: Conv2d,
}

impl PatchEmbed {
    /// Patchify and project, as one matrix product.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<3> {
        crate::nn::patchify(&self.proj, x)
    }
}

/// Gaussian Fourier time embedding (`GaussianFourierEmbedding`): `[sin θ | cos θ]` with
/// `θ = 2π·t·W` for a fixed random `W` (256), then `Linear → SiLU → Linear`. No ×1000 on t.
#[derive(Module, Debug)]
pub struct TimestepEmbedder {
    /// The fixed random frequencies (`t_embedder.W`), stored in the checkpoint, never trained.
    pub freqs: Param<Tensor<1>>,
    /// `512 → D` (`mlp.0`).
    pub fc1: Linear,
    /// `D → D` (`mlp.2`).
    pub fc2: Linear,
}

impl TimestepEmbedder {
    /// `(B,) → (B, D)`.
    pub fn forward(&self, t: Tensor<1>) -> Tensor<2> {
        let theta = t.unsqueeze_dim::<2>(1) * self.freqs.val().unsqueeze_dim(0) * 2.0 * std::f64::consts::PI;
        let e = Tensor::cat(vec![theta.clone().sin(), theta.cos()], 1);
        kernels::linear(&self.fc2, silu(kernels::linear(&self.fc1, e)))
    }
}

/// Class embedding table with the extra null class (`LabelEmbedder`).
#[derive(Module, Debug)]
pub struct LabelEmbedder {
    /// `(num_classes + 1, D)`.
    pub embedding_table: Embedding,
}

impl LabelEmbedder {
    /// `(B,) → (B, D)`.
    pub fn forward(&self, y: Tensor<1, Int>) -> Tensor<2> {
        let b = y.dims()[0];
        self.embedding_table.forward(y.unsqueeze_dim(0)).reshape([b as i32, -1])
    }
}

/// LightningDDT block: adaLN-modulated pre-norm attention and SwiGLU with gated residuals.
#[derive(Module, Debug)]
pub struct LightningDdtBlock {
    /// RMSNorm before attention.
    pub norm1: RmsNorm,
    /// RMSNorm before the MLP.
    pub norm2: RmsNorm,
    /// Self-attention with RoPE.
    pub attn: Attention,
    /// SwiGLU feed-forward.
    pub mlp: SwiGlu,
    /// `D → 6D` after SiLU (`adaLN_modulation.1`): shift, scale, gate for attention and MLP.
    pub ada_ln_modulation: Linear,
}

impl LightningDdtBlock {
    /// `x (B, L, D)` conditioned on `silu_c = SiLU(c)` of shape `(B, 1, D)` (encoder) or
    /// `(B, L, D)` (head). (The reference applies the SiLU inside `adaLN_modulation`; it is taken
    /// once per forward here, as every block of a stream shares its condition.)
    pub fn forward(&self, x: Tensor<3>, silu_c: Tensor<3>, rope: &RopeTable) -> Tensor<3> {
        // Chunks in the reference's order: shift, scale, gate (attention), shift, scale, gate (MLP).
        let m = kernels::linear(&self.ada_ln_modulation, silu_c);
        let h = kernels::rms_norm_modulate(&self.norm1, x.clone(), &m, 6, 0, 1);
        let x = kernels::gated_residual(x, &m, 6, 2, self.attn.forward(h, Some(rope)));
        let h = kernels::rms_norm_modulate(&self.norm2, x.clone(), &m, 6, 3, 4);
        kernels::gated_residual(x, &m, 6, 5, self.mlp.forward(h))
    }
}

/// Final layer of the head: adaLN shift/scale (no gate), RMSNorm, `Linear(D → p²·C)`.
#[derive(Module, Debug)]
pub struct DdtFinalLayer {
    /// RMSNorm.
    pub norm_final: RmsNorm,
    /// Output projection.
    pub linear: Linear,
    /// `D → 2D` after SiLU (`adaLN_modulation.1`).
    pub ada_ln_modulation: Linear,
}

impl DdtFinalLayer {
    /// `(B, L, D)` conditioned on `silu_c = SiLU(s)` `(B, L, D)` → `(B, L, p²·C)`.
    pub fn forward(&self, x: Tensor<3>, silu_c: Tensor<3>) -> Tensor<3> {
        let m = kernels::linear(&self.ada_ln_modulation, silu_c);
        kernels::linear(&self.linear, kernels::rms_norm_modulate(&self.norm_final, x, &m, 2, 0, 1))
    }
}

/// The DiT^DH network.
#[derive(Module, Debug)]
pub struct DitDh {
    /// Head-stream embedder `C → D_dec`.
    pub x_embedder: PatchEmbed,
    /// Encoder-stream embedder `C → D_enc`.
    pub s_embedder: PatchEmbed,
    /// `D_enc → D_dec` (absent when the widths agree, an `nn.Identity` in the reference).
    pub s_projector: Option<Linear>,
    /// Time embedding.
    pub t_embedder: TimestepEmbedder,
    /// Class embedding.
    pub y_embedder: LabelEmbedder,
    /// Fixed 2D sin-cos positions of the encoder stream `(1, L, D_enc)` (a frozen parameter).
    pub pos_embed: Param<Tensor<3>>,
    /// Encoder blocks followed by head blocks.
    pub blocks: Vec<LightningDdtBlock>,
    /// Output layer.
    pub final_layer: DdtFinalLayer,
    /// The configuration.
    #[module(skip)]
    pub config: DitDhConfig,
    /// Recompute each block's activations in the backward pass instead of keeping them
    /// (`run.grad_checkpoint`; training only, no effect on values).
    #[module(skip)]
    pub grad_checkpoint: bool,
}

impl DitDh {
    /// The model with activation checkpointing of every block on or off (`run.grad_checkpoint`,
    /// [`crate::nn::checkpoint`]): less memory in training for one more forward pass per block;
    /// the values and gradients are unchanged.
    pub fn with_grad_checkpoint(mut self, on: bool) -> Self {
        self.grad_checkpoint = on;
        self
    }

    /// Replaces labels by the null class where `drop_u < label_dropout_prob` (training-mode
    /// label dropout with explicit uniform draws `(B,)`).
    pub fn drop_labels(&self, y: Tensor<1, Int>, drop_u: &Tensor<1>) -> Tensor<1, Int> {
        let mask = drop_u.clone().lower_elem(self.config.label_dropout_prob);
        y.mask_fill(mask, self.config.num_classes as i64)
    }

    /// Predicted velocity `(B, C, h, w)` (`net(x, t, y)` in eval mode).
    pub fn forward(&self, x: Tensor<4>, t: Tensor<1>, y: Tensor<1, Int>) -> Tensor<4> {
        self.forward_traced(x, t, y, &mut Trace::off())
    }

    /// [`DitDh::forward`] recording the reference's submodule outputs.
    pub fn forward_traced(&self, x: Tensor<4>, t: Tensor<1>, y: Tensor<1, Int>, trace: &mut Trace) -> Tensor<4> {
        let device = x.device();
        let cfg = &self.config;
        let [b, _, hh, ww] = x.dims();
        let p = cfg.patch_size;
        let (gh, gw) = (hh / p, ww / p);
        let te = self.t_embedder.forward(t);
        trace.record("t_embedder", &te);
        let ye = self.y_embedder.forward(y);
        trace.record("y_embedder", &ye);
        let c = silu(te.clone() + ye).unsqueeze_dim::<3>(1);
        let silu_c = kernels::silu(c);
        let mut s = self.s_embedder.forward(x.clone());
        trace.record("s_embedder", &s);
        s = s + self.pos_embed.val();
        let enc_rope = dit_rope::table(cfg.enc_hidden / cfg.enc_heads, gh, &device);
        s = self.forward_blocks(0..cfg.enc_depth, s, &silu_c, &enc_rope, trace);
        s = kernels::silu(te.unsqueeze_dim::<3>(1) + s);
        if let Some(proj) = &self.s_projector {
            s = kernels::linear(proj, s);
            trace.record("s_projector", &s);
        }
        let silu_s = kernels::silu(s);
        let mut h = self.x_embedder.forward(x);
        trace.record("x_embedder", &h);
        let dec_rope = dit_rope::table(cfg.dec_hidden / cfg.dec_heads, gh, &device);
        h = self.forward_blocks(cfg.enc_depth..self.blocks.len(), h, &silu_s, &dec_rope, trace);
        let out = self.final_layer.forward(h, silu_s);
        trace.record("final_layer", &out);
        let c = cfg.token_channels;
        out.reshape([b, gh, gw, p, p, c]).permute([0, 5, 1, 3, 2, 4]).reshape([b, c, gh * p, gw * p])
    }

    /// Blocks `range` in order on `x` conditioned on `silu_c`, recording each output as `blocks.{i}`.
    fn forward_blocks(
        &self,
        range: Range<usize>,
        mut x: Tensor<3>,
        silu_c: &Tensor<3>,
        rope: &RopeTable,
        trace: &mut Trace,
    ) -> Tensor<3> {
        for i in range {
            x = if self.grad_checkpoint {
                let rope = rope.clone();
                checkpointed(&self.blocks[i], [x, silu_c.clone()], move |block, [x, c]| block.forward(x, c, &rope))
            } else {
                self.blocks[i].forward(x, silu_c.clone(), rope)
            };
            if trace.enabled() {
                trace.record(&format!("blocks.{i}"), &x);
            }
        }
        x
    }
}
