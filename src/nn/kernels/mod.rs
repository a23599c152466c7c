//! Fused CPU kernels for the hot paths of inference and training on burn's `flex` backend.
//!
//! burn composes these layers from generic tensor ops, each a full pass over memory (RMSNorm is
//! four, SwiGLU three, RoPE attention a dozen with its permutes and copies). On the CPU, f32
//! tensors take the fused kernels below, which work directly on the flex backend's buffers:
//! outside autodiff as they are ([`is_fast`]), under autodiff with their hand-written backward
//! passes ([`backward`]). Every other tensor — GPU backends, gradient checkpointing — takes the
//! generic composition, which is also the reference the kernels are tested against. (The
//! optimizer's and the EMA's fused updates are in `train::optim_kernels`, on the same helpers.)

mod backward;

use super::rope::{RopeStyle, RopeTable};
use burn::backend::Flex;
use burn::backend::flex::{FlexTensor, Layout};
use burn::nn::{Linear, RmsNorm};
use burn::prelude::*;
use burn::tensor::module::attention as sdpa;
use burn::tensor::{Bytes, DType, FloatDType, Shape};
use rayon::prelude::*;

/// Set `RECTOK_GENERIC_KERNELS=1` to force the generic composition everywhere (for comparisons).
fn generic_forced() -> bool {
    static FORCED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *FORCED.get_or_init(|| std::env::var_os("RECTOK_GENERIC_KERNELS").is_some_and(|v| v != "0"))
}

/// Whether `t` can take a fused kernel: a float32 flex tensor outside autodiff.
pub fn is_fast<const D: usize>(t: &Tensor<D>) -> bool {
    if generic_forced() || t.dtype() != DType::F32 {
        return false;
    }
    let device = t.device();
    !device.is_autodiff() && device == Device::flex()
}

/// The contiguous f32 storage of a flex tensor.
pub(crate) fn host<const D: usize>(t: Tensor<D>) -> FlexTensor {
    let ft = t.try_into_primitive::<Flex>().expect("checked by is_fast");
    if ft.is_contiguous() && ft.layout().start_offset() == 0 { ft } else { ft.to_contiguous() }
}

/// The f32 values of a contiguous flex tensor.
pub(crate) fn slice(ft: &FlexTensor) -> &[f32] {
    let n = ft.layout().num_elements();
    let off = ft.layout().start_offset();
    &ft.storage::<f32>()[off..off + n]
}

/// A buffer of `n` floats whose contents the caller overwrites entirely (skips zero-filling: a
/// page fault per 4 KiB of a fresh buffer is what the kernels are saving).
#[allow(clippy::uninit_vec)]
fn uninit(n: usize) -> Vec<f32> {
    let mut v = Vec::with_capacity(n);
    // SAFETY: f32 has no invalid bit patterns, and every caller writes all `n` values before
    // reading any of them.
    unsafe { v.set_len(n) };
    v
}

/// A flex tensor owning `v`.
pub(crate) fn from_vec<const D: usize>(v: Vec<f32>, shape: [usize; D]) -> Tensor<D> {
    Tensor::from_primitive::<Flex>(flex(v, &shape))
}

/// The flex primitive owning `v` with `shape`.
fn flex(v: Vec<f32>, shape: &[usize]) -> FlexTensor {
    FlexTensor::new(Bytes::from_elems(v), Layout::contiguous(Shape::from(shape.to_vec())), DType::F32)
}

/// Runs `body` compiled for AVX-512 or AVX2+FMA when the CPU has them (runtime detection), so the
/// loops vectorise beyond the SSE2 baseline of the default target.
macro_rules! multiversion {
    ($body:expr) => {{
        #[cfg(target_arch = "x86_64")]
        {
            #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma")]
            unsafe fn v4<R>(f: impl FnOnce() -> R) -> R {
                f()
            }
            #[target_feature(enable = "avx2,fma")]
            unsafe fn v3<R>(f: impl FnOnce() -> R) -> R {
                f()
            }
            if std::arch::is_x86_feature_detected!("avx512f") && std::arch::is_x86_feature_detected!("avx512bw") {
                // SAFETY: the features were detected at run time.
                unsafe { v4($body) }
            } else if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
                // SAFETY: the features were detected at run time.
                unsafe { v3($body) }
            } else {
                ($body)()
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            ($body)()
        }
    }};
}
pub(crate) use multiversion;

