//! The service's one error shape: `{"error": {"code": "...", "message": "..."}}` with an HTTP
//! status, `Retry-After` on 503.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

/// An answer other than success: the status, a stable machine-readable `code` and a sentence
/// for people.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Stable code: `bad_request`, `unauthorized`, `not_found`, `no_generator`,
    /// `method_not_allowed`, `request_timeout`, `payload_too_large`, `overloaded`, `timeout`,
    /// `shutting_down`, `internal`.
    pub code: &'static str,
    /// What is wrong, naming the field or header at fault.
    pub message: String,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self { status, code, message: message.into() }
    }

    /// 400: the request is malformed or a value is out of range.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    /// 401: `--api-key` is set and the request carries no key (`given` false) or another one.
    pub fn unauthorized(given: bool) -> Self {
        let message = if given {
            "the API key is wrong"
        } else {
            "this server requires an API key: send the header `Authorization: Bearer KEY` (on the web page: the API \
             key field)"
        };
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }

    /// 408: the request body did not arrive within `--timeout-s`.
    pub fn request_timeout(seconds: f64) -> Self {
        Self::new(
            StatusCode::REQUEST_TIMEOUT,
            "request_timeout",
            format!("the request body did not arrive within {seconds} s (--timeout-s)"),
        )
    }

    /// 404: no such route.
    pub fn not_found(path: &str) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", format!("no route {path} (GET /openapi.json lists them)"))
    }

    /// 404: the route needs a generator and none is loaded.
    pub fn no_generator() -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "no_generator",
            "no generator is loaded: start the server with --generator CKPT (or --run DIR of a demo run)",
        )
    }

    /// 405: the route exists under another method.
    pub fn method_not_allowed(method: &str, path: &str) -> Self {
        Self::new(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", format!("{method} is not allowed on {path}"))
    }

    /// 413: the body is over `--max-body-mb`.
    pub fn payload_too_large(limit: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("the request body is over the limit of {} bytes (--max-body-mb)", limit),
        )
    }

    /// 503: the model's queue is full (`--queue`); retry shortly.
    pub fn overloaded(model: &str) -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "overloaded",
            format!("the {model} queue is full; retry after a second"),
        )
    }

    /// 503: the request waited longer than `--timeout-s`.
    pub fn timeout(seconds: f64) -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "timeout",
            format!("the request did not finish within {seconds} s (--timeout-s); retry later or ask for less"),
        )
    }

    /// 503: the server is draining after SIGTERM.
    pub fn shutting_down() -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "shutting_down", "the server is shutting down")
    }

    /// 500: a fault of the server (a device failure, a bug); the message says which.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message)
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}: {}", self.status.as_u16(), self.code, self.message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({ "error": { "code": self.code, "message": self.message } });
        let mut response = (self.status, axum::Json(body)).into_response();
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}
