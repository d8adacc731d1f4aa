//! InfluxDB line protocol (v2 syntax) → [`ReadingBatch`].
//!
//! ```text
//! power_metrics,device_id=plug-1,location=kitchen voltage=230.1,current=0.52,power=119.6,energy=1234.5,relay_state=true 1700000000000000000
//! ```
//!
//! What is accepted:
//!
//! - The measurement must be `power_metrics`.
//! - Tags: `device_id` (required, `[A-Za-z0-9_.:-]{1,128}`), `location` and
//!   `device_type` (optional). Other tags are ignored.
//! - Fields: `voltage`, `current`, `power` (required), `energy` (optional): finite
//!   numbers written as floats (`230.1`, `1e3`), integers (`230i`) or unsigned integers
//!   (`230u`). `relay_state` (optional): `t T true True TRUE f F false False FALSE`, or
//!   the numbers 0 and 1 in any of the numeric forms (`1i`, `0u`, `1`, `1.0`). Other
//!   fields are ignored, but their value must still be well formed, as InfluxDB would
//!   require.
//! - A tag or field given twice in one line: the last one wins (as in InfluxDB).
//! - Escapes as in InfluxDB: `\,` and `\ ` in the measurement; `\,` `\=` `\ ` in tag
//!   keys, tag values and field keys (any other backslash is kept as it is); `\"` and
//!   `\\` in quoted string field values, which may also span lines.
//! - The timestamp is optional (the request's arrival time `now_ns` is used then),
//!   counted in the request's [`Precision`]; it must be a non-negative integer that,
//!   scaled to nanoseconds, fits an `i64` (until 2262-04-11).
//! - Blank lines, lines of only whitespace and `#` comment lines are skipped; `\r\n`
//!   line ends are accepted. The whole body must be valid UTF-8.
//!
//! Errors name the 1-based line on which the offending entry starts. A body is decoded
//! in one pass over borrowed bytes; nothing is allocated per reading except what the
//! batch itself grows by (tag values with escapes go through one reusable buffer).
//! The common spellings (the measurement, the known tag and field keys, plain decimals,
//! timestamps of digits only) take shortcuts that skip the byte-by-byte scanners; each
//! shortcut yields exactly what the scanner would, else the scanner runs, so the
//! shortcuts change speed, never a result ([`decode_line_protocol_general`] decodes
//! without them; the fuzz checks compare the two).

use std::fmt;
use std::str::FromStr;

use wattdb_storage::{DeviceIdError, ReadingBatch, ReadingRef, validate_device_id};

use crate::error::{Expected, Snippet};

/// The only measurement WattDB accepts.
pub const MEASUREMENT: &str = "power_metrics";

/// The unit of line-protocol timestamps (the `precision` query parameter).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum Precision {
    /// Nanoseconds (`ns`, `n`).
    #[default]
    Ns,
    /// Microseconds (`us`, `u`, `µs`).
    Us,
    /// Milliseconds (`ms`).
    Ms,
    /// Seconds (`s`).
    S,
    /// Minutes (`m`, InfluxDB v1 `/write` only).
    M,
    /// Hours (`h`, InfluxDB v1 `/write` only).
    H,
}

impl Precision {
    /// Nanoseconds in one unit.
    pub const fn nanos_per_unit(self) -> i64 {
        match self {
            Self::Ns => 1,
            Self::Us => 1_000,
            Self::Ms => 1_000_000,
            Self::S => 1_000_000_000,
            Self::M => 60 * 1_000_000_000,
            Self::H => 3_600 * 1_000_000_000,
        }
    }

    /// The canonical name: `ns`, `us`, `ms`, `s`, `m` or `h`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Ns => "ns",
            Self::Us => "us",
            Self::Ms => "ms",
            Self::S => "s",
            Self::M => "m",
            Self::H => "h",
        }
    }
}

impl fmt::Display for Precision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A `precision` that is none of those [`Precision`] accepts.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown precision {found}; expected one of ns, us, ms, s (or n, u, m, h)")]
pub struct UnknownPrecision {
    pub found: Snippet,
}

impl FromStr for Precision {
    type Err = UnknownPrecision;

    /// Accepts the InfluxDB v2 names `ns us ms s` and the v1 names `n u ms s m h`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "ns" | "n" => Self::Ns,
            "us" | "u" | "µs" | "µ" => Self::Us,
            "ms" => Self::Ms,
            "s" => Self::S,
            "m" => Self::M,
            "h" => Self::H,
            _ => return Err(UnknownPrecision { found: s.into() }),
        })
    }
}

