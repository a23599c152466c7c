//! The whole pipeline on built-in data, as library functions: train a tokenizer (stage 1, and
//! optionally a short stage 2), measure it (PSNR, SSIM, FD-effnet of reconstructions, linear
//! probe), train a DiT^DH on its latents and measure the samples (FD-effnet, the teacher's class
//! accuracy). `rectok demo` runs it once and writes a report; `rectok ablate` runs it for the
//! paper's ablations side by side.

pub mod ablate;
pub mod demo;
pub mod report;

use crate::data::{DataSpec, Loader, Split, open_dataset};
use crate::device::select_device;
use crate::eval::{
    ProbeConfig, ProbeFeatures, Reference, TokenizerEval, TokenizerEvalOptions, evaluate_tokenizer, linear_probe,
};
use crate::io::write_json;
use crate::metrics::extractor::Extractor;
use crate::tokenizer::RecTok;
use crate::train::config::TokenizerTrainConfig;
use crate::train::generator::{GeneratorTraining, OnlineEval};
use crate::train::generator_config::GeneratorTrainConfig;
use crate::train::tokenizer::TokenizerTraining;
use anyhow::{Context, Result};

/// Why a pipeline's training has a summary: the demo and ablations run in one process.
const SINGLE_PROCESS: &str = "the demo and ablations run in one process";
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// How much each stage trains and measures.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Budget {
    /// Procedural images of the tokenizer's training set.
    pub tokenizer_images: usize,
    /// Tokenizer epochs.
    pub tokenizer_epochs: usize,
    /// Tokenizer batch size (the tiny recipe: 32).
    pub tokenizer_batch: usize,
    /// Stage-2 decoder fine-tuning steps (0: none).
    pub stage2_steps: usize,
    /// Procedural images of the generator's training set.
    pub generator_images: usize,
    /// Generator epochs (at `generator_batch`).
    pub generator_epochs: usize,
    /// Generator batch size (the `ditdh-tiny` recipe: 32).
    pub generator_batch: usize,
    /// Generator peak learning rate (the `ditdh-tiny` recipe: 2e-3).
    pub generator_lr: f64,
    /// Generator data-parallel replicas (`run.data_parallel`; 0: one per thread). The tiny
    /// generator's step is faster on one replica with both threads in its matrix products
    /// (BENCHMARKS.md, *The demo's generator*).
    pub generator_data_parallel: usize,
    /// Classifier-free guidance scale of the evaluated samples and grids (the `ditdh-tiny` recipe: 4).
    pub generator_cfg: f64,
    /// Held-out images of the tokenizer evaluation.
    pub eval_images: usize,
    /// Samples of the generator evaluation.
    pub fd_images: usize,
    /// Training images of the linear probe.
    pub probe_images: usize,
}

impl Budget {
    /// Tokenizer stage-1 steps: `tokenizer_epochs` over `tokenizer_images` at `tokenizer_batch`.
    pub fn tokenizer_steps(&self) -> usize {
        self.tokenizer_epochs * self.tokenizer_images / self.tokenizer_batch
    }

    /// Generator steps: `generator_epochs` over `generator_images` at `generator_batch`.
    pub fn generator_steps(&self) -> usize {
        self.generator_epochs * self.generator_images / self.generator_batch
    }
}

/// What the semantic decoder distils from (the paper's ablation, Table 4).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SemanticLoss {
    /// No teacher, no semantic loss.
    None,
    /// The clean posterior sample (the prior approach).
    Clean,
    /// The flow-noised latents (flow semantic distillation, the recipe's default).
    Flow,
}

/// One configuration of the pipeline: how its tokenizer differs from the `tiny` recipe.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Variant {
    /// Short name (a folder name).
    pub name: String,
    /// What it is.
    pub description: String,
    /// Where the semantic loss is taken.
    pub semantic: SemanticLoss,
    /// MAE masking of the encoder input (reconstruction–alignment distillation).
    pub masking: bool,
    /// Latent channels (`None`: the recipe's).
    pub channels: Option<usize>,
}

