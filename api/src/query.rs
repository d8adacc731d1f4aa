//! `POST /api/v1/query`: read-only SQL, streamed as JSON, CSV, an Arrow IPC stream or
//! Parquet; and the streaming shared with `GET /api/v1/export`.

use std::sync::Arc;
use std::time::Duration;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use arrow::ipc::writer::StreamWriter;
use axum::body::Body;
use axum::extract::State;
use axum::extract::rejection::JsonRejection;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use bytes::Bytes;
use datafusion::execution::SendableRecordBatchStream;
use futures::StreamExt;
use futures::stream;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;
use serde::Deserialize;
use tokio::time::Instant;
use wattdb_query::Error as QueryError;

use crate::AppState;
use crate::auth::Access;
use crate::error::ApiError;

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    #[default]
    Json,
    Csv,
    Arrow,
    Parquet,
}

impl Format {
    fn content_type(self) -> &'static str {
        match self {
            Format::Json => "application/json",
            Format::Csv => "text/csv; charset=utf-8",
            Format::Arrow => "application/vnd.apache.arrow.stream",
            Format::Parquet => "application/vnd.apache.parquet",
        }
    }

    pub fn extension(self) -> &'static str {
        match self {
            Format::Json => "json",
            Format::Csv => "csv",
            Format::Arrow => "arrows",
            Format::Parquet => "parquet",
        }
    }
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
    Extension(access): Extension<Access>,
    req: Result<Json<QueryRequest>, JsonRejection>,
) -> Result<Response, ApiError> {
    let started = std::time::Instant::now();
    let result = run_query(&app, &access, req, started).await;
    if result.is_err() {
        app.metrics.query_done(false, started.elapsed());
    }
    result
}

async fn run_query(
    app: &AppState,
    access: &Access,
    req: Result<Json<QueryRequest>, JsonRejection>,
    started: std::time::Instant,
) -> Result<Response, ApiError> {
    let Json(req) = req?;
    let run = Run {
        deadline: app.query.deadline(),
        max_rows: Some(app.limits.max_rows),
        started,
    };
    stream_sql(app, access, &req.sql, req.format, run).await
}

/// How a streamed query runs.
pub(crate) struct Run {
    /// The deadline of the whole query.
    pub deadline: Duration,
    /// Rows the answer may hold; past that the body is cut short with an error.
    pub max_rows: Option<u64>,
    pub started: std::time::Instant,
}

