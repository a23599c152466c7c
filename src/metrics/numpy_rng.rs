//! numpy's legacy `RandomState` stream (MT19937), only as far as torch-fidelity needs it: the
//! Inception Score permutes its samples with `np.random.RandomState(2020).permutation(n)` before
//! splitting, so the same split membership needs the same generator.

/// A `numpy.random.RandomState(seed)`, MT19937 as seeded by `init_genrand`, whose stream continues
/// across calls (torch-fidelity's KID draws all its subsets from one generator).
pub struct LegacyRandomState {
    state: [u32; 624],
    pos: usize,
}

impl LegacyRandomState {
    /// `RandomState(seed)`.
    pub fn new(seed: u32) -> Self {
        let mut state = [0u32; 624];
        state[0] = seed;
        for i in 1..624 {
            state[i] = 1_812_433_253u32.wrapping_mul(state[i - 1] ^ (state[i - 1] >> 30)).wrapping_add(i as u32);
        }
        Self { state, pos: 624 }
    }

    fn next_u32(&mut self) -> u32 {
        if self.pos >= 624 {
            for i in 0..624 {
                let y = (self.state[i] & 0x8000_0000) | (self.state[(i + 1) % 624] & 0x7fff_ffff);
                let mut v = self.state[(i + 397) % 624] ^ (y >> 1);
                if y & 1 == 1 {
                    v ^= 0x9908_b0df;
                }
                self.state[i] = v;
            }
            self.pos = 0;
        }
        let mut y = self.state[self.pos];
        self.pos += 1;
        y ^= y >> 11;
        y ^= (y << 7) & 0x9d2c_5680;
        y ^= (y << 15) & 0xefc6_0000;
        y ^ (y >> 18)
    }

    /// numpy's `random_interval(max)`: uniform in `0..=max` by masked rejection.
    fn interval(&mut self, max: u32) -> u32 {
        if max == 0 {
            return 0;
        }
        let mask = u32::MAX >> max.leading_zeros();
        loop {
            let v = self.next_u32() & mask;
            if v <= max {
                return v;
            }
        }
    }

    /// `permutation(n)` (Fisher–Yates from the end); `choice(n, k, replace=False)` is its first
    /// `k` entries.
    pub fn permutation(&mut self, n: usize) -> Vec<usize> {
        assert!(n <= u32::MAX as usize, "permutation of more than 2^32 items");
        let mut v: Vec<usize> = (0..n).collect();
        for i in (1..n).rev() {
            v.swap(i, self.interval(i as u32) as usize);
        }
        v
    }
}

/// `numpy.random.RandomState(seed).permutation(n)`.
pub fn legacy_permutation(n: usize, seed: u32) -> Vec<usize> {
    LegacyRandomState::new(seed).permutation(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_numpy_for_small_n() {
        // np.random.RandomState(2020).permutation(10)
        assert_eq!(legacy_permutation(10, 2020), vec![2, 4, 9, 1, 5, 7, 6, 3, 8, 0]);
    }
}
