//! Device-resident work (issue 17): the sampling loop, an encode/decode batch and a training step
//! read nothing back to the host beyond what their logging needs. Every read of tensor values
//! goes through `rectok::device::read_back`, which counts; on a GPU each read is a wait for the
//! queued kernels. One test function, because the counter is global to the process.

use rectok::device::host_reads;
use rectok::generator::{DitDhConfig, Guidance, sampler};
use rectok::nn::init::{NormalInit, TokenizerInit, initialize};
use rectok::rng::Rng;
use rectok::tokenizer::RecTokConfig;
use rectok::train::config::TokenizerTrainConfig;
use rectok::train::generator::GeneratorTrainer;
use rectok::train::generator_config::GeneratorTrainConfig;
use rectok::train::tokenizer::TokenizerTrainer;

/// The run options every counted run shares: no checkpoints, one replica (as on a GPU), the
/// device `name`.
fn run_options(name: &str) -> Vec<String> {
    vec!["run.checkpoint_every=1000000".into(), "run.data_parallel=1".into(), format!("run.device=\"{name}\"")]
}

/// A `tiny` tokenizer run on `name` in `dir` with `extra` overrides, data for `steps` more steps,
/// and its first step (kernel compilation, autotuning) already taken.
fn tokenizer_run(name: &str, dir: &std::path::Path, steps: usize, extra: &[&str]) -> TokenizerTrainer {
    let mut overrides = run_options(name);
    overrides.extend(["data.grid_images=1", "teacher.resolution=32"].iter().chain(extra).map(|s| s.to_string()));
    let mut config = TokenizerTrainConfig::load("tiny", &overrides).unwrap();
    config.data.source = format!("procedural:{}", config.optim.batch_size * (steps + 2));
    let mut trainer = TokenizerTrainer::start(config, dir).unwrap();
    trainer.begin().unwrap();
    trainer.train_step().unwrap();
    trainer
}

/// Host reads made while `work` runs.
fn reads_during<T>(work: impl FnOnce() -> T) -> (usize, T) {
    let before = host_reads();
    let out = work();
    (host_reads() - before, out)
}

#[test]
fn loops_and_steps_stay_on_the_device() {
    check_on("cpu");
    // The same counts on Vulkan, where each read is a real wait (a build with `--features vulkan`
    // and a Vulkan driver, as in CI).
    let driver = ["/usr/share/vulkan/icd.d", "/etc/vulkan/icd.d"]
        .iter()
        .any(|d| std::fs::read_dir(d).is_ok_and(|mut e| e.next().is_some()));
    if cfg!(feature = "vulkan") && driver {
        check_on("vulkan");
    }
}

fn check_on(name: &str) {
    let start = std::time::Instant::now();
    let choice: rectok::device::DeviceChoice = name.parse().unwrap();
    let device = rectok::device::select_device(choice).unwrap();
    let mut rng = Rng::seed_from(3);

    // Sampling: no read inside the loop, whatever the number of steps or the guidance.
    let config = DitDhConfig::new(4, 8, 32, 2, 2).with_dec_hidden(48).with_dec_depth(1).with_dec_heads(2);
    let net = initialize(config.init(&device), &NormalInit(0.02), &mut rng);
    let guide = initialize(config.init(&device), &NormalInit(0.02), &mut rng);
    for guidance in [
        Guidance::None,
        Guidance::Cfg { scale: 2.0, interval: (0.0, 1.0) },
        Guidance::Auto { guide: &guide, scale: 1.5, interval: (0.1, 0.9) },
    ] {
        for steps in [3, 7] {
            let grid: Vec<f32> = (0..steps).map(|k| k as f32 / (steps - 1) as f32).collect();
            for integrator in [sampler::Integrator::Euler, sampler::Integrator::Heun] {
                let (reads, z) = reads_during(|| {
                    sampler::sample_class_latents(&net, &guidance, &[0, 3], 7, 0, &grid, integrator, |_| {})
                });
                assert_eq!(reads, 0, "{name}: {guidance:?}, {steps} steps, {integrator:?}: {reads} host reads");
                assert_eq!(z.dims(), [2, 8, 4, 4]);
            }
        }
    }

    // Encode and decode of a batch: no read until the caller asks for the values.
    let tok = initialize(RecTokConfig::tiny().with_teacher_dim(None).init(&device), &TokenizerInit, &mut rng);
    let s = tok.config.img_size;
    let x = rng.uniform_tensor([4, 3, s, s], &device) * 2.0 - 1.0;
    let (reads, (z, images)) = reads_during(|| {
        let z = tok.posterior(x.clone()).mean;
        let images = tok.reconstruct(x.clone());
        (z, images)
    });
    assert_eq!(reads, 0, "encode + reconstruct of a batch: {reads} host reads");
    let (reads, _) = reads_during(|| rectok::device::read_f32(z.sum() + images.sum()));
    assert_eq!(reads, 1, "one read for the values");

    // Training steps: one read per step — its losses and gradient norm in one transfer, however
    // many parameters and micro-batches (one replica, as on a GPU).
    let dir = tempfile::tempdir().unwrap();
    let steps = if name == "cpu" { 3 } else { 1 };
    let mut trainer =
        tokenizer_run(name, &dir.path().join("tok"), steps, &["loss.gan_start_epoch=1000", "optim.accum_steps=2"]);
    for _ in 0..steps {
        let (reads, v) = reads_during(|| trainer.train_step().unwrap());
        assert!(v.loss.is_finite() && v.grad_norm.is_finite() && v.grad_norm > 0.0, "{v:?}");
        assert_eq!(reads, 1, "{name}: tokenizer step (2 micro-batches): {reads} host reads");
    }

    // With the GAN on, the discriminator's losses and gradient norm come in the same read.
    let mut trainer = tokenizer_run(name, &dir.path().join("gan"), steps, &["loss.gan_start_epoch=0"]);
    let (reads, v) = reads_during(|| trainer.train_step().unwrap());
    assert_eq!(reads, 1, "{name}: tokenizer step with the GAN: {reads} host reads");
    // The values read back land where they belong.
    assert!(v.grad_norm > 0.0 && v.d_loss > 0.0 && v.rec > 0.0, "{v:?}");

    // The generator step, on the latents of a random tiny tokenizer.
    let tok_path = dir.path().join("tokenizer.safetensors");
    rectok::weights::tokenizer::save_tokenizer(&tok, &tok_path).unwrap();
    let mut overrides = run_options(name);
    overrides.extend([format!("tokenizer.path=\"{}\"", tok_path.display()), "run.fd_images=0".into()]);
    let mut config = GeneratorTrainConfig::load("ditdh-tiny", &overrides).unwrap();
    config.data.source = format!("procedural:{}", config.optim.batch_size * (steps + 2));
    let mut trainer = GeneratorTrainer::start(config, &dir.path().join("gen")).unwrap();
    trainer.begin().unwrap();
    trainer.train_step().unwrap();
    for _ in 0..steps {
        let (reads, v) = reads_during(|| trainer.train_step().unwrap());
        assert!(v.loss.is_finite() && v.grad_norm.is_finite() && v.grad_norm > 0.0, "{v:?}");
        assert_eq!(reads, 1, "{name}: generator step: {reads} host reads");
    }
    eprintln!("{name}: counted in {:.0} s", start.elapsed().as_secs_f64());
}
