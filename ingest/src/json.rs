//! JSON readings (`POST /api/v1/readings`, MQTT telemetry) → [`ReadingBatch`].
//!
//! The body is an array of reading objects, or one reading object:
//!
//! ```json
//! [{"device_id": "plug-1", "ts": 1700000000, "voltage": 230.1, "current": 0.5,
//!   "power": 115.0, "energy": 12.5, "relay_state": true,
//!   "location": "kitchen", "device_type": "fridge"}]
//! ```
//!
//! - `device_id` (string, `[A-Za-z0-9_.:-]{1,128}`), `voltage`, `current`, `power`
//!   (numbers) are required.
//! - `energy` (number), `relay_state` (`true`/`false`, or the numbers 0 and 1),
//!   `location`, `device_type` (strings; `""` counts as absent) and `ts` are optional and
//!   may be `null`.
//! - `ts` is one of: an integer, whose unit is chosen by magnitude — below 10¹¹ seconds,
//!   below 10¹⁴ milliseconds, below 10¹⁷ microseconds, else nanoseconds (so any time
//!   from 1973 to 2262 reads right in every unit); a number with a fraction or exponent,
//!   taken as seconds; or an RFC 3339 string (`"2023-11-14T22:13:20.5+01:00"`).
//!   Missing or `null` means the arrival time `now_ns`. Times before 1970 or after
//!   2262-04-11 are refused.
//! - Unknown keys are ignored; a key given twice: the last one wins.
//!
//! Decoding drives `serde_json` with a [`DeserializeSeed`] that pushes each object
//! straight into the batch: no intermediate structs, and strings are borrowed from the
//! body unless they hold escapes (those go through one reusable buffer).

use std::fmt;
use std::ops::Range;

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use wattdb_storage::{DeviceIdError, ReadingBatch, ReadingRef, validate_device_id};

use crate::error::{Expected, Snippet};

/// Where a JSON error was found: the array element (absent for a single object or
/// outside any element) and the 1-based line and column in the body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Position {
    pub index: Option<usize>,
    pub line: usize,
    pub column: usize,
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.index {
            Some(i) => write!(
                f,
                "element {i} (line {}, column {})",
                self.line, self.column
            ),
            None => write!(f, "line {}, column {}", self.line, self.column),
        }
    }
}

/// A JSON value found where something else was expected.
#[derive(Debug, Clone, PartialEq)]
pub enum Found {
    Null,
    Bool(bool),
    Integer(i64),
    Unsigned(u64),
    Float(f64),
    String(Snippet),
    Array,
    Object,
}

impl fmt::Display for Found {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Null => f.write_str("null"),
            Self::Bool(b) => write!(f, "{b}"),
            Self::Integer(v) => write!(f, "{v}"),
            Self::Unsigned(v) => write!(f, "{v}"),
            // Debug, not Display: 1e300 stays short.
            Self::Float(v) => write!(f, "{v:?}"),
            Self::String(s) => write!(f, "{s}"),
            Self::Array => f.write_str("an array"),
            Self::Object => f.write_str("an object"),
        }
    }
}

/// Why a `ts` value was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TimestampProblem {
    #[error("must not be before 1970, found {0}")]
    Negative(Found),
    #[error("out of range (1970 to 2262-04-11), found {0}")]
    OutOfRange(Found),
    #[error("expected an RFC 3339 time like \"2023-11-14T22:13:20Z\", found {found}: {reason}")]
    Rfc3339 {
        found: Snippet,
        reason: chrono::ParseError,
    },
}

