//! Guided velocities, exactly as the reference combines them (`forward_with_cfg` and
//! `forward_with_autoguidance` of `models/DDT.py`; docs/SAMPLING_EVAL.md §1.3).

use super::dit_dh::DitDh;
use burn::prelude::*;

/// How the velocity is guided.
#[derive(Clone, Copy, Debug)]
pub enum Guidance<'a> {
    /// `v = v(x, t, y)`.
    None,
    /// Classifier-free guidance `v_u + w·(v_c − v_u)` for `t` in the interval, the null class as
    /// unconditional label.
    Cfg {
        /// Guidance weight `w` (guidance is on only for `w > 1`).
        scale: f64,
        /// `[lo, hi]` of t (per sample) where guidance applies.
        interval: (f64, f64),
    },
    /// AutoGuidance `v_g + w·(v − v_g)` with a weaker guide model on the same labels.
    Auto {
        /// The guide (the released DiT^DH-S).
        guide: &'a DitDh,
        /// Guidance weight `w`.
        scale: f64,
        /// `[lo, hi]` of t where guidance applies.
        interval: (f64, f64),
    },
}

/// `base + w·(v − base)` where `lo ≤ t ≤ hi` (per sample), `v` elsewhere.
fn apply_guidance(v: Tensor<4>, base: Tensor<4>, t: &Tensor<1>, scale: f64, interval: (f64, f64)) -> Tensor<4> {
    let m = t.clone().greater_equal_elem(interval.0).bool_and(t.clone().lower_equal_elem(interval.1));
    let mask = m.unsqueeze_dims::<4>(&[1, 2, 3]).expand(v.dims());
    v.clone().mask_where(mask, base.clone() + (v - base) * scale)
}

/// The reference's `forward_with_cfg`: takes a doubled batch `[x; x]` with labels `[y; null]`,
/// evaluates the first half twice, guides, and returns the guided velocity for both halves.
pub fn forward_with_cfg(
    net: &DitDh,
    x: Tensor<4>,
    t: Tensor<1>,
    y: Tensor<1, Int>,
    scale: f64,
    interval: (f64, f64),
) -> Tensor<4> {
    assert!(interval.0 < interval.1, "cfg interval must be (min, max) with min < max");
    let n = x.dims()[0];
    let half = x.narrow(0, 0, n / 2);
    let out = net.forward(Tensor::cat(vec![half.clone(), half], 0), t.clone(), y);
    let cond = out.clone().narrow(0, 0, n / 2);
    let uncond = out.narrow(0, n / 2, n - n / 2);
    let guided = apply_guidance(cond, uncond, &t.narrow(0, 0, n / 2), scale, interval);
    Tensor::cat(vec![guided.clone(), guided], 0)
}

/// The reference's `forward_with_autoguidance`.
pub fn forward_with_autoguidance(
    net: &DitDh,
    guide: &DitDh,
    x: Tensor<4>,
    t: Tensor<1>,
    y: Tensor<1, Int>,
    scale: f64,
    interval: (f64, f64),
) -> Tensor<4> {
    assert!(interval.0 < interval.1, "guidance interval must be (min, max) with min < max");
    let v = net.forward(x.clone(), t.clone(), y.clone());
    let vg = guide.forward(x, t.clone(), y);
    apply_guidance(v, vg, &t, scale, interval)
}

impl<'a> Guidance<'a> {
    /// The guidance a weight `scale` and an `interval` of t select, as `rectok generate` reads
    /// `--cfg` / `--guide`: AutoGuidance whenever a guide is loaded, else classifier-free
    /// guidance above weight 1, else none.
    pub fn select(guide: Option<&'a DitDh>, scale: f64, interval: (f64, f64)) -> Self {
        match guide {
            Some(guide) => Guidance::Auto { guide, scale, interval },
            None if scale > 1.0 => Guidance::Cfg { scale, interval },
            None => Guidance::None,
        }
    }

    /// The velocity for the current state. Under CFG, `x` is the doubled batch `[x; x]` and `y`
    /// ends with the null labels, as the reference samples.
    pub fn velocity(&self, net: &DitDh, x: Tensor<4>, t: Tensor<1>, y: Tensor<1, Int>) -> Tensor<4> {
        match *self {
            Guidance::None => net.forward(x, t, y),
            Guidance::Cfg { scale, interval } => forward_with_cfg(net, x, t, y, scale, interval),
            Guidance::Auto { guide, scale, interval } => {
                forward_with_autoguidance(net, guide, x, t, y, scale, interval)
            }
        }
    }

    /// Whether the batch is doubled with null labels (CFG with a weight above 1).
    pub fn doubles_batch(&self) -> bool {
        matches!(self, Guidance::Cfg { .. })
    }
}
