//! Feature extractors for distribution distances. `effnet`: the built-in EfficientNet-Lite0's
//! 1280-d globally pooled head features ("FD-effnet"), for the embedded default where the
//! Inception weights of FID are not available. FD-effnet numbers are **not** FID and are labelled
//! as such everywhere.

use crate::data::transforms::{ResampleFilter, resize_rgb8};
use crate::teacher::EfficientNetLite;
use crate::teacher::preprocess::{IMAGENET_MEAN, IMAGENET_STD};
use anyhow::{Result, anyhow};
use burn::prelude::*;
use image::RgbImage;

/// Input side of the EfficientNet extractor.
pub const EFFNET_SIZE: usize = 224;

/// A network mapping 8-bit images to feature vectors.
pub enum Extractor {
    /// EfficientNet-Lite0 (built in): pooled head features.
    Effnet(Box<EfficientNetLite>),
}

impl Extractor {
    /// Parses `effnet`.
    pub fn load(spec: &str, device: &Device) -> Result<Self> {
        match spec {
            "effnet" | "efficientnet-lite0" => {
                let crate::teacher::Teacher::EfficientNet(m) = crate::teacher::Teacher::load(&crate::teacher::TeacherSpec::EfficientNetLite0, device)? else {
                    unreachable!("the built-in teacher is EfficientNet")
                };
                Ok(Self::Effnet(Box::new(m)))
            }
            s if s.starts_with("inception") => Err(anyhow!("`{s}`: the Inception extractor of FID is not implemented yet; use `effnet` (FD-effnet)")),
            other => Err(anyhow!("unknown feature extractor `{other}` (effnet)")),
        }
    }

    /// The metric's name for reports.
    pub fn metric_name(&self) -> &'static str {
        match self {
            Self::Effnet(_) => "FD-effnet",
        }
    }

    /// Feature width.
    pub fn dim(&self) -> usize {
        match self {
            Self::Effnet(_) => 1280,
        }
    }

    /// Features of a batch of images, row-major `(B, dim)`.
    pub fn features(&self, images: &[RgbImage], device: &Device) -> Result<Vec<f32>> {
        match self {
            Self::Effnet(m) => {
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
                let pooled = f.reshape([b, c, h * w]).mean_dim(2).reshape([b * c]);
                pooled.into_data().try_to_vec::<f32>().map_err(|e| anyhow!("{e:?}"))
            }
        }
    }
}
