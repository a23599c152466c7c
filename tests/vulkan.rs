//! The Vulkan backend against the CPU on the tiny fixtures: encode, reconstruct, generate and a
//! few training steps of both trainers give the CPU's numbers. Built only with `--features vulkan`
//! and run on any conformant driver (CI: Mesa's lavapipe); without a Vulkan driver each test
//! says so and passes. The golden cases run on Vulkan with `RECTOK_GOLDEN_DEVICE=vulkan`.
#![cfg(feature = "vulkan")]

use rectok::weights::StateDict;
use std::path::{Path, PathBuf};

mod common;
use common::{converted_tokenizer, fixture, losses, rectok, stderr, tiny_generator};

/// Whether a Vulkan driver is installed (an ICD manifest where the loader looks).
fn vulkan_driver() -> bool {
    let found = rectok::device::vulkan_driver_installed();
    if !found {
        eprintln!("SKIPPED: no Vulkan driver installed (Debian: mesa-vulkan-drivers)");
    }
    found
}

/// `rectok args… --device device`, which must succeed.
fn ok_on(device: &str, args: &[&str]) {
    stdout_on(device, args);
}

/// The tiny models in `dir`: the tokenizer (with latent statistics), the photos folder and a
/// random tiny DiT^DH (8 channels, std 0.02), as command-line arguments.
fn tiny_models(dir: &Path) -> (String, String, String) {
    let tok = tiny_tokenizer(dir).to_string_lossy().into_owned();
    let generator = tiny_generator(dir, "gen.safetensors", 1, 8, 0.02).to_string_lossy().into_owned();
    (tok, fixture("photos").to_string_lossy().into_owned(), generator)
}

/// The largest relative difference ‖a − b‖ / ‖a‖ between the tensors of the same name in two
/// safetensors files, with that tensor's name.
fn max_rel_diff(a: &Path, b: &Path) -> (f64, String) {
    let (a, b) = (StateDict::open_verbatim(a).unwrap(), StateDict::open_verbatim(b).unwrap());
    let mut worst = (0f64, String::new());
    for key in a.keys_with_prefix("") {
        let (x, y) = (a.read_f32(key).unwrap(), b.read_f32(key).unwrap());
        assert_eq!(x.len(), y.len(), "{key}");
        let norm = |v: &mut dyn Iterator<Item = f64>| v.map(|e| e * e).sum::<f64>().sqrt();
        let diff = norm(&mut x.iter().zip(&y).map(|(p, q)| (p - q) as f64));
        let rel = diff / norm(&mut x.iter().map(|&p| p as f64)).max(1e-30);
        if rel > worst.0 {
            worst = (rel, key.clone());
        }
    }
    worst
}

/// The largest difference in levels between the PNGs of the same name in two folders.
fn max_level_diff(a: &Path, b: &Path) -> i32 {
    let mut names: Vec<_> = std::fs::read_dir(a).unwrap().map(|e| e.unwrap().file_name()).collect();
    names.sort();
    assert!(!names.is_empty());
    names
        .iter()
        .map(|n| {
            let (x, y) = (image::open(a.join(n)).unwrap().to_rgb8(), image::open(b.join(n)).unwrap().to_rgb8());
            x.as_raw().iter().zip(y.as_raw()).map(|(&p, &q)| (p as i32 - q as i32).abs()).max().unwrap()
        })
        .max()
        .unwrap()
}

fn tiny_tokenizer(dir: &Path) -> PathBuf {
    converted_tokenizer(
        dir,
        "tok.safetensors",
        &["--latent-stats", fixture("tiny_stats.safetensors").to_str().unwrap()],
    )
}

