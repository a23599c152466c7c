//! The evaluation protocols (`../shared/spec/SAMPLING_EVAL.md` §2) as library functions, shared by
//! `rectok eval`, the training monitors and the demo.
//!
//! * Tokenizer: posterior-mean reconstruction of center-cropped images, PSNR/SSIM on the float
//!   reconstructions in [0, 1], rFID / IS on the 8-bit reconstructions (truncating conversion, as
//!   the reference saves its PNGs) against the statistics of the 8-bit originals (the reference's
//!   `val_fid_statistics_file_256.npz` is exactly that) or a given statistics file.
//! * Generator: class-balanced sampling (sample `i` gets class `i mod classes`), 8-bit truncation,
//!   FID / IS against reference statistics.

use super::extractor::Extractor;
use super::fid::{FeatureStats, IS_PERMUTATION_SEED, StatsAccumulator, frechet_distance, inception_score};
use super::numpy_rng::{LegacyRandomState, legacy_permutation};
use super::{psnr, ssim};
use crate::data::transforms::{tensor_to_images, tensor_to_planes};
use crate::data::{Loader, save_png};
use crate::generator::sampler::sample_class_latents;
use crate::rectified_flow::ode_grid;
use crate::generator::{DitDh, Guidance, Integrator};
use crate::tokenizer::RecTok;
use anyhow::{Context, Result, anyhow, bail};
use burn::prelude::*;
use image::RgbImage;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// Splits of the Inception Score (torch-fidelity's default).
pub const IS_SPLITS: usize = 10;

/// Streams images through an extractor: feature statistics, logits, optionally the raw features.
pub struct FeatureCollector<'a> {
    extractor: &'a Extractor,
    device: Device,
    stats: StatsAccumulator,
    logits: Vec<f32>,
    features: Option<Vec<f32>>,
}

/// What a [`FeatureCollector`] gathered.
pub struct Collected {
    /// Mean and covariance of the features.
    pub stats: FeatureStats,
    /// `(N, classes)` logits.
    pub logits: Vec<f32>,
    /// Logit width.
    pub classes: usize,
    /// `(N, dim)` features, when kept (for KID).
    pub features: Option<Vec<f32>>,
}

impl<'a> FeatureCollector<'a> {
    /// A collector; `keep_features` keeps the raw features (KID needs them).
    pub fn new(extractor: &'a Extractor, device: &Device, keep_features: bool) -> Self {
        Self { extractor, device: device.clone(), stats: StatsAccumulator::new(extractor.dim()), logits: Vec::new(), features: keep_features.then(Vec::new) }
    }

    /// Adds a batch of images.
    pub fn add(&mut self, images: &[RgbImage]) -> Result<()> {
        if images.is_empty() {
            return Ok(());
        }
        let f = self.extractor.features_and_logits(images, &self.device)?;
        self.stats.add(&f.pool)?;
        self.logits.extend_from_slice(&f.logits);
        if let Some(all) = &mut self.features {
            all.extend_from_slice(&f.pool);
        }
        Ok(())
    }

    /// Images seen so far.
    pub fn count(&self) -> usize {
        self.stats.count()
    }

    /// Finishes the statistics.
    pub fn finish(self) -> Result<Collected> {
        Ok(Collected { stats: self.stats.finish()?, logits: self.logits, classes: self.extractor.classes(), features: self.features })
    }
}

impl Collected {
    /// Inception Score, torch-fidelity's way (RandomState(2020) permutation, 10 splits — fewer
    /// when there are fewer than 10 images).
    pub fn inception_score(&self) -> Result<(f64, f64)> {
        let n = self.logits.len() / self.classes;
        let order = legacy_permutation(n, IS_PERMUTATION_SEED);
        inception_score(&self.logits, self.classes, IS_SPLITS.min(n), Some(&order))
    }
}

