//! The run scaffolding both trainers share: the run folder and its lock, the state a checkpoint
//! holds (step, random stream, configuration, time), checkpoint / resume / pruning, the training
//! loop with its schedule of logging, grids and checkpoints, progress, stopping on a non-finite
//! loss or a signal (deferred to safe points for the run's whole life, see [`crate::signals`]),
//! and the final checkpoint, grid, exports and curves.
//!
//! A trainer ([`Trainer`]) brings only its own parts — models, optimizers, data and one optimizer
//! step — and its recipe ([`Recipe`]) says how runs of it are named, scheduled and resumed.
//!
//! Every random draw of a step comes from the one [`Rng`] the run keeps and stores in each
//! checkpoint, and the data order is a function of (seed, epoch), so `--resume` continues bit
//! for bit.

use super::checkpoint::CheckpointStore;
use super::monitor::{MetricsLog, plot_metrics};
use super::optim::LossScale;
use super::session::{self, RunLock, Start};
use crate::config::{between, options};
use crate::io::{step_progress, write_atomic};
use crate::rng::Rng;
use crate::signals::{self, Deferral, Interrupted};
use anyhow::{Context, Result, anyhow};
use burn::prelude::*;
use indicatif::ProgressBar;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// The schedule options every recipe has (its `[run]` table).
#[derive(Clone, Debug)]
pub struct Schedule {
    /// Seed of initialisation, random draws and data order.
    pub seed: u64,
    /// Epochs of the learning-rate schedule.
    pub epochs: usize,
    /// Stop after this many optimizer steps (0: all `epochs`).
    pub max_steps: usize,
    /// Checkpoint every N steps (and at the end).
    pub checkpoint_every: usize,
    /// Checkpoints kept.
    pub keep_checkpoints: usize,
    /// Grid every N steps (0: only at the end).
    pub sample_every: usize,
    /// Metrics line every N steps.
    pub log_every: usize,
    /// CPU threads.
    pub threads: Option<usize>,
    /// Compute device (`cpu`, `vulkan`, `wgpu`, `cuda`).
    pub device: String,
    /// Arithmetic precision (`f32`, `f16`, `bf16`).
    pub precision: String,
}

options! {
    /// Training data.
    pub struct DataOptions {
        /// `procedural[:N]`, a class-folder tree, or a `.txt` file list.
        pub source: String = "procedural".into(),
        /// Held-out images for the reconstruction grids (default: the procedural set's held-out
        /// items, or the first training images).
        pub val_source: Option<String> = None,
        /// Decoding threads.
        pub workers: usize = 2,
        /// Batches decoded ahead.
        pub prefetch: usize = 4,
        /// Random horizontal flips (the reference's augmentation).
        pub flip: bool = true,
        /// Images in the reconstruction grids.
        pub grid_images: usize = 8,
    }
}

impl DataOptions {
    /// Range checks.
    pub fn check(&self, section: &str) -> Result<(), String> {
        self.source.parse::<crate::data::DataSpec>().map_err(|e| format!("{section}.source: {e}"))?;
        if let Some(v) = &self.val_source {
            v.parse::<crate::data::DataSpec>().map_err(|e| format!("{section}.val_source: {e}"))?;
        }
        between(&format!("{section}.workers"), self.workers, 1, 256)?;
        between(&format!("{section}.prefetch"), self.prefetch, 1, 64)?;
        between(&format!("{section}.grid_images"), self.grid_images, 1, 256)
    }
}

/// The training batches of a run and its stream of them: shuffled by (seed, epoch), flipped when
/// `data.flip`, the last incomplete batch dropped and each epoch a whole number of optimizer
/// steps of `accum` micro-batches (the reference drops the incomplete global batch).
pub struct TrainingBatches {
    /// The batches.
    pub loader: crate::data::Loader,
    /// Micro-batches per optimizer step.
    pub accum: usize,
    /// The stream of batches from [`start_stream`](Self::start_stream), lent to each step by the
    /// run.
    pub stream: Option<crate::data::BatchStream>,
}

