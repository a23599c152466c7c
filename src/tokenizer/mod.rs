//! The RecTok tokenizer (Shi et al., *RecTok: Reconstruction Distillation along Rectified Flow*,
//! CVPR 2026, §3): a ViT autoencoder with a diagonal Gaussian posterior whose latents are trained
//! to stay semantically rich along the rectified-flow forward path.
//!
//! Mirrors `RecTok` of the reference's `models/rectok.py`; struct fields follow its state-dict
//! names (`encoder.*`, `decoder.*`, and the optional `sem_decoders.<teacher>.*`), shapes:
//!
//! | tensor | shape |
//! |---|---|
//! | image | `(B, 3, H, W)` in [-1, 1] |
//! | moments | `(B, L, 2C)`, `L = (H/p)²` |
//! | latent tokens | `(B, L, C)`; DiT layout `(B, C, H/p, W/p)` |

pub mod config;
pub mod decoder;
pub mod encoder;
pub mod flow;
pub mod masking;
pub mod posterior;
pub mod semantic;

pub use config::{MaskRatioType, NoiseSchedule, RecTokConfig, SemDecoderKind, SemInput, SemTarget};
pub use decoder::{Decoder, DecoderConfig};
pub use encoder::{Encoder, EncoderConfig};
pub use masking::{MaskIds, MaskNoise};
pub use posterior::DiagonalGaussian;
pub use semantic::{MlpSemDecoderConfig, SemanticDecoder, TransformerSemDecoderConfig};

use crate::rng::Rng;
use burn::prelude::*;
use serde::{Deserialize, Serialize};

/// Latent normalisation statistics: per channel (`C` values) or global (one value).
///
/// The reference recomputes them over the training set before generator training and evaluation
/// (docs/TRAINING.md §4); they are not part of the official checkpoints, so `rectok latent-stats` computes
/// them and `rectok convert` can store them with the weights.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LatentStats {
    /// Mean of the posterior means.
    pub mean: Vec<f32>,
    /// Population standard deviation of the posterior means.
    pub std: Vec<f32>,
}

impl LatentStats {
    /// Identity statistics (mean 0, std 1), the reference's constructor defaults.
    pub fn identity() -> Self {
        Self { mean: vec![0.0], std: vec![1.0] }
    }

    /// Checks the statistics fit `channels` latent channels and are finite, with std > 0.
    pub fn validate(&self, channels: usize) -> Result<(), String> {
        if self.mean.len() != self.std.len() {
            return Err(format!("latent mean has {} values but std has {}", self.mean.len(), self.std.len()));
        }
        if self.mean.len() != 1 && self.mean.len() != channels {
            return Err(format!("latent statistics have {} channels, the tokenizer has {channels}", self.mean.len()));
        }
        if self.mean.iter().any(|v| !v.is_finite()) || self.std.iter().any(|v| !v.is_finite() || *v <= 0.0) {
            return Err("latent statistics contain non-finite values or a non-positive std".into());
        }
        if let Some(s) = self.std.iter().find(|&&s| s < 1e-12) {
            return Err(format!("a latent std of {s:e} is too small to normalise by (at least 1e-12)"));
        }
        Ok(())
    }
}

/// The explicit random draws of a training-mode `encode`, in the order the reference makes them.
#[derive(Clone, Debug)]
pub struct TrainDraws {
    /// MAE mask noise `(B, L)`, uniform, on the host; `None` disables masking.
    pub mask_noise: Option<MaskNoise>,
    /// Mask ratio of this iteration (ignored without `mask_noise`).
    pub mask_ratio: f64,
    /// Posterior ε `(B, L_visible, C)`; `None` uses the posterior mean.
    pub posterior_eps: Option<Tensor<3>>,
    /// Raw noise-level draw `(B, 1, 1)` (uniform, or normal for `Lognorm`); `None` disables flow noise.
    pub flow_draw: Option<Tensor<3>>,
    /// Flow noise ε `(B, L_visible, C)` (multiplied by γ).
    pub flow_noise: Option<Tensor<3>>,
}

impl TrainDraws {
    /// The draws of samples `start .. start + len` (data-parallel shards of one batch).
    pub fn narrow(&self, start: usize, len: usize) -> Self {
        Self {
            mask_noise: self.mask_noise.as_ref().map(|n| n.narrow(start, len)),
            mask_ratio: self.mask_ratio,
            posterior_eps: self.posterior_eps.clone().map(|t| t.narrow(0, start, len)),
            flow_draw: self.flow_draw.clone().map(|t| t.narrow(0, start, len)),
            flow_noise: self.flow_noise.clone().map(|t| t.narrow(0, start, len)),
        }
    }
}

