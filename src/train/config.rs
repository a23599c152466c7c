//! Training configurations: TOML files in which every option has the reference's default, named
//! recipes built into the binary (`configs/*.toml`), and command-line overrides
//! (`--set optim.batch_size=16`).

use crate::loss::{PerceptualKind, PerceptualWeights};
use crate::tokenizer::RecTokConfig;
use anyhow::{Context, Result, anyhow, bail};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// The recipes shipped with rectok: `(name, TOML text)`.
pub const BUILTIN_CONFIGS: &[(&str, &str)] = &[
    ("tiny", include_str!("../../configs/tiny.toml")),
    ("tiny-stage2", include_str!("../../configs/tiny-stage2.toml")),
    ("rectok-b-stage1", include_str!("../../configs/rectok-b-stage1.toml")),
    ("rectok-b-stage2", include_str!("../../configs/rectok-b-stage2.toml")),
];

/// Reads a tokenizer configuration: a built-in recipe name or a TOML file, then `overrides`
/// (`dotted.key=value`, the value in TOML syntax or a bare string).
pub fn read_toml(spec: &str, overrides: &[String]) -> Result<(toml::Table, String)> {
    read_toml_among(spec, overrides, BUILTIN_CONFIGS, expand_model_sizes)
}

/// [`read_toml`] with another list of built-in recipes; `prepare` normalises the recipe's table
/// before the overrides merge into it.
pub fn read_toml_among(
    spec: &str,
    overrides: &[String],
    recipes: &[(&str, &str)],
    prepare: fn(&mut toml::Table) -> Result<()>,
) -> Result<(toml::Table, String)> {
    let (text, origin) = match recipes.iter().find(|(name, _)| *name == crate::config::canonical_name(spec)) {
        Some((name, text)) => (text.to_string(), format!("built-in recipe `{name}`")),
        None => {
            let path = Path::new(spec);
            if !path.exists() {
                bail!("{spec}: no such configuration file (built-in recipes: {})", crate::config::names(recipes));
            }
            crate::data::images::require_regular_file(path, "a configuration")?;
            (
                std::fs::read_to_string(path).with_context(|| format!("{}: cannot read", path.display()))?,
                path.display().to_string(),
            )
        }
    };
    let mut table: toml::Table = toml::from_str(&text)
        .map_err(|e| anyhow!("{origin}: invalid TOML: {}", e.to_string().trim().replace('\n', " ")))?;
    prepare(&mut table).map_err(|e| anyhow!("{origin}: {e}"))?;
    for o in overrides {
        apply_override(&mut table, o)?;
        prepare(&mut table).map_err(|e| anyhow!("--set `{o}`: {e}"))?;
    }
    Ok((table, origin))
}

/// `[model]` sizes given by name (`encoder = "small"`) become `{ width, layers, heads }` tables,
/// so that `--set model.encoder.heads=2` changes the heads of the recipe's encoder and keeps the
/// rest.
pub fn expand_model_sizes(table: &mut toml::Table) -> Result<()> {
    let Some(toml::Value::Table(model)) = table.get_mut("model") else { return Ok(()) };
    for key in ["encoder", "decoder", "semantic"] {
        if let Some(toml::Value::String(name)) = model.get(key) {
            let size =
                crate::nn::VitSize::named(name).ok_or_else(|| anyhow!("model.{key}: unknown model size `{name}`"))?;
            model.insert(key.into(), toml::Value::try_from(size)?);
        }
    }
    Ok(())
}

pub use crate::config::apply_override;

/// The data sources of a `[data]` table, as [`Recipe::inputs`](super::run::Recipe::inputs) lists
/// them.
pub fn data_inputs(data: &super::run::DataOptions) -> Vec<(&'static str, PathBuf)> {
    let mut inputs = Vec::new();
    for (key, source) in [("data.source (--data)", Some(&data.source)), ("data.val_source", data.val_source.as_ref())] {
        if let Some(spec) = source.and_then(|s| s.parse::<crate::data::DataSpec>().ok()) {
            inputs.extend(spec.path().map(|p| (key, p.to_path_buf())));
        }
    }
    inputs
}

use crate::config::options;
pub use crate::config::{between, count_at_least, ensure, in_unit_range, non_negative, positive};