/// Kernel Inception Distance (Bińkowski et al., 2018) as torch-fidelity computes it: `subsets`
/// random subsets of `subset_size` rows of each set (numpy `RandomState(2020).choice(n, size,
/// replace=False)`), cubic polynomial kernel `(x·y/d + 1)³`, unbiased MMD² per subset; returns
/// (mean, population std). The subset size is reduced to the smaller set when needed.
pub fn kernel_inception_distance(a: &[f32], b: &[f32], dim: usize, subsets: usize, subset_size: usize) -> Result<(f64, f64, usize)> {
    if dim == 0 || a.len() % dim != 0 || b.len() % dim != 0 {
        bail!("KID: feature arrays are not rows of {dim}");
    }
    let (na, nb) = (a.len() / dim, b.len() / dim);
    let m = subset_size.min(na).min(nb);
    if m < 2 {
        bail!("KID needs at least 2 images in each set ({na} and {nb})");
    }
    let mut rng = LegacyRandomState::new(IS_PERMUTATION_SEED);
    let gamma = 1.0 / dim as f64;
    let kernel_sum = |x: &[usize], xs: &[f32], y: &[usize], ys: &[f32], skip_diagonal: bool| -> f64 {
        let mut total = 0.0;
        for (i, &xi) in x.iter().enumerate() {
            let xr = &xs[xi * dim..(xi + 1) * dim];
            for (j, &yj) in y.iter().enumerate() {
                if skip_diagonal && i == j {
                    continue;
                }
                let yr = &ys[yj * dim..(yj + 1) * dim];
                let dot: f64 = xr.iter().zip(yr).map(|(&p, &q)| p as f64 * q as f64).sum();
                total += (dot * gamma + 1.0).powi(3);
            }
        }
        total
    };
    let mut mmds = Vec::with_capacity(subsets);
    for _ in 0..subsets {
        let ia: Vec<usize> = rng.permutation(na)[..m].to_vec();
        let ib: Vec<usize> = rng.permutation(nb)[..m].to_vec();
        let (kxx, kyy, kxy) = (kernel_sum(&ia, a, &ia, a, true), kernel_sum(&ib, b, &ib, b, true), kernel_sum(&ia, a, &ib, b, false));
        let m = m as f64;
        mmds.push((kxx + kyy) / (m * (m - 1.0)) - 2.0 * kxy / (m * m));
    }
    let mean = mmds.iter().sum::<f64>() / mmds.len() as f64;
    let std = (mmds.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / mmds.len() as f64).sqrt();
    Ok((mean, std, m))
}

/// A distance and where its reference came from.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Distance {
    /// `FID` or `FD-effnet`.
    pub metric: String,
    /// The value.
    pub value: f64,
    /// The reference statistics (a file, or "the original images").
    pub reference: String,
}

/// A score with its spread over splits.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Score {
    /// `IS` or `IS-effnet`.
    pub metric: String,
    /// Mean over splits.
    pub mean: f64,
    /// Standard deviation over splits.
    pub std: f64,
}

/// Where the reference statistics come from.
pub enum Reference {
    /// A statistics file (`.npz` with `mu`, `sigma`), with its label.
    Stats(FeatureStats, String),
    /// The statistics of the evaluated originals (tokenizer) — with their features for KID.
    Originals,
    /// No distance.
    None,
}

/// Options of [`evaluate_tokenizer`].
pub struct TokenizerEvalOptions<'a> {
    /// Feature extractor for rFID / IS (none: PSNR and SSIM only).
    pub extractor: Option<&'a Extractor>,
    /// Reference statistics.
    pub reference: Reference,
    /// Evaluate at most this many images.
    pub limit: Option<usize>,
    /// Write the 8-bit reconstructions here.
    pub save_dir: Option<PathBuf>,
    /// Also compute KID against the originals (needs `Reference::Originals`).
    pub kid: bool,
}

/// Results of [`evaluate_tokenizer`].
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TokenizerEval {
    /// Images evaluated.
    pub images: usize,
    /// Mean PSNR (dB) of the float reconstructions in [0, 1].
    pub psnr: f64,
    /// Mean SSIM (Gaussian 11, σ 1.5, data range 1).
    pub ssim: f64,
    /// rFID (or FD-effnet) of the 8-bit reconstructions.
    pub distance: Option<Distance>,
    /// IS of the 8-bit reconstructions.
    pub score: Option<Score>,
    /// KID (mean, std) against the originals.
    pub kid: Option<(f64, f64)>,
}