impl Variant {
    /// The recipe's method: flow semantic distillation with masking, the recipe's channels.
    pub fn recipe(name: &str, description: &str) -> Self {
        Self {
            name: name.into(),
            description: description.into(),
            semantic: SemanticLoss::Flow,
            masking: true,
            channels: None,
        }
    }

    /// Writes the variant into a tokenizer recipe.
    pub fn apply(&self, config: &mut TokenizerTrainConfig) {
        match self.semantic {
            SemanticLoss::None => config.teacher.spec = "none".into(),
            SemanticLoss::Clean => config.model.sem_input = crate::tokenizer::SemInput::Clean,
            SemanticLoss::Flow => config.model.sem_input = crate::tokenizer::SemInput::Noisy,
        }
        if !self.masking {
            config.model.mask_ratio = 0.0;
            config.model.mask_ratio_type = crate::tokenizer::MaskRatioType::Fix;
        }
        if let Some(c) = self.channels {
            config.model.token_channels = c;
        }
    }
}

/// Everything measured for one variant.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PipelineResult {
    /// The variant.
    pub variant: Variant,
    /// Latent channels.
    pub channels: usize,
    /// Untrained tokenizer on the held-out images.
    pub untrained: TokenizerEval,
    /// Trained tokenizer (after stage 2 when run).
    pub trained: TokenizerEval,
    /// Linear-probe top-1 of the untrained tokenizer's latents.
    pub probe_untrained: f64,
    /// Linear-probe top-1 of the trained tokenizer's latents.
    pub probe: f64,
    /// Generation FD-effnet of the untrained and the trained DiT (EMA).
    pub generation_fd: (Option<f64>, Option<f64>),
    /// Fraction of samples the teacher puts in their class: untrained and trained DiT.
    pub class_accuracy: (Option<f64>, Option<f64>),
    /// The teacher's accuracy on reconstructions of real held-out images (the ceiling).
    pub real_class_accuracy: Option<f64>,
    /// Guidance scale of the evaluated samples (classifier-free; 1 = none).
    pub sample_cfg: f64,
    /// Artifacts, relative to the pipeline folder.
    pub files: PipelineFiles,
    /// Seconds per stage: tokenizer, stage 2, evaluation, generator.
    pub seconds: (f64, f64, f64, f64),
}

/// Paths of a variant's outputs (relative to its folder's parent).
#[derive(Clone, Debug, Serialize, Deserialize, Default)]
pub struct PipelineFiles {
    /// Stage-1 reconstruction grid.
    pub reconstructions: Option<PathBuf>,
    /// Stage-2 reconstruction grid.
    pub reconstructions_stage2: Option<PathBuf>,
    /// Tokenizer loss curves.
    pub tokenizer_curves: Option<PathBuf>,
    /// Stage-2 loss curves.
    pub stage2_curves: Option<PathBuf>,
    /// Class grid of the DiT samples.
    pub samples: Option<PathBuf>,
    /// Generator loss curves.
    pub generator_curves: Option<PathBuf>,
    /// The exported tokenizer (with latent statistics) and generator.
    pub tokenizer: PathBuf,
    /// The generator.
    pub generator: PathBuf,
}

impl PipelineFiles {
    /// The same files seen from `prefix`'s parent (each path with `prefix` in front), e.g. a
    /// seed's runs from the ablation's folder.
    pub fn under(&self, prefix: &Path) -> Self {
        let join = |p: &PathBuf| prefix.join(p);
        Self {
            reconstructions: self.reconstructions.as_ref().map(join),
            reconstructions_stage2: self.reconstructions_stage2.as_ref().map(join),
            tokenizer_curves: self.tokenizer_curves.as_ref().map(join),
            stage2_curves: self.stage2_curves.as_ref().map(join),
            samples: self.samples.as_ref().map(join),
            generator_curves: self.generator_curves.as_ref().map(join),
            tokenizer: join(&self.tokenizer),
            generator: join(&self.generator),
        }
    }
}

/// How a pipeline command's (`demo`, `ablate`) output folder stands, judged before any work.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum RunFolder {
    /// New, empty, or holding only files the command made before it wrote markers: the marker
    /// is to be written ([`mark_run_folder`]).
    New,
    /// Holds the command's run of the same budget (stopped or finished).
    Same,
}

