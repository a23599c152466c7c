//! The fused kernels under autodiff: the same forward code as inference, with hand-written
//! backward passes registered as custom ops of burn's autodiff (`Backward` steps on
//! `Autodiff<Flex>`), so that training on the CPU runs the fused forward and one fused backward
//! per kernel instead of burn's generic composition (a dozen ops and buffers for RoPE attention).
//!
//! Each op keeps only its inputs (which the graph holds anyway) and recomputes what its backward
//! needs: RMSNorm its row statistics, attention its softmax (as flash-attention does, so no
//! `(B, heads, L, L)` probabilities stay alive between the passes). The gradients are checked
//! against the generic composition on random inputs in `tests` below.

use super::*;
use burn::backend::Autodiff;
use burn::backend::BackendTypes;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};

/// `Autodiff<Flex>`'s float primitive (burn-autodiff's `AutodiffTensor<Flex>`).
type AutodiffTensor<B> = <Autodiff<B> as BackendTypes>::FloatTensorPrimitive;

type Ad = Autodiff<Flex>;

/// Whether `t` is an f32 tensor of the CPU's autodiff device (without gradient checkpointing),
/// so that its op can take a fused kernel with a fused backward.
pub(super) fn tracked<const D: usize>(t: &Tensor<D>) -> bool {
    if generic_forced() || t.dtype() != DType::F32 {
        return false;
    }
    let device = t.device();
    device.is_autodiff()
        && device.clone().without_autodiff() == Device::flex()
        && t.clone().try_into_primitive::<Ad>().is_ok()
}

/// Whether `t` is an f32 CPU tensor that needs no gradient (a RoPE table), on either device.
pub(super) fn constant<const D: usize>(t: &Tensor<D>) -> bool {
    is_fast(t) || (tracked(t) && !ad(t.clone()).is_tracked())
}

/// The autodiff primitive of a tensor [`tracked`] accepted.
fn ad<const D: usize>(t: Tensor<D>) -> AutodiffTensor<Flex> {
    t.try_into_primitive::<Ad>().expect("checked by `tracked`")
}

/// The contiguous flex values of an autodiff tensor.
fn value(t: &AutodiffTensor<Flex>) -> FlexTensor {
    contiguous(t.primitive().clone())
}

/// The values of a flex tensor or of an autodiff one (a constant's).
fn constant_value<const D: usize>(t: &Tensor<D>) -> FlexTensor {
    if is_fast(t) { host(t.clone()) } else { value(&ad(t.clone())) }
}

fn contiguous(ft: FlexTensor) -> FlexTensor {
    if ft.is_contiguous() && ft.layout().start_offset() == 0 { ft } else { ft.to_contiguous() }
}

fn dims_of(ft: &FlexTensor) -> Vec<usize> {
    ft.layout().shape().to_vec()
}

/// Records `op` with `inputs` in the graph (or not, when none of them needs a gradient) and
/// returns its output `out` of `shape`.
fn record<Op, const N: usize, const D: usize>(
    op: Op,
    inputs: [&AutodiffTensor<Flex>; N],
    state: Op::State,
    out: Vec<f32>,
    shape: [usize; D],
) -> Tensor<D>
where
    Op: Backward<Flex, N>,
{
    #[cfg(test)]
    RECORDED.with(|c| c.set(c.get() + 1));
    let out = flex(out, &shape);
    let result = match op.prepare::<NoCheckpointing>(inputs.map(|t| t.node())).compute_bound().stateful() {
        OpsKind::Tracked(prep) => prep.finish(state, out),
        OpsKind::UnTracked(prep) => prep.finish(out),
    };
    Tensor::from_primitive::<Ad>(result)
}