/// Why a line-protocol body was refused. Every variant names the 1-based line on which
/// the offending entry starts; see [`line`](Self::line).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LineProtocolError {
    #[error("line {line}: invalid UTF-8")]
    InvalidUtf8 { line: usize },
    #[error("line {line}: missing measurement name")]
    MissingMeasurement { line: usize },
    #[error("line {line}: measurement {found} is not accepted; expected \"{MEASUREMENT}\"")]
    UnknownMeasurement { line: usize, found: Snippet },
    #[error("line {line}: empty tag key")]
    EmptyTagKey { line: usize },
    #[error("line {line}: tag {tag}: missing value")]
    MissingTagValue { line: usize, tag: Snippet },
    #[error("line {line}: tag {tag}: unescaped '=' in value {found}")]
    UnescapedEquals {
        line: usize,
        tag: Snippet,
        found: Snippet,
    },
    #[error("line {line}: missing fields; expected a space, then fields like voltage=230.1")]
    MissingFields { line: usize },
    #[error("line {line}: empty field key")]
    EmptyFieldKey { line: usize },
    #[error("line {line}: field {field}: missing value")]
    MissingFieldValue { line: usize, field: Snippet },
    #[error("line {line}: field {field}: unterminated string")]
    UnterminatedString { line: usize, field: Snippet },
    #[error("line {line}: field {field}: expected {expected}, found {found}")]
    InvalidFieldValue {
        line: usize,
        field: Snippet,
        expected: Expected,
        found: Snippet,
    },
    #[error("line {line}: missing tag \"{tag}\"")]
    MissingTag { line: usize, tag: &'static str },
    #[error("line {line}: missing field \"{field}\"")]
    MissingField { line: usize, field: &'static str },
    #[error("line {line}: tag \"device_id\": invalid value {found}: {reason}")]
    InvalidDeviceId {
        line: usize,
        found: Snippet,
        reason: DeviceIdError,
    },
    #[error("line {line}: timestamp: expected an integer, found {found}")]
    InvalidTimestamp { line: usize, found: Snippet },
    #[error("line {line}: timestamp: must not be negative, found {found}")]
    NegativeTimestamp { line: usize, found: Snippet },
    #[error(
        "line {line}: timestamp {found} at precision {precision} is out of range \
         (0 to 2262-04-11)"
    )]
    TimestampOutOfRange {
        line: usize,
        found: Snippet,
        precision: Precision,
    },
    #[error("line {line}: unexpected text after the timestamp: {found}")]
    TrailingText { line: usize, found: Snippet },
}

impl LineProtocolError {
    /// The 1-based line on which the offending entry starts.
    pub fn line(&self) -> usize {
        match self {
            Self::InvalidUtf8 { line }
            | Self::MissingMeasurement { line }
            | Self::UnknownMeasurement { line, .. }
            | Self::EmptyTagKey { line }
            | Self::MissingTagValue { line, .. }
            | Self::UnescapedEquals { line, .. }
            | Self::MissingFields { line }
            | Self::EmptyFieldKey { line }
            | Self::MissingFieldValue { line, .. }
            | Self::UnterminatedString { line, .. }
            | Self::InvalidFieldValue { line, .. }
            | Self::MissingTag { line, .. }
            | Self::MissingField { line, .. }
            | Self::InvalidDeviceId { line, .. }
            | Self::InvalidTimestamp { line, .. }
            | Self::NegativeTimestamp { line, .. }
            | Self::TimestampOutOfRange { line, .. }
            | Self::TrailingText { line, .. } => *line,
        }
    }
}

/// Decodes a line-protocol request body and appends its readings to `out`.
///
/// Returns how many readings were appended. The request is all or nothing: on error
/// `out` is truncated back to its length on entry. `now_ns` (nanoseconds since the Unix
/// epoch) stamps lines that carry no timestamp.
pub fn decode_line_protocol(
    body: &[u8],
    precision: Precision,
    now_ns: i64,
    out: &mut ReadingBatch,
) -> Result<usize, LineProtocolError> {
    decode(body, precision, now_ns, out, true)
}

/// [`decode_line_protocol`] without the shortcuts for the common spellings: every
/// line goes through the general scanners. The fuzz targets and tests check that both
/// give the same result on any input.
#[doc(hidden)]
pub fn decode_line_protocol_general(
    body: &[u8],
    precision: Precision,
    now_ns: i64,
    out: &mut ReadingBatch,
) -> Result<usize, LineProtocolError> {
    decode(body, precision, now_ns, out, false)
}

/// The length of the shortest line that decodes,
/// `power_metrics,device_id=a voltage=1,current=1,power=1`.
const MIN_LINE_LEN: usize = 53;

