//! Evaluation metrics against values computed once with scipy / numpy (tests/fixtures/fid/):
//! Fréchet distance (pytorch-fid's formula, including a singular covariance), streaming
//! statistics, Inception Score, the `.npz` format, and `rectok eval fd / stats` end to end.

use rectok::metrics::fid::{StatsAccumulator, frechet_distance, inception_score, read_npy, read_npz};
use std::path::{Path, PathBuf};
use std::process::Command;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/fid").join(name)
}

fn expected(key: &str) -> f64 {
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(fixture("expected.json")).unwrap()).unwrap();
    v[key].as_f64().unwrap()
}

fn rel(a: f64, b: f64) -> f64 {
    (a - b).abs() / b.abs().max(1e-12)
}

#[test]
fn frechet_distance_matches_scipy_including_a_singular_covariance() {
    let (a, b, c) = (read_npz(&fixture("a.npz")).unwrap(), read_npz(&fixture("b.npz")).unwrap(), read_npz(&fixture("c.npz")).unwrap());
    for (name, x, y) in [("fd_ab", &a, &b), ("fd_ac", &a, &c)] {
        let got = frechet_distance(x, y).unwrap();
        eprintln!("{name}: rectok {got}, scipy {}, relative difference {:.2e}", expected(name), rel(got, expected(name)));
        assert!(rel(got, expected(name)) < 1e-6, "{name}: {got} vs scipy {}", expected(name));
    }
    // Singular against itself: exactly 0 up to round-off (scipy: -4.5e-7).
    let cc = frechet_distance(&c, &c).unwrap();
    eprintln!("fd_cc: rectok {cc:e}, scipy {:e}", expected("fd_cc"));
    assert!(cc.abs() < 1e-6, "{cc}");
}

#[test]
fn streaming_statistics_match_numpy() {
    let (shape, values) = read_npy(&fixture("a_features.npy")).unwrap();
    let d = shape[1];
    let mut acc = StatsAccumulator::new(d);
    let f: Vec<f32> = values.iter().map(|&v| v as f32).collect();
    // Uneven batches.
    for chunk in f.chunks(d * 37) {
        acc.add(chunk).unwrap();
    }
    let got = acc.finish().unwrap();
    let want = read_npz(&fixture("a.npz")).unwrap();
    assert_eq!(got.count, shape[0]);
    let scale = want.sigma.iter().map(|v| v.abs()).fold(0.0, f64::max);
    let worst = got.sigma.iter().zip(&want.sigma).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max) / scale;
    assert!(worst < 1e-5, "covariance differs by {worst} (relative to its largest entry)");
    let worst_mu = got.mu.iter().zip(&want.mu).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max);
    assert!(worst_mu < 1e-5, "{worst_mu}");
}

#[test]
fn inception_score_matches_the_reference_formula() {
    let (shape, values) = read_npy(&fixture("logits.npy")).unwrap();
    let logits: Vec<f32> = values.iter().map(|&v| v as f32).collect();
    let (mean, std) = inception_score(&logits, shape[1], 10, None).unwrap();
    assert!(rel(mean, expected("is_mean")) < 1e-6 && rel(std, expected("is_std")) < 1e-5, "{mean} ± {std}");
}

#[test]
fn eval_commands_end_to_end() {
    let rectok = || {
        let mut c = Command::new(env!("CARGO_BIN_EXE_rectok"));
        c.env("RUST_LOG", "warn");
        c
    };
    let o = rectok().args(["eval", "fd"]).arg(fixture("a.npz")).arg(fixture("b.npz")).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let last: f64 = String::from_utf8_lossy(&o.stdout).lines().last().unwrap().trim().parse().unwrap();
    assert!(rel(last, expected("fd_ab")) < 1e-6);

    let dir = tempfile::tempdir().unwrap();
    for i in 0..4u8 {
        image::RgbImage::from_fn(48, 48, |x, y| image::Rgb([x as u8 * 5, y as u8 * (i + 1), 40 * i])).save(dir.path().join(format!("{i}.png"))).unwrap();
    }
    std::fs::write(dir.path().join("notes.txt"), "not an image").unwrap();
    let out = dir.path().join("stats.npz");
    let o = rectok().args(["eval", "stats", "--extractor", "effnet", "--batch-size", "3"]).arg(dir.path()).arg("-o").arg(&out).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let s = read_npz(&out).unwrap();
    assert_eq!((s.dim(), s.sigma.len()), (1280, 1280 * 1280));
    assert!(frechet_distance(&s, &s).unwrap().abs() < 1e-6);
    // Bad inputs: a missing array, a non-npz file.
    let o = rectok().args(["eval", "fd"]).arg(fixture("a.npz")).arg(fixture("expected.json")).output().unwrap();
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && e.contains("expected.json") && e.contains("not an .npz"), "{e}");
    let o = rectok().args(["eval", "stats", "--extractor", "inception"]).arg(dir.path()).arg("-o").arg(&out).output().unwrap();
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("not implemented yet"));
}

#[test]
fn psnr_and_ssim_match_scikit_image() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/ssim");
    let planes = |name: &str| -> (Vec<f32>, usize, usize) {
        let img = image::open(dir.join(name)).unwrap().to_rgb8();
        let (w, h) = (img.width() as usize, img.height() as usize);
        let mut v = Vec::with_capacity(3 * h * w);
        for c in 0..3 {
            v.extend(img.pixels().map(|p| p.0[c] as f32 / 255.0));
        }
        (v, h, w)
    };
    let ((a, h, w), (b, _, _)) = (planes("a.png"), planes("b.png"));
    let want: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join("expected.json")).unwrap()).unwrap();
    let (ssim, psnr) = (rectok::metrics::ssim(&a, &b, 3, h, w), rectok::metrics::psnr(&a, &b));
    let (ws, wp) = (want["ssim"].as_f64().unwrap(), want["psnr"].as_f64().unwrap());
    eprintln!("SSIM {ssim} (scikit-image {ws}), PSNR {psnr} (scikit-image {wp})");
    assert!((ssim - ws).abs() < 1e-4 && (psnr - wp).abs() < 1e-4, "SSIM {ssim} vs {ws}, PSNR {psnr} vs {wp}");
}
