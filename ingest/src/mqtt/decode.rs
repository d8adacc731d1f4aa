//! The machinery the payload formats share: the decoding context, refusals raised
//! inside `serde` visitors, and readers for numbers, relay states and timestamps.
//!
//! Like [`crate::json`], decoding drives `serde_json` with `DeserializeSeed`s that
//! read straight into local slots and push to the batch: no intermediate structs, and
//! strings are borrowed from the payload unless they hold escapes (those go through
//! one scratch buffer that the decoder keeps between messages).

use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use wattdb_storage::{DeviceIdError, ReadingBatch};

use super::error::{BadTimestamp, MqttDecodeError, NonFiniteValue, NotJson, Oversize};
use crate::error::{Expected, Snippet};
use crate::json::{Found, MICROS_BELOW, MILLIS_BELOW, Position, SECONDS_BELOW, Scalar, ScalarSeed};

/// 2000-01-01T00:00:00Z: nothing earlier is a plug's reading.
pub(super) const EARLIEST_NS: i64 = 946_684_800 * NANOS_PER_SECOND;
/// How far past its arrival a reading's time may be: plug clocks drift, not by a day.
pub(super) const MAX_AHEAD_NS: i64 = 86_400 * NANOS_PER_SECOND;
const NANOS_PER_SECOND: i64 = 1_000_000_000;

/// A refusal raised inside the visitors, waiting for `serde_json` to supply the
/// position.
pub(super) enum Failure {
    WrongType {
        field: Option<&'static str>,
        expected: Expected,
        found: Found,
    },
    MissingField(&'static str),
    NonFinite {
        field: &'static str,
        value: NonFiniteValue,
    },
    BadTimestamp {
        field: &'static str,
        problem: BadTimestamp,
    },
    BadDeviceId {
        found: Snippet,
        reason: DeviceIdError,
    },
    TooManyReadings(usize),
}

/// One message being decoded.
pub(super) struct Ctx<'a> {
    pub(super) out: &'a mut ReadingBatch,
    /// The topic's device level, validated.
    pub(super) device_id: &'a str,
    pub(super) now_ns: i64,
    /// Escaped strings of the current object, unescaped.
    pub(super) scratch: &'a mut String,
    pub(super) max_readings: usize,
    /// Tasmota: the remembered relay state going in (SENSOR), the reported one coming
    /// out (STATE).
    pub(super) relay: Option<bool>,
    /// The array element being decoded.
    pub(super) index: Option<usize>,
    /// The field whose value `serde_json` is reading, to name it if the value is a
    /// number out of `f64` range (which `serde_json` reports as a syntax error).
    field: Option<&'static str>,
    failure: Option<Failure>,
}

impl<'a> Ctx<'a> {
    pub(super) fn new(
        out: &'a mut ReadingBatch,
        device_id: &'a str,
        now_ns: i64,
        scratch: &'a mut String,
        max_readings: usize,
        relay: Option<bool>,
    ) -> Self {
        Self {
            out,
            device_id,
            now_ns,
            scratch,
            max_readings,
            relay,
            index: None,
            field: None,
            failure: None,
        }
    }

    /// Records why decoding stops; the returned error only unwinds `serde_json`.
    pub(super) fn fail<E: de::Error>(&mut self, failure: Failure) -> E {
        self.failure = Some(failure);
        E::custom("message rejected")
    }

    /// Passes a value through, or stops decoding with its failure.
    pub(super) fn check<T, E: de::Error>(&mut self, result: Result<T, Failure>) -> Result<T, E> {
        result.map_err(|failure| self.fail(failure))
    }

    /// Reads the scalar value of `field` (objects and arrays are skipped and reported
    /// as such); escaped strings land in the scratch buffer.
    pub(super) fn scalar<'de, A: MapAccess<'de>>(
        &mut self,
        map: &mut A,
        field: &'static str,
    ) -> Result<Scalar<'de>, A::Error> {
        let outer = self.field.replace(field);
        let value = map.next_value_seed(ScalarSeed(self.scratch))?;
        self.field = outer;
        Ok(value)
    }

    /// Reads the value of `field` as a number or the first of an array of numbers
    /// (see [`FirstChannelSeed`]).
    pub(super) fn first_channel<'de, A: MapAccess<'de>>(
        &mut self,
        map: &mut A,
        field: &'static str,
    ) -> Result<Scalar<'de>, A::Error> {
        let outer = self.field.replace(field);
        let value = map.next_value_seed(FirstChannelSeed(self.scratch))?;
        self.field = outer;
        Ok(value)
    }

    /// Turns the error that stopped `serde_json` into the message's error.
    pub(super) fn error(&mut self, error: serde_json::Error) -> MqttDecodeError {
        let at = Position {
            index: self.index,
            line: error.line(),
            column: error.column(),
        };
        match self.failure.take() {
            None => match self.field {
                Some(field) if is_out_of_range(&error) => MqttDecodeError::NonFinite {
                    at,
                    field,
                    value: NonFiniteValue::OutOfRange,
                },
                _ => MqttDecodeError::NotJson {
                    index: self.index,
                    problem: NotJson::Syntax(error),
                },
            },
            Some(Failure::WrongType {
                field,
                expected,
                found,
            }) => MqttDecodeError::WrongType {
                at,
                field,
                expected,
                found,
            },
            Some(Failure::MissingField(field)) => MqttDecodeError::MissingField { at, field },
            Some(Failure::NonFinite { field, value }) => {
                MqttDecodeError::NonFinite { at, field, value }
            }
            Some(Failure::BadTimestamp { field, problem }) => {
                MqttDecodeError::BadTimestamp { at, field, problem }
            }
            Some(Failure::BadDeviceId { found, reason }) => MqttDecodeError::BadDeviceId {
                at: Some(at),
                found,
                reason,
            },
            Some(Failure::TooManyReadings(limit)) => {
                MqttDecodeError::TooLarge(Oversize::Readings { at, limit })
            }
        }
    }
}