impl TrainingBatches {
    /// Batches of `batch_size` images of `dataset` (opened from `spec`) at `image_size` px.
    pub fn new(
        dataset: &std::sync::Arc<dyn crate::data::Dataset>,
        spec: &crate::data::DataSpec,
        data: &DataOptions,
        (batch_size, accum): (usize, usize),
        image_size: usize,
        seed: u64,
    ) -> Result<Self> {
        if dataset.len() < batch_size {
            anyhow::bail!("optim.batch_size = {batch_size}: {spec} has {} images, fewer than one batch", dataset.len());
        }
        let config = crate::data::LoaderConfig {
            batch_size,
            image_size,
            seed,
            shuffle: true,
            flip: data.flip,
            drop_last: true,
            workers: data.workers,
            prefetch: data.prefetch,
            skip_unreadable: false,
        };
        // Across processes each decodes only its part of every batch.
        let world = crate::dist::world();
        if world.size() > batch_size {
            anyhow::bail!(
                "optim.batch_size = {batch_size} is the global micro-batch, split over the job's {} processes: \
                 it must be at least that many",
                world.size()
            );
        }
        let mut loader = crate::data::Loader::new(dataset.clone(), config)?.with_step_multiple(accum);
        if world.is_multi() {
            let (offset, len) = world.part(batch_size);
            loader = loader.with_part(offset, len);
        }
        if loader.steps_per_epoch() < accum {
            anyhow::bail!(
                "{spec}: {} images make fewer than one optimizer step of {batch_size}×{accum} images",
                dataset.len()
            );
        }
        Ok(Self { loader, accum, stream: None })
    }

    /// Optimizer steps per epoch.
    pub fn steps_per_epoch(&self) -> usize {
        self.loader.steps_per_epoch() / self.accum
    }

    /// Images of one optimizer step.
    pub fn images_per_step(&self) -> usize {
        self.loader.config().batch_size * self.accum
    }

    /// `(epoch, batch in the epoch)` of micro-batch `micro`, counted from the start of training.
    pub fn position(&self, micro: usize) -> (usize, usize) {
        let spe = self.loader.steps_per_epoch();
        (micro / spe, micro % spe)
    }

    /// Starts decoding ahead from the first micro-batch of optimizer step `step`.
    pub fn start_stream(&mut self, step: usize) {
        let (epoch, k) = self.position(step * self.accum);
        self.stream = Some(self.loader.stream(epoch, k));
    }
}

/// Implements [`Recipe`] for a configuration with `load` and `validate` methods and a `run` field
/// holding the [`Schedule`] options by the same names; the list holds the options beyond the
/// schedule's that may change on resume.
macro_rules! recipe {
    ($config:ty, $command:literal, [$($resumable:literal),* $(,)?]) => {
        impl $crate::train::run::Recipe for $config {
            const COMMAND: &'static str = $command;
            // Where the run stops, logging, checkpointing, threads and device leave the
            // trajectory as it is; the recipe names its own others.
            const RESUMABLE: &'static [&'static str] = &[
                "run.max_steps",
                "run.checkpoint_every",
                "run.keep_checkpoints",
                "run.sample_every",
                "run.log_every",
                "run.threads",
                "run.device",
                "run.precision",
                "run.grad_checkpoint",
                $($resumable),*
            ];

            fn load(spec: &str, overrides: &[String]) -> anyhow::Result<Self> {
                <$config>::load(spec, overrides)
            }

            fn validate(&self) -> Result<(), String> {
                <$config>::validate(self)
            }

            fn inputs(&self) -> Vec<(&'static str, std::path::PathBuf)> {
                <$config>::inputs(self)
            }

            fn schedule(&self) -> $crate::train::run::Schedule {
                let r = &self.run;
                $crate::train::run::Schedule {
                    seed: r.seed,
                    epochs: r.epochs,
                    max_steps: r.max_steps,
                    checkpoint_every: r.checkpoint_every,
                    keep_checkpoints: r.keep_checkpoints,
                    sample_every: r.sample_every,
                    log_every: r.log_every,
                    threads: r.threads,
                    device: r.device.clone(),
                    precision: r.precision.clone(),
                }
            }

            fn run_table(&self) -> anyhow::Result<toml::Value> {
                Ok(toml::Value::try_from(&self.run)?)
            }

            fn set_run_table(&mut self, table: toml::Value) -> anyhow::Result<()> {
                self.run = table.try_into().map_err(|e| anyhow::anyhow!("[run]: {e}"))?;
                Ok(())
            }
        }
    };
}
pub(crate) use recipe;

