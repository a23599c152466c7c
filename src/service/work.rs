//! What the service computes, one batch at a time on a model's worker thread, with the CLI's
//! preprocessing and arithmetic: `rectok encode` / `decode` / `reconstruct` / `generate` give the
//! same bytes for the same image and settings (tested in `tests/serve.rs`).

use super::batcher::Batchable;
use super::error::ApiError;
use crate::data::transforms::{images_to_tensor, tensor_to_images, tensor_to_planes};
use crate::generator::sampler::sample_keyed_latents;
use crate::generator::{DitDh, Guidance, Integrator};
use crate::metrics::{psnr, ssim};
use crate::rectified_flow::ode_grid;
use crate::tokenizer::RecTok;
use burn::prelude::*;
use image::RgbImage;

/// The models a server holds, loaded once.
pub struct Models {
    /// The tokenizer (encoder and pixel decoder).
    pub tokenizer: RecTok,
    /// The DiT^DH generator, when one is loaded.
    pub generator: Option<DitDh>,
    /// The AutoGuidance guide, when one is loaded (then `cfg` is its weight).
    pub guide: Option<DitDh>,
    /// What `GET /v1/models` says of the files (names only, never server paths).
    pub files: ModelFiles,
    /// The device the models live on.
    pub device: Device,
}

/// The file names the models came from.
#[derive(Clone, Debug, Default)]
pub struct ModelFiles {
    /// Tokenizer checkpoint's file name.
    pub tokenizer: String,
    /// Latent statistics' file name, when given apart.
    pub latent_stats: Option<String>,
    /// Generator checkpoint's file name.
    pub generator: Option<String>,
    /// Guide checkpoint's file name.
    pub guide: Option<String>,
}

/// A tokenizer job: one image or one latent.
pub enum TokenizerJob {
    /// `POST /v1/encode`: an image already center-cropped to the tokenizer's size.
    Encode {
        /// The cropped image.
        image: RgbImage,
        /// `Some(seed)`: a posterior sample with noise from `Rng::seed_from(seed)`; else the mean.
        sample_seed: Option<u64>,
        /// Raw latents even when the tokenizer has statistics.
        raw: bool,
    },
    /// `POST /v1/decode`: a `[C, h, w]` latent.
    Decode {
        /// `C·h·w` values.
        values: Vec<f32>,
        /// Whether the latent is normalised with the tokenizer's statistics.
        normalized: bool,
    },
    /// `POST /v1/reconstruct`: an image already center-cropped.
    Reconstruct {
        /// The cropped image.
        image: RgbImage,
    },
}

/// Which tokenizer jobs can share a batch.
#[derive(Debug, PartialEq, Eq)]
pub enum TokenizerKey {
    /// Encodes with the same posterior choice and normalisation.
    Encode {
        /// Posterior sample (else mean).
        sample: bool,
        /// Raw latents.
        raw: bool,
    },
    /// Decodes of latents normalised or not.
    Decode {
        /// Normalised latents.
        normalized: bool,
    },
    /// Reconstructions.
    Reconstruct,
}

impl Batchable for TokenizerJob {
    type Key = TokenizerKey;
    fn key(&self) -> TokenizerKey {
        match self {
            Self::Encode { sample_seed, raw, .. } => TokenizerKey::Encode { sample: sample_seed.is_some(), raw: *raw },
            Self::Decode { normalized, .. } => TokenizerKey::Decode { normalized: *normalized },
            Self::Reconstruct { .. } => TokenizerKey::Reconstruct,
        }
    }
}

/// A tokenizer job's result.
#[derive(Debug)]
pub enum TokenizerOutput {
    /// `[C, h, w]` latent values and whether they are normalised.
    Latent {
        /// `C·h·w` values.
        values: Vec<f32>,
        /// Normalised with the tokenizer's statistics.
        normalized: bool,
    },
    /// A decoded image.
    Image(RgbImage),
    /// A reconstruction and its PSNR (dB) and SSIM against the cropped input, as `rectok
    /// reconstruct` measures them.
    Reconstruction {
        /// The reconstruction.
        image: RgbImage,
        /// PSNR in dB on [0, 1] images.
        psnr: f64,
        /// SSIM (Gaussian window 11, σ 1.5).
        ssim: f64,
    },
}

/// Runs one batch of tokenizer jobs of one kind (see [`TokenizerKey`]).
pub fn run_tokenizer(
    model: &RecTok,
    device: &Device,
    jobs: Vec<TokenizerJob>,
) -> Vec<Result<TokenizerOutput, ApiError>> {
    let n = jobs.len();
    let all = |r: Result<Vec<TokenizerOutput>, ApiError>| match r {
        Ok(v) => v.into_iter().map(Ok).collect(),
        Err(e) => (0..n).map(|_| Err(e.clone())).collect(),
    };
    match jobs.first().map(Batchable::key) {
        None => Vec::new(),
        Some(TokenizerKey::Encode { raw, .. }) => {
            let mut images = Vec::with_capacity(n);
            let mut seeds = Vec::with_capacity(n);
            for job in jobs {
                if let TokenizerJob::Encode { image, sample_seed, .. } = job {
                    images.push(image);
                    seeds.push(sample_seed);
                }
            }
            all(encode(model, &images, &seeds, raw, device))
        }
        Some(TokenizerKey::Decode { normalized }) => {
            let values: Vec<f32> = jobs
                .into_iter()
                .flat_map(|job| match job {
                    TokenizerJob::Decode { values, .. } => values,
                    _ => Vec::new(),
                })
                .collect();
            let (c, g) = (model.token_channels(), model.grid_size());
            let z = Tensor::<4>::from_data(TensorData::new(values, [n, c, g, g]), device);
            all(images_of(model.decode_latents(z, normalized), "decoding")
                .map(|v| v.into_iter().map(TokenizerOutput::Image).collect()))
        }
        Some(TokenizerKey::Reconstruct) => {
            let images: Vec<RgbImage> = jobs
                .into_iter()
                .filter_map(|job| match job {
                    TokenizerJob::Reconstruct { image } => Some(image),
                    _ => None,
                })
                .collect();
            all(reconstruct(model, &images, device))
        }
    }
}

