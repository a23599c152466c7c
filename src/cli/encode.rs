//! `rectok encode`: images → latents.

use super::common::{DeviceArgs, TokenizerArgs, input_images, require_batch_size};
use crate::data::transforms::images_to_tensor;
use crate::rng::Rng;
use crate::weights::write_safetensors;
use anyhow::{Result, bail};
use burn::prelude::*;
use std::collections::HashMap;
use std::path::PathBuf;

/// Encode images into latents.
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    tokenizer: TokenizerArgs,
    /// An image file or a folder of images (searched recursively).
    #[arg(long, short)]
    input: PathBuf,
    /// Output safetensors file: one f32 [C, H, W] tensor per image, named by the file stem.
    #[arg(long, short)]
    output: PathBuf,
    /// Store a posterior sample (mean + std·ε) instead of the posterior mean.
    #[arg(long)]
    sample: bool,
    /// Seed for --sample.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Store raw latents even when the tokenizer carries latent statistics.
    #[arg(long)]
    raw: bool,
    /// Images per forward pass.
    #[arg(long, default_value_t = 8)]
    batch_size: usize,
    #[command(flatten)]
    device: DeviceArgs,
}

pub fn run(args: Args) -> Result<()> {
    require_batch_size(args.batch_size)?;
    args.device.validate()?;
    let (inputs, mut guard) = input_images(&args.input, "--input")?;
    args.tokenizer.add_inputs(&mut guard);
    guard.check_output_file(&args.output, "--output")?;
    let device = args.device.device()?;
    let model = args.tokenizer.load(&device)?;
    let normalize = model.stats.is_some() && !args.raw;
    if model.stats.is_none() && !args.raw {
        tracing::info!("the tokenizer carries no latent statistics: writing raw (un-normalised) latents");
    }
    let mut rng = Rng::seed_from(args.seed);
    let mut out: Vec<(String, TensorData)> = Vec::new();
    inputs.for_each_batch(args.batch_size, Some(model.config.img_size), "encode", |names, images| {
        let posterior = model.posterior(images_to_tensor(&images, &device));
        let z = if args.sample {
            posterior.sample(rng.normal_tensor([names.len(), model.config.seq_len(), model.token_channels()], &device))
        } else {
            posterior.mode()
        };
        let z = if normalize { model.normalize_z(z) } else { z };
        let grid = model.tokens_to_grid(z);
        let [_, c, h, w] = grid.dims();
        let values = crate::device::read_f32(grid);
        for (name, v) in names.into_iter().zip(values.chunks(c * h * w)) {
            if v.iter().any(|x| !x.is_finite()) {
                bail!(
                    "the latents of `{name}` hold NaN or infinite values (the tokenizer's weights or input diverged); \
                    nothing was written"
                );
            }
            out.push((name, TensorData::new(v.to_vec(), [c, h, w])));
        }
        Ok(())
    })?;
    if out.is_empty() {
        bail!("{}: none of the images could be read", args.input.display());
    }
    let mut meta = HashMap::new();
    meta.insert("rectok.kind".to_string(), "latents".to_string());
    meta.insert("rectok.normalized".to_string(), normalize.to_string());
    meta.insert("rectok.posterior".to_string(), if args.sample { "sample" } else { "mean" }.to_string());
    meta.insert("rectok.tokenizer".to_string(), args.tokenizer.tokenizer.display().to_string());
    let n = out.len();
    write_safetensors(&args.output, out, meta)?;
    tracing::info!("wrote {n} latents to {}", args.output.display());
    Ok(())
}
