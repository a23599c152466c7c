//! Feature statistics and the distances computed on them: Fréchet distance (FID when the features
//! are Inception pool3), Inception Score, and the ADM / torch-fidelity `.npz` statistics format
//! (docs/SAMPLING_EVAL.md §3).

use super::numpy_rng::LegacyRandomState;
use anyhow::{Context, Result, anyhow, bail};
use nalgebra::{DMatrix, DVector};
use std::io::{Read, Write};
use std::path::Path;

/// Mean and covariance of a feature set.
#[derive(Clone, Debug, PartialEq)]
pub struct FeatureStats {
    /// Mean, `d`.
    pub mu: Vec<f64>,
    /// Covariance, `d × d` row-major (unbiased: divided by `n − 1`, as `numpy.cov`).
    pub sigma: Vec<f64>,
    /// Number of feature vectors (0 when read from a file that does not say).
    pub count: usize,
}

impl FeatureStats {
    /// Feature width.
    pub fn dim(&self) -> usize {
        self.mu.len()
    }
}

/// Streaming mean and covariance in f64: `add` batches of rows, then [`finish`](Self::finish).
#[derive(Clone, Debug)]
pub struct StatsAccumulator {
    dim: usize,
    count: usize,
    /// Shift (the first row) subtracted before accumulating, so the sums stay small and the
    /// covariance does not lose digits to cancellation.
    shift: Option<Vec<f64>>,
    sum: DVector<f64>,
    outer: DMatrix<f64>,
}

impl StatsAccumulator {
    /// An empty accumulator of `dim`-wide features.
    pub fn new(dim: usize) -> Self {
        Self { dim, count: 0, shift: None, sum: DVector::zeros(dim), outer: DMatrix::zeros(dim, dim) }
    }

    /// Adds `rows` feature vectors stored row-major in `features`.
    pub fn add(&mut self, features: &[f32]) -> Result<()> {
        if !features.len().is_multiple_of(self.dim) {
            bail!("{} values are not a whole number of {}-wide features", features.len(), self.dim);
        }
        let rows = features.len() / self.dim;
        if rows == 0 {
            return Ok(());
        }
        let shift = self.shift.get_or_insert_with(|| features[..self.dim].iter().map(|&v| v as f64).collect());
        let mut x = DMatrix::<f64>::zeros(rows, self.dim);
        for r in 0..rows {
            for c in 0..self.dim {
                let v = features[r * self.dim + c] as f64;
                if !v.is_finite() {
                    bail!("feature {c} of row {r} is {v}");
                }
                x[(r, c)] = v - shift[c];
            }
        }
        self.sum += x.row_sum().transpose();
        self.outer += x.transpose() * &x;
        self.count += rows;
        Ok(())
    }

    /// The mean and unbiased covariance.
    pub fn finish(&self) -> Result<FeatureStats> {
        if self.count < 2 {
            bail!("the feature statistics need at least 2 images, got {} readable", self.count);
        }
        let n = self.count as f64;
        let mean_shifted = &self.sum / n;
        let cov = (&self.outer - &mean_shifted * mean_shifted.transpose() * n) / (n - 1.0);
        let shift = self.shift.as_ref().expect("count ≥ 2");
        let mu = mean_shifted.iter().zip(shift).map(|(m, s)| m + s).collect();
        let d = self.dim;
        let mut sigma = vec![0.0; d * d];
        for r in 0..d {
            for c in 0..d {
                sigma[r * d + c] = 0.5 * (cov[(r, c)] + cov[(c, r)]);
            }
        }
        Ok(FeatureStats { mu, sigma, count: self.count })
    }
}

fn matrix(d: usize, values: &[f64]) -> DMatrix<f64> {
    DMatrix::from_row_slice(d, d, values)
}