/// A recipe: the configuration of one kind of training run.
pub trait Recipe: Clone + Serialize + DeserializeOwned {
    /// The `rectok train` subcommand of such runs (`tokenizer`, `generator`).
    const COMMAND: &'static str;
    /// Options that may change when resuming (`section.key`): they leave the trajectory as it is.
    const RESUMABLE: &'static [&'static str];

    /// Reads a built-in recipe or a TOML file, with `--set` overrides.
    fn load(spec: &str, overrides: &[String]) -> Result<Self>;
    /// Range and consistency checks, naming the option at fault.
    fn validate(&self) -> Result<(), String>;
    /// The files and folders a run reads, with the option that names each.
    fn inputs(&self) -> Vec<(&'static str, PathBuf)>;

    /// Refuses inputs inside the run folder: the run writes there (its exports would replace a
    /// tokenizer given from it, a restart would discard it).
    fn check_inputs_outside(&self, run_dir: &Path) -> Result<()> {
        for (key, path) in self.inputs() {
            if crate::io::lies_within(&path, run_dir) {
                anyhow::bail!(
                    "{key} {}: lies inside the run folder {}, which the run writes; keep its inputs outside \
                    (or choose another --out)",
                    path.display(),
                    run_dir.display()
                );
            }
        }
        Ok(())
    }
    /// The schedule options.
    fn schedule(&self) -> Schedule;
    /// The `[run]` table, for the resume overrides.
    fn run_table(&self) -> Result<toml::Value>;
    /// Replaces the `[run]` table after the resume overrides.
    fn set_run_table(&mut self, table: toml::Value) -> Result<()>;

    /// Applies `--set` overrides of options that may change on resume; any other is refused
    /// unless it repeats the run's own value.
    fn adjust_for_resume(&mut self, overrides: &[String]) -> Result<()> {
        let current = toml::Table::try_from(&*self)?;
        let mut table = toml::Table::new();
        table.insert("run".into(), self.run_table()?);
        for o in overrides {
            let key = o.split('=').next().unwrap_or_default().trim();
            if Self::RESUMABLE.contains(&key) {
                crate::config::apply_override(&mut table, o)?;
                continue;
            }
            let mut changed = current.clone();
            crate::config::apply_override(&mut changed, o)?;
            if changed != current {
                anyhow::bail!(
                    "`{o}`: only {} can change when resuming; the others would change the run",
                    Self::RESUMABLE.join(", ")
                );
            }
        }
        self.set_run_table(table.remove("run").expect("run"))
    }
}

/// One step's values, as the run logs them.
pub trait StepValues {
    /// The metrics record's loss fields (step, epoch, lr and timing are added by the run).
    fn record(&self) -> Map<String, Value>;
    /// The progress bar's message.
    fn progress(&self) -> String;
    /// The log line when no progress bar is drawn.
    fn summary(&self) -> String {
        self.progress()
    }
}

/// What stopped a step on purpose: a loss term or gradient norm that is NaN or infinite. The run
/// saves the state before the step and reports it as [`TrainError::NonFinite`].
#[derive(Debug, thiserror::Error)]
#[error("the {term} is {value}")]
pub struct NonFiniteValue {
    /// The term (e.g. `KL loss`).
    pub term: String,
    /// Its value.
    pub value: f64,
}

/// Fails with [`NonFiniteValue`] unless `value` is finite.
pub fn check_finite(term: &str, value: f64) -> Result<()> {
    anyhow::ensure!(value.is_finite(), NonFiniteValue { term: term.to_string(), value });
    Ok(())
}