#[cfg(test)]
thread_local! {
    /// Fused ops recorded on this thread (the tests check that the fused path ran).
    static RECORDED: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// The gradient flowing into the op's output, contiguous.
fn output_grad<S, const N: usize>(ops: &Ops<S, N>, grads: &mut Gradients) -> FlexTensor {
    contiguous(grads.consume::<Flex>(&ops.node))
}

/// Registers the gradient of input `i` (computed only when that input needs one).
fn give<S, const N: usize>(
    ops: &Ops<S, N>,
    grads: &mut Gradients,
    i: usize,
    shape: &[usize],
    value: impl FnOnce() -> Vec<f32>,
) {
    if let Some(node) = &ops.parents[i] {
        grads.register::<Flex>(node.id, flex(value(), shape));
    }
}

/// Column sums of rows of `width` values: `Σ_r f(r, acc)` where `f` adds row `r`'s contribution
/// into `acc`. Blocks of rows are summed in parallel and their partial sums added in order, so the
/// result does not depend on how the tasks were scheduled (resumed runs stay bit-identical).
fn sum_rows(rows: usize, width: usize, f: impl Fn(usize, &mut [f32]) + Sync) -> Vec<f32> {
    let block = (16384 / width).max(1);
    let partials: Vec<Vec<f32>> = (0..rows.div_ceil(block))
        .into_par_iter()
        .map(|blk| {
            let mut acc = vec![0f32; width];
            multiversion!(|| (blk * block..rows.min((blk + 1) * block)).for_each(|r| f(r, &mut acc)));
            acc
        })
        .collect();
    let mut total = vec![0f32; width];
    for partial in &partials {
        total.iter_mut().zip(partial).for_each(|(t, p)| *t += p);
    }
    total
}

/// The transpose `(cols × rows)` of a row-major `rows × cols` matrix, in parallel 32×32 tiles.
fn transposed(src: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    const TILE: usize = 32;
    let mut dst = uninit(rows * cols);
    dst.par_chunks_mut(TILE * rows).enumerate().for_each(|(tile_col, d)| {
        let c0 = tile_col * TILE;
        let width = TILE.min(cols - c0);
        for r0 in (0..rows).step_by(TILE) {
            for c in 0..width {
                for r in r0..rows.min(r0 + TILE) {
                    d[c * rows + r] = src[r * cols + c0 + c];
                }
            }
        }
    });
    dst
}

/// `σ(x)` and `silu'(x) = σ(x)·(1 + x·(1 − σ(x)))`.
#[inline(always)]
fn sigmoid_and_silu_grad(x: f32) -> (f32, f32) {
    let s = 1.0 / (1.0 + exp_f32(-x));
    (s, s * (1.0 + x * (1.0 - s)))
}

// ---------------------------------------------------------------------------------------------
// Linear
// ---------------------------------------------------------------------------------------------

/// `residual + x·W + bias`: dx = g·Wᵀ, dW = xᵀ·g, dbias = Σ_rows g, dresidual = g.
#[derive(Debug)]
struct LinearBackward {
    k: usize,
    n: usize,
    bias: bool,
    residual: bool,
}

impl<const N: usize> Backward<Flex, N> for LinearBackward {
    /// The input and the weight.
    type State = (FlexTensor, FlexTensor);

    fn backward(self, ops: Ops<Self::State, N>, grads: &mut Gradients, _: &mut Checkpointer) {
        let g = output_grad(&ops, grads);
        let (x, w) = &ops.state;
        let (gs, xs, ws) = (slice(&g), slice(x), slice(w));
        let (k, n) = (self.k, self.n);
        let rows = gs.len() / n;
        give(&ops, grads, 0, &dims_of(x), || {
            let mut dx = uninit(rows * k);
            // The GEMM reads a column-major right operand ~25 % slower than a row-major one; from
            // about 512 rows on, an explicit transpose of W (one pass over it) costs less.
            let wt = (rows >= 512).then(|| transposed(ws, k, n));
            let (wp, ldw) = match &wt {
                Some(wt) => (wt.as_ptr(), (k, 1)),
                None => (ws.as_ptr(), (1, n)),
            };
            // SAFETY: g (rows×n), Wᵀ (n×k) through the strides chosen above, dx (rows×k).
            unsafe { gemm_acc((rows, k, n), gs.as_ptr(), n, wp, ldw, dx.as_mut_ptr(), k, false, true) };
            dx
        });
        give(&ops, grads, 1, &[k, n], || {
            let mut dw = uninit(k * n);
            // SAFETY: xᵀ read through x's strides (k×rows), g (rows×n), dW (k×n).
            unsafe {
                gemm_strided((k, n, rows), xs.as_ptr(), (1, k), gs.as_ptr(), (n, 1), dw.as_mut_ptr(), n, false, true)
            };
            dw
        });
        if self.bias {
            give(&ops, grads, 2, &[n], || {
                sum_rows(rows, n, |r, acc| acc.iter_mut().zip(&gs[r * n..(r + 1) * n]).for_each(|(a, g)| *a += g))
            });
        }
        if self.residual {
            let i = if self.bias { 3 } else { 2 };
            if let Some(node) = &ops.parents[i] {
                grads.register::<Flex>(node.id, g.clone());
            }
        }
    }
}

/// [`super::linear_impl`] under autodiff (`x (.., k)`, `w (k, n)`, output `shape`).
pub(super) fn linear<const D: usize>(
    x: Tensor<D>,
    w: Tensor<2>,
    bias: Option<Tensor<1>>,
    residual: Option<Tensor<D>>,
    shape: [usize; D],
) -> Tensor<D> {
    let [k, n] = w.dims();
    let (x, w) = (ad(x), ad(w));
    let (bias, residual) = (bias.map(ad), residual.map(ad));
    let (xv, wv) = (value(&x), value(&w));
    let (bv, rv) = (bias.as_ref().map(value), residual.as_ref().map(value));
    let out = linear_values(slice(&xv), k, slice(&wv), n, bv.as_ref().map(slice), rv.as_ref().map(slice));
    let op = LinearBackward { k, n, bias: bias.is_some(), residual: residual.is_some() };
    let state = (xv, wv);
    match (&bias, &residual) {
        (None, None) => record(op, [&x, &w], state, out, shape),
        (Some(b), None) => record(op, [&x, &w, b], state, out, shape),
        (None, Some(r)) => record(op, [&x, &w, r], state, out, shape),
        (Some(b), Some(r)) => record(op, [&x, &w, b, r], state, out, shape),
    }
}

// ---------------------------------------------------------------------------------------------
// RMSNorm (plain and adaLN-modulated)
// ---------------------------------------------------------------------------------------------

/// RMSNorm's backward for one row, given `dh` (the gradient of the normalised row `h = x·inv·γ`):
/// `dx = inv·γ⊙dh − x·inv³·Σ(dh⊙γ⊙x)/d`; adds `dh⊙x·inv` into `dgamma` when given.
#[inline(always)]
fn rms_norm_row_backward(dx: &mut [f32], dh: &[f32], x: &[f32], g: &[f32], inv: f32, dgamma: Option<&mut [f32]>) {
    let d = x.len();
    let mut acc = [0f32; LANES];
    let (cd, cx, cg) = (dh.chunks_exact(LANES), x.chunks_exact(LANES), g.chunks_exact(LANES));
    let rest: f32 = cd.remainder().iter().zip(cx.remainder()).zip(cg.remainder()).map(|((a, b), c)| a * b * c).sum();
    for ((a, b), c) in cd.zip(cx).zip(cg) {
        for i in 0..LANES {
            acc[i] += a[i] * b[i] * c[i];
        }
    }
    let dot = acc.iter().sum::<f32>() + rest;
    let coef = inv * inv * inv * dot / d as f32;
    for i in 0..d {
        dx[i] = inv * g[i] * dh[i] - x[i] * coef;
    }
    if let Some(dgamma) = dgamma {
        for i in 0..d {
            dgamma[i] += dh[i] * x[i] * inv;
        }
    }
}

#[derive(Debug)]
struct RmsNormBackward {
    eps: f32,
}

impl Backward<Flex, 2> for RmsNormBackward {
    /// The input and γ.
    type State = (FlexTensor, FlexTensor);

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let g = output_grad(&ops, grads);
        let (x, gamma) = &ops.state;
        let (gs, xs, gam) = (slice(&g), slice(x), slice(gamma));
        let d = gam.len();
        let eps = self.eps;
        give(&ops, grads, 0, &dims_of(x), || {
            let mut dx = uninit(xs.len());
            dx.par_chunks_mut(d)
                .zip(xs.par_chunks(d).zip(gs.par_chunks(d)))
                .for_each(|(dx, (x, g))| multiversion!(|| rms_norm_row_backward(dx, g, x, gam, inv_rms(x, eps), None)));
            dx
        });
        give(&ops, grads, 1, &[d], || {
            sum_rows(xs.len() / d, d, |r, acc| {
                let (x, g) = (&xs[r * d..(r + 1) * d], &gs[r * d..(r + 1) * d]);
                let inv = inv_rms(x, eps);
                acc.iter_mut().zip(x).zip(g).for_each(|((a, x), g)| *a += g * x * inv);
            })
        });
    }
}

