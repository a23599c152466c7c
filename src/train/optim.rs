//! AdamW with PyTorch's semantics, parameter groups by name, global-norm gradient clipping and the
//! reference's learning-rate schedules (docs/TRAINING.md §2.1, §2.8, §5.3).
//!
//! Written here rather than taken from burn-optim so that weight decay can be chosen per parameter
//! (the reference's "no-decay" group), and so that the whole state is a flat `path → tensor` map
//! that checkpoints store and `--resume` restores exactly.

use super::optim_kernels::{AdamWScalars, adamw_fused};
use super::params;
use crate::nn::kernels::is_fast;
use burn::module::Module;
use burn::prelude::*;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// AdamW hyper-parameters.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AdamWConfig {
    /// β₁.
    pub beta1: f64,
    /// β₂.
    pub beta2: f64,
    /// ε (added after the square root).
    pub eps: f64,
    /// Decoupled weight decay of the decay group.
    pub weight_decay: f64,
}

/// AdamW state: first and second moments and step count per parameter path.
#[derive(Clone, Debug)]
pub struct AdamW {
    /// Hyper-parameters.
    pub config: AdamWConfig,
    /// `exp_avg` per path.
    pub exp_avg: BTreeMap<String, Tensor<1>>,
    /// `exp_avg_sq` per path.
    pub exp_avg_sq: BTreeMap<String, Tensor<1>>,
    /// Steps taken per path.
    pub steps: BTreeMap<String, u64>,
}

impl AdamW {
    /// Fresh state.
    pub fn new(config: AdamWConfig) -> Self {
        Self { config, exp_avg: BTreeMap::new(), exp_avg_sq: BTreeMap::new(), steps: BTreeMap::new() }
    }

    /// One step on the parameters that have a gradient in `grads` (flattened, by path), with
    /// weight decay where `decay(path, shape)` says so. PyTorch's `AdamW`:
    /// `p ← p·(1 − lr·wd)`, `m ← β₁m + (1−β₁)g`, `v ← β₂v + (1−β₂)g²`,
    /// `p ← p − lr/(1−β₁ᵗ) · m / (sqrt(v)/sqrt(1−β₂ᵗ) + ε)`.
    pub fn step<M: Module>(
        &mut self,
        module: M,
        grads: &BTreeMap<String, Tensor<1>>,
        lr: f64,
        decay: &dyn Fn(&str, &[usize]) -> bool,
    ) -> M {
        let cfg = self.config.clone();
        params::update(module, |path, shape, p| {
            let Some(g) = grads.get(path) else { return p };
            let t = self.steps.entry(path.to_string()).or_insert(0);
            *t += 1;
            let step = *t as i32;
            let weight_decay = if decay(path, shape) { cfg.weight_decay } else { 0.0 };
            let (m, v) = (self.exp_avg.remove(path), self.exp_avg_sq.remove(path));
            let (new, m, v) =
                if is_fast(&p) && is_fast(g) && m.as_ref().is_none_or(is_fast) && v.as_ref().is_none_or(is_fast) {
                    let scalars =
                        AdamWScalars { lr, beta1: cfg.beta1, beta2: cfg.beta2, eps: cfg.eps, weight_decay, step };
                    adamw_fused(p, g, m, v, scalars)
                } else {
                    let g = g.clone();
                    let m = match m {
                        Some(m) => m * cfg.beta1 + g.clone() * (1.0 - cfg.beta1),
                        None => g.clone() * (1.0 - cfg.beta1),
                    };
                    let v = match v {
                        Some(v) => v * cfg.beta2 + g.clone() * g.clone() * (1.0 - cfg.beta2),
                        None => g.clone() * g * (1.0 - cfg.beta2),
                    };
                    let p = if weight_decay > 0.0 { p * (1.0 - lr * weight_decay) } else { p };
                    let bc1 = 1.0 - cfg.beta1.powi(step);
                    let bc2 = 1.0 - cfg.beta2.powi(step);
                    let denom = v.clone().sqrt() / bc2.sqrt() + cfg.eps;
                    (p - m.clone() / denom * (lr / bc1), m, v)
                };
            self.exp_avg.insert(path.to_string(), m);
            self.exp_avg_sq.insert(path.to_string(), v);
            new
        })
    }
}

