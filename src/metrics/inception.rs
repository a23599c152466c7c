//! The TF-compatible InceptionV3 of FID and the Inception Score (Szegedy et al., "Rethinking the
//! Inception Architecture", 2016; TensorFlow's 2015-12-05 graph as converted by torch-fidelity and
//! pytorch-fid), the feature extractor the RecTok reference evaluates with (vendored
//! torch-fidelity 0.4.0-beta, docs/SAMPLING_EVAL.md §3).
//!
//! Field names mirror torch-fidelity's `FeatureExtractorInceptionV3` state dict
//! (`Mixed_6b.branch7x7_2.conv.weight`, `Mixed_6b.branch7x7_2.bn.running_var`, `fc.weight`, …),
//! so `weights-inception-2015-12-05-6726825d.pth` loads without remapping.
//!
//! Input: 8-bit RGB of any size → TensorFlow-1.x bilinear resize to 299² (no half-pixel offset)
//! → `(x − 128)/128`. Output: the 2048-d "pool3" features (FID, KID) and `pool3 · fc.weightᵀ`
//! without the bias (the 1008 "unbiased" logits of the Inception Score). The TF patches are kept:
//! the average-pool branches of Mixed_5*/6b–e/7b exclude padding from their count, Mixed_7c's pool
//! branch is a *max* pool.
#![allow(non_snake_case)]

use crate::teacher::efficientnet::FrozenBatchNorm;
use burn::module::Param;
use burn::nn::{Initializer, Linear, LinearConfig};
use burn::prelude::*;
use burn::tensor::activation::relu;
use burn::tensor::module::{avg_pool2d, conv2d, max_pool2d};
use burn::tensor::ops::{AvgPoolOptions, ConvOptions, MaxPoolOptions};
use image::RgbImage;

/// The network's input side.
pub const INCEPTION_SIZE: usize = 299;
/// Pool3 feature width.
pub const POOL_DIM: usize = 2048;
/// Classes of the 2015 graph's classifier (1000 ImageNet classes plus 8 unused).
pub const LOGIT_DIM: usize = 1008;

/// TensorFlow 1.x `resize_bilinear` (align_corners = false, no half-pixel centres) of an 8-bit
/// image to `(out_h, out_w)`, channel-major f32 in [0, 255]. Mirrors torch-fidelity's
/// `interpolate_bilinear_2d_like_tensorflow1x` step by step in f32: source coordinate
/// `o·(in/out)`, `lo = ⌊src⌋`, `hi = min(lo + 1, in − 1)`, rows interpolated along x first.
pub fn resize_tf1_bilinear(img: &RgbImage, out_h: usize, out_w: usize) -> Vec<f32> {
    let (in_w, in_h) = (img.width() as usize, img.height() as usize);
    let grid = |out: usize, inp: usize| -> Vec<(usize, usize, f32)> {
        let scale = (inp as f64 / out as f64) as f32;
        (0..out)
            .map(|o| {
                let src = o as f32 * scale;
                let lo = src as usize;
                (lo, (lo + 1).min(inp - 1), src - lo as f32)
            })
            .collect()
    };
    let (gx, gy) = (grid(out_w, in_w), grid(out_h, in_h));
    let raw = img.as_raw();
    let px = |y: usize, x: usize, c: usize| raw[(y * in_w + x) * 3 + c] as f32;
    let mut out = vec![0f32; 3 * out_h * out_w];
    for c in 0..3 {
        for (oy, &(y0, y1, dy)) in gy.iter().enumerate() {
            for (ox, &(x0, x1, dx)) in gx.iter().enumerate() {
                let (a, b) = (px(y0, x0, c), px(y0, x1, c));
                let top = a + (b - a) * dx;
                let (a, b) = (px(y1, x0, c), px(y1, x1, c));
                let bottom = a + (b - a) * dx;
                out[(c * out_h + oy) * out_w + ox] = top + (bottom - top) * dy;
            }
        }
    }
    out
}

