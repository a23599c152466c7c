//! Generator training end to end at CI size (with the random-weight tiny tokenizer fixture): the
//! velocity loss falls, a killed run resumes bit for bit (with and without the latent cache), an
//! interrupted latent cache is completed to the same bytes, and the exported generator and
//! tokenizer (with its statistics) sample with `rectok generate` and `rectok eval generator`.

mod common;

use common::{converted_tokenizer, kill_after_first_checkpoint, losses, rectok};
use std::path::{Path, PathBuf};

/// The fixture tokenizer as a self-describing file (its config is not inferable from the .pth).
fn tokenizer(dir: &Path) -> PathBuf {
    converted_tokenizer(dir, "tokenizer.safetensors", &["--inference-only", "-q"])
}

const SMALL: &[&str] = &[
    "--data",
    "procedural:96",
    "--set",
    "optim.batch_size=8",
    "--set",
    "run.epochs=3",
    "--set",
    "optim.decay_start_epoch=1",
    "--set",
    "optim.decay_end_epoch=3",
    "--set",
    "run.log_every=1",
    "--set",
    "run.checkpoint_every=6",
    "--set",
    "run.sample_every=0",
    "--set",
    "run.fd_images=0",
    "--set",
    "sample.steps=4",
    "--set",
    "sample.grid_per_class=2",
];