/// [`super::rms_norm`] under autodiff.
pub(super) fn rms_norm<const D: usize>(x: Tensor<D>, gamma: Tensor<1>, eps: f32) -> Tensor<D> {
    let shape = x.dims();
    let (x, gamma) = (ad(x), ad(gamma));
    let (xv, gv) = (value(&x), value(&gamma));
    let out = rms_norm_values(slice(&xv), slice(&gv), eps);
    record(RmsNormBackward { eps }, [&x, &gamma], (xv, gv), out, shape)
}

#[derive(Debug)]
struct RmsNormModulateBackward {
    eps: f32,
    dims: [usize; 3],
    chunks: Chunks,
}

impl Backward<Flex, 3> for RmsNormModulateBackward {
    /// The input, γ and the modulation tensor.
    type State = (FlexTensor, FlexTensor, FlexTensor);

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let g = output_grad(&ops, grads);
        let (x, gamma, m) = &ops.state;
        let (gs, xs, gam, ms) = (slice(&g), slice(x), slice(gamma), slice(m));
        let ([_, l, d], eps, c) = (self.dims, self.eps, self.chunks);
        let m_dims = dims_of(m);
        let (lc, width) = (m_dims[1], m_dims[2]);
        let scale_of = |r: usize| &cond_row(ms, lc, width, r / l, r % l)[c.scale_i * d..(c.scale_i + 1) * d];
        give(&ops, grads, 0, &dims_of(x), || {
            let mut dx = uninit(xs.len());
            dx.par_chunks_mut(d).zip(xs.par_chunks(d).zip(gs.par_chunks(d))).enumerate().for_each_init(
                || vec![0f32; d],
                |dh, (r, (dx, (x, g)))| {
                    let scale = scale_of(r);
                    multiversion!(|| {
                        dh.iter_mut().zip(g).zip(scale).for_each(|((h, g), s)| *h = g * (1.0 + s));
                        rms_norm_row_backward(dx, dh, x, gam, inv_rms(x, eps), None)
                    })
                },
            );
            dx
        });
        give(&ops, grads, 1, &[d], || {
            sum_rows(xs.len() / d, d, |r, acc| {
                let (x, g, scale) = (&xs[r * d..(r + 1) * d], &gs[r * d..(r + 1) * d], scale_of(r));
                let inv = inv_rms(x, eps);
                for i in 0..d {
                    acc[i] += g[i] * (1.0 + scale[i]) * x[i] * inv;
                }
            })
        });
        give(&ops, grads, 2, &m_dims, || {
            // dshift = g, dscale = g ⊙ h, summed over the tokens that share a condition row.
            let mut dm = vec![0f32; ms.len()];
            dm.par_chunks_mut(lc * width).enumerate().for_each(|(bi, dm)| {
                for t in 0..l {
                    let r = bi * l + t;
                    let (x, g) = (&xs[r * d..(r + 1) * d], &gs[r * d..(r + 1) * d]);
                    let row = &mut dm[if lc == 1 { 0 } else { t * width }..][..width];
                    multiversion!(|| {
                        let inv = inv_rms(x, eps);
                        let (shift, rest) = row.split_at_mut(c.scale_i.max(c.shift_i) * d);
                        let (dshift, dscale) = if c.shift_i < c.scale_i {
                            (&mut shift[c.shift_i * d..(c.shift_i + 1) * d], &mut rest[..d])
                        } else {
                            (&mut rest[..d], &mut shift[c.scale_i * d..(c.scale_i + 1) * d])
                        };
                        for i in 0..d {
                            dshift[i] += g[i];
                            dscale[i] += g[i] * x[i] * inv * gam[i];
                        }
                    })
                }
            });
            dm
        });
    }
}

