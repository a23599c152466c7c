//! Latents for generator training (docs/TRAINING.md §4–5): per-channel statistics of the frozen
//! tokenizer's posterior means, and an optional on-disk cache of posterior **moments** so that
//! a fresh posterior sample can be drawn every epoch without re-running the encoder.
//!
//! Cache layout (`DIR/`): `moments.f32` — item-major rows of `O × L × 2C` little-endian f32
//! (`O` = 2 orientations, original then horizontally flipped, when flips are on; else 1);
//! `labels.json`; `manifest.json` (geometry, the tokenizer it came from, items complete). Rows are
//! appended in dataset order and `manifest.json` is rewritten (atomically, after an fsync of the
//! data) every chunk, so an interrupted build resumes where it stopped.

use crate::data::{Dataset, Loader};
use crate::io::write_atomic;
use crate::tokenizer::{LatentStats, RecTok};
use anyhow::{Context, Result, anyhow, bail};
use burn::prelude::*;
use serde::{Deserialize, Serialize};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Streaming per-channel first and second moments, accumulated in f64.
#[derive(Clone, Debug)]
pub struct ChannelMoments {
    sum: Vec<f64>,
    sum_sq: Vec<f64>,
    /// Rows added.
    pub count: u64,
}

impl ChannelMoments {
    /// Empty accumulators for `channels` channels.
    pub fn new(channels: usize) -> Self {
        Self { sum: vec![0.0; channels], sum_sq: vec![0.0; channels], count: 0 }
    }

    /// Adds rows of `channels` values (channel fastest).
    pub fn add(&mut self, values: &[f32]) {
        let c = self.sum.len();
        for row in values.chunks_exact(c) {
            for (i, &v) in row.iter().enumerate() {
                self.sum[i] += v as f64;
                self.sum_sq[i] += (v as f64) * (v as f64);
            }
            self.count += 1;
        }
    }

    /// Adds another accumulator's sums (a later batch's: merging in batch order gives the same
    /// sums wherever the batches were computed).
    pub fn merge(&mut self, other: &ChannelMoments) {
        for (a, b) in self.sum.iter_mut().zip(&other.sum) {
            *a += b;
        }
        for (a, b) in self.sum_sq.iter_mut().zip(&other.sum_sq) {
            *a += b;
        }
        self.count += other.count;
    }

    /// Per-batch accumulators of this process (in batch order) merged in the global batch order on
    /// rank 0 of `world` (`None` on the other ranks): the sums one process would get.
    pub fn gather_batches(batches: &[ChannelMoments], channels: usize, world: &crate::dist::World) -> Option<Self> {
        let flat: Vec<f64> =
            batches.iter().flat_map(|m| m.sum.iter().chain(&m.sum_sq).copied().chain([m.count as f64])).collect();
        let all = world.gather_f64(&flat)?;
        let mut total = ChannelMoments::new(channels);
        for row in all.chunks_exact(2 * channels + 1) {
            total.merge(&ChannelMoments {
                sum: row[..channels].to_vec(),
                sum_sq: row[channels..2 * channels].to_vec(),
                count: row[2 * channels] as u64,
            });
        }
        Some(total)
    }

    /// Mean and population standard deviation per channel.
    pub fn finish(&self) -> LatentStats {
        let n = self.count.max(1) as f64;
        let mean: Vec<f64> = self.sum.iter().map(|s| s / n).collect();
        let std = self.sum_sq.iter().zip(&mean).map(|(s2, m)| (s2 / n - m * m).max(0.0).sqrt() as f32).collect();
        LatentStats { mean: mean.into_iter().map(|m| m as f32).collect(), std }
    }
}

