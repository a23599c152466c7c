//! `rectok serve`: the tokenizer (and generator) over HTTP with a web page (src/service/).

use super::common::{DeviceArgs, GeneratorArgs, GuidanceArgs, TokenizerArgs, between};
use crate::service::{BatchSettings, Limits, ModelFiles, Models, ServeOptions};
use crate::weights::CheckpointEntry;
use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Serve the models over HTTP.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Tokenizer checkpoint (official .pth or safetensors); without it, the models of a finished
    /// `rectok demo` run (--run).
    #[arg(long, value_name = "CKPT")]
    tokenizer: Option<PathBuf>,
    /// Latent statistics (safetensors with `mean` and `std`), overriding the checkpoint's.
    #[arg(long, value_name = "FILE")]
    latent_stats: Option<PathBuf>,
    /// Tokenizer configuration when it cannot be inferred: a preset or a JSON / TOML file.
    #[arg(long, value_name = "PRESET|JSON")]
    config: Option<String>,
    /// DiT^DH generator checkpoint (enables /v1/generate).
    #[arg(long, value_name = "CKPT")]
    generator: Option<PathBuf>,
    /// Generator configuration when it cannot be inferred: a preset (xl, l, b, s) or a JSON file.
    #[arg(long, value_name = "PRESET|JSON")]
    generator_config: Option<String>,
    /// AutoGuidance guide checkpoint (the released ditdhs_epoch_0029.pth): `cfg` then weighs it.
    #[arg(long, value_name = "CKPT")]
    guide: Option<PathBuf>,
    /// A finished `rectok demo` run folder whose tokenizer and generator to serve (used when
    /// --tokenizer is not given).
    #[arg(long, value_name = "DIR", default_value = "rectok-demo")]
    run: PathBuf,
    /// Address to listen on (loopback by default; set --api-key before exposing it).
    #[arg(long, default_value = "127.0.0.1:8080")]
    bind: String,
    /// Most images (or samples) per batch: concurrent requests of one kind are batched up to it.
    #[arg(long, default_value_t = 8)]
    max_batch: usize,
    /// How long the first request of a batch waits for others (ms; 0 = only those already
    /// queued).
    #[arg(long, default_value_t = 10)]
    batch_window_ms: u64,
    /// Most requests waiting per model; over it the server answers 503 with Retry-After.
    #[arg(long, default_value_t = 64)]
    queue: usize,
    /// Seconds a request may take (queue and computation) before a 503 `timeout` answer.
    #[arg(long, default_value_t = 120.0)]
    timeout_s: f64,
    /// Largest request body in MiB.
    #[arg(long, default_value_t = 32)]
    max_body_mb: usize,
    /// Most time-grid points of a generate request.
    #[arg(long, default_value_t = 250)]
    max_steps: usize,
    /// Most samples of a generate request.
    #[arg(long, default_value_t = 64)]
    max_samples: usize,
    /// Most open connections; one over it is closed at once.
    #[arg(long, default_value_t = 1024)]
    max_connections: usize,
    /// After SIGTERM: seconds during which /readyz answers 503 while requests are still accepted
    /// (for a load balancer), before the listener closes and the requests in flight drain.
    #[arg(long, default_value_t = 0.0)]
    drain_delay_s: f64,
    /// Require `Authorization: Bearer KEY` on /v1/* and /metrics.
    #[arg(long, env = "RECTOK_API_KEY", hide_env_values = true, value_name = "KEY")]
    api_key: Option<String>,
    #[command(flatten)]
    device: DeviceArgs,
}

/// The models of a finished demo run: `report.json`'s `result.files`.
fn demo_models(run: &Path) -> Result<(PathBuf, PathBuf, f64)> {
    let report = run.join("report.json");
    if !report.is_file() {
        bail!(
            "no --tokenizer given and {} holds no finished demo run (no report.json): run `rectok demo` first, \
             or pass --tokenizer CKPT [--generator CKPT]",
            run.display()
        );
    }
    let text = std::fs::read_to_string(&report).with_context(|| format!("{}: cannot read", report.display()))?;
    let json: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{}: not valid JSON", report.display()))?;
    let file = |key: &str| -> Result<PathBuf> {
        let rel = json["result"]["files"][key]
            .as_str()
            .with_context(|| format!("{}: has no result.files.{key}", report.display()))?;
        let path = run.join(rel);
        if !path.is_file() {
            bail!("{}: names {} as the {key}, which does not exist", report.display(), path.display());
        }
        Ok(path)
    };
    Ok((file("tokenizer")?, file("generator")?, json["result"]["sample_cfg"].as_f64().unwrap_or(1.0)))
}