/// `exp(x)` for f32 with Cephes' degree-6 polynomial after range reduction by powers of two
/// (relative error ≈ 1e-7); branch-free so that it vectorises.
#[inline(always)]
pub fn exp_f32(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const C1: f32 = 0.693_359_4;
    const C2: f32 = -2.121_944_4e-4;
    let x = x.clamp(-87.3, 88.7);
    // Round to nearest with the 1.5·2^23 trick (vectorises, unlike `round`).
    let magic = 12_582_912.0f32;
    let n = (x * LOG2E + magic) - magic;
    let r = x - n * C1 - n * C2;
    let r2 = r * r;
    let p = ((((1.987_569_1e-4 * r + 1.398_199_9e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2) * r + 1.666_666_5e-1)
        * r
        + 5e-1;
    let e = p * r2 + r + 1.0;
    e * f32::from_bits(((n as i32 + 127) << 23) as u32)
}

/// Lanes of the explicit accumulators below: float reductions only vectorise when the code
/// itself keeps independent partial sums (the compiler may not reassociate float additions).
const LANES: usize = 16;

#[inline(always)]
fn sum_of_squares(x: &[f32]) -> f32 {
    let mut acc = [0f32; LANES];
    let chunks = x.chunks_exact(LANES);
    let rest = chunks.remainder();
    for c in chunks {
        for i in 0..LANES {
            acc[i] += c[i] * c[i];
        }
    }
    acc.iter().sum::<f32>() + rest.iter().map(|v| v * v).sum::<f32>()
}

/// In place `x ← exp(x − max(x)) / Σ exp(x − max(x))`.
#[inline(always)]
fn softmax_in_place(x: &mut [f32]) {
    let mut m = [f32::NEG_INFINITY; LANES];
    let chunks = x.chunks_exact(LANES);
    let rest = chunks.remainder();
    for c in chunks {
        for i in 0..LANES {
            m[i] = if c[i] > m[i] { c[i] } else { m[i] };
        }
    }
    let max = rest.iter().chain(m.iter()).copied().fold(f32::NEG_INFINITY, f32::max);
    let mut acc = [0f32; LANES];
    let mut chunks = x.chunks_exact_mut(LANES);
    for c in &mut chunks {
        for i in 0..LANES {
            c[i] = exp_f32(c[i] - max);
            acc[i] += c[i];
        }
    }
    let mut sum: f32 = acc.iter().sum();
    for v in chunks.into_remainder() {
        *v = exp_f32(*v - max);
        sum += *v;
    }
    let inv = 1.0 / sum;
    x.iter_mut().for_each(|v| *v *= inv);
}

/// `out = (x ⊙ cos + swap(x) ⊙ sin_signed) · scale` over one head's channels.
#[inline(always)]
fn rotate(out: &mut [f32], x: &[f32], cos: &[f32], sin: &[f32], scale: f32, style: RopeStyle) {
    match style {
        RopeStyle::AdjacentPairs => {
            for (((o, x), c), s) in
                out.chunks_exact_mut(2).zip(x.chunks_exact(2)).zip(cos.chunks_exact(2)).zip(sin.chunks_exact(2))
            {
                o[0] = (x[0] * c[0] + x[1] * s[0]) * scale;
                o[1] = (x[1] * c[1] + x[0] * s[1]) * scale;
            }
        }
        RopeStyle::SplitHalf => {
            let h = x.len() / 2;
            for i in 0..h {
                out[i] = (x[i] * cos[i] + x[i + h] * sin[i]) * scale;
                out[i + h] = (x[i + h] * cos[i + h] + x[i] * sin[i + h]) * scale;
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Linear
// ---------------------------------------------------------------------------------------------

/// `dst = dst + a · b` (or `dst = a · b` without `accumulate`) for `a (m×k)` with row stride
/// `lda`, `b (k×n)` with (row, column) strides `ldb` and `dst (m×n)` with row stride `ldd`.
///
/// # Safety
/// The pointers must cover the stated matrices.
#[allow(clippy::too_many_arguments)]
unsafe fn gemm_acc(
    mnk: (usize, usize, usize),
    a: *const f32,
    lda: usize,
    b: *const f32,
    ldb: (usize, usize),
    dst: *mut f32,
    ldd: usize,
    accumulate: bool,
    parallel: bool,
) {
    // SAFETY: forwarded from the caller.
    unsafe { gemm_strided(mnk, a, (lda, 1), b, ldb, dst, ldd, accumulate, parallel) }
}

/// [`gemm_acc`] with `a` read through (row, column) strides too (a transposed operand).
///
/// # Safety
/// The pointers must cover the stated matrices.
#[allow(clippy::too_many_arguments)]
unsafe fn gemm_strided(
    (m, n, k): (usize, usize, usize),
    a: *const f32,
    lda: (usize, usize),
    b: *const f32,
    ldb: (usize, usize),
    dst: *mut f32,
    ldd: usize,
    accumulate: bool,
    parallel: bool,
) {
    let par = if parallel && m * n * k >= 96 * 96 * 96 { gemm::Parallelism::Rayon(0) } else { gemm::Parallelism::None };
    let alpha = if accumulate { 1.0f32 } else { 0.0f32 };
    // SAFETY: forwarded from the caller.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst,
            1,
            ldd as isize,
            accumulate,
            a,
            lda.1 as isize,
            lda.0 as isize,
            b,
            ldb.1 as isize,
            ldb.0 as isize,
            alpha,
            1.0f32,
            false,
            false,
            false,
            par,
        );
    }
}

/// [`Linear::forward`] with the bias folded into the matrix product on the CPU.
pub fn linear<const D: usize>(layer: &Linear, x: Tensor<D>) -> Tensor<D> {
    linear_impl(layer, x, None)
}

/// `residual + layer(x)`, with both the bias and the residual folded into the matrix product.
pub fn linear_residual<const D: usize>(layer: &Linear, x: Tensor<D>, residual: Tensor<D>) -> Tensor<D> {
    linear_impl(layer, x, Some(residual))
}

fn linear_impl<const D: usize>(layer: &Linear, x: Tensor<D>, residual: Option<Tensor<D>>) -> Tensor<D> {
    let w = layer.weight.val();
    let bias = layer.bias.as_ref().map(|b| b.val());
    let [wk, n] = w.dims();
    let dims = x.dims();
    let k = dims[D - 1];
    let mut shape = dims;
    shape[D - 1] = n;
    // The fused paths need the exact shapes (a broadcast residual takes the generic path).
    let fits = wk == k && residual.as_ref().is_none_or(|r| r.dims() == shape);
    if fits && is_fast(&x) && is_fast(&w) && residual.as_ref().is_none_or(is_fast) {
        let (xf, wf) = (host(x), host(w));
        let (bf, rf) = (bias.map(host), residual.map(host));
        let out = linear_values(slice(&xf), k, slice(&wf), n, bf.as_ref().map(slice), rf.as_ref().map(slice));
        return from_vec(out, shape);
    }
    if fits
        && backward::tracked(&x)
        && backward::tracked(&w)
        && bias.as_ref().is_none_or(backward::tracked)
        && residual.as_ref().is_none_or(backward::tracked)
    {
        return backward::linear(x, w, bias, residual, shape);
    }
    let y = match crate::device::autocast(&x) {
        // Autocast: the product in half precision, the result back in f32.
        Some(half) => {
            burn::tensor::module::linear(x.cast(half), w.cast(half), bias.map(|b| b.cast(half))).cast(FloatDType::F32)
        }
        None => burn::tensor::module::linear(x, w, bias),
    };
    match residual {
        Some(r) => r + y,
        None => y,
    }
}

/// `residual + x·W + bias` for `x (rows × k)` and `W (k × n)`, row-major.
fn linear_values(
    xs: &[f32],
    k: usize,
    ws: &[f32],
    n: usize,
    bias: Option<&[f32]>,
    residual: Option<&[f32]>,
) -> Vec<f32> {
    let rows = xs.len() / k;
    let mut out = match (residual, bias) {
        (Some(r), Some(b)) => {
            let mut v = r.to_vec();
            for row in v.chunks_exact_mut(n) {
                row.iter_mut().zip(b).for_each(|(o, b)| *o += b);
            }
            v
        }
        (Some(r), None) => r.to_vec(),
        (None, Some(b)) => b.repeat(rows),
        (None, None) => vec![0.0; rows * n],
    };
    // SAFETY: the buffers have exactly the shapes passed.
    unsafe { gemm_acc((rows, n, k), xs.as_ptr(), k, ws.as_ptr(), (n, 1), out.as_mut_ptr(), n, true, true) };
    out
}

// ---------------------------------------------------------------------------------------------
// RMSNorm and SwiGLU
// ---------------------------------------------------------------------------------------------

/// Rows of `out_w` values computed by `f(out_row, in_row)` from the rows of `in_w` values of `xs`,
/// in parallel tasks of about 16K outputs, each compiled for the CPU's vector extensions.
fn map_rows(xs: &[f32], in_w: usize, out_w: usize, f: impl Fn(&mut [f32], &[f32]) + Sync) -> Vec<f32> {
    let mut out = uninit(xs.len() / in_w * out_w);
    let rows_per_task = (16384 / out_w).max(1);
    out.par_chunks_mut(rows_per_task * out_w).zip(xs.par_chunks(rows_per_task * in_w)).for_each(|(o, x)| {
        multiversion!(|| o.chunks_exact_mut(out_w).zip(x.chunks_exact(in_w)).for_each(|(o, x)| f(o, x)))
    });
    out
}

/// [`RmsNorm::forward`]: `x · rsqrt(mean(x²) + ε) · γ` in one pass per row.
pub fn rms_norm<const D: usize>(norm: &RmsNorm, x: Tensor<D>) -> Tensor<D> {
    let gamma = norm.gamma.val();
    let fits = x.dims()[D - 1] == gamma.dims()[0];
    if fits && is_fast(&x) && is_fast(&gamma) {
        let dims = x.dims();
        let (xf, gf) = (host(x), host(gamma));
        return from_vec(rms_norm_values(slice(&xf), slice(&gf), norm.epsilon as f32), dims);
    }
    if fits && backward::tracked(&x) && backward::tracked(&gamma) {
        return backward::rms_norm(x, gamma, norm.epsilon as f32);
    }
    norm.forward(x)
}

/// `1 / sqrt(mean(x²) + ε)` of one row.
#[inline(always)]
fn inv_rms(x: &[f32], eps: f32) -> f32 {
    1.0 / (sum_of_squares(x) / x.len() as f32 + eps).sqrt()
}

/// RMSNorm of rows of `g.len()` values.
fn rms_norm_values(xs: &[f32], g: &[f32], eps: f32) -> Vec<f32> {
    let d = g.len();
    map_rows(xs, d, d, |orow, xrow| {
        let inv = inv_rms(xrow, eps);
        for ((o, &v), &w) in orow.iter_mut().zip(xrow).zip(g) {
            *o = v * inv * w;
        }
    })
}

/// SwiGLU gate: `silu(a) · b` for `[a | b]` halves of the last dim: `[.., 2H] → [.., H]`.
pub fn silu_gate<const D: usize>(h: Tensor<D>) -> Tensor<D> {
    let dims = h.dims();
    let hidden = dims[D - 1] / 2;
    let mut shape = dims;
    shape[D - 1] = hidden;
    let fits = dims[D - 1] == 2 * hidden;
    if fits && is_fast(&h) {
        let hf = host(h);
        return from_vec(silu_gate_values(slice(&hf), hidden), shape);
    }
    if fits && backward::tracked(&h) {
        return backward::silu_gate(h, hidden, shape);
    }
    let a = h.clone().narrow(D - 1, 0, hidden);
    let b = h.narrow(D - 1, hidden, hidden);
    burn::tensor::activation::silu(a) * b
}

/// `silu(a)·b` of rows `[a | b]` of `2·hidden` values.
fn silu_gate_values(hs: &[f32], hidden: usize) -> Vec<f32> {
    map_rows(hs, 2 * hidden, hidden, |orow, xrow| {
        let (a, b) = xrow.split_at(hidden);
        for ((o, &a), &b) in orow.iter_mut().zip(a).zip(b) {
            *o = a / (1.0 + exp_f32(-a)) * b;
        }
    })
}

// ---------------------------------------------------------------------------------------------
// adaLN modulation (DiT)
// ---------------------------------------------------------------------------------------------

/// Chunk `i` of `k` equal chunks of the last dim of a modulation tensor `(B, Lc, k·D)`, as a
/// `(B, Lc, D)` view (`Lc` = 1 broadcasts over tokens).
fn chunk(m: &Tensor<3>, i: usize, k: usize) -> Tensor<3> {
    let d = m.dims()[2] / k;
    m.clone().narrow(2, i * d, d)
}

/// Row `r` of token-row `t` of batch `b` in a `(B, Lc, width)` modulation buffer.
#[inline(always)]
fn cond_row(m: &[f32], lc: usize, width: usize, b: usize, t: usize) -> &[f32] {
    let row = b * lc + if lc == 1 { 0 } else { t };
    &m[row * width..(row + 1) * width]
}

/// `RMSNorm(x)·(1 + scale) + shift` with `shift`/`scale` chunks `shift_i`/`scale_i` of the `k`-way
/// modulation tensor `m (B, 1 or L, k·D)` (the reference's `DDTModulate(norm(x), shift, scale)`).
pub fn rms_norm_modulate(
    norm: &RmsNorm,
    x: Tensor<3>,
    m: &Tensor<3>,
    k: usize,
    shift_i: usize,
    scale_i: usize,
) -> Tensor<3> {
    let gamma = norm.gamma.val();
    let chunks = Chunks { k, shift_i, scale_i };
    let fits = modulation_fits(&x, m, k) && gamma.dims()[0] == x.dims()[2] && shift_i != scale_i;
    if fits && is_fast(&x) && is_fast(m) && is_fast(&gamma) {
        let dims = x.dims();
        let (xf, mf, gf) = (host(x), host(m.clone()), host(gamma));
        let out = rms_norm_modulate_values(
            slice(&xf),
            dims,
            slice(&mf),
            m.dims()[1],
            slice(&gf),
            norm.epsilon as f32,
            chunks,
        );
        return from_vec(out, dims);
    }
    if fits && backward::tracked(&x) && backward::tracked(m) && backward::tracked(&gamma) {
        return backward::rms_norm_modulate(x, gamma, m.clone(), norm.epsilon as f32, chunks);
    }
    let h = norm.forward(x);
    h.clone() * chunk(m, scale_i, k) + h + chunk(m, shift_i, k)
}

/// Whether `x (B, L, D)` and `m (B, 1 or L, k·D)` have the shapes the fused modulation kernels
/// index by (anything else takes the generic composition, and its shape errors).
fn modulation_fits(x: &Tensor<3>, m: &Tensor<3>, k: usize) -> bool {
    let ([b, l, d], [mb, lc, width]) = (x.dims(), m.dims());
    mb == b && (lc == 1 || lc == l) && width == k * d
}

/// Which chunks of a `k`-way modulation tensor shift and scale.
#[derive(Clone, Copy, Debug)]
struct Chunks {
    k: usize,
    shift_i: usize,
    scale_i: usize,
}

/// [`rms_norm_modulate`] on values: `x (b, l, d)`, `m (b, lc, k·d)`.
fn rms_norm_modulate_values(
    xs: &[f32],
    [_, l, d]: [usize; 3],
    ms: &[f32],
    lc: usize,
    g: &[f32],
    eps: f32,
    c: Chunks,
) -> Vec<f32> {
    let width = c.k * d;
    let mut out = uninit(xs.len());
    out.par_chunks_mut(d).zip(xs.par_chunks(d)).enumerate().for_each(|(r, (o, xrow))| {
        let cond = cond_row(ms, lc, width, r / l, r % l);
        let (shift, scale) = (&cond[c.shift_i * d..(c.shift_i + 1) * d], &cond[c.scale_i * d..(c.scale_i + 1) * d]);
        multiversion!(|| {
            let inv = inv_rms(xrow, eps);
            for i in 0..d {
                let h = xrow[i] * inv * g[i];
                o[i] = h * scale[i] + h + shift[i];
            }
        })
    });
    out
}

/// `x + gate ⊙ y` with `gate` chunk `gate_i` of the `k`-way modulation tensor `m`.
pub fn gated_residual(x: Tensor<3>, m: &Tensor<3>, k: usize, gate_i: usize, y: Tensor<3>) -> Tensor<3> {
    let fits = modulation_fits(&x, m, k) && y.dims() == x.dims() && gate_i < k;
    if fits && is_fast(&x) && is_fast(m) && is_fast(&y) {
        let dims = x.dims();
        let (xf, mf, yf) = (host(x), host(m.clone()), host(y));
        let out = gated_residual_values(slice(&xf), dims, slice(&mf), m.dims()[1], k, gate_i, slice(&yf));
        return from_vec(out, dims);
    }
    if fits && backward::tracked(&x) && backward::tracked(m) && backward::tracked(&y) {
        return backward::gated_residual(x, m.clone(), k, gate_i, y);
    }
    x + chunk(m, gate_i, k) * y
}

/// [`gated_residual`] on values: `x, y (b, l, d)`, `m (b, lc, k·d)`.
fn gated_residual_values(
    xs: &[f32],
    [_, l, d]: [usize; 3],
    ms: &[f32],
    lc: usize,
    k: usize,
    gate_i: usize,
    ys: &[f32],
) -> Vec<f32> {
    let width = k * d;
    let mut out = uninit(xs.len());
    out.par_chunks_mut(d).zip(xs.par_chunks(d).zip(ys.par_chunks(d))).enumerate().for_each(|(r, (o, (xr, yr)))| {
        let gate = &cond_row(ms, lc, width, r / l, r % l)[gate_i * d..(gate_i + 1) * d];
        multiversion!(|| {
            for i in 0..d {
                o[i] = xr[i] + gate[i] * yr[i];
            }
        })
    });
    out
}

/// `SiLU(x)` (vectorised on the CPU).
pub fn silu<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    if is_fast(&x) {
        let dims = x.dims();
        let xf = host(x);
        return from_vec(silu_values(slice(&xf)), dims);
    }
    if backward::tracked(&x) {
        return backward::silu(x);
    }
    burn::tensor::activation::silu(x)
}

fn silu_values(xs: &[f32]) -> Vec<f32> {
    let mut out = uninit(xs.len());
    out.par_chunks_mut(16384).zip(xs.par_chunks(16384)).for_each(|(o, x)| {
        multiversion!(|| {
            for (o, &v) in o.iter_mut().zip(x) {
                *o = v / (1.0 + exp_f32(-v));
            }
        })
    });
    out
}

// ---------------------------------------------------------------------------------------------
// Attention
// ---------------------------------------------------------------------------------------------

/// Generic composition: `qkv (B, L, 3D)` laid out `(3, heads, head_dim)` → RoPE on q, k →
/// scaled dot-product attention → `(B, L, D)` with heads concatenated.
fn attention_generic(qkv: Tensor<3>, heads: usize, rope: Option<&RopeTable>) -> Tensor<3> {
    let [b, l, d3] = qkv.dims();
    let d = d3 / 3;
    let hd = d / heads;
    let qkv = qkv.reshape([b, l, 3, heads, hd]).permute([2, 0, 3, 1, 4]);
    let take = |i: usize| -> Tensor<4> { qkv.clone().narrow(0, i, 1).reshape([b, heads, l, hd]) };
    let (mut q, mut k, v) = (take(0), take(1), take(2));
    if let Some(rope) = rope {
        q = rope.apply(q);
        k = rope.apply(k);
    }
    let out = match crate::device::autocast(&q) {
        Some(half) => {
            sdpa(q.cast(half), k.cast(half), v.cast(half), None, None, Default::default()).cast(FloatDType::F32)
        }
        None => sdpa(q, k, v, None, None, Default::default()),
    };
    out.swap_dims(1, 2).reshape([b, l, d])
}

/// Self-attention from a fused qkv projection (see [`attention_generic`] for the layout).
pub fn attention(qkv: Tensor<3>, heads: usize, rope: Option<&RopeTable>) -> Tensor<3> {
    let [b, l, d3] = qkv.dims();
    // Whole heads of q, k and v, and tables of one head's width covering the rotated tokens.
    let fits = d3 % 3 == 0
        && heads > 0
        && (d3 / 3) % heads == 0
        && rope.is_none_or(|r| {
            let [rows, len, hd] = r.cos.dims();
            hd == d3 / 3 / heads
                && (rows == 1 || rows == b)
                && len + r.prefix >= l
                && r.sin_signed.dims() == r.cos.dims()
        });
    if fits && is_fast(&qkv) && rope.is_none_or(|r| is_fast(&r.cos) && is_fast(&r.sin_signed)) {
        let qkvf = host(qkv);
        let tables = rope.map(|r| (host(r.cos.clone()), host(r.sin_signed.clone()), r));
        let view = tables.as_ref().map(|(c, s, r)| RopeView::new(slice(c), slice(s), r));
        return from_vec(attention_values(slice(&qkvf), [b, l, d3], heads, view), [b, l, d3 / 3]);
    }
    if fits
        && backward::tracked(&qkv)
        && rope.is_none_or(|r| backward::constant(&r.cos) && backward::constant(&r.sin_signed))
    {
        return backward::attention(qkv, heads, rope);
    }
    attention_generic(qkv, heads, rope)
}

/// A RoPE table's values: `cos`/`sin` rows of one head's width, one row per token (`rows` = 1)
/// or per sample and token.
#[derive(Clone, Copy)]
struct RopeView<'a> {
    cos: &'a [f32],
    sin: &'a [f32],
    rows: usize,
    len: usize,
    style: RopeStyle,
    prefix: usize,
}

impl<'a> RopeView<'a> {
    fn new(cos: &'a [f32], sin: &'a [f32], table: &RopeTable) -> Self {
        let [rows, len, _] = table.cos.dims();
        Self { cos, sin, rows, len, style: table.style, prefix: table.prefix }
    }

    /// The `(cos, sin)` rows of token `t` of sample `bi`, `None` for an unrotated prefix token.
    #[inline(always)]
    fn at(&self, bi: usize, t: usize, hd: usize) -> Option<(&'a [f32], &'a [f32])> {
        let tt = t.checked_sub(self.prefix)?;
        let r = if self.rows == 1 { tt } else { bi * self.len + tt };
        Some((&self.cos[r * hd..(r + 1) * hd], &self.sin[r * hd..(r + 1) * hd]))
    }
}

/// One head's rotated and scaled queries and rotated keys, `(l × hd)` each, gathered from the
/// fused qkv rows of sample `bi`.
fn gather_qk(
    src: &[f32],
    [bi, h]: [usize; 2],
    [l, d3, hd]: [usize; 3],
    rope: Option<RopeView<'_>>,
) -> (Vec<f32>, Vec<f32>) {
    let d = d3 / 3;
    let scale = 1.0 / (hd as f32).sqrt();
    let (mut q, mut k) = (uninit(l * hd), uninit(l * hd));
    let base = bi * l * d3;
    multiversion!(|| {
        for t in 0..l {
            let row = &src[base + t * d3..base + (t + 1) * d3];
            let (qs, ks) = (&row[h * hd..(h + 1) * hd], &row[d + h * hd..d + (h + 1) * hd]);
            let (qd, kd) = (&mut q[t * hd..(t + 1) * hd], &mut k[t * hd..(t + 1) * hd]);
            match rope.and_then(|r| r.at(bi, t, hd).map(|cs| (cs, r.style))) {
                Some(((c, sn), style)) => {
                    rotate(qd, qs, c, sn, scale, style);
                    rotate(kd, ks, c, sn, 1.0, style);
                }
                None => {
                    qd.iter_mut().zip(qs).for_each(|(o, &v)| *o = v * scale);
                    kd.copy_from_slice(ks);
                }
            }
        }
    });
    (q, k)
}

/// `softmax(Q Kᵀ)` of one head, `(l × l)`, for gathered `q`, `k` (`l × hd`).
fn attention_probabilities(q: &[f32], k: &[f32], l: usize, hd: usize) -> Vec<f32> {
    let mut s = uninit(l * l);
    // S = Q Kᵀ (K read transposed through its strides).
    // SAFETY: q (l×hd), k (l×hd), s (l×l) are buffers of exactly these sizes.
    unsafe { gemm_acc((l, l, hd), q.as_ptr(), hd, k.as_ptr(), (1, hd), s.as_mut_ptr(), l, false, false) };
    multiversion!(|| {
        for row in s.chunks_exact_mut(l) {
            softmax_in_place(row);
        }
    });
    s
}

/// [`attention`] on values: `src (b, l, d3)` → `(b, l, d3 / 3)`; one task per (sample, head).
fn attention_values(src: &[f32], [b, l, d3]: [usize; 3], heads: usize, rope: Option<RopeView<'_>>) -> Vec<f32> {
    let d = d3 / 3;
    let hd = d / heads;
    let mut out = uninit(b * l * d);
    let out_ptr = out.as_mut_ptr() as usize;
    (0..b * heads).into_par_iter().for_each(|task| {
        let (bi, h) = (task / heads, task % heads);
        let (q, k) = gather_qk(src, [bi, h], [l, d3, hd], rope);
        let p = attention_probabilities(&q, &k, l, hd);
        // O = P V, written straight into the head's columns of the (B, L, D) output.
        let v_ptr = src[bi * l * d3 + 2 * d + h * hd..].as_ptr();
        let o_ptr = (out_ptr as *mut f32).wrapping_add(bi * l * d + h * hd);
        // SAFETY: V rows are d3 apart inside `src`; each task writes a disjoint (l × hd) block of
        // `out` with row stride d.
        unsafe { gemm_acc((l, hd, l), p.as_ptr(), l, v_ptr, (d3, 1), o_ptr, d, false, false) };
    });
    out
}

// ---------------------------------------------------------------------------------------------
// Convolution + per-channel affine + ReLU6 (inference of frozen convnets)
// ---------------------------------------------------------------------------------------------

/// Per-channel epilogue of a fused convolution: `y = x·scale + shift`, optionally ReLU6, optionally
/// plus a residual of the output's shape.
pub struct ConvEpilogue<'a> {
    /// Per-output-channel scale (a folded BatchNorm).
    pub scale: &'a [f32],
    /// Per-output-channel shift.
    pub shift: &'a [f32],
    /// Clamp to [0, 6] after the affine map.
    pub relu6: bool,
}

impl ConvEpilogue<'_> {
    #[inline(always)]
    fn apply(&self, channel: usize, plane: &mut [f32], residual: Option<&[f32]>) {
        let (a, b) = (self.scale[channel], self.shift[channel]);
        let relu6 = self.relu6;
        multiversion!(|| {
            for v in plane.iter_mut() {
                let y = *v * a + b;
                *v = if relu6 { y.clamp(0.0, 6.0) } else { y };
            }
            if let Some(r) = residual {
                plane.iter_mut().zip(r).for_each(|(v, r)| *v += r);
            }
        })
    }
}

