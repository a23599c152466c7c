//! `rectok serve`: the tokenizer and the generator as an HTTP service (axum on tokio) with a web
//! page: encode, decode, reconstruct and generate with the CLI's exact numbers, dynamic batching
//! per model, bounded queues (503 + `Retry-After` over them), per-request timeouts, cancellation
//! of jobs whose client left, graceful shutdown on SIGTERM / SIGINT. README "Serving over HTTP"
//! documents the API; `GET /openapi.json` describes it.
//!
//! Layout: [`api`] (routes, checks, the API-key guard), [`batcher`] (queues and worker threads),
//! [`work`] (the model computations), [`metrics`] (Prometheus text), `openapi`, `page.html`.

pub mod api;
pub mod batcher;
mod error;
pub mod metrics;
mod openapi;
pub mod work;

pub use batcher::BatchSettings;
pub use error::ApiError;
pub use work::{ModelFiles, Models};

use anyhow::{Context, Result};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

/// Per-request limits.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Largest request body (bytes).
    pub max_body_bytes: usize,
    /// Most time-grid points of a generate request.
    pub max_steps: usize,
    /// Most samples of a generate request.
    pub max_samples: usize,
    /// How long a request may wait for its result (queue and computation).
    pub timeout: Duration,
}

/// How a server runs.
#[derive(Clone, Debug)]
pub struct ServeOptions {
    /// Batching and queue bounds (one queue per model).
    pub batch: BatchSettings,
    /// Request limits.
    pub limits: Limits,
    /// Bearer token required on `/v1/*` and `/metrics`.
    pub api_key: Option<String>,
    /// Guidance weight the web page proposes (the demo's sampling weight with `--run`).
    pub suggested_cfg: f64,
    /// Most open connections; a connection over it is closed at once.
    pub max_connections: usize,
    /// After SIGTERM, how long `GET /readyz` answers 503 while requests are still accepted,
    /// so that a load balancer stops sending before the listener closes.
    pub drain_delay: Duration,
}

/// A client must send a request's header within this time, else its connection is closed
/// (hyper's header-read timeout; slow-header clients cannot hold connections open).
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// A server's shared state and its worker threads.
pub struct Service {
    state: Arc<api::AppState>,
    workers: Vec<std::thread::JoinHandle<()>>,
}

impl Service {
    /// Starts the model workers over `models`.
    pub fn start(models: Models, options: &ServeOptions) -> Result<Self> {
        let metrics = Arc::new(metrics::Metrics::default());
        let tok = &models.tokenizer;
        let facts = api::TokenizerFacts {
            image_size: tok.config.img_size,
            channels: tok.token_channels(),
            grid: tok.grid_size(),
            has_stats: tok.stats.is_some(),
        };
        let num_classes = models.generator.as_ref().map(|g| g.config.num_classes);
        let models_json = models_json(&models, options);
        let models = Arc::new(models);
        let mut workers = Vec::new();
        let worker_models = models.clone();
        let device = models.device.clone();
        let (tokenizer, handle) = batcher::Batcher::start("tokenizer", options.batch, metrics.clone(), move |jobs| {
            work::run_tokenizer(&worker_models.tokenizer, &device, jobs)
        })
        .context("starting the tokenizer worker")?;
        workers.push(handle);
        let generator = if models.generator.is_some() {
            let max_batch = options.batch.max_batch;
            let (generator, handle) =
                batcher::Batcher::start("generator", options.batch, metrics.clone(), move |jobs| {
                    work::run_generator(&models, jobs, max_batch)
                })
                .context("starting the generator worker")?;
            workers.push(handle);
            Some(generator)
        } else {
            None
        };
        let state = Arc::new(api::AppState {
            tokenizer,
            generator,
            num_classes,
            facts,
            models_json,
            limits: options.limits,
            api_key: options.api_key.clone(),
            metrics,
            ready: AtomicBool::new(true),
        });
        Ok(Self { state, workers })
    }

    /// The counters (for `rectok bench serve`).
    pub fn metrics(&self) -> Arc<metrics::Metrics> {
        self.state.metrics.clone()
    }

