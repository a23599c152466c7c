//! Options and helpers shared by several subcommands.

use crate::data::images::load_rgb8_then;
use crate::data::transforms::center_crop_arr;
use crate::data::{DataSpec, ImageSource, list_images};
use crate::device::{DeviceChoice, Precision, check_precision_device, select_device, set_cpu_threads, set_precision};
use crate::generator::{DitDh, DitDhConfig, Guidance};
use crate::io::{Inputs, progress};
use crate::tokenizer::{RecTok, RecTokConfig};
use crate::weights::CheckpointEntry;
use crate::weights::tokenizer::{TokenizerLoadOptions, load_latent_stats, load_tokenizer};
use anyhow::{Result, anyhow, bail};
use burn::prelude::*;
use image::RgbImage;
use rayon::prelude::*;
use std::path::{Path, PathBuf};

/// `--device` / `--precision` / `--threads`.
#[derive(clap::Args, Debug, Clone)]
pub struct DeviceArgs {
    /// Compute device: cpu (always available), vulkan (alias gpu), wgpu or cuda (when built with
    /// those features).
    #[arg(long, default_value = "cpu")]
    pub device: DeviceChoice,
    /// Arithmetic precision on a GPU device: f32, f16 (alias fp16, half) or bf16 (autocast: the
    /// transformer blocks' matrix products and attention in half, the rest in f32; refused on the
    /// CPU).
    #[arg(long, default_value = "f32")]
    pub precision: Precision,
    /// CPU worker threads (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
}

impl DeviceArgs {
    /// Checks `--threads` and that the device is compiled in, without starting anything.
    pub fn validate(&self) -> Result<()> {
        check_threads(self.threads)?;
        if !crate::device::compiled_devices().contains(&self.device) {
            select_device(self.device).map_err(|e| anyhow!(e))?;
        }
        check_precision_device(self.precision, self.device, "--precision").map_err(|e| anyhow!(e))
    }

    /// Configures threads and returns the device.
    pub fn device(&self) -> Result<Device> {
        self.validate()?;
        set_cpu_threads(self.threads);
        let device = select_device(self.device).map_err(|e| anyhow!(e))?;
        set_precision(self.precision, &device, "--precision").map_err(|e| anyhow!(e))?;
        Ok(device)
    }
}

/// `--threads`, when given, must be between 1 and the number of cores.
pub fn check_threads(threads: Option<usize>) -> Result<()> {
    threads.map_or(Ok(()), |n| crate::device::check_threads(n, "--threads")).map_err(|e| anyhow!(e))
}

/// `--batch-size` must be at least 1.
pub fn require_batch_size(batch_size: usize) -> Result<()> {
    require_positive(Some(batch_size), "--batch-size")
}

/// A count option that, when given, must be at least 1.
pub fn require_positive(value: Option<usize>, option: &str) -> Result<()> {
    ensure(value != Some(0), option, "at least 1", 0)
}

/// `option` must be `what` (which `ok` says it is); the message names the option, the rule and the
/// value.
pub fn ensure(ok: bool, option: &str, what: impl std::fmt::Display, v: impl std::fmt::Display) -> Result<()> {
    crate::config::ensure(ok, option, what, v).map_err(|e| anyhow!(e))
}

/// `option` must lie in `lo..=hi`.
pub fn between<T: PartialOrd + std::fmt::Display>(option: &str, v: T, lo: T, hi: T) -> Result<()> {
    crate::config::between(option, v, lo, hi).map_err(|e| anyhow!(e))
}

/// Parses a `--data`-style source given as `option`.
pub fn parse_data(data: &str, option: &str) -> Result<DataSpec> {
    data.parse().map_err(|e: String| anyhow!("{option}: {e}"))
}

/// The files a `--data`-style source names: none for the built-in set (`procedural`).
pub fn data_path(data: &str) -> Option<&Path> {
    (!data.starts_with("procedural") && !data.starts_with("builtin")).then(|| Path::new(data))
}

/// `--tokenizer` and how to read it.
#[derive(clap::Args, Debug, Clone)]
pub struct TokenizerArgs {
    /// Tokenizer checkpoint: official RecTok.pth / RecTok_decft.pth, or safetensors.
    #[arg(long, value_name = "CKPT")]
    pub tokenizer: PathBuf,
    /// Checkpoint entry: auto (EMA weights `model_ema`/`ema`, else raw `model`/`state_dict`, else
    /// the only wrapper entry, else a bare state dict), ema, model, or any top-level entry name.
    #[arg(long, default_value = "auto")]
    pub entry: CheckpointEntry,
    /// Latent statistics (safetensors with `mean` and `std`), overriding those in the checkpoint.
    #[arg(long, value_name = "FILE")]
    pub latent_stats: Option<PathBuf>,
    /// Model configuration: a preset (rectok-b, rectok-b-head, tiny) or a JSON / TOML file;
    /// default: from the checkpoint.
    #[arg(long, value_name = "PRESET|JSON")]
    pub config: Option<String>,
}

