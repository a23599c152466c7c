//! `rectok bench`: throughput of the networks with random weights, as ratios to the reference
//! PyTorch implementation timed on the same machine.

use crate::device::{DeviceChoice, Precision};
use crate::nn::init::{TokenizerInit, initialize};
use crate::rng::Rng;
use crate::tokenizer::RecTokConfig;
use anyhow::{Context, Result, anyhow};
use burn::prelude::*;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// What to benchmark.
#[derive(clap::Subcommand, Debug)]
pub enum Which {
    /// Encode and decode of rectok_b at 256 px.
    Tokenizer(TokenizerBench),
    /// One sampling step (a forward pass) of DiT^DH-S and DiT^DH-XL on 128×16×16 latents.
    Dit(DitBench),
    /// One training step: tokenizer stage 1 (tiny recipe, rectok_b) and generator (ditdh-tiny
    /// recipe, DiT^DH-S on 128×16×16 latents).
    Train(TrainBench),
    /// The gradient all-reduce of multi-process training: MPI sums of a gradient-sized f32 buffer
    /// across the job's processes (run under `mpirun` / `srun`; docs/DISTRIBUTED.md).
    Allreduce(AllreduceBench),
    /// `rectok serve` under load on loopback (tiny random models): throughput, p50 / p99 latency
    /// and batch sizes with batching on and at batch 1, then an overload phase.
    Serve(super::bench_serve::ServeBench),
}

/// `rectok bench allreduce`.
#[derive(clap::Args, Debug)]
pub struct AllreduceBench {
    /// f32 elements per reduction (default: the gradients of rectok_b's stage 1, its trainable
    /// parameters).
    #[arg(long)]
    elements: Option<usize>,
    /// Timed reductions (after one warm-up); the median is reported.
    #[arg(long, default_value_t = 5)]
    repeats: usize,
}

/// Options every bench has.
#[derive(clap::Args, Debug)]
pub struct BenchOptions {
    /// Reference timings as JSON `{key: {batch: seconds}}`, the layout `--json` writes (from the
    /// reference PyTorch on the same machine, benches/reference_*.py); default: the figures of
    /// PyTorch 2.15, fp32, 2 threads on the 2-core development machine.
    #[arg(long, value_name = "JSON")]
    reference: Option<PathBuf>,
    /// Also write the timings as JSON.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// CPU threads.
    #[arg(long)]
    threads: Option<usize>,
    /// Arithmetic precision on a GPU device: f32, f16 or bf16 (autocast, as `--precision`
    /// elsewhere).
    #[arg(long, default_value = "f32")]
    precision: Precision,
}

impl BenchOptions {
    /// Checks the shared ranges and files, sets the threads and opens the results table.
    fn start(
        &self,
        iters: usize,
        batch_sizes: &[usize],
        stated: &'static [Stated],
        device: DeviceChoice,
    ) -> Result<Table> {
        super::common::between("--iters", iters, 1, 1000)?;
        if let Some(&b) = batch_sizes.iter().find(|&&b| !(1..=1024).contains(&b)) {
            anyhow::bail!("--batch-sizes must each be between 1 and 1024, got {b}");
        }
        super::common::check_threads(self.threads)?;
        if let Some(path) = &self.json {
            let mut inputs = crate::io::Inputs::new();
            inputs.add_opt(self.reference.as_deref(), "--reference");
            inputs.check_output_file(path, "--json")?;
        }
        crate::device::check_precision_device(self.precision, device, "--precision").map_err(|e| anyhow!(e))?;
        crate::device::set_cpu_threads(self.threads);
        let reference = self.reference.as_deref().map(read_reference).transpose()?;
        // The stated figures are the reference's on the development machine's CPU, in f32.
        let stated = if device == DeviceChoice::Cpu && self.precision == Precision::F32 { stated } else { &[] };
        let record = serde_json::json!({
            "threads": rayon::current_num_threads(),
            "device": device.to_string(),
            "precision": self.precision.to_string(),
        });
        Ok(Table { reference, stated, record, json: self.json.clone() })
    }
}