/// [`super::rms_norm_modulate`] under autodiff.
pub(super) fn rms_norm_modulate(x: Tensor<3>, gamma: Tensor<1>, m: Tensor<3>, eps: f32, chunks: Chunks) -> Tensor<3> {
    let dims = x.dims();
    let lc = m.dims()[1];
    let (x, gamma, m) = (ad(x), ad(gamma), ad(m));
    let (xv, gv, mv) = (value(&x), value(&gamma), value(&m));
    let out = rms_norm_modulate_values(slice(&xv), dims, slice(&mv), lc, slice(&gv), eps, chunks);
    record(RmsNormModulateBackward { eps, dims, chunks }, [&x, &gamma, &m], (xv, gv, mv), out, dims)
}

// ---------------------------------------------------------------------------------------------
// Gated residual, SwiGLU gate, SiLU
// ---------------------------------------------------------------------------------------------

#[derive(Debug)]
struct GatedResidualBackward {
    dims: [usize; 3],
    k: usize,
    gate_i: usize,
}

impl Backward<Flex, 3> for GatedResidualBackward {
    /// The modulation tensor and the branch `y`.
    type State = (FlexTensor, FlexTensor);

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let g = output_grad(&ops, grads);
        let (m, y) = &ops.state;
        let (gs, ms, ys) = (slice(&g), slice(m), slice(y));
        let [_, l, d] = self.dims;
        let m_dims = dims_of(m);
        let (lc, width, gi) = (m_dims[1], m_dims[2], self.gate_i);
        debug_assert_eq!(width, self.k * d);
        if let Some(node) = &ops.parents[0] {
            grads.register::<Flex>(node.id, g.clone());
        }
        give(&ops, grads, 1, &m_dims, || {
            let mut dm = vec![0f32; ms.len()];
            dm.par_chunks_mut(lc * width).enumerate().for_each(|(bi, dm)| {
                for t in 0..l {
                    let r = bi * l + t;
                    let row = &mut dm[if lc == 1 { 0 } else { t * width }..][gi * d..(gi + 1) * d];
                    let (g, y) = (&gs[r * d..(r + 1) * d], &ys[r * d..(r + 1) * d]);
                    multiversion!(|| row.iter_mut().zip(g).zip(y).for_each(|((a, g), y)| *a += g * y));
                }
            });
            dm
        });
        give(&ops, grads, 2, &dims_of(y), || {
            let mut dy = uninit(ys.len());
            dy.par_chunks_mut(d).zip(gs.par_chunks(d)).enumerate().for_each(|(r, (dy, g))| {
                let gate = &cond_row(ms, lc, width, r / l, r % l)[gi * d..(gi + 1) * d];
                multiversion!(|| dy.iter_mut().zip(g).zip(gate).for_each(|((o, g), s)| *o = g * s))
            });
            dy
        });
    }
}

/// [`super::gated_residual`] under autodiff.
pub(super) fn gated_residual(x: Tensor<3>, m: Tensor<3>, k: usize, gate_i: usize, y: Tensor<3>) -> Tensor<3> {
    let dims = x.dims();
    let lc = m.dims()[1];
    let (x, m, y) = (ad(x), ad(m), ad(y));
    let (xv, mv, yv) = (value(&x), value(&m), value(&y));
    let out = gated_residual_values(slice(&xv), dims, slice(&mv), lc, k, gate_i, slice(&yv));
    record(GatedResidualBackward { dims, k, gate_i }, [&x, &m, &y], (mv, yv), out, dims)
}

#[derive(Debug)]
struct SiluGateBackward {
    hidden: usize,
}

impl Backward<Flex, 1> for SiluGateBackward {
    /// The input `[a | b]`.
    type State = FlexTensor;

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let g = output_grad(&ops, grads);
        let (gs, hs, hidden) = (slice(&g), slice(&ops.state), self.hidden);
        give(&ops, grads, 0, &dims_of(&ops.state), || {
            let mut dh = uninit(hs.len());
            dh.par_chunks_mut(2 * hidden).zip(hs.par_chunks(2 * hidden).zip(gs.par_chunks(hidden))).for_each(
                |(dh, (h, g))| {
                    let (a, b) = h.split_at(hidden);
                    let (da, db) = dh.split_at_mut(hidden);
                    multiversion!(|| {
                        for i in 0..hidden {
                            let (s, ds) = sigmoid_and_silu_grad(a[i]);
                            da[i] = g[i] * b[i] * ds;
                            db[i] = g[i] * a[i] * s;
                        }
                    })
                },
            );
            dh
        });
    }
}

/// [`super::silu_gate`] under autodiff.
pub(super) fn silu_gate<const D: usize>(h: Tensor<D>, hidden: usize, shape: [usize; D]) -> Tensor<D> {
    let h = ad(h);
    let hv = value(&h);
    let out = silu_gate_values(slice(&hv), hidden);
    record(SiluGateBackward { hidden }, [&h], hv, out, shape)
}

#[derive(Debug)]
struct SiluBackward;