#[test]
fn encode_and_reconstruct_match_the_cpu() {
    if !vulkan_driver() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let tok = tiny_tokenizer(dir.path());
    let (tok, photos) = (tok.to_str().unwrap(), fixture("photos"));
    let photos = photos.to_str().unwrap();
    for device in ["cpu", "vulkan"] {
        let latents = dir.path().join(format!("{device}.safetensors"));
        ok_on(device, &["encode", "--tokenizer", tok, "--input", photos, "--output", latents.to_str().unwrap()]);
        let recon = dir.path().join(format!("recon-{device}"));
        ok_on(device, &["reconstruct", "--tokenizer", tok, "--input", photos, "--output", recon.to_str().unwrap()]);
    }
    let (d, key) = max_rel_diff(&dir.path().join("cpu.safetensors"), &dir.path().join("vulkan.safetensors"));
    eprintln!("encode: latents differ by at most {d:e} (relative, {key})");
    assert!(d < 1e-4, "latents {key} differ by {d:e} (relative)");
    let levels = max_level_diff(&dir.path().join("recon-cpu"), &dir.path().join("recon-vulkan"));
    assert!(levels <= 1, "reconstructions differ by {levels} levels");
}

#[test]
fn generate_matches_the_cpu() {
    if !vulkan_driver() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // std 0.02 as the reference initialises; at 0.2 the random network amplifies rounding to a
    // few levels.
    let (tok, _, generator) = tiny_models(dir.path());
    for device in ["cpu", "vulkan"] {
        let out = dir.path().join(device);
        ok_on(
            device,
            &[
                "generate",
                "--tokenizer",
                &tok,
                "--generator",
                &generator,
                "--classes",
                "1,3",
                "--num-per-class",
                "2",
                "--steps",
                "4",
                "--cfg",
                "2.0",
                "--output",
                out.to_str().unwrap(),
            ],
        );
    }
    let levels = max_level_diff(&dir.path().join("cpu"), &dir.path().join("vulkan"));
    eprintln!("generate: samples differ by at most {levels} levels");
    assert!(levels <= 1, "samples differ by {levels} levels");
}

/// The losses of every logged step agree to `tol` (relative).
fn assert_same_losses(cpu: &Path, vulkan: &Path, tol: f64) {
    let (a, b) = (losses(cpu), losses(vulkan));
    assert_eq!(a.len(), b.len());
    for (step, (ra, rb)) in a.iter().zip(&b).enumerate() {
        for ((ka, va), (kb, vb)) in ra.iter().zip(rb) {
            assert_eq!(ka, kb);
            if let (Ok(x), Ok(y)) = (va.parse::<f64>(), vb.parse::<f64>()) {
                assert!((x - y).abs() <= tol * x.abs().max(1e-3), "step {}: {ka} {x} (cpu) vs {y} (vulkan)", step + 1);
            }
        }
    }
}

