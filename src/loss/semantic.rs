//! The semantic loss between the teacher's features and the semantic decoder's prediction
//! (`SemLoss` of the reference; docs/TRAINING.md §2.5).

use crate::tokenizer::SemTarget;
use crate::tokenizer::masking::gather_tokens;
use burn::prelude::*;

/// Distance between predicted and teacher features.
#[derive(burn::config::Config, Debug, Copy, PartialEq, Eq)]
pub enum SemLossKind {
    /// `1 − cos(f, p)` per token, L2 normalisation with ε 1e-12 (official).
    Cosine,
    /// Mean absolute error.
    L1,
    /// Mean squared error.
    L2,
}

/// `x / max(‖x‖, 1e-12)` along the last dim (PyTorch's `F.normalize`).
fn normalize(x: Tensor<3>) -> Tensor<3> {
    x.clone() / x.powi_scalar(2).sum_dim(2).sqrt().clamp_min(1e-12)
}

/// The loss over the given tokens (all of `(B, L, D)`): a scalar `[1]`.
pub fn sem_loss(kind: SemLossKind, feature: Tensor<3>, pred: Tensor<3>) -> Tensor<1> {
    match kind {
        SemLossKind::Cosine => (normalize(feature) * normalize(pred)).sum_dim(2).neg().add_scalar(1.0).mean(),
        SemLossKind::L1 => (feature - pred).abs().mean(),
        SemLossKind::L2 => (feature - pred).powi_scalar(2).mean(),
    }
}

/// The reference's target selection: `RecAlign` compares all tokens (reconstruction of the masked
/// ones and alignment of the visible ones); `Reconstruction` only the masked ones, and gives a
/// zero loss (no gradient) when nothing is masked.
pub fn targeted_sem_loss(
    kind: SemLossKind,
    target: SemTarget,
    feature: Tensor<3>,
    pred: Tensor<3>,
    ids_masked: Option<&Tensor<2, Int>>,
) -> Tensor<1> {
    match (target, ids_masked) {
        (SemTarget::RecAlign, _) => sem_loss(kind, feature, pred),
        (SemTarget::Reconstruction, Some(ids)) if ids.dims()[1] > 0 => {
            sem_loss(kind, gather_tokens(feature, ids), gather_tokens(pred, ids))
        }
        (SemTarget::Reconstruction, _) => (pred * 0.0).sum() + sem_loss(kind, feature.clone(), feature).detach(),
    }
}