/// `serde_json` refuses numbers beyond `f64` with a syntax error; this is how to tell
/// it from the others (the error has no public code).
fn is_out_of_range(error: &serde_json::Error) -> bool {
    error.is_syntax() && error.to_string().starts_with("number out of range")
}

/// Object keys, mapped to a format's key type by a function.
pub(super) struct KeySeed<K>(pub(super) fn(&str) -> K);

impl<'de, K> DeserializeSeed<'de> for KeySeed<K> {
    type Value = K;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<K, D::Error> {
        deserializer.deserialize_identifier(self)
    }
}

impl<K> Visitor<'_> for KeySeed<K> {
    type Value = K;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a field name")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<K, E> {
        Ok((self.0)(v))
    }
}

/// A Tasmota value: a number, or an array with one number per channel, of which the
/// first is taken. Anything else is read as by [`ScalarSeed`].
struct FirstChannelSeed<'s>(&'s mut String);

impl<'de> DeserializeSeed<'de> for FirstChannelSeed<'_> {
    type Value = Scalar<'de>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for FirstChannelSeed<'_> {
    type Value = Scalar<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a number or an array of numbers")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let first = seq
            .next_element_seed(ScalarSeed(self.0))?
            .unwrap_or(Scalar::Array);
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(first)
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Self::Value, E> {
        ScalarSeed(self.0).visit_bool(v)
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
        ScalarSeed(self.0).visit_i64(v)
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
        ScalarSeed(self.0).visit_u64(v)
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
        ScalarSeed(self.0).visit_f64(v)
    }

    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
        ScalarSeed(self.0).visit_borrowed_str(v)
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        ScalarSeed(self.0).visit_str(v)
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        ScalarSeed(self.0).visit_unit()
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
        ScalarSeed(self.0).visit_map(map)
    }
}

/// A number, as `f64`.
pub(super) fn number(
    field: &'static str,
    expected: Expected,
    value: &Scalar<'_>,
    scratch: &str,
) -> Result<f64, Failure> {
    match *value {
        Scalar::U64(v) => Ok(v as f64),
        Scalar::I64(v) => Ok(v as f64),
        // serde_json refuses numbers beyond f64, so this is finite.
        Scalar::F64(v) => Ok(v),
        _ => Err(Failure::WrongType {
            field: Some(field),
            expected,
            found: value.found(scratch),
        }),
    }
}

/// A number or `null` (absent).
pub(super) fn optional_number(
    field: &'static str,
    expected: Expected,
    value: &Scalar<'_>,
    scratch: &str,
) -> Result<Option<f64>, Failure> {
    match value {
        Scalar::Null => Ok(None),
        _ => number(field, expected, value, scratch).map(Some),
    }
}

/// kWh → Wh, refusing what overflows.
pub(super) fn kwh_to_wh(field: &'static str, kwh: f64) -> Result<f64, Failure> {
    let wh = kwh * 1_000.0;
    if wh.is_finite() {
        Ok(wh)
    } else {
        Err(Failure::NonFinite {
            field,
            value: NonFiniteValue::Converted {
                found: Found::Float(kwh),
                unit: "kWh",
                converted_to: "Wh",
            },
        })
    }
}

