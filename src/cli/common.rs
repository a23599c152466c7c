//! Options and helpers shared by several subcommands.

use crate::data::images::load_rgb8_then;
use crate::data::transforms::center_crop_arr;
use crate::data::{ImageSource, list_images};
use crate::device::{DeviceChoice, select_device, set_cpu_threads};
use crate::io::Inputs;
use crate::tokenizer::{RecTok, RecTokConfig};
use crate::weights::CheckpointEntry;
use crate::weights::tokenizer::{TokenizerLoadOptions, load_latent_stats, load_tokenizer};
use anyhow::{Result, anyhow, bail};
use burn::prelude::*;
use image::RgbImage;
use rayon::prelude::*;
use std::path::{Path, PathBuf};

/// `--device` / `--threads`.
#[derive(clap::Args, Debug, Clone)]
pub struct DeviceArgs {
    /// Compute device: cpu (always available), vulkan or cuda (when built with those features).
    #[arg(long, default_value = "cpu")]
    pub device: DeviceChoice,
    /// CPU worker threads (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
}

impl DeviceArgs {
    /// Checks `--threads` and that the device is compiled in, without starting anything.
    pub fn validate(&self) -> Result<()> {
        if let Some(n) = self.threads {
            crate::device::check_threads(n, "--threads").map_err(|e| anyhow!(e))?;
        }
        if !crate::device::compiled_devices().contains(&self.device) {
            select_device(self.device).map_err(|e| anyhow!(e))?;
        }
        Ok(())
    }

    /// Configures threads and returns the device.
    pub fn device(&self) -> Result<Device> {
        self.validate()?;
        set_cpu_threads(self.threads);
        select_device(self.device).map_err(|e| anyhow!(e))
    }
}

/// `--batch-size` must be at least 1.
pub fn require_batch_size(batch_size: usize) -> Result<()> {
    require_positive(batch_size, "--batch-size")
}

/// A count option that must be at least 1.
pub fn require_positive(value: usize, option: &str) -> Result<()> {
    if value == 0 {
        bail!("{option} must be at least 1, got 0");
    }
    Ok(())
}

/// `--steps`: time-grid points, 2 to 10,000.
pub fn check_steps(steps: usize) -> Result<()> {
    if !(2..=10_000).contains(&steps) {
        bail!("--steps must be between 2 and 10000 (N time-grid points give N − 1 integration steps), got {steps}");
    }
    Ok(())
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
        inputs.add(&self.tokenizer, "--tokenizer").add_opt(self.latent_stats.as_deref(), "--latent-stats");
        if let Some(c) = &self.config {
            inputs.add(Path::new(c), "--config");
        }
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
            if report.entry.is_empty() {
                "a bare state dict".to_string()
            } else {
                format!("the `{}` entry", report.entry)
            },
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
        if let Some(path) = &self.latent_stats {
            let stats = load_latent_stats(path)?;
            stats.validate(model.token_channels()).map_err(|e| anyhow!("{}: {e}", path.display()))?;
            model.stats = Some(stats);
        }
        Ok(model)
    }
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
        return Err(anyhow!("{}: no images found (looked for .png, .jpg, .jpeg, .webp, in any case)", input.display()));
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
        let mut unreadable = Vec::new();
        let mut done = 0;
        for chunk in self.sources.chunks(batch_size) {
            let loaded: Vec<Result<RgbImage>> = chunk
                .par_iter()
                .map(|s| {
                    load_rgb8_then(&s.path, |img| if let Some(size) = crop { center_crop_arr(&img, size) } else { img })
                })
                .collect();
            let (mut names, mut images) = (Vec::new(), Vec::new());
            for (source, r) in chunk.iter().zip(loaded) {
                match r {
                    Ok(img) => {
                        names.push(source.name.clone());
                        images.push(img);
                    }
                    Err(e) if self.from_folder => {
                        bar.suspend(|| tracing::warn!("{e:#}; skipped"));
                        unreadable.push(source.path.clone());
                    }
                    Err(e) => return Err(e),
                }
            }
            if !images.is_empty() {
                done += images.len();
                bar.suspend(|| f(names, images))?;
            }
            bar.inc(chunk.len() as u64);
        }
        bar.finish_and_clear();
        if !self.skipped_non_images.is_empty() || !unreadable.is_empty() {
            tracing::warn!(
                "skipped {} non-image file(s) and {} unreadable image(s)",
                self.skipped_non_images.len(),
                unreadable.len()
            );
        }
        Ok(done)
    }
}