    /// Serves on `listener` until `shutdown` completes; then `GET /readyz` answers 503 for
    /// `drain_delay` while requests are still accepted, the listener closes, the requests in
    /// flight are answered (idle connections closed) and the workers stop.
    pub async fn serve_until(
        self,
        listener: tokio::net::TcpListener,
        options: ServeOptions,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> Result<()> {
        let app = api::router(self.state.clone());
        let graceful = hyper_util::server::graceful::GracefulShutdown::new();
        let slots = Arc::new(tokio::sync::Semaphore::new(options.max_connections));
        let mut shutdown = std::pin::pin!(shutdown);
        loop {
            tokio::select! {
                accepted = listener.accept() => accept(accepted, &app, &graceful, &slots),
                _ = &mut shutdown => break,
            }
        }
        self.state.begin_shutdown();
        if !options.drain_delay.is_zero() {
            tracing::info!(
                "not ready: still accepting for {:.1} s (--drain-delay-s)",
                options.drain_delay.as_secs_f64()
            );
            let mut delay = std::pin::pin!(tokio::time::sleep(options.drain_delay));
            loop {
                tokio::select! {
                    accepted = listener.accept() => accept(accepted, &app, &graceful, &slots),
                    _ = &mut delay => break,
                }
            }
        }
        drop(listener);
        drop(app);
        graceful.shutdown().await;
        let Self { state, workers } = self;
        // The last handles on the queues go; each worker ends once its queue is empty.
        drop(state);
        for worker in workers {
            let _ = tokio::task::spawn_blocking(move || worker.join()).await;
        }
        Ok(())
    }
}

/// Serves one accepted connection (HTTP/1.1) on its own task, within the connection bound.
fn accept(
    accepted: std::io::Result<(tokio::net::TcpStream, std::net::SocketAddr)>,
    app: &axum::Router,
    graceful: &hyper_util::server::graceful::GracefulShutdown,
    slots: &Arc<tokio::sync::Semaphore>,
) {
    let stream = match accepted {
        Ok((stream, _)) => stream,
        // Out of file descriptors and the like: the next accept may succeed.
        Err(e) => {
            tracing::warn!("accepting a connection: {e}");
            return;
        }
    };
    let Ok(slot) = slots.clone().try_acquire_owned() else {
        tracing::warn!("over --max-connections: a connection was closed at once");
        return;
    };
    let app = app.clone();
    let service = hyper::service::service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
        tower::ServiceExt::oneshot(app.clone(), request.map(axum::body::Body::new))
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder.timer(hyper_util::rt::TokioTimer::new()).header_read_timeout(HEADER_READ_TIMEOUT);
    let connection = graceful.watch(builder.serve_connection(hyper_util::rt::TokioIo::new(stream), service));
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!("connection: {e}");
        }
        drop(slot);
    });
}

/// What `GET /v1/models` answers.
fn models_json(models: &Models, options: &ServeOptions) -> serde_json::Value {
    let tok = &models.tokenizer;
    let dit = |net: &crate::generator::DitDh, file: &Option<String>| {
        serde_json::json!({
            "file": file,
            "config": net.config,
            "parameters": burn::module::Module::num_params(net),
            "num_classes": net.config.num_classes,
        })
    };
    serde_json::json!({
        "tokenizer": {
            "file": models.files.tokenizer,
            "config": tok.config,
            "parameters": tok.num_inference_params(),
            "image_size": tok.config.img_size,
            "latent_shape": [tok.token_channels(), tok.grid_size(), tok.grid_size()],
            "latent_stats": tok.stats.is_some(),
            "latent_stats_file": models.files.latent_stats,
        },
        "generator": models.generator.as_ref().map(|g| dit(g, &models.files.generator)),
        "guide": models.guide.as_ref().map(|g| dit(g, &models.files.guide)),
        "limits": {
            "max_body_bytes": options.limits.max_body_bytes,
            "max_steps": options.limits.max_steps,
            "max_samples": options.limits.max_samples,
            "max_image_pixels": crate::data::images::max_image_pixels(),
            "timeout_s": options.limits.timeout.as_secs_f64(),
            "max_batch": options.batch.max_batch,
            "batch_window_ms": options.batch.window.as_secs_f64() * 1e3,
            "queue": options.batch.queue,
        },
        "suggested": { "cfg": options.suggested_cfg, "steps": 50.min(options.limits.max_steps) },
    })
}

/// Binds `bind` (`--bind`): done before the models load, so that a busy port is reported at once.
pub fn bind(bind: &str) -> Result<std::net::TcpListener> {
    let listener = std::net::TcpListener::bind(bind).with_context(|| format!("--bind {bind}: cannot listen there"))?;
    listener.set_nonblocking(true).context("--bind: setting the socket non-blocking")?;
    Ok(listener)
}

/// Prints `listening on http://ADDR` as the first line of stdout, and serves on `listener` until
/// SIGTERM or SIGINT, then drains (stops accepting, finishes requests in flight) and returns.
pub fn serve(models: Models, options: &ServeOptions, listener: std::net::TcpListener) -> Result<()> {
    let options = options.clone();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting tokio")?;
    let service = Service::start(models, &options)?;
    runtime.block_on(async move {
        let options = &options;
        let listener = tokio::net::TcpListener::from_std(listener).context("--bind: registering the socket")?;
        let addr = listener.local_addr().context("reading the bound address")?;
        {
            use std::io::Write;
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "listening on http://{addr}");
            let _ = out.flush();
        }
        tracing::info!("serving on http://{addr} (SIGTERM or Ctrl-C stops it after the requests in flight)");
        service.serve_until(listener, options.clone(), shutdown_signal()).await?;
        tracing::info!("stopped: every request in flight was answered");
        Ok(())
    })
}

/// Completes on SIGTERM or SIGINT.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
        // Without signal handlers the server runs until killed.
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: draining"),
        _ = int.recv() => tracing::info!("SIGINT: draining"),
    }
}
