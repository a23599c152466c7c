//! Evaluation metrics against values computed once with scipy / numpy (tests/fixtures/fid/):
//! Fréchet distance (pytorch-fid's formula, including a singular covariance), streaming
//! statistics, Inception Score, the `.npz` format, and `rectok eval fd / stats` end to end.

use burn::tensor::TensorData;
use rectok::metrics::extractor::Extractor;
use rectok::metrics::fid::kernel_inception_distance;
use rectok::metrics::fid::{
    IS_PERMUTATION_SEED, StatsAccumulator, frechet_distance, inception_score, read_npy, read_npz,
};
use rectok::metrics::inception::resize_tf1_bilinear;
use rectok::metrics::numpy_rng::legacy_permutation;
use rectok::weights::write_safetensors;
use std::path::{Path, PathBuf};

mod common;
use common::rectok;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/fid").join(name)
}

fn expected(key: &str) -> f64 {
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("expected.json")).unwrap()).unwrap();
    v[key].as_f64().unwrap()
}

fn rel(a: f64, b: f64) -> f64 {
    (a - b).abs() / b.abs().max(1e-12)
}

#[test]
fn frechet_distance_matches_scipy_including_a_singular_covariance() {
    let (a, b, c) = (
        read_npz(&fixture("a.npz")).unwrap(),
        read_npz(&fixture("b.npz")).unwrap(),
        read_npz(&fixture("c.npz")).unwrap(),
    );
    for (name, x, y) in [("fd_ab", &a, &b), ("fd_ac", &a, &c)] {
        let got = frechet_distance(x, y).unwrap();
        eprintln!(
            "{name}: rectok {got}, scipy {}, relative difference {:.2e}",
            expected(name),
            rel(got, expected(name))
        );
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
    // torch-fidelity's order: numpy's RandomState(2020) permutation.
    let order = legacy_permutation(shape[0], IS_PERMUTATION_SEED);
    let (mean, _) = inception_score(&logits, shape[1], 10, Some(&order)).unwrap();
    assert!(rel(mean, expected("is_mean_permuted")) < 1e-6, "{mean}");
}

#[test]
fn numpy_legacy_permutation_matches_numpy() {
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("expected.json")).unwrap()).unwrap();
    for n in [10usize, 1000, 50000] {
        let want: Vec<usize> = serde_json::from_value(v[format!("permutation_2020_{n}_head")].clone()).unwrap();
        let got = legacy_permutation(n, 2020);
        assert_eq!(&got[..want.len()], &want[..], "n = {n}");
    }
}

#[test]
fn kernel_inception_distance_matches_torch_fidelity() {
    let load = |n: &str| {
        let (shape, v) = read_npy(&fixture(n)).unwrap();
        (shape[1], v.iter().map(|&x| x as f32).collect::<Vec<f32>>())
    };
    let ((d, a), (_, b)) = (load("kid_a.npy"), load("kid_b.npy"));
    let (mean, std, m) = kernel_inception_distance(&a, &b, d, 7, 50).unwrap();
    assert_eq!(m, 50);
    eprintln!("KID {mean} ± {std}; torch-fidelity {} ± {}", expected("kid_mean"), expected("kid_std"));
    assert!(rel(mean, expected("kid_mean")) < 1e-5 && rel(std, expected("kid_std")) < 1e-4, "{mean} ± {std}");
}

fn inception_fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/inception").join(name)
}

/// The fixture's deterministic weight formula (tests/fixtures/inception/make_fixture.py).
fn formula_weights(key: &str, shape: &[usize]) -> Vec<f32> {
    let mut h: u64 = 0xCBF2_9CE4_8422_2325;
    for b in key.bytes() {
        h = (h ^ b as u64).wrapping_mul(0x100_0000_01B3);
    }
    let n: usize = shape.iter().product();
    (1..=n as u64)
        .map(|i| {
            let mut z = h.wrapping_add(i.wrapping_mul(0x9E37_79B9_7F4A_7C15));
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            let u = (z >> 40) as f64 / (1u64 << 24) as f64;
            let v = if key.ends_with("conv.weight") {
                (2.0 * u - 1.0) * (6.0 / (n / shape[0]) as f64).sqrt()
            } else if key.ends_with("bn.weight") {
                0.8 + 0.4 * u
            } else if key.ends_with("bn.bias") || key.ends_with("bn.running_mean") {
                0.2 * u - 0.1
            } else if key.ends_with("bn.running_var") {
                0.5 + u
            } else if key == "fc.weight" {
                (2.0 * u - 1.0) * (3.0f64 / 2048.0).sqrt()
            } else if key == "fc.bias" {
                0.1 * (2.0 * u - 1.0)
            } else {
                panic!("unexpected key {key}")
            };
            v as f32
        })
        .collect()
}

