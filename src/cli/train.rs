//! `rectok train tokenizer | generator`: training from TOML recipes.

use crate::io::Inputs;
use crate::train::generator::GeneratorTraining;
use crate::train::run::{Recipe, Run, Trainer};
use crate::train::tokenizer::TokenizerTraining;
use anyhow::{Result, bail};
use std::path::{Path, PathBuf};

/// What to train.
#[derive(clap::Subcommand, Debug)]
pub enum Which {
    /// Train a RecTok tokenizer (stage 1, or stage 2 decoder fine-tuning).
    Tokenizer(TokenizerArgs),
    /// Train a DiT^DH generator on a frozen tokenizer's latents.
    Generator(GeneratorArgs),
}

/// `rectok train generator`.
#[derive(clap::Args, Debug)]
pub struct GeneratorArgs {
    /// Recipe: a built-in name (ditdh-tiny, ditdh-s, ditdh-xl) or a TOML file.
    #[arg(long, default_value = "ditdh-tiny", value_name = "NAME|FILE")]
    pub config: String,
    /// The frozen tokenizer: a run's tokenizer.safetensors or the official RecTok_decft.pth
    /// (tokenizer.path).
    #[arg(long, value_name = "CKPT")]
    pub tokenizer: Option<PathBuf>,
    /// Latent statistics file (default: stored with the tokenizer, else computed over --data).
    #[arg(long, value_name = "FILE")]
    pub latent_stats: Option<PathBuf>,
    /// Training images: a class-folder tree, a `.txt` list, or procedural[:N] (data.source).
    #[arg(long, value_name = "DIR|LIST|procedural[:N]")]
    pub data: Option<String>,
    /// Cache posterior moments in this folder (latents.cache; relative: inside --out).
    #[arg(long, value_name = "DIR")]
    pub cache: Option<PathBuf>,
    /// Run folder: checkpoints, metrics.jsonl, samples/, loss.png, generator.safetensors,
    /// tokenizer.safetensors (with latent statistics).
    #[arg(long, value_name = "RUN_DIR")]
    pub out: PathBuf,
    /// Override any option: `--set optim.batch_size=32 --set run.fd_every=0`.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub overrides: Vec<String>,
    /// Stop after this many optimizer steps (the schedule still spans run.epochs).
    #[arg(long)]
    pub max_steps: Option<usize>,
    /// Continue the run in --out from its newest checkpoint.
    #[arg(long)]
    pub resume: bool,
    /// Print the resolved configuration as TOML and exit.
    #[arg(long)]
    pub print_config: bool,
}

/// `rectok train tokenizer`.
#[derive(clap::Args, Debug)]
pub struct TokenizerArgs {
    /// Recipe: a built-in name (tiny, tiny-stage2, rectok-b-stage1, rectok-b-stage2) or a TOML file.
    #[arg(long, default_value = "tiny", value_name = "NAME|FILE")]
    pub config: String,
    /// Run folder: checkpoints, metrics.jsonl, samples/, loss.png, tokenizer.safetensors.
    #[arg(long, value_name = "RUN_DIR")]
    pub out: PathBuf,
    /// Training images: a class-folder tree (ImageNet layout), a `.txt` list of `relpath label`
    /// lines, or procedural[:N] (built in). Sets data.source.
    #[arg(long, value_name = "DIR|LIST|procedural[:N]")]
    pub data: Option<String>,
    /// Held-out images for the reconstruction grids and PSNR (data.val_source).
    #[arg(long, value_name = "DIR|LIST")]
    pub val_data: Option<String>,
    /// Teacher: efficientnet-lite0 (built in), dinov3-b16:PATH, dinov3-l16:PATH, dinov3-s16:PATH or none.
    #[arg(long, value_name = "SPEC")]
    pub teacher: Option<String>,
    /// Stage 2: the stage-1 run folder, checkpoint, tokenizer file or official .pth (run.init_from).
    #[arg(long, value_name = "PATH")]
    pub init_from: Option<PathBuf>,
    /// Override any option: `--set optim.batch_size=16 --set loss.kl_weight=1e-5`.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub overrides: Vec<String>,
    /// Stop after this many optimizer steps (the schedule still spans run.epochs).
    #[arg(long)]
    pub max_steps: Option<usize>,
    /// Continue the run in --out from its newest checkpoint (only where it stops, logging,
    /// checkpointing, threads and device may change).
    #[arg(long)]
    pub resume: bool,
    /// Print the resolved configuration as TOML and exit.
    #[arg(long)]
    pub print_config: bool,
}

/// `--set` assignments, then the dedicated flags (which win over a `--set` of the same key).
fn run_overrides(args: &TokenizerArgs) -> Vec<String> {
    let mut o = args.overrides.clone();
    let quoted = |s: &str| toml::Value::String(s.to_string()).to_string();
    if let Some(d) = &args.data {
        o.push(format!("data.source={}", quoted(d)));
    }
    if let Some(d) = &args.val_data {
        o.push(format!("data.val_source={}", quoted(d)));
    }
    if let Some(t) = &args.teacher {
        o.push(format!("teacher.spec={}", quoted(t)));
    }
    if let Some(p) = &args.init_from {
        o.push(format!("run.init_from={}", quoted(&p.display().to_string())));
    }
    if let Some(m) = args.max_steps {
        o.push(format!("run.max_steps={m}"));
    }
    o
}