impl Backward<Flex, 1> for SiluBackward {
    /// The input.
    type State = FlexTensor;

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let g = output_grad(&ops, grads);
        let (gs, xs) = (slice(&g), slice(&ops.state));
        give(&ops, grads, 0, &dims_of(&ops.state), || {
            let mut dx = uninit(xs.len());
            dx.par_chunks_mut(16384).zip(xs.par_chunks(16384).zip(gs.par_chunks(16384))).for_each(|(o, (x, g))| {
                multiversion!(|| o
                    .iter_mut()
                    .zip(x)
                    .zip(g)
                    .for_each(|((o, &x), g)| *o = g * sigmoid_and_silu_grad(x).1))
            });
            dx
        });
    }
}

/// [`super::silu`] under autodiff.
pub(super) fn silu<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    let shape = x.dims();
    let x = ad(x);
    let xv = value(&x);
    let out = silu_values(slice(&xv));
    record(SiluBackward, [&x], xv, out, shape)
}

// ---------------------------------------------------------------------------------------------
// Attention
// ---------------------------------------------------------------------------------------------

/// The transpose of [`rotate`]: `out = rotᵀ(g) · scale`.
#[inline(always)]
fn rotate_back(out: &mut [f32], g: &[f32], cos: &[f32], sin: &[f32], scale: f32, style: RopeStyle) {
    match style {
        RopeStyle::AdjacentPairs => {
            for (((o, g), c), s) in
                out.chunks_exact_mut(2).zip(g.chunks_exact(2)).zip(cos.chunks_exact(2)).zip(sin.chunks_exact(2))
            {
                o[0] = (g[0] * c[0] + g[1] * s[1]) * scale;
                o[1] = (g[1] * c[1] + g[0] * s[0]) * scale;
            }
        }
        RopeStyle::SplitHalf => {
            let h = g.len() / 2;
            for i in 0..h {
                out[i] = (g[i] * cos[i] + g[i + h] * sin[i + h]) * scale;
                out[i + h] = (g[i + h] * cos[i + h] + g[i] * sin[i]) * scale;
            }
        }
    }
}

/// The RoPE table of an attention op, kept by its backward step.
#[derive(Debug, Clone)]
struct SavedRope {
    cos: FlexTensor,
    sin: FlexTensor,
    rows: usize,
    len: usize,
    style: RopeStyle,
    prefix: usize,
}

impl SavedRope {
    fn view(&self) -> RopeView<'_> {
        RopeView {
            cos: slice(&self.cos),
            sin: slice(&self.sin),
            rows: self.rows,
            len: self.len,
            style: self.style,
            prefix: self.prefix,
        }
    }
}

#[derive(Debug)]
struct AttentionBackward {
    dims: [usize; 3],
    heads: usize,
    rope: Option<SavedRope>,
}

impl Backward<Flex, 1> for AttentionBackward {
    /// The fused qkv input.
    type State = FlexTensor;

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let g = output_grad(&ops, grads);
        let (gs, src) = (slice(&g), slice(&ops.state));
        let [b, l, d3] = self.dims;
        let (d, heads) = (d3 / 3, self.heads);
        let hd = d / heads;
        let scale = 1.0 / (hd as f32).sqrt();
        let rope = self.rope.as_ref().map(SavedRope::view);
        give(&ops, grads, 0, &[b, l, d3], || {
            let mut dqkv = uninit(b * l * d3);
            let out = dqkv.as_mut_ptr() as usize;
            (0..b * heads).into_par_iter().for_each(|task| {
                let (bi, h) = (task / heads, task % heads);
                let base = bi * l * d3;
                // Recompute this head's rotated q, k and its probabilities P (flash-attention style).
                let (q, k) = gather_qk(src, [bi, h], [l, d3, hd], rope);
                let p = attention_probabilities(&q, &k, l, hd);
                let go = gs[bi * l * d + h * hd..].as_ptr();
                let v = src[base + 2 * d + h * hd..].as_ptr();
                let dst = (out as *mut f32).wrapping_add(base + h * hd);
                let mut dp = uninit(l * l);
                let (mut dq, mut dk) = (uninit(l * hd), uninit(l * hd));
                // SAFETY: every operand lies inside its buffer with the strides given: P, dP
                // (l×l), q, k, dq, dk (l×hd), the output gradient's and V's head columns (row
                // strides d and d3); each task writes only its own head's q, k and v columns of
                // dqkv (row stride d3), disjoint from every other task's.
                unsafe {
                    // dV = Pᵀ dO, straight into the v columns.
                    gemm_strided((l, hd, l), p.as_ptr(), (1, l), go, (d, 1), dst.wrapping_add(2 * d), d3, false, false);
                    // dP = dO Vᵀ.
                    gemm_strided((l, l, hd), go, (d, 1), v, (1, d3), dp.as_mut_ptr(), l, false, false);
                }
                // dS = P ⊙ (dP − rowsum(P ⊙ dP)), in place.
                multiversion!(|| {
                    for (dp, p) in dp.chunks_exact_mut(l).zip(p.chunks_exact(l)) {
                        let dot: f32 = dp.iter().zip(p).map(|(a, b)| a * b).sum();
                        dp.iter_mut().zip(p).for_each(|(a, p)| *a = p * (*a - dot));
                    }
                });
                // SAFETY: as above.
                unsafe {
                    // dq̃ = dS k̃, dk̃ = dSᵀ q̃.
                    gemm_acc((l, hd, l), dp.as_ptr(), l, k.as_ptr(), (hd, 1), dq.as_mut_ptr(), hd, false, false);
                    gemm_strided(
                        (l, hd, l),
                        dp.as_ptr(),
                        (1, l),
                        q.as_ptr(),
                        (hd, 1),
                        dk.as_mut_ptr(),
                        hd,
                        false,
                        false,
                    );
                }
                {
                    for t in 0..l {
                        // SAFETY: row t of this head's q and k columns in dqkv (see above).
                        let (dq_row, dk_row) = unsafe {
                            (
                                std::slice::from_raw_parts_mut(dst.wrapping_add(t * d3), hd),
                                std::slice::from_raw_parts_mut(dst.wrapping_add(t * d3 + d), hd),
                            )
                        };
                        let (gq, gk) = (&dq[t * hd..(t + 1) * hd], &dk[t * hd..(t + 1) * hd]);
                        match rope.and_then(|r| r.at(bi, t, hd).map(|cs| (cs, r.style))) {
                            Some(((c, s), style)) => {
                                rotate_back(dq_row, gq, c, s, scale, style);
                                rotate_back(dk_row, gk, c, s, 1.0, style);
                            }
                            None => {
                                dq_row.iter_mut().zip(gq).for_each(|(o, g)| *o = g * scale);
                                dk_row.copy_from_slice(gk);
                            }
                        }
                    }
                }
            });
            dqkv
        });
    }
}

