//! LPIPS (Zhang et al., 2018) with the VGG16 trunk, version 0.1 linear heads, as the reference's
//! perceptual loss uses it (docs/MODELS.md §4.2).
//!
//! Inputs in [0, 1] are mapped to [-1, 1], shifted and scaled by the `scaling_layer` constants,
//! passed through torchvision's VGG16 `features` up to `relu5_3`; at each of the five taps the
//! features are unit-normalised over channels, squared differences are weighted by a 1×1 conv
//! (`lin{k}`), averaged spatially, and summed over taps.
//!
//! Parameter paths mirror torchvision (`features.{i}.weight`), so `vgg16-397923af.pth` loads as
//! is; an LPIPS state dict (`net.slice{k}.{i}.*`, `lin{k}.model.1.weight`) loads through
//! [`Lpips::key_map`].

use crate::teacher::preprocess::normalize_channels;
use crate::weights::KeyMap;
use burn::module::Param;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::pool::{MaxPool2d, MaxPool2dConfig};
use burn::nn::{Initializer, PaddingConfig2d, Relu};
use burn::prelude::*;

/// LPIPS' input shift (on [-1, 1] inputs).
const SHIFT: [f32; 3] = [-0.030, -0.088, -0.188];
/// LPIPS' input scale.
const SCALE: [f32; 3] = [0.458, 0.448, 0.450];

/// One entry of torchvision's `vgg16().features` (indices are part of the parameter names).
#[derive(Module, Debug)]
pub enum VggLayer {
    /// 3×3 convolution, padding 1.
    Conv(Conv2d),
    /// 2×2 max pooling.
    Pool(MaxPool2d),
    /// ReLU (no parameters).
    Relu(Relu),
}

/// VGG16's feature widths per block (torchvision: 64, 128, 256, 512, 512); other widths build
/// narrower networks for tests.
#[derive(Config, Debug)]
pub struct LpipsConfig {
    /// Output channels of the five blocks.
    #[config(default = "[64, 128, 256, 512, 512]")]
    pub widths: [usize; 5],
}

/// One linear head: a bias-free 1×1 convolution to one channel, `(1, C, 1, 1)`.
#[derive(Module, Debug)]
pub struct LinHead {
    /// `(1, C, 1, 1)`.
    pub weight: Param<Tensor<4>>,
}

/// LPIPS-VGG.
#[derive(Module, Debug)]
pub struct Lpips {
    /// VGG16 `features[0..=29]`.
    pub features: Vec<VggLayer>,
    /// The five linear heads.
    pub lins: Vec<LinHead>,
}

/// Convs per block in VGG16.
const DEPTHS: [usize; 5] = [2, 2, 3, 3, 3];

impl LpipsConfig {
    /// Builds the network with zero weights (load weights afterwards).
    pub fn init(&self, device: &Device) -> Lpips {
        let mut features = Vec::new();
        let mut cin = 3;
        for (block, (&width, &depth)) in self.widths.iter().zip(&DEPTHS).enumerate() {
            if block > 0 {
                features.push(VggLayer::Pool(MaxPool2dConfig::new([2, 2]).with_strides([2, 2]).init()));
            }
            for _ in 0..depth {
                features.push(VggLayer::Conv(
                    Conv2dConfig::new([cin, width], [3, 3])
                        .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
                        .with_initializer(Initializer::Zeros)
                        .init(device),
                ));
                features.push(VggLayer::Relu(Relu::new()));
                cin = width;
            }
        }
        let lins = self
            .widths
            .iter()
            .map(|&c| LinHead { weight: Param::from_tensor(Tensor::zeros([1, c, 1, 1], device)) })
            .collect();
        Lpips { features, lins }
    }
}

/// Indices of the ReLUs whose outputs LPIPS compares (relu1_2 … relu5_3).
const TAPS: [usize; 5] = [3, 8, 15, 22, 29];

impl Lpips {
    /// Renames from the LPIPS package's own state dict: `net.slice{k}.{i}.` → `features.{i}.`,
    /// `lin{k}.model.1.` → `lins.{k}.`.
    pub fn key_map() -> KeyMap {
        let slices = [(1, 0..4), (2, 4..9), (3, 9..16), (4, 16..23), (5, 23..30)];
        let layers = slices.into_iter().flat_map(|(k, range)| range.map(move |i| (k, i)));
        layers.fold(Self::lin_key_map(), |m, (k, i)| m.prefix(format!("net.slice{k}.{i}."), format!("features.{i}.")))
    }

    /// Renames for torchvision's VGG16 file (`features.{i}.` as is) plus LPIPS' heads
    /// (`lin{k}.model.1.` → `lins.{k}.`).
    pub fn lin_key_map() -> KeyMap {
        (0..5).fold(KeyMap::new(), |map, k| map.prefix(format!("lin{k}.model.1."), format!("lins.{k}.")))
    }

    /// Per-image distance `(B,)` between images in [0, 1].
    pub fn distance(&self, a: Tensor<4>, b: Tensor<4>) -> Tensor<1> {
        let n = a.dims()[0];
        let both = Tensor::cat(vec![a, b], 0);
        let mut h = normalize_channels(both * 2.0 - 1.0, SHIFT, SCALE);
        let norm = |f: Tensor<4>| f.clone() / (f.powi_scalar(2).sum_dim(1).sqrt() + 1e-10);
        let mut per_tap = Vec::with_capacity(TAPS.len());
        for (i, layer) in self.features.iter().enumerate().take(TAPS[TAPS.len() - 1] + 1) {
            h = match layer {
                VggLayer::Conv(c) => c.forward(h),
                VggLayer::Pool(p) => p.forward(h),
                VggLayer::Relu(_) => burn::tensor::activation::relu(h),
            };
            if let Some(tap) = TAPS.iter().position(|&t| t == i) {
                let [_, c, hh, ww] = h.dims();
                let d = (norm(h.clone().narrow(0, 0, n)) - norm(h.clone().narrow(0, n, n))).powi_scalar(2);
                let w = self.lins[tap].weight.val().reshape([1, c, 1, 1]);
                per_tap.push((d * w).sum_dim(1).reshape([n, hh * ww]).mean_dim(1).reshape([n]));
            }
        }
        per_tap.into_iter().reduce(|total, t| total + t).expect("five taps")
    }
}
