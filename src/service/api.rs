//! The HTTP routes: request parsing and checks, answers, the API-key guard and request metrics.
//! Model work goes through the batchers ([`super::batcher`]); image decoding and encoding run on
//! tokio's blocking pool, never on the async workers.

use super::Limits;
use super::batcher::Batcher;
use super::error::ApiError;
use super::metrics::Metrics;
use super::work::{GenerateJob, SamplingSettings, TokenizerJob, TokenizerOutput};
use crate::generator::Integrator;
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{MatchedPath, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, Uri, header};
use axum::middleware::Next;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine;
use http_body_util::BodyExt;
use image::RgbImage;
use serde::Deserialize;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

/// Tokenizer facts the handlers check requests against.
pub struct TokenizerFacts {
    /// Input image size (px).
    pub image_size: usize,
    /// Latent channels.
    pub channels: usize,
    /// Latent grid side.
    pub grid: usize,
    /// Whether it carries latent statistics.
    pub has_stats: bool,
}

/// Everything the handlers share.
pub struct AppState {
    /// The tokenizer's queue.
    pub tokenizer: Batcher<TokenizerJob, TokenizerOutput>,
    /// The generator's queue, when a generator is loaded.
    pub generator: Option<Batcher<GenerateJob, Vec<RgbImage>>>,
    /// Classes of the generator.
    pub num_classes: Option<usize>,
    /// Tokenizer facts.
    pub facts: TokenizerFacts,
    /// `GET /v1/models`.
    pub models_json: serde_json::Value,
    /// Request limits.
    pub limits: Limits,
    /// Bearer token required on `/v1/*` and `/metrics`, when set.
    pub api_key: Option<String>,
    /// Counters.
    pub metrics: Arc<Metrics>,
    /// False once shutdown has begun (`GET /readyz` answers 503).
    pub ready: AtomicBool,
}

type Shared = State<Arc<AppState>>;

/// The service's router over `state`.
pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/", get(page))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/openapi.json", get(|| async { axum::Json(super::openapi::document()) }))
        .route("/v1/models", get(models))
        .route("/v1/encode", post(encode))
        .route("/v1/decode", post(decode))
        .route("/v1/reconstruct", post(reconstruct))
        .route("/v1/generate", post(generate))
        .fallback(|uri: Uri| async move { ApiError::not_found(uri.path()) })
        .method_not_allowed_fallback(|method: axum::http::Method, uri: Uri| async move {
            ApiError::method_not_allowed(method.as_str(), uri.path())
        })
        .layer(axum::middleware::from_fn_with_state(state.clone(), guard))
        // The guard has bounded the body already (--max-body-mb).
        .layer(axum::extract::DefaultBodyLimit::disable())
        .with_state(state)
}

/// Reads the request body (bounded by `--max-body-mb`), checks the API key on `/v1/*` and
/// `/metrics`, and counts every request by route and status. The body is read before any answer,
/// so that a client still sending gets the answer rather than a reset connection.
async fn guard(State(state): Shared, request: Request, next: Next) -> Response {
    let start = Instant::now();
    let route = match request.extensions().get::<MatchedPath>() {
        Some(m) => m.as_str().to_string(),
        None => "unmatched".to_string(),
    };
    let protected = request.uri().path().starts_with("/v1/") || request.uri().path() == "/metrics";
    let refused = match &state.api_key {
        Some(key) if protected => check_key(request.headers(), key).err(),
        _ => None,
    };
    let limits = &state.limits;
    let declared = request.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if refused.is_none() && declared.is_some_and(|n| n > (limits.max_body_bytes + DRAIN_BYTES) as u64) {
        // Declared beyond what would be read and dropped: answered at once (the connection then
        // closes; a client still sending sees a reset, as it would after the drain).
        let response = ApiError::payload_too_large(limits.max_body_bytes).into_response();
        state.metrics.record_request(&route, response.status().as_u16(), start.elapsed().as_secs_f64());
        return response;
    }
    let (parts, body) = request.into_parts();
    let body = tokio::time::timeout(limits.timeout, read_body(body, limits.max_body_bytes)).await;
    let response = match (refused, body) {
        (Some(refusal), _) => refusal.into_response(),
        (None, Err(_)) => ApiError::request_timeout(limits.timeout.as_secs_f64()).into_response(),
        (None, Ok(Err(e))) => e.into_response(),
        (None, Ok(Ok(bytes))) => next.run(Request::from_parts(parts, Body::from(bytes))).await,
    };
    state.metrics.record_request(&route, response.status().as_u16(), start.elapsed().as_secs_f64());
    response
}

