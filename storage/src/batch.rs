//! [`ReadingBatch`]: readings column by column, the unit that flows from the decoders
//! through the WAL into the engine's buffer.
//!
//! A batch owns a handful of growable vectors and two string arenas; pushing a reading
//! copies its fields into them, so decoding a request allocates per batch, not per
//! reading.

/// Longest accepted plug identity, in bytes.
pub const MAX_DEVICE_ID_LEN: usize = 128;

/// Why a plug identity was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DeviceIdError {
    #[error("device_id is empty")]
    Empty,
    #[error("device_id is longer than {MAX_DEVICE_ID_LEN} bytes")]
    TooLong,
    #[error("device_id contains {0:?}; allowed are A-Z a-z 0-9 _ . : -")]
    BadChar(char),
}

/// Checks a plug identity against `[A-Za-z0-9_.:-]{1,128}`.
pub fn validate_device_id(id: &str) -> Result<(), DeviceIdError> {
    if id.is_empty() {
        return Err(DeviceIdError::Empty);
    }
    if id.len() > MAX_DEVICE_ID_LEN {
        return Err(DeviceIdError::TooLong);
    }
    let allowed = |b: &u8| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'-');
    match id.bytes().position(|b| !allowed(&b)) {
        // A byte that is not allowed starts the character to name: every allowed
        // character is one byte.
        Some(i) => Err(DeviceIdError::BadChar(
            id[i..]
                .chars()
                .next()
                .unwrap_or(char::REPLACEMENT_CHARACTER),
        )),
        None => Ok(()),
    }
}

/// A column of strings in one arena: `ends[i]` is where string `i` stops in `data`.
/// The empty string stands for null in the nullable tag columns.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StrColumn {
    data: String,
    ends: Vec<u32>,
}

impl StrColumn {
    pub fn with_capacity(rows: usize, bytes: usize) -> Self {
        Self {
            data: String::with_capacity(bytes),
            ends: Vec::with_capacity(rows),
        }
    }

    pub fn push(&mut self, s: &str) {
        self.data.push_str(s);
        self.ends.push(self.data.len() as u32);
    }

    pub fn len(&self) -> usize {
        self.ends.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// The `i`-th string. Panics when `i >= len()`, like slice indexing.
    pub fn get(&self, i: usize) -> &str {
        let start = if i == 0 { 0 } else { self.ends[i - 1] as usize };
        &self.data[start..self.ends[i] as usize]
    }

    pub fn iter(&self) -> impl ExactSizeIterator<Item = &str> + '_ {
        (0..self.len()).map(move |i| self.get(i))
    }

    /// All strings back to back.
    pub fn data(&self) -> &str {
        &self.data
    }

    /// End offset of each string in [`data`](Self::data).
    pub fn ends(&self) -> &[u32] {
        &self.ends
    }

    pub fn clear(&mut self) {
        self.data.clear();
        self.ends.clear();
    }

    pub fn truncate(&mut self, rows: usize) {
        if rows < self.ends.len() {
            let keep = if rows == 0 {
                0
            } else {
                self.ends[rows - 1] as usize
            };
            self.data.truncate(keep);
            self.ends.truncate(rows);
        }
    }

    /// True when every string is empty (a tag column nobody set).
    pub fn all_empty(&self) -> bool {
        self.data.is_empty()
    }

    pub(crate) fn from_parts(data: String, ends: Vec<u32>) -> Self {
        Self { data, ends }
    }
}

/// One reading, borrowed: what a decoder hands to [`ReadingBatch::push`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ReadingRef<'a> {
    pub device_id: &'a str,
    /// Nanoseconds since the Unix epoch, UTC.
    pub ts: i64,
    pub voltage: f64,
    pub current: f64,
    pub power: f64,
    pub energy: Option<f64>,
    pub relay_on: Option<bool>,
    pub location: Option<&'a str>,
    pub device_type: Option<&'a str>,
}

/// Readings in columns. All columns have the same length.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ReadingBatch {
    pub device_id: StrColumn,
    /// Nanoseconds since the Unix epoch, UTC.
    pub ts: Vec<i64>,
    pub voltage: Vec<f64>,
    pub current: Vec<f64>,
    pub power: Vec<f64>,
    pub energy: Vec<Option<f64>>,
    pub relay_on: Vec<Option<bool>>,
    /// Empty string = no location tag.
    pub location: StrColumn,
    /// Empty string = no device_type tag.
    pub device_type: StrColumn,
}