impl FeatureStats {
    /// Checks that the statistics describe a Gaussian: finite values, a `d × d` covariance that
    /// is symmetric (to 1e-6 of its largest entry) and positive semi-definite within round-off
    /// (a Cholesky factorisation of `Σ + 1e-6·max(diag Σ)·I` exists).
    pub fn validate(&self) -> Result<(), String> {
        let d = self.dim();
        if d == 0 || self.sigma.len() != d * d {
            return Err(format!("`mu` has {d} values but `sigma` {} (expected {d} × {d})", self.sigma.len()));
        }
        if let Some(i) = self.mu.iter().position(|v| !v.is_finite()) {
            return Err(format!("`mu` holds a non-finite value ({} at {i})", self.mu[i]));
        }
        if let Some(i) = self.sigma.iter().position(|v| !v.is_finite()) {
            return Err(format!("`sigma` holds a non-finite value ({} at ({}, {}))", self.sigma[i], i / d, i % d));
        }
        let scale = self.sigma.iter().fold(0.0f64, |m, v| m.max(v.abs()));
        for r in 0..d {
            for c in r + 1..d {
                let (a, b) = (self.sigma[r * d + c], self.sigma[c * d + r]);
                if (a - b).abs() > 1e-6 * scale {
                    return Err(format!("`sigma` is not symmetric: ({r}, {c}) = {a} but ({c}, {r}) = {b}"));
                }
            }
        }
        let max_diag = (0..d).map(|i| self.sigma[i * d + i]).fold(0.0f64, f64::max);
        let mut shifted = matrix(d, &self.sigma);
        for i in 0..d {
            shifted[(i, i)] += 1e-6 * max_diag.max(f64::MIN_POSITIVE);
        }
        if shifted.cholesky().is_none() {
            return Err("`sigma` is not a covariance matrix: it is not positive semi-definite".into());
        }
        Ok(())
    }
}

/// A factor `F` (`d × r`) with `F·Fᵀ = Σ` for a symmetric positive semi-definite `Σ`:
/// `U_r·diag(√λ_r)` over the eigenpairs above round-off (`λ > λ_max·d·ε`). The eigenpairs come
/// from an SVD (for such a matrix its singular vectors are eigenvectors), which nalgebra computes
/// accurately on rank-deficient covariances where its `SymmetricEigen` was seen to return
/// non-finite values.
fn psd_factor(sigma: &DMatrix<f64>) -> DMatrix<f64> {
    let d = sigma.nrows();
    let svd = sigma.clone().svd(true, false);
    let u = svd.u.expect("U requested");
    let values = &svd.singular_values;
    let cutoff = values.amax() * d as f64 * f64::EPSILON;
    let keep: Vec<usize> = (0..values.len()).filter(|&i| values[i] > cutoff).collect();
    let mut f = DMatrix::zeros(d, keep.len());
    for (j, &i) in keep.iter().enumerate() {
        f.set_column(j, &(u.column(i) * values[i].sqrt()));
    }
    f
}

/// `tr √(A·B)` for symmetric positive semi-definite `A`, `B`, exactly on rank-deficient ones.
///
/// With factors `A = F·Fᵀ` and `B = G·Gᵀ` (see [`psd_factor`]), the non-zero eigenvalues of `A·B`
/// are those of `Fᵀ·G·Gᵀ·F = (GᵀF)ᵀ(GᵀF)`, so `tr √(A·B)` is the sum of the singular values of
/// the small `r_B × r_A` matrix `GᵀF` (the Gram form). No square root of a round-off eigenvalue
/// enters the sum: statistics of a few images against themselves give exactly their trace, where
/// `√(√A·B·√A)` over the full `d × d` space gives round-off noise of ~1e-2 on 1280-d features.
pub fn trace_sqrt_product(a: &DMatrix<f64>, b: &DMatrix<f64>) -> f64 {
    let (f, g) = (psd_factor(a), psd_factor(b));
    if f.ncols() == 0 || g.ncols() == 0 {
        return 0.0;
    }
    (g.transpose() * f).singular_values().sum()
}

