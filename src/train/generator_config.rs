//! Generator-training recipes (TOML): DiT^DH on a frozen tokenizer's latents with the reference's
//! defaults (docs/TRAINING.md §5): AdamW β (0.9, 0.95), no weight decay, lr 2e-4 held to epoch 40
//! then linear to 2e-5 at epoch 800 ("ditdh_sched"), gradient clipping 1.0, EMA 0.9995 from the
//! first step, label dropout 0.1, posterior samples of flipped images.

use super::config::{DataOptions, check_adamw, check_run_resources, read_toml_among};
use crate::config::{between, count_at_least, ensure, in_unit_range, non_negative, options, positive};
use anyhow::{Result, anyhow};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// The generator recipes shipped with rectok.
pub const GENERATOR_CONFIGS: &[(&str, &str)] = &[
    ("ditdh-tiny", include_str!("../../configs/ditdh-tiny.toml")),
    ("ditdh-s", include_str!("../../configs/ditdh-s.toml")),
    ("ditdh-xl", include_str!("../../configs/ditdh-xl.toml")),
];

options! {
    /// Length, seeds, checkpointing and monitoring.
    pub struct GenRunOptions {
        /// Seed of initialisation, random draws and data order.
        pub seed: u64 = 0,
        /// Epochs (the schedule is defined in epochs).
        pub epochs: usize = 800,
        /// Stop after this many optimizer steps (0: all `epochs`).
        pub max_steps: usize = 0,
        /// Checkpoint every N steps (and at the end).
        pub checkpoint_every: usize = 1000,
        /// Checkpoints kept (the newest).
        pub keep_checkpoints: usize = 2,
        /// Sample grid from the EMA model every N steps (0: only at the end).
        pub sample_every: usize = 1000,
        /// Metrics line every N steps.
        pub log_every: usize = 10,
        /// Online FD-effnet / FID of EMA samples every N steps (0: only at the end; the reference:
        /// every 10 epochs).
        pub fd_every: usize = 0,
        /// Samples of the online evaluation (the reference: 10,000). 0 disables it.
        pub fd_images: usize = 0,
        /// Extractor of the online evaluation: `effnet` or `inception:PATH`.
        pub fd_extractor: String = "effnet".into(),
        /// CPU threads (default: all cores).
        pub threads: Option<usize> = None,
        /// Data-parallel replicas on CPU threads, each computing a slice of every micro-batch
        /// (0: one per thread, at most 4; 1: off). The result differs from 1 only in rounding.
        pub data_parallel: usize = 0,
        /// Activation checkpointing: keep only each transformer block's input in the forward pass
        /// and recompute the block in the backward pass (`torch.utils.checkpoint`), for larger
        /// batches in bounded memory at the cost of one more forward per block. Same values.
        pub grad_checkpoint: bool = false,
        /// Compute device: `cpu`, `vulkan`, `wgpu`, `cuda`.
        pub device: String = "cpu".into(),
        /// Arithmetic precision on a GPU device: `f32`, `f16` (autocast with dynamic loss scaling)
        /// or `bf16` (autocast, as the reference trains); master weights and optimizer state stay f32.
        pub precision: String = "f32".into(),
    }
}

options! {
    /// The DiT^DH: a preset for the tokenizer's latent geometry.
    pub struct GenModelOptions {
        /// `xl`, `l`, `b`, `s` or `tiny` (sized for the tokenizer's latents), or a JSON file with the
        /// generator's sizes (`enc_hidden`, `enc_depth`, `enc_heads`, or `"preset"` plus overrides).
        pub preset: String = "xl".into(),
        /// Classes (default: the training data's).
        pub num_classes: Option<usize> = None,
        /// Label dropout probability (classifier-free guidance's null class).
        pub label_dropout_prob: f64 = 0.1,
    }
}

/// The frozen tokenizer and its latent statistics.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct GenTokenizerOptions {
    /// Tokenizer file (official `.pth`, a run's `tokenizer.safetensors`); `--tokenizer`.
    pub path: PathBuf,
    /// Checkpoint entry: `auto`, `ema` or `model`.
    pub entry: String,
    /// Latent statistics file; default: those stored with the tokenizer, else computed over the
    /// training images (as the reference does at every start).
    pub latent_stats: Option<PathBuf>,
    /// Images for computed statistics (0: the whole training set).
    pub stats_images: usize,
}