/// Why a JSON readings body was refused.
#[derive(Debug, thiserror::Error)]
pub enum JsonError {
    /// Not well-formed JSON; the parser's message carries the line and column.
    #[error("{}invalid JSON: {error}", ElementPrefix(*.index))]
    Syntax {
        index: Option<usize>,
        error: serde_json::Error,
    },
    #[error("{at}: invalid UTF-8")]
    InvalidUtf8 { at: Position },
    #[error("{at}: expected an array of readings or one reading object, found {found}")]
    NotArrayOrObject { at: Position, found: Found },
    #[error("{at}: expected a reading object, found {found}")]
    ElementNotObject { at: Position, found: Found },
    #[error("{at}: missing field \"{field}\"")]
    MissingField { at: Position, field: &'static str },
    #[error("{at}: field \"{field}\": expected {expected}, found {found}")]
    InvalidField {
        at: Position,
        field: &'static str,
        expected: Expected,
        found: Found,
    },
    #[error("{at}: field \"device_id\": invalid value {found}: {reason}")]
    InvalidDeviceId {
        at: Position,
        found: Snippet,
        reason: DeviceIdError,
    },
    #[error("{at}: field \"ts\": {problem}")]
    InvalidTimestamp {
        at: Position,
        problem: TimestampProblem,
    },
}

impl JsonError {
    /// Where the error was found.
    pub fn position(&self) -> Position {
        match self {
            Self::Syntax { index, error } => Position {
                index: *index,
                line: error.line(),
                column: error.column(),
            },
            Self::InvalidUtf8 { at }
            | Self::NotArrayOrObject { at, .. }
            | Self::ElementNotObject { at, .. }
            | Self::MissingField { at, .. }
            | Self::InvalidField { at, .. }
            | Self::InvalidDeviceId { at, .. }
            | Self::InvalidTimestamp { at, .. } => *at,
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

/// Decodes a JSON readings body and appends its readings to `out`.
///
/// Returns how many readings were appended. The request is all or nothing: on error
/// `out` is truncated back to its length on entry. `now_ns` (nanoseconds since the Unix
/// epoch) stamps readings without `ts`.
pub fn decode_json_readings(
    body: &[u8],
    now_ns: i64,
    out: &mut ReadingBatch,
) -> Result<usize, JsonError> {
    let start = out.len();
    let mut state = State {
        out,
        now_ns,
        scratch: String::new(),
        index: None,
        failure: None,
    };
    // Validating the whole body first refuses bad bytes even inside ignored members,
    // which `serde_json` would skip unchecked.
    let text = match std::str::from_utf8(body) {
        Ok(text) => text,
        Err(e) => return Err(invalid_utf8(body, e.valid_up_to())),
    };
    let mut de = serde_json::Deserializer::from_str(text);
    let result = Body(&mut state)
        .deserialize(&mut de)
        .and_then(|()| de.end());
    match result {
        Ok(()) => Ok(state.out.len() - start),
        Err(error) => {
            state.out.truncate(start);
            Err(state.error(error))
        }
    }
}

fn invalid_utf8(body: &[u8], valid_up_to: usize) -> JsonError {
    let (line, column) = line_column(body, valid_up_to);
    JsonError::InvalidUtf8 {
        at: Position {
            index: None,
            line,
            column,
        },
    }
}

/// The 1-based line and column of byte `offset` of `body`.
pub(crate) fn line_column(body: &[u8], offset: usize) -> (usize, usize) {
    let before = &body[..offset.min(body.len())];
    let line_start = before
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(0, |i| i + 1);
    (
        1 + before.iter().filter(|&&b| b == b'\n').count(),
        1 + before.len() - line_start,
    )
}

/// A refusal raised inside the visitors, waiting for `serde_json` to supply the position.
enum Failure {
    NotArrayOrObject(Found),
    ElementNotObject(Found),
    MissingField(&'static str),
    InvalidField {
        field: &'static str,
        expected: Expected,
        found: Found,
    },
    InvalidDeviceId {
        found: Snippet,
        reason: DeviceIdError,
    },
    InvalidTimestamp(TimestampProblem),
}

struct State<'o> {
    out: &'o mut ReadingBatch,
    now_ns: i64,
    /// Escaped strings of the current object, unescaped.
    scratch: String,
    /// The array element being decoded.
    index: Option<usize>,
    failure: Option<Failure>,
}

impl State<'_> {
    /// Records why decoding stops; the returned error only unwinds `serde_json`.
    fn fail<E: de::Error>(&mut self, failure: Failure) -> E {
        self.failure = Some(failure);
        E::custom("reading rejected")
    }

    fn error(&mut self, error: serde_json::Error) -> JsonError {
        let at = Position {
            index: self.index,
            line: error.line(),
            column: error.column(),
        };
        match self.failure.take() {
            None => JsonError::Syntax {
                index: self.index,
                error,
            },
            Some(Failure::NotArrayOrObject(found)) => JsonError::NotArrayOrObject { at, found },
            Some(Failure::ElementNotObject(found)) => JsonError::ElementNotObject { at, found },
            Some(Failure::MissingField(field)) => JsonError::MissingField { at, field },
            Some(Failure::InvalidField {
                field,
                expected,
                found,
            }) => JsonError::InvalidField {
                at,
                field,
                expected,
                found,
            },
            Some(Failure::InvalidDeviceId { found, reason }) => {
                JsonError::InvalidDeviceId { at, found, reason }
            }
            Some(Failure::InvalidTimestamp(problem)) => JsonError::InvalidTimestamp { at, problem },
        }
    }
}

/// Visitor methods for the scalar JSON values, each handing a [`Found`] to
/// `self.other(found)`.
macro_rules! visit_scalars {
    () => {
        fn visit_bool<E: de::Error>(self, v: bool) -> Result<Self::Value, E> {
            self.other(Found::Bool(v))
        }
        fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
            self.other(Found::Integer(v))
        }
        fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
            self.other(Found::Unsigned(v))
        }
        fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
            self.other(Found::Float(v))
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
            self.other(Found::String(v.into()))
        }
        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            self.other(Found::Null)
        }
    };
}
pub(crate) use visit_scalars;

