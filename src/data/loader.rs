//! Deterministic, resumable batching with background decoding.
//!
//! The order of epoch `e` is a permutation drawn from `(seed, e)` alone, and so is each item's
//! horizontal flip (probability 0.5, the reference's only training augmentation), so the batch at
//! any `(epoch, step)` is known without replaying the run: `--resume` continues on exactly the
//! batches an uninterrupted run would have seen. Incomplete final batches are dropped
//! (`drop_last=True`, as the reference's training loader).
//!
//! [`Loader::stream`] decodes upcoming batches on worker threads while the model trains, so the
//! model never waits on JPEG decoding and resizing.

use super::dataset::Dataset;
use crate::rng::Rng;
use anyhow::{Context, Result, bail};
use burn::prelude::*;
use rayon::prelude::*;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};

const ORDER_TAG: u64 = 0x6f72_6465_7273_6565;

/// Batching options.
#[derive(Clone, Debug)]
pub struct LoaderConfig {
    /// Images per batch.
    pub batch_size: usize,
    /// Square image side.
    pub image_size: usize,
    /// Seed of the order and the flips.
    pub seed: u64,
    /// Shuffle every epoch (training) or keep the dataset order (evaluation).
    pub shuffle: bool,
    /// Random horizontal flips.
    pub flip: bool,
    /// Drop the incomplete last batch (training) or keep it (evaluation).
    pub drop_last: bool,
    /// Decoding threads.
    pub workers: usize,
    /// Batches decoded ahead.
    pub prefetch: usize,
    /// Skip an unreadable item with a warning (counted in [`Loader::skipped`]) instead of failing
    /// (evaluation; training batches must stay whole, and a latent cache aligned with the items).
    pub skip_unreadable: bool,
}

/// One batch: images `(B, 3, S, S)` in [-1, 1] (flips applied) on the host, labels, positions.
#[derive(Clone, Debug)]
pub struct Batch {
    /// Pixel values, `B·3·S·S`, channel-planar per image.
    pub images: Vec<f32>,
    /// Labels.
    pub labels: Vec<usize>,
    /// Dataset indices.
    pub indices: Vec<usize>,
    /// Epoch of the batch.
    pub epoch: usize,
    /// Position of the batch in its epoch.
    pub step_in_epoch: usize,
    /// Image side.
    pub size: usize,
}

impl Batch {
    /// Number of images.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether the batch is empty.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// The images as a `(B, 3, S, S)` tensor.
    pub fn tensor(&self, device: &Device) -> Tensor<4> {
        Tensor::from_data(TensorData::new(self.images.clone(), [self.len(), 3, self.size, self.size]), device)
    }
}

/// Batches of a dataset.
#[derive(Clone)]
pub struct Loader {
    dataset: Arc<dyn Dataset>,
    config: LoaderConfig,
    pool: Arc<rayon::ThreadPool>,
    step_multiple: usize,
    /// `(offset, len)` of the part of each batch this loader decodes (a process's part of a
    /// multi-process job's batch); `None`: all of it.
    part: Option<(usize, usize)>,
    /// Items found unreadable (each warned about and counted once, however often it is read).
    skipped: Arc<std::sync::Mutex<std::collections::BTreeSet<usize>>>,
}

impl Loader {
    /// A loader; errors when the dataset has fewer items than one batch (with `drop_last`).
    pub fn new(dataset: Arc<dyn Dataset>, config: LoaderConfig) -> Result<Self> {
        if config.batch_size == 0 {
            bail!("batch size must be positive");
        }
        if config.drop_last && dataset.len() < config.batch_size {
            bail!("{} has {} images, fewer than one batch of {}", dataset.describe(), dataset.len(), config.batch_size);
        }
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(config.workers.max(1))
            .thread_name(|i| format!("rectok-data-{i}"))
            .build()
            .context("cannot start data-loading threads")?;
        Ok(Self { dataset, config, pool: Arc::new(pool), step_multiple: 1, part: None, skipped: Default::default() })
    }

    /// Distinct unreadable items skipped so far (with `skip_unreadable`).
    pub fn skipped(&self) -> usize {
        self.skipped.lock().expect("skipped items").len()
    }

    /// The same batches, failing on an unreadable item instead of skipping it.
    pub fn strict(mut self) -> Self {
        self.config.skip_unreadable = false;
        self
    }

    /// With `drop_last`, also drops the batches after the last whole group of `k` in each epoch,
    /// so that an epoch is a whole number of optimizer steps of `k` accumulated micro-batches (the
    /// reference drops the incomplete global batch).
    pub fn with_step_multiple(mut self, k: usize) -> Self {
        self.step_multiple = k.max(1);
        self
    }