/// Fréchet distance `‖μ₁ − μ₂‖² + tr Σ₁ + tr Σ₂ − 2·tr √(Σ₁Σ₂)` between two Gaussians, exact on
/// rank-deficient covariances (see [`trace_sqrt_product`]).
pub fn frechet_distance(a: &FeatureStats, b: &FeatureStats) -> Result<f64> {
    let d = a.dim();
    if b.dim() != d {
        bail!("statistics of {d}-d and {}-d features cannot be compared", b.dim());
    }
    let diff: f64 = a.mu.iter().zip(&b.mu).map(|(x, y)| (x - y).powi(2)).sum();
    let (sa, sb) = (matrix(d, &a.sigma), matrix(d, &b.sigma));
    let fd = diff + sa.trace() + sb.trace() - 2.0 * trace_sqrt_product(&sa, &sb);
    if !fd.is_finite() {
        bail!("the Fréchet distance is not finite ({fd}): the statistics' values are too large to compare");
    }
    // A distance is ≥ 0; what lies below is round-off (~1e-15 of the traces).
    Ok(fd.max(0.0))
}

/// The seed of torch-fidelity's Inception-Score permutation
/// (`numpy.random.RandomState(2020).permutation(n)`, see [`super::numpy_rng`]).
pub const IS_PERMUTATION_SEED: u32 = 2020;

/// Inception Score from class logits (`n × classes`, row-major), the torch-fidelity way: rows
/// taken in `order` (torch-fidelity uses `numpy.random.RandomState(2020).permutation(n)`; `None`
/// keeps the given order), softmax in f64, `splits` equal splits, per split
/// `exp(mean_i KL(p_i ‖ mean_j p_j))`; returns (mean, population std) over the splits.
pub fn inception_score(logits: &[f32], classes: usize, splits: usize, order: Option<&[usize]>) -> Result<(f64, f64)> {
    if classes == 0 || !logits.len().is_multiple_of(classes) {
        bail!("{} logits are not rows of {classes} classes", logits.len());
    }
    let n = logits.len() / classes;
    if splits == 0 || n < splits {
        bail!("{n} images cannot make {splits} splits");
    }
    let probs: Vec<Vec<f64>> = (0..n)
        .map(|i| {
            let row = &logits[i * classes..(i + 1) * classes];
            let mx = row.iter().cloned().fold(f32::NEG_INFINITY, f32::max) as f64;
            let e: Vec<f64> = row.iter().map(|&l| (l as f64 - mx).exp()).collect();
            let z: f64 = e.iter().sum();
            e.into_iter().map(|v| v / z).collect()
        })
        .collect();
    let index: Vec<usize> = match order {
        Some(o) if o.len() == n => o.to_vec(),
        Some(o) => bail!("the permutation has {} entries for {n} images", o.len()),
        None => (0..n).collect(),
    };
    let mut scores = Vec::with_capacity(splits);
    for s in 0..splits {
        let (lo, hi) = (s * n / splits, (s + 1) * n / splits);
        let part: Vec<&Vec<f64>> = index[lo..hi].iter().map(|&i| &probs[i]).collect();
        let mut marginal = vec![0f64; classes];
        for p in &part {
            for (m, v) in marginal.iter_mut().zip(p.iter()) {
                *m += v / part.len() as f64;
            }
        }
        let kl: f64 = part
            .iter()
            .map(|p| {
                p.iter()
                    .zip(&marginal)
                    .map(|(&pi, &mi)| if pi > 0.0 { pi * (pi.ln() - mi.ln()) } else { 0.0 })
                    .sum::<f64>()
            })
            .sum::<f64>()
            / part.len() as f64;
        scores.push(kl.exp());
    }
    Ok(mean_std(&scores))
}

/// Mean and population standard deviation.
fn mean_std(values: &[f64]) -> (f64, f64) {
    let n = values.len() as f64;
    let mean = values.iter().sum::<f64>() / n;
    (mean, (values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n).sqrt())
}