/// The whole body: an array of readings or one reading.
struct Body<'s, 'o>(&'s mut State<'o>);

impl Body<'_, '_> {
    fn other<E: de::Error>(self, found: Found) -> Result<(), E> {
        Err(self.0.fail(Failure::NotArrayOrObject(found)))
    }
}

impl<'de> DeserializeSeed<'de> for Body<'_, '_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Body<'_, '_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an array of readings or one reading object")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let state = self.0;
        let mut index = 0;
        loop {
            state.index = Some(index);
            if seq.next_element_seed(Element(&mut *state))?.is_none() {
                break;
            }
            index += 1;
        }
        state.index = None;
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<(), A::Error> {
        self.0.index = None;
        reading(self.0, map)
    }

    visit_scalars!();
}

/// One element of the array.
struct Element<'s, 'o>(&'s mut State<'o>);

impl Element<'_, '_> {
    fn other<E: de::Error>(self, found: Found) -> Result<(), E> {
        Err(self.0.fail(Failure::ElementNotObject(found)))
    }
}

impl<'de> DeserializeSeed<'de> for Element<'_, '_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Element<'_, '_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a reading object")
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<(), A::Error> {
        reading(self.0, map)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, _seq: A) -> Result<(), A::Error> {
        self.other(Found::Array)
    }

    visit_scalars!();
}

/// The keys of a reading object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Key {
    DeviceId,
    Ts,
    Voltage,
    Current,
    Power,
    Energy,
    RelayState,
    Location,
    DeviceType,
    Other,
}

struct KeySeed;

impl<'de> DeserializeSeed<'de> for KeySeed {
    type Value = Key;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Key, D::Error> {
        deserializer.deserialize_identifier(self)
    }
}

impl Visitor<'_> for KeySeed {
    type Value = Key;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a field name")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Key, E> {
        Ok(match v {
            "device_id" => Key::DeviceId,
            "ts" => Key::Ts,
            "voltage" => Key::Voltage,
            "current" => Key::Current,
            "power" => Key::Power,
            "energy" => Key::Energy,
            "relay_state" => Key::RelayState,
            "location" => Key::Location,
            "device_type" => Key::DeviceType,
            _ => Key::Other,
        })
    }
}

/// A string value: borrowed from the body, or unescaped into the scratch buffer.
#[derive(Debug, Clone)]
pub(crate) enum Text<'de> {
    Borrowed(&'de str),
    Scratch(Range<usize>),
}

impl<'de> Text<'de> {
    pub(crate) fn get<'s>(&self, scratch: &'s str) -> &'s str
    where
        'de: 's,
    {
        match self {
            Self::Borrowed(s) => s,
            Self::Scratch(r) => scratch.get(r.clone()).unwrap_or_default(),
        }
    }
}

/// Any JSON value, kept only as far as a reading needs it.
#[derive(Debug, Clone)]
pub(crate) enum Scalar<'de> {
    Null,
    Bool(bool),
    I64(i64),
    U64(u64),
    F64(f64),
    Str(Text<'de>),
    Array,
    Object,
}

impl Scalar<'_> {
    pub(crate) fn found(&self, scratch: &str) -> Found {
        match self {
            Self::Null => Found::Null,
            Self::Bool(b) => Found::Bool(*b),
            Self::I64(v) => Found::Integer(*v),
            Self::U64(v) => Found::Unsigned(*v),
            Self::F64(v) => Found::Float(*v),
            Self::Str(t) => Found::String(t.get(scratch).into()),
            Self::Array => Found::Array,
            Self::Object => Found::Object,
        }
    }
}

