//! Pieces shared by the decoders' error messages.
//!
//! Error messages go back to HTTP clients as they are, so everything quoted from the
//! input passes through [`Snippet`]: escaped like a Rust string literal and cut short.

use std::fmt;

/// Longest quoted excerpt of the input in an error message, in characters (after
/// escaping).
pub const SNIPPET_CHARS: usize = 64;

/// A short, escaped excerpt of the input, quoted when displayed: `"abc"`, or `"abc…"`
/// when it was cut. Control characters, quotes and invalid UTF-8 are escaped, so a
/// message never carries raw bytes of a hostile request.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Snippet {
    escaped: String,
    truncated: bool,
}

impl Snippet {
    /// Quotes `bytes`, replacing invalid UTF-8 with U+FFFD.
    pub fn new(bytes: &[u8]) -> Self {
        // A char takes at most 4 bytes: look no further than needed.
        let head = &bytes[..bytes.len().min(SNIPPET_CHARS * 4 + 4)];
        let text = String::from_utf8_lossy(head);
        let mut escaped = String::with_capacity(SNIPPET_CHARS + 8);
        let mut count = 0;
        let mut truncated = head.len() < bytes.len();
        'chars: for c in text.chars() {
            for e in c.escape_debug() {
                if count == SNIPPET_CHARS {
                    truncated = true;
                    break 'chars;
                }
                escaped.push(e);
                count += 1;
            }
        }
        Self { escaped, truncated }
    }

    /// The escaped text, without quotes or ellipsis.
    pub fn as_str(&self) -> &str {
        &self.escaped
    }

    /// True when the input was longer than what is shown.
    pub fn is_truncated(&self) -> bool {
        self.truncated
    }
}

impl From<&str> for Snippet {
    fn from(s: &str) -> Self {
        Self::new(s.as_bytes())
    }
}

impl fmt::Display for Snippet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ellipsis = if self.truncated { "…" } else { "" };
        write!(f, "\"{}{ellipsis}\"", self.escaped)
    }
}

/// What a decoder wanted to see where the input went wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Expected {
    /// Any number.
    Number,
    /// A number that is neither NaN nor infinite.
    FiniteNumber,
    /// Line protocol `42i`.
    Integer,
    /// Line protocol `42u`.
    Unsigned,
    /// A relay state.
    Boolean,
    /// Any line-protocol field value (for fields WattDB does not store).
    FieldValue,
    /// A JSON string.
    String,
    /// A JSON timestamp.
    Timestamp,
    /// An MQTT timestamp: a number whose unit follows from its magnitude, or a string.
    TimestampByMagnitude,
    /// A JSON object.
    Object,
    /// One reading object or an array of them.
    ReadingOrArray,
    /// A reading object, as an element of an array.
    ReadingObject,
    /// A relay state in an MQTT payload, where strings are allowed too.
    RelayState,
    /// A Tasmota value: a number, or one number per channel.
    NumberOrChannels,
}

impl fmt::Display for Expected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Number => "a number",
            Self::FiniteNumber => "a finite number",
            Self::Integer => "a 64-bit signed integer like 42i",
            Self::Unsigned => "a 64-bit unsigned integer like 42u",
            Self::Boolean => "a boolean (true, false, 1 or 0)",
            Self::FieldValue => "a field value (number, 42i, 42u, boolean or quoted string)",
            Self::String => "a string",
            Self::Timestamp => "an integer, a number of seconds or an RFC 3339 string",
            Self::TimestampByMagnitude => {
                "a number (seconds, ms, µs or ns, by magnitude) or an RFC 3339 string"
            }
            Self::Object => "an object",
            Self::ReadingOrArray => "a reading object or an array of reading objects",
            Self::ReadingObject => "a reading object",
            Self::RelayState => "a relay state (true, false, \"on\", \"off\", 1 or 0)",
            Self::NumberOrChannels => "a number or an array of numbers (one per channel)",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snippet_quotes_escapes_and_truncates() {
        assert_eq!(Snippet::new(b"abc").to_string(), r#""abc""#);
        assert_eq!(Snippet::new(b"a\"b\n").to_string(), r#""a\"b\n""#);
        assert_eq!(Snippet::new(b"\xff").to_string(), "\"\u{fffd}\"");
        let long = Snippet::new(&[b'x'; 1000]);
        assert!(long.is_truncated());
        assert_eq!(long.as_str().len(), SNIPPET_CHARS);
        assert!(long.to_string().ends_with("x…\""));
        let exact = Snippet::new(&[b'y'; SNIPPET_CHARS]);
        assert!(!exact.is_truncated());
    }

    #[test]
    fn snippet_counts_escapes_against_the_limit() {
        let s = Snippet::new(&[0u8; 100]);
        assert!(s.is_truncated());
        assert!(s.as_str().chars().count() <= SNIPPET_CHARS);
    }
}
