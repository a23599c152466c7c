//! Generator training: DiT^DH with rectified flow on a frozen tokenizer's normalised latents,
//! after the reference's `main_diffusion.py` (spec TRAINING.md §5).
//!
//! One optimizer step = `accum_steps` micro-batches of: flipped images → posterior **sample**
//! (`mean + std·ε`, from the encoder or from cached moments) → per-channel normalisation →
//! `t = 1 − S(u)` (shift only for s > 1), `x_t = t·x1 + (1−t)·x0`, velocity target `x1 − x0`,
//! labels dropped to the null class with p = 0.1 → MSE; then global-norm clipping, AdamW (no
//! weight decay; `pos_embed` and `t_embedder.W` frozen) at the "ditdh_sched" learning rate of
//! the fractional epoch, and the EMA update.
//!
//! Every random draw comes from one [`Rng`] stored in the checkpoints and the data order is a
//! function of (seed, epoch), so `--resume` continues bit for bit. Sample grids and the online
//! evaluation draw their noise from their own fixed streams, never from the training stream.

use super::checkpoint::CheckpointStore;
use super::generator_config::GeneratorTrainConfig;
use super::latents::{LatentCache, collect_latent_stats};
use super::monitor::{MetricsLog, plot_metrics};
use crate::io::step_progress;
use super::optim::{AdamW, AdamWConfig, clip_grad_norm, ditdh_schedule, global_norm};
use super::params;
use super::session;
use crate::data::transforms::tensor_to_images;
use crate::data::{DataSpec, Dataset, Loader, LoaderConfig, Split, open_dataset, save_png};
use crate::generator::dit_dh::DitInit;
use crate::generator::sampler::sample_class_latents;
use crate::generator::transport::{TrainingDraws, training_losses};
use crate::rectified_flow::ode_grid;
use crate::generator::{DitDh, DitDhConfig, Guidance, Integrator};
use crate::metrics::extractor::Extractor;
use crate::metrics::fid::{FeatureStats, StatsAccumulator, read_npz, write_npz};
use crate::metrics::protocol::{GeneratorEvalOptions, TeacherClassifier, evaluate_generator, labelled_images};
use crate::nn::init::initialize;
use crate::rng::Rng;
use crate::tokenizer::RecTok;
use crate::weights::generator::{load_generator, save_generator};
use crate::weights::tokenizer::{TokenizerLoadOptions, load_latent_stats, load_tokenizer, save_latent_stats, save_tokenizer};
use crate::io::write_atomic;
use crate::weights::CheckpointEntry;
use anyhow::{Context, Result, anyhow, bail};
use burn::prelude::*;
use image::RgbImage;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

/// Tags of the fixed noise streams of the grids and the online evaluation.
const GRID_SEED_TAG: u64 = 0x6772_6964_7365_6564;
const EVAL_SEED_TAG: u64 = 0x6576_616c_7365_6564;
/// Real held-out images the teacher classifier is fitted and scored on (5/7 and 2/7).
const CLASSIFIER_IMAGES: usize = 700;

/// What a checkpoint's `state.json` holds besides the tensors.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct GenTrainState {
    /// Optimizer steps taken.
    pub step: usize,
    /// The random stream after the last step.
    pub rng: Rng,
    /// The run's configuration.
    pub config: GeneratorTrainConfig,
    /// Training seconds so far.
    pub elapsed_s: f64,
    /// `rectok` version that wrote it.
    pub version: String,
}

/// Values of one optimizer step.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct GenStepValues {
    /// Velocity MSE (mean over the micro-batches).
    pub loss: f64,
    /// Gradient norm before clipping.
    pub grad_norm: f64,
}

/// Online evaluation of the EMA generator.
#[derive(Clone, Debug)]
pub struct OnlineEval {
    /// FD-effnet (or FID) against held-out real images.
    pub fd: Option<f64>,
    /// Fraction of samples the teacher classifier puts in their class.
    pub class_accuracy: Option<f64>,
}

/// The end of a run.
#[derive(Clone, Debug)]
pub struct GenTrainSummary {
    /// Steps taken.
    pub steps: usize,
    /// The exported EMA generator.
    pub generator: PathBuf,
    /// The tokenizer with its latent statistics.
    pub tokenizer: PathBuf,
    /// Online evaluation before training (when this session started it) and at the end.
    pub eval: (Option<OnlineEval>, Option<OnlineEval>),
    /// Teacher accuracy on real held-out images (the ceiling of `class_accuracy`).
    pub real_class_accuracy: Option<f64>,
    /// Seconds of this session.
    pub seconds: f64,
}

