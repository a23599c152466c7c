//! Rotary position embeddings. Each network family has its own table convention (one file each);
//! all of them are applied the same way here, `y = x ⊙ cos + rotate_half(x) ⊙ sin`, with either the
//! *adjacent-pair* `rotate_half` of RecTok and the DiT, `(x[2i], x[2i+1]) → (−x[2i+1], x[2i])`, or
//! the *split-half* one of DINOv3, `[x₁ | x₂] → [−x₂ | x₁]`.

pub mod dinov3;
pub mod dit;
pub mod tokenizer;

/// Which channels `rotate_half` pairs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum RopeStyle {
    /// Channels `2i` and `2i+1` (RecTok, DiT^DH).
    #[default]
    AdjacentPairs,
    /// Channel `i` and `i + D/2` (DINOv3 / HF Llama style).
    SplitHalf,
}

use burn::prelude::*;

/// Per-token, per-channel cos/sin tables, `[1 or B, L, head_dim]` each.
///
/// `sin_signed` stores `sin` with the sign of `rotate_half` folded in (even channels negated for
/// adjacent pairs, the first half negated for split halves), so that applying the table needs only
/// a swap: `rotate_half(x) ⊙ sin = swap(x) ⊙ sin_signed`. The first `prefix` tokens of a sequence
/// (CLS / register tokens of DINOv3) have no row and are not rotated.
#[derive(Clone, Debug)]
pub struct RopeTable {
    /// `cos(angle)`.
    pub cos: Tensor<3>,
    /// `sin(angle)` with the rotation's signs folded in.
    pub sin_signed: Tensor<3>,
    /// Channel pairing of the rotation.
    pub style: RopeStyle,
    /// Leading tokens left unrotated.
    pub prefix: usize,
}

impl RopeTable {
    /// Builds the device tables from host angles' cos and sin, each `len × dim`, row-major, for
    /// the adjacent-pair rotation.
    pub fn from_cos_sin(cos: Vec<f32>, sin: Vec<f32>, len: usize, dim: usize, device: &Device) -> Self {
        Self::with_style(cos, sin, len, dim, RopeStyle::AdjacentPairs, 0, device)
    }

    /// Builds the tables for a rotation style, leaving `prefix` leading tokens unrotated.
    pub fn with_style(
        cos: Vec<f32>,
        sin: Vec<f32>,
        len: usize,
        dim: usize,
        style: RopeStyle,
        prefix: usize,
        device: &Device,
    ) -> Self {
        assert_eq!(cos.len(), len * dim);
        assert_eq!(sin.len(), len * dim);
        let negate = |c: usize| match style {
            RopeStyle::AdjacentPairs => c.is_multiple_of(2),
            RopeStyle::SplitHalf => c < dim / 2,
        };
        let sin_signed: Vec<f32> = sin.iter().enumerate().map(|(i, &s)| if negate(i % dim) { -s } else { s }).collect();
        Self {
            cos: Tensor::from_data(TensorData::new(cos, [1, len, dim]), device),
            sin_signed: Tensor::from_data(TensorData::new(sin_signed, [1, len, dim]), device),
            style,
            prefix,
        }
    }

    /// Keeps, per sample, the rows named by `ids` (`[B, L']`): visible tokens keep the rotation of
    /// their original grid position under MAE masking.
    pub fn gather_rows(&self, ids: &Tensor<2, Int>) -> Self {
        let [b, l] = ids.dims();
        let dim = self.cos.dims()[2];
        let idx = ids.clone().unsqueeze_dim::<3>(2).expand([b, l, dim]);
        let take = |t: &Tensor<3>| {
            let [_, len, _] = t.dims();
            t.clone().expand([b, len, dim]).gather(1, idx.clone())
        };
        Self { cos: take(&self.cos), sin_signed: take(&self.sin_signed), style: self.style, prefix: self.prefix }
    }

    /// Applies the rotation to `x` of shape `[B, heads, prefix + L, head_dim]`.
    pub fn apply(&self, x: Tensor<4>) -> Tensor<4> {
        if self.prefix > 0 {
            let n = x.dims()[2];
            let head = x.clone().narrow(2, 0, self.prefix);
            let rest = x.narrow(2, self.prefix, n - self.prefix);
            let unprefixed = Self { prefix: 0, ..self.clone() };
            return Tensor::cat(vec![head, unprefixed.apply(rest)], 2);
        }
        let [b, h, l, d] = x.dims();
        let swapped = match self.style {
            RopeStyle::AdjacentPairs => x.clone().reshape([b, h, l, d / 2, 2]).flip([4]).reshape([b, h, l, d]),
            RopeStyle::SplitHalf => {
                Tensor::cat(vec![x.clone().narrow(3, d / 2, d / 2), x.clone().narrow(3, 0, d / 2)], 3)
            }
        };
        x * self.cos.clone().unsqueeze_dim(1) + swapped * self.sin_signed.clone().unsqueeze_dim(1)
    }
}

/// `torch.linspace(start, end, steps)` in float32, reproducing PyTorch's two-sided evaluation
/// (the second half is computed backwards from `end`), so tables match bit for bit.
pub fn linspace_f32(start: f32, end: f32, steps: usize) -> Vec<f32> {
    match steps {
        0 => vec![],
        1 => vec![start],
        _ => {
            let step = (end - start) / (steps - 1) as f32;
            let halfway = steps / 2;
            (0..steps)
                .map(|i| if i < halfway { start + step * i as f32 } else { end - step * (steps - i - 1) as f32 })
                .collect()
        }
    }
}