impl BenchOptions {
    /// The bench's device, with `--precision` in force.
    fn device(&self, choice: DeviceChoice) -> Result<Device> {
        let device = crate::device::select_device(choice).map_err(|e| anyhow!(e))?;
        crate::device::set_precision(self.precision, &device, "--precision").map_err(|e| anyhow!(e))?;
        Ok(device)
    }
}

/// A stated reference figure: `(key, batch, seconds)`.
type Stated = (&'static str, usize, f64);

/// Figures stated for the 2-core development machine (PyTorch 2.15, fp32, 2 threads), used when no
/// `--reference` file is given. DiT: seconds per forward; tokenizer: per image; training: per step.
const DIT_REFERENCE: &[Stated] = &[("s", 1, 0.73), ("s", 8, 5.7), ("xl", 1, 2.5), ("xl", 8, 17.9)];
const TOKENIZER_REFERENCE: &[Stated] =
    &[("encode", 1, 0.31), ("decode", 1, 0.31), ("encode", 8, 0.35), ("decode", 8, 0.43)];
/// (rectok_b: `benches/reference_train.py` at the fixed mask ratio, 2026-12-01.)
const TRAIN_REFERENCE: &[Stated] =
    &[("rectok_b", 1, 2.58), ("rectok_b", 4, 6.60), ("ditdh_s", 1, 3.4), ("ditdh_s", 4, 10.0)];

/// A bench's results: each measurement recorded for `--json` and set beside the reference's.
struct Table {
    reference: Option<serde_json::Value>,
    stated: &'static [Stated],
    record: serde_json::Value,
    json: Option<PathBuf>,
}

impl Table {
    /// Records `seconds` for `(key, batch)`; returns the reference's seconds (`decimals` places)
    /// and the ratio reference / ours, as printed columns (`-` without a reference figure).
    fn measure(&mut self, key: &str, batch: usize, seconds: f64, decimals: usize) -> (String, String) {
        self.record[key][batch.to_string()] = serde_json::json!(seconds);
        let r = match &self.reference {
            Some(r) => r[key][batch.to_string()].as_f64(),
            None => self.stated.iter().find(|(k, b, _)| *k == key && *b == batch).map(|s| s.2),
        };
        r.map_or(("-".into(), "-".into()), |r| (format!("{r:.decimals$}"), format!("{:.2}x", r / seconds)))
    }

    /// Prints the ratio's meaning and writes `--json`.
    fn finish(self) -> Result<()> {
        println!("ratio = reference time / our time (> 1: faster than the reference)");
        if let Some(path) = &self.json {
            super::common::write_json(path, &self.record)?;
        }
        Ok(())
    }
}

/// Reads `--reference`: `{key: {batch: seconds}}` with every time finite and > 0.
fn read_reference(path: &Path) -> Result<serde_json::Value> {
    crate::data::images::require_regular_file(path, "--reference")?;
    let text = std::fs::read_to_string(path).with_context(|| format!("{}", path.display()))?;
    let value: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{}: invalid JSON", path.display()))?;
    // `memory` holds the memory figures beside the times (written by `--json`), not times.
    for (key, per_batch) in value.as_object().into_iter().flatten().filter(|(k, _)| *k != "memory") {
        for (batch, seconds) in per_batch.as_object().into_iter().flatten() {
            if batch.parse::<usize>().is_err() {
                anyhow::bail!("{}: `{key}.{batch}`: `{batch}` is not a batch size", path.display());
            }
            if !seconds.as_f64().is_some_and(|s| s.is_finite() && s > 0.0) {
                anyhow::bail!("{}: `{key}.{batch}` must be a time in seconds > 0, got {seconds}", path.display());
            }
        }
    }
    Ok(value)
}

/// Median seconds of `iters` calls of `step`, after one untimed warm-up call.
fn median_step_seconds<T>(iters: usize, step: impl FnMut() -> Result<T>) -> Result<f64> {
    Ok(measure_steps(iters, step)?.seconds)
}

/// What [`measure_steps`] measured: the median seconds of a step, the minor page faults per timed
/// step (fresh pages the allocator had to map) and the peak resident memory over the warm-up and
/// the timed steps (Linux; `None` elsewhere).
struct StepStats {
    seconds: f64,
    faults_per_step: f64,
    peak_rss_mb: Option<f64>,
}

/// Times `iters` calls of `step` after one untimed warm-up call (see [`StepStats`]).
fn measure_steps<T>(iters: usize, mut step: impl FnMut() -> Result<T>) -> Result<StepStats> {
    // Writing 5 to clear_refs resets the process's peak RSS (VmHWM) to its current RSS.
    let _ = std::fs::write("/proc/self/clear_refs", "5");
    step()?;
    let faults = minor_faults();
    let mut times = Vec::with_capacity(iters);
    for _ in 0..iters {
        crate::signals::check("timing steps")?;
        let t = Instant::now();
        step()?;
        times.push(t.elapsed().as_secs_f64());
    }
    let faults_per_step = (minor_faults() - faults) as f64 / iters as f64;
    times.sort_by(|a, b| a.total_cmp(b));
    Ok(StepStats { seconds: times[times.len() / 2], faults_per_step, peak_rss_mb: peak_rss_mb() })
}

/// Minor page faults of this process so far.
fn minor_faults() -> u64 {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage fills the struct it is given.
    unsafe {
        libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr());
        usage.assume_init().ru_minflt as u64
    }
}