/// Result of [`RecTok::encode_train`].
#[derive(Clone, Debug)]
pub struct Encoded {
    /// Latents for the pixel decoder (noisy when flow noise is on) `(B, L_visible, C)`.
    pub z_latents: Tensor<3>,
    /// Semantic decoder input: noisy or clean latents per `sem_input`.
    pub sem_input: Tensor<3>,
    /// The posterior of the visible tokens.
    pub posterior: DiagonalGaussian,
    /// Masking indices, when masking was applied.
    pub mask: Option<MaskIds>,
    /// Noise level τ `(B, 1, 1)`, when flow noise was applied.
    pub noise_level: Option<Tensor<3>>,
}

/// The RecTok tokenizer: encoder, pixel decoder, optional semantic decoder.
#[derive(Module, Debug)]
pub struct RecTok {
    /// ViT encoder.
    pub encoder: Encoder,
    /// ViT pixel decoder.
    pub decoder: Decoder,
    /// Semantic decoder (`sem_decoders.<teacher_key>` in the reference), training only.
    pub sem_decoder: Option<SemanticDecoder>,
    /// The configuration the model was built from.
    #[module(skip)]
    pub config: RecTokConfig,
    /// Latent statistics for `tokenize` / `detokenize`, when known.
    #[module(skip)]
    pub stats: Option<LatentStats>,
}

impl RecTokConfig {
    /// Builds the model (zero weights; load a checkpoint or initialise afterwards).
    pub fn init(&self, device: &Device) -> RecTok {
        self.validate().unwrap_or_else(|e| panic!("invalid RecTok configuration: {e}"));
        let sem_decoder = self.teacher_dim.map(|dim| match self.sem_decoder {
            SemDecoderKind::Transformer => SemanticDecoder::Transformer(
                TransformerSemDecoderConfig::new(self.grid_size(), self.semantic, self.token_channels, dim)
                    .init(device),
            ),
            SemDecoderKind::Mlp => {
                SemanticDecoder::Mlp(MlpSemDecoderConfig::new(self.token_channels, dim).init(device))
            }
        });
        RecTok {
            encoder: EncoderConfig::new(self.img_size, self.patch_size, self.encoder, self.token_channels).init(device),
            decoder: DecoderConfig::new(self.img_size, self.patch_size, self.decoder, self.token_channels).init(device),
            sem_decoder,
            config: self.clone(),
            stats: None,
        }
    }
}

impl RecTok {
    /// The model with activation checkpointing of every transformer block on or off
    /// (`run.grad_checkpoint`, [`crate::nn::checkpoint`]): less memory in training for one more
    /// forward pass per block; the values and gradients are unchanged.
    pub fn with_grad_checkpoint(mut self, on: bool) -> Self {
        self.encoder.grad_checkpoint = on;
        self.decoder.grad_checkpoint = on;
        if let Some(SemanticDecoder::Transformer(d)) = &mut self.sem_decoder {
            d.grad_checkpoint = on;
        }
        self
    }

    /// Token grid side.
    pub fn grid_size(&self) -> usize {
        self.config.grid_size()
    }

    /// Latent channels `C`.
    pub fn token_channels(&self) -> usize {
        self.config.token_channels
    }

    /// Draws the random inputs of a training-mode `encode` for a batch of `batch` images, in the
    /// reference's order: mask ratio, mask noise, posterior ε, noise level, flow noise.
    pub fn draw_train(&self, batch: usize, sampling: bool, rng: &mut Rng, device: &Device) -> TrainDraws {
        let cfg = &self.config;
        let l = cfg.seq_len();
        let c = cfg.token_channels;
        let masking = cfg.mask_ratio > 0.0;
        let mask_ratio = if masking {
            masking::draw_mask_ratio(cfg.mask_ratio_type, cfg.mask_ratio_min, cfg.mask_ratio, rng)
        } else {
            0.0
        };
        let mask_noise = masking.then(|| MaskNoise::draw(batch, l, rng));
        let lv = if masking { masking::len_keep(l, mask_ratio) } else { l };
        let posterior_eps = sampling.then(|| rng.normal_tensor([batch, lv, c], device));
        let flow_draw = (cfg.gamma > 0.0).then(|| match cfg.noise_schedule {
            NoiseSchedule::Lognorm => rng.normal_tensor([batch, 1, 1], device),
            _ => rng.uniform_tensor([batch, 1, 1], device),
        });
        let flow_noise = flow_draw.is_some().then(|| rng.normal_tensor([batch, lv, c], device));
        TrainDraws { mask_noise, mask_ratio, posterior_eps, flow_draw, flow_noise }
    }

