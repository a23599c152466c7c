//! MAE random masking (`mae_random_masking` of the reference; docs/TRAINING.md §2.3).
//!
//! Per sample, `ids_shuffle = argsort(noise)`, `ids_restore = argsort(ids_shuffle)`,
//! `ids_keep = ids_shuffle[:len_keep]`, `ids_masked = ids_shuffle[len_keep:]` with
//! `len_keep = ceil(L·(1 − r))`. Visible tokens are kept in `ids_shuffle` order (so even r = 0
//! permutes them), and both decoders put them back with `ids_restore`.

use super::config::MaskRatioType;
use crate::rng::Rng;
use burn::prelude::*;

/// The mask ratio of one iteration: fixed, or `max(0, U(min, max))` drawn once per iteration.
pub fn draw_mask_ratio(kind: MaskRatioType, min: f64, max: f64, rng: &mut Rng) -> f64 {
    match kind {
        MaskRatioType::Fix => max,
        MaskRatioType::Random => rng.uniform_range(min, max).max(0.0),
    }
}

/// `ceil(L · (1 − r))` evaluated in double precision, as NumPy does.
pub fn len_keep(seq_len: usize, mask_ratio: f64) -> usize {
    ((seq_len as f64) * (1.0 - mask_ratio)).ceil() as usize
}

/// Index tensors describing one masking of a batch.
#[derive(Clone, Debug)]
pub struct MaskIds {
    /// `(B, L)`: position of each original token in the shuffled order.
    pub ids_restore: Tensor<2, Int>,
    /// `(B, len_keep)`: original positions of the visible tokens, in shuffled order.
    pub ids_keep: Tensor<2, Int>,
    /// `(B, L − len_keep)`: original positions of the masked tokens.
    pub ids_masked: Tensor<2, Int>,
    /// Number of visible tokens.
    pub len_keep: usize,
}

/// The uniform noise `(B, L)` whose per-sample argsort is the masking (the reference's
/// `torch.rand`), kept on the host where it is drawn: sorting it there needs no read back from
/// the device inside a training step.
#[derive(Clone, Debug, PartialEq)]
pub struct MaskNoise {
    /// `B·L` values, row-major.
    pub values: Vec<f32>,
    /// Tokens per sample `L`.
    pub seq_len: usize,
}

impl MaskNoise {
    /// Noise of `batch` samples of `seq_len` tokens.
    pub fn draw(batch: usize, seq_len: usize, rng: &mut Rng) -> Self {
        Self { values: rng.uniform_vec(batch * seq_len), seq_len }
    }

    /// Samples in the batch.
    pub fn batch(&self) -> usize {
        self.values.len() / self.seq_len.max(1)
    }

    /// The noise of samples `start .. start + len`.
    pub fn narrow(&self, start: usize, len: usize) -> Self {
        let l = self.seq_len;
        Self { values: self.values[start * l..(start + len) * l].to_vec(), seq_len: l }
    }
}

impl MaskIds {
    /// Builds the indices on `device` from per-sample uniform noise.
    pub fn from_noise(noise: &MaskNoise, len_keep: usize, device: &Device) -> Self {
        let (b, l) = (noise.batch(), noise.seq_len);
        assert!(len_keep <= l, "len_keep {len_keep} exceeds the sequence length {l}");
        let (mut restore, mut keep, mut masked) = (Vec::new(), Vec::new(), Vec::new());
        for row in noise.values.chunks(l) {
            let mut shuffle: Vec<usize> = (0..l).collect();
            shuffle.sort_by(|&i, &j| row[i].total_cmp(&row[j]));
            let mut rest: Vec<usize> = (0..l).collect();
            rest.sort_by_key(|&rank| shuffle[rank]);
            restore.extend(rest.iter().map(|&i| i as i64));
            keep.extend(shuffle[..len_keep].iter().map(|&i| i as i64));
            masked.extend(shuffle[len_keep..].iter().map(|&i| i as i64));
        }
        let int = |v: Vec<i64>, cols: usize| Tensor::<2, Int>::from_data(TensorData::new(v, [b, cols]), device);
        Self {
            ids_restore: int(restore, l),
            ids_keep: int(keep, len_keep),
            ids_masked: int(masked, l - len_keep),
            len_keep,
        }
    }

    /// Keeps the visible tokens of `x` `(B, L, D)` in shuffled order: `(B, len_keep, D)`.
    pub fn keep_tokens(&self, x: Tensor<3>) -> Tensor<3> {
        gather_tokens(x, &self.ids_keep)
    }
}

/// `out[b, j] = x[b, ids[b, j]]` along the token axis of a `(B, L, D)` tensor.
pub fn gather_tokens(x: Tensor<3>, ids: &Tensor<2, Int>) -> Tensor<3> {
    let [b, _, d] = x.dims();
    let n = ids.dims()[1];
    x.gather(1, ids.clone().unsqueeze_dim::<3>(2).expand([b, n, d]))
}

/// Re-inserts a learned mask embedding at masked positions (reference decoders): the visible
/// tokens `(B, Lv, D)` are followed by `L + 1 − Lv` copies of `mask` `(1, 1, D)` (one surplus copy
/// that is never selected, as in the reference) and reordered with `ids_restore` `(B, L)`.
pub fn unshuffle_with_mask(z: Tensor<3>, mask: Tensor<3>, ids_restore: &Tensor<2, Int>) -> Tensor<3> {
    let [b, lv, d] = z.dims();
    let l = ids_restore.dims()[1];
    let fill = mask.expand([b, l + 1 - lv, d]);
    gather_tokens(Tensor::cat(vec![z, fill], 1), ids_restore)
}