pub(crate) struct ScalarSeed<'s>(pub(crate) &'s mut String);

impl<'de> DeserializeSeed<'de> for ScalarSeed<'_> {
    type Value = Scalar<'de>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for ScalarSeed<'_> {
    type Value = Scalar<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Self::Value, E> {
        Ok(Scalar::Bool(v))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
        Ok(Scalar::I64(v))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
        Ok(Scalar::U64(v))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
        Ok(Scalar::F64(v))
    }

    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Scalar::Str(Text::Borrowed(v)))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        let start = self.0.len();
        self.0.push_str(v);
        Ok(Scalar::Str(Text::Scratch(start..self.0.len())))
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(Scalar::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Scalar::Array)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(Scalar::Object)
    }
}

/// The values of one reading object, as found so far.
#[derive(Default)]
struct Slots<'de> {
    device_id: Option<Text<'de>>,
    ts: Option<i64>,
    voltage: Option<f64>,
    current: Option<f64>,
    power: Option<f64>,
    energy: Option<f64>,
    relay_on: Option<bool>,
    location: Option<Text<'de>>,
    device_type: Option<Text<'de>>,
}

/// Decodes one reading object and pushes it.
fn reading<'de, A: MapAccess<'de>>(state: &mut State<'_>, mut map: A) -> Result<(), A::Error> {
    state.scratch.clear();
    let mut slots = Slots::default();
    while let Some(key) = map.next_key_seed(KeySeed)? {
        if key == Key::Other {
            map.next_value::<IgnoredAny>()?;
            continue;
        }
        let value = map.next_value_seed(ScalarSeed(&mut state.scratch))?;
        if let Err(failure) = slots.set(key, value, &state.scratch) {
            return Err(state.fail(failure));
        }
    }
    let required = |v: Option<f64>, field| v.ok_or(Failure::MissingField(field));
    let checked = (|| {
        Ok((
            slots
                .device_id
                .clone()
                .ok_or(Failure::MissingField("device_id"))?,
            required(slots.voltage, "voltage")?,
            required(slots.current, "current")?,
            required(slots.power, "power")?,
        ))
    })();
    let (device_id, voltage, current, power) = match checked {
        Ok(values) => values,
        Err(failure) => return Err(state.fail(failure)),
    };
    let scratch = state.scratch.as_str();
    state.out.push(ReadingRef {
        device_id: device_id.get(scratch),
        ts: slots.ts.unwrap_or(state.now_ns),
        voltage,
        current,
        power,
        energy: slots.energy,
        relay_on: slots.relay_on,
        location: slots.location.as_ref().map(|t| t.get(scratch)),
        device_type: slots.device_type.as_ref().map(|t| t.get(scratch)),
    });
    Ok(())
}

impl<'de> Slots<'de> {
    fn set(&mut self, key: Key, value: Scalar<'de>, scratch: &str) -> Result<(), Failure> {
        let invalid = |field, expected, value: &Scalar<'_>| Failure::InvalidField {
            field,
            expected,
            found: value.found(scratch),
        };
        match key {
            Key::DeviceId => match value {
                Scalar::Str(text) => {
                    let id = text.get(scratch);
                    if let Err(reason) = validate_device_id(id) {
                        return Err(Failure::InvalidDeviceId {
                            found: id.into(),
                            reason,
                        });
                    }
                    self.device_id = Some(text);
                }
                other => return Err(invalid("device_id", Expected::String, &other)),
            },
            Key::Ts => self.ts = timestamp(&value, scratch)?,
            Key::Voltage => self.voltage = Some(number("voltage", &value, scratch)?),
            Key::Current => self.current = Some(number("current", &value, scratch)?),
            Key::Power => self.power = Some(number("power", &value, scratch)?),
            Key::Energy => {
                self.energy = match value {
                    Scalar::Null => None,
                    _ => Some(number("energy", &value, scratch)?),
                }
            }
            Key::RelayState => {
                self.relay_on = match value {
                    Scalar::Null => None,
                    Scalar::Bool(b) => Some(b),
                    Scalar::U64(0) => Some(false),
                    Scalar::U64(1) => Some(true),
                    Scalar::F64(0.0) => Some(false),
                    Scalar::F64(1.0) => Some(true),
                    other => return Err(invalid("relay_state", Expected::Boolean, &other)),
                }
            }
            Key::Location | Key::DeviceType => {
                let (field, slot) = if key == Key::Location {
                    ("location", &mut self.location)
                } else {
                    ("device_type", &mut self.device_type)
                };
                *slot = match value {
                    Scalar::Null => None,
                    Scalar::Str(text) if text.get(scratch).is_empty() => None,
                    Scalar::Str(text) => Some(text),
                    other => return Err(invalid(field, Expected::String, &other)),
                }
            }
            Key::Other => {}
        }
        Ok(())
    }
}