    /// Decodes only items `offset..offset + len` of each batch (a process's part of the batch of
    /// a multi-process job, [`crate::dist::World::part`]); the order, flips and batch count stay
    /// those of whole batches.
    pub fn with_part(mut self, offset: usize, len: usize) -> Self {
        self.part = Some((offset, len));
        self
    }

    /// The dataset.
    pub fn dataset(&self) -> &Arc<dyn Dataset> {
        &self.dataset
    }

    /// The options.
    pub fn config(&self) -> &LoaderConfig {
        &self.config
    }

    /// Batches per epoch.
    pub fn steps_per_epoch(&self) -> usize {
        let n = self.dataset.len();
        if self.config.drop_last {
            n / self.config.batch_size / self.step_multiple * self.step_multiple
        } else {
            n.div_ceil(self.config.batch_size)
        }
    }

    /// Item order and flips of `epoch`.
    pub fn epoch_plan(&self, epoch: usize) -> (Vec<usize>, Vec<bool>) {
        let n = self.dataset.len();
        let mut order: Vec<usize> = (0..n).collect();
        let mut rng = Rng::for_item(self.config.seed ^ ORDER_TAG, epoch as u64);
        if self.config.shuffle {
            rng.shuffle(&mut order);
        }
        let flips = (0..n).map(|_| self.config.flip && rng.uniform() < 0.5).collect();
        (order, flips)
    }

    /// Decodes the batch at `(epoch, step)` now.
    pub fn batch(&self, epoch: usize, step: usize) -> Result<Batch> {
        let (order, flips) = self.epoch_plan(epoch);
        self.assemble(&order, &flips, epoch, step)
    }

    fn assemble(&self, order: &[usize], flips: &[bool], epoch: usize, step: usize) -> Result<Batch> {
        let b = self.config.batch_size;
        let (offset, len) = self.part.unwrap_or((0, b));
        let start = step * b + offset;
        let end = (start + len).min(order.len());
        if start >= end {
            bail!("batch {step} of epoch {epoch} is past the end of the data");
        }
        let s = self.config.image_size;
        let items: Vec<(usize, bool)> = (start..end).map(|p| (order[p], flips[p])).collect();
        let decoded: Vec<Result<(Vec<f32>, usize)>> = self.pool.install(|| {
            items
                .par_iter()
                .map(|&(index, flip)| {
                    let (img, label) = self.dataset.get(index, s)?;
                    if (img.width() as usize, img.height() as usize) != (s, s) {
                        bail!("item {index} has size {}×{}, expected {s}×{s}", img.width(), img.height());
                    }
                    Ok((to_planes(&img, flip), label))
                })
                .collect()
        });
        let mut images = Vec::with_capacity(items.len() * 3 * s * s);
        let mut labels = Vec::with_capacity(items.len());
        let mut indices = Vec::with_capacity(items.len());
        for (d, &(index, _)) in decoded.into_iter().zip(&items) {
            match d {
                Ok((px, label)) => {
                    images.extend_from_slice(&px);
                    labels.push(label);
                    indices.push(index);
                }
                Err(e) if self.config.skip_unreadable => {
                    if self.skipped.lock().expect("skipped items").insert(index) {
                        tracing::warn!("{e:#}; skipped");
                    }
                }
                Err(e) => return Err(e),
            }
        }
        Ok(Batch { images, labels, indices, epoch, step_in_epoch: step, size: s })
    }

    /// Batches from `(epoch, step)` onwards, across epochs without end, decoded ahead on a
    /// background thread. Dropping the stream stops the thread.
    pub fn stream(&self, epoch: usize, step: usize) -> BatchStream {
        self.stream_at_most(epoch, step, usize::MAX)
    }

    /// As [`stream`](Self::stream), ending after `count` batches.
    fn stream_at_most(&self, epoch: usize, step: usize, count: usize) -> BatchStream {
        let (tx, rx) = sync_channel(self.config.prefetch.max(1));
        let loader = self.clone();
        let handle = std::thread::Builder::new()
            .name("rectok-loader".into())
            .spawn(move || loader.produce(epoch, step, count, tx))
            .expect("spawn loader thread");
        BatchStream { rx, _handle: handle }
    }

    fn produce(&self, mut epoch: usize, mut step: usize, count: usize, tx: SyncSender<Result<Batch>>) {
        let per_epoch = self.steps_per_epoch();
        let mut plan = self.epoch_plan(epoch);
        for _ in 0..count {
            if step >= per_epoch {
                epoch += 1;
                step = 0;
                plan = self.epoch_plan(epoch);
            }
            let batch = self.assemble(&plan.0, &plan.1, epoch, step);
            let failed = batch.is_err();
            if tx.send(batch).is_err() || failed {
                return;
            }
            step += 1;
        }
    }