/// Kernel Inception Distance (Bińkowski et al., 2018) as torch-fidelity computes it: `subsets`
/// random subsets of `subset_size` rows of each set (numpy `RandomState(2020).choice(n, size,
/// replace=False)`), cubic polynomial kernel `(x·y/d + 1)³`, unbiased MMD² per subset; returns
/// (mean, population std). The subset size is reduced to the smaller set when needed.
pub fn kernel_inception_distance(
    a: &[f32],
    b: &[f32],
    dim: usize,
    subsets: usize,
    subset_size: usize,
) -> Result<(f64, f64, usize)> {
    if dim == 0 || !a.len().is_multiple_of(dim) || !b.len().is_multiple_of(dim) {
        bail!("KID: feature arrays are not rows of {dim}");
    }
    let (na, nb) = (a.len() / dim, b.len() / dim);
    let m = subset_size.min(na).min(nb);
    if m < 2 {
        bail!("KID needs at least 2 images in each set ({na} and {nb})");
    }
    let mut rng = LegacyRandomState::new(IS_PERMUTATION_SEED);
    let gamma = 1.0 / dim as f64;
    let kernel_sum = |x: &[usize], xs: &[f32], y: &[usize], ys: &[f32], skip_diagonal: bool| -> f64 {
        let mut total = 0.0;
        for (i, &xi) in x.iter().enumerate() {
            let xr = &xs[xi * dim..(xi + 1) * dim];
            for (j, &yj) in y.iter().enumerate() {
                if skip_diagonal && i == j {
                    continue;
                }
                let yr = &ys[yj * dim..(yj + 1) * dim];
                let dot: f64 = xr.iter().zip(yr).map(|(&p, &q)| p as f64 * q as f64).sum();
                total += (dot * gamma + 1.0).powi(3);
            }
        }
        total
    };
    let mut mmds = Vec::with_capacity(subsets);
    for _ in 0..subsets {
        let ia: Vec<usize> = rng.permutation(na)[..m].to_vec();
        let ib: Vec<usize> = rng.permutation(nb)[..m].to_vec();
        let (kxx, kyy, kxy) =
            (kernel_sum(&ia, a, &ia, a, true), kernel_sum(&ib, b, &ib, b, true), kernel_sum(&ia, a, &ib, b, false));
        let m = m as f64;
        mmds.push((kxx + kyy) / (m * (m - 1.0)) - 2.0 * kxy / (m * m));
    }
    let (mean, std) = mean_std(&mmds);
    Ok((mean, std, m))
}

// ---------------------------------------------------------------------------------------------
// .npz statistics files (`numpy.savez(path, mu=…, sigma=…)`)
// ---------------------------------------------------------------------------------------------

/// An array read from a `.npy` entry: shape and values as f64.
fn parse_npy(bytes: &[u8], what: &str) -> Result<(Vec<usize>, Vec<f64>)> {
    if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" {
        bail!("{what}: not a .npy array");
    }
    let (header_len, start) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 => {
            if bytes.len() < 12 {
                bail!("{what}: truncated .npy header");
            }
            (u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize, 12)
        }
        v => bail!("{what}: unsupported .npy version {v}"),
    };
    let header = std::str::from_utf8(
        bytes.get(start..start + header_len).ok_or_else(|| anyhow!("{what}: truncated .npy header"))?,
    )
    .map_err(|_| anyhow!("{what}: .npy header is not text"))?;
    let field = |key: &str| -> Result<&str> {
        let at = header.find(&format!("'{key}'")).ok_or_else(|| anyhow!("{what}: .npy header has no `{key}`"))?;
        Ok(header[at + key.len() + 2..].trim_start().trim_start_matches(':').trim_start())
    };
    let descr = field("descr")?;
    let descr = descr.trim_start_matches('\'').split('\'').next().unwrap_or_default();
    if field("fortran_order")?.starts_with("True") {
        bail!("{what}: Fortran-ordered arrays are not supported");
    }
    let shape_text = field("shape")?;
    let shape_text = &shape_text[shape_text.find('(').ok_or_else(|| anyhow!("{what}: bad shape"))? + 1
        ..shape_text.find(')').ok_or_else(|| anyhow!("{what}: bad shape"))?];
    let shape: Vec<usize> = shape_text
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().map_err(|_| anyhow!("{what}: bad shape `{shape_text}`")))
        .collect::<Result<_>>()?;
    let n: usize = shape.iter().product();
    let data = &bytes[start + header_len..];
    let (size, dtype) = match descr {
        "<f8" => (8, "float64"),
        "<f4" => (4, "float32"),
        other => bail!("{what}: dtype `{other}` is not supported (float32 or float64 expected)"),
    };
    if data.len() < n * size {
        bail!("{what}: truncated data ({} bytes for {n} {dtype} values)", data.len());
    }
    let values = data[..n * size].chunks_exact(size).map(|c| match size {
        8 => f64::from_le_bytes(c.try_into().expect("8 bytes")),
        _ => f32::from_le_bytes(c.try_into().expect("4 bytes")) as f64,
    });
    Ok((shape, values.collect()))
}

