//! `rectok reconstruct`: images → latents → images, with PSNR and SSIM.

use super::common::{DeviceArgs, TokenizerArgs, input_images, require_batch_size};
use crate::data::images::png_bytes;
use crate::data::transforms::{images_to_tensor, tensor_to_images, tensor_to_planes};
use crate::io::{StagedFolder, output_file};
use crate::metrics::{psnr, ssim};
use anyhow::{Context, Result, bail};
use std::path::PathBuf;

/// Reconstruct images through the tokenizer.
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    tokenizer: TokenizerArgs,
    /// An image file or a folder of images (searched recursively).
    #[arg(long, short)]
    input: PathBuf,
    /// Output folder: one PNG per image, same stem.
    #[arg(long, short)]
    output: PathBuf,
    /// Also write the per-image metrics and means as JSON.
    #[arg(long, value_name = "FILE")]
    metrics_json: Option<PathBuf>,
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
    let files = inputs.sources.iter().map(|s| output_file(&s.name, "image name", "png")).collect::<Result<Vec<_>>>()?;
    crate::io::check_distinct(files.iter().map(|p| p.as_path()), "reconstructions")?;
    args.tokenizer.add_inputs(&mut guard);
    guard.check_output_dir(&args.output, "--output", files.iter().map(|p| p.as_path()))?;
    if let Some(json) = &args.metrics_json {
        guard.check_output_file(json, "--metrics-json")?;
        crate::io::check_not_planned(json, "--metrics-json", &args.output, &files)?;
    }
    let device = args.device.device()?;
    let model = args.tokenizer.load(&device)?;
    let size = model.config.img_size;
    let mut rows: Vec<(String, f64, f64)> = Vec::new();
    let mut staged = StagedFolder::new(&args.output);
    inputs.for_each_batch(args.batch_size, Some(size), "reconstruct", |names, images| {
        let x = images_to_tensor(&images, &device);
        let original = (x.clone() * 0.5 + 0.5).clamp(0.0, 1.0);
        let recon = model.reconstruct(x);
        let (orig_planes, recon_planes) = (tensor_to_planes(original), tensor_to_planes(recon.clone()));
        let recon_images = tensor_to_images(recon).context("reconstructing")?;
        for (((name, img), o), r) in names.into_iter().zip(recon_images).zip(&orig_planes).zip(&recon_planes) {
            staged.write(&output_file(&name, "image name", "png")?, &png_bytes(&img)?)?;
            let (p, s) = (psnr(r, o), ssim(r, o, 3, size, size));
            println!("{name}\tPSNR {p:.3} dB\tSSIM {s:.4}");
            rows.push((name, p, s));
        }
        Ok(())
    })?;
    if rows.is_empty() {
        bail!("{}: none of the images could be read", args.input.display());
    }
    let n = rows.len() as f64;
    let mean_psnr = rows.iter().map(|r| r.1).sum::<f64>() / n;
    let mean_ssim = rows.iter().map(|r| r.2).sum::<f64>() / n;
    staged.commit()?;
    println!("mean ({} images)\tPSNR {mean_psnr:.3} dB\tSSIM {mean_ssim:.4}", rows.len());
    if let Some(path) = &args.metrics_json {
        let json = serde_json::json!({
            "images": rows.iter().map(|(name, p, s)| serde_json::json!({"name": name, "psnr": p, "ssim": s})).collect::<Vec<_>>(),
            "mean_psnr": mean_psnr,
            "mean_ssim": mean_ssim,
            "psnr_definition": "10*log10(1/MSE) on [0,1] float reconstructions vs the center-cropped input",
            "ssim_definition": "Gaussian window 11, sigma 1.5, K1 0.01, K2 0.03, data range 1, valid region, channel \
                mean",
        });
        super::common::write_json(path, &json)?;
    }
    Ok(())
}