pub use crate::io::progress;

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
        inputs.add(&self.generator, "--generator");
        if let Some(c) = &self.generator_config {
            inputs.add(Path::new(c), "--generator-config");
        }
    }

    /// Loads the generator, checking it fits the tokenizer's latents.
    pub fn load(&self, tokenizer: &RecTok, device: &Device) -> Result<crate::generator::DitDh> {
        crate::data::images::require_regular_file(&self.generator, "--generator")?;
        load_generator_for(
            &self.generator,
            self.generator_entry.clone(),
            self.generator_config.as_deref(),
            tokenizer,
            device,
        )
    }
}

/// Loads a DiT^DH checkpoint, checking it fits the tokenizer's latents.
pub fn load_generator_for(
    path: &Path,
    entry: CheckpointEntry,
    config: Option<&str>,
    tokenizer: &RecTok,
    device: &Device,
) -> Result<crate::generator::DitDh> {
    use crate::generator::DitDhConfig;
    let (c, g) = (tokenizer.token_channels(), tokenizer.grid_size());
    let config = config.map(|s| DitDhConfig::parse(s, c, g).map_err(|e| anyhow!(e))).transpose()?;
    let t = std::time::Instant::now();
    let (model, report) = crate::weights::generator::load_generator(path, entry, config, device)?;
    let cfg = &model.config;
    if cfg.token_channels != c || cfg.input_size != g {
        return Err(anyhow!(
            "{}: the generator works on {}×{}×{} latents but the tokenizer produces {c}×{g}×{g}",
            path.display(),
            cfg.token_channels,
            cfg.input_size,
            cfg.input_size
        ));
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
        check_steps(self.steps)
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
        inputs.add_opt(self.guide.as_deref(), "--guide");
        if let Some(c) = &self.guide_config {
            inputs.add(Path::new(c), "--guide-config");
        }
    }

    /// Checks the options without loading anything.
    pub fn validate(&self) -> Result<(f64, f64)> {
        if !(self.cfg.is_finite() && (0.0..=100.0).contains(&self.cfg)) {
            return Err(anyhow!("--cfg must be a number between 0 and 100, got {}", self.cfg));
        }
        if self.cfg_interval.len() != 2 {
            return Err(anyhow!("--cfg-interval takes two numbers, lo,hi (e.g. 0.1,0.9)"));
        }
        let interval = (self.cfg_interval[0], self.cfg_interval[1]);
        if !(0.0..=1.0).contains(&interval.0) || !(0.0..=1.0).contains(&interval.1) || interval.0 >= interval.1 {
            return Err(anyhow!(
                "--cfg-interval must be lo,hi with 0 ≤ lo < hi ≤ 1, got {},{}",
                interval.0,
                interval.1
            ));
        }
        if self.guide.is_some() && self.cfg == 1.0 {
            tracing::warn!("--guide is given but --cfg is 1: AutoGuidance has no effect at weight 1");
        }
        Ok(interval)
    }

    /// Loads the guide model, if any, checking it matches the generator.
    pub fn load_guide(
        &self,
        entry: CheckpointEntry,
        tokenizer: &RecTok,
        net: &crate::generator::DitDh,
        device: &Device,
    ) -> Result<Option<crate::generator::DitDh>> {
        let Some(path) = &self.guide else { return Ok(None) };
        let g = load_generator_for(path, entry, self.guide_config.as_deref(), tokenizer, device)?;
        if g.config.num_classes != net.config.num_classes {
            return Err(anyhow!(
                "{}: the guide has {} classes, the generator {}",
                path.display(),
                g.config.num_classes,
                net.config.num_classes
            ));
        }
        Ok(Some(g))
    }

    /// The guidance for `net` given the loaded guide.
    pub fn guidance<'a>(&self, guide: Option<&'a crate::generator::DitDh>) -> crate::generator::Guidance<'a> {
        use crate::generator::Guidance;
        let interval = (self.cfg_interval[0], self.cfg_interval[1]);
        match guide {
            Some(g) => Guidance::Auto { guide: g, scale: self.cfg, interval },
            None if self.cfg > 1.0 => Guidance::Cfg { scale: self.cfg, interval },
            None => Guidance::None,
        }
    }
}

/// The message for a tokenizer without latent statistics, when a generator needs them.
pub fn require_latent_stats(tokenizer: &RecTok, args: &TokenizerArgs) -> Result<()> {
    if tokenizer.stats.is_some() {
        return Ok(());
    }
    let t = args.tokenizer.display();
    Err(anyhow!(
        "{t}: the tokenizer carries no latent statistics, and the DiT samples normalised latents. The \
         reference recomputes them over its training set; compute them once with `rectok latent-stats \
         --tokenizer {t} --data IMAGES --output stats.safetensors` and pass --latent-stats \
         stats.safetensors (or store them with `rectok convert --latent-stats`)"
    ))
}