/// Latent source.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct GenLatentOptions {
    /// Cache posterior moments here (built once, resumable) instead of encoding every batch;
    /// a relative path is inside the run folder.
    pub cache: Option<PathBuf>,
}

options! {
    /// Optimizer and schedule.
    pub struct GenOptimOptions {
        /// Images per micro-batch.
        pub batch_size: usize = 64,
        /// Micro-batches per optimizer step.
        pub accum_steps: usize = 16,
        /// Learning rate (not scaled by the batch size).
        pub lr: f64 = 2e-4,
        /// Final learning rate.
        pub min_lr: f64 = 2e-5,
        /// Epoch where the decay starts (the reference's `warmup_start_epoch`; no warm-up ramp).
        pub decay_start_epoch: f64 = 40.0,
        /// Epoch where it reaches `min_lr` (`warmup_end_epoch`).
        pub decay_end_epoch: f64 = 800.0,
        /// Cosine instead of linear decay.
        pub cosine: bool = false,
        /// Adam β₁.
        pub beta1: f64 = 0.9,
        /// Adam β₂.
        pub beta2: f64 = 0.95,
        /// Adam ε.
        pub eps: f64 = 1e-8,
        /// Weight decay.
        pub weight_decay: f64 = 0.0,
        /// Global gradient-norm clipping (0: off).
        pub clip_grad: f64 = 1.0,
        /// EMA decay.
        pub ema_decay: f64 = 0.9995,
    }
}

options! {
    /// Sampling for the grids and the online evaluation.
    pub struct GenSampleOptions {
        /// Time-grid points (the reference's online evaluation: 50).
        pub steps: usize = 50,
        /// Guidance scale (classifier-free above 1).
        pub cfg: f64 = 1.0,
        /// Classes in the grid (the first N).
        pub grid_classes: usize = 10,
        /// Samples per class in the grid.
        pub grid_per_class: usize = 8,
    }
}

/// A generator-training configuration.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct GeneratorTrainConfig {
    /// Run options.
    pub run: GenRunOptions,
    /// Model.
    pub model: GenModelOptions,
    /// Frozen tokenizer.
    pub tokenizer: GenTokenizerOptions,
    /// Training images.
    pub data: DataOptions,
    /// Latent cache.
    pub latents: GenLatentOptions,
    /// Optimizer.
    pub optim: GenOptimOptions,
    /// Sampling.
    pub sample: GenSampleOptions,
}

impl GeneratorTrainConfig {
    /// Reads a built-in recipe or TOML file with overrides.
    pub fn load(spec: &str, overrides: &[String]) -> Result<Self> {
        let (table, origin) = read_toml_among(spec, overrides, GENERATOR_CONFIGS, |_| Ok(()))?;
        let config: Self = toml::Value::Table(table)
            .try_into()
            .map_err(|e| anyhow!("{origin}: {}", e.to_string().trim().replace('\n', " ")))?;
        config.validate().map_err(|e| anyhow!("{origin}: {e}"))?;
        Ok(config)
    }

    /// The files and folders the run reads, with the option that names each.
    pub fn inputs(&self) -> Vec<(&'static str, PathBuf)> {
        let mut inputs = super::config::data_inputs(&self.data);
        if !self.tokenizer.path.as_os_str().is_empty() {
            inputs.push(("tokenizer.path (--tokenizer)", self.tokenizer.path.clone()));
        }
        inputs.extend(self.tokenizer.latent_stats.clone().map(|p| ("tokenizer.latent_stats (--latent-stats)", p)));
        inputs
    }

