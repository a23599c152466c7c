//! `rectok convert`: official `.pth` → safetensors with the configuration (and latent statistics)
//! in its metadata, so later loads need no flags.

use super::common::parse_config;
use crate::weights::tokenizer::{TokenizerLoadOptions, load_latent_stats, load_tokenizer, save_tokenizer};
use crate::weights::CheckpointEntry;
use anyhow::{Result, anyhow};
use burn::prelude::*;
use std::path::PathBuf;

/// Convert a checkpoint.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Input checkpoint (.pth, .pt or .safetensors).
    input: PathBuf,
    /// Output safetensors file.
    output: PathBuf,
    /// Checkpoint entry: auto (model_ema, else model, else bare state dict), ema or model.
    #[arg(long, default_value = "auto")]
    entry: CheckpointEntry,
    /// Latent statistics to store with the weights (safetensors with `mean` and `std`).
    #[arg(long, value_name = "FILE")]
    latent_stats: Option<PathBuf>,
    /// Model configuration (preset name or JSON) when it cannot be inferred from the file.
    #[arg(long, value_name = "PRESET|JSON")]
    config: Option<String>,
    /// Drop the semantic decoder (it is only needed to continue stage-1 training).
    #[arg(long)]
    inference_only: bool,
}

pub fn run(args: Args) -> Result<()> {
    let device = Device::flex();
    let options = TokenizerLoadOptions {
        entry: args.entry,
        config: args.config.as_deref().map(parse_config).transpose()?,
        without_semantic: args.inference_only,
    };
    let (mut model, report) = load_tokenizer(&args.input, &options, &device)?;
    if let Some(path) = &args.latent_stats {
        let stats = load_latent_stats(path)?;
        stats.validate(model.token_channels()).map_err(|e| anyhow!("{}: {e}", path.display()))?;
        model.stats = Some(stats);
    }
    save_tokenizer(&model, &args.output)?;
    let entry = if report.entry.is_empty() { "the bare state dict".to_string() } else { format!("`{}`", report.entry) };
    println!(
        "wrote {}: {} tensors from {entry}{}; latent statistics: {}",
        args.output.display(),
        report.applied,
        if report.ignored > 0 { format!(", {} training-only tensors dropped", report.ignored) } else { String::new() },
        if model.stats.is_some() { "stored" } else { "none (compute them with `rectok stats`)" }
    );
    Ok(())
}
