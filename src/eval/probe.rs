//! The linear-probe protocol: how linearly separable the classes are in the posterior-mean
//! latents of a frozen tokenizer (docs/SAMPLING_EVAL.md §2.3).
//!
//! The pre-release reference script put a linear head on every token and averaged the logits over
//! the token grid, which (being linear) equals a linear classifier on the token-averaged latents:
//! [`ProbeFeatures::Mean`]. [`ProbeFeatures::Flat`] keeps the spatial layout (all tokens
//! concatenated), a stronger probe for small latents. The head is
//! [`LinearProbe`], softmax regression on standardised features.

use crate::data::Loader;
use crate::metrics::probe::{FeatureSet, FitOptions, LinearProbe};
use crate::tokenizer::RecTok;
use anyhow::Result;
use burn::prelude::*;

/// Which features the probe reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ProbeFeatures {
    /// Posterior-mean latents averaged over the token grid (`C` features; the reference's probe).
    Mean,
    /// All posterior-mean latents concatenated (`h·w·C` features).
    Flat,
}

/// Optimisation of the probe.
#[derive(Clone, Debug)]
pub struct ProbeConfig {
    /// Features.
    pub features: ProbeFeatures,
    /// Passes over the training features.
    pub epochs: usize,
    /// Adam learning rate.
    pub lr: f64,
    /// Mini-batch size.
    pub batch_size: usize,
    /// Seed of the mini-batch order.
    pub seed: u64,
}

impl Default for ProbeConfig {
    fn default() -> Self {
        let FitOptions { epochs, lr, batch_size, seed } = FitOptions::default();
        Self { features: ProbeFeatures::Mean, epochs, lr, batch_size, seed }
    }
}

/// Encodes every readable image of `loader` (use [`Loader::sequential`]) with the posterior mean.
///
/// # Errors
/// No readable image at all (an empty batch never reaches the model: burn-flex 0.22.1's matmul
/// crashes on one).
pub fn extract_features(
    tokenizer: &RecTok,
    loader: &Loader,
    features: ProbeFeatures,
    device: &Device,
) -> Result<FeatureSet> {
    let mut out = FeatureSet { features: Vec::new(), labels: Vec::new() };
    let bar = crate::io::step_progress(loader.steps_per_epoch(), 0);
    for item in loader.first_items(loader.dataset().len()) {
        crate::signals::check("encoding the probe's images")?;
        let (batch, take) = item?;
        bar.inc(1);
        if take == 0 {
            continue;
        }
        let z = tokenizer.posterior(batch.tensor(device)).mode(); // (B, L, C)
        let [b, l, c] = z.dims();
        let z = match features {
            ProbeFeatures::Mean => z.mean_dim(1).reshape([b, c]),
            ProbeFeatures::Flat => z.reshape([b, l * c]),
        };
        let dim = z.dims()[1];
        let v = crate::device::read_f32(z);
        out.features.extend(v.chunks(dim).map(|r| r.to_vec()));
        out.labels.extend(batch.labels);
    }
    bar.finish_and_clear();
    if out.features.is_empty() {
        anyhow::bail!("{}: none of the images could be read", loader.dataset().describe());
    }
    Ok(out)
}

/// Result of [`linear_probe`].
#[derive(Clone, Debug)]
pub struct ProbeReport {
    /// Top-1 accuracy on the training features.
    pub train_accuracy: f64,
    /// Top-1 accuracy on the held-out features.
    pub val_accuracy: f64,
    /// Feature width.
    pub dim: usize,
    /// Training and held-out images.
    pub sizes: (usize, usize),
}

/// Extracts features of `train` and `val` with `tokenizer`, fits the probe on `train` and scores
/// both.
pub fn linear_probe(
    tokenizer: &RecTok,
    train: &Loader,
    val: &Loader,
    classes: usize,
    config: &ProbeConfig,
    device: &Device,
) -> Result<ProbeReport> {
    let tr = extract_features(tokenizer, train, config.features, device)?;
    let va = extract_features(tokenizer, val, config.features, device)?;
    let ProbeConfig { epochs, lr, batch_size, seed, .. } = *config;
    let probe = LinearProbe::fit(&tr, classes, &FitOptions { epochs, lr, batch_size, seed })?;
    Ok(ProbeReport {
        train_accuracy: probe.accuracy(&tr),
        val_accuracy: probe.accuracy(&va),
        dim: probe.dim,
        sizes: (tr.features.len(), va.features.len()),
    })
}