/// The peak resident set (VmHWM) in MB, from /proc/self/status.
fn peak_rss_mb() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kb: f64 =
        status.lines().find_map(|l| l.strip_prefix("VmHWM:"))?.trim().trim_end_matches("kB").trim().parse().ok()?;
    Some(kb / 1024.0)
}

/// The mask ratio both sides of the rectok-b step use: the mean of the released tokenizer's
/// `max(0, U(−0.1, 0.6))`, 0.6² / (2 · 0.7) (`benches/reference_train.py` fixes the same).
const MEAN_MASK_RATIO: f64 = 0.2571;

/// Options of `rectok bench train`.
#[derive(clap::Args, Debug)]
pub struct TrainBench {
    /// Recipes to time: `tiny` (the full tiny step, batch 16: teacher, semantic decoder, pixel losses),
    /// `rectok-b` (the reference's measured step: masking at the fixed mean ratio 0.2571, flow
    /// noise, MSE + KL, backward and AdamW, no teacher), `ditdh-tiny` (the tiny generator step,
    /// batch 32) and `ditdh-s` (the reference's measured step: transport loss, backward, AdamW,
    /// EMA on cached latents).
    #[arg(long, value_delimiter = ',', default_value = "tiny,rectok-b,ditdh-tiny,ditdh-s")]
    recipes: Vec<String>,
    /// Batch sizes for rectok-b and ditdh-s (the tiny recipes use their own).
    #[arg(long, value_delimiter = ',', default_value = "1")]
    batch_sizes: Vec<usize>,
    /// Timed steps per measurement (the median is reported), after one warm-up step.
    #[arg(long, default_value_t = 3)]
    iters: usize,
    /// Data-parallel replicas of the training step (`run.data_parallel`; 0: one per thread, at
    /// most 4; 1: off).
    #[arg(long, default_value_t = 0)]
    data_parallel: usize,
    /// Compute device (`run.device`).
    #[arg(long, default_value = "cpu")]
    device: DeviceChoice,
    /// Activation checkpointing of the transformer blocks (`run.grad_checkpoint`): one more
    /// forward per block for less memory.
    #[arg(long)]
    grad_checkpoint: bool,
    #[command(flatten)]
    common: BenchOptions,
}

fn run_train(args: TrainBench) -> Result<()> {
    // The runs live in temporary folders removed on the way out: a stopped benchmark is not
    // continued (no `--resume` command, no checkpoint to point at), it is run again. Ctrl-C
    // stops at the next step, so that the folders are removed.
    let _signals = crate::signals::Deferral::start();
    time_train_steps(args).map_err(|mut e| {
        if let Some(stop) = e.downcast_mut::<crate::signals::Interrupted>() {
            *stop = crate::signals::interrupted(stop.signal, "timing training steps");
        }
        e
    })
}