fn npy_bytes(shape: &[usize], values: &[f64]) -> Vec<u8> {
    let shape_text = match shape.len() {
        1 => format!("({},)", shape[0]),
        _ => format!("({})", shape.iter().map(|s| s.to_string()).collect::<Vec<_>>().join(", ")),
    };
    let mut header = format!("{{'descr': '<f8', 'fortran_order': False, 'shape': {shape_text}, }}");
    // Pad so that the data starts on a 64-byte boundary, as numpy does.
    let total = 10 + header.len() + 1;
    header.push_str(&" ".repeat((64 - total % 64) % 64));
    header.push('\n');
    let mut out = Vec::with_capacity(10 + header.len() + values.len() * 8);
    out.extend_from_slice(b"\x93NUMPY\x01\x00");
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    for v in values {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out
}

/// Reads a float32 or float64 `.npy` file: shape and values.
pub fn read_npy(path: &Path) -> Result<(Vec<usize>, Vec<f64>)> {
    let bytes = std::fs::read(path).with_context(|| format!("{}: cannot read", path.display()))?;
    parse_npy(&bytes, &path.display().to_string())
}

/// The widest features read from a statistics file: twice Inception's pool3 (2048; EfficientNet:
/// 1280, DINOv2-g: 1536). The Fréchet distance costs O(d³): about 20 s at 4096 dimensions on two
/// cores, over 20 minutes and 6 GB at 16384.
pub const MAX_FEATURE_DIM: usize = 4096;

/// Reads `mu` and `sigma` from an `.npz` statistics file (ADM's `adm_in256_stats.npz`,
/// torch-fidelity / pytorch-fid caches, or one written by [`write_npz`]).
pub fn read_npz(path: &Path) -> Result<FeatureStats> {
    read_npz_of_dim(path, None)
}

/// The `.npz` archive at `path`.
fn open_npz(path: &Path) -> Result<zip::ZipArchive<std::fs::File>> {
    let file = std::fs::File::open(path).with_context(|| format!("{}: cannot open", path.display()))?;
    zip::ZipArchive::new(file).map_err(|e| anyhow!("{}: not an .npz file ({e})", path.display()))
}

/// The array `name` of an `.npz` statistics file.
fn read_npz_array(zip: &mut zip::ZipArchive<std::fs::File>, path: &Path, name: &str) -> Result<(Vec<usize>, Vec<f64>)> {
    let mut entry = zip
        .by_name(&format!("{name}.npy"))
        .map_err(|_| anyhow!("{}: no `{name}` array (statistics files hold `mu` and `sigma`)", path.display()))?;
    let mut bytes = Vec::new();
    entry.read_to_end(&mut bytes).with_context(|| format!("{}: reading `{name}`", path.display()))?;
    parse_npy(&bytes, &format!("{}: `{name}`", path.display()))
}

/// The feature width of an `.npz` statistics file, from `mu` alone (cheap: `sigma` is d² values).
pub fn npz_dim(path: &Path) -> Result<usize> {
    crate::data::images::require_regular_file(path, "a statistics file")?;
    let (shape, _) = read_npz_array(&mut open_npz(path)?, path, "mu")?;
    match shape.as_slice() {
        [0] => bail!("{}: empty statistics (`mu` has no values)", path.display()),
        [d] => Ok(*d),
        _ => bail!("{}: `mu` has shape {shape:?}; expected (d,)", path.display()),
    }
}

/// [`read_npz`], refusing a width other than `dim` before reading `sigma`.
pub fn read_npz_of_dim(path: &Path, dim: Option<usize>) -> Result<FeatureStats> {
    let d = npz_dim(path)?;
    if let Some(want) = dim
        && want != d
    {
        bail!(
            "{}: {d}-d statistics, but {want}-d ones are needed (statistics of other features cannot be compared)",
            path.display()
        );
    }
    if d > MAX_FEATURE_DIM {
        bail!("{}: {d}-d statistics; at most {MAX_FEATURE_DIM} dimensions are read", path.display());
    }
    let mut zip = open_npz(path)?;
    let (mu_shape, mu) = read_npz_array(&mut zip, path, "mu")?;
    let (sigma_shape, sigma) = read_npz_array(&mut zip, path, "sigma")?;
    let d = mu.len();
    if mu_shape.len() != 1 || sigma_shape != [d, d] {
        bail!("{}: `mu` has shape {mu_shape:?} and `sigma` {sigma_shape:?}; expected (d,) and (d, d)", path.display());
    }
    let stats = FeatureStats { mu, sigma, count: 0 };
    stats.validate().map_err(|e| anyhow!("{}: {e}", path.display()))?;
    Ok(stats)
}

/// Writes `mu` and `sigma` (float64) as an uncompressed `.npz`, atomically.
pub fn write_npz(stats: &FeatureStats, path: &Path) -> Result<()> {
    let d = stats.dim();
    let mut buffer = std::io::Cursor::new(Vec::new());
    {
        let mut zip = zip::ZipWriter::new(&mut buffer);
        let options = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Stored)
            .large_file(true);
        for (name, shape, values) in [("mu.npy", vec![d], &stats.mu), ("sigma.npy", vec![d, d], &stats.sigma)] {
            zip.start_file(name, options).context("writing .npz")?;
            zip.write_all(&npy_bytes(&shape, values)).context("writing .npz")?;
        }
        zip.finish().context("writing .npz")?;
    }
    crate::io::write_atomic(path, &buffer.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats(d: usize, rows: &[Vec<f32>]) -> FeatureStats {
        let mut acc = StatsAccumulator::new(d);
        for r in rows {
            acc.add(r).unwrap();
        }
        acc.finish().unwrap()
    }

    #[test]
    fn identical_gaussians_are_at_distance_zero_and_a_mean_shift_adds_its_square() {
        let rows: Vec<Vec<f32>> =
            (0..50).map(|i| vec![(i as f32).sin(), (i as f32 * 0.7).cos(), i as f32 * 0.01]).collect();
        let a = stats(3, &rows);
        assert!(frechet_distance(&a, &a).unwrap().abs() < 1e-9);
        let mut b = a.clone();
        b.mu[0] += 2.0;
        assert!((frechet_distance(&a, &b).unwrap() - 4.0).abs() < 1e-9);
        // A singular covariance (all rows identical in one coordinate) stays finite.
        let flat: Vec<Vec<f32>> = rows.iter().map(|r| vec![r[0], 1.0, r[2]]).collect();
        let c = stats(3, &flat);
        assert!(frechet_distance(&a, &c).unwrap().is_finite());
    }

    #[test]
    fn npz_round_trip() {
        let s = FeatureStats { mu: vec![1.0, -2.5], sigma: vec![2.0, 0.5, 0.5, 1.0], count: 0 };
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s.npz");
        write_npz(&s, &p).unwrap();
        assert_eq!(read_npz(&p).unwrap(), s);
    }

    #[test]
    fn inception_score_of_confident_uniform_predictions_is_the_class_count() {
        // Every image certain of its class, classes balanced: IS = number of classes.
        let classes = 4;
        let logits: Vec<f32> =
            (0..40).flat_map(|i| (0..classes).map(move |c| if c == i % classes { 50.0 } else { 0.0 })).collect();
        let (mean, std) = inception_score(&logits, classes, 2, None).unwrap();
        assert!((mean - 4.0).abs() < 1e-6 && std < 1e-6, "{mean} {std}");
    }
}
