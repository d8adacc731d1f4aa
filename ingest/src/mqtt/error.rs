//! [`MqttDecodeError`]: why a message was refused, with a metrics label per reason.

use std::fmt;

use wattdb_storage::DeviceIdError;

use crate::error::{Expected, Snippet};
use crate::json::{Found, Position};

/// Why an MQTT message was refused. The message names the array element (when the
/// payload is an array), the field and the reason; [`reason`](Self::reason) is a
/// stable label for metrics.
#[derive(Debug, thiserror::Error)]
pub enum MqttDecodeError {
    /// No route matches the topic.
    #[error("topic {topic} matches no route")]
    UnknownTopic { topic: Snippet },
    /// The topic's device level, or a `device_id` field, is not a valid plug identity.
    #[error("{}invalid device id {found}: {reason}", DeviceIdOrigin(*at))]
    BadDeviceId {
        /// `None` when the id comes from the topic.
        at: Option<Position>,
        found: Snippet,
        reason: DeviceIdError,
    },
    /// The payload, or the number of readings in it, is over a configured limit.
    #[error("{0}")]
    TooLarge(Oversize),
    /// Not well-formed JSON.
    #[error("{}not JSON: {problem}", ElementPrefix(*index))]
    NotJson {
        index: Option<usize>,
        problem: NotJson,
    },
    /// A value of the wrong JSON type: the payload or an element itself (`field` is
    /// `None`), or a field.
    #[error("{at}: {}expected {expected}, found {found}", FieldPrefix(*field))]
    WrongType {
        at: Position,
        field: Option<&'static str>,
        expected: Expected,
        found: Found,
    },
    /// A required field is absent.
    #[error("{at}: missing field \"{field}\"")]
    MissingField { at: Position, field: &'static str },
    /// A number beyond the range of `f64`, as written or once converted.
    #[error("{at}: field \"{field}\": {value}")]
    NonFinite {
        at: Position,
        field: &'static str,
        value: NonFiniteValue,
    },
    /// A timestamp that cannot be read, or an absurd one.
    #[error("{at}: field \"{field}\": {problem}")]
    BadTimestamp {
        at: Position,
        field: &'static str,
        problem: BadTimestamp,
    },
}

impl MqttDecodeError {
    /// Every [`reason`](Self::reason), for registering metrics up front.
    pub const REASONS: [&'static str; 8] = [
        "unknown_topic",
        "bad_device_id",
        "too_large",
        "not_json",
        "wrong_type",
        "missing_field",
        "non_finite",
        "bad_timestamp",
    ];

    /// A stable label for metrics, one per variant.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::UnknownTopic { .. } => "unknown_topic",
            Self::BadDeviceId { .. } => "bad_device_id",
            Self::TooLarge(_) => "too_large",
            Self::NotJson { .. } => "not_json",
            Self::WrongType { .. } => "wrong_type",
            Self::MissingField { .. } => "missing_field",
            Self::NonFinite { .. } => "non_finite",
            Self::BadTimestamp { .. } => "bad_timestamp",
        }
    }

    /// Where in the payload the error was found; `None` for errors about the topic or
    /// the payload's size.
    pub fn position(&self) -> Option<Position> {
        match self {
            Self::UnknownTopic { .. } | Self::TooLarge(Oversize::Payload { .. }) => None,
            Self::BadDeviceId { at, .. } => *at,
            Self::TooLarge(Oversize::Readings { at, .. }) => Some(*at),
            Self::NotJson { index, problem } => {
                let (line, column) = problem.line_column();
                Some(Position {
                    index: *index,
                    line,
                    column,
                })
            }
            Self::WrongType { at, .. }
            | Self::MissingField { at, .. }
            | Self::NonFinite { at, .. }
            | Self::BadTimestamp { at, .. } => Some(*at),
        }
    }
}

/// Which limit a message went over.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Oversize {
    #[error("payload of {bytes} bytes is over the limit of {limit} bytes")]
    Payload { bytes: usize, limit: usize },
    #[error("{at}: more than {limit} readings in one message")]
    Readings { at: Position, limit: usize },
}

/// Why a payload is not JSON.
#[derive(Debug, thiserror::Error)]
pub enum NotJson {
    #[error("invalid UTF-8 at line {line} column {column}")]
    InvalidUtf8 { line: usize, column: usize },
    /// `serde_json`'s message, which ends with the line and column.
    #[error("{0}")]
    Syntax(serde_json::Error),
}

impl NotJson {
    /// The 1-based line and column of the problem.
    pub fn line_column(&self) -> (usize, usize) {
        match self {
            Self::InvalidUtf8 { line, column } => (*line, *column),
            Self::Syntax(e) => (e.line(), e.column()),
        }
    }
}

/// A number that does not fit an `f64`.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum NonFiniteValue {
    /// Written with an exponent too large for `f64` (JSON has no NaN or infinity).
    #[error("the number is beyond the range of a 64-bit float")]
    OutOfRange,
    /// Finite as written, infinite after a unit conversion (kWh → Wh).
    #[error("{found} {unit} is beyond the range of a 64-bit float in {converted_to}")]
    Converted {
        found: Found,
        unit: &'static str,
        converted_to: &'static str,
    },
}

/// Why a timestamp was refused. Readings must fall between 2000-01-01 and a day after
/// their arrival; anything else is a clock or unit mistake.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum BadTimestamp {
    #[error("expected an RFC 3339 time like \"2024-01-01T12:00:00Z\", found {found}: {reason}")]
    Rfc3339 {
        found: Snippet,
        reason: chrono::ParseError,
    },
    #[error("{found} is {}, before 2000-01-01", Time(*ns))]
    TooEarly {
        found: Found,
        /// The time read, when it fits i64 nanoseconds.
        ns: Option<i64>,
    },
    #[error(
        "{found} is {}, more than a day after the message arrived ({})",
        Time(*ns),
        Time(Some(*now_ns))
    )]
    TooLate {
        found: Found,
        /// The time read, when it fits i64 nanoseconds.
        ns: Option<i64>,
        now_ns: i64,
    },
}

/// A time in nanoseconds, displayed in RFC 3339.
struct Time(Option<i64>);

impl fmt::Display for Time {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(ns) => f.write_str(
                &chrono::DateTime::from_timestamp_nanos(ns)
                    .to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true),
            ),
            None => f.write_str("outside 1677 to 2262"),
        }
    }
}

struct DeviceIdOrigin(Option<Position>);

impl fmt::Display for DeviceIdOrigin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(at) => write!(f, "{at}: field \"device_id\": "),
            None => f.write_str("topic: device level: "),
        }
    }
}

struct ElementPrefix(Option<usize>);

impl fmt::Display for ElementPrefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(i) => write!(f, "element {i}: "),
            None => Ok(()),
        }
    }
}

struct FieldPrefix(Option<&'static str>);

impl fmt::Display for FieldPrefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(field) => write!(f, "field \"{field}\": "),
            None => Ok(()),
        }
    }
}