fn file_name(path: &Path) -> String {
    path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
}

pub fn run(args: Args) -> Result<()> {
    between("--max-batch", args.max_batch, 1, 4096)?;
    between("--batch-window-ms", args.batch_window_ms, 0, 60_000)?;
    between("--queue", args.queue, 1, 1_000_000)?;
    between("--max-body-mb", args.max_body_mb, 1, 4096)?;
    between("--max-steps", args.max_steps, 2, 10_000)?;
    between("--max-samples", args.max_samples, 1, 10_000)?;
    if !(args.timeout_s.is_finite() && (0.001..=86_400.0).contains(&args.timeout_s)) {
        bail!("--timeout-s must be between 0.001 and 86400 seconds, got {}", args.timeout_s);
    }
    between("--max-connections", args.max_connections, 1, 1_000_000)?;
    if !(args.drain_delay_s.is_finite() && (0.0..=3600.0).contains(&args.drain_delay_s)) {
        bail!("--drain-delay-s must be between 0 and 3600 seconds, got {}", args.drain_delay_s);
    }
    // The address is checked before any model is loaded.
    let addresses = std::net::ToSocketAddrs::to_socket_addrs(args.bind.as_str())
        .map_err(|e| anyhow::anyhow!("--bind {}: not an address to listen on, as HOST:PORT ({e})", args.bind))?
        .collect::<Vec<_>>();
    if args.api_key.as_deref().is_some_and(|k| k.trim().is_empty() || k.trim() != k) {
        bail!("--api-key (or RECTOK_API_KEY) must be non-empty and without surrounding spaces");
    }
    if args.guide.is_some() && args.generator.is_none() && args.tokenizer.is_some() {
        bail!("--guide needs --generator");
    }
    args.device.validate()?;
    let listener = crate::service::bind(&args.bind)?;
    let (tokenizer, generator, suggested_cfg) = match &args.tokenizer {
        Some(t) => (t.clone(), args.generator.clone(), 1.0),
        None => {
            let (t, g, cfg) = demo_models(&args.run)?;
            (t, Some(args.generator.clone().unwrap_or(g)), cfg)
        }
    };
    let suggested_cfg = if args.guide.is_some() { 1.29 } else { suggested_cfg };
    let device = args.device.device()?;
    let tokenizer_args = TokenizerArgs {
        tokenizer: tokenizer.clone(),
        entry: CheckpointEntry::Auto,
        latent_stats: args.latent_stats.clone(),
        config: args.config.clone(),
    };
    let model =
        if generator.is_some() { tokenizer_args.load_with_stats(&device)? } else { tokenizer_args.load(&device)? };
    let (net, guide) = match &generator {
        Some(path) => {
            let generator_args = GeneratorArgs {
                generator: path.clone(),
                generator_entry: CheckpointEntry::Auto,
                generator_config: args.generator_config.clone(),
            };
            let net = generator_args.load(&model, &device)?;
            let guidance_args =
                GuidanceArgs { guide: args.guide.clone(), guide_config: None, cfg: 1.0, cfg_interval: vec![0.0, 1.0] };
            let guide = guidance_args.load_guide(CheckpointEntry::Auto, &model, &net, &device)?;
            (Some(net), guide)
        }
        None => (None, None),
    };
    if addresses.iter().any(|a| !a.ip().is_loopback()) && args.api_key.is_none() {
        tracing::warn!("--bind {}: reachable from other machines without --api-key", args.bind);
    }
    let files = ModelFiles {
        tokenizer: file_name(&tokenizer),
        latent_stats: args.latent_stats.as_deref().map(file_name),
        generator: generator.as_deref().map(file_name),
        guide: args.guide.as_deref().map(file_name),
    };
    let models = Models { tokenizer: model, generator: net, guide, files, device };
    let options = ServeOptions {
        batch: BatchSettings {
            max_batch: args.max_batch,
            window: Duration::from_millis(args.batch_window_ms),
            queue: args.queue,
        },
        limits: Limits {
            max_body_bytes: args.max_body_mb << 20,
            max_steps: args.max_steps,
            max_samples: args.max_samples,
            timeout: Duration::from_secs_f64(args.timeout_s),
        },
        api_key: args.api_key.clone(),
        suggested_cfg,
        max_connections: args.max_connections,
        drain_delay: Duration::from_secs_f64(args.drain_delay_s),
    };
    crate::service::serve(models, &options, listener)
}