#[test]
fn training_steps_match_the_cpu() {
    if !vulkan_driver() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let small_tokenizer = [
        "--set",
        "data.source=\"procedural:64\"",
        "--set",
        "optim.batch_size=8",
        "--set",
        "run.max_steps=3",
        "--set",
        "run.log_every=1",
        "--set",
        "run.sample_every=0",
        "--set",
        "run.data_parallel=1",
        "--set",
        "teacher.resolution=32",
        "--set",
        "loss.gan_start_epoch=0",
    ];
    let tok = converted_tokenizer(dir.path(), "frozen.safetensors", &["--inference-only", "-q"]);
    let small_generator = [
        "--data",
        "procedural:32",
        "--set",
        "optim.batch_size=8",
        "--set",
        "run.max_steps=3",
        "--set",
        "run.log_every=1",
        "--set",
        "run.sample_every=0",
        "--set",
        "run.fd_images=0",
        "--set",
        "run.data_parallel=1",
        "--set",
        "sample.steps=2",
        "--set",
        "sample.grid_per_class=1",
    ];
    // The third run recomputes the blocks in the backward pass (`run.grad_checkpoint`) on Vulkan.
    for (name, device, checkpoint) in [("cpu", "cpu", false), ("vulkan", "vulkan", false), ("ckpt", "vulkan", true)] {
        let set_device = format!("run.device=\"{device}\"");
        let set_checkpoint = format!("run.grad_checkpoint={checkpoint}");
        let out = dir.path().join(format!("tok-{name}"));
        let o = rectok()
            .args(["train", "tokenizer", "--config", "tiny", "--out"])
            .arg(&out)
            .args(small_tokenizer)
            .args(["--set", &set_device, "--set", &set_checkpoint])
            .output()
            .unwrap();
        assert!(o.status.success(), "tokenizer on {device}: {}", stderr(&o));
        let out = dir.path().join(format!("gen-{name}"));
        let o = rectok()
            .args(["train", "generator", "--config", "ditdh-tiny", "--tokenizer"])
            .arg(&tok)
            .arg("--out")
            .arg(&out)
            .args(small_generator)
            .args(["--set", &set_device, "--set", &set_checkpoint])
            .output()
            .unwrap();
        assert!(o.status.success(), "generator on {device}: {}", stderr(&o));
    }
    let d = dir.path();
    for other in ["vulkan", "ckpt"] {
        assert_same_losses(&d.join("tok-cpu"), &d.join(format!("tok-{other}")), 1e-4);
        assert_same_losses(&d.join("gen-cpu"), &d.join(format!("gen-{other}")), 1e-4);
        for (run, file) in [("tok", "tokenizer.safetensors"), ("gen", "generator.safetensors")] {
            let (w, key) = max_rel_diff(&d.join(format!("{run}-cpu/{file}")), &d.join(format!("{run}-{other}/{file}")));
            eprintln!("{file} ({other}): weights after 3 steps differ by at most {w:e} (relative, {key})");
            // Adam divides each gradient by its own running magnitude, so near-zero gradients (of
            // the zero-initialised adaLN layers) carry their rounding into the update at full
            // size: on lavapipe 2e-4 (the CPU against itself with another summation order: 3e-5).
            assert!(w < 1e-3, "{file} ({other}): {key} after 3 steps differs by {w:e} (relative)");
        }
    }
}

/// Whether this Vulkan driver does arithmetic in `precision` (f16 or bf16); says so when not.
fn supports(precision: &str) -> bool {
    let dtype = match precision {
        "f16" => burn::tensor::DType::F16,
        _ => burn::tensor::DType::BF16,
    };
    let ok = burn::tensor::Device::vulkan(Default::default()).supports_dtype(dtype);
    if !ok {
        eprintln!("SKIPPED: this Vulkan driver has no {precision} arithmetic");
    }
    ok
}

