//! Every error the API returns, mapped to an HTTP status in one place.

use axum::Json;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use wattdb_ingest::{JsonError, LineProtocolError, UnknownPrecision};

/// An error answer: JSON `{"error": "...", ...}` with a status.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    LineProtocol(LineProtocolError),
    #[error("{0}")]
    Json(JsonError),
    #[error("{0}")]
    Precision(UnknownPrecision),
    #[error("{0}")]
    Body(BytesRejection),
    #[error("invalid request: {0}")]
    BadRequest(String),
    #[error("{}", chain(.0))]
    Engine(wattdb_engine::Error),
    #[error("{0}")]
    Query(wattdb_query::Error),
    /// No token, or one that is unknown, revoked or expired: 401.
    #[error("{0}")]
    Unauthorized(String),
    /// A token without the scope or the plugs a request needs: 403.
    #[error("{0}")]
    Forbidden(String),
    /// The token's rate limit: 429 with Retry-After.
    #[error("rate limit of this token reached; retry in {:.1} s", .0.as_secs_f64())]
    RateLimited(std::time::Duration),
    /// Too many queries at once: 429 with Retry-After.
    #[error("{0}")]
    Busy(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Internal(String),
    /// A request body over `--max-body-bytes`.
    #[error("{0}")]
    TooLarge(String),
    /// A query answer longer than `--max-result-rows`.
    #[error(
        "the result has more than {0} rows (--max-result-rows); narrow it with WHERE or LIMIT, or use GET /api/v1/export"
    )]
    ResultTooLarge(u64),
}

/// An error and its causes, joined with ": ".
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

impl ApiError {
    /// The `reason` label of a refused write in the metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            ApiError::LineProtocol(_)
            | ApiError::Json(_)
            | ApiError::Precision(_)
            | ApiError::BadRequest(_) => "bad_request",
            ApiError::Body(_) => "body",
            ApiError::Unauthorized(_) | ApiError::Forbidden(_) => "auth",
            ApiError::RateLimited(_) | ApiError::Busy(_) => "rate_limited",
            ApiError::NotFound(_) => "bad_request",
            ApiError::Internal(_) => "internal",
            ApiError::ResultTooLarge(_) => "bad_request",
            ApiError::TooLarge(_) => "body",
            ApiError::Engine(e) if e.is_retryable() => "backpressure",
            ApiError::Engine(wattdb_engine::Error::Poisoned) => "wal_failed",
            ApiError::Engine(_) | ApiError::Query(_) => "internal",
        }
    }

    fn status(&self) -> StatusCode {
        use wattdb_engine::Error as E;
        use wattdb_query::Error as Q;
        match self {
            ApiError::LineProtocol(_)
            | ApiError::Json(_)
            | ApiError::Precision(_)
            | ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Body(r) => r.status(),
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::RateLimited(_) | ApiError::Busy(_) => StatusCode::TOO_MANY_REQUESTS,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            ApiError::ResultTooLarge(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Engine(e) => match e {
                E::QueueFull { .. } | E::BufferFull { .. } | E::ShuttingDown | E::Poisoned => {
                    StatusCode::SERVICE_UNAVAILABLE
                }
                // The object store is unreachable or failing: try again later.
                E::Persist(_) | E::Store(_) => StatusCode::SERVICE_UNAVAILABLE,
                E::Wal(_)
                | E::DataDir { .. }
                | E::Locked { .. }
                | E::Thread(_)
                | E::Manifest(_)
                | E::Encode(_)
                | E::Config(_) => StatusCode::INTERNAL_SERVER_ERROR,
            },
            ApiError::Query(q) => match q {
                Q::Sql(_) | Q::NotOneStatement(_) | Q::NotReadOnly | Q::Plan(_) => {
                    StatusCode::BAD_REQUEST
                }
                Q::Invalid(_) => StatusCode::BAD_REQUEST,
                Q::MemoryLimit(_) => StatusCode::UNPROCESSABLE_ENTITY,
                Q::Deadline(_) => StatusCode::GATEWAY_TIMEOUT,
                Q::Storage(_) => StatusCode::SERVICE_UNAVAILABLE,
                Q::DataFusion(_) => StatusCode::INTERNAL_SERVER_ERROR,
            },
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let mut body = json!({ "error": self.to_string() });
        if let ApiError::LineProtocol(e) = &self {
            body["line"] = json!(e.line());
        }
        if let ApiError::Json(e) = &self {
            let p = e.position();
            body["element"] = json!(p.index);
            body["line"] = json!(p.line);
            body["column"] = json!(p.column);
        }
        if status.is_server_error() {
            tracing::warn!(status = status.as_u16(), error = %self, "request failed");
        }
        let mut resp = (status, Json(body)).into_response();
        if status == StatusCode::SERVICE_UNAVAILABLE
            && matches!(&self, ApiError::Engine(e) if e.is_retryable())
        {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        match &self {
            ApiError::Unauthorized(_) => {
                resp.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"wattdb\""),
                );
            }
            ApiError::RateLimited(wait) => {
                let secs = wait.as_secs_f64().ceil().max(1.0) as u64;
                resp.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(secs));
            }
            ApiError::Busy(_) => {
                resp.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            _ => {}
        }
        resp
    }
}

impl From<wattdb_engine::Error> for ApiError {
    fn from(e: wattdb_engine::Error) -> Self {
        ApiError::Engine(e)
    }
}

impl From<wattdb_query::Error> for ApiError {
    fn from(e: wattdb_query::Error) -> Self {
        ApiError::Query(e)
    }
}

impl From<axum::extract::rejection::JsonRejection> for ApiError {
    fn from(e: axum::extract::rejection::JsonRejection) -> Self {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::TooLarge(e.body_text())
        } else {
            ApiError::BadRequest(e.body_text())
        }
    }
}

impl From<axum::extract::rejection::QueryRejection> for ApiError {
    fn from(e: axum::extract::rejection::QueryRejection) -> Self {
        ApiError::BadRequest(e.body_text())
    }
}

impl From<BytesRejection> for ApiError {
    fn from(e: BytesRejection) -> Self {
        ApiError::Body(e)
    }
}