/// Resolves `--config`: a tokenizer preset or a configuration file (see [`crate::config`]).
pub fn parse_config(spec: &str) -> Result<RecTokConfig> {
    RecTokConfig::parse(spec).map_err(|e| anyhow!("--config {e}"))
}

impl TokenizerArgs {
    /// Registers the files these options read.
    pub fn add_inputs(&self, inputs: &mut Inputs) {
        inputs
            .add(&self.tokenizer, "--tokenizer")
            .add_opt(self.latent_stats.as_deref(), "--latent-stats")
            .add_opt(self.config.as_deref().map(Path::new), "--config");
    }

    /// Loads the tokenizer (encoder + decoder only) and its statistics.
    pub fn load(&self, device: &Device) -> Result<RecTok> {
        crate::data::images::require_regular_file(&self.tokenizer, "--tokenizer")?;
        if let Some(path) = &self.latent_stats {
            crate::data::images::require_regular_file(path, "--latent-stats")?;
        }
        let options = TokenizerLoadOptions {
            entry: self.entry.clone(),
            config: self.config.as_deref().map(parse_config).transpose()?,
            without_semantic: true,
        };
        let t = std::time::Instant::now();
        let (mut model, report) = load_tokenizer(&self.tokenizer, &options, device)?;
        tracing::info!(
            "loaded tokenizer {} ({} tensors from {}{}, {:.1}M parameters) in {:.1}s",
            self.tokenizer.display(),
            report.applied,
            if report.entry.is_empty() { "a bare state dict".into() } else { format!("the `{}` entry", report.entry) },
            if report.ignored > 0 {
                format!(", {} training-only tensors ignored", report.ignored)
            } else {
                String::new()
            },
            model.num_inference_params() as f64 / 1e6,
            t.elapsed().as_secs_f64()
        );
        if !report.unused.is_empty() {
            tracing::warn!(
                "{}: {} tensors not used by the model (first: {})",
                self.tokenizer.display(),
                report.unused.len(),
                report.unused[0]
            );
        }
        attach_latent_stats(&mut model, self.latent_stats.as_deref())?;
        Ok(model)
    }

    /// Loads the tokenizer for a generator, which samples normalised latents: it must carry
    /// latent statistics.
    pub fn load_with_stats(&self, device: &Device) -> Result<RecTok> {
        let model = self.load(device)?;
        if model.stats.is_some() {
            return Ok(model);
        }
        let t = self.tokenizer.display();
        bail!(
            "{t}: the tokenizer carries no latent statistics, and the DiT samples normalised latents. The \
             reference recomputes them over its training set; compute them once with `rectok latent-stats \
             --tokenizer {t} --data IMAGES --output stats.safetensors` and pass --latent-stats \
             stats.safetensors (or store them with `rectok convert --latent-stats`)"
        )
    }
}

/// Reads latent statistics from `path`, if given, into `model`, checking they fit its channels.
pub fn attach_latent_stats(model: &mut RecTok, path: Option<&Path>) -> Result<()> {
    let Some(path) = path else { return Ok(()) };
    let stats = load_latent_stats(path)?;
    stats.validate(model.token_channels()).map_err(|e| anyhow!("{}: {e}", path.display()))?;
    model.stats = Some(stats);
    Ok(())
}

/// Images to process, after listing and reporting non-image files.
pub struct InputImages {
    /// Image files.
    pub sources: Vec<ImageSource>,
    /// Non-image files found in folders (skipped).
    pub skipped_non_images: Vec<PathBuf>,
    /// Whether they come from a folder (an unreadable one is then skipped, not an error).
    pub from_folder: bool,
}

/// Lists `input` (given as `option`), warning about non-image files; also returns the guard
/// that keeps outputs off `input` and its images.
pub fn input_images(input: &Path, option: &str) -> Result<(InputImages, Inputs)> {
    let (sources, others) = list_images(input)?;
    for p in &others {
        tracing::warn!("{}: not an image file, skipped", p.display());
    }
    if sources.is_empty() {
        bail!("{}: no images found (looked for .png, .jpg, .jpeg, .webp, in any case)", input.display());
    }
    let mut guard = Inputs::new();
    guard.add(input, option).add_files(sources.iter().map(|s| s.path.as_path()));
    Ok((InputImages { sources, skipped_non_images: others, from_folder: input.is_dir() }, guard))
}

