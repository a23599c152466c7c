//! Generator training: DiT^DH with rectified flow on a frozen tokenizer's normalised latents,
//! after the reference's `main_diffusion.py` (docs/TRAINING.md §5).
//!
//! One optimizer step = `accum_steps` micro-batches of: flipped images → posterior **sample**
//! (`mean + std·ε`, from the encoder or from cached moments) → per-channel normalisation →
//! `t = 1 − S(u)` (shift only for s > 1), `x_t = t·x1 + (1−t)·x0`, velocity target `x1 − x0`,
//! labels dropped to the null class with p = 0.1 → MSE; then global-norm clipping, AdamW (no
//! weight decay; `pos_embed` and `t_embedder.W` frozen) at the "ditdh_sched" learning rate of
//! the fractional epoch, and the EMA update.
//!
//! The run folder, checkpoints, resume, the loop and its schedule are [`super::run`]'s; this file
//! holds the generator's parts and its step. Sample grids and the online evaluation draw their
//! noise from their own fixed streams, never from the training stream.

use super::generator_config::GeneratorTrainConfig;
use super::latents::{CacheOptions, LatentCache, collect_latent_stats};
use super::monitor::MetricsLog;
use super::optim::{AdamW, AdamWConfig, LossScale, apply_updates, ditdh_schedule, unscale_and_clip};
use super::params;
use super::run::{Run, RunEnd, Trainer, TrainingBatches, check_finite};
use crate::data::transforms::tensor_to_images;
use crate::data::{BatchStream, DataSpec, Loader, Split, open_dataset, save_png};
use crate::eval::{GeneratorEvalOptions, TeacherClassifier, evaluate_generator, labelled_images};
use crate::generator::dit_dh::DitInit;
use crate::generator::sampler::sample_class_latents;
use crate::generator::transport::{TrainingDraws, training_losses};
use crate::generator::{DitDh, DitDhConfig, Guidance, Integrator};
use crate::io::step_progress;
use crate::metrics::extractor::Extractor;
use crate::metrics::fid::{FeatureStats, StatsAccumulator, read_npz, write_npz};
use crate::nn::init::initialize;
use crate::rectified_flow::ode_grid;
use crate::rng::Rng;
use crate::tokenizer::RecTok;
use crate::weights::CheckpointEntry;
use crate::weights::generator::{load_generator, save_generator};
use crate::weights::tokenizer::{
    TokenizerLoadOptions, load_latent_stats, load_tokenizer, save_latent_stats, save_tokenizer,
};
use anyhow::{Context, Result, anyhow, bail};
use burn::prelude::*;
use image::RgbImage;
use indicatif::ProgressBar;
use serde_json::{Map, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Tags of the fixed noise streams of the grids and the online evaluation.
const GRID_SEED_TAG: u64 = 0x6772_6964_7365_6564;
const EVAL_SEED_TAG: u64 = 0x6576_616c_7365_6564;
/// Real held-out images the teacher classifier is fitted and scored on (5/7 and 2/7).
const CLASSIFIER_IMAGES: usize = 700;

/// Values of one optimizer step.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct GenStepValues {
    /// Velocity MSE (mean over the micro-batches).
    pub loss: f64,
    /// Gradient norm before clipping.
    pub grad_norm: f64,
}

impl super::run::StepValues for GenStepValues {
    fn record(&self) -> Map<String, Value> {
        [("loss", self.loss), ("grad_norm", self.grad_norm)]
            .into_iter()
            .map(|(k, x)| (k.to_string(), x.into()))
            .collect()
    }