/// Errors that stop a run on purpose.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// A loss term became NaN or infinite.
    #[error(
        "the {term} is {value} at step {step} (epoch {epoch:.3}); the state before this step is saved in {checkpoint}"
    )]
    NonFinite {
        /// The term.
        term: String,
        /// Its value.
        value: f64,
        /// The optimizer step being computed (1-based).
        step: usize,
        /// Fractional epoch.
        epoch: f64,
        /// The checkpoint written before stopping.
        checkpoint: String,
    },
}

/// How a run ended, for the trainer's summary.
pub struct RunEnd<'a> {
    /// The run folder.
    pub run_dir: &'a Path,
    /// Steps taken in total.
    pub steps: usize,
    /// Seconds of this session.
    pub seconds: f64,
    /// The final checkpoint.
    pub checkpoint: &'a Path,
    /// The final grid.
    pub grid: &'a Path,
    /// The metrics log.
    pub metrics: &'a MetricsLog,
}

/// One kind of training: its models, optimizers, data and step.
pub trait Trainer: Sized {
    /// Its recipe.
    type Config: Recipe;
    /// One step's values.
    type Values: StepValues;
    /// What a finished run reports.
    type Summary;
    /// Metrics plotted into `loss.png`.
    const PLOTTED: &'static [&'static str];
    /// Title of `loss.png`.
    const TITLE: &'static str;

    /// Builds the parts of a run on `device` (with autodiff): from `checkpoint` when resuming,
    /// else fresh, drawing initial parameters from `rng` (the run's stream, which training then
    /// continues).
    fn build(
        config: &Self::Config,
        run_dir: &Path,
        checkpoint: Option<&Path>,
        rng: &mut Rng,
        device: &Device,
    ) -> Result<Self>;
    /// The training batches.
    fn batches(&self) -> &TrainingBatches;
    /// The training batches, whose stream [`Run`] lends to each step.
    fn batches_mut(&mut self) -> &mut TrainingBatches;
    /// Optimizer steps per epoch.
    fn steps_per_epoch(&self) -> usize {
        self.batches().steps_per_epoch()
    }
    /// The fractional epoch at the start of step `step` (0-based).
    fn epoch_at(&self, step: usize) -> f64 {
        step as f64 / self.steps_per_epoch() as f64
    }
    /// The learning rate of step `step` (0-based).
    fn lr_at(&self, step: usize) -> f64;
    /// Starts feeding batches from step `step` (and, for a fresh run, measures the untrained
    /// model, appending to `metrics` what should be logged).
    fn begin(&mut self, step: usize, fresh: bool, metrics: &MetricsLog) -> Result<()>;
    /// One optimizer step (0-based `step`), drawing from `rng` and from `stream` (the batches'
    /// stream, lent for the step; `None` when not started), with the loss scaled by `loss_scale`
    /// (f16 training; see [`super::optim::apply_updates`]). A non-finite value is a
    /// [`NonFiniteValue`] error; no error may leave the parameters half-updated.
    fn step(
        &mut self,
        stream: &mut Option<crate::data::BatchStream>,
        step: usize,
        rng: &mut Rng,
        loss_scale: &mut Option<LossScale>,
    ) -> Result<Self::Values>;
    /// Fields added to the metrics record of `step` (`last`: the run's last step); `bar` to
    /// suspend for long work.
    fn extra_record(
        &mut self,
        step: usize,
        last: usize,
        record: &mut Map<String, Value>,
        bar: &ProgressBar,
    ) -> Result<()>;
    /// Gives every process of a multi-process job rank 0's parameters (models, EMA,
    /// discriminator) with [`super::params::broadcast_module`].
    fn broadcast_parameters(&mut self);
    /// Writes the checkpoint files (the run writes `state.json`).
    fn save(&self, dir: &Path) -> Result<()>;
    /// Writes the sample grid to `path`.
    fn save_grid(&self, path: &Path) -> Result<()>;
    /// After the final checkpoint and grid: exports and the summary.
    fn finish(&mut self, end: RunEnd<'_>) -> Result<Self::Summary>;
}