/// A 1×1, stride-1 convolution `(B, Cin, H, W) → (B, Cout, H, W)` (one GEMM per image) with the
/// epilogue fused, for flex tensors outside autodiff ([`is_fast`]); `None` otherwise.
pub fn conv1x1_fused(
    x: &Tensor<4>,
    weight: &Tensor<4>,
    epilogue: &ConvEpilogue<'_>,
    residual: Option<&Tensor<4>>,
) -> Option<Tensor<4>> {
    if !is_fast(x) || !is_fast(weight) || residual.is_some_and(|r| !is_fast(r)) {
        return None;
    }
    let [b, cin, h, w] = x.dims();
    let [cout, wcin, kh, kw] = weight.dims();
    if wcin != cin || kh != 1 || kw != 1 {
        return None;
    }
    let hw = h * w;
    let (xf, wf, rf) = (host(x.clone()), host(weight.clone()), residual.map(|r| host(r.clone())));
    let (xs, ws) = (slice(&xf), slice(&wf));
    let rs = rf.as_ref().map(slice);
    let mut out = vec![0f32; b * cout * hw];
    let per_image = |(bi, o): (usize, &mut [f32])| {
        let image = xs[bi * cin * hw..].as_ptr();
        // SAFETY: W is cout×cin, the image cin×hw, the output cout×hw, all row-major.
        unsafe { gemm_acc((cout, hw, cin), ws.as_ptr(), cin, image, (hw, 1), o.as_mut_ptr(), hw, true, b == 1) };
        for (c, plane) in o.chunks_exact_mut(hw).enumerate() {
            epilogue.apply(c, plane, rs.map(|r| &r[(bi * cout + c) * hw..(bi * cout + c + 1) * hw]));
        }
    };
    if b == 1 {
        out.chunks_mut(cout * hw).enumerate().for_each(per_image);
    } else {
        out.par_chunks_mut(cout * hw).enumerate().for_each(per_image);
    }
    Some(from_vec(out, [b, cout, h, w]))
}

