//! `rectok eval`: distribution distances on feature statistics.

use super::common::{DeviceArgs, input_images, progress, report_skipped};
use crate::data::load_rgb8;
use crate::metrics::extractor::Extractor;
use crate::metrics::fid::{StatsAccumulator, frechet_distance, read_npz, write_npz};
use anyhow::{Result, bail};
use rayon::prelude::*;
use std::path::PathBuf;

/// Evaluation commands.
#[derive(clap::Subcommand, Debug)]
pub enum Which {
    /// Fréchet distance between two statistics files (`.npz` with `mu` and `sigma`); the last line
    /// printed is the number alone.
    Fd(FdArgs),
    /// Feature statistics (`mu`, `sigma`) of a folder of images, as an `.npz` file.
    Stats(StatsArgs),
}

/// `rectok eval fd`.
#[derive(clap::Args, Debug)]
pub struct FdArgs {
    /// First statistics file.
    a: PathBuf,
    /// Second statistics file.
    b: PathBuf,
}

/// `rectok eval stats`.
#[derive(clap::Args, Debug)]
pub struct StatsArgs {
    /// Feature extractor: effnet (the built-in EfficientNet-Lite0; gives FD-effnet, not FID).
    #[arg(long, default_value = "effnet")]
    extractor: String,
    /// An image or a folder of images (searched recursively, sorted by name).
    input: PathBuf,
    /// Output `.npz` (float64 `mu` and `sigma`, the ADM / pytorch-fid layout).
    #[arg(long, short)]
    output: PathBuf,
    /// Images per forward pass.
    #[arg(long, default_value_t = 32)]
    batch_size: usize,
    #[command(flatten)]
    device: DeviceArgs,
}

pub fn run(which: Which) -> Result<()> {
    match which {
        Which::Fd(a) => {
            let (sa, sb) = (read_npz(&a.a)?, read_npz(&a.b)?);
            let fd = frechet_distance(&sa, &sb)?;
            println!("Fréchet distance between {} and {} ({}-d features):", a.a.display(), a.b.display(), sa.dim());
            println!("{fd}");
            Ok(())
        }
        Which::Stats(a) => {
            if a.batch_size == 0 {
                bail!("--batch-size must be at least 1");
            }
            let device = a.device.device()?;
            let extractor = Extractor::load(&a.extractor, &device)?;
            let inputs = input_images(&a.input)?;
            let mut acc = StatsAccumulator::new(extractor.dim());
            let bar = progress(inputs.sources.len(), "features");
            let mut unreadable = Vec::new();
            for chunk in inputs.sources.chunks(a.batch_size) {
                let decoded: Vec<_> = chunk.par_iter().map(|s| (s.path.clone(), load_rgb8(&s.path))).collect();
                let mut images = Vec::with_capacity(decoded.len());
                for (path, img) in decoded {
                    match img {
                        Ok(i) => images.push(i),
                        Err(e) => {
                            tracing::warn!("{e:#}");
                            unreadable.push(path);
                        }
                    }
                }
                if !images.is_empty() {
                    acc.add(&extractor.features(&images, &device)?)?;
                }
                bar.inc(chunk.len() as u64);
            }
            bar.finish_and_clear();
            report_skipped(&inputs.skipped_non_images, &unreadable);
            let stats = acc.finish()?;
            write_npz(&stats, &a.output)?;
            println!("{} statistics of {} images ({}-d) written to {}", extractor.metric_name(), stats.count, stats.dim(), a.output.display());
            Ok(())
        }
    }
}