/// Opens the run: `--resume` continues the one in `out` (only options that leave its trajectory
/// as it is may change), else a new run of the recipe `spec` with `overrides` starts, or with
/// `--print-config` the resolved recipe is printed and nothing runs.
fn open_run<T: Trainer>(
    out: &Path,
    resume: bool,
    spec: &str,
    overrides: &[String],
    print_config: bool,
) -> Result<Option<Run<T>>> {
    if resume {
        return Run::<T>::resume(out, overrides).map(Some);
    }
    let config = T::Config::load(spec, overrides)?;
    if print_config {
        print!("{}", toml::to_string_pretty(&config)?);
        return Ok(None);
    }
    Run::<T>::start(config, out).map(Some)
}

/// `--max-steps` (when given) is at least 1, and `--out` is a folder that is none of the inputs.
fn check_run_options(out: &Path, max_steps: Option<usize>, inputs: &[(Option<&Path>, &str)]) -> Result<()> {
    if max_steps == Some(0) {
        bail!("--max-steps must be at least 1, got 0");
    }
    super::common::check_output_folder(out, "--out")?;
    let mut guard = Inputs::new();
    for (path, option) in inputs {
        guard.add_opt(*path, option);
    }
    guard.check_output_dir(out, "--out", [])
}

/// A `--data` value that names files (not the built-in set).
fn data_path(data: &Option<String>) -> Option<&Path> {
    data.as_deref().filter(|d| !d.starts_with("procedural") && !d.starts_with("builtin")).map(Path::new)
}

fn run_generator(args: GeneratorArgs) -> Result<()> {
    check_run_options(
        &args.out,
        args.max_steps,
        &[
            (args.tokenizer.as_deref(), "--tokenizer"),
            (args.latent_stats.as_deref(), "--latent-stats"),
            (data_path(&args.data), "--data"),
            (Some(Path::new(&args.config)), "--config"),
        ],
    )?;
    let quoted = |s: &str| toml::Value::String(s.to_string()).to_string();
    let mut overrides = args.overrides.clone();
    if let Some(m) = args.max_steps {
        overrides.push(format!("run.max_steps={m}"));
    }
    if args.resume
        && (args.tokenizer.is_some() || args.data.is_some() || args.latent_stats.is_some() || args.cache.is_some())
    {
        bail!(
            "--resume continues the run as it was configured; --tokenizer, --latent-stats, --data and --cache cannot \
                change"
        );
    }
    if let Some(p) = &args.tokenizer {
        overrides.push(format!("tokenizer.path={}", quoted(&p.display().to_string())));
    }
    if let Some(p) = &args.latent_stats {
        overrides.push(format!("tokenizer.latent_stats={}", quoted(&p.display().to_string())));
    }
    if let Some(d) = &args.data {
        overrides.push(format!("data.source={}", quoted(d)));
    }
    if let Some(p) = &args.cache {
        overrides.push(format!("latents.cache={}", quoted(&p.display().to_string())));
    }
    let Some(mut trainer) =
        open_run::<GeneratorTraining>(&args.out, args.resume, &args.config, &overrides, args.print_config)?
    else {
        return Ok(());
    };
    let s = trainer.run()?;
    let eval = |e: &Option<crate::train::generator::OnlineEval>| match e {
        Some(e) => format!(
            "{}{}",
            e.fd.map(|v| format!("FD {v:.2}")).unwrap_or_default(),
            e.class_accuracy
                .map(|a| format!(", samples in their class (teacher) {:.1}%", 100.0 * a))
                .unwrap_or_default()
        ),
        None => "-".into(),
    };
    println!(
        "trained {} steps in {:.0} s; generator: {}; tokenizer with latent statistics: {}",
        s.steps,
        s.seconds,
        s.generator.display(),
        s.tokenizer.display()
    );
    if s.eval.1.is_some() {
        println!(
            "EMA samples: {} → {}{}",
            eval(&s.eval.0),
            eval(&s.eval.1),
            s.real_class_accuracy.map(|a| format!(" (real held-out images: {:.1}%)", 100.0 * a)).unwrap_or_default()
        );
    }
    Ok(())
}

pub fn run(which: Which) -> Result<()> {
    let args = match which {
        Which::Tokenizer(args) => args,
        Which::Generator(args) => return run_generator(args),
    };
    check_run_options(
        &args.out,
        args.max_steps,
        &[
            (data_path(&args.data), "--data"),
            (data_path(&args.val_data), "--val-data"),
            (args.init_from.as_deref(), "--init-from"),
            (Some(Path::new(&args.config)), "--config"),
        ],
    )?;
    if args.resume
        && (args.data.is_some() || args.teacher.is_some() || args.init_from.is_some() || args.val_data.is_some())
    {
        bail!(
            "--resume continues the run as it was configured; --data, --val-data, --teacher and --init-from cannot \
                change"
        );
    }
    let Some(mut trainer) =
        open_run::<TokenizerTraining>(&args.out, args.resume, &args.config, &run_overrides(&args), args.print_config)?
    else {
        return Ok(());
    };
    let summary = trainer.run()?;
    println!(
        "trained {} steps in {:.0} s; tokenizer: {}; held-out PSNR {}{:.2} dB",
        summary.steps,
        summary.seconds,
        summary.tokenizer.display(),
        summary.val_psnr.0.map(|p| format!("{p:.2} dB (untrained) → ")).unwrap_or_default(),
        summary.val_psnr.1
    );
    Ok(())
}
