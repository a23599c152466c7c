//! `rectok bench serve`: a bounded load test of `rectok serve` on loopback with tiny random
//! models: N concurrent clients for T seconds, with batching on and at batch 1 in alternation
//! (medians of the rounds), then an overload phase against a short queue.

use super::common::{between, check_threads};
use crate::generator::DitDhConfig;
use crate::service::{BatchSettings, Limits, Models, ServeOptions, Service};
use crate::tokenizer::{LatentStats, RecTokConfig};
use anyhow::{Context, Result, bail};
use burn::prelude::*;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// `rectok bench serve`.
#[derive(clap::Args, Debug)]
pub struct ServeBench {
    /// Concurrent clients (each sends its next request when the last is answered).
    #[arg(long, default_value_t = 8)]
    clients: usize,
    /// Seconds per phase.
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,
    /// Route under load: reconstruct, encode, decode or generate.
    #[arg(long, default_value = "reconstruct")]
    route: String,
    /// --max-batch of the batching phase.
    #[arg(long, default_value_t = 8)]
    max_batch: usize,
    /// --batch-window-ms of the batching phase.
    #[arg(long, default_value_t = 5)]
    batch_window_ms: u64,
    /// Rounds of the pair (batching, batch 1), interleaved; medians are reported.
    #[arg(long, default_value_t = 2)]
    rounds: usize,
    /// Clients of the overload phase (a queue of --max-batch places; 0 skips it).
    #[arg(long, default_value_t = 32)]
    overload_clients: usize,
    /// Write the figures as JSON.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// CPU worker threads of the models (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
}

/// What one phase measured.
struct Phase {
    name: String,
    answered: BTreeMap<u16, usize>,
    lost: usize,
    seconds: f64,
    latencies_ms: Vec<f64>,
    batches: Vec<(usize, u64)>,
}

impl Phase {
    fn ok(&self) -> usize {
        self.answered.get(&200).copied().unwrap_or(0)
    }
    fn throughput(&self) -> f64 {
        self.ok() as f64 / self.seconds
    }
    fn percentile(&self, p: f64) -> f64 {
        if self.latencies_ms.is_empty() {
            return f64::NAN;
        }
        let i = ((self.latencies_ms.len() - 1) as f64 * p).round() as usize;
        self.latencies_ms[i]
    }
    fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "phase": self.name, "ok": self.ok(), "answers": self.answered.iter().map(|(k, v)| (k.to_string(), *v)).collect::<BTreeMap<_, _>>(),
            "lost": self.lost, "seconds": self.seconds, "requests_per_s": self.throughput(),
            "p50_ms": self.percentile(0.5), "p99_ms": self.percentile(0.99), "batch_sizes": self.batches,
        })
    }
}

/// The tiny random models: the tiny tokenizer (32 px, 16×8×8 latents, identity statistics) and a
/// ditdh-tiny generator.
fn tiny_models(device: &Device) -> Models {
    let mut tokenizer = RecTokConfig::tiny().init(device);
    tokenizer.stats = Some(LatentStats::identity());
    let (c, g) = (tokenizer.token_channels(), tokenizer.grid_size());
    let generator = DitDhConfig::ditdh_tiny(c, g).with_num_classes(10).init(device);
    Models { tokenizer, generator: Some(generator), guide: None, files: Default::default(), device: device.clone() }
}