fn time_train_steps(args: TrainBench) -> Result<()> {
    use crate::train::config::TokenizerTrainConfig;
    use crate::train::tokenizer::TokenizerTrainer;
    let mut table = args.common.start(args.iters, &args.batch_sizes, TRAIN_REFERENCE, args.device)?;
    let recipes = args.recipes.iter().map(|r| train_recipe(r, &args.batch_sizes)).collect::<Result<Vec<_>>>()?;
    let dp = args.data_parallel;
    super::common::ensure(dp <= 64, "--data-parallel", "between 0 (automatic) and 64", dp)?;
    let replicas = crate::train::params::replicas(args.data_parallel, &args.common.device(args.device)?);
    table.record["data_parallel"] = replicas.into();
    table.record["grad_checkpoint"] = args.grad_checkpoint.into();
    println!(
        "training step (tokenizer: tiny, rectok_b; generator: ditdh-tiny, ditdh_s), device {} ({}), {} CPU threads, \
            {replicas} data-parallel replica(s){}",
        args.device,
        args.common.precision,
        rayon::current_num_threads(),
        if args.grad_checkpoint { ", activation checkpointing" } else { "" }
    );
    let run_options = [
        format!("run.data_parallel={}", args.data_parallel),
        format!("run.device=\"{}\"", args.device),
        format!("run.precision=\"{}\"", args.common.precision),
        format!("run.grad_checkpoint={}", args.grad_checkpoint),
    ];
    println!(
        "{:<10} {:>6} {:>10} {:>10} {:>12} {:>8} {:>12} {:>12}",
        "recipe", "batch", "s/step", "images/s", "reference s", "ratio", "faults/step", "peak RSS MB"
    );
    for (key, name, batches) in recipes {
        for b in batches {
            let dir = tempfile::tempdir().context("temporary run folder")?;
            let (batch, stats) = if name.starts_with("ditdh") {
                time_generator_step(name, b, args.iters, &run_options, dir.path())?
            } else {
                let mut overrides = vec![
                    "run.checkpoint_every=1000000".to_string(),
                    "data.grid_images=1".into(),
                    "data.flip=false".into(),
                ];
                overrides.extend(run_options.iter().cloned());
                if name != "tiny" {
                    overrides.extend([
                        format!("optim.batch_size={b}"),
                        "optim.accum_steps=1".into(),
                        "teacher.spec=none".into(),
                        "loss.perceptual=none".into(),
                        "loss.gan_start_epoch=1000".into(),
                        // The same work as the reference side at every step: a per-step draw of
                        // max(0, U(−0.1, 0.6)) made the two sides time different token counts.
                        format!("model.mask_ratio={MEAN_MASK_RATIO}"),
                        "model.mask_ratio_type=\"fix\"".into(),
                    ]);
                }
                let mut config = TokenizerTrainConfig::load(name, &overrides)?;
                let batch = config.optim.batch_size;
                config.data.source = format!("procedural:{}", batch * (args.iters + 2));
                let mut trainer = TokenizerTrainer::start(config, &dir.path().join("run"))?;
                trainer.begin()?;
                (batch, measure_steps(args.iters, || trainer.train_step())?)
            };
            let t = stats.seconds;
            let (r, ratio) = table.measure(key, batch, t, 2);
            let peak = stats.peak_rss_mb.map_or("-".to_string(), |mb| format!("{mb:.0}"));
            table.record["memory"][key][batch.to_string()] =
                serde_json::json!({"faults_per_step": stats.faults_per_step, "peak_rss_mb": stats.peak_rss_mb});
            println!(
                "{key:<10} {batch:>6} {t:>10.3} {:>10.2} {r:>12} {ratio:>8} {:>12.0} {peak:>12}",
                batch as f64 / t,
                stats.faults_per_step
            );
        }
    }
    table.finish()
}