/// The reference's latent statistics: posterior means of center-cropped, unflipped images
/// (`loader` must be sequential), all tokens, population std. `limit` caps the images.
///
/// Across the processes of `world` each encodes a block of the batches; rank 0 merges the
/// per-batch sums in order (the one-process result) and every rank gets the statistics.
pub fn collect_latent_stats(
    tokenizer: &RecTok,
    loader: &Loader,
    limit: Option<usize>,
    device: &Device,
    world: &crate::dist::World,
    mut on_batch: impl FnMut(usize),
) -> Result<LatentStats> {
    let total = limit.unwrap_or(usize::MAX).min(loader.dataset().len());
    let channels = tokenizer.token_channels();
    let mut batches = Vec::new();
    let n_batches = total.div_ceil(loader.config().batch_size);
    let (first, count) = world.part(n_batches);
    let mut items = loader.items_in_batches(total, first..first + count);
    world.lockstep(count, n_batches.div_ceil(world.size()), "computing the latent statistics", |_| {
        let (batch, take) = items.next().context("a batch of the statistics")??;
        if take > 0 {
            let mean = tokenizer.posterior(batch.tensor(device).narrow(0, 0, take)).mean;
            let mut moments = ChannelMoments::new(channels);
            moments.add(&crate::device::read_f32(mean));
            batches.push(moments);
            on_batch(take);
        }
        Ok(())
    })?;
    let merged = ChannelMoments::gather_batches(&batches, channels, world);
    let stats = world.agree(match merged {
        Some(m) if m.count == 0 => Err(anyhow!("{}: no images for the latent statistics", loader.dataset().describe())),
        Some(m) => Ok(Some(m.finish())),
        None => Ok(None),
    })?;
    // Rank 0's statistics on every rank.
    let mut values = match &stats {
        Some(s) => s.mean.iter().chain(&s.std).copied().collect(),
        None => vec![0f32; 2 * channels],
    };
    world.broadcast_f32(&mut values);
    Ok(LatentStats { mean: values[..channels].to_vec(), std: values[channels..].to_vec() })
}

/// `manifest.json` of a latent cache.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CacheManifest {
    /// Items in the dataset.
    pub items: usize,
    /// Items written so far (complete when equal to `items`).
    pub complete: usize,
    /// Tokens per latent.
    pub tokens: usize,
    /// Latent channels `C` (rows hold `2C` moments: mean then log-variance).
    pub channels: usize,
    /// Orientations per item (2: original and flipped).
    pub orientations: usize,
    /// What the items are (the dataset's description).
    pub dataset: String,
    /// The tokenizer (file) the moments come from.
    pub tokenizer: String,
    /// Its image size.
    pub image_size: usize,
    /// The precision the moments were computed in (`f32`, or the autocast type: docs/GPU.md).
    #[serde(default = "f32_name")]
    pub precision: String,
}

fn f32_name() -> String {
    "f32".into()
}

impl CacheManifest {
    fn row_floats(&self) -> usize {
        self.orientations * self.tokens * 2 * self.channels
    }
}

/// Posterior moments of every item of a dataset, on disk.
pub struct LatentCache {
    dir: PathBuf,
    manifest: CacheManifest,
    file: std::fs::File,
    labels: Arc<Vec<usize>>,
}

/// How a latent cache is built.
#[derive(Clone, Copy, Debug)]
pub struct CacheOptions {
    /// Also cache the flipped images.
    pub flip: bool,
    /// Images per encoder pass.
    pub batch_size: usize,
    /// Decoding threads.
    pub workers: usize,
}