/// A bias-free convolution (its stride and padding are architecture, not weights).
#[derive(Module, Debug)]
pub struct Conv {
    /// `(out, in, kh, kw)`.
    pub weight: Param<Tensor<4>>,
    /// Stride (both axes).
    pub stride: usize,
    /// Zero padding `(rows, columns)`.
    pub padding: (usize, usize),
}

/// `conv (no bias) → BatchNorm(ε = 1e-3, running statistics) → ReLU`.
#[derive(Module, Debug)]
pub struct BasicConv2d {
    /// The convolution.
    pub conv: Conv,
    /// Its BatchNorm.
    pub bn: FrozenBatchNorm,
}

impl BasicConv2d {
    fn new(
        cin: usize,
        cout: usize,
        kernel: (usize, usize),
        stride: usize,
        padding: (usize, usize),
        device: &Device,
    ) -> Self {
        Self {
            conv: Conv {
                weight: Param::from_tensor(Tensor::zeros([cout, cin, kernel.0, kernel.1], device)),
                stride,
                padding,
            },
            bn: FrozenBatchNorm::new(cout, device),
        }
    }

    fn square(cin: usize, cout: usize, k: usize, stride: usize, pad: usize, device: &Device) -> Self {
        Self::new(cin, cout, (k, k), stride, (pad, pad), device)
    }

    /// The block, with the BatchNorm folded into the convolution's weights and bias.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let (scale, shift) = self.bn.scale_shift();
        let c = scale.dims()[0];
        let weight = self.conv.weight.val() * scale.reshape([c, 1, 1, 1]);
        let (p, s) = (self.conv.padding, self.conv.stride);
        relu(conv2d(x, weight, Some(shift), ConvOptions::new([s, s], [p.0, p.1], [1, 1], 1)))
    }
}

/// 3×3 stride-1 average pool that, like TensorFlow, excludes the zero padding from the count.
fn avg_pool_3x3_tf(x: Tensor<4>) -> Tensor<4> {
    avg_pool2d(x, AvgPoolOptions::new([3, 3]).with_stride([1, 1]).with_padding([1, 1]).with_count_include_pad(false))
}

fn max_pool_3x3(x: Tensor<4>, stride: usize, pad: usize) -> Tensor<4> {
    max_pool2d(x, MaxPoolOptions::new([3, 3]).with_stride([stride, stride]).with_padding([pad, pad]))
}

/// Mixed_5b/5c/5d (35×35).
#[derive(Module, Debug)]
pub struct InceptionA {
    pub branch1x1: BasicConv2d,
    pub branch5x5_1: BasicConv2d,
    pub branch5x5_2: BasicConv2d,
    pub branch3x3dbl_1: BasicConv2d,
    pub branch3x3dbl_2: BasicConv2d,
    pub branch3x3dbl_3: BasicConv2d,
    pub branch_pool: BasicConv2d,
}

impl InceptionA {
    fn new(cin: usize, pool_features: usize, d: &Device) -> Self {
        Self {
            branch1x1: BasicConv2d::square(cin, 64, 1, 1, 0, d),
            branch5x5_1: BasicConv2d::square(cin, 48, 1, 1, 0, d),
            branch5x5_2: BasicConv2d::square(48, 64, 5, 1, 2, d),
            branch3x3dbl_1: BasicConv2d::square(cin, 64, 1, 1, 0, d),
            branch3x3dbl_2: BasicConv2d::square(64, 96, 3, 1, 1, d),
            branch3x3dbl_3: BasicConv2d::square(96, 96, 3, 1, 1, d),
            branch_pool: BasicConv2d::square(cin, pool_features, 1, 1, 0, d),
        }
    }

    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let b1 = self.branch1x1.forward(x.clone());
        let b5 = self.branch5x5_2.forward(self.branch5x5_1.forward(x.clone()));
        let b3 = self.branch3x3dbl_3.forward(self.branch3x3dbl_2.forward(self.branch3x3dbl_1.forward(x.clone())));
        let bp = self.branch_pool.forward(avg_pool_3x3_tf(x));
        Tensor::cat(vec![b1, b5, b3, bp], 1)
    }
}