/// Runs `sql` over the tables `access` may see and answers with its result in
/// `format`, streamed batch by batch, so that memory does not grow with the result.
/// Planning errors and errors before the first batch get a proper status; a later
/// error cuts the body short. The query holds one of the server's query slots until
/// its body is done.
pub(crate) async fn stream_sql(
    app: &AppState,
    access: &Access,
    sql: &str,
    format: Format,
    run: Run,
) -> Result<Response, ApiError> {
    let slot = app.query_slot()?;
    let Run {
        deadline: limit,
        max_rows,
        started,
    } = run;
    let deadline = Deadline {
        at: Instant::now() + limit,
        limit,
    };
    let devices = access.devices.clone();
    let mut stream =
        tokio::time::timeout_at(deadline.at, app.query.sql_for(sql, devices.as_deref()))
            .await
            .map_err(|_| deadline.err())??;
    // The first batch is awaited before answering, so planning and early execution
    // errors get a proper status instead of a cut-off body.
    let first = next_batch(&mut stream, deadline).await?;
    let too_many = move |rows: u64| max_rows.is_some_and(|m| rows > m);
    if let (Some(b), Some(m)) = (&first, max_rows)
        && too_many(b.num_rows() as u64)
    {
        return Err(ApiError::ResultTooLarge(m));
    }
    let mut encoder = Encoder::new(format, stream.schema())?;
    let head = match &first {
        Some(b) => encoder.encode(b)?,
        None => Bytes::new(),
    };
    let state = Some((stream, encoder, first.is_some()));
    let metrics = Arc::clone(&app.metrics);
    let tail = stream::unfold(state, move |state| {
        let metrics = Arc::clone(&metrics);
        // The query slot is released when the body is done or dropped.
        let _slot = &slot;
        async move {
            let (mut stream, mut encoder, more) = state?;
            let chunk = if more {
                match next_batch(&mut stream, deadline).await {
                    Ok(Some(b)) if too_many(encoder.rows + b.num_rows() as u64) => {
                        Err(ApiError::ResultTooLarge(max_rows.unwrap_or_default()))
                    }
                    Ok(Some(b)) => encoder.encode(&b).map(|b| (b, true)),
                    Ok(None) => encoder.finish().map(|b| (b, false)),
                    Err(e) => Err(e),
                }
            } else {
                encoder.finish().map(|b| (b, false))
            };
            match chunk {
                Ok((bytes, true)) => Some((Ok(bytes), Some((stream, encoder, true)))),
                Ok((bytes, false)) => {
                    metrics.query_done(true, started.elapsed());
                    Some((Ok(bytes), None))
                }
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
    let mut resp = Body::from_stream(body).into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(format.content_type()),
    );
    Ok(resp)
}

/// A Parquet row group is written out once it holds this much.
const PARQUET_ROW_GROUP_BYTES: usize = 64 << 20;

/// Turns record batches into one document: a JSON array of row objects, CSV with a
/// header line, an Arrow IPC stream, or a Parquet file (row groups written out as they
/// fill, so memory stays bounded).
struct Encoder {
    format: Format,
    started: bool,
    rows: u64,
    schema: SchemaRef,
    arrow: Option<StreamWriter<Vec<u8>>>,
    parquet: Option<ArrowWriter<Vec<u8>>>,
}

fn fail(e: impl Into<datafusion::error::DataFusionError>) -> ApiError {
    ApiError::Query(QueryError::DataFusion(e.into()))
}

impl Encoder {
    /// 400 when the format cannot hold a column of the result.
    fn new(format: Format, schema: SchemaRef) -> Result<Self, ApiError> {
        let unfit = |e: &dyn std::fmt::Display| {
            ApiError::BadRequest(format!(
                "format {}: cannot hold this result: {e}",
                format.extension()
            ))
        };
        if format == Format::Csv
            && let Some(f) = schema.fields().iter().find(|f| f.data_type().is_nested())
        {
            return Err(unfit(&format!(
                "column {:?} is {}; CSV holds flat columns only (use json, arrow or parquet)",
                f.name(),
                f.data_type()
            )));
        }
        let mut e = Self {
            format,
            started: false,
            rows: 0,
            schema: Arc::clone(&schema),
            arrow: None,
            parquet: None,
        };
        match format {
            Format::Arrow => {
                e.arrow = Some(StreamWriter::try_new(Vec::new(), &schema).map_err(|e| unfit(&e))?)
            }
            Format::Parquet => {
                let props = WriterProperties::builder()
                    .set_compression(Compression::ZSTD(ZstdLevel::default()))
                    .build();
                e.parquet = Some(
                    ArrowWriter::try_new(Vec::new(), schema, Some(props)).map_err(|e| unfit(&e))?,
                );
            }
            Format::Json | Format::Csv => {}
        }
        Ok(e)
    }

    fn encode(&mut self, batch: &RecordBatch) -> Result<Bytes, ApiError> {
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
            Format::Arrow => {
                if let Some(w) = &mut self.arrow {
                    w.write(batch).map_err(fail)?;
                    out = std::mem::take(w.get_mut());
                }
            }
            Format::Parquet => {
                if let Some(w) = &mut self.parquet {
                    w.write(batch).map_err(fail)?;
                    if w.in_progress_size() >= PARQUET_ROW_GROUP_BYTES {
                        w.flush().map_err(fail)?;
                    }
                    out = std::mem::take(w.inner_mut());
                }
            }
        }
        self.started = true;
        self.rows += batch.num_rows() as u64;
        Ok(Bytes::from(out))
    }

    fn finish(&mut self) -> Result<Bytes, ApiError> {
        Ok(match self.format {
            Format::Json if self.rows == 0 => Bytes::from_static(b"[]"),
            Format::Json => Bytes::from_static(b"]"),
            Format::Csv if !self.started => {
                // No rows: still the header line.
                let mut out = Vec::new();
                let mut w = arrow::csv::WriterBuilder::new()
                    .with_header(true)
                    .build(&mut out);
                w.write(&RecordBatch::new_empty(Arc::clone(&self.schema)))
                    .map_err(fail)?;
                drop(w);
                Bytes::from(out)
            }
            Format::Csv => Bytes::new(),
            Format::Arrow => match &mut self.arrow {
                Some(w) => {
                    w.finish().map_err(fail)?;
                    Bytes::from(std::mem::take(w.get_mut()))
                }
                None => Bytes::new(),
            },
            Format::Parquet => match &mut self.parquet {
                Some(w) => {
                    w.finish().map_err(fail)?;
                    Bytes::from(std::mem::take(w.inner_mut()))
                }
                None => Bytes::new(),
            },
        })
    }
}
