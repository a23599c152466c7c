//! A small, seedable, serialisable random number generator.
//!
//! Every random draw the reference makes (mask noise, posterior ε, flow noise level and noise,
//! label dropout, initial sampling noise) is made explicit in this crate: model code takes the
//! drawn tensors as arguments, and this generator produces them. Its whole state is four `u64`s
//! (plus a cached normal), so training checkpoints can store it and `--resume` continues the exact
//! same stream.

use burn::tensor::{Device, Tensor, TensorData};
use serde::{Deserialize, Serialize};

/// xoshiro256++ with a polar-method normal sampler.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Rng {
    s: [u64; 4],
    /// Second Box–Muller value, as f64 bits (exact through any serialisation).
    spare_normal: Option<u64>,
}

fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl Rng {
    /// A generator whose stream is fully determined by `seed`.
    pub fn seed_from(seed: u64) -> Self {
        let mut sm = seed;
        let s = [splitmix64(&mut sm), splitmix64(&mut sm), splitmix64(&mut sm), splitmix64(&mut sm)];
        Self { s, spare_normal: None }
    }

    /// The stream of item `index` under `seed`: independent of how items are batched or ordered
    /// (sample `i` of a generation run gets the same noise at any batch size).
    pub fn for_item(seed: u64, index: u64) -> Self {
        let mut sm = seed ^ 0xD1B5_4A32_D192_ED03;
        Self::seed_from(splitmix64(&mut sm) ^ index.wrapping_mul(0x9E37_79B9_7F4A_7C15).rotate_left(17))
    }

    /// An independent child stream (for worker threads or sub-tasks), derived deterministically.
    pub fn fork(&mut self) -> Self {
        Self::seed_from(self.next_u64())
    }

    /// Next raw 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let result = (self.s[0].wrapping_add(self.s[3])).rotate_left(23).wrapping_add(self.s[0]);
        let t = self.s[1] << 17;
        self.s[2] ^= self.s[0];
        self.s[3] ^= self.s[1];
        self.s[1] ^= self.s[2];
        self.s[0] ^= self.s[3];
        self.s[2] ^= t;
        self.s[3] = self.s[3].rotate_left(45);
        result
    }

    /// Uniform in [0, 1) with 53 random bits.
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform in [lo, hi).
    pub fn uniform_range(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.uniform()
    }

    /// Uniform integer in [0, n).
    pub fn below(&mut self, n: usize) -> usize {
        assert!(n > 0, "Rng::below(0)");
        // Lemire's multiply-shift; the bias for n << 2^64 is negligible.
        ((self.next_u64() as u128 * n as u128) >> 64) as usize
    }

    /// Standard normal N(0, 1) (Marsaglia's polar method: no trigonometry, one draw in two is
    /// cached).
    pub fn normal(&mut self) -> f64 {
        if let Some(bits) = self.spare_normal.take() {
            return f64::from_bits(bits);
        }
        loop {
            let u = 2.0 * self.uniform() - 1.0;
            let v = 2.0 * self.uniform() - 1.0;
            let s = u * u + v * v;
            if s > 0.0 && s < 1.0 {
                let f = (-2.0 * s.ln() / s).sqrt();
                self.spare_normal = Some((v * f).to_bits());
                return u * f;
            }
        }
    }

    /// Fisher–Yates shuffle.
    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            items.swap(i, self.below(i + 1));
        }
    }

    /// `n` uniform [0, 1) values as f32.
    pub fn uniform_vec(&mut self, n: usize) -> Vec<f32> {
        (0..n).map(|_| self.uniform() as f32).collect()
    }

    /// `n` standard-normal values as f32.
    pub fn normal_vec(&mut self, n: usize) -> Vec<f32> {
        (0..n).map(|_| self.normal() as f32).collect()
    }

    /// A tensor of uniform [0, 1) draws (like `torch.rand`).
    pub fn uniform_tensor<const D: usize>(&mut self, shape: [usize; D], device: &Device) -> Tensor<D> {
        Tensor::from_data(TensorData::new(self.uniform_vec(shape.iter().product()), shape), device)
    }

    /// A tensor of standard-normal draws (like `torch.randn`).
    pub fn normal_tensor<const D: usize>(&mut self, shape: [usize; D], device: &Device) -> Tensor<D> {
        Tensor::from_data(TensorData::new(self.normal_vec(shape.iter().product()), shape), device)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_stream_and_state_roundtrip() {
        let mut a = Rng::seed_from(7);
        let mut b = Rng::seed_from(7);
        for _ in 0..10 {
            assert_eq!(a.next_u64(), b.next_u64());
        }
        let _ = a.normal();
        let saved = serde_json::to_string(&a).unwrap();
        let mut c: Rng = serde_json::from_str(&saved).unwrap();
        assert_eq!(a.normal(), c.normal());
        assert_eq!(a.uniform(), c.uniform());
    }

    #[test]
    fn moments_are_sane() {
        let mut r = Rng::seed_from(1);
        let n = 200_000;
        let u: Vec<f64> = (0..n).map(|_| r.uniform()).collect();
        let mean = u.iter().sum::<f64>() / n as f64;
        assert!((mean - 0.5).abs() < 0.01, "uniform mean {mean}");
        let z: Vec<f64> = (0..n).map(|_| r.normal()).collect();
        let m = z.iter().sum::<f64>() / n as f64;
        let v = z.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / n as f64;
        assert!(m.abs() < 0.01 && (v - 1.0).abs() < 0.02, "normal mean {m} var {v}");
    }
}