/// The checks shared by the AdamW options of both recipes.
pub fn check_adamw(
    section: &str,
    beta1: f64,
    beta2: f64,
    eps: f64,
    weight_decay: f64,
    clip_grad: f64,
    ema_decay: f64,
) -> Result<(), String> {
    in_unit_range(&format!("{section}.beta1"), beta1, 0.0, 1.0)?;
    in_unit_range(&format!("{section}.beta2"), beta2, 0.0, 1.0)?;
    positive(&format!("{section}.eps"), eps)?;
    non_negative(&format!("{section}.weight_decay"), weight_decay)?;
    non_negative(&format!("{section}.clip_grad"), clip_grad)?;
    in_unit_range(&format!("{section}.ema_decay"), ema_decay, 0.0, 1.0)
}

/// `(dotted key, leaf value)` of a JSON value.
fn flatten(key: &str, v: &serde_json::Value) -> Vec<(String, serde_json::Value)> {
    match v {
        serde_json::Value::Object(m) => m.iter().flat_map(|(k, v)| flatten(&format!("{key}.{k}"), v)).collect(),
        other => vec![(key.to_string(), other.clone())],
    }
}

/// The tokenizer of a recipe from its `[model]` table: [`RecTokConfig::from_object`] with
/// `preset` defaulting to `rectok-b`.
pub fn model_from_table(table: toml::Table) -> Result<RecTokConfig, String> {
    let serde_json::Value::Object(mut obj) = serde_json::to_value(table).expect("TOML values are JSON-representable")
    else {
        unreachable!("a table is an object")
    };
    obj.entry("preset").or_insert_with(|| "rectok-b".into());
    // JSON has no NaN or infinity (they would arrive as `null`), and sizes no sign: name them here.
    for (k, v) in &obj {
        for (key, value) in flatten(k, v) {
            if value.is_null() {
                return Err(format!("model.{key} must be a finite number, got a NaN or infinite one"));
            }
            if value.as_i64().is_some_and(|i| i < 0) {
                return Err(format!("model.{key} must not be negative, got {value}"));
            }
        }
    }
    RecTokConfig::from_object(obj).map_err(|e| format!("[model]: {e}"))
}