/// Where the clean latents come from.
enum LatentSource {
    /// Encode the loader's (flipped) images every step.
    Images,
    /// Cached posterior moments.
    Cache(LatentCache),
}

/// A generator training run.
pub struct GeneratorTrainer {
    /// The run's configuration.
    pub config: GeneratorTrainConfig,
    run_dir: PathBuf,
    device: Device,
    inner: Device,
    tokenizer: RecTok,
    model: DitDh,
    ema: DitDh,
    opt: AdamW,
    loader: Loader,
    source: LatentSource,
    rng: Rng,
    step: usize,
    elapsed_s: f64,
    trainable: BTreeSet<String>,
    store: CheckpointStore,
    metrics: MetricsLog,
    extractor: Option<Extractor>,
    fd_reference: Option<FeatureStats>,
    classifier: Option<TeacherClassifier>,
    initial_eval: Option<OnlineEval>,
    /// The random stream before the current step's draws (what a stopped step's checkpoint keeps).
    rng_at_step_start: Rng,
    _lock: session::RunLock,
}

impl GeneratorTrainer {
    /// Starts a new run in `run_dir` (which must not hold a run with a checkpoint already).
    pub fn start(config: GeneratorTrainConfig, run_dir: &Path) -> Result<Self> {
        if config.tokenizer.path.as_os_str().is_empty() {
            bail!("no tokenizer: pass --tokenizer (a run's tokenizer.safetensors or RecTok_decft.pth), or set tokenizer.path");
        }
        let created = !run_dir.exists();
        let (lock, _) = session::open_run(run_dir, false, "generator")?;
        write_atomic(&run_dir.join("config.toml"), toml::to_string_pretty(&config)?.as_bytes())?;
        Self::build(config, run_dir, None, lock).inspect_err(|_| {
            if created {
                session::discard_unstarted(run_dir);
            }
        })
    }

    /// Continues the run in `run_dir` from its newest checkpoint (or starts it over when it
    /// stopped before its first one).
    pub fn resume(run_dir: &Path, adjust: impl FnOnce(&mut GeneratorTrainConfig)) -> Result<Self> {
        let (lock, start) = session::open_run(run_dir, true, "generator")?;
        let (mut config, resume) = match start {
            session::Start::Resume(ckpt) => {
                let state = read_state(&ckpt)?;
                (state.config.clone(), Some((ckpt, state)))
            }
            session::Start::Restart(file) => (GeneratorTrainConfig::load(&file.display().to_string(), &[])?, None),
            session::Start::Fresh => unreachable!("open_run resumes or restarts"),
        };
        adjust(&mut config);
        config.validate().map_err(|e| anyhow!("{}: {e}", run_dir.display()))?;
        Self::build(config, run_dir, resume, lock)
    }