    fn progress(&self) -> String {
        format!("loss {:.4} |g| {:.3}", self.loss, self.grad_norm)
    }
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

/// A generator training run (see [`Run`]).
pub type GeneratorTrainer = Run<GeneratorTraining>;

/// The parts of a generator run: the frozen tokenizer, the DiT^DH and its EMA, the optimizer,
/// the latent source, and the online evaluation's references.
pub struct GeneratorTraining {
    config: GeneratorTrainConfig,
    device: Device,
    inner: Device,
    tokenizer: RecTok,
    model: DitDh,
    ema: DitDh,
    opt: AdamW,
    batches: TrainingBatches,
    source: LatentSource,
    trainable: BTreeSet<String>,
    extractor: Option<Extractor>,
    fd_reference: Option<FeatureStats>,
    classifier: Option<TeacherClassifier>,
    initial_eval: Option<OnlineEval>,
}

impl Trainer for GeneratorTraining {
    type Config = GeneratorTrainConfig;
    type Values = GenStepValues;
    type Summary = GenTrainSummary;
    const PLOTTED: &'static [&'static str] = &["loss", "grad_norm", "lr", "fd", "class_accuracy"];
    const TITLE: &'static str = "DiT^DH generator training";

    fn build(
        config: &GeneratorTrainConfig,
        run_dir: &Path,
        checkpoint: Option<&Path>,
        rng: &mut Rng,
        device: &Device,
    ) -> Result<Self> {
        if config.tokenizer.path.as_os_str().is_empty() {
            bail!(
                "no tokenizer: pass --tokenizer (a run's tokenizer.safetensors or RecTok_decft.pth), or set \
                    tokenizer.path"
            );
        }
        let config = config.clone();
        let device = device.clone();
        let inner = device.clone().without_autodiff();

        // Data.
        let spec: DataSpec = config.data.source.parse().map_err(|e: String| anyhow!("data.source: {e}"))?;
        let dataset = open_dataset(&spec, Split::Train, config.run.seed)
            .with_context(|| format!("opening training data {spec}"))?;

        // The frozen tokenizer, with statistics: from a resumed run's export, a file, the
        // tokenizer itself, or computed over the training images.
        let entry: CheckpointEntry = match config.tokenizer.entry.as_str() {
            "" | "auto" => CheckpointEntry::Auto,
            e => e.parse().map_err(|e: String| anyhow!("tokenizer.entry: {e}"))?,
        };
        let (mut tokenizer, _) = load_tokenizer(
            &config.tokenizer.path,
            &TokenizerLoadOptions { entry, config: None, without_semantic: true },
            &inner,
        )
        .with_context(|| format!("loading the tokenizer {}", config.tokenizer.path.display()))?;
        let size = tokenizer.config.img_size;

        // Model (checked before the statistics and the cache, which take time).
        let num_classes = config.model.num_classes.unwrap_or(dataset.num_classes());
        if num_classes < dataset.num_classes() {
            bail!("model.num_classes = {num_classes}, but the training data has {} classes", dataset.num_classes());
        }
        let mut model_config =
            DitDhConfig::parse(&config.model.preset, tokenizer.token_channels(), tokenizer.grid_size())
                .map_err(|e| anyhow!("model.preset: {e}"))?;
        model_config.num_classes = num_classes;
        model_config.label_dropout_prob = config.model.label_dropout_prob;
        model_config.validate().map_err(|e| anyhow!("[model]: {e}"))?;
        crate::device::check_trainable_parameter_count(model_config.approx_params(), "the DiT^DH")
            .map_err(|e| anyhow!("[model]: {e}"))?;
        if let Some(dir) = config.latents.cache.as_ref().filter(|d| !d.as_os_str().is_empty()) {
            crate::io::check_output_folder(&run_dir.join(dir), "latents.cache (--cache)")?;
        }

        let extractor = (config.run.fd_images > 0)
            .then(|| Extractor::load(&config.run.fd_extractor, &inner).context("run.fd_extractor"))
            .transpose()?;
        // The batches first: their checks (the batch against the data and the processes) come
        // before the statistics, which take time.
        let batches = TrainingBatches::new(
            &dataset,
            &spec,
            &config.data,
            (config.optim.batch_size, config.optim.accum_steps),
            size,
            config.run.seed,
        )?;
        let world = crate::dist::world();
        let run_stats = run_dir.join("latent_stats.safetensors");
        // Rank 0's view of the run folder decides for every process whether the statistics are
        // computed (together) or read.
        let have_run_stats = world.root_decides(run_stats.exists());
        if have_run_stats {
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
            let stats = collect_latent_stats(&tokenizer, &loader, limit, &inner, world, |k| bar.inc(k as u64))?;
            bar.finish_and_clear();
            tokenizer.stats = Some(stats);
        }
        let stats = tokenizer.stats.clone().expect("statistics set above");
        stats.validate(tokenizer.token_channels()).map_err(|e| anyhow!("latent statistics: {e}"))?;
        if !have_run_stats && world.is_root() {
            save_latent_stats(&stats, &run_stats)?;
        }

        let source = match &config.latents.cache {
            Some(dir) if !dir.as_os_str().is_empty() => LatentSource::Cache(LatentCache::build(
                &run_dir.join(dir),
                dataset.clone(),
                (&tokenizer, &config.tokenizer.path.display().to_string()),
                CacheOptions {
                    flip: config.data.flip,
                    batch_size: config.optim.batch_size,
                    workers: config.data.workers,
                },
                &inner,
                world,
            )?),
            _ => LatentSource::Images,
        };

        let o = &config.optim;
        let opt_config = AdamWConfig { beta1: o.beta1, beta2: o.beta2, eps: o.eps, weight_decay: o.weight_decay };
        let (model, ema, opt) = match checkpoint {
            Some(ckpt) => {
                let load = |file: &str| -> Result<DitDh> {
                    Ok(load_generator(&ckpt.join(file), CheckpointEntry::Auto, Some(model_config.clone()), &inner)?.0)
                };
                (
                    load("model.safetensors")?,
                    load("ema.safetensors")?,
                    AdamW::load(&ckpt.join("optimizer.safetensors"), opt_config, &inner)?,
                )
            }
            None => {
                let m = initialize(model_config.init(&inner), &DitInit, rng);
                (m.clone(), m, AdamW::new(opt_config))
            }
        };
        // `pos_embed` and `t_embedder.W` are fixed: no gradient, not in the optimizer; the EMA copies them.
        let mut model = model.train().with_grad_checkpoint(config.run.grad_checkpoint);
        model.pos_embed = model.pos_embed.no_grad();
        model.t_embedder.freqs = model.t_embedder.freqs.no_grad();
        let trainable: BTreeSet<String> =
            params::values(&model).into_keys().filter(|p| p != "pos_embed" && p != "t_embedder.freqs").collect();

        // Online evaluation: reference statistics of held-out real images and the teacher
        // classifier, computed once per run folder.
        // Rank 0 alone evaluates during training, so it alone needs them.
        let references = extractor
            .as_ref()
            .filter(|_| crate::dist::world().is_root())
            .map(|e| online_references(&config, &spec, e, &tokenizer, dataset.num_classes(), run_dir, &inner))
            .transpose()?;
        let (fd_reference, classifier) = references.map_or((None, None), |(r, c)| (Some(r), c));

        let trainer = Self {
            config,
            device,
            inner,
            tokenizer,
            model,
            ema,
            opt,
            batches,
            source,
            trainable,
            extractor,
            fd_reference,
            classifier,
            initial_eval: None,
        };
        let n_train = params::count(&trainer.model, &trainer.trainable);
        tracing::info!(
            "DiT^DH {} ({} × {} encoder, {} × {} head, patch {}): {:.2}M trainable parameters on {}×{}×{} latents \
                (time shift {:.3}); {} images, {} steps/epoch of {}×{}, lr {:.1e}; latents from {}",
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
        Ok(trainer)
    }

    fn batches(&self) -> &TrainingBatches {
        &self.batches
    }

    fn batches_mut(&mut self) -> &mut TrainingBatches {
        &mut self.batches
    }

    /// Learning rate of step `step` (0-based): "ditdh_sched" of the fractional epoch.
    fn lr_at(&self, step: usize) -> f64 {
        let o = &self.config.optim;
        ditdh_schedule(self.epoch_at(step), o.lr, o.min_lr, o.decay_start_epoch, o.decay_end_epoch, o.cosine)
    }

    /// Starts the image stream (none with a latent cache) and, for a fresh run with an online
    /// evaluation, measures the untrained EMA.
    fn begin(&mut self, step: usize, fresh: bool, metrics: &MetricsLog) -> Result<()> {
        if fresh && self.extractor.is_some() && self.initial_eval.is_none() {
            self.initial_eval = Some(self.logged_eval(step, metrics)?);
        }
        if matches!(self.source, LatentSource::Images) {
            self.batches.start_stream(step);
        }
        Ok(())
    }

    /// One optimizer step (0-based `step`). Every check comes before the update.
    fn step(
        &mut self,
        stream: &mut Option<BatchStream>,
        step: usize,
        rng: &mut Rng,
        loss_scale: &mut Option<LossScale>,
    ) -> Result<GenStepValues> {
        let scale = loss_scale.as_ref().map_or(1.0, |s| s.scale);
        let accum = self.config.optim.accum_steps;
        let lr = self.lr_at(step);
        let mut values = GenStepValues::default();
        let local = self.local_step(stream, scale, rng, step * accum);
        // The step's one read back (and, across processes, its one sum): its loss and norm.
        let reduced = params::reduce_step(local)?;
        let mut grads = reduced.grads.into_iter().next().context("no gradients in the step")?;
        values.loss = reduced.scalars[0];
        check_finite("velocity loss", values.loss)?;
        let clip = self.config.optim.clip_grad;
        values.grad_norm = unscale_and_clip(&mut grads, reduced.squared_norms[0].sqrt(), clip, scale);
        if !apply_updates(loss_scale, &[("gradient norm", values.grad_norm)], step)?[0] {
            return Ok(values);
        }
        // Weight decay is 0 in the reference; when set, it follows the reference's rule (no
        // decay on biases and 1-d parameters).
        let names = crate::weights::generator::key_map();
        let decays = |path: &str, shape: &[usize]| super::optim::reference_decays(&names.to_reference(path), shape);
        self.model = self.opt.step(self.model.clone(), &grads, lr, &decays);
        self.ema = params::ema_update(self.ema.clone(), &self.model, &self.trainable, self.config.optim.ema_decay);
        Ok(values)
    }

    /// The online evaluation every `run.fd_every` steps.
    fn extra_record(
        &mut self,
        step: usize,
        last: usize,
        record: &mut Map<String, Value>,
        bar: &ProgressBar,
    ) -> Result<()> {
        let fd_every = self.config.run.fd_every;
        if fd_every > 0 && step.is_multiple_of(fd_every) && step != last {
            let e = bar.suspend(|| self.online_eval())?;
            insert_eval(record, &e);
        }
        Ok(())
    }

    fn broadcast_parameters(&mut self) {
        self.model = params::broadcast_module(self.model.clone());
        self.ema = params::broadcast_module(self.ema.clone());
    }

    fn save(&self, dir: &Path) -> Result<()> {
        save_generator(&self.model.valid(), &dir.join("model.safetensors"))?;
        save_generator(&self.ema, &dir.join("ema.safetensors"))?;
        self.opt.save(&dir.join("optimizer.safetensors"))
    }

    /// The class grid (one row per class) of the EMA model.
    fn save_grid(&self, path: &Path) -> Result<()> {
        let s = &self.config.sample;
        let classes = s.grid_classes.clamp(1, self.ema.config.num_classes);
        let labels: Vec<usize> = (0..classes).flat_map(|c| std::iter::repeat_n(c, s.grid_per_class.max(1))).collect();
        let mut images = Vec::with_capacity(labels.len());
        for (k, chunk) in labels.chunks(64).enumerate() {
            images.extend(self.sample_images(chunk, GRID_SEED_TAG, (k * 64) as u64)?);
        }
        save_png(&crate::data::images::image_grid(&images, s.grid_per_class.max(1)), path)
    }

    /// The final online evaluation; exports `generator.safetensors` (EMA) and
    /// `tokenizer.safetensors` (with the latent statistics).
    fn finish(&mut self, end: RunEnd<'_>) -> Result<GenTrainSummary> {
        let final_eval = self.extractor.is_some().then(|| self.logged_eval(end.steps, end.metrics)).transpose()?;
        let generator = end.run_dir.join("generator.safetensors");
        save_generator(&self.ema, &generator)?;
        let tokenizer = end.run_dir.join("tokenizer.safetensors");
        save_tokenizer(&self.tokenizer, &tokenizer)?;
        tracing::info!(
            "done: {} steps; checkpoint {}; samples {}; EMA generator {}; tokenizer with statistics {}",
            end.steps,
            end.checkpoint.display(),
            end.grid.display(),
            generator.display(),
            tokenizer.display()
        );
        Ok(GenTrainSummary {
            steps: end.steps,
            generator,
            tokenizer,
            eval: (self.initial_eval.clone(), final_eval),
            real_class_accuracy: self.classifier.as_ref().map(|c| c.real_accuracy),
            seconds: end.seconds,
        })
    }
}

impl Run<GeneratorTraining> {
    /// The EMA generator.
    pub fn ema(&self) -> &DitDh {
        &self.trainer.ema
    }
}

impl GeneratorTraining {
    /// This process's part of a step: its slices of `accum` micro-batches of the global batch
    /// through the velocity loss, with the loss and gradients weighted by their share of the
    /// global batch (for [`params::reduce_step`]). `scale`: the f16 loss scale.
    fn local_step(
        &mut self,
        stream: &mut Option<BatchStream>,
        scale: f64,
        rng: &mut Rng,
        micro0: usize,
    ) -> Result<params::LocalStep> {
        let accum = self.config.optim.accum_steps;
        let mut loss_sum: Option<Tensor<1>> = None;
        let mut grads: BTreeMap<String, Tensor<1>> = BTreeMap::new();
        // Slices per micro-batch: the data-parallel replicas, at most one per sample.
        let shards = params::replicas(self.config.run.data_parallel, &self.device).min(self.config.optim.batch_size);
        // Every rank draws the whole global micro-batch's randomness in the same order and takes
        // its part, so a step is the same at any number of processes.
        let b = self.config.optim.batch_size;
        let (first, count) = crate::dist::world().part(b);
        for a in 0..accum {
            let (x1, labels) = self.micro_batch(micro0 + a, stream, rng)?;
            let [_, c, h, w] = x1.dims();
            // The reference's draw order: noise, then time, then the label-dropout uniforms.
            let draws = TrainingDraws {
                x0: rng.normal_tensor([b, c, h, w], &self.device).narrow(0, first, count),
                t_u: rng.uniform_tensor([b], &self.device).narrow(0, first, count),
                label_drop_u: Some(rng.uniform_tensor([b], &self.device).narrow(0, first, count)),
            };
            let y = Tensor::<1, Int>::from_data(
                TensorData::new(labels.iter().map(|&l| l as i64).collect::<Vec<_>>(), [count]),
                &self.device,
            );
            let x1 = x1.autodiff();
            // Slices of this process's part: the sum of their mean losses, each weighted by its
            // share of the global batch, is the global batch's mean.
            let bounds = params::shard_bounds(count, shards);
            let parts = bounds
                .iter()
                .map(|&(s, n)| {
                    let draws = TrainingDraws {
                        x0: draws.x0.clone().narrow(0, s, n),
                        t_u: draws.t_u.clone().narrow(0, s, n),
                        label_drop_u: draws.label_drop_u.clone().map(|u| u.narrow(0, s, n)),
                    };
                    (
                        (x1.clone().narrow(0, s, n), y.clone().narrow(0, s, n), draws),
                        scale * n as f64 / (b * accum) as f64,
                    )
                })
                .collect();
            let (losses, g) = params::data_parallel_grads(&self.model, &self.device, parts, |net, (x1, y, draws)| {
                Ok((training_losses(net, x1, y, &draws).loss, vec![], ()))
            })?;
            for (&(_, n), out) in bounds.iter().zip(losses) {
                let part = out.loss * (n as f64 / (b * accum) as f64);
                loss_sum = Some(match loss_sum.take() {
                    Some(sum) => sum + part,
                    None => part,
                });
            }
            params::accumulate(&mut grads, g);
        }
        grads.retain(|k, _| self.trainable.contains(k));
        let loss_sum = loss_sum.context("no micro-batch in the step")?;
        Ok(params::LocalStep { scalars: vec![loss_sum], grads: vec![grads] })
    }
    /// Clean normalised latents `(B, C, g, g)` (on the plain device) and labels of micro-batch
    /// `micro` (counted from the start of training).
    fn micro_batch(
        &mut self,
        micro: usize,
        stream: &mut Option<BatchStream>,
        rng: &mut Rng,
    ) -> Result<(Tensor<4>, Vec<usize>)> {
        let (l, c) = (self.tokenizer.grid_size().pow(2), self.tokenizer.token_channels());
        // This process's part of the global micro-batch; the posterior noise is drawn for all of
        // it (see `local_step`).
        let b = self.config.optim.batch_size;
        let (first, count) = crate::dist::world().part(b);
        match &self.source {
            LatentSource::Images => {
                let batch = stream.as_mut().context("the batch stream was not started")?.next_batch()?;
                if batch.len() != count {
                    bail!("a batch of {} images where this process takes {count}", batch.len());
                }
                let eps = rng.normal_tensor([b, l, c], &self.inner).narrow(0, first, count);
                Ok((self.tokenizer.tokenize(batch.tensor(&self.inner), Some(eps)), batch.labels))
            }
            LatentSource::Cache(cache) => {
                let (epoch, k) = self.batches.position(micro);
                let (order, flips) = self.batches.loader.epoch_plan(epoch);
                let part = k * b + first..k * b + first + count;
                let (idx, fl) = (&order[part.clone()], &flips[part]);
                let moments = cache.moments(idx, fl, &self.inner)?;
                let labels = idx.iter().map(|&i| cache.label(i)).collect();
                let eps = rng.normal_tensor([b, l, c], &self.inner).narrow(0, first, count);
                Ok((self.tokenizer.sample_from_moments(moments, eps), labels))
            }
        }
    }