/// Reconstructs every image the loader yields (posterior mean, no noise, no mask) and measures.
pub fn evaluate_tokenizer(model: &RecTok, loader: &Loader, options: &TokenizerEvalOptions<'_>, device: &Device, mut on_batch: impl FnMut(usize)) -> Result<TokenizerEval> {
    let size = loader.config().image_size;
    let total = options.limit.unwrap_or(usize::MAX).min(loader.dataset().len());
    let with_originals = matches!(options.reference, Reference::Originals);
    let keep = options.kid && with_originals;
    let mut recon_features = options.extractor.map(|e| FeatureCollector::new(e, device, keep));
    let mut orig_features = options.extractor.filter(|_| with_originals).map(|e| FeatureCollector::new(e, device, keep));
    if let Some(dir) = &options.save_dir {
        std::fs::create_dir_all(dir).map_err(|e| anyhow!("creating {}: {e}", dir.display()))?;
    }
    let (mut psnr_sum, mut ssim_sum, mut done) = (0.0, 0.0, 0usize);
    let mut stream = loader.stream(0, 0);
    while done < total {
        let batch = stream.next_batch()?;
        let take = batch.len().min(total - done);
        if take == 0 {
            break;
        }
        let x = batch.tensor(device).narrow(0, 0, take);
        let original = (x.clone() * 0.5 + 0.5).clamp(0.0, 1.0);
        let recon = model.reconstruct(x);
        let (orig_planes, recon_planes) = (tensor_to_planes(original.clone()), tensor_to_planes(recon.clone()));
        for (o, r) in orig_planes.iter().zip(&recon_planes) {
            psnr_sum += psnr(r, o);
            ssim_sum += ssim(r, o, 3, size, size);
        }
        let recon_images = tensor_to_images(recon).context("reconstructions")?;
        if let Some(dir) = &options.save_dir {
            for (k, img) in recon_images.iter().enumerate() {
                save_png(img, &dir.join(format!("{:06}.png", batch.indices[k])))?;
            }
        }
        if let Some(c) = &mut recon_features {
            c.add(&recon_images)?;
        }
        if let Some(c) = &mut orig_features {
            c.add(&to_u8_rounded(original)?)?;
        }
        done += take;
        on_batch(take);
    }
    if done == 0 {
        bail!("{}: no images to evaluate", loader.dataset().describe());
    }
    let mut result = TokenizerEval { images: done, psnr: psnr_sum / done as f64, ssim: ssim_sum / done as f64, distance: None, score: None, kid: None };
    if let (Some(extractor), Some(recon)) = (options.extractor, recon_features) {
        let recon = recon.finish()?;
        let (mean, std) = recon.inception_score()?;
        result.score = Some(Score { metric: extractor.score_name().into(), mean, std });
        match (&options.reference, orig_features) {
            (Reference::Stats(stats, label), _) => {
                result.distance = Some(Distance { metric: extractor.metric_name().into(), value: frechet_distance(&recon.stats, stats)?, reference: label.clone() });
            }
            (Reference::Originals, Some(orig)) => {
                let orig = orig.finish()?;
                let value = frechet_distance(&recon.stats, &orig.stats)?;
                result.distance = Some(Distance { metric: extractor.metric_name().into(), value, reference: "the evaluated originals".into() });
                if let (Some(a), Some(b)) = (&recon.features, &orig.features) {
                    let (mean, std, _) = kernel_inception_distance(a, b, extractor.dim(), 100, 1000)?;
                    result.kid = Some((mean, std));
                }
            }
            _ => {}
        }
    }
    Ok(result)
}

/// The first `n` images (8-bit, as decoded) and labels of a sequential loader.
pub fn labelled_images(loader: &Loader, n: usize, device: &Device) -> Result<(Vec<RgbImage>, Vec<usize>)> {
    let n = n.min(loader.dataset().len());
    let (mut images, mut labels) = (Vec::with_capacity(n), Vec::with_capacity(n));
    let mut stream = loader.stream(0, 0);
    while images.len() < n {
        let batch = stream.next_batch()?;
        let take = batch.len().min(n - images.len());
        images.extend(to_u8_rounded(batch.tensor(device).narrow(0, 0, take) * 0.5 + 0.5)?);
        labels.extend_from_slice(&batch.labels[..take]);
    }
    Ok((images, labels))
}

/// Images in [0, 1] that are exact multiples of 1/255 (decoded 8-bit inputs) back to 8 bits.
pub fn to_u8_rounded(x: Tensor<4>) -> Result<Vec<RgbImage>> {
    tensor_to_images(x + 0.5 / 255.0)
}

/// Options of [`evaluate_generator`].
pub struct GeneratorEvalOptions<'a> {
    /// Number of samples (sample `i` gets class `i mod classes`).
    pub num_samples: usize,
    /// Time-grid points (N points = N − 1 steps).
    pub steps: usize,
    /// Integrator.
    pub integrator: Integrator,
    /// Guidance.
    pub guidance: Guidance<'a>,
    /// Noise seed.
    pub seed: u64,
    /// Samples per batch.
    pub batch_size: usize,
    /// Feature extractor.
    pub extractor: &'a Extractor,
    /// Reference statistics (`None`: IS only).
    pub reference: Option<(&'a FeatureStats, String)>,
    /// Write the samples here as `{index:06}_{class:04}.png`.
    pub save_dir: Option<PathBuf>,
}

/// Results of [`evaluate_generator`].
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct GeneratorEval {
    /// Samples drawn.
    pub samples: usize,
    /// gFID (or FD-effnet).
    pub distance: Option<Distance>,
    /// IS.
    pub score: Score,
}