    fn build(config: GeneratorTrainConfig, run_dir: &Path, resume: Option<(PathBuf, GenTrainState)>, lock: session::RunLock) -> Result<Self> {
        let choice: crate::device::DeviceChoice = config.run.device.parse().map_err(|e: String| anyhow!("run.device: {e}"))?;
        crate::device::set_cpu_threads(config.run.threads);
        let inner = crate::device::select_device(choice).map_err(|e| anyhow!(e))?;
        let device = inner.clone().autodiff();

        // Data.
        let spec: DataSpec = config.data.source.parse().map_err(|e: String| anyhow!("data.source: {e}"))?;
        let dataset = open_dataset(&spec, Split::Train, config.run.seed).with_context(|| format!("opening training data {spec}"))?;

        // The frozen tokenizer, with statistics: from a resumed run's export, a file, the
        // tokenizer itself, or computed over the training images.
        let entry: CheckpointEntry = match config.tokenizer.entry.as_str() {
            "" | "auto" => CheckpointEntry::Auto,
            e => e.parse().map_err(|e: String| anyhow!("tokenizer.entry: {e}"))?,
        };
        let (mut tokenizer, _) = load_tokenizer(&config.tokenizer.path, &TokenizerLoadOptions { entry, config: None, without_semantic: true }, &inner)
            .with_context(|| format!("loading the tokenizer {}", config.tokenizer.path.display()))?;
        let size = tokenizer.config.img_size;
        let run_stats = run_dir.join("latent_stats.safetensors");
        if run_stats.exists() {
            tokenizer.stats = Some(load_latent_stats(&run_stats)?);
        } else if let Some(path) = &config.tokenizer.latent_stats {
            tokenizer.stats = Some(load_latent_stats(path)?);
        } else if tokenizer.stats.is_none() {
            let limit = (config.tokenizer.stats_images > 0).then_some(config.tokenizer.stats_images);
            let loader = Loader::sequential(dataset.clone(), config.optim.batch_size, size, config.data.workers)?;
            let n = limit.unwrap_or(usize::MAX).min(dataset.len());
            tracing::info!("latent statistics over {n} training images (posterior means, no flip)");
            let bar = step_progress(n, 0);
            bar.set_message("latent statistics");
            let stats = collect_latent_stats(&tokenizer, &loader, limit, &inner, |k| bar.inc(k as u64))?;
            bar.finish_and_clear();
            tokenizer.stats = Some(stats);
        }
        let stats = tokenizer.stats.clone().expect("statistics set above");
        stats.validate(tokenizer.token_channels()).map_err(|e| anyhow!("latent statistics: {e}"))?;
        if !run_stats.exists() {
            save_latent_stats(&stats, &run_stats)?;
        }

        // Model.
        let num_classes = config.model.num_classes.unwrap_or(dataset.num_classes());
        if num_classes < dataset.num_classes() {
            bail!("model.num_classes = {num_classes}, but the training data has {} classes", dataset.num_classes());
        }
        let mut model_config = DitDhConfig::parse(&config.model.preset, tokenizer.token_channels(), tokenizer.grid_size())
            .map_err(|e| anyhow!("model.preset: {e}"))?;
        model_config.num_classes = num_classes;
        model_config.label_dropout_prob = config.model.label_dropout_prob;
        model_config.validate().map_err(|e| anyhow!("[model]: {e}"))?;

        let loader = Loader::new(
            dataset.clone(),
            LoaderConfig {
                batch_size: config.optim.batch_size,
                image_size: size,
                seed: config.run.seed,
                shuffle: true,
                flip: config.data.flip,
                drop_last: true,
                workers: config.data.workers,
                prefetch: config.data.prefetch,
            },
        )?
        .with_step_multiple(config.optim.accum_steps);
        if loader.steps_per_epoch() < config.optim.accum_steps {
            bail!("{spec}: {} images make fewer than one optimizer step of {}×{}", dataset.len(), config.optim.batch_size, config.optim.accum_steps);
        }
        let source = match &config.latents.cache {
            Some(dir) if !dir.as_os_str().is_empty() => LatentSource::Cache(LatentCache::build(
                &run_dir.join(dir),
                dataset.clone(),
                &tokenizer,
                &config.tokenizer.path.display().to_string(),
                config.data.flip,
                config.optim.batch_size,
                config.data.workers,
                &inner,
            )?),
            _ => LatentSource::Images,
        };

        let store = CheckpointStore::new(run_dir, config.run.keep_checkpoints);
        let opt_config = AdamWConfig { beta1: config.optim.beta1, beta2: config.optim.beta2, eps: config.optim.eps, weight_decay: config.optim.weight_decay };
        let (model, ema, opt, rng, step, elapsed_s) = match &resume {
            Some((ckpt, state)) => {
                let load = |file: &str| -> Result<DitDh> { Ok(load_generator(&ckpt.join(file), CheckpointEntry::Auto, Some(model_config.clone()), &inner)?.0) };
                tracing::info!("resuming {} from {} (step {})", run_dir.display(), ckpt.display(), state.step);
                (load("model.safetensors")?, load("ema.safetensors")?, AdamW::load(&ckpt.join("optimizer.safetensors"), opt_config, &inner)?, state.rng.clone(), state.step, state.elapsed_s)
            }
            None => {
                let mut rng = Rng::seed_from(config.run.seed);
                let m = initialize(model_config.init(&inner), &DitInit, &mut rng);
                (m.clone(), m, AdamW::new(opt_config), rng, 0, 0.0)
            }
        };
        // `pos_embed` and `t_embedder.W` are fixed: no gradient, not in the optimizer; the EMA copies them.
        let mut model = model.train();
        model.pos_embed = model.pos_embed.no_grad();
        model.t_embedder.freqs = model.t_embedder.freqs.no_grad();
        let trainable: BTreeSet<String> = params::values(&model).into_keys().filter(|p| p != "pos_embed" && p != "t_embedder.freqs").collect();
        let metrics = MetricsLog::open(run_dir, resume.as_ref().map(|(_, s)| s.step))?;

        // Online evaluation: reference statistics of held-out real images and the teacher
        // classifier, computed once per run folder.
        let (extractor, fd_reference, classifier) = if config.run.fd_images > 0 {
            let extractor = Extractor::load(&config.run.fd_extractor, &inner)?;
            let (reference, classifier) = online_references(&config, &spec, &extractor, &tokenizer, dataset.num_classes(), run_dir, &inner)?;
            (Some(extractor), Some(reference), classifier)
        } else {
            (None, None, None)
        };

        let mut trainer = Self {
            config,
            run_dir: run_dir.to_path_buf(),
            device,
            inner,
            tokenizer,
            model,
            ema,
            opt,
            loader,
            source,
            rng,
            step,
            elapsed_s,
            trainable,
            store,
            metrics,
            extractor,
            fd_reference,
            classifier,
            initial_eval: None,
            rng_at_step_start: Rng::seed_from(0),
            _lock: lock,
        };
        let n_train: usize = params::values(&trainer.model).iter().filter(|(k, _)| trainer.trainable.contains(*k)).map(|(_, (s, _))| s.iter().product::<usize>()).sum();
        tracing::info!(
            "DiT^DH {} ({} × {} encoder, {} × {} head, patch {}): {:.2}M trainable parameters on {}×{}×{} latents (time shift {:.3}); {} images, {} steps/epoch of {}×{}, lr {:.1e}; latents from {}",
            trainer.config.model.preset,
            trainer.model.config.enc_depth,
            trainer.model.config.enc_hidden,
            trainer.model.config.dec_depth,
            trainer.model.config.dec_hidden,
            trainer.model.config.patch_size,
            n_train as f64 / 1e6,
            trainer.model.config.token_channels,
            trainer.model.config.input_size,
            trainer.model.config.input_size,
            trainer.model.config.time_shift(),
            dataset.len(),
            trainer.steps_per_epoch(),
            trainer.config.optim.batch_size,
            trainer.config.optim.accum_steps,
            trainer.config.optim.lr,
            match &trainer.source {
                LatentSource::Images => "the encoder (every batch)".to_string(),
                LatentSource::Cache(c) => format!("the cache {}", c.dir().display()),
            }
        );
        if resume.is_none() && trainer.extractor.is_some() {
            trainer.initial_eval = Some(trainer.online_eval()?);
        }
        Ok(trainer)
    }