/// `Authorization: Bearer KEY` (the scheme in any case, RFC 7235), the key compared in constant
/// time.
fn check_key(headers: &HeaderMap, key: &str) -> Result<(), ApiError> {
    let Some(given) = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()) else {
        return Err(ApiError::unauthorized(false));
    };
    let token = match given.trim().split_once(' ') {
        Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") => token.trim(),
        _ => return Err(ApiError::unauthorized(false)),
    };
    let (a, b) = (token.as_bytes(), key.as_bytes());
    let same = a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0;
    if same { Ok(()) } else { Err(ApiError::unauthorized(true)) }
}

/// How much of a body over the limit is still read (and dropped) before the 413 answer, so that a
/// client sending a moderately large body gets the answer instead of a reset connection.
const DRAIN_BYTES: usize = 16 << 20;

/// Reads a body of at most `limit` bytes. A longer body is read on (up to [`DRAIN_BYTES`] more)
/// and dropped before the 413 answer.
async fn read_body(body: Body, limit: usize) -> Result<Bytes, ApiError> {
    let mut body = body;
    let mut data = Vec::new();
    let mut seen = 0usize;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| ApiError::bad_request(format!("reading the request body: {e}")))?;
        let Ok(chunk) = frame.into_data() else { continue };
        seen += chunk.len();
        if seen > limit.saturating_add(DRAIN_BYTES) {
            break;
        }
        if seen <= limit {
            data.extend_from_slice(&chunk);
        }
    }
    if seen > limit {
        return Err(ApiError::payload_too_large(limit));
    }
    Ok(Bytes::from(data))
}

/// Parses the query string into `T`, with a 400 naming the parameter at fault.
fn query<T: serde::de::DeserializeOwned>(uri: &Uri) -> Result<T, ApiError> {
    Query::<T>::try_from_uri(uri).map(|q| q.0).map_err(|e| ApiError::bad_request(e.body_text()))
}

/// Runs `f` on the blocking pool.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T, ApiError> + Send + 'static) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f).await.map_err(|e| ApiError::internal(format!("a worker task failed: {e}")))?
}

/// Decodes an uploaded image as `rectok` reads files (same pixel limit, `--max-image-pixels`) and
/// center-crops it to `size` as the CLI does (the reference's `center_crop_arr`).
async fn cropped_image(bytes: Bytes, size: usize) -> Result<RgbImage, ApiError> {
    if bytes.is_empty() {
        return Err(ApiError::bad_request(
            "the request body is empty: send the image file's bytes (PNG, JPEG or WebP)",
        ));
    }
    blocking(move || {
        let image = crate::data::images::decode_rgb8_within(&bytes, crate::data::images::max_image_pixels())
            .map_err(|e| ApiError::bad_request(format!("the request body: {e:#}")))?;
        Ok(crate::data::transforms::center_crop_arr(&image, size))
    })
    .await
}

fn png_response(image: RgbImage, headers: Vec<(&'static str, String)>) -> Result<Response, ApiError> {
    let bytes = crate::data::images::png_bytes(&image).map_err(|e| ApiError::internal(format!("{e:#}")))?;
    let mut response = ([(header::CONTENT_TYPE, "image/png")], bytes).into_response();
    for (name, value) in headers {
        if let Ok(v) = HeaderValue::from_str(&value) {
            response.headers_mut().insert(name, v);
        }
    }
    Ok(response)
}

fn png_base64(image: &RgbImage) -> Result<String, ApiError> {
    let bytes = crate::data::images::png_bytes(image).map_err(|e| ApiError::internal(format!("{e:#}")))?;
    Ok(base64::engine::general_purpose::STANDARD.encode(bytes))
}

/// Whether the client asked for JSON: `format` json (in any case), or an `Accept` of JSON alone;
/// `binary` names the route's other format (png, safetensors).
fn wants_json(format: Option<&str>, binary: &str, headers: &HeaderMap) -> Result<bool, ApiError> {
    match format.map(str::to_ascii_lowercase) {
        Some(f) if f == "json" => Ok(true),
        Some(f) if f == binary => Ok(false),
        Some(_) => {
            Err(ApiError::bad_request(format!("format: `{}` is not one of {binary}, json", format.unwrap_or_default())))
        }
        None => Ok(headers
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|a| a.trim() == "application/json")),
    }
}