    fn guidance(&self) -> Guidance<'static> {
        if self.config.sample.cfg > 1.0 {
            Guidance::Cfg { scale: self.config.sample.cfg, interval: (0.0, 1.0) }
        } else {
            Guidance::None
        }
    }

    /// Decoded EMA samples of `labels` from the fixed stream `tag`, 8-bit.
    pub fn sample_images(&self, labels: &[usize], tag: u64, first: u64) -> Result<Vec<RgbImage>> {
        let grid = ode_grid(self.config.sample.steps, self.ema.config.time_shift());
        let z = sample_class_latents(
            &self.ema,
            &self.guidance(),
            labels,
            self.config.run.seed ^ tag,
            first,
            &grid,
            Integrator::Euler,
            |_| {},
        );
        tensor_to_images(self.tokenizer.detokenize(z)).context("EMA samples")
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
            // Rank 0 evaluates alone while the other ranks go on (they wait at the next step).
            world: crate::dist::single(),
        };
        let mut hits = 0;
        let r = evaluate_generator(
            &self.ema,
            &self.tokenizer,
            &options,
            &self.inner,
            |_| {},
            |images, labels| {
                if let Some(c) = &self.classifier {
                    hits += c.hits(images, labels)?;
                }
                Ok(())
            },
        )?
        .context("a single-process evaluation has its results")?;
        Ok(OnlineEval {
            fd: r.distance.map(|d| d.value),
            class_accuracy: self.classifier.as_ref().map(|_| hits as f64 / self.config.run.fd_images as f64),
        })
    }

    /// The online evaluation, appended to `metrics` as the record of `step`.
    fn logged_eval(&self, step: usize, metrics: &MetricsLog) -> Result<OnlineEval> {
        let e = self.online_eval()?;
        let mut rec = Map::new();
        rec.insert("step".into(), step.into());
        insert_eval(&mut rec, &e);
        metrics.append(&rec)?;
        Ok(e)
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
    // Held-out real images: the procedural set's held-out items, else the first training images.
    let split = if matches!(spec, DataSpec::Procedural { .. }) { Split::Val } else { Split::Train };
    let data = open_dataset(spec, split, config.run.seed)?;
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
            "teacher classifier (EfficientNet-Lite0 features + linear probe, fitted on reconstructions of real \
                images): {:.1}% on reconstructions of held-out images",
            100.0 * c.real_accuracy
        );
        Some(c)
    } else {
        None
    };
    Ok((reference, classifier))
}