    /// Optimizer steps per epoch.
    pub fn steps_per_epoch(&self) -> usize {
        self.loader.steps_per_epoch() / self.config.optim.accum_steps
    }

    /// Where this run stops.
    pub fn last_step(&self) -> usize {
        let total = self.steps_per_epoch() * self.config.run.epochs;
        match self.config.run.max_steps {
            0 => total,
            m => m.min(total),
        }
    }

    /// Steps taken.
    pub fn step(&self) -> usize {
        self.step
    }

    fn epoch_at(&self, step: usize) -> f64 {
        step as f64 / self.steps_per_epoch() as f64
    }

    /// Learning rate of step `step` (0-based): "ditdh_sched" of the fractional epoch.
    pub fn lr_at(&self, step: usize) -> f64 {
        let o = &self.config.optim;
        ditdh_schedule(self.epoch_at(step), o.lr, o.min_lr, o.decay_start_epoch, o.decay_end_epoch, o.cosine)
    }

    /// The EMA generator.
    pub fn ema(&self) -> &DitDh {
        &self.ema
    }

    /// The frozen tokenizer (with its statistics).
    pub fn tokenizer(&self) -> &RecTok {
        &self.tokenizer
    }

    /// Clean normalised latents `(B, C, g, g)` (on the plain device) and labels of micro-batch
    /// `micro` (counted from the start of training).
    fn micro_batch(&mut self, micro: usize, stream: &mut Option<crate::data::BatchStream>) -> Result<(Tensor<4>, Vec<usize>)> {
        let (l, c) = (self.tokenizer.grid_size().pow(2), self.tokenizer.token_channels());
        match &self.source {
            LatentSource::Images => {
                let batch = stream.as_mut().expect("image stream").next_batch()?;
                let eps = self.rng.normal_tensor([batch.len(), l, c], &self.inner);
                Ok((self.tokenizer.tokenize(batch.tensor(&self.inner), Some(eps)), batch.labels))
            }
            LatentSource::Cache(cache) => {
                let spe = self.loader.steps_per_epoch();
                let (epoch, k) = (micro / spe, micro % spe);
                let (order, flips) = self.loader.epoch_plan(epoch);
                let b = self.config.optim.batch_size;
                let (idx, fl) = (&order[k * b..(k + 1) * b], &flips[k * b..(k + 1) * b]);
                let moments = cache.moments(idx, fl, &self.inner)?;
                let labels = idx.iter().map(|&i| cache.label(i)).collect();
                let eps = self.rng.normal_tensor([b, l, c], &self.inner);
                Ok((self.tokenizer.sample_from_moments(moments, eps), labels))
            }
        }
    }

