//! Feature extractors for distribution distances.
//!
//! * `inception:PATH` — the TF-compatible InceptionV3 of FID and IS ([`super::inception`]), weights
//!   from a user-named `pt_inception-2015-12-05` `.pth` or `.safetensors` file;
//! * `effnet` — the built-in EfficientNet-Lite0's 1280-d globally pooled head features
//!   ("FD-effnet") and its 1000 ImageNet logits ("IS-effnet"), for the embedded default where the
//!   Inception weights are not available. These numbers are **not** FID / IS and are labelled as
//!   such everywhere.

use super::inception::{InceptionV3, LOGIT_DIM, POOL_DIM};
use crate::data::transforms::{ResampleFilter, resize_rgb8};
use crate::teacher::EfficientNetLite;
use crate::teacher::preprocess::{IMAGENET_MEAN, IMAGENET_STD};
use crate::weights::{CheckpointEntry, KeyMap, StateDict, load_into};
use anyhow::{Result, anyhow};
use burn::prelude::*;
use image::RgbImage;
use std::path::Path;

/// Input side of the EfficientNet extractor.
pub const EFFNET_SIZE: usize = 224;

/// A network mapping 8-bit images to feature vectors and class logits.
pub enum Extractor {
    /// TF-compatible InceptionV3 (FID, IS).
    Inception(Box<InceptionV3>),
    /// EfficientNet-Lite0 (built in): pooled head features.
    Effnet(Box<EfficientNetLite>),
}

/// Features and logits of a batch, row-major.
#[derive(Debug, Clone, Default)]
pub struct Features {
    /// `(B, dim)` distribution features (pool3 for Inception).
    pub pool: Vec<f32>,
    /// `(B, classes)` logits for the Inception Score.
    pub logits: Vec<f32>,
}

fn to_vec<const D: usize>(t: Tensor<D>) -> Result<Vec<f32>> {
    Ok(crate::device::read_f32(t))
}

impl Extractor {
    /// Parses `effnet` or `inception:PATH`.
    pub fn load(spec: &str, device: &Device) -> Result<Self> {
        match spec {
            "effnet" | "efficientnet-lite0" => {
                let crate::teacher::Teacher::EfficientNet(m) =
                    crate::teacher::Teacher::load(&crate::teacher::TeacherSpec::EfficientNetLite0, device)?
                else {
                    unreachable!("the built-in teacher is EfficientNet")
                };
                Ok(Self::Effnet(Box::new(m)))
            }
            s if s.starts_with("inception:") => Self::load_inception(Path::new(&s["inception:".len()..]), device),
            "inception" => Err(anyhow!(
                "`inception` needs its weight file: `inception:PATH` with torch-fidelity's \
                    weights-inception-2015-12-05-6726825d.pth (or a safetensors conversion); nothing is downloaded"
            )),
            other => Err(anyhow!("unknown feature extractor `{other}` (inception:PATH or effnet)")),
        }
    }

    /// The TF-compatible InceptionV3 from a state-dict file with torch-fidelity's key names.
    pub fn load_inception(path: &Path, device: &Device) -> Result<Self> {
        let sd = StateDict::open(path, CheckpointEntry::Auto)?;
        let mut model = InceptionV3::new(device);
        let hint = " — expected torch-fidelity's weights-inception-2015-12-05 (pt_inception) state dict";
        let report = load_into(&mut model, &sd, &KeyMap::new(), &[], &[], hint)?;
        let unexpected: Vec<_> = report.unused.iter().filter(|k| !k.ends_with("num_batches_tracked")).collect();
        if let Some(first) = unexpected.first() {
            tracing::warn!("{}: {} tensors not used by InceptionV3 (first: {first})", path.display(), unexpected.len());
        }
        Ok(Self::Inception(Box::new(model)))
    }

    fn is_inception(&self) -> bool {
        matches!(self, Self::Inception(_))
    }

    /// The distance's name for reports.
    pub fn metric_name(&self) -> &'static str {
        if self.is_inception() { "FID" } else { "FD-effnet" }
    }

    /// The score's name for reports.
    pub fn score_name(&self) -> &'static str {
        if self.is_inception() { "IS" } else { "IS-effnet" }
    }

    /// Feature width.
    pub fn dim(&self) -> usize {
        if self.is_inception() { POOL_DIM } else { 1280 }
    }

    /// Logit width.
    pub fn classes(&self) -> usize {
        if self.is_inception() { LOGIT_DIM } else { 1000 }
    }

    /// Features of a batch of images, row-major `(B, dim)`.
    pub fn features(&self, images: &[RgbImage], device: &Device) -> Result<Vec<f32>> {
        to_vec(self.pooled(images, device))
    }

    /// Features and Inception-Score logits of a batch.
    pub fn features_and_logits(&self, images: &[RgbImage], device: &Device) -> Result<Features> {
        let pool = self.pooled(images, device);
        let logits = match self {
            Self::Inception(m) => m.unbiased_logits(pool.clone()),
            Self::Effnet(m) => m._fc.forward(pool.clone()),
        };
        Ok(Features { pool: to_vec(pool)?, logits: to_vec(logits)? })
    }

    /// The `(B, dim)` features as a tensor.
    fn pooled(&self, images: &[RgbImage], device: &Device) -> Tensor<2> {
        match self {
            Self::Inception(m) => m.pool3(InceptionV3::input(images, device)),
            Self::Effnet(m) => Self::effnet_pooled(m, images, device),
        }
    }

    /// EfficientNet: 224² square Pillow-bilinear resize, ImageNet normalisation, pooled head.
    fn effnet_pooled(m: &EfficientNetLite, images: &[RgbImage], device: &Device) -> Tensor<2> {
        let s = EFFNET_SIZE;
        let mut v = Vec::with_capacity(images.len() * 3 * s * s);
        for img in images {
            let r = resize_rgb8(img, s, s, ResampleFilter::Bilinear);
            let raw = r.as_raw();
            for c in 0..3 {
                v.extend((0..s * s).map(|i| (raw[i * 3 + c] as f32 / 255.0 - IMAGENET_MEAN[c]) / IMAGENET_STD[c]));
            }
        }
        let x = Tensor::<4>::from_data(TensorData::new(v, [images.len(), 3, s, s]), device);
        let f = m.features(x);
        let [b, c, h, w] = f.dims();
        f.reshape([b, c, h * w]).mean_dim(2).reshape([b, c])
    }
}