/// Mixed_6a (35 → 17).
#[derive(Module, Debug)]
pub struct InceptionB {
    pub branch3x3: BasicConv2d,
    pub branch3x3dbl_1: BasicConv2d,
    pub branch3x3dbl_2: BasicConv2d,
    pub branch3x3dbl_3: BasicConv2d,
}

impl InceptionB {
    fn new(cin: usize, d: &Device) -> Self {
        Self {
            branch3x3: BasicConv2d::square(cin, 384, 3, 2, 0, d),
            branch3x3dbl_1: BasicConv2d::square(cin, 64, 1, 1, 0, d),
            branch3x3dbl_2: BasicConv2d::square(64, 96, 3, 1, 1, d),
            branch3x3dbl_3: BasicConv2d::square(96, 96, 3, 2, 0, d),
        }
    }

    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let b3 = self.branch3x3.forward(x.clone());
        let bd = self.branch3x3dbl_3.forward(self.branch3x3dbl_2.forward(self.branch3x3dbl_1.forward(x.clone())));
        Tensor::cat(vec![b3, bd, max_pool_3x3(x, 2, 0)], 1)
    }
}

/// Mixed_6b..6e (17×17, factorised 7×7).
#[derive(Module, Debug)]
pub struct InceptionC {
    pub branch1x1: BasicConv2d,
    pub branch7x7_1: BasicConv2d,
    pub branch7x7_2: BasicConv2d,
    pub branch7x7_3: BasicConv2d,
    pub branch7x7dbl_1: BasicConv2d,
    pub branch7x7dbl_2: BasicConv2d,
    pub branch7x7dbl_3: BasicConv2d,
    pub branch7x7dbl_4: BasicConv2d,
    pub branch7x7dbl_5: BasicConv2d,
    pub branch_pool: BasicConv2d,
}

impl InceptionC {
    fn new(cin: usize, c7: usize, d: &Device) -> Self {
        let row = |i, o| BasicConv2d::new(i, o, (1, 7), 1, (0, 3), d);
        let col = |i, o| BasicConv2d::new(i, o, (7, 1), 1, (3, 0), d);
        Self {
            branch1x1: BasicConv2d::square(cin, 192, 1, 1, 0, d),
            branch7x7_1: BasicConv2d::square(cin, c7, 1, 1, 0, d),
            branch7x7_2: row(c7, c7),
            branch7x7_3: col(c7, 192),
            branch7x7dbl_1: BasicConv2d::square(cin, c7, 1, 1, 0, d),
            branch7x7dbl_2: col(c7, c7),
            branch7x7dbl_3: row(c7, c7),
            branch7x7dbl_4: col(c7, c7),
            branch7x7dbl_5: row(c7, 192),
            branch_pool: BasicConv2d::square(cin, 192, 1, 1, 0, d),
        }
    }

    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let b1 = self.branch1x1.forward(x.clone());
        let b7 = self.branch7x7_3.forward(self.branch7x7_2.forward(self.branch7x7_1.forward(x.clone())));
        let mut bd = self.branch7x7dbl_1.forward(x.clone());
        for conv in [&self.branch7x7dbl_2, &self.branch7x7dbl_3, &self.branch7x7dbl_4, &self.branch7x7dbl_5] {
            bd = conv.forward(bd);
        }
        let bp = self.branch_pool.forward(avg_pool_3x3_tf(x));
        Tensor::cat(vec![b1, b7, bd, bp], 1)
    }
}

/// Mixed_7a (17 → 8).
#[derive(Module, Debug)]
pub struct InceptionD {
    pub branch3x3_1: BasicConv2d,
    pub branch3x3_2: BasicConv2d,
    pub branch7x7x3_1: BasicConv2d,
    pub branch7x7x3_2: BasicConv2d,
    pub branch7x7x3_3: BasicConv2d,
    pub branch7x7x3_4: BasicConv2d,
}