    /// The image stream from the current step (None with a latent cache).
    pub fn batches(&self) -> Option<crate::data::BatchStream> {
        match self.source {
            LatentSource::Images => {
                let spe = self.loader.steps_per_epoch();
                let micro = self.step * self.config.optim.accum_steps;
                Some(self.loader.stream(micro / spe, micro % spe))
            }
            LatentSource::Cache(_) => None,
        }
    }

    /// Slices per micro-batch: the data-parallel replicas, at most one per sample.
    fn shards(&self) -> usize {
        params::replicas(self.config.run.data_parallel, &self.device).min(self.config.optim.batch_size)
    }

    /// One optimizer step.
    pub fn train_step(&mut self, stream: &mut Option<crate::data::BatchStream>) -> Result<GenStepValues> {
        let rng_before = self.rng.clone();
        self.rng_at_step_start = rng_before.clone();
        let accum = self.config.optim.accum_steps;
        let lr = self.lr_at(self.step);
        let epoch = self.epoch_at(self.step);
        let mut values = GenStepValues::default();
        let mut grads: BTreeMap<String, Tensor<1>> = BTreeMap::new();
        let shards = self.shards();
        for a in 0..accum {
            let (x1, labels) = self.micro_batch(self.step * accum + a, stream)?;
            let [b, c, h, w] = x1.dims();
            // The reference's draw order: noise, then time, then the label-dropout uniforms.
            let draws = TrainingDraws {
                x0: self.rng.normal_tensor([b, c, h, w], &self.device),
                t_u: self.rng.uniform_tensor([b], &self.device),
                label_drop_u: Some(self.rng.uniform_tensor([b], &self.device)),
            };
            let y = Tensor::<1, Int>::from_data(TensorData::new(labels.iter().map(|&l| l as i64).collect::<Vec<_>>(), [b]), &self.device);
            let x1 = x1.autodiff();
            // Equal slices of the batch: the mean of their mean losses is the batch's.
            let bounds = params::shard_bounds(b, shards);
            let parts = bounds
                .iter()
                .map(|&(s, n)| {
                    let draws = TrainingDraws { x0: draws.x0.clone().narrow(0, s, n), t_u: draws.t_u.clone().narrow(0, s, n), label_drop_u: draws.label_drop_u.clone().map(|u| u.narrow(0, s, n)) };
                    ((x1.clone().narrow(0, s, n), y.clone().narrow(0, s, n), draws), n as f64 / (b * accum) as f64)
                })
                .collect();
            let (losses, g) = params::data_parallel_grads(&self.model, &self.device, parts, |net, (x1, y, draws)| Ok((training_losses(net, x1, y, &draws).loss, ())))?;
            let loss = bounds.iter().zip(&losses).map(|(&(_, n), (l, ()))| l * n as f64).sum::<f64>() / b as f64;
            if !loss.is_finite() {
                return Err(self.non_finite("velocity", loss, epoch, rng_before));
            }
            values.loss += loss / accum as f64;
            params::accumulate(&mut grads, g);
        }
        grads.retain(|k, _| self.trainable.contains(k));
        let clip = self.config.optim.clip_grad;
        values.grad_norm = if clip > 0.0 { clip_grad_norm(&mut grads, clip) } else { global_norm(&grads) };
        if !values.grad_norm.is_finite() {
            return Err(self.non_finite("gradient norm of the", values.grad_norm, epoch, rng_before));
        }
        // Weight decay is 0 in the reference; when set, it follows the reference's rule (no
        // decay on biases and 1-d parameters).
        let names = crate::weights::generator::key_map();
        let decays = |path: &str, shape: &[usize]| super::optim::reference_decays(&names.to_reference(path), shape);
        self.model = self.opt.step(self.model.clone(), &grads, lr, &decays);
        self.update_ema();
        self.step += 1;
        Ok(values)
    }