impl ReadingBatch {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn with_capacity(rows: usize) -> Self {
        Self {
            device_id: StrColumn::with_capacity(rows, rows * 16),
            ts: Vec::with_capacity(rows),
            voltage: Vec::with_capacity(rows),
            current: Vec::with_capacity(rows),
            power: Vec::with_capacity(rows),
            energy: Vec::with_capacity(rows),
            relay_on: Vec::with_capacity(rows),
            location: StrColumn::with_capacity(rows, 0),
            device_type: StrColumn::with_capacity(rows, 0),
        }
    }

    /// Makes room for `rows` more readings (the tag arenas grow as they fill).
    pub fn reserve(&mut self, rows: usize) {
        self.device_id.ends.reserve(rows);
        self.ts.reserve(rows);
        self.voltage.reserve(rows);
        self.current.reserve(rows);
        self.power.reserve(rows);
        self.energy.reserve(rows);
        self.relay_on.reserve(rows);
        self.location.ends.reserve(rows);
        self.device_type.ends.reserve(rows);
    }

    pub fn push(&mut self, r: ReadingRef<'_>) {
        self.device_id.push(r.device_id);
        self.ts.push(r.ts);
        self.voltage.push(r.voltage);
        self.current.push(r.current);
        self.power.push(r.power);
        self.energy.push(r.energy);
        self.relay_on.push(r.relay_on);
        self.location.push(r.location.unwrap_or(""));
        self.device_type.push(r.device_type.unwrap_or(""));
    }

    /// The `i`-th reading. Panics when `i >= len()`.
    pub fn get(&self, i: usize) -> ReadingRef<'_> {
        fn tag(c: &StrColumn, i: usize) -> Option<&str> {
            Some(c.get(i)).filter(|s| !s.is_empty())
        }
        ReadingRef {
            device_id: self.device_id.get(i),
            ts: self.ts[i],
            voltage: self.voltage[i],
            current: self.current[i],
            power: self.power[i],
            energy: self.energy[i],
            relay_on: self.relay_on[i],
            location: tag(&self.location, i),
            device_type: tag(&self.device_type, i),
        }
    }

    pub fn len(&self) -> usize {
        self.ts.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ts.is_empty()
    }

    pub fn clear(&mut self) {
        self.truncate(0);
    }

    /// Drops the readings from `rows` on (used to undo a partly decoded request).
    pub fn truncate(&mut self, rows: usize) {
        self.device_id.truncate(rows);
        self.ts.truncate(rows);
        self.voltage.truncate(rows);
        self.current.truncate(rows);
        self.power.truncate(rows);
        self.energy.truncate(rows);
        self.relay_on.truncate(rows);
        self.location.truncate(rows);
        self.device_type.truncate(rows);
    }

    /// Appends all readings of `other`.
    pub fn extend_from(&mut self, other: &ReadingBatch) {
        for i in 0..other.len() {
            self.push(other.get(i));
        }
    }

    /// Approximate heap bytes held, for memory accounting.
    pub fn heap_size(&self) -> usize {
        self.device_id.data.len()
            + self.location.data.len()
            + self.device_type.data.len()
            + self.len() * (3 * 4 + 8 * 4 + 16 + 2)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reading(id: &str, ts: i64) -> ReadingRef<'_> {
        ReadingRef {
            device_id: id,
            ts,
            voltage: 230.1,
            current: 0.5,
            power: 115.0,
            energy: None,
            relay_on: Some(true),
            location: Some("kitchen"),
            device_type: None,
        }
    }

    #[test]
    fn push_get_truncate_round_trip() {
        let mut b = ReadingBatch::new();
        b.push(reading("a", 1));
        b.push(reading("plug-2", 2));
        assert_eq!(b.len(), 2);
        assert_eq!(b.get(1), reading("plug-2", 2));
        b.truncate(1);
        assert_eq!(b.len(), 1);
        assert_eq!(b.device_id.data(), "a");
        b.push(reading("c", 3));
        assert_eq!(b.get(1).device_id, "c");
    }

    #[test]
    fn device_id_rules() {
        assert!(validate_device_id("plug-1.kitchen:a_b").is_ok());
        assert_eq!(validate_device_id(""), Err(DeviceIdError::Empty));
        assert_eq!(validate_device_id("a b"), Err(DeviceIdError::BadChar(' ')));
        assert_eq!(
            validate_device_id(&"x".repeat(129)),
            Err(DeviceIdError::TooLong)
        );
        assert!(validate_device_id(&"x".repeat(128)).is_ok());
    }
}