impl InceptionD {
    fn new(cin: usize, d: &Device) -> Self {
        Self {
            branch3x3_1: BasicConv2d::square(cin, 192, 1, 1, 0, d),
            branch3x3_2: BasicConv2d::square(192, 320, 3, 2, 0, d),
            branch7x7x3_1: BasicConv2d::square(cin, 192, 1, 1, 0, d),
            branch7x7x3_2: BasicConv2d::new(192, 192, (1, 7), 1, (0, 3), d),
            branch7x7x3_3: BasicConv2d::new(192, 192, (7, 1), 1, (3, 0), d),
            branch7x7x3_4: BasicConv2d::square(192, 192, 3, 2, 0, d),
        }
    }

    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let b3 = self.branch3x3_2.forward(self.branch3x3_1.forward(x.clone()));
        let mut b7 = self.branch7x7x3_1.forward(x.clone());
        for conv in [&self.branch7x7x3_2, &self.branch7x7x3_3, &self.branch7x7x3_4] {
            b7 = conv.forward(b7);
        }
        Tensor::cat(vec![b3, b7, max_pool_3x3(x, 2, 0)], 1)
    }
}

/// Mixed_7b (`InceptionE_1`, TF average pool) and Mixed_7c (`InceptionE_2`, max pool).
#[derive(Module, Debug)]
pub struct InceptionE {
    pub branch1x1: BasicConv2d,
    pub branch3x3_1: BasicConv2d,
    pub branch3x3_2a: BasicConv2d,
    pub branch3x3_2b: BasicConv2d,
    pub branch3x3dbl_1: BasicConv2d,
    pub branch3x3dbl_2: BasicConv2d,
    pub branch3x3dbl_3a: BasicConv2d,
    pub branch3x3dbl_3b: BasicConv2d,
    pub branch_pool: BasicConv2d,
    /// Mixed_7c's TF quirk: a 3×3 *max* pool in the pool branch.
    pub max_pool: bool,
}

impl InceptionE {
    fn new(cin: usize, max_pool: bool, d: &Device) -> Self {
        let row = |i, o| BasicConv2d::new(i, o, (1, 3), 1, (0, 1), d);
        let col = |i, o| BasicConv2d::new(i, o, (3, 1), 1, (1, 0), d);
        Self {
            branch1x1: BasicConv2d::square(cin, 320, 1, 1, 0, d),
            branch3x3_1: BasicConv2d::square(cin, 384, 1, 1, 0, d),
            branch3x3_2a: row(384, 384),
            branch3x3_2b: col(384, 384),
            branch3x3dbl_1: BasicConv2d::square(cin, 448, 1, 1, 0, d),
            branch3x3dbl_2: BasicConv2d::square(448, 384, 3, 1, 1, d),
            branch3x3dbl_3a: row(384, 384),
            branch3x3dbl_3b: col(384, 384),
            branch_pool: BasicConv2d::square(cin, 192, 1, 1, 0, d),
            max_pool,
        }
    }

    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let b1 = self.branch1x1.forward(x.clone());
        let b3 = self.branch3x3_1.forward(x.clone());
        let b3 = Tensor::cat(vec![self.branch3x3_2a.forward(b3.clone()), self.branch3x3_2b.forward(b3)], 1);
        let bd = self.branch3x3dbl_2.forward(self.branch3x3dbl_1.forward(x.clone()));
        let bd = Tensor::cat(vec![self.branch3x3dbl_3a.forward(bd.clone()), self.branch3x3dbl_3b.forward(bd)], 1);
        let pooled = if self.max_pool { max_pool_3x3(x, 1, 1) } else { avg_pool_3x3_tf(x) };
        Tensor::cat(vec![b1, b3, bd, self.branch_pool.forward(pooled)], 1)
    }
}