    fn non_finite(&mut self, term: &str, value: f64, epoch: f64, rng_before: Rng) -> anyhow::Error {
        let checkpoint = match self.store.get(self.step) {
            Some(existing) => existing.display().to_string(),
            None => match self.save_checkpoint_with(rng_before) {
                Ok(p) => p.display().to_string(),
                Err(e) => format!("(none: {e})"),
            },
        };
        super::tokenizer::TrainError::NonFinite { term: term.to_string(), value, step: self.step + 1, epoch, checkpoint }.into()
    }

    /// A step failed (unreadable data, a device error): the state before it is intact, so it is
    /// saved (unless the run's checkpoint of this step exists) and the error says where.
    fn save_after_failure(&mut self, e: anyhow::Error) -> anyhow::Error {
        if e.downcast_ref::<super::tokenizer::TrainError>().is_some() {
            return e;
        }
        let saved = match self.store.get(self.step) {
            Some(existing) => Ok(existing),
            None => self.save_checkpoint_with(self.rng_at_step_start.clone()),
        };
        match saved {
            Ok(p) => e.context(format!(
                "step {} failed; the state before it is saved in {} (continue with `rectok train generator --out {} --resume` once the cause is fixed)",
                self.step + 1,
                p.display(),
                self.run_dir.display()
            )),
            Err(save) => e.context(format!("step {} failed, and saving the state before it failed too ({save:#})", self.step + 1)),
        }
    }

    fn update_ema(&mut self) {
        self.ema = params::ema_update(self.ema.clone(), &self.model, &self.trainable, self.config.optim.ema_decay);
    }

    /// Writes a checkpoint of the current state.
    pub fn save_checkpoint(&self) -> Result<PathBuf> {
        self.save_checkpoint_with(self.rng.clone())
    }

    fn save_checkpoint_with(&self, rng: Rng) -> Result<PathBuf> {
        let state = GenTrainState { step: self.step, rng, config: self.config.clone(), elapsed_s: self.elapsed_s, version: env!("CARGO_PKG_VERSION").into() };
        self.store.save(self.step, |dir| {
            save_generator(&self.model.valid(), &dir.join("model.safetensors"))?;
            save_generator(&self.ema, &dir.join("ema.safetensors"))?;
            self.opt.save(&dir.join("optimizer.safetensors"))?;
            write_atomic(&dir.join("state.json"), serde_json::to_string_pretty(&state)?.as_bytes())
        })
    }