async fn page() -> Html<&'static str> {
    Html(include_str!("page.html"))
}

async fn readyz(State(state): Shared) -> Response {
    if state.ready.load(Ordering::SeqCst) {
        "ready\n".into_response()
    } else {
        ApiError::shutting_down().into_response()
    }
}

async fn metrics(State(state): Shared) -> Response {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], state.metrics.render()).into_response()
}

async fn models(State(state): Shared) -> axum::Json<serde_json::Value> {
    axum::Json(state.models_json.clone())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EncodeQuery {
    format: Option<String>,
    sample: Option<bool>,
    seed: Option<u64>,
    raw: Option<bool>,
}

/// `POST /v1/encode`: image bytes → the `[C, h, w]` latent as safetensors (as `rectok encode`
/// writes, the tensor named `latent`) or JSON.
async fn encode(State(state): Shared, uri: Uri, headers: HeaderMap, bytes: Bytes) -> Result<Response, ApiError> {
    let q: EncodeQuery = query(&uri)?;
    let json = wants_json(q.format.as_deref(), "safetensors", &headers)?;
    if q.seed.is_some() && q.sample != Some(true) {
        return Err(ApiError::bad_request("seed: only used with sample=true (a posterior sample)"));
    }
    let image = cropped_image(bytes, state.facts.image_size).await?;
    let sample_seed = (q.sample == Some(true)).then(|| q.seed.unwrap_or(0));
    let job = TokenizerJob::Encode { image, sample_seed, raw: q.raw == Some(true) };
    let TokenizerOutput::Latent { values, normalized } = state.tokenizer.submit(job, state.limits.timeout).await?
    else {
        return Err(ApiError::internal("the tokenizer answered an encode with something else"));
    };
    let (c, g) = (state.facts.channels, state.facts.grid);
    let posterior = if sample_seed.is_some() { "sample" } else { "mean" };
    if json {
        return Ok(axum::Json(serde_json::json!({
            "shape": [c, g, g], "values": values, "normalized": normalized, "posterior": posterior,
        }))
        .into_response());
    }
    let meta = HashMap::from([
        ("rectok.kind".to_string(), "latents".to_string()),
        ("rectok.normalized".to_string(), normalized.to_string()),
        ("rectok.posterior".to_string(), posterior.to_string()),
    ]);
    let data = burn::tensor::TensorData::new(values, [c, g, g]);
    let bytes = crate::weights::safetensors_bytes(vec![("latent".to_string(), data)], meta)
        .map_err(|e| ApiError::internal(format!("{e:#}")))?;
    Ok(([(header::CONTENT_TYPE, "application/octet-stream")], bytes).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DecodeQuery {
    raw: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LatentJson {
    shape: Vec<usize>,
    values: Vec<f32>,
    #[serde(default)]
    normalized: bool,
    /// What `/v1/encode?format=json` says of the latent (mean or sample); not needed to decode.
    #[serde(default, rename = "posterior")]
    _posterior: Option<String>,
}

/// `POST /v1/decode`: a latent (safetensors with one `[C, h, w]` tensor, as `/v1/encode` and
/// `rectok encode` write, or JSON `{"shape", "values", "normalized"}`) → PNG.
async fn decode(State(state): Shared, uri: Uri, headers: HeaderMap, bytes: Bytes) -> Result<Response, ApiError> {
    let q: DecodeQuery = query(&uri)?;
    let json_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| t.starts_with("application/json"));
    let parse_json = |bytes: &[u8]| {
        let latent: LatentJson =
            serde_json::from_slice(bytes).map_err(|e| ApiError::bad_request(format!("the JSON body: {e}")))?;
        Ok::<_, ApiError>((latent.shape, latent.values, latent.normalized))
    };
    let (shape, values, normalized) = if json_type {
        parse_json(&bytes)?
    } else {
        // Without a JSON content type: safetensors, else JSON when the body reads as a JSON object.
        match blocking({
            let bytes = bytes.clone();
            move || parse_safetensors_latent(&bytes)
        })
        .await
        {
            Ok(latent) => latent,
            Err(_) if bytes.trim_ascii_start().starts_with(b"{") => parse_json(&bytes)?,
            Err(e) => return Err(e),
        }
    };
    let normalized = normalized && q.raw != Some(true);
    let (c, g) = (state.facts.channels, state.facts.grid);
    let shape = if shape.len() == 4 && shape[0] == 1 { shape[1..].to_vec() } else { shape };
    if shape != [c, g, g] {
        return Err(ApiError::bad_request(format!(
            "the latent has shape {shape:?}, but this tokenizer decodes [{c}, {g}, {g}]"
        )));
    }
    if values.len() != c * g * g {
        return Err(ApiError::bad_request(format!(
            "the latent has {} values; shape [{c}, {g}, {g}] needs {}",
            values.len(),
            c * g * g
        )));
    }
    if let Some(i) = values.iter().position(|v| !v.is_finite()) {
        return Err(ApiError::bad_request(format!("the latent holds a NaN or infinite value (at index {i})")));
    }
    if normalized && !state.facts.has_stats {
        return Err(ApiError::bad_request(
            "the latent is normalised with latent statistics, but the server's tokenizer has none; send raw=true to \
             decode it as it is",
        ));
    }
    let TokenizerOutput::Image(image) =
        state.tokenizer.submit(TokenizerJob::Decode { values, normalized }, state.limits.timeout).await?
    else {
        return Err(ApiError::internal("the tokenizer answered a decode with something else"));
    };
    blocking(move || png_response(image, Vec::new())).await
}

/// The one tensor of a safetensors body as f32, and whether its metadata says it is normalised.
fn parse_safetensors_latent(bytes: &[u8]) -> Result<(Vec<usize>, Vec<f32>, bool), ApiError> {
    let bad = |m: String| ApiError::bad_request(format!("the request body: {m}"));
    let file = safetensors::SafeTensors::deserialize(bytes)
        .map_err(|e| bad(format!("not a safetensors file ({e}); send the bytes /v1/encode answers, or JSON")))?;
    let names = file.names();
    if names.len() != 1 {
        return Err(bad(format!("holds {} tensors; send one latent per request", names.len())));
    }
    let view = file.tensor(names[0]).map_err(|e| bad(e.to_string()))?;
    let data = view.data();
    let values: Vec<f32> = match view.dtype() {
        safetensors::Dtype::F32 => data.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect(),
        safetensors::Dtype::F16 => {
            data.chunks_exact(2).map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32()).collect()
        }
        safetensors::Dtype::BF16 => {
            data.chunks_exact(2).map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32()).collect()
        }
        other => return Err(bad(format!("tensor `{}` is {other:?}; send f32, f16 or bf16", names[0]))),
    };
    let (_, meta) = safetensors::SafeTensors::read_metadata(bytes).map_err(|e| bad(e.to_string()))?;
    let meta = meta.metadata().clone().unwrap_or_default();
    if let Some(kind) = meta.get("rectok.kind").filter(|k| *k != "latents") {
        return Err(bad(format!("holds a {kind}, not latents")));
    }
    let normalized = match meta.get("rectok.normalized").map(String::as_str) {
        None | Some("false") => false,
        Some("true") => true,
        Some(other) => return Err(bad(format!("`rectok.normalized` is `{other}`; expected true or false"))),
    };
    Ok((view.shape().to_vec(), values, normalized))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReconstructQuery {
    format: Option<String>,
}

/// `POST /v1/reconstruct`: image bytes → the reconstruction as PNG with `X-PSNR` / `X-SSIM`
/// headers, or JSON with the PNG in base64.
async fn reconstruct(State(state): Shared, uri: Uri, headers: HeaderMap, bytes: Bytes) -> Result<Response, ApiError> {
    let q: ReconstructQuery = query(&uri)?;
    let json = wants_json(q.format.as_deref(), "png", &headers)?;
    let image = cropped_image(bytes, state.facts.image_size).await?;
    let TokenizerOutput::Reconstruction { image, psnr, ssim } =
        state.tokenizer.submit(TokenizerJob::Reconstruct { image }, state.limits.timeout).await?
    else {
        return Err(ApiError::internal("the tokenizer answered a reconstruction with something else"));
    };
    blocking(move || {
        if json {
            let png = png_base64(&image)?;
            return Ok(axum::Json(serde_json::json!({ "psnr": psnr, "ssim": ssim, "png_base64": png })).into_response());
        }
        png_response(image, vec![("x-psnr", psnr.to_string()), ("x-ssim", ssim.to_string())])
    })
    .await
}

/// `POST /v1/generate` body.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GenerateRequest {
    classes: Vec<usize>,
    #[serde(default = "one")]
    samples_per_class: usize,
    /// Default: `rectok generate`'s 150, or `--max-steps` when that is lower.
    steps: Option<usize>,
    #[serde(default = "one_f64")]
    cfg: f64,
    #[serde(default = "full_interval")]
    cfg_interval: [f64; 2],
    #[serde(default)]
    seed: u64,
    #[serde(default = "euler")]
    sampler: String,
    #[serde(default)]
    format: Option<String>,
}

fn one() -> usize {
    1
}
fn one_f64() -> f64 {
    1.0
}
fn full_interval() -> [f64; 2] {
    [0.0, 1.0]
}
fn euler() -> String {
    "euler".into()
}

/// `POST /v1/generate`: class-conditional samples as one PNG grid (one row per class, as
/// `rectok generate --grid`), or JSON with each sample's PNG in base64.
async fn generate(State(state): Shared, headers: HeaderMap, bytes: Bytes) -> Result<Response, ApiError> {
    let (Some(generator), Some(num_classes)) = (&state.generator, state.num_classes) else {
        return Err(ApiError::no_generator());
    };
    let r: GenerateRequest =
        serde_json::from_slice(&bytes).map_err(|e| ApiError::bad_request(format!("the JSON body: {e}")))?;
    let json = wants_json(r.format.as_deref(), "png", &headers)?;
    let limits = &state.limits;
    if r.classes.is_empty() {
        return Err(ApiError::bad_request("classes: give at least one class id"));
    }
    if let Some(&bad) = r.classes.iter().find(|&&c| c >= num_classes) {
        return Err(ApiError::bad_request(format!(
            "classes: class id {bad} is out of range: the generator has {num_classes} classes (0..{})",
            num_classes - 1
        )));
    }
    if r.samples_per_class == 0 {
        return Err(ApiError::bad_request("samples_per_class: must be at least 1"));
    }
    let total = r.classes.len().saturating_mul(r.samples_per_class);
    if total > limits.max_samples {
        return Err(ApiError::bad_request(format!(
            "{} class(es) × {} per class is over the {} samples this server draws per request (--max-samples)",
            r.classes.len(),
            r.samples_per_class,
            limits.max_samples
        )));
    }
    let steps = r.steps.unwrap_or(150.min(limits.max_steps));
    if !(2..=limits.max_steps).contains(&steps) {
        return Err(ApiError::bad_request(format!(
            "steps: {steps} is not between 2 and {} (N time-grid points give N − 1 steps; --max-steps)",
            limits.max_steps
        )));
    }
    if !(r.cfg.is_finite() && (0.0..=100.0).contains(&r.cfg)) {
        return Err(ApiError::bad_request(format!("cfg: {} is not a number between 0 and 100", r.cfg)));
    }
    let [lo, hi] = r.cfg_interval;
    if !(0.0 <= lo && lo < hi && hi <= 1.0) {
        return Err(ApiError::bad_request(format!(
            "cfg_interval: must be [lo, hi] with 0 ≤ lo < hi ≤ 1, got [{lo}, {hi}]"
        )));
    }
    let sampler: Integrator = r.sampler.parse().map_err(|e: String| ApiError::bad_request(format!("sampler: {e}")))?;
    let jobs = crate::generator::sampler::sample_jobs(&r.classes, r.samples_per_class);
    let samples: Vec<(usize, u64, u64)> = jobs.iter().enumerate().map(|(i, &(c, _))| (c, r.seed, i as u64)).collect();
    let settings = SamplingSettings { steps, cfg: r.cfg, interval: (lo, hi), sampler };
    let images = generator.submit(GenerateJob { settings, samples }, limits.timeout).await?;
    let cols = crate::generator::sampler::grid_columns(r.classes.len(), r.samples_per_class, images.len());
    blocking(move || {
        if json {
            let items = jobs
                .iter()
                .zip(&images)
                .map(|(&(class, index), image)| {
                    Ok(serde_json::json!({ "class": class, "index": index, "png_base64": png_base64(image)? }))
                })
                .collect::<Result<Vec<_>, ApiError>>()?;
            return Ok(axum::Json(serde_json::json!({ "columns": cols, "images": items })).into_response());
        }
        png_response(crate::data::images::image_grid(&images, cols), vec![("x-samples", images.len().to_string())])
    })
    .await
}

impl AppState {
    /// Marks the server as draining: `GET /readyz` answers 503 from now on.
    pub fn begin_shutdown(&self) {
        self.ready.store(false, Ordering::SeqCst);
    }
}