/// The whole network (23.85 M parameters).
#[derive(Module, Debug)]
pub struct InceptionV3 {
    pub Conv2d_1a_3x3: BasicConv2d,
    pub Conv2d_2a_3x3: BasicConv2d,
    pub Conv2d_2b_3x3: BasicConv2d,
    pub Conv2d_3b_1x1: BasicConv2d,
    pub Conv2d_4a_3x3: BasicConv2d,
    pub Mixed_5b: InceptionA,
    pub Mixed_5c: InceptionA,
    pub Mixed_5d: InceptionA,
    pub Mixed_6a: InceptionB,
    pub Mixed_6b: InceptionC,
    pub Mixed_6c: InceptionC,
    pub Mixed_6d: InceptionC,
    pub Mixed_6e: InceptionC,
    pub Mixed_7a: InceptionD,
    pub Mixed_7b: InceptionE,
    pub Mixed_7c: InceptionE,
    /// 2048 → 1008 classifier (only its weight is used: the IS logits are unbiased).
    pub fc: Linear,
}

impl InceptionV3 {
    /// The architecture with zero weights (load a state dict into it).
    pub fn new(d: &Device) -> Self {
        Self {
            Conv2d_1a_3x3: BasicConv2d::square(3, 32, 3, 2, 0, d),
            Conv2d_2a_3x3: BasicConv2d::square(32, 32, 3, 1, 0, d),
            Conv2d_2b_3x3: BasicConv2d::square(32, 64, 3, 1, 1, d),
            Conv2d_3b_1x1: BasicConv2d::square(64, 80, 1, 1, 0, d),
            Conv2d_4a_3x3: BasicConv2d::square(80, 192, 3, 1, 0, d),
            Mixed_5b: InceptionA::new(192, 32, d),
            Mixed_5c: InceptionA::new(256, 64, d),
            Mixed_5d: InceptionA::new(288, 64, d),
            Mixed_6a: InceptionB::new(288, d),
            Mixed_6b: InceptionC::new(768, 128, d),
            Mixed_6c: InceptionC::new(768, 160, d),
            Mixed_6d: InceptionC::new(768, 160, d),
            Mixed_6e: InceptionC::new(768, 192, d),
            Mixed_7a: InceptionD::new(768, d),
            Mixed_7b: InceptionE::new(1280, false, d),
            Mixed_7c: InceptionE::new(2048, true, d),
            fc: LinearConfig::new(POOL_DIM, LOGIT_DIM).with_initializer(Initializer::Zeros).init(d),
        }
    }

    /// The network input for a batch of 8-bit images of any sizes: TF-1.x bilinear resize to
    /// 299², then `(x − 128)/128`.
    pub fn input(images: &[RgbImage], device: &Device) -> Tensor<4> {
        let s = INCEPTION_SIZE;
        let mut v = Vec::with_capacity(images.len() * 3 * s * s);
        for img in images {
            v.extend(resize_tf1_bilinear(img, s, s).into_iter().map(|p| (p - 128.0) / 128.0));
        }
        Tensor::from_data(TensorData::new(v, [images.len(), 3, s, s]), device)
    }

    /// Pool3 features `(B, 2048)` of a prepared input `(B, 3, 299, 299)`.
    pub fn pool3(&self, x: Tensor<4>) -> Tensor<2> {
        let mut x = self.Conv2d_1a_3x3.forward(x);
        x = self.Conv2d_2a_3x3.forward(x);
        x = max_pool_3x3(self.Conv2d_2b_3x3.forward(x), 2, 0);
        x = self.Conv2d_3b_1x1.forward(x);
        x = max_pool_3x3(self.Conv2d_4a_3x3.forward(x), 2, 0);
        x = self.Mixed_5d.forward(self.Mixed_5c.forward(self.Mixed_5b.forward(x)));
        x = self.Mixed_6a.forward(x);
        for block in [&self.Mixed_6b, &self.Mixed_6c, &self.Mixed_6d, &self.Mixed_6e] {
            x = block.forward(x);
        }
        x = self.Mixed_7c.forward(self.Mixed_7b.forward(self.Mixed_7a.forward(x)));
        let [b, c, h, w] = x.dims();
        x.reshape([b, c, h * w]).mean_dim(2).reshape([b, c])
    }

    /// The Inception Score's logits: `pool3 · fc.weightᵀ`, no bias.
    pub fn unbiased_logits(&self, pool3: Tensor<2>) -> Tensor<2> {
        // burn's Linear stores its weight as (in, out).
        pool3.matmul(self.fc.weight.val())
    }
}
