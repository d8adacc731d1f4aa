//! `POST /api/v1/query`: read-only SQL, streamed as JSON or CSV.

use std::sync::Arc;
use std::time::Duration;

use arrow::array::RecordBatch;
use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::extract::rejection::JsonRejection;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use datafusion::execution::SendableRecordBatchStream;
use futures::StreamExt;
use futures::stream;
use serde::Deserialize;
use tokio::time::Instant;
use wattdb_query::Error as QueryError;

use crate::AppState;
use crate::error::ApiError;

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    #[default]
    Json,
    Csv,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueryRequest {
    sql: String,
    #[serde(default)]
    format: Format,
}

/// A query's deadline: planning and every batch must arrive before it.
#[derive(Debug, Clone, Copy)]
struct Deadline {
    at: Instant,
    limit: Duration,
}

impl Deadline {
    fn err(&self) -> ApiError {
        ApiError::Query(QueryError::Deadline(self.limit))
    }
}

async fn next_batch(
    stream: &mut SendableRecordBatchStream,
    deadline: Deadline,
) -> Result<Option<RecordBatch>, ApiError> {
    match tokio::time::timeout_at(deadline.at, stream.next()).await {
        Err(_) => Err(deadline.err()),
        Ok(None) => Ok(None),
        Ok(Some(Ok(b))) => Ok(Some(b)),
        Ok(Some(Err(e))) => Err(ApiError::Query(QueryError::from_execution(e))),
    }
}

pub async fn query(
    State(app): State<AppState>,
    req: Result<Json<QueryRequest>, JsonRejection>,
) -> Result<Response, ApiError> {
    let started = std::time::Instant::now();
    let result = run_query(&app, req, started).await;
    if result.is_err() {
        app.metrics.query_done(false, started.elapsed());
    }
    result
}

async fn run_query(
    app: &AppState,
    req: Result<Json<QueryRequest>, JsonRejection>,
    started: std::time::Instant,
) -> Result<Response, ApiError> {
    let Json(req) = req.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let limit = app.query.deadline();
    let deadline = Deadline {
        at: Instant::now() + limit,
        limit,
    };
    let mut stream = tokio::time::timeout_at(deadline.at, app.query.sql(&req.sql))
        .await
        .map_err(|_| deadline.err())??;
    // The first batch is awaited before answering, so planning and early execution
    // errors get a proper status instead of a cut-off body.
    let first = next_batch(&mut stream, deadline).await?;
    let mut encoder = Encoder::new(req.format);
    let head = match &first {
        Some(b) => encoder.encode(b)?,
        None => encoder.encode(&RecordBatch::new_empty(stream.schema()))?,
    };
    let state = Some((stream, encoder, first.is_some()));
    let metrics = Arc::clone(&app.metrics);
    let tail = stream::unfold(state, move |state| {
        let metrics = Arc::clone(&metrics);
        async move {
            let (mut stream, mut encoder, more) = state?;
            if !more {
                metrics.query_done(true, started.elapsed());
                return Some((Ok(encoder.finish()), None));
            }
            let chunk = match next_batch(&mut stream, deadline).await {
                Ok(Some(b)) => encoder.encode(&b),
                Ok(None) => {
                    metrics.query_done(true, started.elapsed());
                    return Some((Ok(encoder.finish()), None));
                }
                Err(e) => Err(e),
            };
            match chunk {
                Ok(bytes) => Some((Ok(bytes), Some((stream, encoder, true)))),
                Err(e) => {
                    // Headers are gone; all that is left is to cut the body short.
                    tracing::warn!(error = %e, "query failed while streaming; response cut short");
                    metrics.query_done(false, started.elapsed());
                    Some((Err(std::io::Error::other(e.to_string())), None))
                }
            }
        }
    });
    let body = stream::once(async move { Ok::<Bytes, std::io::Error>(head) }).chain(tail);
    let content_type = match req.format {
        Format::Json => "application/json",
        Format::Csv => "text/csv; charset=utf-8",
    };
    let mut resp = Body::from_stream(body).into_response();
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    Ok(resp)
}

/// Turns record batches into one continuous JSON array of row objects or one CSV
/// document with a header line.
struct Encoder {
    format: Format,
    started: bool,
    rows: u64,
}

impl Encoder {
    fn new(format: Format) -> Self {
        Self {
            format,
            started: false,
            rows: 0,
        }
    }

    fn encode(&mut self, batch: &RecordBatch) -> Result<Bytes, ApiError> {
        let fail = |e: arrow::error::ArrowError| ApiError::Query(QueryError::DataFusion(e.into()));
        let mut out = Vec::new();
        match self.format {
            Format::Json => {
                if batch.num_rows() == 0 {
                    return Ok(Bytes::new());
                }
                out.push(if self.rows == 0 { b'[' } else { b',' });
                let mut w = arrow::json::WriterBuilder::new()
                    .with_explicit_nulls(true)
                    .build::<_, arrow::json::writer::LineDelimited>(&mut out);
                w.write(batch).map_err(fail)?;
                w.finish().map_err(fail)?;
                drop(w);
                // One object per line, and JSON strings never hold a raw newline: the
                // newlines become the array's commas.
                if out.last() == Some(&b'\n') {
                    out.pop();
                }
                for b in &mut out[1..] {
                    if *b == b'\n' {
                        *b = b',';
                    }
                }
            }
            Format::Csv => {
                let mut w = arrow::csv::WriterBuilder::new()
                    .with_header(!self.started)
                    .build(&mut out);
                w.write(batch).map_err(fail)?;
            }
        }
        self.started = true;
        self.rows += batch.num_rows() as u64;
        Ok(Bytes::from(out))
    }

    fn finish(&mut self) -> Bytes {
        match self.format {
            Format::Json if self.rows == 0 => Bytes::from_static(b"[]"),
            Format::Json => Bytes::from_static(b"]"),
            Format::Csv => Bytes::new(),
        }
    }
}