/// `rectok encode` on cropped images: the posterior mean, or a sample whose noise for image `i`
/// is the first draw of `Rng::seed_from(seeds[i])` (the CLI's noise for a single image).
fn encode(
    model: &RecTok,
    images: &[RgbImage],
    seeds: &[Option<u64>],
    raw: bool,
    device: &Device,
) -> Result<Vec<TokenizerOutput>, ApiError> {
    let posterior = model.posterior(images_to_tensor(images, device));
    let z = if seeds.iter().any(Option::is_some) {
        let per_image = model.config.seq_len() * model.token_channels();
        let noise: Vec<f32> =
            seeds.iter().flat_map(|s| crate::rng::Rng::seed_from(s.unwrap_or(0)).normal_vec(per_image)).collect();
        let shape = [images.len(), model.config.seq_len(), model.token_channels()];
        posterior.sample(Tensor::from_data(TensorData::new(noise, shape), device))
    } else {
        posterior.mode()
    };
    let normalized = model.stats.is_some() && !raw;
    let z = if normalized { model.normalize_z(z) } else { z };
    let grid = model.tokens_to_grid(z);
    let [_, c, h, w] = grid.dims();
    let values = crate::device::read_f32(grid);
    if values.iter().any(|v| !v.is_finite()) {
        return Err(ApiError::internal("the latents hold NaN or infinite values (the tokenizer's weights diverged)"));
    }
    Ok(values.chunks(c * h * w).map(|v| TokenizerOutput::Latent { values: v.to_vec(), normalized }).collect())
}

/// `rectok reconstruct` on cropped images, PSNR and SSIM included.
fn reconstruct(model: &RecTok, images: &[RgbImage], device: &Device) -> Result<Vec<TokenizerOutput>, ApiError> {
    let size = model.config.img_size;
    let x = images_to_tensor(images, device);
    let original = (x.clone() * 0.5 + 0.5).clamp(0.0, 1.0);
    let recon = model.reconstruct(x);
    let (orig_planes, recon_planes) = (tensor_to_planes(original), tensor_to_planes(recon.clone()));
    let recon_images = images_of(recon, "reconstructing")?;
    Ok(recon_images
        .into_iter()
        .zip(orig_planes.iter().zip(&recon_planes))
        .map(|(image, (o, r))| TokenizerOutput::Reconstruction {
            image,
            psnr: psnr(r, o),
            ssim: ssim(r, o, 3, size, size),
        })
        .collect())
}

/// 8-bit images of `(B, 3, H, W)` values in [0, 1].
fn images_of(x: Tensor<4>, what: &str) -> Result<Vec<RgbImage>, ApiError> {
    tensor_to_images(x).map_err(|e| ApiError::internal(format!("{what}: {e:#}")))
}

/// How samples are drawn; requests with equal settings share batches.
#[derive(Clone, Debug, PartialEq)]
pub struct SamplingSettings {
    /// Time-grid points (`steps − 1` integration steps), as `rectok generate --steps`.
    pub steps: usize,
    /// Guidance weight (CFG, or AutoGuidance when a guide is loaded).
    pub cfg: f64,
    /// Interval of t where guidance applies.
    pub interval: (f64, f64),
    /// ODE integrator.
    pub sampler: Integrator,
}

/// A generate request: its samples as `(class, noise seed, noise index)`.
pub struct GenerateJob {
    /// Sampling settings.
    pub settings: SamplingSettings,
    /// One entry per sample.
    pub samples: Vec<(usize, u64, u64)>,
}

impl Batchable for GenerateJob {
    type Key = SamplingSettings;
    fn key(&self) -> SamplingSettings {
        self.settings.clone()
    }
    fn size(&self) -> usize {
        self.samples.len()
    }
}

/// Runs one batch of generate jobs with equal settings, at most `max_batch` samples per forward
/// pass: each job's images in order.
pub fn run_generator(
    models: &Models,
    jobs: Vec<GenerateJob>,
    max_batch: usize,
) -> Vec<Result<Vec<RgbImage>, ApiError>> {
    let Some(net) = models.generator.as_ref() else {
        return jobs.iter().map(|_| Err(ApiError::no_generator())).collect();
    };
    let Some(settings) = jobs.first().map(|j| j.settings.clone()) else { return Vec::new() };
    let guidance = Guidance::select(models.guide.as_ref(), settings.cfg, settings.interval);
    let grid = ode_grid(settings.steps, net.config.time_shift());
    let samples: Vec<(usize, u64, u64)> = jobs.iter().flat_map(|j| j.samples.iter().copied()).collect();
    let mut images = Vec::with_capacity(samples.len());
    for chunk in samples.chunks(max_batch.max(1)) {
        let labels: Vec<usize> = chunk.iter().map(|s| s.0).collect();
        let keys: Vec<(u64, u64)> = chunk.iter().map(|s| (s.1, s.2)).collect();
        let latents = sample_keyed_latents(net, &guidance, &labels, &keys, &grid, settings.sampler, |_| {});
        match images_of(models.tokenizer.detokenize(latents), "sampling") {
            Ok(batch) => images.extend(batch),
            Err(e) => return jobs.iter().map(|_| Err(e.clone())).collect(),
        }
    }
    let mut images = images.into_iter();
    jobs.iter().map(|j| Ok(images.by_ref().take(j.samples.len()).collect())).collect()
}
