//! `rectok convert`: official `.pth` → safetensors with the configuration (and, for tokenizers,
//! latent statistics) in its metadata, so later loads need no flags. Tokenizers (`RecTok.pth`,
//! `RecTok_decft.pth`) and generators (`ditdh*_epoch_*.pth`) are told apart by their keys.

use super::common::{attach_latent_stats, parse_config};
use crate::generator::DitDhConfig;
use crate::weights::generator::{load_generator, save_generator};
use crate::weights::tokenizer::{TokenizerLoadOptions, load_tokenizer, save_tokenizer};
use crate::weights::{CheckpointEntry, StateDict};
use anyhow::{Result, anyhow, bail};
use burn::prelude::*;
use std::path::{Path, PathBuf};

/// Convert a checkpoint.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Input checkpoint (.pth, .pt or .safetensors).
    input: PathBuf,
    /// Output safetensors file.
    output: PathBuf,
    /// Checkpoint entry: auto (EMA weights `model_ema`/`ema`, else raw `model`/`state_dict`, else
    /// the only wrapper entry, else a bare state dict), ema, model, or any top-level entry name.
    #[arg(long, default_value = "auto")]
    entry: CheckpointEntry,
    /// Latent statistics to store with the weights (safetensors with `mean` and `std`).
    #[arg(long, value_name = "FILE")]
    latent_stats: Option<PathBuf>,
    /// Model configuration when it cannot be inferred from the file: a tokenizer preset (rectok_b)
    /// or JSON, or a generator preset (xl, l, b, s; 128 channels on a 16×16 grid) or JSON.
    #[arg(long, value_name = "PRESET|JSON")]
    config: Option<String>,
    /// Drop the semantic decoder (it is only needed to continue stage-1 training).
    #[arg(long)]
    inference_only: bool,
}

fn convert_generator(args: &Args, device: &Device) -> Result<()> {
    if args.latent_stats.is_some() {
        bail!("--latent-stats belongs with the tokenizer (`rectok convert TOKENIZER.pth ... --latent-stats`)");
    }
    let config = args.config.as_deref().map(|s| DitDhConfig::parse(s, 128, 16).map_err(|e| anyhow!(e))).transpose()?;
    let (model, report) = load_generator(&args.input, args.entry.clone(), config, device)?;
    save_generator(&model, &args.output)?;
    println!(
        "wrote {}: DiT^DH with {:.1}M parameters ({}+{} blocks, {} classes), {} tensors from {}",
        args.output.display(),
        model.num_params() as f64 / 1e6,
        model.config.enc_depth,
        model.config.dec_depth,
        model.config.num_classes,
        report.applied,
        if report.entry.is_empty() { "the bare state dict".to_string() } else { format!("`{}`", report.entry) }
    );
    Ok(())
}

pub fn run(args: Args) -> Result<()> {
    let mut inputs = crate::io::Inputs::new();
    inputs
        .add(&args.input, "INPUT")
        .add_opt(args.latent_stats.as_deref(), "--latent-stats")
        .add_opt(args.config.as_deref().map(Path::new), "--config");
    inputs.check_output_file(&args.output, "OUTPUT")?;
    let device = Device::flex();
    let probe = StateDict::open(&args.input, args.entry.clone())?;
    if probe.contains("s_embedder.proj.weight") || probe.metadata.get("rectok.kind").is_some_and(|k| k == "generator") {
        return convert_generator(&args, &device);
    }
    drop(probe);
    let options = TokenizerLoadOptions {
        entry: args.entry,
        config: args.config.as_deref().map(parse_config).transpose()?,
        without_semantic: args.inference_only,
    };
    let (mut model, report) = load_tokenizer(&args.input, &options, &device)?;
    attach_latent_stats(&mut model, args.latent_stats.as_deref())?;
    save_tokenizer(&model, &args.output)?;
    let entry = if report.entry.is_empty() { "the bare state dict".to_string() } else { format!("`{}`", report.entry) };
    println!(
        "wrote {}: {} tensors from {entry}{}; latent statistics: {}",
        args.output.display(),
        report.applied,
        if report.ignored > 0 { format!(", {} training-only tensors dropped", report.ignored) } else { String::new() },
        if model.stats.is_some() { "stored" } else { "none (compute them with `rectok latent-stats`)" }
    );
    Ok(())
}
