//! Feature statistics of image streams, and the results every protocol reports.

use crate::data::Loader;
use crate::data::transforms::tensor_to_images;
use crate::metrics::extractor::Extractor;
use crate::metrics::fid::{FeatureStats, IS_PERMUTATION_SEED, StatsAccumulator, inception_score};
use crate::metrics::numpy_rng::legacy_permutation;
use anyhow::{Context, Result};
use burn::prelude::*;
use image::RgbImage;
use serde::{Deserialize, Serialize};

/// Splits of the Inception Score (torch-fidelity's default).
pub const IS_SPLITS: usize = 10;

/// Streams images through an extractor: feature statistics, logits, optionally the raw features.
pub struct FeatureCollector<'a> {
    extractor: &'a Extractor,
    device: Device,
    stats: StatsAccumulator,
    logits: Vec<f32>,
    features: Option<Vec<f32>>,
    /// The processes sharing the work ([`crate::dist`]).
    world: &'a crate::dist::World,
    /// Across processes: this rank's features and the rows of each batch, replayed on rank 0 in
    /// the global order so that the statistics are those of one process, bit for bit.
    shard: Option<(Vec<f32>, Vec<f64>)>,
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
    /// A collector; `keep_features` keeps the raw features (KID needs them). Where `world` has
    /// several processes, each adds its own batches (whole batches of the one-process order, in
    /// rank order) and [`finish`](Self::finish) gathers them on rank 0.
    pub fn new(extractor: &'a Extractor, device: &Device, keep_features: bool, world: &'a crate::dist::World) -> Self {
        Self {
            extractor,
            device: device.clone(),
            stats: StatsAccumulator::new(extractor.dim()),
            logits: Vec::new(),
            features: keep_features.then(Vec::new),
            world,
            shard: world.is_multi().then(|| (Vec::new(), Vec::new())),
        }
    }

    /// Adds a batch of images.
    pub fn add(&mut self, images: &[RgbImage]) -> Result<()> {
        if images.is_empty() {
            return Ok(());
        }
        let f = self.extractor.features_and_logits(images, &self.device)?;
        if let Some((pool, rows)) = &mut self.shard {
            pool.extend_from_slice(&f.pool);
            rows.push(images.len() as f64);
            self.logits.extend_from_slice(&f.logits);
            return Ok(());
        }
        self.stats.add(&f.pool)?;
        self.logits.extend_from_slice(&f.logits);
        if let Some(all) = &mut self.features {
            all.extend_from_slice(&f.pool);
        }
        Ok(())
    }

    /// Finishes the statistics: on rank 0 (or a single process) everything collected; `None` on
    /// the other ranks of a job.
    pub fn finish(mut self) -> Result<Option<Collected>> {
        if let Some((pool, rows)) = self.shard.take() {
            let (pool, rows, logits) =
                (self.world.gather_f32(&pool), self.world.gather_f64(&rows), self.world.gather_f32(&self.logits));
            let (Some(pool), Some(rows), Some(logits)) = (pool, rows, logits) else { return Ok(None) };
            let dim = self.extractor.dim();
            let mut at = 0;
            for r in rows {
                let n = r as usize * dim;
                self.stats.add(&pool[at..at + n])?;
                at += n;
            }
            self.logits = logits;
            if self.features.is_some() {
                self.features = Some(pool);
            }
        }
        Ok(Some(Collected {
            stats: self.stats.finish()?,
            logits: self.logits,
            classes: self.extractor.classes(),
            features: self.features,
        }))
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

/// The first `n` images (8-bit, as decoded) and labels of a sequential loader.
pub fn labelled_images(loader: &Loader, n: usize, device: &Device) -> Result<(Vec<RgbImage>, Vec<usize>)> {
    let n = n.min(loader.dataset().len());
    let (mut images, mut labels) = (Vec::with_capacity(n), Vec::with_capacity(n));
    for item in loader.first_items(n) {
        crate::signals::check("reading held-out images")?;
        let (batch, take) = item?;
        if take == 0 {
            continue;
        }
        images.extend(to_u8_rounded(batch.tensor(device).narrow(0, 0, take) * 0.5 + 0.5)?);
        labels.extend_from_slice(&batch.labels[..take]);
    }
    Ok((images, labels))
}

/// Images in [0, 1] that are exact multiples of 1/255 (decoded 8-bit inputs) back to 8 bits.
pub fn to_u8_rounded(x: Tensor<4>) -> Result<Vec<RgbImage>> {
    tensor_to_images(x + 0.5 / 255.0)
}

/// Feature statistics of the first `limit` images of a sequential loader (center-cropped 8-bit
/// images, as a reference batch), with `on_batch(images)` for progress.
pub fn reference_statistics(
    loader: &Loader,
    extractor: &Extractor,
    limit: Option<usize>,
    device: &Device,
    mut on_batch: impl FnMut(usize),
) -> Result<FeatureStats> {
    let total = limit.unwrap_or(usize::MAX).min(loader.dataset().len());
    let mut acc = StatsAccumulator::new(extractor.dim());
    for item in loader.first_items(total) {
        crate::signals::check("computing reference statistics")?;
        let (batch, take) = item?;
        if take == 0 {
            continue;
        }
        let images = to_u8_rounded(batch.tensor(device).narrow(0, 0, take) * 0.5 + 0.5)?;
        acc.add(&extractor.features(&images, device)?)?;
        on_batch(take);
    }
    acc.finish().with_context(|| loader.dataset().describe())
}