fn max_rel_diff(got: &[f32], want: &[f64]) -> f64 {
    assert_eq!(got.len(), want.len());
    let scale = want.iter().map(|v| v.abs()).fold(0.0, f64::max);
    got.iter().zip(want).map(|(&g, &w)| (g as f64 - w).abs()).fold(0.0, f64::max) / scale
}

#[test]
fn tf1_bilinear_resize_matches_torch_fidelity() {
    for (image, file, (h, w)) in
        [("image0.png", "resize0_101x77.npy", (101, 77)), ("image1.png", "resize1_53x61.npy", (53, 61))]
    {
        let img = image::open(inception_fixture(image)).unwrap().to_rgb8();
        let got = resize_tf1_bilinear(&img, h, w);
        let (shape, want) = read_npy(&inception_fixture(file)).unwrap();
        assert_eq!(shape, vec![3, h, w]);
        let worst = got.iter().zip(&want).map(|(&g, &w)| (g as f64 - w).abs()).fold(0.0, f64::max);
        assert!(worst < 1e-4, "{image} → {h}×{w}: max abs difference {worst} (of 255)");
    }
}

#[test]
fn inception_features_match_torch_fidelity_on_fixed_random_weights() {
    // Weights under torch-fidelity's key names, written as a safetensors file and loaded through
    // the user-facing `inception:PATH` extractor.
    let keys: Vec<serde_json::Value> =
        serde_json::from_str(&std::fs::read_to_string(inception_fixture("keys.json")).unwrap()).unwrap();
    assert_eq!(keys.len(), 5 * 94 + 2, "94 BasicConv2d (conv weight + 4 BatchNorm tensors) and fc");
    let tensors: Vec<(String, TensorData)> = keys
        .iter()
        .map(|k| {
            let key = k["key"].as_str().unwrap().to_string();
            let shape: Vec<usize> = serde_json::from_value(k["shape"].clone()).unwrap();
            let data = TensorData::new(formula_weights(&key, &shape), shape);
            (key, data)
        })
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let weights = dir.path().join("inception.safetensors");
    write_safetensors(&weights, tensors, Default::default()).unwrap();
    let device = burn::tensor::Device::flex();
    let extractor = Extractor::load(&format!("inception:{}", weights.display()), &device).unwrap();
    assert_eq!((extractor.metric_name(), extractor.dim(), extractor.classes()), ("FID", 2048, 1008));
    for i in 0..3 {
        let img = image::open(inception_fixture(&format!("image{i}.png"))).unwrap().to_rgb8();
        let f = extractor.features_and_logits(&[img], &device).unwrap();
        let (_, pool) = read_npy(&inception_fixture(&format!("pool{i}.npy"))).unwrap();
        let (_, logits) = read_npy(&inception_fixture(&format!("logits{i}.npy"))).unwrap();
        let (dp, dl) = (max_rel_diff(&f.pool, &pool), max_rel_diff(&f.logits, &logits));
        eprintln!("image{i}: pool3 max difference {dp:.2e}, logits {dl:.2e} (relative to the largest value)");
        assert!(dp < 1e-4 && dl < 1e-4, "image{i}: pool3 {dp:e}, logits {dl:e}");
    }
    // A missing key is a clear error naming the file and the key.
    let partial = dir.path().join("partial.safetensors");
    let tensors: Vec<(String, TensorData)> = keys
        .iter()
        .filter(|k| k["key"] != "Mixed_6c.branch7x7_2.bn.running_var")
        .map(|k| {
            let shape: Vec<usize> = serde_json::from_value(k["shape"].clone()).unwrap();
            (k["key"].as_str().unwrap().to_string(), TensorData::new(vec![0f32; shape.iter().product()], shape))
        })
        .collect();
    write_safetensors(&partial, tensors, Default::default()).unwrap();
    let err = format!("{:#}", Extractor::load(&format!("inception:{}", partial.display()), &device).err().unwrap());
    assert!(err.contains("Mixed_6c.branch7x7_2.bn.running_var") && err.contains("partial.safetensors"), "{err}");
}

