//! Tokenizer training end to end, at CI size: the tiny recipe learns (PSNR, semantic loss, linear
//! probe), a killed run resumes bit for bit, stage 2 fine-tunes only the decoder, and bad runs stop
//! with clear messages.

// The binary's allocator, for the in-process run (see src/main.rs).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use burn::prelude::*;
use rectok::data::{DataSpec, Loader, Split, open_dataset};
use rectok::eval::{ProbeConfig, ProbeFeatures, linear_probe};
use rectok::nn::init::{TokenizerInit, initialize};
use rectok::rng::Rng;
use rectok::train::config::TokenizerTrainConfig;
use rectok::train::monitor::read_metrics;
use rectok::train::tokenizer::TokenizerTrainer;
use rectok::weights::tokenizer::{TokenizerLoadOptions, load_tokenizer};
use rectok::weights::{CheckpointEntry, StateDict};
use std::path::Path;

mod common;
use common::{kill_after_first_checkpoint, losses, rectok};

fn config(recipe: &str, overrides: &[&str]) -> TokenizerTrainConfig {
    let o: Vec<String> = overrides.iter().map(|s| s.to_string()).collect();
    TokenizerTrainConfig::load(recipe, &o).expect("config")
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len() as f64
}

#[test]
fn tiny_recipe_learns_reconstruction_semantics_and_separable_latents() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    // The tiny recipe (batch 16) on half its images for 4 of its 6 epochs: 512 steps (about
    // 3 minutes on 2 cores).
    let cfg =
        config("tiny", &["data.source=procedural:2048", "run.epochs=4", "run.log_every=8", "run.sample_every=128"]);
    let seed = cfg.run.seed;
    let model_cfg = cfg.model.clone();
    let mut trainer = TokenizerTrainer::start(cfg, &run).unwrap();
    let summary = trainer.run().unwrap().expect("one process reports its summary");
    assert_eq!(summary.steps, 512);
    let (before, after) = (summary.val_psnr.0.unwrap(), summary.val_psnr.1);
    assert!(after > before + 4.0, "held-out PSNR {before:.2} dB untrained → {after:.2} dB trained");

    // The semantic (cosine) loss falls.
    let records = read_metrics(&run.join("metrics.jsonl")).unwrap();
    let sem: Vec<f64> = records.iter().map(|r| r["sem"].as_f64().unwrap()).collect();
    let (first, last) = (mean(&sem[..3]), mean(&sem[sem.len() - 3..]));
    assert!(last < first - 0.3, "semantic loss {first:.3} → {last:.3}");

    // Everything a user looks at was written.
    for f in ["loss.png", "tokenizer.safetensors", "config.toml", "checkpoints/latest"] {
        assert!(run.join(f).exists(), "{f} missing");
    }
    assert!(std::fs::read_dir(run.join("samples")).unwrap().count() >= 4);

    // A linear probe on the trained latents beats the same probe on the untrained tokenizer.
    let device = Device::flex();
    let (trained, _) = load_tokenizer(
        &summary.tokenizer,
        &TokenizerLoadOptions { without_semantic: true, ..Default::default() },
        &device,
    )
    .unwrap();
    let untrained =
        initialize(model_cfg.with_teacher_dim(None).init(&device), &TokenizerInit, &mut Rng::seed_from(seed));
    let spec: DataSpec = "procedural:5000".parse().unwrap();
    let train = Loader::sequential(open_dataset(&spec, Split::Train, 7).unwrap(), 100, 32, 2).unwrap();
    let val = Loader::sequential(open_dataset(&spec, Split::Val, 7).unwrap(), 100, 32, 2).unwrap();
    let probe_cfg = ProbeConfig { features: ProbeFeatures::Mean, epochs: 40, ..Default::default() };
    let a = linear_probe(&untrained, &train, &val, 10, &probe_cfg, &device).unwrap();
    let b = linear_probe(&trained, &train, &val, 10, &probe_cfg, &device).unwrap();
    eprintln!(
        "probe top-1: untrained {:.3}, trained {:.3}; PSNR {before:.2} → {after:.2} dB; sem {first:.3} → {last:.3}",
        a.val_accuracy, b.val_accuracy
    );
    assert!(
        b.val_accuracy > a.val_accuracy + 0.05,
        "probe: untrained {:.3}, trained {:.3}",
        a.val_accuracy,
        b.val_accuracy
    );
}