/// Half precision (autocast) against f32 on the same device: encode, reconstruct, generate and
/// three training steps of both trainers, within the tolerances the README states.
#[test]
fn half_precision_matches_f32() {
    if !vulkan_driver() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (tok, photos, generator) = tiny_models(d);
    let (tok, photos, generator) = (tok.as_str(), photos.as_str(), generator.as_str());
    let frozen = converted_tokenizer(d, "frozen.safetensors", &["--inference-only", "-q"]);
    let run = |precision: &str, args: &[&str]| ok_on("vulkan", &[args, &["--precision", precision]].concat());
    let train = |precision: &str| {
        let set = format!("run.precision=\"{precision}\"");
        let out = d.join(format!("tok-{precision}"));
        let o = rectok()
            .args(["train", "tokenizer", "--config", "tiny", "--out"])
            .arg(&out)
            .args(["--set", "data.source=\"procedural:48\"", "--set", "optim.batch_size=8", "--set", "run.max_steps=3"])
            .args(["--set", "run.log_every=1", "--set", "run.sample_every=0", "--set", "teacher.resolution=32"])
            .args(["--set", "run.device=\"vulkan\"", "--set", &set])
            .output()
            .unwrap();
        assert!(o.status.success(), "tokenizer, {precision}: {}", stderr(&o));
        let out = d.join(format!("gen-{precision}"));
        let o = rectok()
            .args(["train", "generator", "--config", "ditdh-tiny", "--tokenizer"])
            .arg(&frozen)
            .arg("--out")
            .arg(&out)
            .args(["--data", "procedural:32", "--set", "optim.batch_size=8", "--set", "run.max_steps=3"])
            .args(["--set", "run.log_every=1", "--set", "run.sample_every=0", "--set", "run.fd_images=0"])
            .args(["--set", "sample.steps=2", "--set", "sample.grid_per_class=1"])
            .args(["--set", "run.device=\"vulkan\"", "--set", &set])
            .output()
            .unwrap();
        assert!(o.status.success(), "generator, {precision}: {}", stderr(&o));
    };
    let infer = |precision: &str| {
        let latents = d.join(format!("{precision}.safetensors"));
        run(precision, &["encode", "--tokenizer", tok, "--input", photos, "--output", latents.to_str().unwrap()]);
        let recon = d.join(format!("recon-{precision}"));
        run(precision, &["reconstruct", "--tokenizer", tok, "--input", photos, "--output", recon.to_str().unwrap()]);
        let samples = d.join(format!("samples-{precision}"));
        let generate = ["generate", "--tokenizer", tok, "--generator", generator];
        let options = ["--classes", "1,3", "--num-per-class", "2", "--steps", "4", "--cfg", "2.0", "--output"];
        run(precision, &[&generate[..], &options[..], &[samples.to_str().unwrap()]].concat());
    };
    infer("f32");
    train("f32");
    // (precision, latents, reconstruction levels, sample levels, losses; all relative but levels)
    for (precision, latent_tol, recon_levels, sample_levels, loss_tol) in
        [("f16", 5e-3, 2, 2, 1e-2), ("bf16", 3e-2, 8, 8, 5e-2)]
    {
        if !supports(precision) {
            continue;
        }
        infer(precision);
        let (rel, key) = max_rel_diff(&d.join("f32.safetensors"), &d.join(format!("{precision}.safetensors")));
        let recon = max_level_diff(&d.join("recon-f32"), &d.join(format!("recon-{precision}")));
        let samples = max_level_diff(&d.join("samples-f32"), &d.join(format!("samples-{precision}")));
        eprintln!(
            "{precision}: latents {rel:e} (relative, {key}), reconstructions {recon} levels, samples {samples} levels"
        );
        assert!(rel < latent_tol, "{precision}: latents {key} differ from f32 by {rel:e}");
        assert!(recon <= recon_levels, "{precision}: reconstructions differ from f32 by {recon} levels");
        assert!(samples <= sample_levels, "{precision}: samples differ from f32 by {samples} levels");
        train(precision);
        assert_same_losses(&d.join("tok-f32"), &d.join(format!("tok-{precision}")), loss_tol);
        assert_same_losses(&d.join("gen-f32"), &d.join(format!("gen-{precision}")), loss_tol);
        // f16 keeps its loss scale in the checkpoint; bf16 needs none.
        let state = std::fs::read_to_string(d.join(format!("gen-{precision}/checkpoints/step_00000003/state.json")));
        let state: serde_json::Value = serde_json::from_str(&state.unwrap()).unwrap();
        assert_eq!(state["loss_scale"].is_object(), precision == "f16", "{precision}: {}", state["loss_scale"]);
    }
}