/// What a checkpoint's `state.json` holds besides the tensors.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RunState<C> {
    /// Optimizer steps taken.
    pub step: usize,
    /// The random stream after the last step.
    pub rng: Rng,
    /// The run's configuration.
    pub config: C,
    /// Training seconds so far (all sessions).
    pub elapsed_s: f64,
    /// `rectok` version that wrote it.
    pub version: String,
    /// The f16 loss scale (`run.precision = "f16"` only).
    #[serde(default)]
    pub loss_scale: Option<LossScale>,
}

/// Reads a checkpoint's `state.json`.
pub fn read_state<C: DeserializeOwned>(checkpoint: &Path) -> Result<RunState<C>> {
    let path = checkpoint.join("state.json");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{}: corrupt training state", path.display()))
}

/// `rectok train <command> --out RUN --resume`.
fn resume_command<T: Trainer>(run_dir: &Path) -> String {
    format!("rectok train {} --out {} --resume", T::Config::COMMAND, crate::io::shell_quoted(run_dir))
}

/// Adds the resume command to a signal's [`Interrupted`] raised by setup or final work.
fn with_resume<T: Trainer>(mut e: anyhow::Error, run_dir: &Path) -> anyhow::Error {
    if let Some(stop) = e.downcast_mut::<Interrupted>()
        && stop.resume.is_none()
    {
        stop.resume = Some(resume_command::<T>(run_dir));
    }
    e
}

/// A training run of `T` in its run folder.
pub struct Run<T: Trainer> {
    /// The run's configuration.
    pub config: T::Config,
    /// The trainer's parts.
    pub trainer: T,
    run_dir: PathBuf,
    rng: Rng,
    /// The random stream before the current step's draws (what a stopped step's checkpoint keeps).
    rng_at_step_start: Rng,
    step: usize,
    elapsed_s: f64,
    fresh: bool,
    /// The f16 loss scale (`run.precision = "f16"`).
    loss_scale: Option<LossScale>,
    store: CheckpointStore,
    metrics: MetricsLog,
    _lock: Option<RunLock>,
    _signals: Deferral,
}

impl<T: Trainer> Run<T> {
    /// Starts a new run in `run_dir` (which must not hold a run with a checkpoint already). When
    /// it fails to get going, what it wrote is removed again.
    ///
    /// In a multi-process job rank 0 alone locks and writes the folder; the others follow it.
    pub fn start(config: T::Config, run_dir: &Path) -> Result<Self> {
        let world = crate::dist::world();
        let created = !run_dir.exists();
        let lock = world.agree(match world.is_root() {
            true => (|| {
                config.check_inputs_outside(run_dir)?;
                let (lock, _) = session::open_run(run_dir, false, T::Config::COMMAND)?;
                write_atomic(&run_dir.join("config.toml"), toml::to_string_pretty(&config)?.as_bytes())?;
                Ok(Some(lock))
            })(),
            false => Ok(None),
        })?;
        Self::open(config, run_dir, None, lock).map_err(|e| {
            // A signal during the setup keeps what was built (statistics, the latent cache) for
            // the next start; any other failure leaves no trace of a new run.
            if e.downcast_ref::<Interrupted>().is_some() {
                return with_resume::<T>(e, run_dir);
            }
            if created && world.is_root() {
                session::discard_unstarted(run_dir);
            }
            e
        })
    }

