//! `rectok latent-stats` (alias `stats`): per-channel latent statistics of a tokenizer over a folder of images, as the
//! reference computes them before generator training and evaluation (docs/TRAINING.md §4).

use super::common::{DeviceArgs, TokenizerArgs, input_images, require_batch_size, require_positive};
use crate::data::transforms::images_to_tensor;
use crate::train::latents::ChannelMoments;
use crate::weights::tokenizer::save_latent_stats;
use anyhow::{Result, bail};
use std::path::PathBuf;

/// Compute latent statistics.
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    tokenizer: TokenizerArgs,
    /// Images (a folder, searched recursively, in the ImageNet layout or flat).
    #[arg(long)]
    data: PathBuf,
    /// Output safetensors file with `mean` and `std` (C values each).
    #[arg(long, short)]
    output: PathBuf,
    /// Use at most this many images.
    #[arg(long)]
    limit: Option<usize>,
    /// Images per forward pass.
    #[arg(long, default_value_t = 8)]
    batch_size: usize,
    #[command(flatten)]
    device: DeviceArgs,
}

pub fn run(args: Args) -> Result<()> {
    require_batch_size(args.batch_size)?;
    require_positive(args.limit, "--limit")?;
    args.device.validate()?;
    let (mut inputs, mut guard) = input_images(&args.data, "--data")?;
    args.tokenizer.add_inputs(&mut guard);
    guard.check_output_file(&args.output, "--output")?;
    inputs.sources.truncate(args.limit.unwrap_or(usize::MAX));
    let device = args.device.device()?;
    let model = args.tokenizer.load(&device)?;
    // Across processes each takes a block of the batches; rank 0 merges the per-batch sums in
    // order (the one-process result) and writes the file.
    let world = crate::dist::world();
    let (first, count) = world.part(inputs.sources.len().div_ceil(args.batch_size));
    let end = ((first + count) * args.batch_size).min(inputs.sources.len());
    inputs.sources = inputs.sources.drain(..end).skip(first * args.batch_size).collect();
    let channels = model.token_channels();
    let mut batches = Vec::new();
    let images =
        inputs.for_each_batch(args.batch_size, Some(model.config.img_size), "latent statistics", |_, images| {
            let mean = model.posterior(images_to_tensor(&images, &device)).mean;
            let mut moments = ChannelMoments::new(channels);
            moments.add(&crate::device::read_f32(mean));
            batches.push(moments);
            Ok(())
        });
    let images = world.agree(images)?;
    let mut total = [images as f64];
    world.sum_f64(&mut total);
    let images = total[0] as usize;
    let Some(moments) = ChannelMoments::gather_batches(&batches, channels, world) else { return Ok(()) };
    if images == 0 {
        bail!("{}: none of the images could be read", args.data.display());
    }
    let stats = moments.finish();
    stats
        .validate(model.token_channels())
        .map_err(|e| anyhow::anyhow!("the statistics over {images} images are unusable: {e}"))?;
    save_latent_stats(&stats, &args.output)?;
    let c = stats.mean.len() as f32;
    println!(
        "wrote {}: {} channels over {images} images ({} tokens); mean of means {:.4}, mean std {:.4}",
        args.output.display(),
        stats.mean.len(),
        moments.count,
        stats.mean.iter().sum::<f32>() / c,
        stats.std.iter().sum::<f32>() / c
    );
    if images < 1000 {
        tracing::warn!("statistics from {images} images are rough; the reference uses the whole training set");
    }
    Ok(())
}
