//! `rectok train tokenizer | generator`: training from TOML recipes.

use super::common::{data_path, require_positive};
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

/// The options every training command has.
#[derive(clap::Args, Debug)]
pub struct RunArgs {
    /// Run folder: checkpoints, metrics.jsonl, samples/, loss.png and the exported models.
    #[arg(long, value_name = "RUN_DIR")]
    pub out: PathBuf,
    /// Override any option of the recipe: `--set optim.batch_size=16 --set loss.kl_weight=1e-5`.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub overrides: Vec<String>,
    /// Stop after this many optimizer steps (the schedule still spans run.epochs).
    #[arg(long)]
    pub max_steps: Option<usize>,
    /// Continue the run in --out from its newest checkpoint (only where it stops, logging,
    /// checkpointing, threads, device and precision may change).
    #[arg(long)]
    pub resume: bool,
    /// Print the resolved configuration as TOML and exit.
    #[arg(long)]
    pub print_config: bool,
}

/// A dedicated option that sets a recipe key: (option, key, value when given).
type Flag<'a> = (&'a str, &'a str, Option<String>);

impl RunArgs {
    /// Opens the run of recipe `spec` (`--config`, else the default): checks `--out` and
    /// `--max-steps` (and that `--out` is none of the `inputs`), turns the given `flags` into
    /// overrides (after the `--set` ones, so they win), then `--resume` continues the run in `--out`
    /// (where `--config` and the flags cannot change), else a new run starts — or with
    /// `--print-config` the resolved recipe is printed and nothing runs.
    fn open<T: Trainer>(
        &self,
        (given, default): (Option<&str>, &str),
        flags: &[Flag<'_>],
        inputs: &[(Option<&Path>, &str)],
    ) -> Result<Option<Run<T>>> {
        require_positive(self.max_steps, "--max-steps")?;
        if let Some((option, _, _)) = flags.iter().find(|(_, _, v)| v.as_ref().is_some_and(|v| v.trim().is_empty())) {
            bail!("{option} is empty");
        }
        let spec = given.unwrap_or(default);
        let mut guard = Inputs::new();
        guard.add(Path::new(spec), "--config");
        for (path, option) in inputs {
            guard.add_opt(*path, option);
        }
        guard.check_output_dir(&self.out, "--out", [])?;
        if self.resume && (given.is_some() || flags.iter().any(|(_, _, v)| v.is_some())) {
            let names: Vec<&str> = given.map(|_| "--config").into_iter().chain(flags.iter().map(|f| f.0)).collect();
            bail!("--resume continues the run as it was configured; {} cannot change", names.join(", "));
        }
        let values = flags.iter().filter_map(|(_, key, v)| Some(format!("{key}={}", toml::Value::String(v.clone()?))));
        let max_steps = self.max_steps.map(|m| format!("run.max_steps={m}"));
        let overrides: Vec<String> = self.overrides.iter().cloned().chain(values).chain(max_steps).collect();
        if self.resume {
            return Run::<T>::resume(&self.out, &overrides).map(Some);
        }
        let config = T::Config::load(spec, &overrides)?;
        if self.print_config {
            print!("{}", toml::to_string_pretty(&config)?);
            return Ok(None);
        }
        Run::<T>::start(config, &self.out).map(Some)
    }
}

/// `rectok train generator`.
#[derive(clap::Args, Debug)]
pub struct GeneratorArgs {
    /// Recipe: a built-in name (ditdh-tiny, ditdh-s, ditdh-xl) or a TOML file [default: ditdh-tiny].
    #[arg(long, value_name = "NAME|FILE")]
    pub config: Option<String>,
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
    #[command(flatten)]
    pub run: RunArgs,
}

/// `rectok train tokenizer`.
#[derive(clap::Args, Debug)]
pub struct TokenizerArgs {
    /// Recipe: a built-in name (tiny, tiny-stage2, rectok-b-stage1, rectok-b-stage2) or a TOML file
    /// [default: tiny].
    #[arg(long, value_name = "NAME|FILE")]
    pub config: Option<String>,
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
    #[command(flatten)]
    pub run: RunArgs,
}

fn path_flag(p: &Option<PathBuf>) -> Option<String> {
    p.as_ref().map(|p| p.display().to_string())
}

fn run_generator(args: GeneratorArgs) -> Result<()> {
    let flags = [
        ("--tokenizer", "tokenizer.path", path_flag(&args.tokenizer)),
        ("--latent-stats", "tokenizer.latent_stats", path_flag(&args.latent_stats)),
        ("--data", "data.source", args.data.clone()),
        ("--cache", "latents.cache", path_flag(&args.cache)),
    ];
    let inputs = [
        (args.tokenizer.as_deref(), "--tokenizer"),
        (args.latent_stats.as_deref(), "--latent-stats"),
        (args.data.as_deref().and_then(data_path), "--data"),
    ];
    let Some(mut trainer) =
        args.run.open::<GeneratorTraining>((args.config.as_deref(), "ditdh-tiny"), &flags, &inputs)?
    else {
        return Ok(());
    };
    // In a multi-process job rank 0 reports.
    let Some(s) = trainer.run()? else { return Ok(()) };
    let eval = |e: &Option<crate::train::generator::OnlineEval>| match e {
        Some(e) => {
            let accuracy = e.class_accuracy.map(|a| format!(", samples in their class (teacher) {:.1}%", 100.0 * a));
            format!("{}{}", e.fd.map(|v| format!("FD {v:.2}")).unwrap_or_default(), accuracy.unwrap_or_default())
        }
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
    let flags = [
        ("--data", "data.source", args.data.clone()),
        ("--val-data", "data.val_source", args.val_data.clone()),
        ("--teacher", "teacher.spec", args.teacher.clone()),
        ("--init-from", "run.init_from", path_flag(&args.init_from)),
    ];
    let inputs = [
        (args.data.as_deref().and_then(data_path), "--data"),
        (args.val_data.as_deref().and_then(data_path), "--val-data"),
        (args.init_from.as_deref(), "--init-from"),
    ];
    let Some(mut trainer) = args.run.open::<TokenizerTraining>((args.config.as_deref(), "tiny"), &flags, &inputs)?
    else {
        return Ok(());
    };
    // In a multi-process job rank 0 reports.
    let Some(summary) = trainer.run()? else { return Ok(()) };
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