/// A relay state: `true`/`false`, `"on"`/`"off"` in any case, 1/0; `null` is absent.
pub(super) fn relay(
    field: &'static str,
    value: &Scalar<'_>,
    scratch: &str,
) -> Result<Option<bool>, Failure> {
    match value {
        Scalar::Null => return Ok(None),
        Scalar::Bool(b) => return Ok(Some(*b)),
        Scalar::U64(0) => return Ok(Some(false)),
        Scalar::U64(1) => return Ok(Some(true)),
        Scalar::F64(v) if *v == 0.0 => return Ok(Some(false)),
        Scalar::F64(v) if *v == 1.0 => return Ok(Some(true)),
        Scalar::Str(text) => {
            let s = text.get(scratch);
            if s.eq_ignore_ascii_case("on") {
                return Ok(Some(true));
            }
            if s.eq_ignore_ascii_case("off") {
                return Ok(Some(false));
            }
        }
        _ => {}
    }
    Err(Failure::WrongType {
        field: Some(field),
        expected: Expected::RelayState,
        found: value.found(scratch),
    })
}

/// A reading time in nanoseconds, `None` for `null`.
///
/// Numbers take their unit from their magnitude, like JSON readings' integers but
/// for fractions too: below 10¹¹ seconds, below 10¹⁴ milliseconds, below 10¹⁷
/// microseconds, else nanoseconds. Strings are RFC 3339. The time must fall between
/// 2000-01-01 and a day after `now_ns`.
pub(super) fn timestamp(
    field: &'static str,
    value: &Scalar<'_>,
    scratch: &str,
    now_ns: i64,
) -> Result<Option<i64>, Failure> {
    let (ns, found) = match *value {
        Scalar::Null => return Ok(None),
        Scalar::U64(v) => (
            i64::try_from(v)
                .ok()
                .and_then(|ns| ns.checked_mul(per_unit(v))),
            Found::Unsigned(v),
        ),
        Scalar::I64(v) => (v.checked_mul(per_unit(v.unsigned_abs())), Found::Integer(v)),
        Scalar::F64(v) => (float_nanos(v), Found::Float(v)),
        Scalar::Str(ref text) => {
            let s = text.get(scratch);
            match chrono::DateTime::parse_from_rfc3339(s) {
                Err(reason) => {
                    return Err(Failure::BadTimestamp {
                        field,
                        problem: BadTimestamp::Rfc3339 {
                            found: s.into(),
                            reason,
                        },
                    });
                }
                Ok(t) => {
                    // Outside i64 nanoseconds: early or late by the sign of its seconds.
                    let ns = t.timestamp_nanos_opt();
                    let ns_or_edge = ns.unwrap_or(if t.timestamp() < 0 {
                        i64::MIN
                    } else {
                        i64::MAX
                    });
                    return check_range(field, ns_or_edge, ns, Found::String(s.into()), now_ns);
                }
            }
        }
        Scalar::Bool(_) | Scalar::Array | Scalar::Object => {
            return Err(Failure::WrongType {
                field: Some(field),
                expected: Expected::TimestampByMagnitude,
                found: value.found(scratch),
            });
        }
    };
    // A number outside i64 nanoseconds: early or late by its sign.
    let negative =
        matches!(found, Found::Integer(v) if v < 0) || matches!(found, Found::Float(v) if v < 0.0);
    let edge = if negative { i64::MIN } else { i64::MAX };
    check_range(field, ns.unwrap_or(edge), ns, found, now_ns)
}

/// Nanoseconds per unit of a number of this magnitude.
fn per_unit(magnitude: u64) -> i64 {
    if magnitude < SECONDS_BELOW {
        NANOS_PER_SECOND
    } else if magnitude < MILLIS_BELOW {
        1_000_000
    } else if magnitude < MICROS_BELOW {
        1_000
    } else {
        1
    }
}

/// A number with a fraction, in nanoseconds, when it fits. The whole part and the
/// fraction are scaled apart, so `1700000000.25` seconds keeps its quarter second.
fn float_nanos(v: f64) -> Option<i64> {
    // i64::MAX as f64 rounds up to 2^63, itself out of range.
    const LIMIT: f64 = 9_223_372_036_854_775_808.0;
    let whole = v.trunc();
    if !(-LIMIT..LIMIT).contains(&whole) {
        return None;
    }
    // `as` saturates: the magnitude of a fraction is that of its whole part.
    let per_unit = per_unit(v.abs() as u64);
    let fraction = ((v - whole) * per_unit as f64).round() as i64;
    (whole as i64).checked_mul(per_unit)?.checked_add(fraction)
}

fn check_range(
    field: &'static str,
    ns_or_edge: i64,
    ns: Option<i64>,
    found: Found,
    now_ns: i64,
) -> Result<Option<i64>, Failure> {
    let problem = if ns_or_edge < EARLIEST_NS {
        BadTimestamp::TooEarly { found, ns }
    } else if ns_or_edge > now_ns.saturating_add(MAX_AHEAD_NS) {
        BadTimestamp::TooLate { found, ns, now_ns }
    } else {
        return Ok(Some(ns_or_edge));
    };
    Err(Failure::BadTimestamp { field, problem })
}