/// [`super::attention`] under autodiff (the RoPE tables are constants).
pub(super) fn attention(qkv: Tensor<3>, heads: usize, rope: Option<&RopeTable>) -> Tensor<3> {
    let dims @ [b, l, d3] = qkv.dims();
    let qkv = ad(qkv);
    let qv = value(&qkv);
    let saved = rope.map(|r| {
        let [rows, len, _] = r.cos.dims();
        SavedRope {
            cos: constant_value(&r.cos),
            sin: constant_value(&r.sin_signed),
            rows,
            len,
            style: r.style,
            prefix: r.prefix,
        }
    });
    let out = attention_values(slice(&qv), dims, heads, saved.as_ref().map(SavedRope::view));
    record(AttentionBackward { dims, heads, rope: saved }, [&qkv], qv, out, [b, l, d3 / 3])
}

#[cfg(test)]
mod tests {
    use super::super::{attention_generic, chunk};
    use super::*;
    use crate::nn::kernels;
    use crate::nn::rope::tokenizer;
    use crate::rng::Rng;
    use burn::nn::{LinearConfig, RmsNormConfig};

    thread_local! {
        /// Whether [`rel_diff`] compares to the largest value rather than elementwise.
        static NORMWISE: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    }

    /// Values of a tensor as f32.
    fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
        t.into_data().try_into_vec_as().unwrap()
    }

    /// Largest difference relative to the larger magnitude of the two (floored at 1e-3 of the
    /// largest value, so that near-zero entries compare absolutely).
    fn rel_diff(a: &[f32], b: &[f32]) -> f32 {
        assert_eq!(a.len(), b.len());
        let top = a.iter().chain(b).fold(0f32, |m, v| m.max(v.abs())).max(1e-30);
        if NORMWISE.with(|n| n.get()) {
            return a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max) / top;
        }
        a.iter().zip(b).map(|(x, y)| (x - y).abs() / x.abs().max(y.abs()).max(1e-3 * top)).fold(0.0, f32::max)
    }

    /// Runs `f` with the fused kernels and with the generic composition on the same leaf tensors
    /// (`RECTOK_GENERIC_KERNELS` cannot change inside a process, so the generic side is the
    /// explicit composition passed as `generic`), backpropagates `Σ out ⊙ w` for a fixed random
    /// `w`, and returns the worst relative difference of the outputs and of every leaf's gradient.
    fn compare<const D: usize, const L: usize>(
        leaves: [Tensor<3>; L],
        fused: impl Fn(&[Tensor<3>]) -> Tensor<D>,
        generic: impl Fn(&[Tensor<3>]) -> Tensor<D>,
    ) -> (f32, Vec<f32>) {
        let mut rng = Rng::seed_from(11);
        let run = |f: &dyn Fn(&[Tensor<3>]) -> Tensor<D>, rng: &mut Rng| {
            let leaves: Vec<Tensor<3>> = leaves.iter().map(|t| t.clone().autodiff().require_grad()).collect();
            let out = f(&leaves);
            let weight = rng.normal_tensor(out.dims(), &Device::flex()).autodiff();
            let grads = (out.clone() * weight).sum().backward();
            // A leaf the op does not use has no gradient (on both sides, checked below).
            let g: Vec<Option<Vec<f32>>> = leaves.iter().map(|t| t.grad(&grads).map(values)).collect();
            (values(out.without_autodiff()), g)
        };
        let before = RECORDED.with(|c| c.get());
        let (out_f, g_f) = run(&fused, &mut rng);
        assert!(RECORDED.with(|c| c.get()) > before, "the fused side did not take a fused kernel");
        let mut rng = Rng::seed_from(11);
        let (out_g, g_g) = run(&generic, &mut rng);
        let grads = g_f
            .iter()
            .zip(&g_g)
            .filter_map(|(a, b)| match (a, b) {
                (Some(a), Some(b)) => Some(rel_diff(a, b)),
                (None, None) => None,
                _ => Some(f32::INFINITY),
            })
            .collect();
        (rel_diff(&out_f, &out_g), grads)
    }

    fn assert_close(what: &str, (out, grads): (f32, Vec<f32>)) {
        assert!(out < 1e-4, "{what}: output differs by {out:e}");
        for (i, g) in grads.iter().enumerate() {
            assert!(*g < 1e-4, "{what}: gradient of input {i} differs by {g:e}");
        }
    }

    #[test]
    fn fused_backward_passes_match_the_generic_composition() {
        let device = Device::flex();
        let mut rng = Rng::seed_from(5);
        // Odd sizes: 3 samples of 7 tokens, width 36 (3 heads of 12 channels).
        let x = rng.normal_tensor([3, 7, 36], &device);
        let (w, bias) = (rng.normal_tensor([1, 36, 45], &device), rng.normal_tensor([1, 1, 45], &device));
        let r = rng.normal_tensor([3, 7, 45], &device);
        // Linear with and without bias and residual: the weights are leaves too.
        let lin = |v: &[Tensor<3>], with_bias: bool, with_residual: bool| {
            let w2: Tensor<2> = v[1].clone().squeeze_dim(0);
            let b1: Tensor<1> = v[2].clone().reshape([45]);
            let y = linear_raw(
                v[0].clone(),
                w2.clone(),
                with_bias.then_some(b1.clone()),
                with_residual.then(|| v[3].clone()),
            );
            let generic = {
                let y = v[0].clone().matmul(w2.unsqueeze_dim(0));
                let y = if with_bias { y + b1.reshape([1, 1, 45]) } else { y };
                if with_residual { y + v[3].clone() } else { y }
            };
            (y, generic)
        };
        for (with_bias, with_residual) in [(true, true), (true, false), (false, true), (false, false)] {
            let leaves = [x.clone(), w.clone(), bias.clone(), r.clone()];
            let (out, grads) =
                compare(leaves, |v| lin(v, with_bias, with_residual).0, |v| lin(v, with_bias, with_residual).1);
            assert_eq!(grads.len(), 2 + with_bias as usize + with_residual as usize);
            assert_close(&format!("linear (bias {with_bias}, residual {with_residual})"), (out, grads));
        }
        // From 512 rows on, dx takes the explicitly transposed weight. dW and dbias then sum 600
        // rows, whose rounding differs with the summation order: near-cancelling entries are
        // compared to the largest one (1e-5 of it).
        let (x_long, r_long) = (rng.normal_tensor([2, 300, 36], &device), rng.normal_tensor([2, 300, 45], &device));
        NORMWISE.with(|n| n.set(true));
        let (out, grads) =
            compare([x_long, w.clone(), bias.clone(), r_long], |v| lin(v, true, true).0, |v| lin(v, true, true).1);
        NORMWISE.with(|n| n.set(false));
        assert!(out < 1e-5 && grads.iter().all(|g| *g < 1e-5), "linear (600 rows): {out:e} {grads:?}");
        // RMSNorm: γ is a leaf (3D here, a row broadcast).
        let gamma = rng.normal_tensor([1, 1, 36], &device);
        let norm = |v: &[Tensor<3>]| rms_norm_raw(v[0].clone(), v[1].clone().reshape([36]), 1e-6);
        let norm_generic = |v: &[Tensor<3>]| {
            let x = v[0].clone();
            let inv = (x.clone().powi_scalar(2).mean_dim(2) + 1e-6).sqrt().recip();
            x * inv * v[1].clone()
        };
        assert_close("rms_norm", compare([x.clone(), gamma.clone()], norm, norm_generic));
        // SwiGLU gate and SiLU.
        let h = rng.normal_tensor([3, 7, 50], &device);
        assert_close(
            "silu_gate",
            compare(
                [h.clone()],
                |v| kernels::silu_gate(v[0].clone()),
                |v| burn::tensor::activation::silu(v[0].clone().narrow(2, 0, 25)) * v[0].clone().narrow(2, 25, 25),
            ),
        );
        assert_close(
            "silu",
            compare([x.clone()], |v| kernels::silu(v[0].clone()), |v| burn::tensor::activation::silu(v[0].clone())),
        );
        // adaLN modulation and gated residual, per-sample and per-token conditions.
        for lc in [1, 7] {
            let m = rng.normal_tensor([3, lc, 6 * 36], &device);
            let y = rng.normal_tensor([3, 7, 36], &device);
            // The shift chunk before the scale chunk (as DiT^DH) and after it.
            for (shift_i, scale_i) in [(3, 4), (4, 1)] {
                let modulate = |v: &[Tensor<3>]| {
                    let c = Chunks { k: 6, shift_i, scale_i };
                    rms_norm_modulate_raw(v[0].clone(), v[1].clone().reshape([36]), v[2].clone(), 1e-6, c)
                };
                let modulate_generic = |v: &[Tensor<3>]| {
                    let h = norm_generic(&[v[0].clone(), v[1].clone()]);
                    h.clone() * chunk(&v[2], scale_i, 6) + h + chunk(&v[2], shift_i, 6)
                };
                assert_close(
                    &format!("rms_norm_modulate (lc {lc}, shift {shift_i}, scale {scale_i})"),
                    compare([x.clone(), gamma.clone(), m.clone()], modulate, modulate_generic),
                );
            }
            assert_close(
                &format!("gated_residual (lc {lc})"),
                compare(
                    [x.clone(), m.clone(), y.clone()],
                    |v| kernels::gated_residual(v[0].clone(), &v[1], 6, 2, v[2].clone()),
                    |v| v[0].clone() + chunk(&v[1], 2, 6) * v[2].clone(),
                ),
            );
        }
        // Attention: no RoPE, adjacent-pair RoPE, split-half RoPE with 2 unrotated prefix tokens,
        // and per-sample (gathered) tables as under masking.
        let qkv = rng.normal_tensor([3, 7, 108], &device);
        let grid = tokenizer::table(12, 7, 1, &device);
        let (c, s) = (rng.uniform_vec(5 * 12), rng.uniform_vec(5 * 12));
        let split = RopeTable::with_style(c, s, 5, 12, RopeStyle::SplitHalf, 2, &device);
        let ids = Tensor::<2, Int>::from_data(
            TensorData::new((0..21i64).map(|i| (i * 5) % 7).collect::<Vec<_>>(), [3, 7]),
            &device,
        );
        let gathered = grid.gather_rows(&ids);
        // Random tables (cos and sin of a pair differ), and tables built on the autodiff device
        // (as training builds them) with their gathered form.
        let (c, s) = (rng.uniform_vec(7 * 12), rng.uniform_vec(7 * 12));
        let random_pairs = RopeTable::with_style(c, s, 7, 12, RopeStyle::AdjacentPairs, 0, &device);
        let autodiff_device = device.clone().autodiff();
        let grid_ad = tokenizer::table(12, 7, 1, &autodiff_device);
        let ids_ad = Tensor::<2, Int>::from_data(ids.to_data(), &autodiff_device);
        let gathered_ad = grid_ad.gather_rows(&ids_ad);
        for (name, table) in [
            ("none", None),
            ("grid", Some(&grid)),
            ("split-half", Some(&split)),
            ("gathered", Some(&gathered)),
            ("random pairs", Some(&random_pairs)),
            ("grid on the autodiff device", Some(&grid_ad)),
            ("gathered on the autodiff device", Some(&gathered_ad)),
        ] {
            assert_close(
                &format!("attention (rope {name})"),
                compare(
                    [qkv.clone()],
                    |v| kernels::attention(v[0].clone(), 3, table),
                    |v| attention_generic(v[0].clone(), 3, table),
                ),
            );
        }
    }

    /// The public kernels take modules; these take the parameters as leaves.
    fn linear_raw(x: Tensor<3>, w: Tensor<2>, b: Option<Tensor<1>>, r: Option<Tensor<3>>) -> Tensor<3> {
        let mut shape = x.dims();
        shape[2] = w.dims()[1];
        assert!(tracked(&x));
        linear(x, w, b, r, shape)
    }

    fn rms_norm_raw(x: Tensor<3>, gamma: Tensor<1>, eps: f32) -> Tensor<3> {
        assert!(tracked(&x));
        rms_norm(x, gamma, eps)
    }

    fn rms_norm_modulate_raw(x: Tensor<3>, gamma: Tensor<1>, m: Tensor<3>, eps: f32, c: Chunks) -> Tensor<3> {
        rms_norm_modulate(x, gamma, m, eps, c)
    }

    #[test]
    fn parameter_gradient_sums_do_not_depend_on_the_threads() {
        // dγ / dbias sum many rows in parallel blocks: the same bits on 1, 2 or 3 threads.
        let (rows, width) = (4099, 37);
        let xs = Rng::seed_from(2).uniform_vec(rows * width);
        let sum = || sum_rows(rows, width, |r, acc| acc.iter_mut().zip(&xs[r * width..]).for_each(|(a, x)| *a += x));
        let on = |threads| rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap().install(sum);
        let one = on(1);
        assert_eq!(one, on(2));
        assert_eq!(one, on(3));
    }

    #[test]
    fn the_modules_take_the_fused_path_under_autodiff() {
        let device = Device::flex().autodiff();
        let mut rng = Rng::seed_from(1);
        // A data input (no gradient) through modules whose parameters train.
        let x = rng.normal_tensor([2, 5, 8], &Device::flex()).autodiff();
        assert!(tracked(&x));
        let lin = LinearConfig::new(8, 8).init(&device);
        let norm = RmsNormConfig::new(8).init(&device);
        let ada = LinearConfig::new(8, 6 * 8).init(&device);
        let before = RECORDED.with(|c| c.get());
        let h = kernels::rms_norm(&norm, kernels::linear(&lin, x.clone()));
        let m = kernels::linear(&ada, kernels::silu(h.clone().mean_dim(1)));
        let y = kernels::gated_residual(h.clone(), &m, 6, 2, kernels::rms_norm_modulate(&norm, h, &m, 6, 0, 1));
        // linear, rms_norm, linear, silu, rms_norm_modulate, gated_residual: each a fused op.
        assert_eq!(RECORDED.with(|c| c.get()) - before, 6);
        let grads = y.sum().backward();
        assert!(x.grad(&grads).is_none(), "the data input needs no gradient");
        let useful = |g: Option<Vec<f32>>| {
            let g = g.expect("every parameter gets a gradient");
            g.iter().all(|v| v.is_finite()) && g.iter().any(|v| *v != 0.0)
        };
        assert!(useful(lin.weight.val().grad(&grads).map(values)) && useful(ada.weight.val().grad(&grads).map(values)));
        assert!(useful(norm.gamma.val().grad(&grads).map(values)));
        assert!(useful(ada.bias.as_ref().unwrap().val().grad(&grads).map(values)));
        // Shapes the fused kernels do not index by take the generic composition.
        let before = RECORDED.with(|c| c.get());
        let broadcast_residual = rng.normal_tensor([1, 1, 8], &Device::flex()).autodiff();
        let _ = kernels::linear_residual(&lin, x.clone(), broadcast_residual);
        assert_eq!(RECORDED.with(|c| c.get()), before);
    }
}