/// Samples class-balanced images and measures them; `on_batch(images)` reports progress, and
/// `on_images` sees every decoded batch with its labels (e.g. for a classifier check).
pub fn evaluate_generator(
    net: &DitDh,
    tokenizer: &RecTok,
    options: &GeneratorEvalOptions<'_>,
    device: &Device,
    mut on_batch: impl FnMut(usize),
    mut on_images: impl FnMut(&[RgbImage], &[usize]) -> Result<()>,
) -> Result<GeneratorEval> {
    if options.num_samples == 0 || options.batch_size == 0 {
        bail!("the number of samples and the batch size must be positive");
    }
    if tokenizer.stats.is_none() {
        bail!("the tokenizer carries no latent statistics; the generator samples normalised latents");
    }
    let grid = ode_grid(options.steps, net.config.time_shift());
    let classes = net.config.num_classes;
    let mut collector = FeatureCollector::new(options.extractor, device, false);
    if let Some(dir) = &options.save_dir {
        std::fs::create_dir_all(dir).map_err(|e| anyhow!("creating {}: {e}", dir.display()))?;
    }
    let mut start = 0;
    while start < options.num_samples {
        let b = options.batch_size.min(options.num_samples - start);
        let labels: Vec<usize> = (start..start + b).map(|i| i % classes).collect();
        let latents = sample_class_latents(net, &options.guidance, &labels, options.seed, start as u64, &grid, options.integrator, |_| {});
        let images = tensor_to_images(tokenizer.detokenize(latents)).with_context(|| format!("samples {start}..{}", start + b))?;
        if let Some(dir) = &options.save_dir {
            for (k, img) in images.iter().enumerate() {
                save_png(img, &dir.join(format!("{:06}_{:04}.png", start + k, labels[k])))?;
            }
        }
        collector.add(&images)?;
        on_images(&images, &labels)?;
        start += b;
        on_batch(b);
    }
    let collected = collector.finish()?;
    let (mean, std) = collected.inception_score()?;
    let distance = match &options.reference {
        Some((stats, label)) => Some(Distance { metric: options.extractor.metric_name().into(), value: frechet_distance(&collected.stats, stats)?, reference: label.clone() }),
        None => None,
    };
    Ok(GeneratorEval { samples: options.num_samples, distance, score: Score { metric: options.extractor.score_name().into(), mean, std } })
}

/// "Does the sample look like its class?": a linear probe on the built-in teacher's pooled
/// features, fitted on real labelled images, then applied to generated ones. Its accuracy on
/// held-out real images is the ceiling a perfect generator would reach.
pub struct TeacherClassifier {
    extractor: Extractor,
    probe: super::probe::LinearProbe,
    /// Top-1 on held-out real images.
    pub real_accuracy: f64,
    device: Device,
}

impl TeacherClassifier {
    /// Fits on `train` and scores `held_out` (8-bit images with labels).
    pub fn fit(train: (&[RgbImage], &[usize]), held_out: (&[RgbImage], &[usize]), classes: usize, device: &Device) -> Result<Self> {
        let extractor = Extractor::load("effnet", device)?;
        let features = |images: &[RgbImage], labels: &[usize]| -> Result<super::probe::FeatureSet> {
            let mut rows = Vec::new();
            for chunk in images.chunks(32) {
                let f = extractor.features(chunk, device)?;
                rows.extend(f.chunks(extractor.dim()).map(|r| r.to_vec()));
            }
            Ok(super::probe::FeatureSet { features: rows, labels: labels.to_vec() })
        };
        let train_set = features(train.0, train.1)?;
        let val_set = features(held_out.0, held_out.1)?;
        let config = super::probe::ProbeConfig { epochs: 60, ..Default::default() };
        let probe = super::probe::LinearProbe::fit(&train_set, classes, &config)?;
        let real_accuracy = probe.accuracy(&val_set);
        Ok(Self { extractor, probe, real_accuracy, device: device.clone() })
    }

    /// Fits on the tokenizer's reconstructions of labelled real images (the first 5/7 of them;
    /// the rest score it): generated samples can be no sharper than reconstructions, so this
    /// judges the content of a sample rather than the tokenizer's blur.
    pub fn fit_on_reconstructions(tokenizer: &RecTok, images: &[RgbImage], labels: &[usize], classes: usize, device: &Device) -> Result<Self> {
        if images.len() < 20 {
            bail!("the class check needs at least 20 labelled images, got {}", images.len());
        }
        let split = (images.len() * 5 / 7).clamp(10, images.len() - 10);
        let mut recon = Vec::with_capacity(images.len());
        for chunk in images.chunks(64) {
            let x = crate::data::transforms::images_to_tensor(chunk, device);
            recon.extend(tensor_to_images(tokenizer.reconstruct(x)).context("reconstructions of the class-check images")?);
        }
        Self::fit((&recon[..split], &labels[..split]), (&recon[split..], &labels[split..]), classes, device)
    }

    /// Number of `images` classified as their `labels`.
    pub fn hits(&self, images: &[RgbImage], labels: &[usize]) -> Result<usize> {
        let f = self.extractor.features(images, &self.device)?;
        Ok(f.chunks(self.extractor.dim()).zip(labels).filter(|(row, l)| self.probe.predict(row) == **l).count())
    }
}