/// `rectok args… --device device` (which must succeed), its stdout.
fn stdout_on(device: &str, args: &[&str]) -> String {
    let o = rectok().args(args).args(["--device", device]).output().unwrap();
    assert!(o.status.success(), "{device} {args:?}: {}", stderr(&o));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// The other commands that take `--device` run on Vulkan and give the CPU's results: decode,
/// latent statistics, the teacher check, and the tokenizer, generator and probe evaluations.
#[test]
fn every_other_command_matches_the_cpu() {
    if !vulkan_driver() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (tok, photos, generator) = tiny_models(d);
    let (tok, photos, generator) = (tok.as_str(), photos.as_str(), generator.as_str());
    let latents = d.join("latents.safetensors");
    ok_on("cpu", &["encode", "--tokenizer", tok, "--input", photos, "--output", latents.to_str().unwrap()]);
    let json = |name: &str| -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(d.join(name)).unwrap()).unwrap()
    };
    for device in ["cpu", "vulkan"] {
        let p = |name: &str| d.join(format!("{name}-{device}")).to_str().unwrap().to_string();
        ok_on(device, &["decode", "--tokenizer", tok, "--input", latents.to_str().unwrap(), "--output", &p("decoded")]);
        let stats = p("stats") + ".safetensors";
        ok_on(device, &["latent-stats", "--tokenizer", tok, "--data", photos, "--output", &stats]);
        let top5 = stdout_on(device, &["teacher", "check", &fixture("photos/rocket.jpg").to_string_lossy()]);
        std::fs::write(p("teacher"), top5).unwrap();
        let limit = ["--limit", "6", "--batch-size", "3"];
        ok_on(device, &[&["eval", "tokenizer", "--tokenizer", tok][..], &limit, &["--json", &p("tok")]].concat());
        let sampling = ["--num-samples", "4", "--steps", "3", "--ref-data", "procedural:20"];
        let generate = ["eval", "generator", "--tokenizer", tok, "--generator", generator];
        ok_on(device, &[&generate[..], &sampling, &["--json", &p("gen")]].concat());
        let probe = ["eval", "probe", "--tokenizer", tok, "--data", "procedural:60", "--epochs", "3"];
        ok_on(device, &[&probe[..], &["--json", &p("probe")]].concat());
    }
    assert!(max_level_diff(&d.join("decoded-cpu"), &d.join("decoded-vulkan")) <= 1, "decode");
    let (rel, key) = max_rel_diff(&d.join("stats-cpu.safetensors"), &d.join("stats-vulkan.safetensors"));
    assert!(rel < 1e-4, "latent statistics {key} differ by {rel:e}");
    let top =
        |s: String| s.lines().find(|l| l.contains("top-5")).unwrap_or_default().split(", ").next().map(String::from);
    let (a, b) = (std::fs::read_to_string(d.join("teacher-cpu")), std::fs::read_to_string(d.join("teacher-vulkan")));
    assert_eq!(top(a.unwrap()), top(b.unwrap()), "the teacher's top class");
    let (a, b) = (json("tok-cpu"), json("tok-vulkan"));
    let (pa, pb) = (a["results"]["psnr"].as_f64().unwrap(), b["results"]["psnr"].as_f64().unwrap());
    assert!((pa - pb).abs() < 1e-3, "PSNR {pa} (cpu) vs {pb} (vulkan)");
    let (a, b) = (json("gen-cpu"), json("gen-vulkan"));
    let (fa, fb) =
        (a["results"]["distance"]["value"].as_f64().unwrap(), b["results"]["distance"]["value"].as_f64().unwrap());
    assert!((fa - fb).abs() <= 1e-2 * fa.abs(), "gFD {fa} (cpu) vs {fb} (vulkan)");
    let (a, b) = (json("probe-cpu"), json("probe-vulkan"));
    assert_eq!(a["train_images"], b["train_images"]);
    let (ta, tb) = (a["top1_held_out"].as_f64().unwrap(), b["top1_held_out"].as_f64().unwrap());
    assert!((ta - tb).abs() <= 0.05, "probe top-1 {ta} (cpu) vs {tb} (vulkan)");
    eprintln!("other commands: PSNR {pa:.4}/{pb:.4} dB, gFD {fa:.4}/{fb:.4}, probe top-1 {ta}/{tb} (cpu/vulkan)");
}
