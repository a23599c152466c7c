//! The perceptual loss term of the tokenizer's objective.
//!
//! Official (`PerceptualLoss("lpips-convnext_s-1.0-0.1")`, docs/MODELS.md §4.2):
//!
//! ```text
//! P = (1.0 · mean_b LPIPS-VGG(y, ŷ) + 0.1 · MSE(ConvNeXt-S logits(y), logits(ŷ))) / 1.1
//! ```
//!
//! with the ConvNeXt inputs resized to 224×224 (bilinear, antialiased) and ImageNet-normalised.
//! Both networks need pretrained weights the user names (`vgg16-397923af.pth` + LPIPS
//! `vgg.pth`, or one LPIPS state dict; `convnext_small-0c510722.pth`); nothing is downloaded.
//!
//! Without them a run can use no perceptual term, or — clearly labelled, never silently — the
//! built-in EfficientNet-Lite0's logits in place of ConvNeXt's (`effnet`: `MSE(logits(y),
//! logits(ŷ))`), the closest stand-in that ships with rectok.

use super::convnext::{ConvNext, ConvNextConfig};
use super::lpips::{Lpips, LpipsConfig};
use crate::teacher::EfficientNetLite;
use crate::teacher::preprocess::{
    IMAGENET_MEAN, IMAGENET_STD, antialiased_bilinear_weights, normalize_channels, resize_square,
};
use crate::weights::{CheckpointEntry, StateDict, WeightsError, load_into};
use burn::prelude::*;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Which perceptual term.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PerceptualKind {
    /// No perceptual term.
    None,
    /// LPIPS-VGG + ConvNeXt-S logits (official).
    LpipsConvnext,
    /// Stand-in: MSE of the built-in EfficientNet-Lite0's logits.
    Effnet,
}

impl PerceptualKind {
    /// The configuration spelling.
    pub fn name(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::LpipsConvnext => "lpips-convnext",
            Self::Effnet => "effnet",
        }
    }
}

impl std::str::FromStr for PerceptualKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "none" => Ok(Self::None),
            "lpips-convnext" | "lpips-convnext_s-1.0-0.1" => Ok(Self::LpipsConvnext),
            "effnet" | "efficientnet-lite0" => Ok(Self::Effnet),
            other => Err(format!("unknown perceptual loss `{other}` (none, lpips-convnext, effnet)")),
        }
    }
}

/// Weight files of the official term.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PerceptualWeights {
    /// LPIPS: its linear heads (`vgg.pth` of the `lpips` package, v0.1), or a whole LPIPS state
    /// dict (`net.slice*` + `lin*`).
    pub lpips: Option<PathBuf>,
    /// torchvision VGG16 ImageNet weights (`vgg16-397923af.pth`), unless `lpips` holds the trunk.
    pub vgg: Option<PathBuf>,
    /// torchvision ConvNeXt-Small ImageNet weights (`convnext_small-0c510722.pth`).
    pub convnext: Option<PathBuf>,
}

/// A loaded perceptual term (frozen networks on the training device, no parameter gradients).
#[derive(Debug)]
pub enum PerceptualLoss {
    /// No term.
    None,
    /// The official term.
    Official {
        /// LPIPS-VGG.
        lpips: Box<Lpips>,
        /// ConvNeXt-S.
        convnext: Box<ConvNext>,
    },
    /// The EfficientNet-Lite0 stand-in.
    Effnet(Box<EfficientNetLite>),
}

/// Input side of the classifier terms.
const CLASSIFIER_SIZE: usize = 224;

/// The weights file of the official term at `path`, or an error naming the missing `what`.
fn required<'a>(path: &'a Option<PathBuf>, what: &str) -> Result<&'a Path, WeightsError> {
    path.as_deref().ok_or_else(|| WeightsError::Invalid {
        path: PathBuf::from("<config>"),
        message: format!("the lpips-convnext perceptual loss needs {what} weights"),
    })
}