fn decode(
    body: &[u8],
    precision: Precision,
    now_ns: i64,
    out: &mut ReadingBatch,
    shortcuts: bool,
) -> Result<usize, LineProtocolError> {
    let start = out.len();
    // Room for every line at once, so that the columns do not grow (and copy) as they
    // fill; bounded by what the body could hold, whatever it holds.
    out.reserve(count_lines(body).min(body.len() / MIN_LINE_LEN + 1));
    // One validation for the whole body; a bad byte is reported when the line holding
    // it is reached, so that an earlier bad line is named first.
    let (text, valid_up_to) = match std::str::from_utf8(body) {
        Ok(text) => (text, body.len()),
        Err(e) => {
            let valid_up_to = e.valid_up_to();
            let text = std::str::from_utf8(&body[..valid_up_to]).unwrap_or_default();
            (text, valid_up_to)
        }
    };
    let mut parser = Parser {
        buf: body,
        text,
        valid_up_to,
        pos: 0,
        line: 1,
        precision,
        now_ns,
        scratch: String::new(),
        shortcuts,
    };
    match parser.run(out) {
        Ok(()) => Ok(out.len() - start),
        Err(e) => {
            out.truncate(start);
            Err(e)
        }
    }
}

/// Line feeds in `body`, plus one. Counted in byte-sized counters, 255 bytes at a time,
/// which the compiler turns into wide vector compares (a plain `filter().count()` adds
/// to a `usize` and goes a few bytes at a time, a fifth of the decoding).
fn count_lines(body: &[u8]) -> usize {
    body.chunks(255)
        .map(|chunk| {
            let feeds = chunk
                .iter()
                .fold(0u8, |n, &b| n.wrapping_add(u8::from(b == b'\n')));
            usize::from(feeds)
        })
        .sum::<usize>()
        + 1
}

/// A stretch of the body; `escaped` when it holds a backslash.
#[derive(Debug, Clone, Copy)]
struct Span {
    start: usize,
    end: usize,
    escaped: bool,
}

impl Span {
    fn is_empty(self) -> bool {
        self.start == self.end
    }
}

/// Where a tag value's text lives once unescaped.
#[derive(Debug, Clone)]
enum Placed<'a> {
    Body(&'a str),
    Scratch(std::ops::Range<usize>),
}

/// Which tag a key names (compared as written: an escaped key names no tag).
#[derive(Debug, Clone, Copy)]
enum Tag {
    DeviceId,
    Location,
    DeviceType,
    Other,
}

impl Tag {
    fn of(key: &[u8]) -> Self {
        match key {
            b"device_id" => Self::DeviceId,
            b"location" => Self::Location,
            b"device_type" => Self::DeviceType,
            _ => Self::Other,
        }
    }
}

/// Which field a key names (compared as written: an escaped key names no field).
#[derive(Debug, Clone, Copy)]
enum Field {
    Voltage,
    Current,
    Power,
    Energy,
    RelayState,
    Other,
}

impl Field {
    fn of(key: &[u8]) -> Self {
        match key {
            b"voltage" => Self::Voltage,
            b"current" => Self::Current,
            b"power" => Self::Power,
            b"energy" => Self::Energy,
            b"relay_state" => Self::RelayState,
            _ => Self::Other,
        }
    }
}

/// The fields WattDB stores, as found on one line.
#[derive(Debug, Default)]
struct Fields {
    voltage: Option<f64>,
    current: Option<f64>,
    power: Option<f64>,
    energy: Option<f64>,
    relay_on: Option<bool>,
}

struct Parser<'a> {
    buf: &'a [u8],
    /// The body up to its first invalid UTF-8 byte (all of it, normally).
    text: &'a str,
    valid_up_to: usize,
    pos: usize,
    /// The 1-based line `pos` is on.
    line: usize,
    precision: Precision,
    now_ns: i64,
    /// Unescaped tag values of the current line.
    scratch: String,
    /// Take the shortcuts for the common spellings (see [`Parser::known`]); off only
    /// to check them against the general scanners.
    shortcuts: bool,
}

type Res<T> = Result<T, LineProtocolError>;

/// Byte classes for the scanners, one table lookup per byte: a backslash, or which
/// stretches the byte ends.
const BACKSLASH: u8 = 1;
/// Ends a measurement: `,` space `\n`.
const END_MEASUREMENT: u8 = 2;
/// Ends a tag key, a tag value or a field key: `=` `,` space `\n`.
const END_KEY: u8 = 4;
/// Ends an unquoted field value or a timestamp: `,` space tab `\r` `\n`.
const END_VALUE: u8 = 8;
const END_LINE: u8 = 16;