    /// The batches that hold the first `limit` items of a sequential loader (one pass), each with
    /// how many of its readable items fall within the limit (skipped items are simply absent).
    pub fn first_items(&self, limit: usize) -> impl Iterator<Item = Result<(Batch, usize)>> + '_ {
        let limit = limit.min(self.dataset.len());
        self.items_in_batches(limit, 0..limit.div_ceil(self.config.batch_size))
    }

    /// As [`first_items`](Self::first_items), only the batches in `batches` (a process's block
    /// of a sharded evaluation: the same batches as one process decodes, so the same results).
    pub fn items_in_batches(
        &self,
        limit: usize,
        batches: std::ops::Range<usize>,
    ) -> impl Iterator<Item = Result<(Batch, usize)>> + '_ {
        let limit = limit.min(self.dataset.len());
        // Decoding ahead stops at the block's end (other processes decode what follows).
        let mut stream = (!batches.is_empty()).then(|| self.stream_at_most(0, batches.start, batches.len()));
        batches.map(move |_| {
            let batch = stream.as_mut().context("an empty block of batches")?.next_batch()?;
            let take = batch.indices.iter().take_while(|&&i| i < limit).count();
            Ok((batch, take))
        })
    }

    /// Every item once, in dataset order, without flips (statistics, evaluation); unreadable items
    /// are skipped with a warning and counted (see [`strict`](Self::strict)).
    pub fn sequential(dataset: Arc<dyn Dataset>, batch_size: usize, image_size: usize, workers: usize) -> Result<Self> {
        Self::new(
            dataset,
            LoaderConfig {
                batch_size,
                image_size,
                seed: 0,
                shuffle: false,
                flip: false,
                drop_last: false,
                workers,
                prefetch: 2,
                skip_unreadable: true,
            },
        )
    }
}

/// Prefetched batches (see [`Loader::stream`]).
pub struct BatchStream {
    rx: Receiver<Result<Batch>>,
    _handle: std::thread::JoinHandle<()>,
}

impl BatchStream {
    /// The next batch (blocks until decoded).
    pub fn next_batch(&mut self) -> Result<Batch> {
        self.rx.recv().context("the data-loading thread stopped")?
    }
}

/// RGB8 → channel-planar `[-1, 1]` floats (`(u8/255 − 0.5)/0.5`), optionally mirrored.
fn to_planes(img: &image::RgbImage, flip: bool) -> Vec<f32> {
    let (w, h) = (img.width() as usize, img.height() as usize);
    let raw = img.as_raw();
    let mut v = vec![0f32; 3 * h * w];
    for y in 0..h {
        for x in 0..w {
            let sx = if flip { w - 1 - x } else { x };
            for c in 0..3 {
                v[c * h * w + y * w + x] = (raw[(y * w + sx) * 3 + c] as f32 / 255.0 - 0.5) / 0.5;
            }
        }
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::procedural::Procedural;

    fn loader(workers: usize) -> Loader {
        let cfg = LoaderConfig {
            batch_size: 4,
            image_size: 8,
            seed: 5,
            shuffle: true,
            flip: true,
            drop_last: true,
            workers,
            prefetch: 2,
            skip_unreadable: false,
        };
        Loader::new(Arc::new(Procedural::new(1, 10)), cfg).unwrap()
    }

    #[test]
    fn order_is_a_function_of_seed_and_epoch_and_streams_resume_exactly() {
        let l = loader(2);
        assert_eq!(l.steps_per_epoch(), 2);
        let (o0, f0) = l.epoch_plan(0);
        let mut sorted = o0.clone();
        sorted.sort();
        assert_eq!(sorted, (0..10).collect::<Vec<_>>());
        assert_ne!(o0, l.epoch_plan(1).0, "epochs reshuffle");
        assert!(f0.iter().any(|&f| f) && f0.iter().any(|&f| !f));
        // A stream started mid-way yields the same batches as the full stream at that point.
        let mut full = l.stream(0, 0);
        let all: Vec<Batch> = (0..5).map(|_| full.next_batch().unwrap()).collect();
        assert_eq!((all[2].epoch, all[2].step_in_epoch, all[4].epoch), (1, 0, 2));
        let mut resumed = loader(1).stream(1, 1);
        let b = resumed.next_batch().unwrap();
        assert_eq!((b.indices.clone(), b.images.clone()), (all[3].indices.clone(), all[3].images.clone()));
        // Flips mirror the image.
        let (img, _) = l.dataset().get(all[0].indices[0], 8).unwrap();
        let plain = to_planes(&img, false);
        let first = &all[0].images[..3 * 64];
        let flipped = f0[0];
        assert_eq!(first == plain.as_slice(), !flipped);
        assert!(first.iter().all(|v| (-1.0..=1.0).contains(v)));
    }
}