/// `rectok bench train --recipes` entry `recipe`: its key in the reference timings, its training
/// recipe and the batch sizes to time (0: the recipe's own).
fn train_recipe(recipe: &str, batch_sizes: &[usize]) -> Result<(&'static str, &'static str, Vec<usize>)> {
    Ok(match crate::config::canonical_name(recipe).as_str() {
        "tiny" => ("tiny", "tiny", vec![0]),
        "rectok-b" => ("rectok_b", "rectok-b-stage1", batch_sizes.to_vec()),
        "ditdh-tiny" => ("ditdh-tiny", "ditdh-tiny", vec![0]),
        "ditdh-s" => ("ditdh_s", "ditdh-s", batch_sizes.to_vec()),
        other => anyhow::bail!("--recipes: unknown recipe `{other}` (tiny, rectok-b, ditdh-tiny, ditdh-s)"),
    })
}

/// Times one generator training step of `recipe` in `dir` (latents from a cache of a
/// random-weight tokenizer: tiny for `ditdh-tiny`, rectok_b geometry for the others); `batch` 0
/// keeps the recipe's; `run_options` are `run.*` overrides. Returns the batch size and the
/// step statistics.
fn time_generator_step(
    recipe: &str,
    batch: usize,
    iters: usize,
    run_options: &[String],
    dir: &Path,
) -> Result<(usize, StepStats)> {
    use crate::train::generator::GeneratorTrainer;
    use crate::train::generator_config::GeneratorTrainConfig;
    let device = crate::device::select_device(DeviceChoice::Cpu).map_err(|e| anyhow!(e))?;
    let tok_config =
        if recipe == "ditdh-tiny" { RecTokConfig::tiny() } else { RecTokConfig::rectok_b() }.with_teacher_dim(None);
    let tokenizer = initialize(tok_config.init(&device), &TokenizerInit, &mut Rng::seed_from(0));
    let tok_path = dir.join("tokenizer.safetensors");
    crate::weights::tokenizer::save_tokenizer(&tokenizer, &tok_path)?;
    let mut overrides = vec![
        format!("tokenizer.path=\"{}\"", tok_path.display()),
        "run.checkpoint_every=1000000".into(),
        "run.fd_images=0".into(),
        "data.flip=false".into(),
        "optim.accum_steps=1".into(),
    ];
    overrides.extend(run_options.iter().cloned());
    if batch > 0 {
        overrides.push(format!("optim.batch_size={batch}"));
    }
    let mut config = GeneratorTrainConfig::load(recipe, &overrides)?;
    let b = config.optim.batch_size;
    config.data.source = format!("procedural:{}", b * (iters + 2));
    config.latents.cache = Some("cache".into());
    let mut trainer = GeneratorTrainer::start(config, &dir.join("run"))?;
    trainer.begin()?;
    Ok((b, measure_steps(iters, || trainer.train_step())?))
}

/// Options of `rectok bench dit`.
#[derive(clap::Args, Debug)]
pub struct DitBench {
    /// Models to time (s, b, l, xl).
    #[arg(long, value_delimiter = ',', default_value = "s,xl")]
    models: Vec<String>,
    /// Batch sizes to time.
    #[arg(long, value_delimiter = ',', default_value = "1,8")]
    batch_sizes: Vec<usize>,
    /// Timed repetitions per measurement (the median is reported).
    #[arg(long, default_value_t = 3)]
    iters: usize,
    /// Also time one whole sample per model with this many grid points (`generate --steps`;
    /// Euler, no guidance, batch 1; 0: not).
    #[arg(long, default_value_t = 0)]
    sample_steps: usize,
    /// Compute device.
    #[arg(long, default_value = "cpu")]
    device: DeviceChoice,
    #[command(flatten)]
    common: BenchOptions,
}

