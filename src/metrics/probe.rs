//! A softmax-regression head on standardised features, trained with Adam and cross-entropy at a
//! constant learning rate, no weight decay: the classifier of the linear probe
//! ([`crate::eval::probe`]) and of the teacher's class check.

use crate::rng::Rng;
use anyhow::{Result, bail};

/// Features and labels of a dataset.
#[derive(Clone, Debug)]
pub struct FeatureSet {
    /// One row per image.
    pub features: Vec<Vec<f32>>,
    /// Class of each row.
    pub labels: Vec<usize>,
}

/// How the head is trained.
#[derive(Clone, Debug)]
pub struct FitOptions {
    /// Passes over the training features.
    pub epochs: usize,
    /// Adam learning rate.
    pub lr: f64,
    /// Mini-batch size.
    pub batch_size: usize,
    /// Seed of the mini-batch order.
    pub seed: u64,
}

impl Default for FitOptions {
    fn default() -> Self {
        Self { epochs: 100, lr: 1e-2, batch_size: 256, seed: 0 }
    }
}

/// A trained softmax-regression head on standardised features.
#[derive(Clone, Debug)]
pub struct LinearProbe {
    /// Feature width.
    pub dim: usize,
    classes: usize,
    mean: Vec<f32>,
    inv_std: Vec<f32>,
    /// `classes × dim`, row-major.
    weight: Vec<f32>,
    bias: Vec<f32>,
}

impl LinearProbe {
    fn standardized(&self, x: &[f32], out: &mut [f32]) {
        for (i, o) in out.iter_mut().enumerate() {
            *o = (x[i] - self.mean[i]) * self.inv_std[i];
        }
    }

    fn logits(&self, x: &[f32], out: &mut [f32]) {
        for (k, o) in out.iter_mut().enumerate() {
            let w = &self.weight[k * self.dim..(k + 1) * self.dim];
            *o = self.bias[k] + w.iter().zip(x).map(|(a, b)| a * b).sum::<f32>();
        }
    }

    /// Trains the head.
    pub fn fit(train: &FeatureSet, classes: usize, config: &FitOptions) -> Result<Self> {
        let n = train.features.len();
        if n == 0 {
            bail!("no training features");
        }
        if let Some(&bad) = train.labels.iter().find(|&&l| l >= classes) {
            bail!("label {bad} out of range for {classes} classes");
        }
        let dim = train.features[0].len();
        let mut mean = vec![0f64; dim];
        let mut var = vec![0f64; dim];
        for f in &train.features {
            for (m, &v) in mean.iter_mut().zip(f) {
                *m += v as f64 / n as f64;
            }
        }
        for f in &train.features {
            for ((s, &v), m) in var.iter_mut().zip(f).zip(&mean) {
                *s += (v as f64 - m).powi(2) / n as f64;
            }
        }
        let mut probe = Self {
            dim,
            classes,
            mean: mean.iter().map(|&m| m as f32).collect(),
            inv_std: var.iter().map(|&v| (1.0 / (v.sqrt() + 1e-6)) as f32).collect(),
            weight: vec![0.0; classes * dim],
            bias: vec![0.0; classes],
        };
        let x: Vec<Vec<f32>> = train
            .features
            .iter()
            .map(|f| {
                let mut s = vec![0f32; dim];
                probe.standardized(f, &mut s);
                s
            })
            .collect();
        let (b1, b2, eps) = (0.9f64, 0.999f64, 1e-8f64);
        let nparam = classes * (dim + 1);
        let (mut m, mut v) = (vec![0f64; nparam], vec![0f64; nparam]);
        let mut order: Vec<usize> = (0..n).collect();
        let mut rng = Rng::seed_from(config.seed);
        let mut t = 0i32;
        let mut logits = vec![0f32; classes];
        let mut grad = vec![0f64; nparam];
        for _ in 0..config.epochs {
            rng.shuffle(&mut order);
            for chunk in order.chunks(config.batch_size.max(1)) {
                grad.iter_mut().for_each(|g| *g = 0.0);
                for &i in chunk {
                    probe.logits(&x[i], &mut logits);
                    let mx = logits.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
                    let z: f32 = logits.iter().map(|l| (l - mx).exp()).sum();
                    for k in 0..classes {
                        let p = ((logits[k] - mx).exp() / z) as f64 - if k == train.labels[i] { 1.0 } else { 0.0 };
                        let p = p / chunk.len() as f64;
                        let row = &mut grad[k * dim..(k + 1) * dim];
                        for (g, &xi) in row.iter_mut().zip(&x[i]) {
                            *g += p * xi as f64;
                        }
                        grad[classes * dim + k] += p;
                    }
                }
                t += 1;
                let (c1, c2) = (1.0 - b1.powi(t), 1.0 - b2.powi(t));
                for j in 0..nparam {
                    m[j] = b1 * m[j] + (1.0 - b1) * grad[j];
                    v[j] = b2 * v[j] + (1.0 - b2) * grad[j] * grad[j];
                    let step = config.lr * (m[j] / c1) / ((v[j] / c2).sqrt() + eps);
                    if j < classes * dim {
                        probe.weight[j] -= step as f32;
                    } else {
                        probe.bias[j - classes * dim] -= step as f32;
                    }
                }
            }
        }
        Ok(probe)
    }

    /// Predicted class of one feature row.
    pub fn predict(&self, features: &[f32]) -> usize {
        let mut s = vec![0f32; self.dim];
        self.standardized(features, &mut s);
        let mut logits = vec![0f32; self.classes];
        self.logits(&s, &mut logits);
        logits.iter().enumerate().fold((0, f32::NEG_INFINITY), |best, (k, &l)| if l > best.1 { (k, l) } else { best }).0
    }

    /// Top-1 accuracy on a feature set.
    pub fn accuracy(&self, set: &FeatureSet) -> f64 {
        let hits = set.features.iter().zip(&set.labels).filter(|(f, l)| self.predict(f) == **l).count();
        hits as f64 / set.features.len().max(1) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn separable_classes_are_learned_and_noise_is_not() {
        let mut rng = Rng::seed_from(3);
        let make = |rng: &mut Rng, n: usize, signal: f32| {
            let mut set = FeatureSet { features: Vec::new(), labels: Vec::new() };
            for i in 0..n {
                let label = i % 3;
                let mut f: Vec<f32> = (0..8).map(|_| rng.normal() as f32).collect();
                f[label] += signal * 3.0;
                set.features.push(f);
                set.labels.push(label);
            }
            set
        };
        let config = FitOptions { epochs: 30, ..Default::default() };
        let (train, val) = (make(&mut rng, 300, 1.0), make(&mut rng, 150, 1.0));
        let probe = LinearProbe::fit(&train, 3, &config).unwrap();
        assert!(probe.accuracy(&val) > 0.9, "{}", probe.accuracy(&val));
        let (train, val) = (make(&mut rng, 300, 0.0), make(&mut rng, 150, 0.0));
        let probe = LinearProbe::fit(&train, 3, &config).unwrap();
        assert!(probe.accuracy(&val) < 0.5, "{}", probe.accuracy(&val));
    }
}
