//! `rectok decode`: latents → PNG images.

use super::common::{DeviceArgs, TokenizerArgs, progress};
use crate::data::save_png;
use crate::data::transforms::tensor_to_images;
use crate::weights::{CheckpointEntry, StateDict};
use anyhow::{Context, Result, bail};
use burn::prelude::*;
use std::path::PathBuf;

/// Decode latents into images.
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    tokenizer: TokenizerArgs,
    /// Latents: a safetensors file of [C, H, W] tensors (as written by `rectok encode`).
    #[arg(long, short)]
    input: PathBuf,
    /// Output folder for one PNG per tensor.
    #[arg(long, short)]
    output: PathBuf,
    /// Treat the latents as raw (not normalised) whatever the file says.
    #[arg(long)]
    raw: bool,
    /// Latents per forward pass.
    #[arg(long, default_value_t = 8)]
    batch_size: usize,
    #[command(flatten)]
    device: DeviceArgs,
}

/// Saves an RGB image as PNG through a temporary file and a rename.
pub fn run(args: Args) -> Result<()> {
    if args.batch_size == 0 {
        bail!("--batch-size must be at least 1");
    }
    let device = args.device.device()?;
    let latents = StateDict::open(&args.input, CheckpointEntry::Auto)?;
    if latents.tensors.is_empty() {
        bail!("{}: holds no latents", args.input.display());
    }
    let model = args.tokenizer.load(&device)?;
    let normalized = !args.raw && latents.metadata.get("rectok.normalized").is_some_and(|v| v == "true");
    if normalized && model.stats.is_none() {
        bail!(
            "{}: the latents were normalised with latent statistics, but the tokenizer has none; \
             pass the statistics with --latent-stats (or --raw to decode them as they are)",
            args.input.display()
        );
    }
    let (c, g) = (model.token_channels(), model.grid_size());
    for (name, t) in &latents.tensors {
        if t.shape.to_vec() != vec![c, g, g] {
            bail!(
                "{}: latent `{name}` has shape {:?}, but this tokenizer decodes [{c}, {g}, {g}]",
                args.input.display(),
                t.shape.to_vec()
            );
        }
    }
    std::fs::create_dir_all(&args.output).with_context(|| format!("creating {}", args.output.display()))?;
    let names: Vec<&String> = latents.tensors.keys().collect();
    let pb = progress(names.len(), "decode");
    for chunk in names.chunks(args.batch_size) {
        let mut values = Vec::with_capacity(chunk.len() * c * g * g);
        for name in chunk {
            values.extend(latents.read_f32(name)?);
        }
        let z: Tensor<4> = Tensor::from_data(TensorData::new(values, [chunk.len(), c, g, g]), &device);
        let images = if normalized {
            model.detokenize(z)
        } else {
            let tokens = model.grid_to_tokens(z);
            (model.decoder.forward(tokens, None) * 0.5 + 0.5).clamp(0.0, 1.0)
        };
        for (name, img) in chunk.iter().zip(tensor_to_images(images)) {
            save_png(&img, &args.output.join(format!("{name}.png")))?;
        }
        pb.inc(chunk.len() as u64);
    }
    pb.finish_and_clear();
    tracing::info!("wrote {} images to {}", names.len(), args.output.display());
    Ok(())
}
