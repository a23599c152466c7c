//! `rectok generate`: class-conditional sampling with DiT^DH (Euler or Heun on the shifted grid,
//! classifier-free guidance or AutoGuidance), decoded by the tokenizer.

use super::common::{DeviceArgs, GeneratorArgs, TokenizerArgs, load_generator_for, progress};
use crate::data::save_png;
use crate::data::transforms::tensor_to_images;
use crate::generator::transport::ode_grid;
use crate::generator::{Guidance, Integrator, sample_ode};
use crate::rng::Rng;
use anyhow::{Context, Result, bail};
use burn::prelude::*;
use image::RgbImage;
use std::path::PathBuf;

/// Generate images.
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    tokenizer: TokenizerArgs,
    #[command(flatten)]
    generator: GeneratorArgs,
    /// AutoGuidance: a weaker guide model (the released ditdhs_epoch_0029.pth); --cfg is its weight.
    #[arg(long, value_name = "CKPT")]
    guide: Option<PathBuf>,
    /// Guide configuration when it cannot be inferred (preset or JSON).
    #[arg(long, value_name = "PRESET|JSON")]
    guide_config: Option<String>,
    /// Class ids to sample (comma-separated); default: every class (class-balanced).
    #[arg(long, value_delimiter = ',')]
    classes: Vec<usize>,
    /// Samples per class.
    #[arg(long, default_value_t = 1)]
    num_per_class: usize,
    /// Time-grid points (N points = N − 1 Euler steps; the official evaluation uses 150).
    #[arg(long, default_value_t = 150)]
    steps: usize,
    /// Guidance weight: CFG with the null class, or AutoGuidance with --guide (official: 1.29 with
    /// the DiT^DH-S guide). 1 disables guidance.
    #[arg(long, default_value_t = 1.0)]
    cfg: f64,
    /// Interval of t (0 = noise, 1 = data) in which guidance applies, as `lo,hi`.
    #[arg(long, value_delimiter = ',', num_args = 2, default_values_t = [0.0, 1.0])]
    cfg_interval: Vec<f64>,
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

/// Tiles `images` (equal sizes) into rows of `cols`.
pub fn image_grid(images: &[RgbImage], cols: usize) -> RgbImage {
    let (w, h) = (images[0].width(), images[0].height());
    let cols = cols.clamp(1, images.len());
    let rows = images.len().div_ceil(cols);
    let mut out = RgbImage::from_pixel(w * cols as u32, h * rows as u32, image::Rgb([255, 255, 255]));
    for (i, img) in images.iter().enumerate() {
        image::imageops::replace(&mut out, img, (w * (i % cols) as u32) as i64, (h * (i / cols) as u32) as i64);
    }
    out
}

pub fn run(args: Args) -> Result<()> {
    // Everything that can be checked without the networks is checked first.
    if args.steps < 2 {
        bail!("--steps must be at least 2 (N time-grid points give N − 1 integration steps)");
    }
    if args.batch_size == 0 || args.num_per_class == 0 {
        bail!("--batch-size and --num-per-class must be at least 1");
    }
    if !(args.cfg.is_finite() && args.cfg >= 0.0) {
        bail!("--cfg must be a non-negative number");
    }
    let interval = (args.cfg_interval[0], args.cfg_interval[1]);
    if !(0.0..=1.0).contains(&interval.0) || !(0.0..=1.0).contains(&interval.1) || interval.0 >= interval.1 {
        bail!("--cfg-interval must be lo,hi with 0 ≤ lo < hi ≤ 1");
    }
    if args.guide.is_some() && args.cfg == 1.0 {
        tracing::warn!("--guide is given but --cfg is 1: AutoGuidance has no effect at weight 1");
    }
    let device = args.device.device()?;
    let tokenizer = args.tokenizer.load(&device)?;
    if tokenizer.stats.is_none() {
        bail!(
            "{}: the tokenizer carries no latent statistics, and the DiT samples normalised latents. The \
             reference recomputes them over its training set; compute them once with `rectok stats \
             --tokenizer {} --data IMAGES --output stats.safetensors` and pass --latent-stats \
             stats.safetensors (or store them with `rectok convert --latent-stats`)",
            args.tokenizer.tokenizer.display(),
            args.tokenizer.tokenizer.display()
        );
    }
    let gen_args = &args.generator;
    let net = load_generator_for(&gen_args.generator, gen_args.generator_entry, gen_args.generator_config.as_deref(), &tokenizer, &device)?;
    let num_classes = net.config.num_classes;
    let classes: Vec<usize> = if args.classes.is_empty() { (0..num_classes).collect() } else { args.classes.clone() };
    if let Some(&bad) = classes.iter().find(|&&c| c >= num_classes) {
        bail!("class id {bad} is out of range: the generator has {num_classes} classes (0..{})", num_classes - 1);
    }
    let guide = match &args.guide {
        Some(path) => {
            let g = load_generator_for(path, gen_args.generator_entry, args.guide_config.as_deref(), &tokenizer, &device)?;
            if g.config.num_classes != num_classes {
                bail!("{}: the guide has {} classes, the generator {num_classes}", path.display(), g.config.num_classes);
            }
            Some(g)
        }
        None => None,
    };
    let guidance = match &guide {
        Some(g) => Guidance::Auto { guide: g, scale: args.cfg, interval },
        None if args.cfg > 1.0 => Guidance::Cfg { scale: args.cfg, interval },
        None => Guidance::None,
    };
    std::fs::create_dir_all(&args.output).with_context(|| format!("creating {}", args.output.display()))?;

    let jobs: Vec<(usize, usize)> = classes.iter().flat_map(|&c| (0..args.num_per_class).map(move |k| (c, k))).collect();
    let grid_t = ode_grid(args.steps, net.config.time_shift());
    let (c, g) = (net.config.token_channels, net.config.input_size);
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
        let b = batch.len();
        let mut noise = Vec::with_capacity(b * c * g * g);
        for (j, _) in batch.iter().enumerate() {
            let index = (bi * args.batch_size + j) as u64;
            noise.extend(Rng::for_item(args.seed, index).normal_vec(c * g * g));
        }
        let z = Tensor::<4>::from_data(TensorData::new(noise, [b, c, g, g]), &device);
        let labels: Vec<i64> = batch.iter().map(|&(class, _)| class as i64).collect();
        let y = Tensor::<1, Int>::from_data(TensorData::new(labels, [b]), &device);
        let (x, y) = if guidance.doubles_batch() {
            let null = Tensor::<1, Int>::full([b], num_classes as i64, &device);
            (Tensor::cat(vec![z.clone(), z], 0), Tensor::cat(vec![y, null], 0))
        } else {
            (z, y)
        };
        let out = sample_ode(x, &grid_t, args.sampler, |x, t| guidance.velocity(&net, x, t, y.clone()), |k, _| if k > 0 { pb.inc(1) });
        let latents = out.narrow(0, 0, b);
        let images = tensor_to_images(tokenizer.detokenize(latents));
        for (&(class, k), img) in batch.iter().zip(images) {
            save_png(&img, &args.output.join(format!("{class:04}_{k:03}.png")))?;
            all.push(img);
        }
    }
    pb.finish_and_clear();
    if let Some(path) = &args.grid {
        let cols = if classes.len() > 1 { args.num_per_class } else { (all.len() as f64).sqrt().ceil() as usize };
        save_png(&image_grid(&all, cols), path)?;
    }
    tracing::info!("wrote {} samples to {}", all.len(), args.output.display());
    Ok(())
}
