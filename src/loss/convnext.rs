//! torchvision's ConvNeXt (Liu et al., 2022), whose ImageNet logits the reference's perceptual
//! loss compares (`convnext_small`, IMAGENET1K_V1; docs/MODELS.md §4.2).
//!
//! Parameter paths follow torchvision's `features.{i}…` / `classifier.{i}…` through
//! [`ConvNext::key_map`], so `convnext_small-0c510722.pth` loads as is. Stem conv 4×4/4 +
//! LayerNorm2d; stages of CNBlocks (depthwise 7×7, LayerNorm, Linear 4×, GELU, Linear, layer
//! scale, residual); LayerNorm2d + conv 2×2/2 between stages; global mean, LayerNorm, Linear.
//! All LayerNorms use ε = 1e-6. Stochastic depth is inactive (the network is frozen in eval mode).

use crate::weights::KeyMap;
use burn::module::Param;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{Initializer, LayerNorm, LayerNormConfig, Linear, LinearConfig, PaddingConfig2d};
use burn::prelude::*;

const EPS: f64 = 1e-6;

/// Stage widths and depths.
#[derive(Config, Debug)]
pub struct ConvNextConfig {
    /// Channels of the four stages.
    pub dims: [usize; 4],
    /// Blocks of the four stages.
    pub depths: [usize; 4],
    /// Classifier outputs.
    #[config(default = 1000)]
    pub num_classes: usize,
}

impl ConvNextConfig {
    /// `convnext_small`: dims 96/192/384/768, depths 3/3/27/3 (50,223,688 parameters).
    pub fn small() -> Self {
        Self::new([96, 192, 384, 768], [3, 3, 27, 3])
    }
}

/// LayerNorm over the channels of `(B, C, H, W)` (torchvision's `LayerNorm2d`).
#[derive(Module, Debug)]
pub struct ChannelNorm {
    /// γ.
    pub weight: Param<Tensor<1>>,
    /// β.
    pub bias: Param<Tensor<1>>,
}

impl ChannelNorm {
    fn new(c: usize, device: &Device) -> Self {
        Self {
            weight: Param::from_tensor(Tensor::ones([c], device)),
            bias: Param::from_tensor(Tensor::zeros([c], device)),
        }
    }

    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let c = x.dims()[1];
        let centered = x.clone() - x.mean_dim(1);
        let var = centered.clone().powi_scalar(2).mean_dim(1);
        let y = centered / (var + EPS).sqrt();
        y * self.weight.val().reshape([1, c, 1, 1]) + self.bias.val().reshape([1, c, 1, 1])
    }
}

/// A stem or downsampling entry.
#[derive(Module, Debug)]
pub enum ConvNextLayer {
    /// Convolution (4×4/4 stem, 2×2/2 downsampling).
    Conv(Conv2d),
    /// LayerNorm2d.
    Norm(ChannelNorm),
}

/// The ConvNeXt block (`CNBlock`; torchvision's `block.{0,2,3,5}` are renamed by the key map).
#[derive(Module, Debug)]
pub struct CnBlock {
    /// Depthwise 7×7 convolution with bias.
    pub dwconv: Conv2d,
    /// LayerNorm over channels (channels-last).
    pub norm: LayerNorm,
    /// Linear C → 4C.
    pub pwconv1: Linear,
    /// Linear 4C → C.
    pub pwconv2: Linear,
    /// Per-channel scale `(C, 1, 1)`.
    pub layer_scale: Param<Tensor<3>>,
}

impl CnBlock {
    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let c = x.dims()[1];
        let h = self.dwconv.forward(x.clone()).permute([0, 2, 3, 1]);
        let h = self.pwconv2.forward(burn::tensor::activation::gelu(self.pwconv1.forward(self.norm.forward(h))));
        x + h.permute([0, 3, 1, 2]) * self.layer_scale.val().reshape([1, c, 1, 1])
    }
}