/// `Σ ‖g‖²` over all gradients as a one-element tensor on `device`, left there (the step reads
/// it back with its losses, in one transfer).
pub fn squared_norm(grads: &BTreeMap<String, Tensor<1>>, device: &Device) -> Tensor<1> {
    let squares: Vec<Tensor<1>> = grads.values().map(|g| g.clone().detach().powi_scalar(2).sum()).collect();
    if squares.is_empty() {
        return Tensor::zeros([1], device);
    }
    Tensor::cat(squares, 0).sum()
}

/// `sqrt(Σ ‖g‖²)` over all gradients (one host read).
pub fn global_norm(grads: &BTreeMap<String, Tensor<1>>, device: &Device) -> f64 {
    crate::device::read_scalars(vec![squared_norm(grads, device)])[0].sqrt()
}

/// Makes a step's gradients final: divides them by the loss `scale` (1 without loss scaling, as
/// `GradScaler.unscale_`) and then, for `max_norm > 0`, applies PyTorch's `clip_grad_norm_`
/// (scales all gradients by `min(1, max_norm / (norm + 1e-6))`). `scaled_norm` is the norm of
/// the gradients as they are (`sqrt` of [`squared_norm`], read back with the step's losses).
/// Returns the unscaled norm before clipping (non-finite when the gradients overflowed; they are
/// then left as they are).
pub fn unscale_and_clip(grads: &mut BTreeMap<String, Tensor<1>>, scaled_norm: f64, max_norm: f64, scale: f64) -> f64 {
    let norm = scaled_norm / scale;
    if !norm.is_finite() {
        return norm;
    }
    let clip = if max_norm > 0.0 { (max_norm / (norm + 1e-6)).min(1.0) } else { 1.0 };
    let coef = clip / scale;
    if coef != 1.0 {
        for g in grads.values_mut() {
            *g = g.clone() * coef;
        }
    }
    norm
}

/// Dynamic loss scaling for f16 training (PyTorch's `GradScaler` with its defaults): the loss is
/// multiplied by `scale` before the backward pass so that small gradients survive in f16; a step
/// whose gradients overflow is skipped and halves the scale, and 2000 steps in a row without
/// overflow double it. Kept in the checkpoint, so `--resume` continues with the same scale.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LossScale {
    /// The factor the loss is multiplied by.
    pub scale: f64,
    /// Steps since the last overflow or growth.
    pub good_steps: usize,
    /// Steps skipped for overflowing gradients so far.
    pub skipped: usize,
}

impl Default for LossScale {
    fn default() -> Self {
        Self { scale: 65536.0, good_steps: 0, skipped: 0 }
    }
}

impl LossScale {
    /// Steps without overflow before the scale doubles.
    pub const GROWTH_INTERVAL: usize = 2000;

    /// Records whether this step's gradients were finite; returns whether its update applies.
    pub fn update(&mut self, finite: bool) -> bool {
        if !finite {
            self.scale *= 0.5;
            self.good_steps = 0;
            self.skipped += 1;
            return false;
        }
        self.good_steps += 1;
        if self.good_steps == Self::GROWTH_INTERVAL {
            self.scale *= 2.0;
            self.good_steps = 0;
        }
        true
    }
}

/// Which optimizers of a step update their weights, given the (unscaled) gradient norm of each
/// (`(name, norm)`, one per optimizer). A non-finite norm is a [`super::run::NonFiniteValue`]
/// error naming it — unless the loss is scaled (f16 training): then, as `GradScaler`, an
/// optimizer whose gradients overflowed skips its update and the scale is lowered.
pub fn apply_updates(
    loss_scale: &mut Option<LossScale>,
    norms: &[(&str, f64)],
    step: usize,
) -> anyhow::Result<Vec<bool>> {
    let finite: Vec<bool> = norms.iter().map(|(_, n)| n.is_finite()).collect();
    match loss_scale {
        Some(s) => {
            if !s.update(finite.iter().all(|&f| f)) {
                let skipped: Vec<&str> =
                    norms.iter().zip(&finite).filter(|(_, f)| !**f).map(|((n, _), _)| *n).collect();
                tracing::warn!(
                    "step {}: f16 gradients overflowed ({}); their update is skipped, loss scale now {}",
                    step + 1,
                    skipped.join(", "),
                    s.scale
                );
            }
            if s.scale < MIN_LOSS_SCALE {
                anyhow::bail!(
                    "the f16 loss scale fell to {:e} after {} skipped steps: the gradients overflow whatever the \
                     scale (train in bf16 or f32: run.precision)",
                    s.scale,
                    s.skipped
                );
            }
            Ok(finite)
        }
        None => {
            for &(term, value) in norms {
                super::run::check_finite(term, value)?;
            }
            Ok(finite)
        }
    }
}