impl InputImages {
    /// The images in batches of `batch_size`, decoded on worker threads and center-cropped to
    /// `crop` px (the reference's `center_crop_arr`) when given, with a progress bar labelled
    /// `what`: `f(names, images)` per batch. In a folder an unreadable image is skipped with a
    /// warning and counted in the summary at the end; given directly it is an error. Returns
    /// the number of images processed.
    pub fn for_each_batch(
        &self,
        batch_size: usize,
        crop: Option<usize>,
        what: &str,
        mut f: impl FnMut(Vec<String>, Vec<RgbImage>) -> Result<()>,
    ) -> Result<usize> {
        let bar = progress(self.sources.len(), what);
        let (mut unreadable, mut done) = (0usize, 0);
        let prepare = |img: RgbImage| if let Some(size) = crop { center_crop_arr(&img, size) } else { img };
        for chunk in self.sources.chunks(batch_size) {
            let loaded: Vec<Result<RgbImage>> = chunk.par_iter().map(|s| load_rgb8_then(&s.path, prepare)).collect();
            let mut batch = Vec::new();
            for (source, r) in chunk.iter().zip(loaded) {
                match r {
                    Ok(img) => batch.push((source.name.clone(), img)),
                    Err(e) if self.from_folder => {
                        bar.suspend(|| tracing::warn!("{e:#}; skipped"));
                        unreadable += 1;
                    }
                    Err(e) => return Err(e),
                }
            }
            if !batch.is_empty() {
                done += batch.len();
                let (names, images) = batch.into_iter().unzip();
                bar.suspend(|| f(names, images))?;
            }
            bar.inc(chunk.len() as u64);
        }
        bar.finish_and_clear();
        if !self.skipped_non_images.is_empty() || unreadable > 0 {
            tracing::warn!(
                "skipped {} non-image file(s) and {unreadable} unreadable image(s)",
                self.skipped_non_images.len()
            );
        }
        Ok(done)
    }
}

pub use crate::io::write_json;

/// `--generator` and how to read it.
#[derive(clap::Args, Debug, Clone)]
pub struct GeneratorArgs {
    /// Generator checkpoint: official ditdhxl_epoch_0599.pth (its `model_ema` is used), or safetensors.
    #[arg(long, value_name = "CKPT")]
    pub generator: PathBuf,
    /// Checkpoint entry of the generator (and guide): auto (EMA weights first), ema, model, or any
    /// top-level entry name.
    #[arg(long, default_value = "auto")]
    pub generator_entry: CheckpointEntry,
    /// Generator configuration when it cannot be inferred: a preset (xl, l, b, s) or a JSON file.
    #[arg(long, value_name = "PRESET|JSON")]
    pub generator_config: Option<String>,
}

impl GeneratorArgs {
    /// Registers the files these options read.
    pub fn add_inputs(&self, inputs: &mut Inputs) {
        inputs
            .add(&self.generator, "--generator")
            .add_opt(self.generator_config.as_deref().map(Path::new), "--generator-config");
    }

    /// Loads the generator, checking it fits the tokenizer's latents.
    pub fn load(&self, tokenizer: &RecTok, device: &Device) -> Result<DitDh> {
        crate::data::images::require_regular_file(&self.generator, "--generator")?;
        let (path, config) = (&self.generator, self.generator_config.as_deref());
        load_generator_for(path, self.generator_entry.clone(), config, tokenizer, device)
    }
}

/// Loads a DiT^DH checkpoint, checking it fits the tokenizer's latents.
pub fn load_generator_for(
    path: &Path,
    entry: CheckpointEntry,
    config: Option<&str>,
    tokenizer: &RecTok,
    device: &Device,
) -> Result<DitDh> {
    let (c, g) = (tokenizer.token_channels(), tokenizer.grid_size());
    let config = config.map(|s| DitDhConfig::parse(s, c, g).map_err(|e| anyhow!(e))).transpose()?;
    let t = std::time::Instant::now();
    let (model, report) = crate::weights::generator::load_generator(path, entry, config, device)?;
    let cfg = &model.config;
    if cfg.token_channels != c || cfg.input_size != g {
        bail!(
            "{}: the generator works on {}×{}×{} latents but the tokenizer produces {c}×{g}×{g}",
            path.display(),
            cfg.token_channels,
            cfg.input_size,
            cfg.input_size
        );
    }
    tracing::info!(
        "loaded generator {} ({} tensors from {}, {:.1}M parameters, {}+{} blocks) in {:.1}s",
        path.display(),
        report.applied,
        if report.entry.is_empty() { "a bare state dict".to_string() } else { format!("`{}`", report.entry) },
        model.num_params() as f64 / 1e6,
        cfg.enc_depth,
        cfg.dec_depth,
        t.elapsed().as_secs_f64()
    );
    Ok(model)
}