/// One entry of `features`.
#[derive(Module, Debug)]
pub enum ConvNextFeature {
    /// Stem or downsampling (`Sequential` of a conv and a norm).
    Layers(Vec<ConvNextLayer>),
    /// A stage of blocks.
    Blocks(Vec<CnBlock>),
}

/// ConvNeXt classifier.
#[derive(Module, Debug)]
pub struct ConvNext {
    /// Stem, stages and downsampling layers, at torchvision's indices.
    pub features: Vec<ConvNextFeature>,
    /// `classifier.0`: LayerNorm2d on the pooled features.
    pub head_norm: ChannelNorm,
    /// `classifier.2`: Linear to the classes.
    pub head: Linear,
}

impl ConvNextConfig {
    /// Builds the network with zero weights (load weights afterwards).
    pub fn init(&self, device: &Device) -> ConvNext {
        let conv = |i: usize, o: usize, k: usize, stride: usize, groups: usize, pad: usize| {
            Conv2dConfig::new([i, o], [k, k])
                .with_stride([stride, stride])
                .with_groups(groups)
                .with_padding(PaddingConfig2d::Explicit(pad, pad, pad, pad))
                .with_initializer(Initializer::Zeros)
                .init(device)
        };
        let d = self.dims;
        let mut features = vec![ConvNextFeature::Layers(vec![
            ConvNextLayer::Conv(conv(3, d[0], 4, 4, 1, 0)),
            ConvNextLayer::Norm(ChannelNorm::new(d[0], device)),
        ])];
        for stage in 0..4 {
            let c = d[stage];
            let blocks = (0..self.depths[stage])
                .map(|_| CnBlock {
                    dwconv: conv(c, c, 7, 1, c, 3),
                    norm: LayerNormConfig::new(c).with_epsilon(EPS).init(device),
                    pwconv1: LinearConfig::new(c, 4 * c).with_initializer(Initializer::Zeros).init(device),
                    pwconv2: LinearConfig::new(4 * c, c).with_initializer(Initializer::Zeros).init(device),
                    layer_scale: Param::from_tensor(Tensor::zeros([c, 1, 1], device)),
                })
                .collect();
            features.push(ConvNextFeature::Blocks(blocks));
            if stage < 3 {
                features.push(ConvNextFeature::Layers(vec![
                    ConvNextLayer::Norm(ChannelNorm::new(c, device)),
                    ConvNextLayer::Conv(conv(c, d[stage + 1], 2, 2, 1, 0)),
                ]));
            }
        }
        ConvNext {
            features,
            head_norm: ChannelNorm::new(d[3], device),
            head: LinearConfig::new(d[3], self.num_classes).with_initializer(Initializer::Zeros).init(device),
        }
    }
}

impl ConvNext {
    /// torchvision names → module paths.
    pub fn key_map() -> KeyMap {
        KeyMap::new()
            .prefix("classifier.0.", "head_norm.")
            .prefix("classifier.2.", "head.")
            .infix(".block.0.", ".dwconv.")
            .infix(".block.2.", ".norm.")
            .infix(".block.3.", ".pwconv1.")
            .infix(".block.5.", ".pwconv2.")
    }

    /// Logits `(B, classes)` of ImageNet-normalised images.
    pub fn logits(&self, x: Tensor<4>) -> Tensor<2> {
        let h = self.features.iter().fold(x, |h, f| match f {
            ConvNextFeature::Layers(layers) => layers.iter().fold(h, |h, l| match l {
                ConvNextLayer::Conv(c) => c.forward(h),
                ConvNextLayer::Norm(n) => n.forward(h),
            }),
            ConvNextFeature::Blocks(blocks) => blocks.iter().fold(h, |h, b| b.forward(h)),
        });
        let [b, c, hh, ww] = h.dims();
        let pooled = h.reshape([b, c, hh * ww]).mean_dim(2).reshape([b, c, 1, 1]);
        self.head.forward(self.head_norm.forward(pooled).reshape([b, c]))
    }
}