impl LatentCache {
    /// Opens the cache in `dir`, building (or finishing) it first: encodes every item of
    /// `dataset` (both orientations when `options.flip`) with the tokenizer's encoder; `tokenizer`
    /// comes with the label the manifest records for it.
    ///
    /// Across the processes of `world` (all calling it) each encodes every `size`-th batch and
    /// rank 0 writes them in order, so the cache is the one a single process writes; every
    /// process then reads it.
    pub fn build(
        dir: &Path,
        dataset: Arc<dyn Dataset>,
        tokenizer: (&RecTok, &str),
        options: CacheOptions,
        device: &Device,
        world: &crate::dist::World,
    ) -> Result<Self> {
        let (tokenizer, tokenizer_label) = tokenizer;
        let CacheOptions { flip, batch_size, workers } = options;
        let root = world.is_root();
        let size = tokenizer.config.img_size;
        let want = CacheManifest {
            items: dataset.len(),
            complete: 0,
            tokens: tokenizer.grid_size().pow(2),
            channels: tokenizer.token_channels(),
            orientations: if flip { 2 } else { 1 },
            dataset: dataset.describe(),
            tokenizer: tokenizer_label.to_string(),
            image_size: size,
            precision: crate::device::precision_in_force().to_string(),
        };
        let manifest_path = dir.join("manifest.json");
        let data_path = dir.join("moments.f32");
        let labels_path = dir.join("labels.json");
        // Rank 0 reads the folder and decides where building resumes; the others follow it.
        let found = world.agree(match root {
            true => std::fs::create_dir_all(dir)
                .with_context(|| format!("creating {}", dir.display()))
                .and_then(|()| Self::read_state(dir, &want))
                .map(Some),
            false => Ok(None),
        })?;
        let (mut manifest, mut labels) = match found {
            Some(state) => state,
            None => (want.clone(), Vec::new()),
        };
        let mut complete = [manifest.complete as u64];
        world.max_u64(&mut complete);
        manifest.complete = complete[0] as usize;
        let row_bytes = (manifest.row_floats() * 4) as u64;
        // Rank 0 creates the data file and drops any partial tail of an interrupted write; then
        // every process writes its own batches' rows in place.
        let file = world.agree(match root {
            true => (|| -> Result<std::fs::File> {
                let f = std::fs::OpenOptions::new()
                    .create(true)
                    .read(true)
                    .write(true)
                    .truncate(false)
                    .open(&data_path)
                    .with_context(|| format!("opening {}", data_path.display()))?;
                f.set_len(manifest.complete as u64 * row_bytes)?;
                Ok(f)
            })()
            .map(Some),
            false => Ok(None),
        })?;
        let file = match file {
            Some(f) => f,
            None => std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(&data_path)
                .with_context(|| format!("opening {}", data_path.display()))?,
        };
        if manifest.complete < manifest.items {
            let loader = Loader::sequential(dataset.clone(), batch_size, size, workers)?.strict();
            let bar = if root {
                crate::io::step_progress(manifest.items, manifest.complete)
            } else {
                indicatif::ProgressBar::hidden()
            };
            bar.set_message("caching latent moments");
            tracing::info!(
                "latent cache {}: {} of {} items to encode",
                dir.display(),
                manifest.items - manifest.complete,
                manifest.items
            );
            // Batch `b0` is partly written (by an interrupted run): its first `skip` items are.
            let (b0, skip) = (manifest.complete / batch_size, manifest.complete % batch_size);
            let batches = manifest.items.div_ceil(batch_size);
            let (rank, processes) = (world.rank(), world.size());
            // One process decodes ahead; several decode only their own batches.
            let mut stream = (processes == 1).then(|| loader.stream(0, b0));
            let per = manifest.tokens * 2 * manifest.channels;
            // Rounds of one batch per process; rank 0 records a round once every process has
            // written its rows.
            for round in 0..(batches - b0).div_ceil(processes) {
                if let Some(signal) = world.agree_signal(crate::signals::requested()) {
                    let doing = "building the latent cache (it continues where it stopped)";
                    return Err(crate::signals::interrupted(signal, doing).into());
                }
                let mine = b0 + round * processes + rank;
                let written = world.agree((|| -> Result<Vec<f64>> {
                    if mine >= batches {
                        return Ok(Vec::new());
                    }
                    let batch = match &mut stream {
                        Some(stream) => stream.next_batch()?,
                        None => loader.batch(0, mine)?,
                    };
                    let from = if mine == b0 { skip } else { 0 };
                    let n = batch.len() - from;
                    let x = batch.tensor(device).narrow(0, from, n);
                    let mut views = vec![tokenizer.encoder.forward(x.clone(), None)];
                    if flip {
                        views.push(tokenizer.encoder.forward(x.flip([3]), None));
                    }
                    let host: Vec<Vec<f32>> = views.into_iter().map(crate::device::read_f32).collect();
                    let mut bytes = Vec::with_capacity(n * per * host.len() * 4);
                    for i in 0..n {
                        for view in &host {
                            for v in &view[i * per..(i + 1) * per] {
                                bytes.extend_from_slice(&v.to_le_bytes());
                            }
                        }
                    }
                    let offset = (mine * batch_size + from) as u64 * row_bytes;
                    file.write_all_at(&bytes, offset).with_context(|| format!("writing {}", data_path.display()))?;
                    file.sync_data()?;
                    Ok(batch.labels[from..].iter().map(|&l| l as f64).collect())
                })())?;
                let Some(round_labels) = world.gather_f64(&written) else { continue };
                labels.extend(round_labels.iter().map(|&l| l as usize));
                manifest.complete += round_labels.len();
                write_atomic(&labels_path, serde_json::to_string(&labels)?.as_bytes())?;
                write_atomic(&manifest_path, serde_json::to_string_pretty(&manifest)?.as_bytes())?;
                bar.set_position(manifest.complete as u64);
            }
            bar.finish_and_clear();
        }
        // The others read the labels rank 0 recorded (the run folder is shared).
        world.agree(Ok(()))?;
        if !root {
            (manifest, labels) = Self::read_state(dir, &want)?;
        }
        if file.metadata()?.len() < manifest.items as u64 * row_bytes {
            bail!(
                "{}: the cache data is shorter than its manifest says; remove the folder to rebuild it",
                data_path.display()
            );
        }
        Ok(Self { dir: dir.to_path_buf(), manifest, file, labels: Arc::new(labels) })
    }