const CLASSES: [u8; 256] = {
    let mut table = [0; 256];
    table[b'\\' as usize] = BACKSLASH;
    table[b',' as usize] = END_MEASUREMENT | END_KEY | END_VALUE;
    table[b' ' as usize] = END_MEASUREMENT | END_KEY | END_VALUE;
    table[b'\n' as usize] = END_MEASUREMENT | END_KEY | END_VALUE | END_LINE;
    table[b'=' as usize] = END_KEY;
    table[b'\t' as usize] = END_VALUE;
    table[b'\r' as usize] = END_VALUE;
    table
};

impl<'a> Parser<'a> {
    fn peek(&self) -> Option<u8> {
        self.buf.get(self.pos).copied()
    }

    fn bytes(&self, span: Span) -> &'a [u8] {
        let buf = self.buf;
        buf.get(span.start..span.end).unwrap_or_default()
    }

    fn snippet(&self, span: Span) -> Snippet {
        Snippet::new(self.bytes(span))
    }

    fn at_line_end(&self) -> bool {
        matches!(self.peek(), None | Some(b'\n'))
    }

    /// Skips spaces, tabs and carriage returns.
    fn skip_whitespace(&mut self) {
        while let Some(b' ' | b'\t' | b'\r') = self.peek() {
            self.pos += 1;
        }
    }

    /// The line holding the first invalid byte, for an entry that starts at `start` on
    /// `line`.
    fn invalid_utf8(&self, line: usize, start: usize) -> LineProtocolError {
        let before = self.buf.get(start..self.valid_up_to).unwrap_or_default();
        LineProtocolError::InvalidUtf8 {
            line: line + before.iter().filter(|&&b| b == b'\n').count(),
        }
    }

    fn run(&mut self, out: &mut ReadingBatch) -> Res<()> {
        loop {
            self.skip_whitespace();
            match self.peek() {
                None => return Ok(()),
                Some(b'\n') => {
                    self.pos += 1;
                    self.line += 1;
                }
                Some(b'#') => self.skip_comment()?,
                Some(_) => self.record(out)?,
            }
        }
    }

    fn skip_comment(&mut self) -> Res<()> {
        let start = self.pos;
        let end = self.buf[start..]
            .iter()
            .position(|&b| b == b'\n')
            .map_or(self.buf.len(), |i| start + i);
        if end > self.valid_up_to {
            return Err(self.invalid_utf8(self.line, start));
        }
        self.pos = end;
        Ok(())
    }

    /// Scans up to the first unescaped byte of class `ends`. A backslash protects the
    /// next byte, except a line feed.
    #[inline(always)]
    fn scan_escaped(&mut self, ends: u8) -> Span {
        let buf = self.buf;
        let start = self.pos;
        let mut pos = start;
        let mut escaped = false;
        while pos < buf.len() {
            let class = CLASSES[usize::from(buf[pos])];
            if class & (ends | BACKSLASH) == 0 {
                pos += 1;
            } else if class & BACKSLASH != 0 {
                escaped = true;
                pos += if buf.get(pos + 1).is_some_and(|&n| n != b'\n') {
                    2
                } else {
                    1
                };
            } else {
                break;
            }
        }
        self.pos = pos;
        Span {
            start,
            end: pos,
            escaped,
        }
    }

    /// The shortcut for a word the decoder looks for (the measurement, a tag or field
    /// key): when the body at `pos` holds `word` followed by a byte of class `ends`, the
    /// span [`scan_escaped`](Self::scan_escaped)`(ends)` would return, without the scan.
    /// `word` must hold no byte of class `ends` and no backslash. (An array, so that the
    /// comparison is a few loads, not a call to `memcmp`.)
    #[inline(always)]
    fn known<const N: usize>(&mut self, word: &[u8; N], ends: u8) -> Option<Span> {
        let end = self.pos + N;
        let next = *self.buf.get(end)?;
        if !self.shortcuts || CLASSES[usize::from(next)] & ends == 0 {
            return None;
        }
        let here: &[u8; N] = self.buf.get(self.pos..end)?.try_into().ok()?;
        if here != word {
            return None;
        }
        let span = Span {
            start: self.pos,
            end,
            escaped: false,
        };
        self.pos = end;
        Some(span)
    }

    /// A tag key and which tag it is: the shortcut for the tags WattDB stores, else
    /// the general scan.
    #[inline(always)]
    fn tag_key(&mut self) -> (Span, Tag) {
        let known = match self.peek() {
            Some(b'd') => self
                .known(b"device_id", END_KEY)
                .map(|span| (span, Tag::DeviceId))
                .or_else(|| {
                    self.known(b"device_type", END_KEY)
                        .map(|span| (span, Tag::DeviceType))
                }),
            Some(b'l') => self
                .known(b"location", END_KEY)
                .map(|span| (span, Tag::Location)),
            _ => None,
        };
        known.unwrap_or_else(|| {
            let span = self.scan_escaped(END_KEY);
            (span, Tag::of(self.bytes(span)))
        })
    }

    /// A field key and which field it is: the shortcut for the fields WattDB stores,
    /// else the general scan.
    #[inline(always)]
    fn field_key(&mut self) -> (Span, Field) {
        let known = match self.peek() {
            Some(b'v') => self.known(b"voltage", END_KEY).map(|s| (s, Field::Voltage)),
            Some(b'c') => self.known(b"current", END_KEY).map(|s| (s, Field::Current)),
            Some(b'p') => self.known(b"power", END_KEY).map(|s| (s, Field::Power)),
            Some(b'e') => self.known(b"energy", END_KEY).map(|s| (s, Field::Energy)),
            Some(b'r') => self
                .known(b"relay_state", END_KEY)
                .map(|s| (s, Field::RelayState)),
            _ => None,
        };
        known.unwrap_or_else(|| {
            let span = self.scan_escaped(END_KEY);
            (span, Field::of(self.bytes(span)))
        })
    }

    /// Scans an unquoted field value or a timestamp (no escapes there).
    #[inline(always)]
    fn scan_plain(&mut self) -> Span {
        let buf = self.buf;
        let start = self.pos;
        let mut pos = start;
        while pos < buf.len() && CLASSES[usize::from(buf[pos])] & END_VALUE == 0 {
            pos += 1;
        }
        self.pos = pos;
        Span {
            start,
            end: pos,
            escaped: false,
        }
    }

    /// The shortcut for a plain decimal field value at `pos`: its value and length,
    /// when it ends where [`scan_plain`](Self::scan_plain) would stop.
    #[inline(always)]
    fn plain_decimal(&self) -> Option<(f64, usize)> {
        if !self.shortcuts {
            return None;
        }
        let rest = self.buf.get(self.pos..)?;
        let (value, len) = decimal_prefix(rest)?;
        match rest.get(len) {
            Some(&b) if CLASSES[usize::from(b)] & END_VALUE == 0 => None,
            _ => Some((value, len)),
        }
    }

    /// The shortcut for a timestamp at `pos` that is all digits up to the line's end:
    /// its value and length, when [`timestamp`](Self::timestamp) would accept it.
    #[inline(always)]
    fn plain_timestamp(&self) -> Option<(i64, usize)> {
        if !self.shortcuts {
            return None;
        }
        let rest = self.buf.get(self.pos..)?;
        let mut units: u64 = 0;
        let mut len = 0;
        // Eight digits at a time, at most twice: 16 digits stay below 10^16.
        while len < 16 {
            match rest.get(len..len + 8).and_then(eight_digits) {
                Some(eight) => {
                    units = units * 100_000_000 + eight;
                    len += 8;
                }
                None => break,
            }
        }
        // Then one at a time, up to 19 digits: below 10^19, which fits a `u64`.
        while len < 19 {
            match rest.get(len) {
                Some(&b) if b.is_ascii_digit() => {
                    units = units * 10 + u64::from(b - b'0');
                    len += 1;
                }
                _ => break,
            }
        }
        if len == 0 || !matches!(rest.get(len), None | Some(b'\n')) {
            return None;
        }
        let ts = i64::try_from(units)
            .ok()?
            .checked_mul(self.precision.nanos_per_unit())?;
        Some((ts, len))
    }

    /// Scans a quoted string field value; `pos` is on the opening quote. Returns false
    /// when the string does not end.
    fn scan_string(&mut self) -> bool {
        self.pos += 1;
        loop {
            match self.buf.get(self.pos) {
                None => return false,
                Some(b'"') => {
                    self.pos += 1;
                    return true;
                }
                Some(b'\\') => {
                    if self.buf.get(self.pos + 1) == Some(&b'\n') {
                        self.line += 1;
                    }
                    self.pos += 2;
                }
                Some(b'\n') => {
                    self.line += 1;
                    self.pos += 1;
                }
                Some(_) => self.pos += 1,
            }
        }
    }

    /// Decodes one line (or several, when a string field spans lines) and pushes it.
    fn record(&mut self, out: &mut ReadingBatch) -> Res<()> {
        let line = self.line;
        let record_start = self.pos;

        let measurement = self
            .known(b"power_metrics", END_MEASUREMENT)
            .unwrap_or_else(|| self.scan_escaped(END_MEASUREMENT));
        if measurement.is_empty() {
            return Err(LineProtocolError::MissingMeasurement { line });
        }
        if self.bytes(measurement) != MEASUREMENT.as_bytes() {
            return Err(LineProtocolError::UnknownMeasurement {
                line,
                found: self.snippet(measurement),
            });
        }

        let mut device_id = None;
        let mut location = None;
        let mut device_type = None;
        while self.peek() == Some(b',') {
            self.pos += 1;
            let (key, tag) = self.tag_key();
            if key.is_empty() {
                return Err(LineProtocolError::EmptyTagKey { line });
            }
            if self.peek() != Some(b'=') {
                return Err(LineProtocolError::MissingTagValue {
                    line,
                    tag: self.snippet(key),
                });
            }
            self.pos += 1;
            let value = self.scan_escaped(END_KEY);
            if self.peek() == Some(b'=') {
                let rest = self.scan_escaped(END_MEASUREMENT);
                return Err(LineProtocolError::UnescapedEquals {
                    line,
                    tag: self.snippet(key),
                    found: self.snippet(Span {
                        start: value.start,
                        ..rest
                    }),
                });
            }
            if value.is_empty() {
                return Err(LineProtocolError::MissingTagValue {
                    line,
                    tag: self.snippet(key),
                });
            }
            match tag {
                Tag::DeviceId => device_id = Some(value),
                Tag::Location => location = Some(value),
                Tag::DeviceType => device_type = Some(value),
                Tag::Other => {}
            }
        }
        if self.peek() != Some(b' ') {
            return Err(LineProtocolError::MissingFields { line });
        }
        while let Some(b' ' | b'\t') = self.peek() {
            self.pos += 1;
        }
        if matches!(self.peek(), None | Some(b'\n' | b'\r')) {
            return Err(LineProtocolError::MissingFields { line });
        }

        let fields = self.fields(line)?;

        self.skip_whitespace();
        let ts = if self.at_line_end() {
            self.now_ns
        } else if let Some((ts, len)) = self.plain_timestamp() {
            self.pos += len;
            ts
        } else {
            let raw = self.scan_plain();
            self.skip_whitespace();
            if !self.at_line_end() {
                let rest = self.scan_escaped(END_LINE);
                return Err(LineProtocolError::TrailingText {
                    line,
                    found: self.snippet(rest),
                });
            }
            self.timestamp(line, raw)?
        };
        if self.pos > self.valid_up_to {
            return Err(self.invalid_utf8(line, record_start));
        }
        if self.peek() == Some(b'\n') {
            self.pos += 1;
            self.line += 1;
        }

        let Some(device_id) = device_id else {
            return Err(LineProtocolError::MissingTag {
                line,
                tag: "device_id",
            });
        };
        let (Some(voltage), Some(current), Some(power)) =
            (fields.voltage, fields.current, fields.power)
        else {
            let field = match (fields.voltage, fields.current) {
                (None, _) => "voltage",
                (_, None) => "current",
                _ => "power",
            };
            return Err(LineProtocolError::MissingField { line, field });
        };

        self.scratch.clear();
        let device_id = self.place(line, device_id)?;
        let location = match location {
            Some(span) => Some(self.place(line, span)?),
            None => None,
        };
        let device_type = match device_type {
            Some(span) => Some(self.place(line, span)?),
            None => None,
        };
        let scratch = self.scratch.as_str();
        let resolve = |p| resolve(p, scratch);
        let device_id = resolve(device_id);
        if let Err(reason) = validate_device_id(device_id) {
            return Err(LineProtocolError::InvalidDeviceId {
                line,
                found: device_id.into(),
                reason,
            });
        }
        out.push(ReadingRef {
            device_id,
            ts,
            voltage,
            current,
            power,
            energy: fields.energy,
            relay_on: fields.relay_on,
            location: location.map(resolve),
            device_type: device_type.map(resolve),
        });
        Ok(())
    }

    /// The text of a tag value: borrowed from the body, or unescaped into `scratch`.
    fn place(&mut self, line: usize, span: Span) -> Res<Placed<'a>> {
        let text = self
            .text
            .get(span.start..span.end)
            .ok_or_else(|| self.invalid_utf8(line, span.start))?;
        if !span.escaped {
            return Ok(Placed::Body(text));
        }
        let start = self.scratch.len();
        let mut rest = text;
        while let Some(i) = rest.find('\\') {
            self.scratch.push_str(&rest[..i]);
            let after = &rest[i + 1..];
            match after.as_bytes().first() {
                Some(b',' | b'=' | b' ') => {
                    self.scratch.push_str(&after[..1]);
                    rest = &after[1..];
                }
                _ => {
                    self.scratch.push('\\');
                    rest = after;
                }
            }
        }
        self.scratch.push_str(rest);
        Ok(Placed::Scratch(start..self.scratch.len()))
    }

    /// Decodes the field set; `pos` is on the first field key. Stops after the last
    /// value.
    fn fields(&mut self, line: usize) -> Res<Fields> {
        let mut fields = Fields::default();
        loop {
            let (key, field) = self.field_key();
            if key.is_empty() {
                return Err(LineProtocolError::EmptyFieldKey { line });
            }
            if self.peek() != Some(b'=') {
                return Err(LineProtocolError::MissingFieldValue {
                    line,
                    field: self.snippet(key),
                });
            }
            self.pos += 1;
            // The common case, a plain decimal, is scanned and parsed in one pass:
            // its span is the one `scan_plain` gives, its value the one `number` would.
            let mut quick = None;
            let value = if let Some((decimal, len)) = self.plain_decimal() {
                quick = Some(decimal);
                let start = self.pos;
                self.pos += len;
                Span {
                    start,
                    end: self.pos,
                    escaped: false,
                }
            } else if self.peek() == Some(b'"') {
                let start = self.pos;
                if !self.scan_string() {
                    return Err(LineProtocolError::UnterminatedString {
                        line,
                        field: self.snippet(key),
                    });
                }
                if !matches!(
                    self.peek(),
                    None | Some(b',' | b' ' | b'\t' | b'\r' | b'\n')
                ) {
                    let rest = self.scan_plain();
                    return Err(LineProtocolError::InvalidFieldValue {
                        line,
                        field: self.snippet(key),
                        expected: Expected::FieldValue,
                        found: self.snippet(Span { start, ..rest }),
                    });
                }
                Span {
                    start,
                    end: self.pos,
                    escaped: true,
                }
            } else {
                let value = self.scan_plain();
                if value.is_empty() {
                    return Err(LineProtocolError::MissingFieldValue {
                        line,
                        field: self.snippet(key),
                    });
                }
                value
            };

            let raw = self.bytes(value);
            let text = self.text.get(value.start..value.end);
            let invalid = |expected| LineProtocolError::InvalidFieldValue {
                line,
                field: self.snippet(key),
                expected,
                found: Snippet::new(raw),
            };
            let decimal = || quick.map_or_else(|| number(raw, text), Ok);
            match field {
                Field::Voltage => fields.voltage = Some(decimal().map_err(invalid)?),
                Field::Current => fields.current = Some(decimal().map_err(invalid)?),
                Field::Power => fields.power = Some(decimal().map_err(invalid)?),
                Field::Energy => fields.energy = Some(decimal().map_err(invalid)?),
                Field::RelayState => fields.relay_on = Some(boolean(raw, text).map_err(invalid)?),
                Field::Other => {
                    if raw.first() != Some(&b'"') && boolean_literal(raw).is_none() {
                        number(raw, text).map_err(|_| invalid(Expected::FieldValue))?;
                    }
                }
            }

            if self.peek() == Some(b',') {
                self.pos += 1;
            } else {
                return Ok(fields);
            }
        }
    }

    fn timestamp(&self, line: usize, raw: Span) -> Res<i64> {
        let bytes = self.bytes(raw);
        let (negative, digits) = match bytes.split_first() {
            Some((b'-', rest)) => (true, rest),
            _ => (false, bytes),
        };
        if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
            return Err(LineProtocolError::InvalidTimestamp {
                line,
                found: self.snippet(raw),
            });
        }
        if negative {
            return Err(LineProtocolError::NegativeTimestamp {
                line,
                found: self.snippet(raw),
            });
        }
        digits
            .iter()
            .try_fold(0i64, |n, &d| {
                n.checked_mul(10)?.checked_add(i64::from(d - b'0'))
            })
            .and_then(|units| units.checked_mul(self.precision.nanos_per_unit()))
            .ok_or_else(|| self.out_of_range(line, raw))
    }

    fn out_of_range(&self, line: usize, raw: Span) -> LineProtocolError {
        LineProtocolError::TimestampOutOfRange {
            line,
            found: self.snippet(raw),
            precision: self.precision,
        }
    }
}