    /// Continues the run in `run_dir` from its newest checkpoint (or starts it over when it
    /// stopped before its first one), with `overrides` of the options that may change.
    pub fn resume(run_dir: &Path, overrides: &[String]) -> Result<Self> {
        let world = crate::dist::world();
        let opened = world.agree(match world.is_root() {
            true => session::open_run(run_dir, true, T::Config::COMMAND).map(|(lock, start)| (Some(lock), start)),
            false => Ok((None, Start::Fresh)),
        })?;
        // The other processes read the checkpoint rank 0 chose (the run folder is shared).
        let (lock, start) = match world.is_multi() {
            true => (opened.0, Start::decode(&world.broadcast_bytes(opened.1.encode()))?),
            false => opened,
        };
        let (mut config, state) = match start {
            Start::Resume(ckpt) => {
                let state: RunState<T::Config> = read_state(&ckpt)?;
                (state.config.clone(), Some((ckpt, state)))
            }
            Start::Restart(file) => (T::Config::load(&file.display().to_string(), &[])?, None),
            Start::Fresh => unreachable!("open_run resumes or restarts"),
        };
        config.adjust_for_resume(overrides)?;
        config.validate().map_err(|e| anyhow!("{}: {e}", run_dir.display()))?;
        config.check_inputs_outside(run_dir)?;
        Self::open(config, run_dir, state, lock).map_err(|e| with_resume::<T>(e, run_dir))
    }

    fn open(
        config: T::Config,
        run_dir: &Path,
        state: Option<(PathBuf, RunState<T::Config>)>,
        lock: Option<RunLock>,
    ) -> Result<Self> {
        let world = crate::dist::world();
        let signals = Deferral::start();
        let schedule = config.schedule();
        let choice: crate::device::DeviceChoice =
            schedule.device.parse().map_err(|e: String| anyhow!("run.device: {e}"))?;
        crate::device::set_cpu_threads(schedule.threads);
        let device = crate::device::select_device(choice).map_err(|e| anyhow!(e))?;
        let precision: crate::device::Precision =
            schedule.precision.parse().map_err(|e: String| anyhow!("run.precision: {e}"))?;
        crate::device::set_precision(precision, &device, "run.precision").map_err(|e| anyhow!(e))?;
        let device = device.autodiff();
        // f16 scales the loss (kept across resumes); f32 and bf16 need no scaling.
        if let Some((_, s)) = &state
            && s.config.schedule().precision != schedule.precision
        {
            tracing::info!(
                "precision: {} until step {}, {} from here (f32 master weights and optimizer state carry over)",
                s.config.schedule().precision,
                s.step,
                schedule.precision
            );
        }
        let loss_scale = (precision == crate::device::Precision::F16)
            .then(|| state.as_ref().and_then(|(_, s)| s.loss_scale.clone()).unwrap_or_default());
        if let Some(s) = &loss_scale
            && !(s.scale.is_finite() && s.scale > 0.0)
        {
            anyhow::bail!("{}: corrupt training state: loss scale {}", run_dir.display(), s.scale);
        }
        let (checkpoint, mut rng, step, elapsed_s) = match &state {
            Some((ckpt, s)) => {
                tracing::info!("resuming {} from {} (step {})", run_dir.display(), ckpt.display(), s.step);
                (Some(ckpt.as_path()), s.rng.clone(), s.step, s.elapsed_s)
            }
            None => (None, Rng::seed_from(schedule.seed), 0, 0.0),
        };
        // Every process builds its parts (the statistics and caches are shared work that rank 0
        // writes into the run folder); then all take rank 0's parameters.
        let built = T::build(&config, run_dir, checkpoint, &mut rng, &device);
        let mut trainer = world.agree(built)?;
        if world.is_multi() {
            trainer.broadcast_parameters();
            let batch = trainer.batches().loader.config().batch_size;
            tracing::info!(
                "{} processes, each with {} to {} images of every {batch}-image micro-batch",
                world.size(),
                batch / world.size(),
                batch.div_ceil(world.size()),
            );
        }
        let metrics = match world.is_root() {
            true => MetricsLog::open(run_dir, state.as_ref().map(|(_, s)| s.step))?,
            false => MetricsLog::disabled(),
        };
        Ok(Self {
            store: CheckpointStore::new(run_dir, schedule.keep_checkpoints),
            config,
            trainer,
            run_dir: run_dir.to_path_buf(),
            rng_at_step_start: rng.clone(),
            rng,
            step,
            elapsed_s,
            fresh: state.is_none(),
            loss_scale,
            metrics,
            _lock: lock,
            _signals: signals,
        })
    }