/// `--steps`, `--sampler`, `--seed`: how latents are sampled.
#[derive(clap::Args, Debug, Clone)]
pub struct SamplingArgs {
    /// Time-grid points (N points = N − 1 Euler steps; the official evaluation uses 150).
    #[arg(long, default_value_t = 150)]
    pub steps: usize,
    /// ODE integrator.
    #[arg(long, default_value = "euler")]
    pub sampler: crate::generator::Integrator,
    /// Seed of the initial noise: sample i always gets the same noise for a seed, at any batch size.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

impl SamplingArgs {
    /// `--steps` is 2 to 10,000.
    pub fn validate(&self) -> Result<()> {
        let what = "between 2 and 10000 (N time-grid points give N − 1 integration steps)";
        ensure((2..=10_000).contains(&self.steps), "--steps", what, self.steps)
    }
}

/// `--guide`, `--cfg`, `--cfg-interval`: how sampling is guided.
#[derive(clap::Args, Debug, Clone)]
pub struct GuidanceArgs {
    /// AutoGuidance: a weaker guide model (the released ditdhs_epoch_0029.pth); --cfg is its weight.
    #[arg(long, value_name = "CKPT")]
    pub guide: Option<PathBuf>,
    /// Guide configuration when it cannot be inferred: a preset (xl, l, b, s) or a JSON file.
    #[arg(long, value_name = "PRESET|JSON")]
    pub guide_config: Option<String>,
    /// Guidance weight: CFG with the null class, or AutoGuidance with --guide (official: 1.29 with
    /// the DiT^DH-S guide). 1 disables guidance.
    #[arg(long, default_value_t = 1.0)]
    pub cfg: f64,
    /// Interval of t (0 = noise, 1 = data) in which guidance applies, as `lo,hi`.
    #[arg(long, value_delimiter = ',', num_args = 1..=2, allow_negative_numbers = true, default_values_t = [0.0, 1.0])]
    pub cfg_interval: Vec<f64>,
}

impl GuidanceArgs {
    /// Registers the files these options read.
    pub fn add_inputs(&self, inputs: &mut Inputs) {
        inputs
            .add_opt(self.guide.as_deref(), "--guide")
            .add_opt(self.guide_config.as_deref().map(Path::new), "--guide-config");
    }

    /// Checks the options without loading anything.
    pub fn validate(&self) -> Result<()> {
        ensure(
            self.cfg.is_finite() && (0.0..=100.0).contains(&self.cfg),
            "--cfg",
            "a number between 0 and 100",
            self.cfg,
        )?;
        if self.cfg_interval.len() != 2 {
            bail!("--cfg-interval takes two numbers, lo,hi (e.g. 0.1,0.9)");
        }
        let (lo, hi) = (self.cfg_interval[0], self.cfg_interval[1]);
        if !(0.0 <= lo && lo < hi && hi <= 1.0) {
            bail!("--cfg-interval must be lo,hi with 0 ≤ lo < hi ≤ 1, got {lo},{hi}");
        }
        if self.guide.is_some() && self.cfg == 1.0 {
            tracing::warn!("--guide is given but --cfg is 1: AutoGuidance has no effect at weight 1");
        }
        Ok(())
    }

    /// Loads the guide model, if any, checking it matches the generator.
    pub fn load_guide(
        &self,
        entry: CheckpointEntry,
        tokenizer: &RecTok,
        net: &DitDh,
        device: &Device,
    ) -> Result<Option<DitDh>> {
        let Some(path) = &self.guide else { return Ok(None) };
        crate::data::images::require_regular_file(path, "--guide")?;
        let g = load_generator_for(path, entry, self.guide_config.as_deref(), tokenizer, device)?;
        if g.config.num_classes != net.config.num_classes {
            bail!(
                "{}: the guide has {} classes, the generator {}",
                path.display(),
                g.config.num_classes,
                net.config.num_classes
            );
        }
        Ok(Some(g))
    }

    /// The guidance for `net` given the loaded guide.
    pub fn guidance<'a>(&self, guide: Option<&'a DitDh>) -> Guidance<'a> {
        Guidance::select(guide, self.cfg, (self.cfg_interval[0], self.cfg_interval[1]))
    }
}
