//! `rectok generate`: class-conditional sampling with DiT^DH (Euler or Heun on the shifted grid,
//! classifier-free guidance or AutoGuidance), decoded by the tokenizer.

use super::common::{DeviceArgs, GeneratorArgs, GuidanceArgs, TokenizerArgs, load_generator_for, progress, require_latent_stats};
use crate::data::save_png;
use crate::data::transforms::tensor_to_images;
use crate::generator::transport::ode_grid;
use crate::generator::sampler::sample_class_latents;
use crate::generator::{Guidance, Integrator};
use anyhow::{Context, Result, bail};
use std::path::PathBuf;

/// Generate images.
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    tokenizer: TokenizerArgs,
    #[command(flatten)]
    generator: GeneratorArgs,
    #[command(flatten)]
    guidance: GuidanceArgs,
    /// Class ids to sample (comma-separated); default: every class (class-balanced).
    #[arg(long, value_delimiter = ',')]
    classes: Vec<usize>,
    /// Samples per class.
    #[arg(long, default_value_t = 1)]
    num_per_class: usize,
    /// Time-grid points (N points = N − 1 Euler steps; the official evaluation uses 150).
    #[arg(long, default_value_t = 150)]
    steps: usize,
    /// ODE integrator.
    #[arg(long, default_value = "euler")]
    sampler: Integrator,
    /// Seed: sample i always gets the same initial noise for a seed, at any batch size.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Output folder: one PNG per sample named `<class>_<index>.png`.
    #[arg(long, short)]
    output: PathBuf,
    /// Also write a grid of all samples (one row per class).
    #[arg(long, value_name = "PNG")]
    grid: Option<PathBuf>,
    /// Samples per forward pass.
    #[arg(long, default_value_t = 8)]
    batch_size: usize,
    #[command(flatten)]
    device: DeviceArgs,
}


pub fn run(args: Args) -> Result<()> {
    // Everything that can be checked without the networks is checked first.
    if args.steps < 2 {
        bail!("--steps must be at least 2 (N time-grid points give N − 1 integration steps)");
    }
    if args.batch_size == 0 || args.num_per_class == 0 {
        bail!("--batch-size and --num-per-class must be at least 1");
    }
    args.guidance.validate()?;
    let device = args.device.device()?;
    let tokenizer = args.tokenizer.load(&device)?;
    require_latent_stats(&tokenizer, &args.tokenizer)?;
    let gen_args = &args.generator;
    let net = load_generator_for(&gen_args.generator, gen_args.generator_entry, gen_args.generator_config.as_deref(), &tokenizer, &device)?;
    let num_classes = net.config.num_classes;
    let classes: Vec<usize> = if args.classes.is_empty() { (0..num_classes).collect() } else { args.classes.clone() };
    if let Some(&bad) = classes.iter().find(|&&c| c >= num_classes) {
        bail!("class id {bad} is out of range: the generator has {num_classes} classes (0..{})", num_classes - 1);
    }
    let guide = args.guidance.load_guide(gen_args.generator_entry, &tokenizer, &net, &device)?;
    let guidance = args.guidance.guidance(guide.as_ref());
    std::fs::create_dir_all(&args.output).with_context(|| format!("creating {}", args.output.display()))?;

    let jobs: Vec<(usize, usize)> = classes.iter().flat_map(|&c| (0..args.num_per_class).map(move |k| (c, k))).collect();
    let grid_t = ode_grid(args.steps, net.config.time_shift());
    let batches = jobs.len().div_ceil(args.batch_size);
    let evals = args.sampler.evaluations(args.steps);
    tracing::info!(
        "sampling {} images: {} steps ({} evaluations each), {}, {:?}",
        jobs.len(),
        args.steps - 1,
        evals,
        match guidance {
            Guidance::None => "no guidance".to_string(),
            Guidance::Cfg { scale, .. } => format!("classifier-free guidance {scale}"),
            Guidance::Auto { scale, .. } => format!("AutoGuidance {scale}"),
        },
        args.sampler
    );
    let pb = progress(batches * (args.steps - 1), "sampling steps");
    let mut all = Vec::new();
    for (bi, batch) in jobs.chunks(args.batch_size).enumerate() {
        let labels: Vec<usize> = batch.iter().map(|&(class, _)| class).collect();
        let first = (bi * args.batch_size) as u64;
        let latents = sample_class_latents(&net, &guidance, &labels, args.seed, first, &grid_t, args.sampler, |_| pb.inc(1));
        let images = tensor_to_images(tokenizer.detokenize(latents));
        for (&(class, k), img) in batch.iter().zip(images) {
            save_png(&img, &args.output.join(format!("{class:04}_{k:03}.png")))?;
            all.push(img);
        }
    }
    pb.finish_and_clear();
    if let Some(path) = &args.grid {
        let cols = if classes.len() > 1 { args.num_per_class } else { (all.len() as f64).sqrt().ceil() as usize };
        save_png(&crate::data::images::image_grid(&all, cols), path)?;
    }
    tracing::info!("wrote {} samples to {}", all.len(), args.output.display());
    Ok(())
}
