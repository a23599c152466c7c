//! `rectok latent-stats` (called by its alias `stats`) and `rectok generate` end to end on the tiny tokenizer, with small random
//! DiT^DH generators (CFG, AutoGuidance, Heun), and their bad inputs.

use rectok::weights::{CheckpointEntry, StateDict};
use std::path::{Path, PathBuf};
use std::process::Output;

mod common;
use common::{fixture, run as rectok, tiny_generator};

fn ok(o: Output) -> Output {
    assert!(o.status.success(), "rectok failed: {}", String::from_utf8_lossy(&o.stderr));
    o
}

fn error_line(o: &Output) -> String {
    assert!(!o.status.success(), "expected a failure");
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert!(!err.contains("panicked"), "{err}");
    err.lines().find(|l| l.starts_with("error:")).unwrap_or_default().to_string()
}

/// The tiny tokenizer with statistics computed by `rectok latent-stats` over the fixture photos.
fn tokenizer_with_stats(dir: &Path) -> PathBuf {
    let stats = dir.join("stats.safetensors");
    let o = ok(rectok(&[
        "stats",
        "--tokenizer",
        fixture("tiny_rectok.pth").to_str().unwrap(),
        "--config",
        fixture("tiny_config.json").to_str().unwrap(),
        "--data",
        fixture("photos").to_str().unwrap(),
        "--output",
        stats.to_str().unwrap(),
    ]));
    assert!(String::from_utf8_lossy(&o.stdout).contains("8 channels over 3 images (48 tokens)"));
    let out = dir.join("tok.safetensors");
    ok(rectok(&[
        "convert",
        fixture("tiny_rectok.pth").to_str().unwrap(),
        out.to_str().unwrap(),
        "--config",
        fixture("tiny_config.json").to_str().unwrap(),
        "--latent-stats",
        stats.to_str().unwrap(),
    ]));
    out
}

#[test]
fn stats_are_the_moments_of_the_posterior_means() {
    let dir = tempfile::tempdir().unwrap();
    tokenizer_with_stats(dir.path());
    let sd = StateDict::open(&dir.path().join("stats.safetensors"), CheckpointEntry::Auto).unwrap();
    let (mean, std) = (sd.read_f32("mean").unwrap(), sd.read_f32("std").unwrap());
    // The reference's raw latents of the three photos (posterior means, [C, h, w] each).
    let expected = StateDict::open_verbatim(&fixture("tiny_expected.safetensors")).unwrap();
    let mut values = vec![Vec::new(); 8];
    for name in ["cat", "coffee", "rocket"] {
        let z = expected.read_f32(&format!("ema.raw.{name}")).unwrap();
        for c in 0..8 {
            values[c].extend_from_slice(&z[c * 16..(c + 1) * 16]);
        }
    }
    for c in 0..8 {
        let n = values[c].len() as f64;
        let m = values[c].iter().map(|&v| v as f64).sum::<f64>() / n;
        let s = (values[c].iter().map(|&v| (v as f64 - m).powi(2)).sum::<f64>() / n).sqrt();
        assert!(
            (mean[c] as f64 - m).abs() < 1e-4 && (std[c] as f64 - s).abs() < 1e-4,
            "channel {c}: {} {} vs {m} {s}",
            mean[c],
            std[c]
        );
    }
}

#[test]
fn generate_writes_samples_and_a_grid_independent_of_batching() {
    let dir = tempfile::tempdir().unwrap();
    let tok = tokenizer_with_stats(dir.path());
    let generator = tiny_generator(dir.path(), "gen.safetensors", 1, 8, 0.2);
    let guide = tiny_generator(dir.path(), "guide.safetensors", 2, 8, 0.2);
    let run = |out: &str, extra: &[&str]| {
        let out = dir.path().join(out);
        let mut args = vec![
            "generate",
            "--tokenizer",
            tok.to_str().unwrap(),
            "--generator",
            generator.to_str().unwrap(),
            "--classes",
            "1,3",
            "--num-per-class",
            "2",
            "--steps",
            "4",
            "--seed",
            "5",
            "--output",
            out.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        ok(rectok(&args));
        out
    };
    let grid = dir.path().join("grid.png");
    let a = run("a", &["--cfg", "2.0", "--batch-size", "3", "--grid", grid.to_str().unwrap()]);
    let b = run("b", &["--cfg", "2.0", "--batch-size", "1"]);
    let names = ["0001_000.png", "0001_001.png", "0003_000.png", "0003_001.png"];
    let load = |d: &Path, n: &str| image::open(d.join(n)).unwrap().to_rgb8();
    for n in names {
        let (x, y) = (load(&a, n), load(&b, n));
        assert_eq!((x.width(), x.height()), (32, 32));
        let diff = x.as_raw().iter().zip(y.as_raw()).map(|(&p, &q)| (p as i32 - q as i32).abs()).max().unwrap();
        assert!(diff <= 1, "{n}: batching changed the sample by {diff} levels");
    }
    assert_ne!(load(&a, names[0]).as_raw(), load(&a, names[1]).as_raw(), "different noise per sample");
    let g = image::open(&grid).unwrap().to_rgb8();
    assert_eq!((g.width(), g.height()), (64, 64), "2 classes × 2 samples");
    // Guidance changes the samples; AutoGuidance and Heun run.
    let plain = run("plain", &["--cfg", "1.0"]);
    assert_ne!(load(&plain, names[0]).as_raw(), load(&a, names[0]).as_raw());
    let auto = run("auto", &["--cfg", "1.5", "--guide", guide.to_str().unwrap(), "--sampler", "heun"]);
    assert!(auto.join(names[3]).exists());
}

#[test]
fn generate_rejects_bad_input_before_any_work() {
    let dir = tempfile::tempdir().unwrap();
    let tok = tokenizer_with_stats(dir.path());
    let generator = tiny_generator(dir.path(), "gen.safetensors", 1, 8, 0.2);
    let wide = tiny_generator(dir.path(), "wide.safetensors", 1, 16, 0.2);
    let out = dir.path().join("out");
    let base = |g: &Path| {
        vec![
            "generate".to_string(),
            "--tokenizer".into(),
            tok.to_str().unwrap().into(),
            "--generator".into(),
            g.to_str().unwrap().into(),
            "--output".into(),
            out.to_str().unwrap().into(),
        ]
    };
    let run = |g: &Path, extra: &[&str]| {
        let mut a = base(g);
        a.extend(extra.iter().map(|s| s.to_string()));
        rectok(&a.iter().map(String::as_str).collect::<Vec<_>>())
    };
    assert!(error_line(&run(&generator, &["--steps", "1"])).contains("--steps must be between 2 and 10000"));
    assert!(
        error_line(&run(&generator, &["--classes", "7"]))
            .contains("class id 7 is out of range: the generator has 5 classes")
    );
    assert!(
        error_line(&run(&wide, &["--classes", "1"]))
            .contains("works on 16×4×4 latents but the tokenizer produces 8×4×4")
    );
    assert!(error_line(&run(&generator, &["--classes", "1", "--cfg-interval", "0.8,0.2"])).contains("--cfg-interval"));
    // Without latent statistics the error says how to get them.
    let mut a = base(&generator);
    a[2] = fixture("tiny_rectok.pth").to_str().unwrap().into();
    a.extend(["--config".into(), fixture("tiny_config.json").to_str().unwrap().into()]);
    let o = rectok(&a.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(error_line(&o).contains("rectok latent-stats"));
    assert!(!out.exists() || std::fs::read_dir(&out).unwrap().next().is_none(), "nothing written");
}
