//! End-to-end runs of the `rectok` binary: encode / decode / reconstruct / convert on the tiny
//! reference checkpoint, and every kind of bad input the issue lists (one-line error, non-zero
//! exit, no panic, no partial output).

use rectok::weights::{CheckpointEntry, StateDict};
use std::path::{Path, PathBuf};
use std::process::Output;

mod common;
use common::{fixture, run as rectok, stderr, stdout};

/// A failed run: non-zero exit, one `error:` line naming `needle`, no panic.
fn assert_clean_error(o: &Output, needle: &str) {
    let err = stderr(o);
    assert!(!o.status.success(), "expected failure, got success; stderr: {err}");
    assert!(!err.contains("panicked") && !err.contains("backtrace"), "panic output: {err}");
    let errors: Vec<&str> = err.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(errors.len(), 1, "expected exactly one error line: {err}");
    assert!(errors[0].contains(needle), "error line should mention `{needle}`: {}", errors[0]);
}

/// The tiny tokenizer converted to a self-describing safetensors file (config + statistics).
fn converted(dir: &Path) -> PathBuf {
    let out = dir.join("tiny.safetensors");
    let o = rectok(&[
        "convert",
        fixture("tiny_rectok.pth").to_str().unwrap(),
        out.to_str().unwrap(),
        "--config",
        fixture("tiny_config.json").to_str().unwrap(),
        "--latent-stats",
        fixture("tiny_stats.safetensors").to_str().unwrap(),
    ]);
    assert!(o.status.success(), "convert failed: {}", stderr(&o));
    assert!(stdout(&o).contains("from `model_ema`"), "{}", stdout(&o));
    out
}