fn resolve<'s>(placed: Placed<'s>, scratch: &'s str) -> &'s str {
    match placed {
        Placed::Body(s) => s,
        Placed::Scratch(r) => scratch.get(r).unwrap_or_default(),
    }
}

/// 10^0 ..= 10^15, all exact in an `f64`.
const POWERS_OF_TEN: [f64; 16] = [
    1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15,
];

/// Parses plain decimals of at most 15 digits (`-230.15`, `42`) exactly: the digits form
/// an integer below 2^53 and the power of ten is exact, so one correctly rounded
/// division gives the correctly rounded value (Clinger's fast path). Anything else
/// (exponents, long mantissas, `inf`) is left to the standard library.
fn fast_decimal(raw: &[u8]) -> Option<f64> {
    match decimal_prefix(raw) {
        Some((value, len)) if len == raw.len() => Some(value),
        _ => None,
    }
}

/// The plain decimal that `buf` starts with, as [`fast_decimal`] reads it, and its
/// length: `-`, then digits with at most one `.`, up to the first other byte. `None`
/// when it has no digit, more than 15 digits or more than 16 bytes after the sign.
#[inline(always)]
fn decimal_prefix(buf: &[u8]) -> Option<(f64, usize)> {
    let negative = buf.first() == Some(&b'-');
    let start = usize::from(negative);
    let mut mantissa: u64 = 0;
    let mut fraction_digits = 0;
    let mut seen_point = false;
    let mut end = start;
    while let Some(&b) = buf.get(end) {
        let digit = b.wrapping_sub(b'0');
        if digit <= 9 {
            mantissa = mantissa.wrapping_mul(10).wrapping_add(u64::from(digit));
            fraction_digits += usize::from(seen_point);
        } else if b == b'.' && !seen_point {
            seen_point = true;
        } else {
            break;
        }
        end += 1;
        if end - start > 16 {
            return None;
        }
    }
    let digit_count = end - start - usize::from(seen_point);
    if digit_count == 0 || digit_count > 15 {
        return None;
    }
    // Below 2^63 (at most 16 digits): the signed conversion is one instruction.
    let value = mantissa as i64 as f64 / POWERS_OF_TEN[fraction_digits];
    Some((if negative { -value } else { value }, end))
}