    /// Optimizer steps of the whole schedule.
    pub fn total_steps(&self) -> usize {
        self.trainer.steps_per_epoch() * self.config.schedule().epochs
    }

    /// Where this run stops: `max_steps` when set, else the end of the schedule.
    pub fn last_step(&self) -> usize {
        match self.config.schedule().max_steps {
            0 => self.total_steps(),
            m => m.min(self.total_steps()),
        }
    }

    /// One optimizer step from the current state (starting the batch stream at the first call
    /// made outside [`run`](Self::run)); on failure the state before the step is saved.
    pub fn train_step(&mut self) -> Result<T::Values> {
        self.rng_at_step_start = self.rng.clone();
        let mut stream = self.trainer.batches_mut().stream.take();
        let loss_scale_before = self.loss_scale.clone();
        let result = self.trainer.step(&mut stream, self.step, &mut self.rng, &mut self.loss_scale);
        self.trainer.batches_mut().stream = stream;
        match result {
            Ok(v) => {
                self.step += 1;
                Ok(v)
            }
            Err(e) => {
                self.loss_scale = loss_scale_before;
                Err(self.save_after_failure(e))
            }
        }
    }

    /// Prepares [`train_step`](Self::train_step) outside [`run`](Self::run) (benchmarks).
    pub fn begin(&mut self) -> Result<()> {
        self.trainer.begin(self.step, false, &self.metrics)
    }

    /// Writes a checkpoint of the current state; returns its folder.
    pub fn save_checkpoint(&self) -> Result<PathBuf> {
        self.save_checkpoint_with(self.rng.clone())
    }

    fn save_checkpoint_with(&self, rng: Rng) -> Result<PathBuf> {
        let state = RunState {
            step: self.step,
            rng,
            config: self.config.clone(),
            elapsed_s: self.elapsed_s,
            version: env!("CARGO_PKG_VERSION").into(),
            loss_scale: self.loss_scale.clone(),
        };
        self.store.save(self.step, |dir| {
            self.trainer.save(dir)?;
            write_atomic(&dir.join("state.json"), serde_json::to_string_pretty(&state)?.as_bytes())
        })
    }

    /// A step failed: the state before it is intact (a step updates nothing before its last
    /// check), so it is saved — unless the run's checkpoint of this step exists — and the error
    /// says where and how to continue.
    fn save_after_failure(&mut self, e: anyhow::Error) -> anyhow::Error {
        let world = crate::dist::world();
        let saved = match self.store.get(self.step) {
            Some(existing) => Ok(existing),
            None if world.is_root() => self.save_checkpoint_with(self.rng_at_step_start.clone()),
            None => Ok(self.store.path(self.step)),
        };
        // The other processes stay until rank 0 has saved (an exit would end the job).
        let saved = world.agree(saved);
        if let Some(nf) = e.downcast_ref::<NonFiniteValue>() {
            let checkpoint = match &saved {
                Ok(p) => p.display().to_string(),
                Err(err) => format!("(none: {err})"),
            };
            return TrainError::NonFinite {
                term: nf.term.clone(),
                value: nf.value,
                step: self.step + 1,
                epoch: self.trainer.epoch_at(self.step),
                checkpoint,
            }
            .into();
        }
        match saved {
            Ok(p) => e.context(format!(
                "step {} failed; the state before it is saved in {} (continue with `{}` once the cause is fixed)",
                self.step + 1,
                p.display(),
                resume_command::<T>(&self.run_dir)
            )),
            Err(save) => e.context(format!(
                "step {} failed, and saving the state before it failed too \
                ({save:#})",
                self.step + 1
            )),
        }
    }

    fn save_grid(&self) -> Result<PathBuf> {
        let path = self.run_dir.join("samples").join(format!("step_{:08}.png", self.step));
        self.trainer.save_grid(&path)?;
        Ok(path)
    }