/// Small, fast runs that still exercise every state: teacher + semantic decoder, the
/// discriminator from the first step, gradient accumulation.
const SMALL: &[&str] = &[
    "--set",
    "data.source=\"procedural:192\"",
    "--set",
    "optim.batch_size=8",
    "--set",
    "optim.accum_steps=2",
    "--set",
    "run.epochs=2",
    "--set",
    "run.checkpoint_every=3",
    "--set",
    "run.keep_checkpoints=10",
    "--set",
    "run.log_every=1",
    "--set",
    "run.sample_every=0",
    "--set",
    "teacher.resolution=32",
    "--set",
    "loss.gan_start_epoch=0",
];

#[test]
fn a_killed_run_resumes_exactly_and_stage_two_trains_only_the_decoder() {
    let dir = tempfile::tempdir().unwrap();
    let (full, killed) = (dir.path().join("full"), dir.path().join("killed"));
    let train = |out: &Path, extra: &[&str]| {
        let o = rectok()
            .args(["train", "tokenizer", "--config", "tiny", "--out"])
            .arg(out)
            .args(SMALL)
            .args(extra)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    };
    train(&full, &[]);
    let reference = losses(&full);
    assert_eq!(reference.len(), 24, "2 epochs of 12 optimizer steps");

    // Kill -9 as soon as the first checkpoint exists, then resume.
    let mut command = rectok();
    command.args(["train", "tokenizer", "--config", "tiny", "--out"]).arg(&killed).args(SMALL);
    kill_after_first_checkpoint(command, &killed);
    assert!(!killed.join("tokenizer.safetensors").exists(), "the killed run must not have finished");
    let partial = losses(&killed).len();
    assert!(partial < 24, "killed after {partial} steps");
    // Changing the trajectory on resume is refused; run options may change.
    let o = rectok()
        .args(["train", "tokenizer", "--resume", "--out"])
        .arg(&killed)
        .args(["--set", "optim.lr=1"])
        .output()
        .unwrap();
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("can change when resuming"));
    // So is another recipe: --config names the run's recipe only when it starts.
    let o = rectok()
        .args(["train", "tokenizer", "--resume", "--config", "tiny-stage2", "--out"])
        .arg(&killed)
        .output()
        .unwrap();
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("as it was configured; --config"));
    // The rest with activation checkpointing, which changes memory, not values.
    let o = rectok()
        .args(["train", "tokenizer", "--resume", "--out"])
        .arg(&killed)
        .args(["--set", "run.grad_checkpoint=true"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let resumed = losses(&killed);
    assert_eq!(resumed.len(), 24);
    for (step, (a, b)) in reference.iter().zip(&resumed).enumerate() {
        assert_eq!(a, b, "step {} differs after resuming", step + 1);
    }

    // The exported tokenizer works in `rectok reconstruct`.
    let images = dir.path().join("images");
    std::fs::create_dir_all(&images).unwrap();
    for i in 0..2 {
        let (img, _) = rectok::data::Procedural::held_out(0, 4).render(i, 32);
        img.save(images.join(format!("{i}.png"))).unwrap();
    }
    let o = rectok()
        .args(["reconstruct", "--tokenizer"])
        .arg(killed.join("tokenizer.safetensors"))
        .arg("--input")
        .arg(&images)
        .arg("--output")
        .arg(dir.path().join("recon"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(dir.path().join("recon/0.png").exists());

    // Stage 2 from the stage-1 run: the encoder is frozen, the decoder moves, the EMA encoder is
    // the raw stage-1 encoder (the reference's EMA copies frozen parameters).
    let stage2 = dir.path().join("stage2");
    let o = rectok()
        .args(["train", "tokenizer", "--config", "tiny-stage2", "--init-from"])
        .arg(&full)
        .arg("--out")
        .arg(&stage2)
        .args([
            "--set",
            "data.source=\"procedural:64\"",
            "--set",
            "optim.batch_size=8",
            "--set",
            "run.max_steps=3",
            "--set",
            "run.sample_every=0",
            // The frozen encoder's blocks stay off the graph; the decoder's are recomputed.
            "--set",
            "run.grad_checkpoint=true",
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let s1 = StateDict::open(&full.join("checkpoints/step_00000024/model.safetensors"), CheckpointEntry::Auto).unwrap();
    let s2 =
        StateDict::open(&stage2.join("checkpoints/step_00000003/model.safetensors"), CheckpointEntry::Auto).unwrap();
    let e2 = StateDict::open(&stage2.join("checkpoints/step_00000003/ema.safetensors"), CheckpointEntry::Auto).unwrap();
    for key in ["encoder.transformer.0.attn.qkv.weight", "encoder.latent_head.weight"] {
        assert_eq!(s1.read_f32(key).unwrap(), s2.read_f32(key).unwrap(), "{key} changed in stage 2");
        assert_eq!(s1.read_f32(key).unwrap(), e2.read_f32(key).unwrap(), "EMA {key} is not the raw encoder");
    }
    let key = "decoder.transformer.0.attn.qkv.weight";
    assert_ne!(s1.read_f32(key).unwrap(), s2.read_f32(key).unwrap(), "the decoder did not train");
    assert!(!s2.keys_with_prefix("sem_decoders.").any(|_| true), "stage 2 has no semantic decoder");
    let metrics = read_metrics(&stage2.join("metrics.jsonl")).unwrap();
    assert!(metrics.iter().all(|r| r["sem"].as_f64() == Some(0.0) && r["d_loss"].as_f64().unwrap() > 0.0));
}

#[test]
fn bad_runs_stop_with_clear_messages() {
    let dir = tempfile::tempdir().unwrap();
    let err = |args: &[&str]| {
        let o = rectok().args(args).output().unwrap();
        let e = String::from_utf8_lossy(&o.stderr).to_string();
        assert!(!o.status.success() && !e.contains("panicked"), "{e}");
        e
    };
    let base = |out: &Path| -> Vec<String> {
        [
            "train",
            "tokenizer",
            "--config",
            "tiny",
            "--out",
            out.to_str().unwrap(),
            "--set",
            "data.source=\"procedural:64\"",
            "--set",
            "optim.batch_size=8",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    let with = |out: &Path, extra: &[&str]| -> Vec<String> {
        base(out).into_iter().chain(extra.iter().map(|s| s.to_string())).collect()
    };
    let as_str = |v: &Vec<String>| v.iter().map(|s| s.as_str()).collect::<Vec<_>>().join("\u{0}");
    let run = |v: Vec<String>| err(&as_str(&v).split('\u{0}').collect::<Vec<_>>());

    // A non-finite weight is refused up front; a loss that overflows names the term and the
    // step, after saving a checkpoint.
    let e = run(with(&dir.path().join("inf"), &["--set", "loss.kl_weight=inf"]));
    assert!(e.contains("loss.kl_weight must be a finite number"), "{e}");
    assert!(!dir.path().join("inf").exists());
    let nan = dir.path().join("nan");
    let e = run(with(&nan, &["--set", "loss.kl_weight=1e38"]));
    assert!(e.contains("KL loss is inf at step 1"), "{e}");
    assert!(nan.join("checkpoints/step_00000000/state.json").exists());

    // An existing run is not overwritten.
    let e = run(base(&nan));
    assert!(e.contains("--resume"), "{e}");

    // A corrupt image names the file.
    let data = dir.path().join("data");
    for class in ["a", "b"] {
        std::fs::create_dir_all(data.join(class)).unwrap();
        for i in 0..4 {
            image::RgbImage::from_pixel(40, 40, image::Rgb([i * 40, 0, 0]))
                .save(data.join(class).join(format!("{i}.png")))
                .unwrap();
        }
    }
    std::fs::write(data.join("b/broken.png"), b"not a png").unwrap();
    let e = run(with(&dir.path().join("corrupt"), &["--data", data.to_str().unwrap(), "--set", "optim.batch_size=9"]));
    assert!(e.contains("broken.png"), "{e}");

    // Typos in options are caught before anything runs.
    let e = run(with(&dir.path().join("typo"), &["--set", "optim.batch_sise=4"]));
    assert!(e.contains("batch_sise"), "{e}");
}