/// A depthwise `k×k` convolution with stride `s` and explicit padding `(top/left, bottom/right)`
/// (the same on both axes) with the epilogue fused, for flex tensors outside autodiff; `None`
/// otherwise. One task per (image, channel) plane.
pub fn depthwise_fused(
    x: &Tensor<4>,
    weight: &Tensor<4>,
    stride: usize,
    pad: (usize, usize),
    epilogue: &ConvEpilogue<'_>,
) -> Option<Tensor<4>> {
    if !is_fast(x) || !is_fast(weight) {
        return None;
    }
    let [b, c, h, w] = x.dims();
    let [wc, one, k, kw] = weight.dims();
    if wc != c || one != 1 || k != kw {
        return None;
    }
    let (hp, wp) = (h + pad.0 + pad.1, w + pad.0 + pad.1);
    if hp < k || wp < k {
        return None;
    }
    let (ho, wo) = ((hp - k) / stride + 1, (wp - k) / stride + 1);
    let (xf, wf) = (host(x.clone()), host(weight.clone()));
    let (xs, ws) = (slice(&xf), slice(&wf));
    let mut out = uninit(b * c * ho * wo);
    out.par_chunks_mut(ho * wo).enumerate().for_each_init(
        || vec![0f32; hp * wp],
        |padded, (plane_index, o)| {
            let ch = plane_index % c;
            let src = &xs[plane_index * h * w..(plane_index + 1) * h * w];
            for (y, row) in src.chunks_exact(w).enumerate() {
                let start = (y + pad.0) * wp + pad.0;
                padded[start..start + w].copy_from_slice(row);
            }
            let taps = &ws[ch * k * k..(ch + 1) * k * k];
            multiversion!(|| {
                o.fill(0.0);
                for oy in 0..ho {
                    let orow = &mut o[oy * wo..(oy + 1) * wo];
                    for ky in 0..k {
                        let irow = &padded[(oy * stride + ky) * wp..(oy * stride + ky + 1) * wp];
                        for kx in 0..k {
                            let t = taps[ky * k + kx];
                            if stride == 1 {
                                orow.iter_mut().zip(&irow[kx..kx + wo]).for_each(|(o, i)| *o += t * i);
                            } else {
                                orow.iter_mut().enumerate().for_each(|(ox, o)| *o += t * irow[ox * stride + kx]);
                            }
                        }
                    }
                }
            });
            epilogue.apply(ch, o, None);
        },
    );
    Some(from_vec(out, [b, c, ho, wo]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::rope::tokenizer;
    use crate::rng::Rng;
    use burn::nn::{LinearConfig, RmsNormConfig};

    fn max_diff<const D: usize>(a: Tensor<D>, b: Tensor<D>) -> f32 {
        let a: Vec<f32> = a.into_data().try_into_vec_as().unwrap();
        let b: Vec<f32> = b.into_data().try_into_vec_as().unwrap();
        a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
    }

    #[test]
    fn exp_is_accurate() {
        for i in -8000..8000 {
            let x = i as f32 * 0.01;
            let (a, b) = (exp_f32(x), x.exp());
            assert!((a - b).abs() <= 3e-7 * b, "exp({x}): {a} vs {b}");
        }
    }

    #[test]
    fn fused_kernels_match_the_generic_composition() {
        let device = Device::flex();
        let mut rng = Rng::seed_from(3);
        let x = rng.normal_tensor([2, 16, 48], &device);
        let lin = LinearConfig::new(48, 3 * 48).init(&device);
        assert!(max_diff(linear(&lin, x.clone()), lin.forward(x.clone())) < 1e-5);
        let sq = LinearConfig::new(48, 48).init(&device);
        assert!(max_diff(linear_residual(&sq, x.clone(), x.clone()), x.clone() + sq.forward(x.clone())) < 1e-5);
        let norm = RmsNormConfig::new(48).with_epsilon(1e-6).init(&device);
        assert!(max_diff(rms_norm(&norm, x.clone()), norm.forward(x.clone())) < 1e-5);
        let h = rng.normal_tensor([2, 16, 64], &device);
        assert!(
            max_diff(silu_gate(h.clone()), {
                let a = h.clone().narrow(2, 0, 32);
                burn::tensor::activation::silu(a) * h.narrow(2, 32, 32)
            }) < 1e-5
        );
        // DiT modulation kernels, per-sample (Lc = 1) and per-token conditions.
        for lc in [1, 16] {
            let m = rng.normal_tensor([2, lc, 6 * 48], &device);
            let h = norm.forward(x.clone());
            let want = h.clone() * chunk(&m, 1, 6) + h + chunk(&m, 0, 6);
            assert!(max_diff(rms_norm_modulate(&norm, x.clone(), &m, 6, 0, 1), want) < 1e-5);
            let y = rng.normal_tensor([2, 16, 48], &device);
            assert!(max_diff(gated_residual(x.clone(), &m, 6, 2, y.clone()), x.clone() + chunk(&m, 2, 6) * y) < 1e-5);
        }
        assert!(max_diff(silu(x.clone()), burn::tensor::activation::silu(x.clone())) < 1e-6);
        let qkv = lin.forward(x);
        let table = tokenizer::table(12, 4, 4, &device);
        assert!(
            max_diff(attention(qkv.clone(), 4, Some(&table)), attention_generic(qkv.clone(), 4, Some(&table))) < 1e-5
        );
        assert!(max_diff(attention(qkv.clone(), 4, None), attention_generic(qkv.clone(), 4, None)) < 1e-5);
        // Split-half rotation with two unrotated prefix tokens (DINOv3).
        let (c, sn) = (rng.uniform_vec(14 * 12), rng.uniform_vec(14 * 12));
        let split = RopeTable::with_style(c, sn, 14, 12, RopeStyle::SplitHalf, 2, &device);
        assert!(
            max_diff(attention(qkv.clone(), 4, Some(&split)), attention_generic(qkv.clone(), 4, Some(&split))) < 1e-5
        );
        // Per-sample (gathered) tables, as under MAE masking.
        let ids = Tensor::<2, Int>::from_data(
            TensorData::new((0..32i64).map(|i| (i * 5) % 16).collect::<Vec<_>>(), [2, 16]),
            &device,
        );
        let gathered = table.gather_rows(&ids);
        assert!(
            max_diff(attention(qkv.clone(), 4, Some(&gathered)), attention_generic(qkv, 4, Some(&gathered))) < 1e-5
        );
    }
}