#[test]
fn eval_commands_end_to_end() {
    let o = rectok().args(["eval", "fd"]).arg(fixture("a.npz")).arg(fixture("b.npz")).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let last: f64 = String::from_utf8_lossy(&o.stdout).lines().last().unwrap().trim().parse().unwrap();
    assert!(rel(last, expected("fd_ab")) < 1e-6);

    let dir = tempfile::tempdir().unwrap();
    for i in 0..4u8 {
        image::RgbImage::from_fn(48, 48, |x, y| image::Rgb([x as u8 * 5, y as u8 * (i + 1), 40 * i]))
            .save(dir.path().join(format!("{i}.png")))
            .unwrap();
    }
    std::fs::write(dir.path().join("notes.txt"), "not an image").unwrap();
    let out = dir.path().join("stats.npz");
    let o = rectok()
        .args(["eval", "stats", "--extractor", "effnet", "--batch-size", "3"])
        .arg(dir.path())
        .arg("-o")
        .arg(&out)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let s = read_npz(&out).unwrap();
    assert_eq!((s.dim(), s.sigma.len()), (1280, 1280 * 1280));
    assert!(frechet_distance(&s, &s).unwrap().abs() < 1e-6);
    // Bad inputs: a missing array, a non-npz file.
    let o = rectok().args(["eval", "fd"]).arg(fixture("a.npz")).arg(fixture("expected.json")).output().unwrap();
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && e.contains("expected.json") && e.contains("not an .npz"), "{e}");
    let o = rectok()
        .args(["eval", "stats", "--extractor", "inception"])
        .arg(dir.path())
        .arg("-o")
        .arg(&out)
        .output()
        .unwrap();
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && e.contains("inception:PATH") && e.contains("nothing is downloaded"), "{e}");
    let o = rectok()
        .args(["eval", "stats", "--extractor", "inception:/no/such/pt_inception.pth"])
        .arg(dir.path())
        .arg("-o")
        .arg(&out)
        .output()
        .unwrap();
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && e.contains("/no/such/pt_inception.pth"), "{e}");
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
    let want: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("expected.json")).unwrap()).unwrap();
    let (ssim, psnr) = (rectok::metrics::ssim(&a, &b, 3, h, w), rectok::metrics::psnr(&a, &b));
    let (ws, wp) = (want["ssim"].as_f64().unwrap(), want["psnr"].as_f64().unwrap());
    eprintln!("SSIM {ssim} (scikit-image {ws}), PSNR {psnr} (scikit-image {wp})");
    assert!((ssim - ws).abs() < 1e-4 && (psnr - wp).abs() < 1e-4, "SSIM {ssim} vs {ws}, PSNR {psnr} vs {wp}");
}

fn tiny(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name).to_string_lossy().into_owned()
}