    fn guidance(&self) -> Guidance<'static> {
        if self.config.sample.cfg > 1.0 { Guidance::Cfg { scale: self.config.sample.cfg, interval: (0.0, 1.0) } } else { Guidance::None }
    }

    /// Decoded EMA samples of `labels` from the fixed stream `tag`, 8-bit.
    pub fn sample_images(&self, labels: &[usize], tag: u64, first: u64) -> Result<Vec<RgbImage>> {
        let grid = ode_grid(self.config.sample.steps, self.ema.config.time_shift());
        let z = sample_class_latents(&self.ema, &self.guidance(), labels, self.config.run.seed ^ tag, first, &grid, Integrator::Euler, |_| {});
        tensor_to_images(self.tokenizer.detokenize(z)).context("EMA samples")
    }

    /// Writes the class grid (one row per class) of the EMA model.
    pub fn save_grid(&self) -> Result<PathBuf> {
        let s = &self.config.sample;
        let classes = s.grid_classes.clamp(1, self.ema.config.num_classes);
        let labels: Vec<usize> = (0..classes).flat_map(|c| std::iter::repeat_n(c, s.grid_per_class.max(1))).collect();
        let mut images = Vec::with_capacity(labels.len());
        for (k, chunk) in labels.chunks(64).enumerate() {
            images.extend(self.sample_images(chunk, GRID_SEED_TAG, (k * 64) as u64)?);
        }
        let grid = crate::data::images::image_grid(&images, s.grid_per_class.max(1));
        let path = self.run_dir.join("samples").join(format!("step_{:08}.png", self.step));
        save_png(&grid, &path)?;
        Ok(path)
    }

    /// FD (and teacher class accuracy) of `run.fd_images` class-balanced EMA samples.
    pub fn online_eval(&self) -> Result<OnlineEval> {
        let (Some(extractor), Some(reference)) = (&self.extractor, &self.fd_reference) else {
            return Ok(OnlineEval { fd: None, class_accuracy: None });
        };
        let options = GeneratorEvalOptions {
            num_samples: self.config.run.fd_images,
            steps: self.config.sample.steps,
            integrator: Integrator::Euler,
            guidance: self.guidance(),
            seed: self.config.run.seed ^ EVAL_SEED_TAG,
            batch_size: 64,
            extractor,
            reference: Some((reference, "held-out images".into())),
            save_dir: None,
        };
        let mut hits = 0;
        let r = evaluate_generator(&self.ema, &self.tokenizer, &options, &self.inner, |_| {}, |images, labels| {
            if let Some(c) = &self.classifier {
                hits += c.hits(images, labels)?;
            }
            Ok(())
        })?;
        Ok(OnlineEval {
            fd: r.distance.map(|d| d.value),
            class_accuracy: self.classifier.as_ref().map(|_| hits as f64 / self.config.run.fd_images as f64),
        })
    }

    /// Trains to the end (or `max_steps`); exports `generator.safetensors` (EMA) and
    /// `tokenizer.safetensors` (with the latent statistics).
    pub fn run(&mut self) -> Result<GenTrainSummary> {
        let last = self.last_step();
        let run = self.config.run.clone();
        let started = Instant::now();
        let mut stream = self.batches();
        let bar = step_progress(last, self.step);
        let images_per_step = (self.config.optim.batch_size * self.config.optim.accum_steps) as f64;
        let quiet_every = (last / 20).max(run.log_every);
        let mut window = (Instant::now(), self.step);
        if let Some(e) = &self.initial_eval {
            let mut rec = Map::new();
            rec.insert("step".into(), self.step.into());
            insert_eval(&mut rec, e);
            self.metrics.append(&rec)?;
        }
        let signals = session::TrainingSignals::install();
        while self.step < last {
            if let Some(signal) = signals.requested() {
                bar.finish_and_clear();
                let checkpoint = match self.store.get(self.step) {
                    Some(existing) => existing,
                    None => self.save_checkpoint()?,
                };
                let resume = format!("rectok train generator --out {} --resume", self.run_dir.display());
                return Err(signals.interrupted(signal, self.step, &checkpoint, resume).into());
            }
            let t0 = Instant::now();
            let v = match self.train_step(&mut stream) {
                Ok(v) => v,
                Err(e) => return Err(self.save_after_failure(e)),
            };
            self.elapsed_s += t0.elapsed().as_secs_f64();
            let step = self.step;
            let lr = self.lr_at(step - 1);
            let img_s = images_per_step * (step - window.1) as f64 / window.0.elapsed().as_secs_f64().max(1e-9);
            bar.set_position(step as u64);
            bar.set_message(format!("loss {:.4} |g| {:.3} lr {lr:.2e} | {img_s:.0} img/s", v.loss, v.grad_norm));
            let eval_now = run.fd_every > 0 && step % run.fd_every == 0 && step != last;
            if step % run.log_every == 0 || step == last || eval_now {
                let mut rec = Map::new();
                rec.insert("step".into(), step.into());
                rec.insert("epoch".into(), self.epoch_at(step).into());
                rec.insert("lr".into(), lr.into());
                rec.insert("loss".into(), v.loss.into());
                rec.insert("grad_norm".into(), v.grad_norm.into());
                rec.insert("images_per_s".into(), img_s.into());
                rec.insert("elapsed_s".into(), self.elapsed_s.into());
                if eval_now {
                    let e = bar.suspend(|| self.online_eval())?;
                    insert_eval(&mut rec, &e);
                }
                self.metrics.append(&rec)?;
                window = (Instant::now(), step);
            }
            if bar.is_hidden() && (step % quiet_every == 0 || step == last) {
                tracing::info!("step {step}/{last} epoch {:.2} lr {lr:.2e}: loss {:.4} |g| {:.3}, {img_s:.0} img/s", self.epoch_at(step), v.loss, v.grad_norm);
            }
            if run.sample_every > 0 && step % run.sample_every == 0 {
                self.save_grid()?;
            }
            if step % run.checkpoint_every == 0 && step != last {
                self.save_checkpoint()?;
            }
        }
        // From here on a signal ends the process at once: the final checkpoint comes first.
        drop(signals);
        bar.finish_and_clear();
        let checkpoint = self.save_checkpoint()?;
        let grid = self.save_grid()?;
        let final_eval = if self.extractor.is_some() {
            let e = self.online_eval()?;
            let mut rec = Map::new();
            rec.insert("step".into(), self.step.into());
            insert_eval(&mut rec, &e);
            self.metrics.append(&rec)?;
            Some(e)
        } else {
            None
        };
        let generator = self.run_dir.join("generator.safetensors");
        save_generator(&self.ema, &generator)?;
        let tokenizer = self.run_dir.join("tokenizer.safetensors");
        save_tokenizer(&self.tokenizer, &tokenizer)?;
        let records = self.metrics.read()?;
        let plot = self.run_dir.join("loss.png");
        if let Err(e) = plot_metrics(&records, &["loss", "grad_norm", "lr", "fd", "class_accuracy"], "DiT^DH generator training", &plot) {
            tracing::warn!("no loss plot: {e}");
        }
        tracing::info!("done: {} steps; checkpoint {}; samples {}; EMA generator {}; tokenizer with statistics {}", self.step, checkpoint.display(), grid.display(), generator.display(), tokenizer.display());
        Ok(GenTrainSummary {
            steps: self.step,
            generator,
            tokenizer,
            eval: (self.initial_eval.clone(), final_eval),
            real_class_accuracy: self.classifier.as_ref().map(|c| c.real_accuracy),
            seconds: started.elapsed().as_secs_f64(),
        })
    }
}

