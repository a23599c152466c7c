//! `rectok generate`: class-conditional sampling with DiT^DH (Euler or Heun on the shifted grid,
//! classifier-free guidance or AutoGuidance), decoded by the tokenizer.

use super::common::{
    DeviceArgs, GeneratorArgs, GuidanceArgs, SamplingArgs, TokenizerArgs, between, require_batch_size,
};
use crate::data::save_png;
use crate::data::transforms::tensor_to_images;
use crate::generator::Guidance;
use crate::generator::sampler::{grid_columns, sample_class_latents, sample_jobs};
use crate::io::{Inputs, progress};
use crate::rectified_flow::ode_grid;
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
    #[command(flatten)]
    sampling: SamplingArgs,
    /// Output folder: one PNG per sample named `<class>_<index>.png` (a class listed twice
    /// continues its numbering).
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
    args.sampling.validate()?;
    require_batch_size(args.batch_size)?;
    between("--num-per-class", args.num_per_class, 1, 100_000)?;
    args.guidance.validate()?;
    args.device.validate()?;
    let mut inputs = Inputs::new();
    args.tokenizer.add_inputs(&mut inputs);
    args.generator.add_inputs(&mut inputs);
    args.guidance.add_inputs(&mut inputs);
    inputs.check_output_dir(&args.output, "--output", [])?;
    if let Some(grid) = &args.grid {
        inputs.check_output_file(grid, "--grid")?;
    }
    let device = args.device.device()?;
    let tokenizer = args.tokenizer.load_with_stats(&device)?;
    let net = args.generator.load(&tokenizer, &device)?;
    let num_classes = net.config.num_classes;
    let classes: Vec<usize> = if args.classes.is_empty() { (0..num_classes).collect() } else { args.classes.clone() };
    if let Some(&bad) = classes.iter().find(|&&c| c >= num_classes) {
        bail!(
            "--classes: class id {bad} is out of range: the generator has {num_classes} classes (0..{})",
            num_classes - 1
        );
    }
    let guide = args.guidance.load_guide(args.generator.generator_entry.clone(), &tokenizer, &net, &device)?;
    let guidance = args.guidance.guidance(guide.as_ref());

    let jobs = sample_jobs(&classes, args.num_per_class);
    let files: Vec<PathBuf> = jobs.iter().map(|(class, k)| PathBuf::from(format!("{class:04}_{k:03}.png"))).collect();
    inputs.check_output_dir(&args.output, "--output", files.iter().map(|p| p.as_path()))?;
    if let Some(grid) = &args.grid {
        crate::io::check_not_planned(grid, "--grid", &args.output, &files)?;
    }
    let mut staged = crate::io::StagedFolder::new(&args.output);
    let grid_t = ode_grid(args.sampling.steps, net.config.time_shift());
    tracing::info!(
        "sampling {} images: {} steps ({} evaluations each), {}, {:?}",
        jobs.len(),
        args.sampling.steps - 1,
        args.sampling.sampler.evaluations(args.sampling.steps),
        match guidance {
            Guidance::None => "no guidance".to_string(),
            Guidance::Cfg { scale, .. } => format!("classifier-free guidance {scale}"),
            Guidance::Auto { scale, .. } => format!("AutoGuidance {scale}"),
        },
        args.sampling.sampler
    );
    let pb = progress(jobs.len().div_ceil(args.batch_size) * (args.sampling.steps - 1), "sampling steps");
    let mut all = Vec::new();
    for (bi, (batch, batch_files)) in jobs.chunks(args.batch_size).zip(files.chunks(args.batch_size)).enumerate() {
        let labels: Vec<usize> = batch.iter().map(|&(class, _)| class).collect();
        let latents = sample_class_latents(
            &net,
            &guidance,
            &labels,
            args.sampling.seed,
            (bi * args.batch_size) as u64,
            &grid_t,
            args.sampling.sampler,
            |_| pb.inc(1),
        );
        let images = tensor_to_images(tokenizer.detokenize(latents)).context("sampling")?;
        for (file, img) in batch_files.iter().zip(images) {
            staged.write(file, &crate::data::images::png_bytes(&img)?)?;
            all.push(img);
        }
    }
    pb.finish_and_clear();
    staged.commit()?;
    if let Some(path) = &args.grid {
        let cols = grid_columns(classes.len(), args.num_per_class, all.len());
        save_png(&crate::data::images::image_grid(&all, cols), path)?;
    }
    tracing::info!("wrote {} samples to {}", all.len(), args.output.display());
    Ok(())
}