fn run_dit(args: DitBench) -> Result<()> {
    use crate::generator::DitDhConfig;
    let mut table = args.common.start(args.iters, &args.batch_sizes, DIT_REFERENCE, args.device)?;
    super::common::ensure(
        args.sample_steps != 1 && args.sample_steps <= 1000,
        "--sample-steps",
        "0 (off) or between 2 and 1000",
        args.sample_steps,
    )?;
    let device = args.common.device(args.device)?;
    println!(
        "DiT^DH on 128×16×16 latents, device {} ({}), {} CPU threads",
        args.device,
        args.common.precision,
        rayon::current_num_threads()
    );
    println!(
        "{:<6} {:>6} {:>12} {:>14} {:>16} {:>8}",
        "model", "batch", "s/forward", "50-step im/s", "reference s/fwd", "ratio"
    );
    for name in &args.models {
        let config = DitDhConfig::preset(name, 128, 16)
            .ok_or_else(|| anyhow!("unknown DiT^DH preset `{name}` (s, b, l, xl)"))?;
        let mut rng = Rng::seed_from(0);
        let model = initialize(config.init(&device), &crate::nn::init::NormalInit(0.02), &mut rng);
        for &b in &args.batch_sizes {
            let x = rng.normal_tensor([b, 128, 16, 16], &device);
            let t = rng.uniform_tensor([b], &device);
            let y = Tensor::<1, Int>::from_data(TensorData::new((0..b as i64).collect::<Vec<_>>(), [b]), &device);
            let secs =
                median_step_seconds(args.iters, || Ok(model.forward(x.clone(), t.clone(), y.clone()).into_data()))?;
            let (r, ratio) = table.measure(name, b, secs, 2);
            // A 50-step sample: 50 grid points = 49 Euler evaluations.
            let per_image = secs * 49.0 / b as f64;
            println!("{name:<6} {b:>6} {secs:>12.3} {:>14.4} {r:>16} {ratio:>8}", 1.0 / per_image);
        }
        if args.sample_steps > 0 {
            let grid = crate::rectified_flow::ode_grid(args.sample_steps, model.config.time_shift());
            let secs = median_step_seconds(args.iters, || {
                let z = crate::generator::sampler::sample_class_latents(
                    &model,
                    &crate::generator::Guidance::None,
                    &[0],
                    0,
                    0,
                    &grid,
                    crate::generator::Integrator::Euler,
                    |_| {},
                );
                Ok(crate::device::read_f32(z))
            })?;
            table.record[format!("{name}_sample")][args.sample_steps.to_string()] = serde_json::json!(secs);
            println!("{name:<6} one {}-step sample (batch 1): {secs:.3} s", args.sample_steps);
        }
    }
    table.finish()
}

/// Options of `rectok bench tokenizer`.
#[derive(clap::Args, Debug)]
pub struct TokenizerBench {
    /// Tokenizer geometry: `rectok_b` (the released one, 256 px) or `tiny` (the test fixture's,
    /// for slow devices such as a software Vulkan driver).
    #[arg(long, default_value = "rectok_b")]
    model: String,
    /// Batch sizes to time.
    #[arg(long, value_delimiter = ',', default_value = "1,8")]
    batch_sizes: Vec<usize>,
    /// Timed repetitions per measurement (the median is reported).
    #[arg(long, default_value_t = 5)]
    iters: usize,
    /// Compute device.
    #[arg(long, default_value = "cpu")]
    device: DeviceChoice,
    #[command(flatten)]
    common: BenchOptions,
}