/// The marker a pipeline command writes into its folder, `<command>.json`: the command, its
/// budget and the command line of its latest run (`continue`).
fn marker_file(command: &str) -> String {
    format!("{command}.json")
}

/// Whether `marker` is `command`'s with `budget`.
fn marks(marker: &serde_json::Value, command: &str, budget: &Budget) -> bool {
    marker["command"] == command && marker["budget"] == serde_json::json!(budget)
}

/// Judges `out` for `rectok <command>` with `budget`: refused when another process holds it
/// (naming its pid), when it holds the command's run of another budget (`other_budget`, the
/// command's other one, names the command line that continues it), or files other than those
/// `ours` accepts (a folder of other files is never written into).
pub(crate) fn judge_run_folder(
    out: &Path,
    command: &str,
    budget: &Budget,
    other_budget: &Budget,
    ours: impl Fn(&str) -> bool,
) -> Result<RunFolder> {
    crate::train::session::RunLock::check_free(out)?;
    let marker = marker_file(command);
    match crate::io::read_json_if_valid(&out.join(&marker)) {
        Some(m) if marks(&m, command, budget) => Ok(RunFolder::Same),
        Some(m) if marks(&m, command, other_budget) => anyhow::bail!(
            "{}: holds a `rectok {command}` run of the other budget ({}); `{}` continues it (or reads it back when it \
                finished), or choose another --out",
            out.display(),
            if other_budget.tokenizer_images < budget.tokenizer_images { "--quick" } else { "not --quick" },
            m["continue"].as_str().unwrap_or("the command that began it")
        ),
        Some(_) => anyhow::bail!(
            "{}: holds a `rectok {command}` run of a budget this version does not run (an earlier version's); choose \
                another --out",
            out.display()
        ),
        None => {
            let entries = std::fs::read_dir(out).into_iter().flatten().flatten();
            if let Some(e) = entries.map(|e| e.file_name()).find(|n| n != ".lock" && !ours(&n.to_string_lossy())) {
                anyhow::bail!(
                    "{}: not empty ({} and maybe more), and not a `rectok {command}` run (no {marker}); choose another \
                        --out (rectok never writes into a folder of other files)",
                    out.display(),
                    e.to_string_lossy()
                );
            }
            Ok(RunFolder::New)
        }
    }
}

/// Writes the marker [`judge_run_folder`] reads, with `again`, the command line of this run
/// (after the folder's lock is taken).
pub(crate) fn mark_run_folder(out: &Path, command: &str, budget: &Budget, again: &str) -> Result<()> {
    write_json(
        &out.join(marker_file(command)),
        &serde_json::json!({ "command": command, "budget": budget, "continue": again }),
    )
}

/// `e` with `command` as the way to continue, when a signal stopped the work (the stage's own
/// `rectok train … --resume` would continue only that stage).
pub(crate) fn continue_with(mut e: anyhow::Error, command: String) -> anyhow::Error {
    if let Some(stop) = e.downcast_mut::<crate::signals::Interrupted>() {
        stop.resume = Some(command);
    }
    e
}

/// An EMA decay for a run of `steps` steps: the recipe's `decay`, shortened so that the
/// initial weights keep less than e⁻⁶ of the average by the end (short demo runs export the EMA).
pub fn ema_decay_for(steps: usize, decay: f64) -> f64 {
    decay.min(1.0 - 6.0 / steps.max(1) as f64).max(0.9)
}

/// The newest PNG in `dir/samples/`.
fn newest_sample(dir: &Path) -> Option<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir.join("samples"))
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "png"))
        .collect();
    v.sort();
    v.pop()
}

/// `dir/loss.png`, if it exists.
fn loss_curves(dir: &Path) -> Option<PathBuf> {
    Some(dir.join("loss.png")).filter(|p| p.exists())
}

fn relative(p: &Path, base: &Path) -> PathBuf {
    p.strip_prefix(base).map(Path::to_path_buf).unwrap_or_else(|_| p.to_path_buf())
}