fn json_file(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[test]
fn tokenizer_generator_and_probe_protocols_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (rectok_pth, rectok_config) = (tiny("tiny_rectok.pth"), tiny("tiny_config.json"));
    let tok = ["--tokenizer", &rectok_pth, "--config", &rectok_config];

    // Tokenizer: 12 held-out procedural images; rFD-effnet against the originals, then against
    // statistics of the saved 8-bit reconstructions themselves (must be ~0: the PNGs are exactly
    // what was measured).
    let o = rectok()
        .args(["eval", "tokenizer"])
        .args(tok)
        .args(["--limit", "12", "--batch-size", "5"])
        .arg("--save-dir")
        .arg(d.join("recon"))
        .arg("--json")
        .arg(d.join("tok.json"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(stdout.contains("PSNR (dB)") && stdout.contains("rFD-effnet") && stdout.contains("IS-effnet"), "{stdout}");
    let r = &json_file(&d.join("tok.json"))["results"];
    assert_eq!(r["images"], 12);
    let psnr = r["psnr"].as_f64().unwrap();
    assert!(psnr > 3.0 && psnr < 40.0, "{psnr}");
    assert!(r["distance"]["value"].as_f64().unwrap() > 1.0 && r["score"]["mean"].as_f64().unwrap() >= 1.0, "{r}");
    assert_eq!(std::fs::read_dir(d.join("recon")).unwrap().count(), 12);
    let o = rectok().args(["eval", "stats"]).arg(d.join("recon")).arg("-o").arg(d.join("recon.npz")).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = rectok()
        .args(["eval", "tokenizer"])
        .args(tok)
        .args(["--limit", "12"])
        .arg("--ref-stats")
        .arg(d.join("recon.npz"))
        .arg("--json")
        .arg(d.join("tok2.json"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let r2 = &json_file(&d.join("tok2.json"))["results"];
    assert!(r2["distance"]["value"].as_f64().unwrap().abs() < 1e-3, "{r2}");
    assert_eq!(r2["psnr"], r["psnr"]);

    // Generator: 10 class-balanced samples of the tiny DiT (5 classes), saved and measured.
    let (stats, ditdh, ditdh_config) =
        (tiny("tiny_stats.safetensors"), tiny("tiny_ditdh.pth"), tiny("tiny_ditdh_config.json"));
    let gen_args = ["--latent-stats", &stats, "--generator", &ditdh, "--generator-config", &ditdh_config];
    let o = rectok()
        .args(["eval", "generator"])
        .args(tok)
        .args(gen_args)
        .args(["--num-samples", "10", "--steps", "4", "--batch-size", "4", "--ref-data", "procedural:100"])
        .arg("--save-dir")
        .arg(d.join("samples"))
        .arg("--json")
        .arg(d.join("gen.json"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let g = &json_file(&d.join("gen.json"))["results"];
    assert_eq!(g["samples"], 10);
    assert!(g["distance"]["value"].as_f64().unwrap() > 1.0, "{g}");
    let mut names: Vec<String> =
        std::fs::read_dir(d.join("samples")).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    names.sort();
    assert_eq!(names.len(), 10);
    assert_eq!((names[3].as_str(), names[7].as_str()), ("000003_0003.png", "000007_0002.png"), "class i mod 5");
    // The same samples against their own statistics: gFD ≈ 0 (same seed, same noise per index,
    // whatever the batch size).
    let o =
        rectok().args(["eval", "stats"]).arg(d.join("samples")).arg("-o").arg(d.join("samples.npz")).output().unwrap();
    assert!(o.status.success());
    let o = rectok()
        .args(["eval", "generator"])
        .args(tok)
        .args(gen_args)
        .args(["--num-samples", "10", "--steps", "4", "--batch-size", "3"])
        .arg("--ref-stats")
        .arg(d.join("samples.npz"))
        .arg("--json")
        .arg(d.join("gen2.json"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let g2 = &json_file(&d.join("gen2.json"))["results"];
    assert!(g2["distance"]["value"].as_f64().unwrap().abs() < 1e-3, "{g2}");
    // Statistics from another extractor are refused with the reason.
    let o = rectok()
        .args(["eval", "generator"])
        .args(tok)
        .args(gen_args)
        .args(["--num-samples", "2"])
        .arg("--ref-stats")
        .arg(fixture("a.npz"))
        .output()
        .unwrap();
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && e.contains("a.npz") && e.contains("same extractor"), "{e}");

    // Linear probe with a JSON report.
    let o = rectok()
        .args(["eval", "probe"])
        .args(tok)
        .args(["--data", "procedural:200", "--epochs", "20"])
        .arg("--json")
        .arg(d.join("probe.json"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let p = json_file(&d.join("probe.json"));
    let top1 = p["top1_held_out"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&top1) && p["train_images"] == 200 && p["held_out_images"] == 64, "{p}");
}

#[test]
fn frechet_distance_is_finite_for_wide_rank_deficient_low_variance_statistics() {
    // 64 near-identical 1280-d feature rows (the statistics of an untrained decoder's nearly
    // constant outputs): covariance of rank ≤ 63 with entries ~1e-6.
    let mut rng = rectok::rng::Rng::seed_from(5);
    let d = 1280;
    let base: Vec<f32> = rng.normal_vec(d).iter().map(|v| v.abs()).collect();
    let rows = |rng: &mut rectok::rng::Rng, scale: f32| -> Vec<f32> {
        (0..64)
            .flat_map(|_| base.iter().zip(rng.normal_vec(d)).map(move |(b, n)| b + scale * n).collect::<Vec<_>>())
            .collect()
    };
    let (mut a, mut b) = (StatsAccumulator::new(d), StatsAccumulator::new(d));
    a.add(&rows(&mut rng, 1e-3)).unwrap();
    b.add(&rows(&mut rng, 1e-1)).unwrap();
    let (a, b) = (a.finish().unwrap(), b.finish().unwrap());
    let aa = frechet_distance(&a, &a).unwrap();
    let ab = frechet_distance(&a, &b).unwrap();
    assert!(aa.abs() < 1e-9, "{aa}");
    assert!(ab.is_finite() && ab > 0.0, "{ab}");
}

#[test]
fn frechet_distance_is_exact_on_statistics_of_a_few_images() {
    // Float32 features of 4, 5 and 6 "images" in 1280 dimensions (covariances of rank 3 to 5)
    // and the exact distances between their Gaussians in 50-digit arithmetic (Gram form).
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/fid_low_rank");
    let expected: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("expected.json")).unwrap()).unwrap();
    let stats = |name: &str| {
        let (shape, values) = read_npy(&dir.join(format!("{name}.npy"))).unwrap();
        let mut acc = StatsAccumulator::new(shape[1]);
        acc.add(&values.iter().map(|&v| v as f32).collect::<Vec<_>>()).unwrap();
        acc.finish().unwrap()
    };
    let names = ["four", "six", "near_identical"];
    for (i, a) in names.iter().enumerate() {
        for b in &names[i..] {
            let got = frechet_distance(&stats(a), &stats(b)).unwrap();
            let want = expected[format!("{a}|{b}")].as_f64().unwrap();
            if a == b {
                let trace = expected[format!("trace|{a}")].as_f64().unwrap();
                eprintln!("{a} against itself: {got:e} (trace {trace})");
                assert!(got.abs() <= 1e-9 * trace, "{a} against itself: {got:e}, trace {trace}");
            } else {
                eprintln!("{a} | {b}: {got} vs {want} (relative {:.1e})", rel(got, want));
                assert!(rel(got, want) < 1e-9, "{a} | {b}: {got} vs exact {want}");
            }
        }
    }
}