fn insert_eval(rec: &mut Map<String, Value>, e: &OnlineEval) {
    if let Some(fd) = e.fd {
        rec.insert("fd".into(), fd.into());
    }
    if let Some(a) = e.class_accuracy {
        rec.insert("class_accuracy".into(), a.into());
    }
}

/// Held-out real images of the training source (the procedural set's held-out items, else the
/// first images of the training data).
fn held_out(spec: &DataSpec, seed: u64) -> Result<Arc<dyn Dataset>> {
    let split = if matches!(spec, DataSpec::Procedural { .. }) { Split::Val } else { Split::Train };
    open_dataset(spec, split, seed)
}

/// Reference statistics of held-out real images for the online FD (cached in the run folder as
/// `fd_reference.npz`) and, on labelled data, the teacher classifier. The classifier is fitted on
/// the frozen tokenizer's reconstructions of real images: samples can be no sharper than those,
/// so it judges the content of a sample, not the tokenizer's blur. Its accuracy on reconstructions
/// of other held-out images is the ceiling for the samples.
fn online_references(
    config: &GeneratorTrainConfig,
    spec: &DataSpec,
    extractor: &Extractor,
    tokenizer: &RecTok,
    classes: usize,
    run_dir: &Path,
    device: &Device,
) -> Result<(FeatureStats, Option<TeacherClassifier>)> {
    let size = tokenizer.config.img_size;
    let data = held_out(spec, config.run.seed)?;
    let loader = Loader::sequential(data, 64, size, config.data.workers)?;
    let (images, labels) = labelled_images(&loader, config.run.fd_images.max(CLASSIFIER_IMAGES), device)?;
    let cached = run_dir.join("fd_reference.npz");
    let reference = match read_npz(&cached) {
        Ok(s) if s.dim() == extractor.dim() => s,
        _ => {
            let mut acc = StatsAccumulator::new(extractor.dim());
            for chunk in images.chunks(64) {
                acc.add(&extractor.features(chunk, device)?)?;
            }
            let s = acc.finish()?;
            write_npz(&s, &cached)?;
            s
        }
    };
    let classifier = if classes > 1 && images.len() >= 20 {
        let c = TeacherClassifier::fit_on_reconstructions(tokenizer, &images, &labels, classes, device)?;
        tracing::info!(
            "teacher classifier (EfficientNet-Lite0 features + linear probe, fitted on reconstructions of real images): {:.1}% on reconstructions of held-out images",
            100.0 * c.real_accuracy
        );
        Some(c)
    } else {
        None
    };
    Ok((reference, classifier))
}

/// Reads a checkpoint's `state.json`.
pub fn read_state(checkpoint: &Path) -> Result<GenTrainState> {
    super::tokenizer::read_state_json(checkpoint)
}