/// Held-out tokenizer measurements: PSNR, SSIM, FD-effnet of 8-bit reconstructions against the
/// originals.
fn measure_tokenizer(
    model: &RecTok,
    images: usize,
    extractor: &Extractor,
    device: &burn::prelude::Device,
) -> Result<TokenizerEval> {
    let data = open_dataset(&DataSpec::Procedural { len: images * 10 }, Split::Val, 0)?;
    let loader = Loader::sequential(data, 50, model.config.img_size, 2)?;
    let options = TokenizerEvalOptions {
        extractor: Some(extractor),
        reference: Reference::Originals,
        limit: Some(images),
        save_dir: None,
        kid: false,
        world: crate::dist::single(),
    };
    evaluate_tokenizer(model, &loader, &options, device, |_| {})?.context(SINGLE_PROCESS)
}

/// Linear-probe top-1 (token-averaged posterior means, 10 classes) on held-out images.
fn measure_probe(model: &RecTok, train_images: usize, device: &burn::prelude::Device) -> Result<f64> {
    let spec = DataSpec::Procedural { len: train_images };
    let size = model.config.img_size;
    let train = Loader::sequential(open_dataset(&spec, Split::Train, 1)?, 64, size, 2)?;
    let val = Loader::sequential(open_dataset(&spec, Split::Val, 1)?, 64, size, 2)?;
    let config = ProbeConfig { features: ProbeFeatures::Mean, ..Default::default() };
    Ok(linear_probe(model, &train, &val, 10, &config, device)?.val_accuracy)
}

/// What a variant's run has finished (`<variant>/progress.json`, rewritten after each stage), so
/// that a run stopped by a signal, a closed pipe or a crash continues where it stopped: finished
/// stages are read back, a stopped training stage resumes from its newest checkpoint.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct Progress {
    /// The budget, seed and variant the run was started with (a run of another starts over).
    key: serde_json::Value,
    /// The untrained tokenizer's measurements and linear-probe top-1.
    untrained: Option<(TokenizerEval, f64)>,
    /// Stage 1 finished: its exported tokenizer and seconds.
    stage1: Option<(PathBuf, f64)>,
    /// Stage 2 finished (or skipped): the tokenizer to measure and seconds.
    stage2: Option<(PathBuf, f64)>,
    /// The trained tokenizer's measurements, linear-probe top-1 and seconds.
    measured: Option<(TokenizerEval, f64, f64)>,
}

impl Progress {
    const FILE: &'static str = "progress.json";

    /// The progress of the run in `root` when it was started with `key`; a run of another key (or
    /// none) is removed, so the variant starts over.
    fn open(root: &Path, key: serde_json::Value) -> Result<Self> {
        let previous = crate::io::read_json_if_valid(&root.join(Self::FILE))
            .and_then(|v| serde_json::from_value::<Self>(v).ok())
            .filter(|p| p.key == key);
        match previous {
            Some(p) => Ok(p),
            None => {
                if root.exists() {
                    std::fs::remove_dir_all(root).with_context(|| format!("removing {}", root.display()))?;
                }
                std::fs::create_dir_all(root).with_context(|| format!("creating {}", root.display()))?;
                Ok(Self { key, ..Default::default() })
            }
        }
    }

    fn save(&self, root: &Path) -> Result<()> {
        write_json(&root.join(Self::FILE), &serde_json::to_value(self)?)
    }
}

/// A training stage in `dir`: continued from its newest checkpoint (or started over from its
/// `config.toml`) when an earlier process began it, else started with `config`.
fn open_stage<T: crate::train::run::Trainer>(config: T::Config, dir: &Path) -> Result<crate::train::run::Run<T>> {
    if dir.join("config.toml").exists() {
        tracing::info!("{}: continuing the stage an earlier run began", dir.display());
        crate::train::run::Run::resume(dir, &[])
    } else {
        crate::train::run::Run::start(config, dir)
    }
}

/// The generator's evaluation before training, from the step-0 record of its `metrics.jsonl`
/// (a continued run does not repeat it).
fn initial_generator_eval(dir: &Path) -> Option<OnlineEval> {
    let records = crate::train::monitor::read_metrics(&dir.join("metrics.jsonl")).ok()?;
    let record = records
        .into_iter()
        .find(|r| r.get("step") == Some(&0.into()) && (r.contains_key("fd") || r.contains_key("class_accuracy")))?;
    let value = |key: &str| record.get(key).and_then(serde_json::Value::as_f64);
    Some(OnlineEval { fd: value("fd"), class_accuracy: value("class_accuracy") })
}