    /// Range and consistency checks of every field, naming the option, its value and the range.
    pub fn validate(&self) -> Result<(), String> {
        let (r, o, m, s) = (&self.run, &self.optim, &self.model, &self.sample);
        count_at_least("run.epochs", r.epochs, 1)?;
        count_at_least("run.checkpoint_every", r.checkpoint_every, 1)?;
        count_at_least("run.keep_checkpoints", r.keep_checkpoints, 1)?;
        count_at_least("run.log_every", r.log_every, 1)?;
        ensure(r.fd_images <= 1_000_000, "run.fd_images", "between 0 (off) and 1000000", r.fd_images)?;
        if r.fd_images == 1 {
            return Err("run.fd_images must be 0 (off) or at least 2 (a covariance needs two samples)".into());
        }
        match r.fd_extractor.split_once(':') {
            _ if r.fd_extractor == "effnet" => {}
            Some(("inception", path)) if std::path::Path::new(path).is_file() => {}
            Some(("inception", path)) => {
                return Err(format!(
                    "run.fd_extractor: `{path}` is not a file (inception:PATH names the Inception weights)"
                ));
            }
            _ => return Err(format!("run.fd_extractor must be effnet or inception:PATH, got `{}`", r.fd_extractor)),
        }
        let preset = &self.model.preset;
        if crate::generator::DitDhConfig::preset(preset, 8, 16).is_none() && !std::path::Path::new(preset).is_file() {
            return Err(format!("model.preset: {preset}: not a preset (xl, l, b, s, tiny) nor a configuration file"));
        }
        check_run_resources("run", r.threads, r.data_parallel, &r.device, &r.precision)?;
        count_at_least("optim.batch_size", o.batch_size, 1)?;
        count_at_least("optim.accum_steps", o.accum_steps, 1)?;
        positive("optim.lr", o.lr)?;
        non_negative("optim.min_lr", o.min_lr)?;
        if o.min_lr > o.lr {
            return Err(format!("optim.min_lr ({}) must not exceed optim.lr ({})", o.min_lr, o.lr));
        }
        non_negative("optim.decay_start_epoch", o.decay_start_epoch)?;
        non_negative("optim.decay_end_epoch", o.decay_end_epoch)?;
        if o.decay_end_epoch < o.decay_start_epoch {
            return Err("optim.decay_end_epoch must not come before optim.decay_start_epoch".into());
        }
        check_adamw("optim", o.beta1, o.beta2, o.eps, o.weight_decay, o.clip_grad, o.ema_decay)?;
        in_unit_range("model.label_dropout_prob", m.label_dropout_prob, 0.0, 1.0)?;
        if let Some(n) = m.num_classes {
            between("model.num_classes", n, 1, 1_000_000)?;
        }
        between("sample.steps", s.steps, 2, 10_000)?;
        between("sample.cfg", s.cfg, 0.0, 100.0)?;
        count_at_least("sample.grid_classes", s.grid_classes, 1)?;
        count_at_least("sample.grid_per_class", s.grid_per_class, 1)?;
        let grid = s.grid_classes * s.grid_per_class;
        ensure(grid <= 4096, "sample.grid_classes × sample.grid_per_class", "at most 4096", grid)?;
        self.data.check("data")?;
        if !matches!(self.tokenizer.entry.as_str(), "" | "auto") {
            self.tokenizer
                .entry
                .parse::<crate::weights::CheckpointEntry>()
                .map_err(|e| format!("tokenizer.entry: {e}"))?;
        }
        Ok(())
    }
}

super::run::recipe!(GeneratorTrainConfig, "generator", ["run.fd_every"]);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generator_recipes_parse() {
        for (name, _) in GENERATOR_CONFIGS {
            let c = GeneratorTrainConfig::load(name, &[]).unwrap_or_else(|e| panic!("{name}: {e:#}"));
            assert_eq!(c.optim.clip_grad, 1.0, "{name}");
            assert_eq!(c.optim.weight_decay, 0.0, "{name}");
        }
        let xl = GeneratorTrainConfig::load("ditdh-xl", &["optim.lr=1e-4".into()]).unwrap();
        assert_eq!((xl.optim.batch_size * xl.optim.accum_steps, xl.optim.lr, xl.optim.ema_decay), (1024, 1e-4, 0.9995));
        assert_eq!((xl.optim.decay_start_epoch, xl.optim.decay_end_epoch, xl.run.epochs), (40.0, 800.0, 800));
    }
}