#[test]
fn encode_decode_reconstruct_roundtrip() {
    let dir = tempfile::tempdir().unwrap();
    let ckpt = converted(dir.path());
    let photos = fixture("photos");
    let latents = dir.path().join("latents.safetensors");
    let o = rectok(&[
        "encode",
        "--tokenizer",
        ckpt.to_str().unwrap(),
        "--input",
        photos.to_str().unwrap(),
        "--output",
        latents.to_str().unwrap(),
        "--batch-size",
        "2",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let sd = StateDict::open(&latents, CheckpointEntry::Auto).unwrap();
    assert_eq!(sd.tensors.keys().cloned().collect::<Vec<_>>(), ["cat", "coffee", "rocket"]);
    assert_eq!(sd.shape("cat").unwrap(), vec![8, 4, 4]);
    assert_eq!(sd.metadata.get("rectok.normalized").map(String::as_str), Some("true"));
    // Normalised latents equal the reference's tokenize() output.
    let expected = StateDict::open_verbatim(&fixture("tiny_expected.safetensors")).unwrap();
    for name in ["cat", "coffee", "rocket"] {
        let (got, want) = (sd.read_f32(name).unwrap(), expected.read_f32(&format!("ema.norm.{name}")).unwrap());
        let max = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
        assert!(max < 1e-4, "{name}: max abs diff {max}");
    }

    let decoded = dir.path().join("decoded");
    let o = rectok(&[
        "decode",
        "--tokenizer",
        ckpt.to_str().unwrap(),
        "--input",
        latents.to_str().unwrap(),
        "--output",
        decoded.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let recon_dir = dir.path().join("recon");
    let o = rectok(&[
        "reconstruct",
        "--tokenizer",
        ckpt.to_str().unwrap(),
        "--input",
        photos.to_str().unwrap(),
        "--output",
        recon_dir.to_str().unwrap(),
        "--metrics-json",
        dir.path().join("m.json").to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    for name in ["cat", "coffee", "rocket"] {
        let a = image::open(decoded.join(format!("{name}.png"))).unwrap().to_rgb8();
        let b = image::open(recon_dir.join(format!("{name}.png"))).unwrap().to_rgb8();
        assert_eq!((a.width(), a.height()), (32, 32));
        // decode(encode(x)) and reconstruct(x) are the same computation.
        let diff = a.as_raw().iter().zip(b.as_raw()).map(|(&p, &q)| (p as i32 - q as i32).abs()).max().unwrap();
        assert!(diff <= 1, "{name}: decode vs reconstruct differ by {diff}");
        // 8-bit export truncates the reference's float reconstruction.
        let want = expected.read_f32(&format!("ema.recon.{name}")).unwrap();
        let mean_abs: f64 = (0..32 * 32 * 3)
            .map(|i| {
                let (p, c) = (i / 3, i % 3);
                ((b.as_raw()[i] as f64) - (want[c * 1024 + p] * 255.0).floor() as f64).abs()
            })
            .sum::<f64>()
            / 3072.0;
        assert!(mean_abs < 0.05, "{name}: mean abs diff {mean_abs} levels");
    }
    let metrics: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("m.json")).unwrap()).unwrap();
    assert_eq!(metrics["images"].as_array().unwrap().len(), 3);
    let out = stdout(&o);
    assert!(out.lines().last().unwrap().starts_with("mean (3 images)"), "{out}");
    // PSNR as the reference computes it on its own float reconstruction.
    for (row, name) in metrics["images"].as_array().unwrap().iter().zip(["cat", "coffee", "rocket"]) {
        let want = expected.read_f32(&format!("ema.recon.{name}")).unwrap();
        let x = expected.read_f32(&format!("ema.input.{name}")).unwrap();
        let mse = want.iter().zip(&x).map(|(a, b)| ((a - b) as f64).powi(2)).sum::<f64>() / want.len() as f64;
        let psnr = 10.0 * (1.0 / mse).log10();
        assert!((row["psnr"].as_f64().unwrap() - psnr).abs() < 1e-3, "{name}: {} vs {psnr}", row["psnr"]);
    }
}

#[test]
fn raw_and_sampled_latents() {
    let dir = tempfile::tempdir().unwrap();
    let ckpt = converted(dir.path());
    let cat = fixture("photos/cat.png");
    let raw = dir.path().join("raw.safetensors");
    let o = rectok(&[
        "encode",
        "--tokenizer",
        ckpt.to_str().unwrap(),
        "--input",
        cat.to_str().unwrap(),
        "--output",
        raw.to_str().unwrap(),
        "--raw",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let sd = StateDict::open(&raw, CheckpointEntry::Auto).unwrap();
    assert_eq!(sd.metadata.get("rectok.normalized").map(String::as_str), Some("false"));
    let expected = StateDict::open_verbatim(&fixture("tiny_expected.safetensors")).unwrap();
    let (got, want) = (sd.read_f32("cat").unwrap(), expected.read_f32("ema.raw.cat").unwrap());
    assert!(got.iter().zip(&want).all(|(a, b)| (a - b).abs() < 1e-4));
    let s1 = dir.path().join("s1.safetensors");
    let s2 = dir.path().join("s2.safetensors");
    for (path, seed) in [(&s1, "1"), (&s2, "2")] {
        let o = rectok(&[
            "encode",
            "--tokenizer",
            ckpt.to_str().unwrap(),
            "--input",
            cat.to_str().unwrap(),
            "--output",
            path.to_str().unwrap(),
            "--raw",
            "--sample",
            "--seed",
            seed,
        ]);
        assert!(o.status.success(), "{}", stderr(&o));
    }
    let a = StateDict::open(&s1, CheckpointEntry::Auto).unwrap().read_f32("cat").unwrap();
    let b = StateDict::open(&s2, CheckpointEntry::Auto).unwrap().read_f32("cat").unwrap();
    assert_ne!(a, b, "different seeds give different posterior samples");
    assert_ne!(a, got, "a sample differs from the mean");
}

#[test]
fn folder_with_non_images_and_corrupt_images_skips_and_counts() {
    let dir = tempfile::tempdir().unwrap();
    let ckpt = converted(dir.path());
    let input = dir.path().join("in");
    std::fs::create_dir_all(&input).unwrap();
    std::fs::copy(fixture("photos/cat.png"), input.join("cat.png")).unwrap();
    std::fs::write(input.join("notes.txt"), "not an image").unwrap();
    std::fs::write(input.join("broken.jpg"), b"\xFF\xD8\xFF\xE0 garbage").unwrap();
    let bytes = std::fs::read(fixture("photos/rocket.jpg")).unwrap();
    std::fs::write(input.join("truncated.jpg"), &bytes[..bytes.len() / 2]).unwrap();
    let out = dir.path().join("lat.safetensors");
    let o = rectok(&[
        "encode",
        "--tokenizer",
        ckpt.to_str().unwrap(),
        "--input",
        input.to_str().unwrap(),
        "--output",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(err.contains("notes.txt") && err.contains("broken.jpg") && err.contains("truncated.jpg"), "{err}");
    assert!(err.contains("skipped 1 non-image file(s) and 2 unreadable image(s)"), "{err}");
    assert_eq!(StateDict::open(&out, CheckpointEntry::Auto).unwrap().tensors.len(), 1);
}

#[test]
fn bad_inputs_give_one_line_errors_and_no_partial_files() {
    let dir = tempfile::tempdir().unwrap();
    let ckpt = converted(dir.path());
    let ck = ckpt.to_str().unwrap();
    let out = dir.path().join("out.safetensors");
    let o_str = out.to_str().unwrap();

    // A missing image.
    let o = rectok(&["encode", "--tokenizer", ck, "--input", "/nonexistent/x.png", "--output", o_str]);
    assert_clean_error(&o, "/nonexistent/x.png");
    // A corrupt image given directly.
    let bad = dir.path().join("bad.png");
    std::fs::write(&bad, b"\x89PNG\r\n\x1a\n not really").unwrap();
    let o = rectok(&["encode", "--tokenizer", ck, "--input", bad.to_str().unwrap(), "--output", o_str]);
    assert_clean_error(&o, "bad.png");
    // A missing checkpoint, a checkpoint that is not a checkpoint, a checkpoint of another model.
    let cat = fixture("photos/cat.png");
    let o = rectok(&[
        "encode",
        "--tokenizer",
        "/nonexistent/ckpt.pth",
        "--input",
        cat.to_str().unwrap(),
        "--output",
        o_str,
    ]);
    assert_clean_error(&o, "/nonexistent/ckpt.pth");
    let o =
        rectok(&["encode", "--tokenizer", cat.to_str().unwrap(), "--input", cat.to_str().unwrap(), "--output", o_str]);
    assert_clean_error(&o, "not a readable PyTorch checkpoint or safetensors file");
    let o = rectok(&[
        "encode",
        "--tokenizer",
        fixture("tiny_stats.safetensors").to_str().unwrap(),
        "--input",
        cat.to_str().unwrap(),
        "--output",
        o_str,
    ]);
    assert_clean_error(&o, "missing key `encoder.positional_embedding`");
    assert!(!out.exists(), "no output after failures");

    // Latents of the wrong shape.
    let wrong = dir.path().join("wrong.safetensors");
    rectok::weights::write_safetensors(
        &wrong,
        vec![("x".into(), burn::tensor::TensorData::new(vec![0f32; 4 * 4 * 4], [4, 4, 4]))],
        Default::default(),
    )
    .unwrap();
    let dec = dir.path().join("dec");
    let o =
        rectok(&["decode", "--tokenizer", ck, "--input", wrong.to_str().unwrap(), "--output", dec.to_str().unwrap()]);
    assert_clean_error(&o, "latent `x` has shape [4, 4, 4], but this tokenizer decodes [8, 4, 4]");
    assert!(!dec.exists() || std::fs::read_dir(&dec).unwrap().next().is_none(), "no images written");

    // Usage errors exit with 2.
    let o = rectok(&["encode", "--tokenizer", ck]);
    assert_eq!(o.status.code(), Some(2));
    let o =
        rectok(&["encode", "--tokenizer", ck, "--input", cat.to_str().unwrap(), "--output", o_str, "--device", "tpu"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("unknown device 'tpu'"));
    // Only temporary-file-free outputs remain in the folder.
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with(".rectok-tmp"))
        .collect();
    assert!(leftovers.is_empty());
}

#[test]
fn decode_of_normalised_latents_needs_statistics() {
    let dir = tempfile::tempdir().unwrap();
    let ckpt = converted(dir.path());
    let lat = dir.path().join("l.safetensors");
    let o = rectok(&[
        "encode",
        "--tokenizer",
        ckpt.to_str().unwrap(),
        "--input",
        fixture("photos/cat.png").to_str().unwrap(),
        "--output",
        lat.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    // The .pth has no statistics: decoding normalised latents with it must fail clearly.
    let o = rectok(&[
        "decode",
        "--tokenizer",
        fixture("tiny_rectok.pth").to_str().unwrap(),
        "--config",
        fixture("tiny_config.json").to_str().unwrap(),
        "--input",
        lat.to_str().unwrap(),
        "--output",
        dir.path().join("d").to_str().unwrap(),
    ]);
    assert_clean_error(&o, "--latent-stats");
    let o = rectok(&[
        "decode",
        "--tokenizer",
        fixture("tiny_rectok.pth").to_str().unwrap(),
        "--config",
        fixture("tiny_config.json").to_str().unwrap(),
        "--latent-stats",
        fixture("tiny_stats.safetensors").to_str().unwrap(),
        "--input",
        lat.to_str().unwrap(),
        "--output",
        dir.path().join("d").to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(dir.path().join("d/cat.png").exists());
}

/// A closed output pipe (`rectok … 2>&1 | head -1`) ends rectok quietly, as it ends any Unix
/// filter: no panic (exit 101), no hang, and no half-written output file.
#[test]
fn a_closed_output_pipe_ends_the_run_quietly() {
    let dir = tempfile::tempdir().unwrap();
    let tok = converted(dir.path());
    // On Vulkan a panicking device thread once left the main thread waiting forever.
    let vulkan =
        cfg!(feature = "vulkan") && std::fs::read_dir("/usr/share/vulkan/icd.d").is_ok_and(|mut d| d.next().is_some());
    let devices: &[&str] = if vulkan { &["cpu", "vulkan"] } else { &["cpu"] };
    for device in devices {
        for redirect in ["2>&1", "2>/dev/null", "2>&1 >/dev/null"] {
            let out = dir.path().join(format!("{device}.safetensors"));
            let _ = std::fs::remove_file(&out);
            // pipefail: the pipeline's status is rectok's (141 when SIGPIPE ended it).
            let script = format!(
                "set -o pipefail; timeout 120 \"$0\" encode -v --tokenizer \"$1\" -i \"$2\" -o \"$3\" --device {device} \
                 {redirect} | head -c 1 >/dev/null"
            );
            let o = std::process::Command::new("bash")
                .args(["-c", &script, env!("CARGO_BIN_EXE_rectok")])
                .arg(&tok)
                .arg(fixture("photos"))
                .arg(&out)
                .output()
                .unwrap();
            let code = o.status.code();
            assert!(matches!(code, Some(0) | Some(141)), "{device}, {redirect}: exit {code:?}, {}", stderr(&o));
            if out.exists() {
                StateDict::open_verbatim(&out).unwrap_or_else(|e| panic!("{device}: half-written output: {e}"));
            }
        }
    }
}
