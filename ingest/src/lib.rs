//! WattDB ingest: turns request bodies into [`ReadingBatch`]es.
//!
//! This crate is the first step of the write path. The HTTP API hands it a body —
//! InfluxDB line protocol ([`decode_line_protocol`]) or JSON readings
//! ([`decode_json_readings`]) — and the MQTT subscriber a message ([`MqttDecoder`]:
//! WattDB's JSON, Tasmota and Shelly payloads); it appends the decoded readings to a
//! [`ReadingBatch`], which the engine then writes to the WAL, acknowledges once durable
//! and makes queryable. Apart from the [`subscriber`], it knows nothing of durability,
//! buffering, HTTP or MQTT connections: a decoder either appends every reading of a request or message or, on
//! the first bad line or element, leaves the batch as it was and returns an error whose
//! message is meant to be shown to the client (or logged) as it is.
//!
//! ```text
//! api ──body──────► ingest::decode_*          ─┐
//! broker ─message─► ingest::MqttDecoder        ─┴─ReadingBatch──► engine (WAL, buffer)
//! ```
//!
//! Module map:
//! - [`line_protocol`]: `/api/v2/write` and `/write` bodies, [`Precision`].
//! - [`json`]: `/api/v1/readings` bodies.
//! - [`mqtt`]: MQTT messages: topic routing ([`TopicRouter`]) and the payload formats.
//! - [`subscriber`]: the MQTT client that feeds broker messages to the engine, with a
//!   PUBACK only once their readings are durable.
//! - [`error`]: pieces shared by the error messages ([`Snippet`], [`Expected`]).
//! - [`fuzzing`]: invariant checks run by the fuzz targets and the corpus tests.

pub mod error;
pub mod fuzzing;
pub mod json;
pub mod line_protocol;
pub mod mqtt;
pub mod subscriber;

pub use error::{Expected, Snippet};
pub use json::{Found, JsonError, Position, TimestampProblem, decode_json_readings};
pub use line_protocol::{LineProtocolError, Precision, UnknownPrecision, decode_line_protocol};
pub use mqtt::{MqttDecodeError, MqttDecoder, MqttDecoderConfig, PayloadFormat, TopicRouter};
pub use wattdb_storage::ReadingBatch;

/// Now, in nanoseconds since the Unix epoch: the arrival time of readings without one.
pub fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i64)
}
