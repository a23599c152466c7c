//! PSNR and SSIM of images with values in [0, 1] (data range 1).
//!
//! * PSNR: `10·log10(1 / MSE)` over all `3·H·W` values, per image — the reference's tokenizer
//!   evaluation (docs/SAMPLING_EVAL.md §2.2), on the float reconstruction before 8-bit export.
//! * SSIM: Wang et al. (2004) with an 11-tap Gaussian window of σ = 1.5, `K1 = 0.01`, `K2 = 0.03`,
//!   over the valid region (no padding), averaged over pixels and channels — the definition of
//!   `pytorch_msssim.ssim` and of `torchmetrics` / `skimage` with Gaussian weights.

/// Peak signal-to-noise ratio in dB of two equally sized images in [0, 1] (`∞` when identical).
pub fn psnr(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    let mse = a.iter().zip(b).map(|(&x, &y)| ((x - y) as f64).powi(2)).sum::<f64>() / a.len() as f64;
    10.0 * (1.0 / mse).log10()
}

fn gaussian_window(size: usize, sigma: f64) -> Vec<f64> {
    let c = (size / 2) as f64;
    let w: Vec<f64> = (0..size).map(|i| (-((i as f64 - c).powi(2)) / (2.0 * sigma * sigma)).exp()).collect();
    let s: f64 = w.iter().sum();
    w.into_iter().map(|v| v / s).collect()
}

/// Separable valid-mode filtering of one `h × w` plane.
fn filter_valid(x: &[f64], h: usize, w: usize, k: &[f64]) -> (Vec<f64>, usize, usize) {
    let n = k.len();
    let (oh, ow) = (h + 1 - n, w + 1 - n);
    let mut tmp = vec![0.0; h * ow];
    for y in 0..h {
        for xo in 0..ow {
            tmp[y * ow + xo] = (0..n).map(|i| x[y * w + xo + i] * k[i]).sum();
        }
    }
    let mut out = vec![0.0; oh * ow];
    for yo in 0..oh {
        for xo in 0..ow {
            out[yo * ow + xo] = (0..n).map(|i| tmp[(yo + i) * ow + xo] * k[i]).sum();
        }
    }
    (out, oh, ow)
}

/// Mean SSIM of two `(C, H, W)` images in [0, 1] (channels averaged).
pub fn ssim(a: &[f32], b: &[f32], channels: usize, height: usize, width: usize) -> f64 {
    assert_eq!(a.len(), channels * height * width);
    assert_eq!(b.len(), a.len());
    let win = gaussian_window(11.min(height).min(width), 1.5);
    let (c1, c2) = (0.01f64.powi(2), 0.03f64.powi(2));
    let plane = height * width;
    let mut total = 0.0;
    for c in 0..channels {
        let x: Vec<f64> = a[c * plane..(c + 1) * plane].iter().map(|&v| v as f64).collect();
        let y: Vec<f64> = b[c * plane..(c + 1) * plane].iter().map(|&v| v as f64).collect();
        let f = |v: &[f64]| filter_valid(v, height, width, &win).0;
        let (mx, my) = (f(&x), f(&y));
        let sq = |v: &[f64]| v.iter().map(|t| t * t).collect::<Vec<_>>();
        let xy: Vec<f64> = x.iter().zip(&y).map(|(p, q)| p * q).collect();
        let (sxx, syy, sxy) = (f(&sq(&x)), f(&sq(&y)), f(&xy));
        let n = mx.len();
        let mut acc = 0.0;
        for i in 0..n {
            let (mu1, mu2) = (mx[i], my[i]);
            let s1 = sxx[i] - mu1 * mu1;
            let s2 = syy[i] - mu2 * mu2;
            let s12 = sxy[i] - mu1 * mu2;
            acc += ((2.0 * mu1 * mu2 + c1) * (2.0 * s12 + c2)) / ((mu1 * mu1 + mu2 * mu2 + c1) * (s1 + s2 + c2));
        }
        total += acc / n as f64;
    }
    total / channels as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identical_images() {
        let a: Vec<f32> = (0..3 * 32 * 32).map(|i| ((i * 37) % 101) as f32 / 100.0).collect();
        assert!((ssim(&a, &a, 3, 32, 32) - 1.0).abs() < 1e-12);
        assert!(psnr(&a, &a).is_infinite());
    }

    #[test]
    fn psnr_of_known_mse() {
        let a = vec![0.5f32; 300];
        let b = vec![0.6f32; 300];
        // MSE = 0.01 → 20 dB.
        assert!((psnr(&a, &b) - 20.0).abs() < 1e-4);
    }
}