fn train(tok: &Path, out: &Path, extra: &[&str]) {
    let o = rectok()
        .args(["train", "generator", "--config", "ditdh-tiny", "--tokenizer"])
        .arg(tok)
        .arg("--out")
        .arg(out)
        .args(SMALL)
        .args(extra)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

/// `rectok generate` from a finished run's exports (a few Euler steps), which must succeed.
fn generate(run: &Path, classes: &str, per_class: usize, out: &Path) {
    let o = rectok()
        .args(["generate", "--tokenizer"])
        .arg(run.join("tokenizer.safetensors"))
        .arg("--generator")
        .arg(run.join("generator.safetensors"))
        .args(["--classes", classes, "--num-per-class", &per_class.to_string(), "--steps", "4", "-o"])
        .arg(out)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

#[test]
fn generator_training_learns_resumes_exactly_and_exports_a_usable_model() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let tok = tokenizer(d);

    // Uninterrupted reference run with the latent cache (36 steps: 3 epochs of 12).
    let full = d.join("full");
    train(&tok, &full, &[]);
    let reference = losses(&full);
    assert_eq!(reference.len(), 36);
    let loss_at =
        |r: &Vec<(String, String)>| -> f64 { r.iter().find(|(k, _)| k == "loss").unwrap().1.parse().unwrap() };
    let first: f64 = reference[..6].iter().map(loss_at).sum::<f64>() / 6.0;
    let last: f64 = reference[30..].iter().map(loss_at).sum::<f64>() / 6.0;
    eprintln!("velocity loss: first 6 steps {first:.4}, last 6 steps {last:.4}");
    assert!(last < 0.9 * first, "the loss did not fall: {first} → {last}");
    let lr_at = |r: &Vec<(String, String)>| -> f64 { r.iter().find(|(k, _)| k == "lr").unwrap().1.parse().unwrap() };
    assert_eq!(lr_at(&reference[0]), 2e-3, "constant before decay_start_epoch");
    // Step 36 is computed at epoch 35/12: linear from 2e-3 at epoch 1 to 2e-4 at epoch 3.
    let want = 2e-3 - 1.8e-3 * (35.0 / 12.0 - 1.0) / 2.0;
    assert!(
        (lr_at(&reference[35]) - want).abs() < 1e-12,
        "decays linearly towards min_lr: {} vs {want}",
        lr_at(&reference[35])
    );
    for f in [
        "generator.safetensors",
        "tokenizer.safetensors",
        "latent_stats.safetensors",
        "loss.png",
        "latent-cache/manifest.json",
    ] {
        assert!(full.join(f).exists(), "{f} missing");
    }

    // Kill -9 after the first checkpoint, then resume: the same losses, step for step.
    let killed = d.join("killed");
    let mut command = rectok();
    command
        .args(["train", "generator", "--config", "ditdh-tiny", "--tokenizer"])
        .arg(&tok)
        .arg("--out")
        .arg(&killed)
        .args(SMALL);
    kill_after_first_checkpoint(command, &killed);
    assert!(!killed.join("generator.safetensors").exists());
    let o = rectok()
        .args(["train", "generator", "--resume", "--out"])
        .arg(&killed)
        .args(["--set", "optim.lr=1"])
        .output()
        .unwrap();
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("can change when resuming"));
    // The rest with activation checkpointing, which changes memory, not values.
    let o = rectok()
        .args(["train", "generator", "--resume", "--out"])
        .arg(&killed)
        .args(["--set", "run.grad_checkpoint=true"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let resumed = losses(&killed);
    assert_eq!(resumed.len(), 36);
    for (step, (a, b)) in reference.iter().zip(&resumed).enumerate() {
        assert_eq!(a, b, "step {} differs after resuming", step + 1);
    }

    // Without the cache (the encoder runs every batch): stop at 7 steps, resume to 12.
    let (img_full, img_stopped) = (d.join("images-full"), d.join("images-stopped"));
    let no_cache = ["--set", "latents.cache=\"\"", "--max-steps", "12"];
    train(&tok, &img_full, &no_cache);
    train(&tok, &img_stopped, &["--set", "latents.cache=\"\"", "--max-steps", "7"]);
    let o = rectok()
        .args(["train", "generator", "--resume", "--out"])
        .arg(&img_stopped)
        .args(["--max-steps", "12"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(losses(&img_full), losses(&img_stopped), "image-mode resume");
    assert!(!img_full.join("latent-cache").exists());

    // An interrupted cache (manifest behind, garbage after the last complete row) is completed
    // to exactly the bytes of an uninterrupted build.
    let cache = full.join("latent-cache");
    let bytes = std::fs::read(cache.join("moments.f32")).unwrap();
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(cache.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["complete"], 96);
    let row = bytes.len() / 96;
    let broken = d.join("broken");
    std::fs::create_dir_all(broken.join("latent-cache")).unwrap();
    let mut partial = bytes[..row * 37].to_vec();
    partial.extend_from_slice(&vec![0xAB; row / 2]);
    std::fs::write(broken.join("latent-cache/moments.f32"), partial).unwrap();
    let mut m = manifest.clone();
    m["complete"] = 37.into();
    std::fs::write(broken.join("latent-cache/manifest.json"), m.to_string()).unwrap();
    let labels: Vec<usize> =
        serde_json::from_str(&std::fs::read_to_string(cache.join("labels.json")).unwrap()).unwrap();
    std::fs::write(broken.join("latent-cache/labels.json"), serde_json::to_string(&labels[..37]).unwrap()).unwrap();
    train(&tok, &broken, &["--max-steps", "1"]);
    assert_eq!(std::fs::read(broken.join("latent-cache/moments.f32")).unwrap(), bytes, "completed cache differs");

    // The exports sample without any --latent-stats (the statistics travel with the tokenizer).
    let samples = d.join("samples");
    generate(&full, "0,3", 2, &samples);
    assert_eq!(std::fs::read_dir(&samples).unwrap().count(), 4);

    // `model.preset` also takes a JSON file of sizes; the run is built and exported at them.
    let sizes = d.join("wide.json");
    std::fs::write(&sizes, r#"{"preset": "tiny", "enc_hidden": 96, "enc_heads": 3, "dec_depth": 1}"#).unwrap();
    let custom = d.join("custom");
    train(&tok, &custom, &["--set", &format!("model.preset=\"{}\"", sizes.display()), "--max-steps", "1"]);
    let exported =
        rectok::weights::StateDict::open(&custom.join("generator.safetensors"), rectok::weights::CheckpointEntry::Auto)
            .unwrap();
    assert_eq!(exported.shape("s_embedder.proj.weight").unwrap()[0], 96, "encoder width from the JSON file");
    assert_eq!(exported.shape("x_embedder.proj.weight").unwrap()[0], 128, "head width from the `tiny` preset");
    assert!(
        exported.contains("blocks.4.attn.qkv.weight") && !exported.keys_with_prefix("blocks.5.").any(|_| true),
        "4 + 1 blocks"
    );
    // Its sizes travel in the export's metadata: `generate` needs no --generator-config (3 heads
    // of 96 are not an official width).
    generate(&custom, "1", 1, &d.join("custom-samples"));
    assert_eq!(std::fs::read_dir(d.join("custom-samples")).unwrap().count(), 1);
    let o = rectok()
        .args(["train", "generator", "--config", "ditdh-tiny", "--tokenizer"])
        .arg(&tok)
        .arg("--out")
        .arg(d.join("bad"))
        .args(SMALL)
        .args(["--set", "model.preset=\"huge\""])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("huge: not a preset (xl, l, b, s, tiny)"), "{err}");
}
