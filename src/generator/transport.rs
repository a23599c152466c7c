//! Rectified-flow transport of the DiT (the reference's `transport/`, linear path, velocity
//! prediction; docs/TRAINING.md §5, docs/SAMPLING_EVAL.md §1).
//!
//! **Time convention: t = 1 is data, t = 0 is noise**: `x_t = t·x1 + (1 − t)·x0`, target velocity
//! `x1 − x0`. The time shift and the sampling grid are in [`crate::rectified_flow`], beside the
//! tokenizer's opposite convention.

use super::dit_dh::DitDh;
use burn::prelude::*;

use crate::rectified_flow::train_time;

/// The linear path: `x_t = t·x1 + (1 − t)·x0` and its velocity `x1 − x0`.
pub fn plan(t: &Tensor<1>, x0: Tensor<4>, x1: Tensor<4>) -> (Tensor<4>, Tensor<4>) {
    let te = t.clone().unsqueeze_dims::<4>(&[1, 2, 3]); // (B, 1, 1, 1), broadcast against (B, C, h, w)
    let xt = te.clone() * x1.clone() + (te.neg() + 1.0) * x0.clone();
    (xt, x1 - x0)
}

/// The explicit random draws of one training loss, in the reference's order.
#[derive(Clone, Debug)]
pub struct TrainingDraws {
    /// Noise `x0 ~ N(0, I)` shaped like the data.
    pub x0: Tensor<4>,
    /// Uniform `u` per sample before the time shift.
    pub t_u: Tensor<1>,
    /// Uniform draws of the label dropout (training mode); `None` evaluates the network in eval
    /// mode (no dropout).
    pub label_drop_u: Option<Tensor<1>>,
}

/// Result of [`training_losses`].
#[derive(Clone, Debug)]
pub struct TrainingLosses {
    /// Shifted time per sample.
    pub t: Tensor<1>,
    /// Network output at `x_t`.
    pub pred: Tensor<4>,
    /// `mean_{c,h,w}((pred − (x1 − x0))²)` per sample `(B,)`.
    pub loss_per_sample: Tensor<1>,
    /// Mean over the batch (the training objective).
    pub loss: Tensor<1>,
}

/// The velocity-matching loss of `net` on data `x1` with labels `y` (labels dropped to the null
/// class with the given draws in training mode).
pub fn training_losses(net: &DitDh, x1: Tensor<4>, y: Tensor<1, Int>, draws: &TrainingDraws) -> TrainingLosses {
    let t = train_time(draws.t_u.clone(), net.config.time_shift());
    let (xt, ut) = plan(&t, draws.x0.clone(), x1);
    let y = match &draws.label_drop_u {
        Some(u) => net.drop_labels(y, u),
        None => y,
    };
    let pred = net.forward(xt, t.clone(), y);
    let b = pred.dims()[0];
    let loss_per_sample = (pred.clone() - ut).powi_scalar(2).reshape([b as i32, -1]).mean_dim(1).reshape([b]);
    let loss = loss_per_sample.clone().mean();
    TrainingLosses { t, pred, loss_per_sample, loss }
}
