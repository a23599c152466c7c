//! The tokenizer's training losses (`ReconstructionLoss` of the reference's `utils/losses.py`;
//! docs/TRAINING.md §2.2): pixel reconstruction, perceptual, KL, semantic, and the PatchGAN
//! generator term, plus the discriminator's hinge loss.
//!
//! ```text
//! total = rec / exp(logvar) + w_p·perceptual + w_kl·Σ KL / B + w_sem·sem + w_gan·[epoch ≥ start]·(−mean D(ŷ))
//! ```
//!
//! on `y = x/2 + 1/2`, `ŷ = x̂/2 + 1/2` (ŷ not clamped). The GAN weight the reference really
//! applies is 0.1: its script passes 0.5, but the argument never reaches the loss module.

pub mod convnext;
pub mod discriminator;
pub mod lpips;
pub mod perceptual;
pub mod semantic;

pub use discriminator::{DiscriminatorConfig, NLayerDiscriminator, hinge_d_loss};
pub use perceptual::{PerceptualKind, PerceptualLoss, PerceptualWeights};
pub use semantic::{SemLossKind, sem_loss, targeted_sem_loss};

use crate::tokenizer::DiagonalGaussian;
use burn::prelude::*;

/// Pixel loss of the reconstruction.
#[derive(Config, Debug, Copy, PartialEq, Eq)]
pub enum PixelLossKind {
    /// Mean absolute error.
    L1,
    /// Mean squared error (official).
    L2,
    /// `(L2 + L1) / 2`.
    L2L1,
}

/// Weights and kinds of the loss terms.
#[derive(Config, Debug)]
pub struct LossConfig {
    /// Pixel loss.
    #[config(default = "PixelLossKind::L2")]
    pub reconstruction: PixelLossKind,
    /// Pixel loss weight.
    #[config(default = 1.0)]
    pub reconstruction_weight: f64,
    /// Perceptual loss weight (the term itself is configured separately).
    #[config(default = 1.0)]
    pub perceptual_weight: f64,
    /// KL weight.
    #[config(default = 1e-6)]
    pub kl_weight: f64,
    /// Semantic loss kind.
    #[config(default = "SemLossKind::Cosine")]
    pub sem_loss: SemLossKind,
    /// Semantic loss weight.
    #[config(default = 1.0)]
    pub sem_weight: f64,
    /// Generator GAN weight: 0.1, the value the reference applies (see the module docs).
    #[config(default = 0.1)]
    pub gan_weight: f64,
    /// Epoch from which the GAN terms are on (100 in stage 1, 0 in stage 2).
    #[config(default = 100)]
    pub gan_start_epoch: usize,
    /// The reference's fixed `logvar` (the pixel loss is divided by `exp(logvar)`).
    #[config(default = 0.0)]
    pub logvar: f64,
}

/// The generator-side loss terms (scalars `[1]`), weighted as the reference reports them.
#[derive(Clone, Debug)]
pub struct LossTerms {
    /// The objective.
    pub total: Tensor<1>,
    /// Pixel loss divided by `exp(logvar)`.
    pub reconstruction: Tensor<1>,
    /// Weighted perceptual loss.
    pub perceptual: Tensor<1>,
    /// Weighted KL (`w_kl · Σ KL / B`).
    pub kl: Tensor<1>,
    /// Weighted semantic loss.
    pub sem: Tensor<1>,
    /// Unweighted generator GAN loss `−mean D(ŷ)` (0 when off).
    pub gan: Tensor<1>,
    /// Weighted GAN term as added to the total.
    pub weighted_gan: Tensor<1>,
}

impl LossTerms {
    /// `−10·log10(reconstruction)` (the reference's logged PSNR).
    pub fn psnr(&self) -> Tensor<1> {
        self.reconstruction.clone().log().mul_scalar(-10.0 / std::f64::consts::LN_10)
    }
}

/// Inputs of [`generator_loss`].
pub struct GeneratorInputs<'a> {
    /// Targets `y` in [0, 1].
    pub targets: Tensor<4>,
    /// Reconstructions `ŷ` (not clamped).
    pub reconstructions: Tensor<4>,
    /// The posterior of the visible tokens (KL).
    pub posterior: Option<&'a DiagonalGaussian>,
    /// Semantic loss, already reduced over tokens and teachers (unweighted).
    pub sem: Option<Tensor<1>>,
    /// Perceptual loss (unweighted).
    pub perceptual: Option<Tensor<1>>,
    /// The discriminator, when the GAN term is on.
    pub discriminator: Option<&'a NLayerDiscriminator>,
}

/// The generator loss.
pub fn generator_loss(cfg: &LossConfig, inputs: GeneratorInputs<'_>) -> LossTerms {
    let device = inputs.targets.device();
    let zero = || Tensor::<1>::zeros([1], &device);
    let diff = inputs.targets.clone() - inputs.reconstructions.clone();
    let pixel = match cfg.reconstruction {
        PixelLossKind::L2 => diff.powi_scalar(2).mean(),
        PixelLossKind::L1 => diff.abs().mean(),
        PixelLossKind::L2L1 => (diff.clone().powi_scalar(2).mean() + diff.abs().mean()) * 0.5,
    };
    let reconstruction = pixel * cfg.reconstruction_weight / cfg.logvar.exp();
    let perceptual = inputs.perceptual.map(|p| p * cfg.perceptual_weight).unwrap_or_else(zero);
    let kl = match inputs.posterior {
        Some(p) => {
            let k = p.kl();
            let b = k.dims()[0] as f64;
            k.sum() * (cfg.kl_weight / b)
        }
        None => zero(),
    };
    let sem = inputs.sem.map(|s| s * cfg.sem_weight).unwrap_or_else(zero);
    let (gan, weighted_gan) = match inputs.discriminator {
        Some(d) if cfg.gan_weight > 0.0 => {
            let g = d.forward(inputs.reconstructions, true).mean().neg();
            (g.clone(), g * cfg.gan_weight)
        }
        _ => (zero(), zero()),
    };
    let total = reconstruction.clone() + perceptual.clone() + kl.clone() + sem.clone() + weighted_gan.clone();
    LossTerms { total, reconstruction, perceptual, kl, sem, gan, weighted_gan }
}

/// The discriminator step's loss on detached targets and reconstructions (separate forward
/// passes, hence separate batch statistics, as the reference).
pub struct DiscriminatorTerms {
    /// Hinge loss.
    pub loss: Tensor<1>,
    /// Mean logit on real images.
    pub logits_real_mean: Tensor<1>,
    /// Mean logit on reconstructions.
    pub logits_fake_mean: Tensor<1>,
}

/// Hinge loss of the discriminator on `targets` (real) and `reconstructions` (fake), both detached.
pub fn discriminator_loss(
    d: &NLayerDiscriminator,
    targets: Tensor<4>,
    reconstructions: Tensor<4>,
) -> DiscriminatorTerms {
    let real = d.forward(targets.detach(), true);
    let fake = d.forward(reconstructions.detach(), true);
    DiscriminatorTerms {
        logits_real_mean: real.clone().detach().mean(),
        logits_fake_mean: fake.clone().detach().mean(),
        loss: hinge_d_loss(real, fake),
    }
}
