//! Diagonal Gaussian posterior over the latent tokens (`DiagonalGaussianDistribution` of the
//! reference's `models/gaussian.py`, `channel_dim = -1`).
//!
//! Moments `(B, L, 2C)` split in halves `[mean | logvar]`; `logvar` is clamped to `[−30, 20]`
//! before `std = exp(logvar/2)` and `var = exp(logvar)`.

use burn::prelude::*;

/// Lower clamp of the log-variance.
pub const LOGVAR_MIN: f64 = -30.0;
/// Upper clamp of the log-variance.
pub const LOGVAR_MAX: f64 = 20.0;

/// A factorised Gaussian per latent channel.
#[derive(Clone, Debug)]
pub struct DiagonalGaussian {
    /// The raw, unclamped moments `(B, L, 2C)` (`.parameters` in the reference).
    pub moments: Tensor<3>,
    /// `(B, L, C)`.
    pub mean: Tensor<3>,
    /// Clamped log-variance `(B, L, C)`.
    pub logvar: Tensor<3>,
    /// `exp(logvar / 2)`.
    pub std: Tensor<3>,
    /// `exp(logvar)`.
    pub var: Tensor<3>,
}

impl DiagonalGaussian {
    /// Splits moments `(B, L, 2C)` into the distribution.
    pub fn from_moments(moments: Tensor<3>) -> Self {
        let c2 = moments.dims()[2];
        assert!(c2.is_multiple_of(2), "moments need an even channel count, got {c2}");
        let c = c2 / 2;
        let mean = moments.clone().narrow(2, 0, c);
        let logvar = moments.clone().narrow(2, c, c).clamp(LOGVAR_MIN, LOGVAR_MAX);
        let std = (logvar.clone() * 0.5).exp();
        let var = logvar.clone().exp();
        Self { moments, mean, logvar, std, var }
    }

    /// Latent channels `C`.
    pub fn channels(&self) -> usize {
        self.mean.dims()[2]
    }

    /// `mean + std · eps` with an explicit standard-normal `eps` shaped like the mean.
    pub fn sample(&self, eps: Tensor<3>) -> Tensor<3> {
        self.mean.clone() + self.std.clone() * eps
    }

    /// The mode (= mean).
    pub fn mode(&self) -> Tensor<3> {
        self.mean.clone()
    }

    /// [`sample`](Self::sample) with `eps` when given, else the [`mode`](Self::mode).
    pub fn sample_or_mode(&self, eps: Option<Tensor<3>>) -> Tensor<3> {
        eps.map_or_else(|| self.mode(), |eps| self.sample(eps))
    }

    /// KL to the standard normal, summed over every non-batch dim: `(B,)`.
    pub fn kl(&self) -> Tensor<1> {
        half_sum(self.mean.clone().powi_scalar(2) + self.var.clone() - 1.0 - self.logvar.clone())
    }

    /// Negative log-likelihood of `x`, summed over every non-batch dim: `(B,)`.
    pub fn nll(&self, x: Tensor<3>) -> Tensor<1> {
        let log_two_pi = (2.0 * std::f64::consts::PI).ln();
        half_sum((x - self.mean.clone()).powi_scalar(2) / self.var.clone() + self.logvar.clone() + log_two_pi)
    }
}

/// `0.5 · Σ t` over every non-batch dim: `(B,)`.
fn half_sum(t: Tensor<3>) -> Tensor<1> {
    let b = t.dims()[0];
    (t.reshape([b as i32, -1]).sum_dim(1) * 0.5).reshape([b])
}