/// The value of eight ASCII digits, or `None` when a byte is not one: a few
/// multiplications on the eight bytes as one word, not eight dependent steps.
fn eight_digits(chunk: &[u8]) -> Option<u64> {
    let word = u64::from_le_bytes(chunk.try_into().ok()?);
    // Each byte 0x30..=0x39: its high nibble is 3, and adding 6 leaves it 3.
    let high = word & 0xf0f0_f0f0_f0f0_f0f0;
    let carried = word.wrapping_add(0x0606_0606_0606_0606) & 0xf0f0_f0f0_f0f0_f0f0;
    if high | (carried >> 4) != 0x3333_3333_3333_3333 {
        return None;
    }
    // Pairs, then quadruples, then all eight (the first digit is the lowest byte).
    let digits = word & 0x0f0f_0f0f_0f0f_0f0f;
    let pairs = (digits.wrapping_mul(10 << 8 | 1) >> 8) & 0x00ff_00ff_00ff_00ff;
    let quads = (pairs.wrapping_mul(100 << 16 | 1) >> 16) & 0x0000_ffff_0000_ffff;
    Some(quads.wrapping_mul(10_000 << 32 | 1) >> 32)
}

/// A numeric field value: `1.5`, `-2e3`, `42i`, `42u`. NaN and infinities are refused.
/// `text` is `raw` as a string, when it is valid UTF-8.
fn number(raw: &[u8], text: Option<&str>) -> Result<f64, Expected> {
    if let Some(value) = fast_decimal(raw) {
        return Ok(value);
    }
    let text = text.ok_or(Expected::Number)?;
    let value = if let Some(int) = text.strip_suffix('i') {
        int.parse::<i64>().map_err(|_| Expected::Integer)? as f64
    } else if let Some(uint) = text.strip_suffix('u') {
        uint.parse::<u64>().map_err(|_| Expected::Unsigned)? as f64
    } else {
        text.parse::<f64>().map_err(|_| Expected::Number)?
    };
    if value.is_finite() {
        Ok(value)
    } else {
        Err(Expected::FiniteNumber)
    }
}

fn boolean_literal(raw: &[u8]) -> Option<bool> {
    match raw {
        b"t" | b"T" | b"true" | b"True" | b"TRUE" => Some(true),
        b"f" | b"F" | b"false" | b"False" | b"FALSE" => Some(false),
        _ => None,
    }
}

/// A relay state: a boolean literal, or 0 or 1 in any numeric form.
fn boolean(raw: &[u8], text: Option<&str>) -> Result<bool, Expected> {
    if let Some(b) = boolean_literal(raw) {
        return Ok(b);
    }
    match number(raw, text) {
        Ok(0.0) => Ok(false),
        Ok(1.0) => Ok(true),
        _ => Err(Expected::Boolean),
    }
}

#[cfg(test)]
mod tests;