fn number(field: &'static str, value: &Scalar<'_>, scratch: &str) -> Result<f64, Failure> {
    let v = match *value {
        Scalar::U64(v) => v as f64,
        Scalar::I64(v) => v as f64,
        Scalar::F64(v) => v,
        _ => {
            return Err(Failure::InvalidField {
                field,
                expected: Expected::Number,
                found: value.found(scratch),
            });
        }
    };
    if v.is_finite() {
        Ok(v)
    } else {
        Err(Failure::InvalidField {
            field,
            expected: Expected::FiniteNumber,
            found: value.found(scratch),
        })
    }
}

/// Integers below this many units are seconds, then milliseconds, then microseconds.
pub(crate) const SECONDS_BELOW: u64 = 100_000_000_000;
pub(crate) const MILLIS_BELOW: u64 = 100_000_000_000_000;
pub(crate) const MICROS_BELOW: u64 = 100_000_000_000_000_000;

/// An integer timestamp in nanoseconds, its unit chosen by magnitude.
fn integer_timestamp(v: u64) -> Option<i64> {
    let per_unit = match v {
        _ if v < SECONDS_BELOW => 1_000_000_000,
        _ if v < MILLIS_BELOW => 1_000_000,
        _ if v < MICROS_BELOW => 1_000,
        _ => 1,
    };
    i64::try_from(v).ok()?.checked_mul(per_unit)
}

/// A number of seconds with a fraction, in nanoseconds.
fn float_timestamp(v: f64) -> Option<i64> {
    const NANOS: f64 = 1e9;
    // i64::MAX nanoseconds, in seconds, rounded down to what f64 can hold.
    const MAX_SECONDS: f64 = 9_223_372_036.0;
    if !(0.0..MAX_SECONDS).contains(&v) {
        return None;
    }
    let whole = v.trunc();
    let nanos = ((v - whole) * NANOS).round() as i64;
    (whole as i64)
        .checked_mul(1_000_000_000)?
        .checked_add(nanos)
}

fn timestamp(value: &Scalar<'_>, scratch: &str) -> Result<Option<i64>, Failure> {
    let problem = match *value {
        Scalar::Null => return Ok(None),
        Scalar::U64(v) => match integer_timestamp(v) {
            Some(ns) => return Ok(Some(ns)),
            None => TimestampProblem::OutOfRange(Found::Unsigned(v)),
        },
        Scalar::I64(v) if v < 0 => TimestampProblem::Negative(Found::Integer(v)),
        Scalar::I64(v) => match integer_timestamp(v.unsigned_abs()) {
            Some(ns) => return Ok(Some(ns)),
            None => TimestampProblem::OutOfRange(Found::Integer(v)),
        },
        Scalar::F64(v) if v < 0.0 => TimestampProblem::Negative(Found::Float(v)),
        Scalar::F64(v) => match float_timestamp(v) {
            Some(ns) => return Ok(Some(ns)),
            None => TimestampProblem::OutOfRange(Found::Float(v)),
        },
        Scalar::Str(ref text) => {
            let s = text.get(scratch);
            match chrono::DateTime::parse_from_rfc3339(s) {
                Err(reason) => TimestampProblem::Rfc3339 {
                    found: s.into(),
                    reason,
                },
                Ok(t) => match t.timestamp_nanos_opt() {
                    Some(ns) if ns >= 0 => return Ok(Some(ns)),
                    Some(_) => TimestampProblem::Negative(Found::String(s.into())),
                    None => TimestampProblem::OutOfRange(Found::String(s.into())),
                },
            }
        }
        Scalar::Bool(_) | Scalar::Array | Scalar::Object => {
            return Err(Failure::InvalidField {
                field: "ts",
                expected: Expected::Timestamp,
                found: value.found(scratch),
            });
        }
    };
    Err(Failure::InvalidTimestamp(problem))
}

#[cfg(test)]
mod tests;