    /// Training-mode `encode` with explicit draws: masking, posterior sample, forward-flow noise.
    pub fn encode_train(&self, x: Tensor<4>, draws: &TrainDraws) -> Encoded {
        let len_keep = masking::len_keep(self.config.seq_len(), draws.mask_ratio);
        let mask = draws.mask_noise.as_ref().map(|noise| MaskIds::from_noise(noise, len_keep, &x.device()));
        let moments = self.encoder.forward(x, mask.as_ref());
        let posterior = DiagonalGaussian::from_moments(moments);
        let mut z = posterior.sample_or_mode(draws.posterior_eps.clone());
        let mut sem_input = z.clone();
        let mut noise_level = None;
        if let (Some(draw), Some(eps)) = (&draws.flow_draw, &draws.flow_noise)
            && self.config.gamma > 0.0
        {
            let tau = flow::noise_level(self.config.noise_schedule, draw.clone(), self.config.timestep_shift());
            z = flow::add_noise(z, tau.clone(), eps.clone(), self.config.gamma);
            if self.config.sem_input == SemInput::Noisy {
                sem_input = z.clone();
            }
            noise_level = Some(tau);
        }
        Encoded { z_latents: z, sem_input, posterior, mask, noise_level }
    }

    /// Eval-mode posterior of an image batch (no masking, no noise).
    pub fn posterior(&self, x: Tensor<4>) -> DiagonalGaussian {
        DiagonalGaussian::from_moments(self.encoder.forward(x, None))
    }

    fn stats_tensors(&self, device: &Device) -> (Tensor<3>, Tensor<3>) {
        let stats = self.stats.clone().unwrap_or_else(LatentStats::identity);
        let tensor = |v: &[f32]| Tensor::from_data(TensorData::new(v.to_vec(), [1, 1, v.len()]), device);
        (tensor(&stats.mean), tensor(&stats.std))
    }

    /// `(z − mean) · scale_factor / std`, per channel of `(B, L, C)`.
    pub fn normalize_z(&self, z: Tensor<3>) -> Tensor<3> {
        let (mean, std) = self.stats_tensors(&z.device());
        (z - mean) * self.config.scale_factor / std
    }

    /// `z · std / scale_factor + mean`, per channel of `(B, L, C)`.
    pub fn denormalize_z(&self, z: Tensor<3>) -> Tensor<3> {
        let (mean, std) = self.stats_tensors(&z.device());
        z * std / self.config.scale_factor + mean
    }

    /// `(B, L, C)` tokens → DiT layout `(B, C, h, w)`.
    pub fn tokens_to_grid(&self, z: Tensor<3>) -> Tensor<4> {
        let [b, _, c] = z.dims();
        let g = self.grid_size();
        z.swap_dims(1, 2).reshape([b, c, g, g])
    }

    /// DiT layout `(B, C, h, w)` → tokens `(B, L, C)`.
    pub fn grid_to_tokens(&self, z: Tensor<4>) -> Tensor<3> {
        let [b, c, h, w] = z.dims();
        z.reshape([b, c, h * w]).swap_dims(1, 2)
    }

    /// Normalised latents `(B, C, h, w)` of images in [-1, 1]: the posterior mean, or a posterior
    /// sample with explicit `eps` `(B, L, C)`.
    pub fn tokenize(&self, x: Tensor<4>, eps: Option<Tensor<3>>) -> Tensor<4> {
        self.tokens_to_grid(self.normalize_z(self.posterior(x).sample_or_mode(eps)))
    }

    /// Images in [0, 1] from normalised latents `(B, C, h, w)`:
    /// `clamp(decoder(denormalize(z))·0.5 + 0.5, 0, 1)`.
    pub fn detokenize(&self, z: Tensor<4>) -> Tensor<4> {
        let z = self.denormalize_z(self.grid_to_tokens(z));
        (self.decoder.forward(z, None) * 0.5 + 0.5).clamp(0.0, 1.0)
    }

    /// Images in [0, 1] from latents `(B, C, h, w)`: normalised ones through [`detokenize`](Self::detokenize),
    /// raw ones straight through the pixel decoder (`rectok decode`, `rectok serve`).
    pub fn decode_latents(&self, z: Tensor<4>, normalized: bool) -> Tensor<4> {
        if normalized {
            self.detokenize(z)
        } else {
            (self.decoder.forward(self.grid_to_tokens(z), None) * 0.5 + 0.5).clamp(0.0, 1.0)
        }
    }

    /// Normalised latents sampled from cached moments `(B, L, 2C)` with explicit `eps`.
    pub fn sample_from_moments(&self, moments: Tensor<3>, eps: Tensor<3>) -> Tensor<4> {
        self.tokens_to_grid(self.normalize_z(DiagonalGaussian::from_moments(moments).sample(eps)))
    }

    /// `detokenize(tokenize(x))` with the posterior mean: images in [0, 1].
    pub fn reconstruct(&self, x: Tensor<4>) -> Tensor<4> {
        self.detokenize(self.tokenize(x, None))
    }

    /// Number of parameters of the encoder and the pixel decoder (the released model: 171,970,900).
    pub fn num_inference_params(&self) -> usize {
        self.encoder.num_params() + self.decoder.num_params()
    }
}
