//! Rotary position embeddings. Each network family has its own table convention (one file each);
//! all of them are applied the same way here, `y = x ⊙ cos + rotate_half(x) ⊙ sin`, with the
//! reference's *adjacent-pair* `rotate_half`: `(x[2i], x[2i+1]) → (−x[2i+1], x[2i])`.

pub mod dit;
pub mod tokenizer;

use burn::prelude::*;

/// Per-token, per-channel cos/sin tables, `[1 or B, L, head_dim]` each.
///
/// `sin_signed` stores `sin` with its even channels negated, so that applying the table needs only
/// a pair swap: `rotate_half(x) ⊙ sin = swap_pairs(x) ⊙ sin_signed`.
#[derive(Clone, Debug)]
pub struct RopeTable {
    /// `cos(angle)`.
    pub cos: Tensor<3>,
    /// `sin(angle)` with even channels negated.
    pub sin_signed: Tensor<3>,
}

impl RopeTable {
    /// Builds the device tables from host angles' cos and sin, each `len × dim`, row-major.
    pub fn from_cos_sin(cos: Vec<f32>, sin: Vec<f32>, len: usize, dim: usize, device: &Device) -> Self {
        assert_eq!(cos.len(), len * dim);
        assert_eq!(sin.len(), len * dim);
        let sin_signed: Vec<f32> = sin
            .iter()
            .enumerate()
            .map(|(i, &s)| if i % 2 == 0 { -s } else { s })
            .collect();
        Self {
            cos: Tensor::from_data(TensorData::new(cos, [1, len, dim]), device),
            sin_signed: Tensor::from_data(TensorData::new(sin_signed, [1, len, dim]), device),
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
        Self { cos: take(&self.cos), sin_signed: take(&self.sin_signed) }
    }

    /// Applies the rotation to `x` of shape `[B, heads, L, head_dim]`.
    pub fn apply(&self, x: Tensor<4>) -> Tensor<4> {
        let [b, h, l, d] = x.dims();
        let swapped = x.clone().reshape([b, h, l, d / 2, 2]).flip([4]).reshape([b, h, l, d]);
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
                .map(|i| {
                    if i < halfway {
                        start + step * i as f32
                    } else {
                        end - step * (steps - i - 1) as f32
                    }
                })
                .collect()
        }
    }
}