    /// Trains to the end (or `max_steps`): logs, grids and checkpoints on schedule, then the
    /// final checkpoint, grid, exports and `loss.png`. Ctrl-C / SIGTERM stop after the current
    /// step with a checkpoint ([`session::Interrupted`]).
    ///
    /// In a multi-process job every rank steps; rank 0 alone logs, writes grids, checkpoints and
    /// exports, and returns the summary (`None` on the other ranks).
    pub fn run(&mut self) -> Result<Option<T::Summary>> {
        let world = crate::dist::world();
        let root = world.is_root();
        let last = self.last_step();
        let schedule = self.config.schedule();
        let started = Instant::now();
        self.trainer.begin(self.step, self.fresh && root, &self.metrics)?;
        let bar = if root { step_progress(last, self.step) } else { ProgressBar::hidden() };
        let images_per_step = self.trainer.batches().images_per_step() as f64;
        let quiet_every = (last / 20).max(schedule.log_every);
        let mut window = (Instant::now(), self.step);
        while self.step < last {
            // Every rank stops after the same step, whichever received the signal.
            if let Some(signal) = world.agree_signal(signals::requested()) {
                bar.finish_and_clear();
                let checkpoint = match self.store.get(self.step) {
                    Some(existing) => Ok(existing),
                    None if root => self.save_checkpoint(),
                    None => Ok(self.store.path(self.step)),
                };
                let checkpoint = world.agree(checkpoint)?;
                return Err(
                    signals::stopped_after(signal, self.step, &checkpoint, resume_command::<T>(&self.run_dir)).into()
                );
            }
            let t0 = Instant::now();
            let v = self.train_step()?;
            self.elapsed_s += t0.elapsed().as_secs_f64();
            let step = self.step;
            let lr = self.trainer.lr_at(step - 1);
            let img_s = images_per_step * (step - window.1) as f64 / window.0.elapsed().as_secs_f64().max(1e-9);
            bar.set_position(step as u64);
            bar.set_message(format!("{} | {img_s:.1} img/s", v.progress()));
            if !root {
                continue;
            }
            let mut extra = Map::new();
            self.trainer.extra_record(step, last, &mut extra, &bar)?;
            if step.is_multiple_of(schedule.log_every) || step == last || !extra.is_empty() {
                let mut record = Map::new();
                record.insert("step".into(), step.into());
                record.insert("epoch".into(), self.trainer.epoch_at(step).into());
                record.insert("lr".into(), lr.into());
                record.extend(v.record());
                record.insert("images_per_s".into(), img_s.into());
                record.insert("elapsed_s".into(), self.elapsed_s.into());
                record.extend(extra);
                self.metrics.append(&record)?;
                window = (Instant::now(), step);
            }
            if bar.is_hidden() && (step.is_multiple_of(quiet_every) || step == last) {
                tracing::info!(
                    "step {step}/{last} epoch {:.2} lr {lr:.2e}: {}, {img_s:.1} img/s",
                    self.trainer.epoch_at(step),
                    v.summary()
                );
            }
            if schedule.sample_every > 0 && step.is_multiple_of(schedule.sample_every) {
                self.save_grid()?;
            }
            if step.is_multiple_of(schedule.checkpoint_every) && step != last {
                self.save_checkpoint()?;
            }
        }
        // From here on a signal ends the process at once: the final checkpoint comes first.
        bar.finish_and_clear();
        if !root {
            return Ok(None);
        }
        let checkpoint = self.save_checkpoint()?;
        let grid = self.save_grid()?;
        let summary = self
            .trainer
            .finish(RunEnd {
                run_dir: &self.run_dir,
                steps: self.step,
                seconds: started.elapsed().as_secs_f64(),
                checkpoint: &checkpoint,
                grid: &grid,
                metrics: &self.metrics,
            })
            .map_err(|e| with_resume::<T>(e, &self.run_dir))?;
        let plot = self.run_dir.join("loss.png");
        if let Err(e) = plot_metrics(&self.metrics.read()?, T::PLOTTED, T::TITLE, &plot) {
            tracing::warn!("no loss plot: {e}");
        }
        Ok(Some(summary))
    }
}
