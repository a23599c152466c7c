//! `rectok teacher check`: confirm that a teacher loads and behaves.

use crate::data::load_rgb8;
use crate::data::transforms::{center_crop_arr, images_to_tensor};
use crate::teacher::efficientnet::classifier_input;
use crate::teacher::{Teacher, TeacherSpec};
use anyhow::{Result, bail};
use burn::tensor::activation::softmax;
use std::path::PathBuf;

/// Teacher tools.
#[derive(clap::Subcommand, Debug)]
pub enum Which {
    /// Print, per image, the top-5 ImageNet classes (classifier teachers) or feature statistics.
    Check(CheckArgs),
}

/// Options of `rectok teacher check`.
#[derive(clap::Args, Debug)]
pub struct CheckArgs {
    /// Teacher: efficientnet-lite0 (built in), or dinov3-s16|dinov3-b16|dinov3-l16:PATH.
    #[arg(long, default_value = "efficientnet-lite0")]
    teacher: TeacherSpec,
    /// Image size of the tokenizer the features are computed for (feature teachers).
    #[arg(long, default_value_t = 256)]
    size: usize,
    /// Images.
    #[arg(required = true)]
    images: Vec<PathBuf>,
    #[command(flatten)]
    device: super::common::DeviceArgs,
}

/// Top-`k` `(class, probability)` of a probability vector.
pub fn top_k(p: &[f32], k: usize) -> Vec<(usize, f32)> {
    let mut idx: Vec<usize> = (0..p.len()).collect();
    idx.sort_by(|&a, &b| p[b].total_cmp(&p[a]));
    idx.into_iter().take(k).map(|i| (i, p[i])).collect()
}

pub fn run(which: Which) -> Result<()> {
    let Which::Check(args) = which;
    let ok = (16..=4096).contains(&args.size) && args.size.is_multiple_of(16);
    super::common::ensure(ok, "--size", "a multiple of 16 between 16 and 4096", args.size)?;
    let device = args.device.device()?;
    let teacher = Teacher::load(&args.teacher, &device)?;
    println!("teacher: {} ({}-d features)", teacher.name(), teacher.dim());
    for path in &args.images {
        let img = load_rgb8(path)?;
        let (w, h) = (img.width().max(1) as f64, img.height().max(1) as f64);
        if w.max(h) / w.min(h) > 16.0 {
            // The classifier sees the whole image resized to a short side of 224 (no crop).
            bail!(
                "{}: a {}×{} image is too elongated for the classifier's whole-image input (at most 16:1)",
                path.display(),
                img.width(),
                img.height()
            );
        }
        let name = path.display();
        match &teacher {
            Teacher::EfficientNet(m) => {
                let logits = m.logits(classifier_input(&img, &device));
                let p = crate::device::read_f32(softmax(logits, 1));
                let top: Vec<String> = top_k(&p, 5).iter().map(|(c, v)| format!("{c} ({v:.3})")).collect();
                println!("{name}\ttop-5 ImageNet classes: {}", top.join(", "));
            }
            Teacher::Dinov3(_) => {
                let x = images_to_tensor(&[center_crop_arr(&img, args.size)], &device);
                let v = crate::device::read_f32(teacher.features(x, args.size / 16, None));
                let d = teacher.dim();
                let n = v.len() as f64;
                let mean = v.iter().map(|&x| x as f64).sum::<f64>() / n;
                let std = (v.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / n).sqrt();
                let norms: Vec<f64> =
                    v.chunks(d).map(|t| t.iter().map(|&x| (x as f64).powi(2)).sum::<f64>().sqrt()).collect();
                println!(
                    "{name}\t{} tokens × {d}: mean {mean:.4}, std {std:.4}, token L2 norm mean {:.3} (min {:.3}, max \
                        {:.3}){}",
                    norms.len(),
                    norms.iter().sum::<f64>() / norms.len() as f64,
                    norms.iter().cloned().fold(f64::INFINITY, f64::min),
                    norms.iter().cloned().fold(0.0, f64::max),
                    if v.iter().all(|x| x.is_finite()) { "" } else { ", NON-FINITE VALUES" }
                );
            }
        }
    }
    Ok(())
}