/// Below this loss scale (2⁻²⁴, f16's smallest subnormal) f16 training stops: the gradients
/// overflow whatever the scale.
pub const MIN_LOSS_SCALE: f64 = 5.960_464_477_539_063e-8;

/// The tokenizer stages' schedule (`adjust_learning_rate`, non-DiT branch): linear warm-up for
/// `warmup` epochs, then half-cycle cosine from `base` to `min` at `total` epochs; `e` is the
/// fractional epoch.
pub fn warmup_cosine(e: f64, base: f64, min: f64, warmup: f64, total: f64) -> f64 {
    if e < warmup {
        base * e / warmup
    } else if total <= warmup {
        base
    } else {
        min + (base - min) * 0.5 * (1.0 + (std::f64::consts::PI * (e - warmup) / (total - warmup)).cos())
    }
}

/// The DiT^DH schedule (`ditdh_sched`): constant until epoch `start`, then linear (or cosine) decay
/// to `min` at epoch `end`, then `min`. No warm-up ramp.
pub fn ditdh_schedule(e: f64, base: f64, min: f64, start: f64, end: f64, cosine: bool) -> f64 {
    if e <= start {
        base
    } else if e <= end {
        let f = (e - start) / (end - start);
        if cosine {
            min + (base - min) * 0.5 * (1.0 + (std::f64::consts::PI * f).cos())
        } else {
            base - (base - min) * f
        }
    } else {
        min
    }
}