    /// The manifest (checked against `want`, but for the items written) and the labels of the
    /// cache in `dir`; `want` with nothing written when there is none.
    fn read_state(dir: &Path, want: &CacheManifest) -> Result<(CacheManifest, Vec<usize>)> {
        let manifest_path = dir.join("manifest.json");
        let manifest = match std::fs::read_to_string(&manifest_path) {
            Ok(text) => {
                let found: CacheManifest = serde_json::from_str(&text)
                    .with_context(|| format!("{}: corrupt cache manifest", manifest_path.display()))?;
                if (CacheManifest { complete: 0, ..found.clone() }) != *want {
                    bail!(
                        "{}: this latent cache was built for other data, another tokenizer or another precision \
                            ({} items of {} from {}, in {}); remove it or choose another cache folder",
                        dir.display(),
                        found.items,
                        found.dataset,
                        found.tokenizer,
                        found.precision
                    );
                }
                found
            }
            Err(_) => want.clone(),
        };
        let labels_path = dir.join("labels.json");
        let mut labels: Vec<usize> = if manifest.complete > 0 {
            serde_json::from_str(
                &std::fs::read_to_string(&labels_path).with_context(|| format!("reading {}", labels_path.display()))?,
            )
            .with_context(|| format!("{}: corrupt", labels_path.display()))?
        } else {
            Vec::new()
        };
        labels.truncate(manifest.complete);
        Ok((manifest, labels))
    }

    /// The folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Label of item `i`.
    pub fn label(&self, i: usize) -> usize {
        self.labels[i]
    }

    /// Moments `(B, L, 2C)` of items `indices`, flipped where `flips` says (and the cache has
    /// flipped rows).
    pub fn moments(&self, indices: &[usize], flips: &[bool], device: &Device) -> Result<Tensor<3>> {
        let m = &self.manifest;
        let per = m.tokens * 2 * m.channels;
        let mut out = vec![0f32; indices.len() * per];
        let mut bytes = vec![0u8; per * 4];
        for (k, (&i, &f)) in indices.iter().zip(flips).enumerate() {
            let view = if f && m.orientations == 2 { 1 } else { 0 };
            let offset = ((i * m.orientations + view) * per * 4) as u64;
            self.file
                .read_exact_at(&mut bytes, offset)
                .with_context(|| format!("{}: reading item {i}", self.dir.display()))?;
            for (o, c) in out[k * per..(k + 1) * per].iter_mut().zip(bytes.chunks_exact(4)) {
                *o = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
            }
        }
        Ok(Tensor::from_data(TensorData::new(out, [indices.len(), m.tokens, 2 * m.channels]), device))
    }
}
