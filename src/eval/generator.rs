//! The generator protocol: class-balanced samples, gFID / IS (docs/SAMPLING_EVAL.md §2.1), and
//! the teacher's class check of the samples.

use super::features::{Distance, FeatureCollector, Score};
use crate::data::images::png_bytes;
use crate::data::transforms::tensor_to_images;
use crate::generator::sampler::sample_class_latents;
use crate::generator::{DitDh, Guidance, Integrator};
use crate::metrics::extractor::Extractor;
use crate::metrics::fid::{FeatureStats, frechet_distance};
use crate::rectified_flow::ode_grid;
use crate::tokenizer::RecTok;
use anyhow::{Context, Result, bail};
use burn::prelude::*;
use image::RgbImage;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// The file a saved sample gets: `{index:06}_{class:04}.png`.
pub fn sample_file(index: usize, class: usize) -> std::path::PathBuf {
    format!("{index:06}_{class:04}.png").into()
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
    /// The processes sharing the work ([`crate::dist::world`], or [`crate::dist::single`]).
    pub world: &'a crate::dist::World,
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
///
/// Across the processes of `options.world` each samples a contiguous block of the one-process
/// batches (the same sample indices, classes and noise) and rank 0 gets the results, equal to
/// one process's (`None` on the other ranks; `on_images` sees each process's own batches).
pub fn evaluate_generator(
    net: &DitDh,
    tokenizer: &RecTok,
    options: &GeneratorEvalOptions<'_>,
    device: &Device,
    mut on_batch: impl FnMut(usize),
    mut on_images: impl FnMut(&[RgbImage], &[usize]) -> Result<()>,
) -> Result<Option<GeneratorEval>> {
    if options.num_samples == 0 || options.batch_size == 0 {
        bail!("the number of samples and the batch size must be positive");
    }
    if tokenizer.stats.is_none() {
        bail!("the tokenizer carries no latent statistics; the generator samples normalised latents");
    }
    let grid = ode_grid(options.steps, net.config.time_shift());
    let classes = net.config.num_classes;
    let world = options.world;
    if world.is_multi() && options.save_dir.is_some() {
        bail!("saving the samples is done by one process: evaluate without mpirun to save them");
    }
    let mut collector = FeatureCollector::new(options.extractor, device, false, world);
    let mut staged = options.save_dir.as_deref().map(crate::io::StagedFolder::new);
    let n_batches = options.num_samples.div_ceil(options.batch_size);
    let (first, count) = world.part(n_batches);
    world.lockstep(count, n_batches.div_ceil(world.size()), "sampling for the evaluation", |k| {
        let start = (first + k) * options.batch_size;
        let b = options.batch_size.min(options.num_samples - start);
        let labels: Vec<usize> = (start..start + b).map(|i| i % classes).collect();
        let latents = sample_class_latents(
            net,
            &options.guidance,
            &labels,
            options.seed,
            start as u64,
            &grid,
            options.integrator,
            |_| {},
        );
        let images = tensor_to_images(tokenizer.detokenize(latents))
            .with_context(|| format!("samples {start}..{}", start + b))?;
        if let Some(staged) = &mut staged {
            for (k, img) in images.iter().enumerate() {
                staged.write(&sample_file(start + k, labels[k]), &png_bytes(img)?)?;
            }
        }
        collector.add(&images)?;
        on_images(&images, &labels)?;
        on_batch(b);
        Ok(())
    })?;
    if let Some(staged) = staged {
        staged.commit()?;
    }
    let Some(collected) = collector.finish()? else { return Ok(None) };
    let (mean, std) = collected.inception_score()?;
    let distance = options.reference.as_ref().map(|(stats, label)| -> Result<Distance> {
        let value = frechet_distance(&collected.stats, stats)?;
        Ok(Distance { metric: options.extractor.metric_name().into(), value, reference: label.clone() })
    });
    Ok(Some(GeneratorEval {
        samples: options.num_samples,
        distance: distance.transpose()?,
        score: Score { metric: options.extractor.score_name().into(), mean, std },
    }))
}

/// "Does the sample look like its class?": a linear probe on the built-in teacher's pooled
/// features, fitted on real labelled images, then applied to generated ones. Its accuracy on
/// held-out real images is the ceiling a perfect generator would reach.
pub struct TeacherClassifier {
    extractor: Extractor,
    probe: crate::metrics::probe::LinearProbe,
    /// Top-1 on held-out real images.
    pub real_accuracy: f64,
    device: Device,
}

impl TeacherClassifier {
    /// Fits on the tokenizer's reconstructions of labelled real images (the first 5/7 of them;
    /// the rest score it): generated samples can be no sharper than reconstructions, so this
    /// judges the content of a sample rather than the tokenizer's blur.
    pub fn fit_on_reconstructions(
        tokenizer: &RecTok,
        images: &[RgbImage],
        labels: &[usize],
        classes: usize,
        device: &Device,
    ) -> Result<Self> {
        if images.len() < 20 {
            bail!("the class check needs at least 20 labelled images, got {}", images.len());
        }
        let split = (images.len() * 5 / 7).clamp(10, images.len() - 10);
        let mut recon = Vec::with_capacity(images.len());
        for chunk in images.chunks(64) {
            let x = crate::data::transforms::images_to_tensor(chunk, device);
            recon.extend(
                tensor_to_images(tokenizer.reconstruct(x)).context("reconstructions of the class-check images")?,
            );
        }
        let extractor = Extractor::load("effnet", device)?;
        let features = |images: &[RgbImage], labels: &[usize]| -> Result<crate::metrics::probe::FeatureSet> {
            let mut rows = Vec::new();
            for chunk in images.chunks(32) {
                let f = extractor.features(chunk, device)?;
                rows.extend(f.chunks(extractor.dim()).map(|r| r.to_vec()));
            }
            Ok(crate::metrics::probe::FeatureSet { features: rows, labels: labels.to_vec() })
        };
        let train_set = features(&recon[..split], &labels[..split])?;
        let val_set = features(&recon[split..], &labels[split..])?;
        let options = crate::metrics::probe::FitOptions { epochs: 60, ..Default::default() };
        let probe = crate::metrics::probe::LinearProbe::fit(&train_set, classes, &options)?;
        let real_accuracy = probe.accuracy(&val_set);
        Ok(Self { extractor, probe, real_accuracy, device: device.clone() })
    }

    /// Number of `images` classified as their `labels`.
    pub fn hits(&self, images: &[RgbImage], labels: &[usize]) -> Result<usize> {
        let f = self.extractor.features(images, &self.device)?;
        Ok(f.chunks(self.extractor.dim()).zip(labels).filter(|(row, l)| self.probe.predict(row) == **l).count())
    }
}