/// The request body of `route`.
fn payload(route: &str, models: &Models) -> Result<(&'static str, Vec<u8>)> {
    let image =
        image::RgbImage::from_fn(48, 48, |x, y| image::Rgb([(x * 5) as u8, (y * 5) as u8, ((x + y) * 2) as u8]));
    Ok(match route {
        "reconstruct" | "encode" => ("image/png", crate::data::images::png_bytes(&image)?),
        "decode" => {
            let (c, g) = (models.tokenizer.token_channels(), models.tokenizer.grid_size());
            let values: Vec<f32> = crate::rng::Rng::seed_from(0).normal_vec(c * g * g);
            ("application/json", serde_json::to_vec(&serde_json::json!({"shape": [c, g, g], "values": values}))?)
        }
        "generate" => ("application/json", br#"{"classes": [1], "steps": 8}"#.to_vec()),
        other => bail!("--route: `{other}` is not one of reconstruct, encode, decode, generate"),
    })
}

/// Serves `models` on a loopback port with `batch`, loads it with `clients` for `seconds`.
fn run_phase(
    name: String,
    models: Models,
    batch: BatchSettings,
    clients: usize,
    seconds: f64,
    route: &str,
    body: &(&'static str, Vec<u8>),
) -> Result<Phase> {
    let options = ServeOptions {
        batch,
        limits: Limits { max_body_bytes: 32 << 20, max_steps: 250, max_samples: 64, timeout: Duration::from_secs(60) },
        api_key: None,
        suggested_cfg: 1.0,
        max_connections: 4096,
        drain_delay: Duration::ZERO,
    };
    let service = Service::start(models, &options)?;
    let metrics = service.metrics();
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).context("binding a loopback port")?;
    let url = format!("http://{}/v1/{route}", listener.local_addr()?);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = runtime.spawn(service.serve_until(listener, options, async move {
        let _ = stopped.await;
    }));
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    let start = Instant::now();
    let results: Vec<(Vec<f64>, BTreeMap<u16, usize>, usize)> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..clients)
            .map(|_| {
                let url = url.clone();
                scope.spawn(move || {
                    let agent = ureq::AgentBuilder::new().timeout(Duration::from_secs(120)).build();
                    let (mut latencies, mut answered, mut lost) = (Vec::new(), BTreeMap::new(), 0usize);
                    while Instant::now() < deadline {
                        let t = Instant::now();
                        let response = agent.post(&url).set("Content-Type", body.0).send_bytes(&body.1);
                        let status = match response {
                            Ok(r) => Some((r.status(), r)),
                            Err(ureq::Error::Status(code, r)) => Some((code, r)),
                            Err(ureq::Error::Transport(_)) => None,
                        };
                        match status {
                            Some((code, r)) => {
                                // The whole answer is read, so the connection is reused.
                                let mut sink = Vec::new();
                                let read = std::io::Read::read_to_end(&mut r.into_reader(), &mut sink);
                                if read.is_err() {
                                    lost += 1;
                                    continue;
                                }
                                *answered.entry(code).or_insert(0) += 1;
                                if code == 200 {
                                    latencies.push(t.elapsed().as_secs_f64() * 1e3);
                                } else if code == 503 {
                                    // A client that retries at once, without Retry-After's full second.
                                    std::thread::sleep(Duration::from_millis(10));
                                }
                            }
                            None => lost += 1,
                        }
                    }
                    (latencies, answered, lost)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("client thread")).collect()
    });
    let elapsed = start.elapsed().as_secs_f64();
    let _ = stop.send(());
    runtime.block_on(server).context("server task")??;
    let mut phase = Phase {
        name,
        answered: BTreeMap::new(),
        lost: 0,
        seconds: elapsed,
        latencies_ms: Vec::new(),
        batches: metrics.batch_histogram(if route == "generate" { "generator" } else { "tokenizer" }),
    };
    for (latencies, answered, lost) in results {
        phase.latencies_ms.extend(latencies);
        for (code, n) in answered {
            *phase.answered.entry(code).or_insert(0) += n;
        }
        phase.lost += lost;
    }
    phase.latencies_ms.sort_by(f64::total_cmp);
    Ok(phase)
}

fn print_phase(p: &Phase) {
    let others: usize = p.answered.iter().filter(|(c, _)| **c != 200).map(|(_, n)| n).sum();
    let batches: Vec<String> = p.batches.iter().map(|(s, n)| format!("{s}:{n}")).collect();
    println!(
        "{:<28} {:>8} {:>9.1} {:>8.1} {:>8.1} {:>8} {:>5}  {}",
        p.name,
        p.ok(),
        p.throughput(),
        p.percentile(0.5),
        p.percentile(0.99),
        others,
        p.lost,
        batches.join(" ")
    );
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 { v[n / 2] } else { 0.5 * (v[n / 2 - 1] + v[n / 2]) }
}

/// Runs the load test.
pub fn run(args: ServeBench) -> Result<()> {
    between("--clients", args.clients, 1, 1024)?;
    between("--rounds", args.rounds, 1, 100)?;
    between("--max-batch", args.max_batch, 2, 4096)?;
    between("--overload-clients", args.overload_clients, 0, 1024)?;
    if !(args.seconds.is_finite() && (0.1..=3600.0).contains(&args.seconds)) {
        bail!("--seconds must be between 0.1 and 3600, got {}", args.seconds);
    }
    check_threads(args.threads)?;
    if let Some(path) = &args.json {
        crate::io::Inputs::new().check_output_file(path, "--json")?;
    }
    crate::device::set_cpu_threads(args.threads);
    let device = Device::flex();
    let models = tiny_models(&device);
    let body = payload(&args.route, &models)?;
    println!(
        "rectok serve under load: POST /v1/{}, {} clients × {} s per phase, tiny random models (tokenizer 32 px, \
         ditdh-tiny), {} CPU threads",
        args.route,
        args.clients,
        args.seconds,
        rayon::current_num_threads()
    );
    println!(
        "{:<28} {:>8} {:>9} {:>8} {:>8} {:>8} {:>5}  batch sizes (size:batches)",
        "phase", "200s", "req/s", "p50 ms", "p99 ms", "non-200", "lost"
    );
    let clone = |m: &Models| Models {
        tokenizer: m.tokenizer.clone(),
        generator: m.generator.clone(),
        guide: None,
        files: Default::default(),
        device: m.device.clone(),
    };
    let batching = BatchSettings {
        max_batch: args.max_batch,
        window: Duration::from_millis(args.batch_window_ms),
        queue: 4 * args.clients.max(16),
    };
    let single = BatchSettings { max_batch: 1, window: Duration::ZERO, queue: batching.queue };
    let mut phases = Vec::new();
    let (mut on, mut off) = (Vec::new(), Vec::new());
    for round in 1..=args.rounds {
        for (label, settings) in [
            (format!("batching (≤{}, {} ms) #{round}", args.max_batch, args.batch_window_ms), batching),
            (format!("batch 1 #{round}"), single),
        ] {
            let p = run_phase(label, clone(&models), settings, args.clients, args.seconds, &args.route, &body)?;
            print_phase(&p);
            if settings.max_batch == 1 {
                off.push(p.throughput())
            } else {
                on.push(p.throughput())
            }
            phases.push(p);
        }
    }
    let (on, off) = (median(on), median(off));
    println!("median throughput: batching {on:.1} req/s, batch 1 {off:.1} req/s: {:.2}× with batching", on / off);
    let mut record = serde_json::json!({
        "route": args.route, "clients": args.clients, "seconds": args.seconds, "threads": rayon::current_num_threads(),
        "max_batch": args.max_batch, "batch_window_ms": args.batch_window_ms,
        "median_requests_per_s": {"batching": on, "batch_1": off}, "ratio": on / off,
    });
    if args.overload_clients > 0 {
        let overload = BatchSettings { queue: args.max_batch, ..batching };
        let label = format!("overload: {} clients, queue {}", args.overload_clients, overload.queue);
        let p = run_phase(label, clone(&models), overload, args.overload_clients, args.seconds, &args.route, &body)?;
        print_phase(&p);
        let unexpected: usize = p.answered.iter().filter(|(c, _)| !matches!(**c, 200 | 503)).map(|(_, n)| n).sum();
        println!(
            "overload: {} answered 200, {} answered 503 (Retry-After), {unexpected} other answers, {} lost",
            p.ok(),
            p.answered.get(&503).copied().unwrap_or(0),
            p.lost
        );
        record["overload"] = p.json();
        phases.push(p);
    }
    record["phases"] = phases.iter().map(Phase::json).collect();
    if let Some(path) = &args.json {
        crate::io::write_json(path, &record)?;
    }
    let lost: usize = phases.iter().map(|p| p.lost).sum();
    if lost > 0 {
        bail!("{lost} request(s) got no answer (connection errors)");
    }
    Ok(())
}