/// Runs the pipeline for `variant` in `dir/<variant.name>/`, training and measuring on `choice`.
///
/// A run of the same budget, seed and variant that stopped earlier (signal, crash) continues:
/// finished stages are read back from `progress.json`, the stopped training stage resumes from
/// its checkpoint (exactly: the same numbers as an uninterrupted run). A stage's seconds are
/// those of the process that finished it.
///
/// # Errors
/// Any stage's failure; [`crate::signals::Interrupted`] when a signal stopped it (what finished
/// is kept for the next call).
pub fn run_variant(
    dir: &Path,
    variant: &Variant,
    budget: &Budget,
    seed: u64,
    choice: crate::device::DeviceChoice,
) -> Result<PipelineResult> {
    let root = dir.join(&variant.name);
    let key = serde_json::json!({ "budget": budget, "seed": seed, "variant": variant });
    let mut progress = Progress::open(&root, key)?;
    let device = select_device(choice).map_err(|e| anyhow::anyhow!(e))?;
    let extractor = Extractor::load("effnet", &device)?;

    // Stage 1.
    let t0 = Instant::now();
    let mut config = TokenizerTrainConfig::load("tiny", &[])?;
    variant.apply(&mut config);
    config.run.seed = seed;
    config.run.device = choice.to_string();
    config.data.source = DataSpec::Procedural { len: budget.tokenizer_images }.to_string();
    config.run.epochs = budget.tokenizer_epochs;
    config.run.checkpoint_every = 1_000_000;
    config.run.sample_every = 0;
    let steps = budget.tokenizer_steps();
    config.optim.ema_decay = ema_decay_for(steps, 0.995);
    config.optim.batch_size = budget.tokenizer_batch;
    config.validate().map_err(|e| anyhow::anyhow!("variant {}: {e}", variant.name))?;
    let channels = config.model.token_channels;
    let stage1 = root.join("tokenizer");
    if progress.stage1.is_none() {
        if progress.untrained.is_none() && stage1.exists() {
            // Stopped before the untrained model was measured: begin the stage again.
            std::fs::remove_dir_all(&stage1).with_context(|| format!("removing {}", stage1.display()))?;
        }
        let mut trainer = open_stage::<TokenizerTraining>(config, &stage1)?;
        if progress.untrained.is_none() {
            let untrained = measure_tokenizer(trainer.ema(), budget.eval_images, &extractor, &device)?;
            let probe = measure_probe(trainer.ema(), budget.probe_images, &device)?;
            progress.untrained = Some((untrained, probe));
            progress.save(&root)?;
        }
        let summary = trainer.run()?.context(SINGLE_PROCESS)?;
        progress.stage1 = Some((summary.tokenizer, t0.elapsed().as_secs_f64()));
        progress.save(&root)?;
    }
    let (untrained, probe_untrained) = progress.untrained.clone().context("progress without the untrained model")?;
    let (stage1_tokenizer, t_tok) = progress.stage1.clone().context("progress without stage 1")?;

    // Stage 2 (decoder fine-tuning with the GAN), short.
    let stage2 = root.join("tokenizer-stage2");
    if progress.stage2.is_none() {
        let t1 = Instant::now();
        let mut tokenizer_file = stage1_tokenizer;
        if budget.stage2_steps > 0 {
            let init_from = toml::Value::String(stage1.display().to_string());
            let mut c = TokenizerTrainConfig::load("tiny-stage2", &[format!("run.init_from={init_from}")])?;
            c.model.token_channels = channels;
            c.run.seed = seed;
            c.run.device = choice.to_string();
            c.data.source = DataSpec::Procedural { len: budget.stage2_steps * 32 }.to_string();
            c.run.epochs = 1;
            c.run.checkpoint_every = 1_000_000;
            c.run.sample_every = 0;
            c.validate().map_err(|e| anyhow::anyhow!("variant {} stage 2: {e}", variant.name))?;
            let mut t = open_stage::<TokenizerTraining>(c, &stage2)?;
            tokenizer_file = t.run()?.context(SINGLE_PROCESS)?.tokenizer;
        }
        progress.stage2 = Some((tokenizer_file, t1.elapsed().as_secs_f64()));
        progress.save(&root)?;
    }
    let (tokenizer_file, t_s2) = progress.stage2.clone().context("progress without stage 2")?;

    // Measure the tokenizer.
    if progress.measured.is_none() {
        let t2 = Instant::now();
        let options = crate::weights::tokenizer::TokenizerLoadOptions { without_semantic: true, ..Default::default() };
        let (model, _) = crate::weights::tokenizer::load_tokenizer(&tokenizer_file, &options, &device)?;
        let trained = measure_tokenizer(&model, budget.eval_images, &extractor, &device)?;
        let probe = measure_probe(&model, budget.probe_images, &device)?;
        progress.measured = Some((trained, probe, t2.elapsed().as_secs_f64()));
        progress.save(&root)?;
    }
    let (trained, probe, t_eval) = progress.measured.clone().context("progress without the measurements")?;

    // The generator on its latents.
    let t3 = Instant::now();
    let epochs = budget.generator_epochs;
    let mut gen_config = GeneratorTrainConfig::load("ditdh-tiny", &[])?;
    gen_config.optim.batch_size = budget.generator_batch;
    gen_config.optim.lr = budget.generator_lr;
    gen_config.run.data_parallel = budget.generator_data_parallel;
    gen_config.sample.cfg = budget.generator_cfg;
    let gen_steps = budget.generator_steps();
    gen_config.optim.ema_decay = ema_decay_for(gen_steps, 0.995);
    gen_config.run.seed = seed;
    gen_config.run.device = choice.to_string();
    gen_config.tokenizer.path = tokenizer_file.clone();
    gen_config.data.source = DataSpec::Procedural { len: budget.generator_images }.to_string();
    gen_config.run.epochs = epochs;
    gen_config.optim.decay_start_epoch = (epochs * 3 / 8).max(1) as f64;
    gen_config.optim.decay_end_epoch = epochs as f64;
    gen_config.run.fd_images = budget.fd_images;
    gen_config.run.fd_every = 0;
    gen_config.run.sample_every = 0;
    gen_config.run.checkpoint_every = 1_000_000;
    gen_config.validate().map_err(|e| anyhow::anyhow!("variant {} generator: {e}", variant.name))?;
    let generator_dir = root.join("generator");
    let sample_cfg = gen_config.sample.cfg;
    let mut g = open_stage::<GeneratorTraining>(gen_config, &generator_dir)?;
    let mut gs = g.run()?.context(SINGLE_PROCESS)?;
    if gs.eval.0.is_none() {
        gs.eval.0 = initial_generator_eval(&generator_dir);
    }
    let t_gen = t3.elapsed().as_secs_f64();

    let rel = |p: Option<PathBuf>| p.map(|p| relative(&p, dir));
    let stage2_ran = budget.stage2_steps > 0;
    let files = PipelineFiles {
        reconstructions: rel(newest_sample(&stage1)),
        reconstructions_stage2: rel(newest_sample(&stage2).filter(|_| stage2_ran)),
        tokenizer_curves: rel(loss_curves(&stage1)),
        stage2_curves: rel(loss_curves(&stage2).filter(|_| stage2_ran)),
        samples: rel(newest_sample(&generator_dir)),
        generator_curves: rel(loss_curves(&generator_dir)),
        tokenizer: relative(&gs.tokenizer, dir),
        generator: relative(&gs.generator, dir),
    };
    Ok(PipelineResult {
        variant: variant.clone(),
        channels,
        untrained,
        trained,
        probe_untrained,
        probe,
        generation_fd: (gs.eval.0.as_ref().and_then(|e| e.fd), gs.eval.1.as_ref().and_then(|e| e.fd)),
        class_accuracy: (gs.eval.0.and_then(|e| e.class_accuracy), gs.eval.1.and_then(|e| e.class_accuracy)),
        real_class_accuracy: gs.real_class_accuracy,
        sample_cfg,
        files,
        seconds: (t_tok, t_s2, t_eval, t_gen),
    })
}