/// The reference's no-decay rule on a parameter's reference name: rank < 2, or a name containing
/// `ln`, `bias`, `embedding`, `norm`, `gamma`, `embed`, `token` or `diffloss`.
pub fn reference_decays(name: &str, shape: &[usize]) -> bool {
    const NO_DECAY: [&str; 8] = ["ln", "bias", "embedding", "norm", "gamma", "embed", "token", "diffloss"];
    shape.len() >= 2 && !NO_DECAY.iter().any(|w| name.contains(w))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unscale_and_clip_as_grad_scaler_then_clip_grad_norm() {
        let device = Device::flex();
        let grads = |scale: f32| -> BTreeMap<String, Tensor<1>> {
            [("a", vec![3.0, 0.0]), ("b", vec![4.0])]
                .into_iter()
                .map(|(k, v)| {
                    let n = v.len();
                    let v: Vec<f32> = v.into_iter().map(|x| x * scale).collect();
                    (k.to_string(), Tensor::from_data(TensorData::new(v, [n]), &device))
                })
                .collect()
        };
        let values = |g: &BTreeMap<String, Tensor<1>>| -> Vec<f32> {
            g.values().flat_map(|t| crate::device::read_f32(t.clone())).collect()
        };
        // No scale, no clip: untouched; norm 5.
        let mut g = grads(1.0);
        let norm = global_norm(&g, &device);
        assert_eq!(norm, 5.0);
        assert_eq!(unscale_and_clip(&mut g, norm, 0.0, 1.0), 5.0);
        assert_eq!(values(&g), [3.0, 0.0, 4.0]);
        // Scaled by 1024 and clipped to 1: the unscaled norm, gradients of norm 1.
        let mut g = grads(1024.0);
        let norm = global_norm(&g, &device);
        assert!((unscale_and_clip(&mut g, norm, 1.0, 1024.0) - 5.0).abs() < 1e-9);
        let v = values(&g);
        assert!((v[0] - 0.6).abs() < 1e-6 && (v[2] - 0.8).abs() < 1e-6, "{v:?}");
        // An overflow: non-finite norm, gradients left alone.
        let mut g = grads(1.0);
        g.insert("c".into(), Tensor::from_data(TensorData::new(vec![f32::INFINITY], [1]), &device));
        let norm = global_norm(&g, &device);
        assert!(!unscale_and_clip(&mut g, norm, 1.0, 2.0).is_finite());
    }

    #[test]
    fn loss_scale_backs_off_and_grows_as_grad_scaler() {
        let mut s = LossScale::default();
        assert_eq!(s.scale, 65536.0);
        assert!(!s.update(false));
        assert_eq!((s.scale, s.skipped), (32768.0, 1));
        for _ in 0..LossScale::GROWTH_INTERVAL - 1 {
            assert!(s.update(true));
        }
        assert_eq!(s.scale, 32768.0);
        assert!(s.update(true));
        assert_eq!((s.scale, s.good_steps), (65536.0, 0));
        // Without loss scaling a non-finite norm is an error naming the term; with it, a skip.
        let err = apply_updates(&mut None, &[("gradient norm", f64::NAN)], 4).unwrap_err();
        assert!(err.to_string().contains("gradient norm"), "{err}");
        // Each optimizer skips only on its own overflow; the scale halves on any.
        let mut scaled = Some(LossScale::default());
        assert_eq!(apply_updates(&mut scaled, &[("g", 1.0), ("d", f64::INFINITY)], 4).unwrap(), [true, false]);
        assert_eq!(scaled.as_ref().unwrap().scale, 32768.0);
        assert_eq!(apply_updates(&mut scaled, &[("g", 1.0)], 5).unwrap(), [true]);
        // A scale that keeps falling stops the run instead of skipping forever.
        let mut tiny = Some(LossScale { scale: 1e-7, good_steps: 0, skipped: 40 });
        let err = apply_updates(&mut tiny, &[("g", f64::NAN)], 6).unwrap_err();
        assert!(err.to_string().contains("loss scale"), "{err}");
    }

    #[test]
    fn adamw_matches_pytorch_over_steps() {
        let device = Device::flex();
        let cfg = AdamWConfig { beta1: 0.9, beta2: 0.95, eps: 1e-8, weight_decay: 0.1 };
        let mut opt = AdamW::new(cfg.clone());
        let mut module = burn::nn::LinearConfig::new(2, 1).init(&device);
        let w0: Vec<f32> = module.weight.val().into_data().try_to_vec().unwrap();
        let (mut p, mut m, mut v) = (w0.iter().map(|&x| x as f64).collect::<Vec<_>>(), vec![0f64; 2], vec![0f64; 2]);
        let lr = 1e-2;
        for step in 1..=3 {
            let g = [0.5 * step as f64, -0.25];
            let mut grads = BTreeMap::new();
            grads.insert(
                "weight".to_string(),
                Tensor::<1>::from_data(TensorData::new(g.iter().map(|&x| x as f32).collect::<Vec<_>>(), [2]), &device),
            );
            module = opt.step(module, &grads, lr, &|_, s| s.len() >= 2);
            for i in 0..2 {
                p[i] *= 1.0 - lr * cfg.weight_decay;
                m[i] = 0.9 * m[i] + 0.1 * g[i];
                v[i] = 0.95 * v[i] + 0.05 * g[i] * g[i];
                let (bc1, bc2) = (1.0 - 0.9f64.powi(step), 1.0 - 0.95f64.powi(step));
                p[i] -= lr / bc1 * m[i] / ((v[i] / bc2).sqrt() + cfg.eps);
            }
        }
        let got: Vec<f32> = module.weight.val().into_data().try_to_vec().unwrap();
        for i in 0..2 {
            assert!((got[i] as f64 - p[i]).abs() < 1e-6, "{got:?} vs {p:?}");
        }
        assert_eq!(opt.steps["weight"], 3);
        assert!(!opt.steps.contains_key("bias"), "parameters without a gradient are not stepped");
    }

    #[test]
    fn schedules() {
        assert!((warmup_cosine(25.0, 4e-4, 0.0, 50.0, 200.0) - 2e-4).abs() < 1e-12);
        assert!((warmup_cosine(50.0, 4e-4, 0.0, 50.0, 200.0) - 4e-4).abs() < 1e-12);
        assert!(warmup_cosine(200.0, 4e-4, 0.0, 50.0, 200.0).abs() < 1e-12);
        // DiT: 1.91e-4 at epoch 80 and 6.74e-5 at epoch 600 (docs/TRAINING.md §5.3).
        assert!((ditdh_schedule(80.0, 2e-4, 2e-5, 40.0, 800.0, false) - 1.9053e-4).abs() < 1e-7);
        assert!((ditdh_schedule(600.0, 2e-4, 2e-5, 40.0, 800.0, false) - 6.737e-5).abs() < 1e-7);
        assert!(reference_decays("encoder.transformer.0.attn.qkv.weight", &[2304, 768]));
        assert!(!reference_decays("encoder.ln_pre.weight", &[768]));
        assert!(!reference_decays("decoder.decoder_embed.weight", &[768, 128]));
        assert!(!reference_decays("encoder.patch_embed.0.weight", &[768, 3, 16, 16]));
        assert!(!reference_decays("decoder.mask_token", &[1, 1, 768]));
        assert!(reference_decays("decoder.conv_out.weight", &[3, 3, 3, 3]));
    }
}