fn load_lpips(weights: &PerceptualWeights, config: &LpipsConfig, device: &Device) -> Result<Lpips, WeightsError> {
    let lin_path = required(&weights.lpips, "`lpips` (LPIPS vgg.pth)")?;
    let lin = StateDict::open(lin_path, CheckpointEntry::Auto)?;
    let mut net = config.init(device);
    let map = Lpips::key_map();
    if lin.contains("net.slice1.0.weight") {
        load_into(&mut net, &lin, &map, &[], &["scaling_layer."], " — expected an LPIPS VGG state dict")?;
        return Ok(net);
    }
    let vgg_path = weights.vgg.as_deref().ok_or_else(|| WeightsError::Invalid {
        path: lin_path.to_path_buf(),
        message: "holds only LPIPS' linear heads; also name the torchvision VGG16 weights (`vgg`)".into(),
    })?;
    let vgg = StateDict::open(vgg_path, CheckpointEntry::Auto)?;
    let map = Lpips::lin_key_map();
    load_into(&mut net, &vgg, &map, &["lins."], &["classifier."], " — expected torchvision's vgg16 weights")?;
    load_into(&mut net, &lin, &map, &["features."], &["scaling_layer."], " — expected LPIPS' vgg.pth (lin0..lin4)")?;
    Ok(net)
}

impl PerceptualLoss {
    /// Loads the term's networks on `device` (frozen; call on the training device).
    pub fn load(kind: PerceptualKind, weights: &PerceptualWeights, device: &Device) -> Result<Self, WeightsError> {
        Self::load_sized(kind, weights, &LpipsConfig::new(), &ConvNextConfig::small(), device)
    }

    /// [`load`](Self::load) with explicit network sizes (tests use narrow networks).
    pub fn load_sized(
        kind: PerceptualKind,
        weights: &PerceptualWeights,
        lpips: &LpipsConfig,
        convnext: &ConvNextConfig,
        device: &Device,
    ) -> Result<Self, WeightsError> {
        let inner = device.clone().inner();
        Ok(match kind {
            PerceptualKind::None => Self::None,
            PerceptualKind::LpipsConvnext => {
                let lp = load_lpips(weights, lpips, &inner)?;
                let cpath = required(&weights.convnext, "`convnext` (torchvision convnext_small)")?;
                let sd = StateDict::open(cpath, CheckpointEntry::Auto)?;
                let mut cn = convnext.init(&inner);
                let map = ConvNext::key_map();
                load_into(&mut cn, &sd, &map, &[], &[], " — expected torchvision's convnext_small weights")?;
                Self::Official { lpips: Box::new(frozen(lp, device)), convnext: Box::new(frozen(cn, device)) }
            }
            PerceptualKind::Effnet => Self::Effnet(Box::new(frozen(EfficientNetLite::builtin(&inner)?, device))),
        })
    }

    /// One line for logs.
    pub fn describe(&self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Official { .. } => "LPIPS-VGG + 0.1·ConvNeXt-S logits (official)",
            Self::Effnet(_) => "EfficientNet-Lite0 logits MSE (stand-in for LPIPS + ConvNeXt)",
        }
    }

    /// The unweighted term for targets `y` and reconstructions `ŷ` in [0, 1]; `None` when off.
    pub fn forward(&self, y: Tensor<4>, y_hat: Tensor<4>) -> Option<Tensor<1>> {
        match self {
            Self::None => None,
            Self::Official { lpips, convnext } => {
                let lp = lpips.distance(y.clone().detach(), y_hat.clone()).mean();
                let target = convnext.logits(classifier_input(y.detach())).detach();
                let cn = (convnext.logits(classifier_input(y_hat)) - target).powi_scalar(2).mean();
                Some((lp + cn * 0.1) / 1.1)
            }
            Self::Effnet(net) => {
                let target = net.logits(classifier_input(y.detach())).detach();
                Some((net.logits(classifier_input(y_hat)) - target).powi_scalar(2).mean())
            }
        }
    }
}

/// The module on `device` with every parameter frozen (gradients flow through it to its input).
fn frozen<M: Module>(m: M, device: &Device) -> M {
    let m = m.no_grad();
    if device.is_autodiff() { m.train() } else { m }
}

/// `[0, 1]` images → 224×224 (antialiased bilinear) → ImageNet normalisation.
pub fn classifier_input(x: Tensor<4>) -> Tensor<4> {
    let [_, _, h, w] = x.dims();
    let x = if (h, w) == (CLASSIFIER_SIZE, CLASSIFIER_SIZE) {
        x
    } else {
        resize_square(x, CLASSIFIER_SIZE, antialiased_bilinear_weights)
    };
    normalize_channels(x, IMAGENET_MEAN, IMAGENET_STD)
}

/// Whether a path looks like it exists, for early configuration errors.
pub fn check_exists(p: &Option<PathBuf>, what: &str) -> Result<(), String> {
    match p {
        Some(path) if !Path::new(path).exists() => Err(format!("{}: no such file ({what})", path.display())),
        _ => Ok(()),
    }
}