fn run_tokenizer(args: TokenizerBench) -> Result<()> {
    let (config, stated) = match crate::config::canonical_name(&args.model).as_str() {
        "rectok-b" | "b" => (RecTokConfig::rectok_b(), TOKENIZER_REFERENCE),
        "tiny" => (RecTokConfig::tiny(), &[][..]),
        other => anyhow::bail!("--model: unknown tokenizer `{other}` (rectok_b, tiny)"),
    };
    let config = config.with_teacher_dim(None);
    let mut table = args.common.start(args.iters, &args.batch_sizes, stated, args.device)?;
    let device = args.common.device(args.device)?;
    let mut rng = Rng::seed_from(0);
    let model = initialize(config.init(&device), &TokenizerInit, &mut rng);
    println!(
        "{} tokenizer, {} parameters, device {} ({}), {} CPU threads",
        args.model,
        model.num_inference_params(),
        args.device,
        args.common.precision,
        rayon::current_num_threads()
    );
    println!(
        "{:<8} {:>6} {:>12} {:>10} {:>14} {:>10}",
        "op", "batch", "s/image", "images/s", "reference s/im", "ratio"
    );
    let (s, c, g) = (config.img_size, config.token_channels, config.grid_size());
    for &b in &args.batch_sizes {
        let x = rng.uniform_tensor([b, 3, s, s], &device) * 2.0 - 1.0;
        let z = rng.normal_tensor([b, g * g, c], &device);
        let enc = median_step_seconds(args.iters, || Ok(model.posterior(x.clone()).mean.into_data()))? / b as f64;
        let dec =
            median_step_seconds(args.iters, || Ok(model.decoder.forward(z.clone(), None).into_data()))? / b as f64;
        for (op, t) in [("encode", enc), ("decode", dec)] {
            let (r, ratio) = table.measure(op, b, t, 3);
            println!("{op:<8} {b:>6} {t:>12.4} {:>10.2} {r:>14} {ratio:>10}", 1.0 / t);
        }
    }
    table.finish()
}

pub fn run(which: Which) -> Result<()> {
    match which {
        Which::Tokenizer(a) => run_tokenizer(a),
        Which::Dit(a) => run_dit(a),
        Which::Train(a) => run_train(a),
        Which::Allreduce(a) => run_allreduce(a),
        Which::Serve(a) => super::bench_serve::run(a),
    }
}

/// Times [`crate::dist::World::sum_f32`] (flat buckets, as a training step sums its gradients)
/// and checks the sums; rank 0 prints the median time, the algorithm bandwidth (bytes / time)
/// and the bus bandwidth (× 2(n−1)/n, the traffic of a ring all-reduce, as nccl-tests reports).
fn run_allreduce(a: AllreduceBench) -> Result<()> {
    crate::config::between("--repeats", a.repeats, 1, 1000).map_err(|e| anyhow!(e))?;
    let elements = a.elements.unwrap_or_else(|| crate::tokenizer::RecTokConfig::rectok_b().approx_params() as usize);
    crate::config::between("--elements", elements, 1, 1 << 31).map_err(|e| anyhow!(e))?;
    let world = crate::dist::world();
    let n = world.size();
    if n == 1 {
        anyhow::bail!(
            "one process has nothing to reduce: run it under MPI, e.g. `mpirun -np 2 rectok bench allreduce` \
             (a build with `--features mpi`)"
        );
    }
    // Element i of rank r holds r + i mod 7, so the sum is known exactly.
    let fill = |buf: &mut Vec<f32>| {
        buf.clear();
        buf.extend((0..elements).map(|i| (world.rank() + i % 7) as f32));
    };
    let expected = |i: usize| (n * (n - 1) / 2 + n * (i % 7)) as f32;
    let mut buf = Vec::with_capacity(elements);
    let mut times = Vec::with_capacity(a.repeats);
    for k in 0..=a.repeats {
        fill(&mut buf);
        let t0 = std::time::Instant::now();
        world.sum_f32(&mut buf);
        if k > 0 {
            times.push(t0.elapsed().as_secs_f64());
        }
        for i in [0, 1, elements / 2, elements - 1] {
            if buf[i] != expected(i) {
                anyhow::bail!("all-reduce element {i}: {} instead of {}", buf[i], expected(i));
            }
        }
    }
    times.sort_by(f64::total_cmp);
    let median = times[times.len() / 2];
    let bytes = (elements * 4) as f64;
    if world.is_root() {
        println!(
            "all-reduce of {elements} f32 ({:.1} MB) over {n} process(es), {} bucket(s) of at most {} elements: \
             median {median:.4} s of {}; algorithm bandwidth {:.2} GB/s, bus bandwidth {:.2} GB/s",
            bytes / 1e6,
            elements.div_ceil(crate::dist::BUCKET_ELEMENTS),
            crate::dist::BUCKET_ELEMENTS,
            a.repeats,
            bytes / median / 1e9,
            bytes / median / 1e9 * 2.0 * (n as f64 - 1.0) / n as f64,
        );
    }
    Ok(())
}