options! {
    /// Length, seeds, checkpointing and monitoring of a run.
    pub struct RunOptions {
        /// Tokenizer stage: 1 (full training) or 2 (decoder fine-tuning).
        pub stage: u8 = 1,
        /// Seed of initialisation, random draws and data order.
        pub seed: u64 = 0,
        /// Epochs (the schedules are defined in epochs, as the reference's).
        pub epochs: usize = 200,
        /// Stop after this many optimizer steps (0: the full `epochs`); the schedule still spans
        /// `epochs`.
        pub max_steps: usize = 0,
        /// Stage 2: the stage-1 run, checkpoint folder, exported tokenizer or official `.pth`.
        pub init_from: Option<PathBuf> = None,
        /// Checkpoint every N optimizer steps (and at the end).
        pub checkpoint_every: usize = 1000,
        /// Checkpoints kept on disk (the newest ones).
        pub keep_checkpoints: usize = 2,
        /// Reconstruction grid every N steps (0: only at the end).
        pub sample_every: usize = 1000,
        /// Metrics line every N steps.
        pub log_every: usize = 10,
        /// CPU threads for tensor work (default: all cores).
        pub threads: Option<usize> = None,
        /// Data-parallel replicas on CPU threads, each computing a slice of every micro-batch
        /// (0: one per thread, at most 4; 1: off). The result differs from 1 only in rounding and,
        /// with the GAN on, in the discriminator's per-slice batch statistics (as the reference's DDP).
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

impl RunOptions {
    /// Range checks (`section` names the table in messages).
    pub fn check(&self, section: &str) -> Result<(), String> {
        count_at_least(&format!("{section}.epochs"), self.epochs, 1)?;
        count_at_least(&format!("{section}.checkpoint_every"), self.checkpoint_every, 1)?;
        count_at_least(&format!("{section}.keep_checkpoints"), self.keep_checkpoints, 1)?;
        count_at_least(&format!("{section}.log_every"), self.log_every, 1)?;
        check_run_resources(section, self.threads, self.data_parallel, &self.device, &self.precision)
    }
}

/// Checks of `threads`, `data_parallel`, `device` and `precision`, shared by both recipes.
pub fn check_run_resources(
    section: &str,
    threads: Option<usize>,
    data_parallel: usize,
    device: &str,
    precision: &str,
) -> Result<(), String> {
    if let Some(t) = threads {
        crate::device::check_threads(t, &format!("{section}.threads"))?;
    }
    ensure(data_parallel <= 64, &format!("{section}.data_parallel"), "between 0 (automatic) and 64", data_parallel)?;
    let device: crate::device::DeviceChoice = device.parse().map_err(|e| format!("{section}.device: {e}"))?;
    let precision: crate::device::Precision = precision.parse().map_err(|e| format!("{section}.precision: {e}"))?;
    crate::device::check_precision_device(precision, device, &format!("{section}.precision"))
}

pub use super::run::DataOptions;

options! {
    /// The frozen teacher of flow semantic distillation.
    pub struct TeacherOptions {
        /// `efficientnet-lite0`, `dinov3-b16:PATH`, … or `none` (stage 2, or no semantic loss).
        pub spec: String = "efficientnet-lite0".into(),
        /// Side of the teacher's input (the reference's processor: 224).
        pub resolution: usize = crate::teacher::TEACHER_RESOLUTION,
    }
}

options! {
    /// Loss terms and weights (docs/TRAINING.md §2.1–2.2).
    pub struct LossOptions {
        /// Pixel loss: `l2` (official), `l1`, `l2+l1`.
        pub reconstruction: String = "l2".into(),
        /// Pixel loss weight.
        pub reconstruction_weight: f64 = 1.0,
        /// Perceptual term: `lpips-convnext` (official, needs weight files), `effnet`, `none`.
        pub perceptual: PerceptualKind = PerceptualKind::LpipsConvnext,
        /// What runs when the official term's weights are not given: `none` or `effnet`.
        pub perceptual_fallback: PerceptualKind = PerceptualKind::None,
        /// Perceptual weight.
        pub perceptual_weight: f64 = 1.0,
        /// LPIPS weights: `vgg.pth` of the `lpips` package (linear heads), or a whole LPIPS state dict.
        pub lpips: Option<PathBuf> = None,
        /// torchvision VGG16 ImageNet weights (`vgg16-397923af.pth`), unless `lpips` holds the trunk.
        pub vgg: Option<PathBuf> = None,
        /// torchvision ConvNeXt-Small ImageNet weights (`convnext_small-0c510722.pth`).
        pub convnext: Option<PathBuf> = None,
        /// KL weight.
        pub kl_weight: f64 = 1e-6,
        /// Semantic loss: `cosine` (official), `l1`, `l2`.
        pub sem_loss: String = "cosine".into(),
        /// Semantic loss weight.
        pub sem_weight: f64 = 1.0,
        /// Generator GAN weight (0.1, what the reference really applies).
        pub gan_weight: f64 = 0.1,
        /// Epoch from which the discriminator trains and the GAN term is on.
        pub gan_start_epoch: usize = 100,
        /// Discriminator base width.
        pub disc_ndf: usize = 64,
        /// Discriminator strided layers.
        pub disc_layers: usize = 3,
    }
}

impl LossOptions {
    /// The official perceptual term's weight files.
    pub fn perceptual_weights(&self) -> PerceptualWeights {
        PerceptualWeights { lpips: self.lpips.clone(), vgg: self.vgg.clone(), convnext: self.convnext.clone() }
    }

    /// The official term's files are all named.
    pub fn has_official_perceptual_weights(&self) -> bool {
        self.convnext.is_some() && self.lpips.is_some()
    }

    /// The loss configuration these options describe.
    pub fn loss_config(&self) -> Result<crate::loss::LossConfig> {
        use crate::loss::{LossConfig, PixelLossKind, SemLossKind};
        let reconstruction = match self.reconstruction.as_str() {
            "l2" | "mse" => PixelLossKind::L2,
            "l1" => PixelLossKind::L1,
            "l2+l1" | "l1+l2" => PixelLossKind::L2L1,
            other => bail!("loss.reconstruction `{other}`: expected l2, l1 or l2+l1"),
        };
        let sem = match self.sem_loss.as_str() {
            "cosine" => SemLossKind::Cosine,
            "l1" => SemLossKind::L1,
            "l2" | "mse" => SemLossKind::L2,
            other => bail!("loss.sem_loss `{other}`: expected cosine, l1 or l2"),
        };
        Ok(LossConfig::new()
            .with_reconstruction(reconstruction)
            .with_reconstruction_weight(self.reconstruction_weight)
            .with_perceptual_weight(self.perceptual_weight)
            .with_kl_weight(self.kl_weight)
            .with_sem_loss(sem)
            .with_sem_weight(self.sem_weight)
            .with_gan_weight(self.gan_weight)
            .with_gan_start_epoch(self.gan_start_epoch))
    }
}

options! {
    /// Optimizer, schedule and EMA (docs/TRAINING.md §2.1, §2.8).
    pub struct OptimOptions {
        /// Images per step on this machine (the reference: 64 per GPU).
        pub batch_size: usize = 64,
        /// Micro-batches accumulated per optimizer step.
        pub accum_steps: usize = 1,
        /// Base learning rate; `lr = blr · batch_size · accum_steps / 256`.
        pub blr: f64 = 1e-4,
        /// Absolute learning rate, overriding the scaling rule.
        pub lr: Option<f64> = None,
        /// Final learning rate of the cosine schedule.
        pub min_lr: f64 = 0.0,
        /// Warm-up epochs as a fraction of `epochs` (`int(warmup_rate · epochs)`).
        pub warmup_rate: f64 = 0.25,
        /// AdamW weight decay of the decay group.
        pub weight_decay: f64 = 1e-4,
        /// AdamW β₁.
        pub beta1: f64 = 0.9,
        /// AdamW β₂.
        pub beta2: f64 = 0.95,
        /// AdamW ε.
        pub eps: f64 = 1e-8,
        /// Global gradient-norm clip (0: none).
        pub clip_grad: f64 = 3.0,
        /// EMA decay per optimizer step.
        pub ema_decay: f64 = 0.999,
    }
}

impl OptimOptions {
    /// Range checks.
    pub fn check(&self, section: &str) -> Result<(), String> {
        count_at_least(&format!("{section}.batch_size"), self.batch_size, 1)?;
        count_at_least(&format!("{section}.accum_steps"), self.accum_steps, 1)?;
        positive(&format!("{section}.blr"), self.blr)?;
        if let Some(lr) = self.lr {
            positive(&format!("{section}.lr"), lr)?;
        }
        non_negative(&format!("{section}.min_lr"), self.min_lr)?;
        let peak = self.peak_lr();
        if self.min_lr > peak {
            return Err(format!("{section}.min_lr ({}) must not exceed the peak learning rate ({peak})", self.min_lr));
        }
        ensure(
            (0.0..=1.0).contains(&self.warmup_rate),
            &format!("{section}.warmup_rate"),
            "in [0, 1]",
            self.warmup_rate,
        )?;
        check_adamw(section, self.beta1, self.beta2, self.eps, self.weight_decay, self.clip_grad, self.ema_decay)
    }

    /// The peak learning rate: `lr`, or `blr · effective batch / 256`.
    pub fn peak_lr(&self) -> f64 {
        self.lr.unwrap_or(self.blr * (self.batch_size * self.accum_steps) as f64 / 256.0)
    }

    /// Warm-up length in epochs, `int(warmup_rate · epochs)` as the reference.
    pub fn warmup_epochs(&self, epochs: usize) -> f64 {
        (self.warmup_rate * epochs as f64).floor()
    }
}

/// A tokenizer training run.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenizerTrainConfig {
    /// Run options.
    #[serde(default)]
    pub run: RunOptions,
    /// The tokenizer (resolved; `teacher_dim` follows the teacher).
    pub model: RecTokConfig,
    /// Data.
    #[serde(default)]
    pub data: DataOptions,
    /// Teacher.
    #[serde(default)]
    pub teacher: TeacherOptions,
    /// Losses.
    #[serde(default)]
    pub loss: LossOptions,
    /// Optimizer.
    #[serde(default)]
    pub optim: OptimOptions,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTokenizerConfig {
    #[serde(default)]
    run: RunOptions,
    #[serde(default)]
    model: toml::Table,
    #[serde(default)]
    data: DataOptions,
    #[serde(default)]
    teacher: TeacherOptions,
    #[serde(default)]
    loss: LossOptions,
    #[serde(default)]
    optim: OptimOptions,
}

impl TokenizerTrainConfig {
    /// Reads a built-in recipe or TOML file with overrides.
    pub fn load(spec: &str, overrides: &[String]) -> Result<Self> {
        let (table, origin) = read_toml(spec, overrides)?;
        // TOML errors end with a line naming the section; keep the message on one line.
        let raw: RawTokenizerConfig = toml::Value::Table(table)
            .try_into()
            .map_err(|e| anyhow!("{origin}: {}", e.to_string().trim().replace('\n', " ")))?;
        let model = model_from_table(raw.model).map_err(|e| anyhow!("{origin}: {e}"))?;
        let config =
            Self { run: raw.run, model, data: raw.data, teacher: raw.teacher, loss: raw.loss, optim: raw.optim };
        config.validate().map_err(|e| anyhow!("{origin}: {e}"))?;
        Ok(config)
    }

    /// Range and consistency checks of every field, naming the option, its value and the range.
    pub fn validate(&self) -> Result<(), String> {
        let (r, o, l, d) = (&self.run, &self.optim, &self.loss, &self.data);
        ensure((1..=2).contains(&r.stage), "run.stage", "1 or 2", r.stage)?;
        r.check("run")?;
        d.check("data")?;
        o.check("optim")?;
        if r.stage == 2 && r.init_from.is_none() {
            return Err("stage 2 fine-tunes a stage-1 tokenizer: set run.init_from (a run folder, checkpoint or \
                tokenizer file)"
                .into());
        }
        for (name, v) in [
            ("loss.reconstruction_weight", l.reconstruction_weight),
            ("loss.perceptual_weight", l.perceptual_weight),
            ("loss.kl_weight", l.kl_weight),
            ("loss.sem_weight", l.sem_weight),
            ("loss.gan_weight", l.gan_weight),
        ] {
            non_negative(name, v)?;
        }
        between("loss.disc_ndf", l.disc_ndf, 1, 4096)?;
        count_at_least("loss.disc_layers", l.disc_layers, 1)?;
        between("loss.disc_layers", l.disc_layers, 1, 8)?;
        between("teacher.resolution", self.teacher.resolution, 16, 4096)?;
        if self.teacher.spec.trim().is_empty() {
            return Err(
                "teacher.spec is empty: name a teacher (efficientnet-lite0, dinov3-b16:PATH, …) or `none`".into()
            );
        }
        if r.stage == 1 && r.init_from.is_some() {
            return Err("run.init_from (--init-from) starts stage 2 from a stage-1 tokenizer; this recipe is stage 1 \
                (use tiny-stage2, rectok-b-stage2, or set run.stage = 2)"
                .into());
        }
        let resolution = self.teacher.resolution;
        ensure(
            resolution.is_multiple_of(16),
            "teacher.resolution",
            "a multiple of 16 (the teachers' patch)",
            resolution,
        )?;
        self.model.validate().map_err(|e| format!("[model]: {e}"))?;
        self.loss.loss_config().map_err(|e| e.to_string())?;
        crate::loss::perceptual::check_exists(&self.loss.lpips, "loss.lpips")?;
        crate::loss::perceptual::check_exists(&self.loss.vgg, "loss.vgg")?;
        crate::loss::perceptual::check_exists(&self.loss.convnext, "loss.convnext")?;
        Ok(())
    }

    /// The files and folders the run reads, with the option that names each.
    pub fn inputs(&self) -> Vec<(&'static str, PathBuf)> {
        let mut inputs = data_inputs(&self.data);
        inputs.extend(self.run.init_from.clone().map(|p| ("run.init_from (--init-from)", p)));
        if let Ok(Some(crate::teacher::TeacherSpec::Dinov3 { path, .. })) = self.teacher_spec() {
            inputs.push(("teacher.spec (--teacher)", path));
        }
        let l = &self.loss;
        for (key, path) in [("loss.lpips", &l.lpips), ("loss.vgg", &l.vgg), ("loss.convnext", &l.convnext)] {
            inputs.extend(path.clone().map(|p| (key, p)));
        }
        inputs
    }

    /// The teacher, unless `none` (stage 2 never uses one).
    pub fn teacher_spec(&self) -> Result<Option<crate::teacher::TeacherSpec>> {
        if self.run.stage == 2 || matches!(self.teacher.spec.as_str(), "none" | "") {
            return Ok(None);
        }
        self.teacher.spec.parse().map(Some).map_err(|e: String| anyhow!("teacher.spec: {e}"))
    }
}

super::run::recipe!(TokenizerTrainConfig, "tokenizer", []);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tokenizer::SemTarget;

    #[test]
    fn builtin_recipes_parse_and_overrides_apply() {
        for (name, _) in BUILTIN_CONFIGS {
            // Stage 2 starts from a stage-1 tokenizer; stage 1 refuses one.
            let init_from: Vec<String> =
                if name.contains("stage2") { vec!["run.init_from=\"x\"".into()] } else { vec![] };
            let cfg = TokenizerTrainConfig::load(name, &init_from).unwrap_or_else(|e| panic!("{name}: {e:#}"));
            assert!(cfg.optim.batch_size > 0, "{name}");
        }
        let s1 = TokenizerTrainConfig::load("rectok-b-stage1", &[]).unwrap();
        assert_eq!((s1.model.token_channels, s1.run.epochs, s1.optim.blr, s1.loss.gan_weight), (128, 200, 1e-4, 0.1));
        assert_eq!(s1.optim.warmup_epochs(s1.run.epochs), 50.0);
        let cfg = TokenizerTrainConfig::load(
            "tiny",
            &[
                "optim.batch_size=7".into(),
                "model.sem_target=reconstruction".into(),
                "data.source=procedural:100".into(),
                "loss.lpips=/no/such/vgg.pth".into(),
            ],
        );
        let err = cfg.unwrap_err().to_string();
        assert!(err.contains("/no/such/vgg.pth"), "{err}");
        let cfg = TokenizerTrainConfig::load(
            "tiny",
            &[
                "optim.batch_size=7".into(),
                "model.sem_target=reconstruction".into(),
                "data.source=procedural:100".into(),
            ],
        )
        .unwrap();
        assert_eq!(
            (cfg.optim.batch_size, cfg.model.sem_target, cfg.data.source.as_str()),
            (7, SemTarget::Reconstruction, "procedural:100")
        );
        let err = TokenizerTrainConfig::load("tiny", &["optim.batch_sise=7".into()]).unwrap_err().to_string();
        assert!(err.contains("batch_sise"), "{err}");
        let err = TokenizerTrainConfig::load("tiny", &["model.mask_ration=0.1".into()]).unwrap_err().to_string();
        assert!(err.contains("mask_ration"), "{err}");
        let err = TokenizerTrainConfig::load("no-such-recipe", &[]).unwrap_err().to_string();
        assert!(err.contains("built-in recipes"), "{err}");
    }

    #[test]
    fn nested_overrides_merge_into_the_recipe() {
        // `tiny` takes its encoder from the preset; `rectok-b-stage1` names sizes.
        let cfg = TokenizerTrainConfig::load("tiny", &["model.encoder.heads=2".into()]).unwrap();
        assert_eq!((cfg.model.encoder.width, cfg.model.encoder.layers, cfg.model.encoder.heads), (128, 4, 2));
        let cfg = TokenizerTrainConfig::load(
            "rectok-b-stage1",
            &["model.decoder.layers=3".into(), "model.decoder={ heads = 8 }".into()],
        )
        .unwrap();
        assert_eq!((cfg.model.decoder.width, cfg.model.decoder.layers, cfg.model.decoder.heads), (768, 3, 8));
        assert_eq!(cfg.model.encoder, crate::nn::VitSize::named("base").unwrap());
        // A size given by name in the recipe merges too.
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("r.toml");
        std::fs::write(&file, "[model]\npreset = \"tiny\"\nencoder = \"small\"\n").unwrap();
        let cfg = TokenizerTrainConfig::load(file.to_str().unwrap(), &["model.encoder.layers=2".into()]).unwrap();
        assert_eq!((cfg.model.encoder.width, cfg.model.encoder.layers, cfg.model.encoder.heads), (512, 2, 8));
        let err = TokenizerTrainConfig::load("tiny", &["model.encoder.head=2".into()]).unwrap_err().to_string();
        assert!(err.contains("encoder.head"), "{err}");
        let err = TokenizerTrainConfig::load("tiny", &["optim.lr=0".into()]).unwrap_err().to_string();
        assert!(err.contains("optim.lr must be a finite number > 0, got 0"), "{err}");
    }

    #[test]
    fn lr_scaling_follows_the_reference() {
        let o = OptimOptions { batch_size: 64, accum_steps: 16, ..Default::default() };
        assert!((o.peak_lr() - 4e-4).abs() < 1e-15);
    }
}
