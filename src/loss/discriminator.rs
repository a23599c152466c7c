//! PatchGAN discriminator (`NLayerDiscriminator` of the reference's `utils/losses.py`, from
//! taming-transformers) and the hinge loss.
//!
//! `Conv(3→ndf, 4, s2, p1) LeakyReLU(0.2)`, then for `n < n_layers`: `Conv(4, s2, p1, no bias)
//! BatchNorm LeakyReLU` with `ndf·min(2ⁿ, 8)` channels, `Conv(4, s1, p1, no bias) BatchNorm
//! LeakyReLU`, `Conv(→1, 4, s1, p1)`. Inputs are images in [0, 1]; the reference keeps the
//! discriminator in training mode throughout (BatchNorm on batch statistics).

use burn::module::{Param, RunningState};
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{Initializer, LeakyRelu, LeakyReluConfig, PaddingConfig2d};
use burn::prelude::*;
use burn::tensor::activation::relu;

/// Configuration of a [`NLayerDiscriminator`].
#[derive(Config, Debug)]
pub struct DiscriminatorConfig {
    /// Base width (64 officially).
    #[config(default = 64)]
    pub ndf: usize,
    /// Strided layers (3 officially).
    #[config(default = 3)]
    pub n_layers: usize,
}

/// BatchNorm over `(B, C, H, W)` with an explicit mode and PyTorch's parameter names, ε = 1e-5,
/// momentum 0.1 (running variance updated with the unbiased batch variance).
#[derive(Module, Debug)]
pub struct BatchNorm2d {
    /// γ.
    pub weight: Param<Tensor<1>>,
    /// β.
    pub bias: Param<Tensor<1>>,
    /// Running mean (a buffer).
    pub running_mean: RunningState<Tensor<1>>,
    /// Running variance (a buffer).
    pub running_var: RunningState<Tensor<1>>,
}

impl BatchNorm2d {
    fn new(c: usize, device: &Device) -> Self {
        Self {
            weight: Param::from_tensor(Tensor::ones([c], device)),
            bias: Param::from_tensor(Tensor::zeros([c], device)),
            running_mean: RunningState::new(Tensor::zeros([c], device)),
            running_var: RunningState::new(Tensor::ones([c], device)),
        }
    }

    /// Normalises with batch statistics (`train`, updating the running ones) or the running ones.
    pub fn forward(&self, x: Tensor<4>, train: bool) -> Tensor<4> {
        let [b, c, h, w] = x.dims();
        let (mean, var) = if train {
            let flat = x.clone().swap_dims(0, 1).reshape([c, b * h * w]);
            let mean = flat.clone().mean_dim(1).reshape([c]);
            let var = (flat - mean.clone().unsqueeze_dim(1)).powi_scalar(2).mean_dim(1).reshape([c]);
            let n = (b * h * w) as f64;
            let (m, v) = (mean.clone().detach(), var.clone().detach());
            let unbiased = if n > 1.0 { v * (n / (n - 1.0)) } else { v };
            self.running_mean.update(self.running_mean.value_sync().to_device(&m.device()) * 0.9 + m * 0.1);
            self.running_var.update(self.running_var.value_sync().to_device(&unbiased.device()) * 0.9 + unbiased * 0.1);
            (mean, var)
        } else {
            let d = x.device();
            (self.running_mean.value_sync().to_device(&d), self.running_var.value_sync().to_device(&d))
        };
        let scale = self.weight.val() / (var + 1e-5).sqrt();
        let shift = self.bias.val() - mean * scale.clone();
        x * scale.reshape([1, c, 1, 1]) + shift.reshape([1, c, 1, 1])
    }
}

/// One entry of the reference's `nn.Sequential` (indices are part of the state-dict keys).
#[derive(Module, Debug)]
pub enum DiscLayer {
    /// Convolution.
    Conv(Conv2d),
    /// BatchNorm.
    Norm(BatchNorm2d),
    /// LeakyReLU(0.2).
    Act(LeakyRelu),
}

/// The PatchGAN discriminator: `(B, 3, H, W)` in [0, 1] → logits `(B, 1, h, w)`.
#[derive(Module, Debug)]
pub struct NLayerDiscriminator {
    /// The layers, at the reference's `main.{i}` positions.
    pub main: Vec<DiscLayer>,
}

impl DiscriminatorConfig {
    /// Builds the discriminator with zero weights (initialise or load afterwards).
    pub fn init(&self, device: &Device) -> NLayerDiscriminator {
        let conv = |i: usize, o: usize, s: usize, bias: bool| {
            DiscLayer::Conv(
                Conv2dConfig::new([i, o], [4, 4])
                    .with_stride([s, s])
                    .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
                    .with_bias(bias)
                    .with_initializer(Initializer::Zeros)
                    .init(device),
            )
        };
        let act = || DiscLayer::Act(LeakyReluConfig::new().with_negative_slope(0.2).init());
        let ndf = self.ndf;
        let mut main = vec![conv(3, ndf, 2, true), act()];
        let mut mult = 1;
        // Strided layers, then one of stride 1 (also when `n_layers` is 0).
        for n in (1..self.n_layers).chain([self.n_layers]) {
            let prev = mult;
            mult = (1 << n).min(8);
            let stride = if n < self.n_layers { 2 } else { 1 };
            main.extend([
                conv(ndf * prev, ndf * mult, stride, false),
                DiscLayer::Norm(BatchNorm2d::new(ndf * mult, device)),
                act(),
            ]);
        }
        main.push(conv(ndf * mult, 1, 1, true));
        NLayerDiscriminator { main }
    }
}

impl NLayerDiscriminator {
    /// A copy whose BatchNorm running statistics are its own (a clone shares them), for a
    /// data-parallel replica whose updates must not reach this discriminator's.
    pub fn independent_copy(&self) -> Self {
        let main = self
            .main
            .iter()
            .map(|layer| match layer {
                DiscLayer::Norm(n) => DiscLayer::Norm(BatchNorm2d {
                    weight: n.weight.clone(),
                    bias: n.bias.clone(),
                    running_mean: RunningState::new(n.running_mean.value_sync()),
                    running_var: RunningState::new(n.running_var.value_sync()),
                }),
                other => other.clone(),
            })
            .collect();
        Self { main }
    }

    /// Logits; `train` selects batch statistics in the BatchNorms (the reference's mode).
    pub fn forward(&self, x: Tensor<4>, train: bool) -> Tensor<4> {
        self.main.iter().fold(x, |h, layer| match layer {
            DiscLayer::Conv(c) => c.forward(h),
            DiscLayer::Norm(n) => n.forward(h, train),
            DiscLayer::Act(a) => a.forward(h),
        })
    }
}

/// `0.5·(mean(relu(1 − real)) + mean(relu(1 + fake)))`.
pub fn hinge_d_loss(logits_real: Tensor<4>, logits_fake: Tensor<4>) -> Tensor<1> {
    let real = relu(logits_real.neg() + 1.0).mean();
    let fake = relu(logits_fake + 1.0).mean();
    (real + fake) * 0.5
}
