//! Fused CPU updates of the optimizer and the EMA on burn's `flex` backend: one pass over flat
//! parameters instead of a dozen tensor ops, each of which would allocate a parameter-sized
//! temporary. Callers check [`is_fast`](crate::nn::kernels::is_fast) first; other devices take
//! the generic tensor ops of [`super::optim`] and [`super::params`].

use crate::nn::kernels::{from_vec, host, multiversion, slice};
use burn::backend::Flex;
use burn::prelude::*;
use rayon::prelude::*;

/// Scalars of one AdamW step (PyTorch semantics; see `train::optim::AdamW::step`).
#[derive(Clone, Copy, Debug)]
pub struct AdamWScalars {
    /// Learning rate.
    pub lr: f64,
    /// β₁.
    pub beta1: f64,
    /// β₂.
    pub beta2: f64,
    /// ε.
    pub eps: f64,
    /// Decoupled weight decay applied to this parameter (0 for the no-decay group).
    pub weight_decay: f64,
    /// Step number (1-based), for the bias corrections.
    pub step: i32,
}

const UPDATE_CHUNK: usize = 1 << 14;

/// One AdamW step on flat flex tensors (check [`is_fast`](crate::nn::kernels::is_fast) first), updating the moments in place
/// when their buffers are not shared: returns `(p', m', v')`. Missing moments start at zero.
pub fn adamw_fused(
    p: Tensor<1>,
    g: &Tensor<1>,
    m: Option<Tensor<1>>,
    v: Option<Tensor<1>>,
    h: AdamWScalars,
) -> (Tensor<1>, Tensor<1>, Tensor<1>) {
    let n = p.dims()[0];
    let zeros = || host(from_vec(vec![0f32; n], [n]));
    let (mut pf, gf) = (host(p), host(g.clone()));
    let mut mf = m.map(host).unwrap_or_else(zeros);
    let mut vf = v.map(host).unwrap_or_else(zeros);
    let gs = slice(&gf);
    let (b1, b2) = (h.beta1 as f32, h.beta2 as f32);
    let decay = (1.0 - h.lr * h.weight_decay) as f32;
    let step_size = (h.lr / (1.0 - h.beta1.powi(h.step))) as f32;
    let inv_bc2_sqrt = (1.0 / (1.0 - h.beta2.powi(h.step)).sqrt()) as f32;
    let eps = h.eps as f32;
    {
        // `storage_mut` copies a shared buffer first (copy-on-write), else works in place.
        let ps = &mut pf.storage_mut::<f32>()[..n];
        let ms = &mut mf.storage_mut::<f32>()[..n];
        let vs = &mut vf.storage_mut::<f32>()[..n];
        ps.par_chunks_mut(UPDATE_CHUNK)
            .zip(ms.par_chunks_mut(UPDATE_CHUNK))
            .zip(vs.par_chunks_mut(UPDATE_CHUNK))
            .zip(gs.par_chunks(UPDATE_CHUNK))
            .for_each(|(((p, m), v), g)| {
                multiversion!(|| {
                    for i in 0..p.len() {
                        let gi = g[i];
                        let mi = m[i] * b1 + gi * (1.0 - b1);
                        let vi = v[i] * b2 + gi * gi * (1.0 - b2);
                        m[i] = mi;
                        v[i] = vi;
                        p[i] = p[i] * decay - step_size * mi / (vi.sqrt() * inv_bc2_sqrt + eps);
                    }
                })
            });
    }
    (Tensor::from_primitive::<Flex>(pf), Tensor::from_primitive::<Flex>(mf), Tensor::from_primitive::<Flex>(vf))
}

/// `ema·decay + p·(1 − decay)` on flat flex tensors (check [`is_fast`](crate::nn::kernels::is_fast) first), in place when the
/// EMA buffer is not shared.
pub fn ema_fused(ema: Tensor<1>, p: &Tensor<1>, decay: f64) -> Tensor<1> {
    let n = ema.dims()[0];
    let (mut ef, pf) = (host(ema), host(p.clone()));
    let ps = slice(&pf);
    let (d, w) = (decay as f32, (1.0 - decay) as f32);
    ef.storage_mut::<f32>()[..n].par_chunks_mut(UPDATE_CHUNK).zip(ps.par_chunks(UPDATE_CHUNK)).for_each(|(e, p)| {
        multiversion!(|| {
            for i in 0..e.len() {
                e[i] = e[i] * d + p[i] * w;
            }
        })
    });
    Tensor::from_primitive::<Flex>(ef)
}
