//! Payload encoding v1 of a WAL record: one [`ReadingBatch`], column by column.
//!
//! ```text
//! u32 LE      row count n
//! strings     device_id   (see below)
//! varint      ts[0] zigzag, then n-1 zigzag deltas ts[i] - ts[i-1]
//! n × f64 LE  voltage, then current, then power
//! bitmap      energy present (ceil(n/8) bytes, bit i of byte i/8), then f64 LE per present value
//! bitmap      relay_on present, then bitmap relay_on value
//! strings     location (empty = null), then device_type
//!
//! strings:    u32 LE total bytes, n varint lengths, the UTF-8 bytes back to back
//! ```
//! Decoding checks every length against the bytes at hand, so any input gives a batch
//! or a [`CodecError`], never a panic or an allocation larger than the input allows.

use crate::batch::{ReadingBatch, StrColumn};

/// Why a payload could not be decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    #[error("payload ends early while reading {0}")]
    Truncated(&'static str),
    #[error("row count {rows} does not fit a payload of {len} bytes")]
    RowCount { rows: u64, len: usize },
    #[error("column {0} is not valid UTF-8 or its lengths do not add up")]
    Strings(&'static str),
    #[error("varint too long in {0}")]
    Varint(&'static str),
    #[error("{0} trailing bytes after the last column")]
    Trailing(usize),
}

pub fn encode(batch: &ReadingBatch, out: &mut Vec<u8>) {
    let n = batch.len();
    out.reserve(n * 40 + batch.device_id.data().len() + 16);
    out.extend_from_slice(&(n as u32).to_le_bytes());
    put_strings(&batch.device_id, out);
    let mut prev = 0i64;
    for &ts in &batch.ts {
        put_varint(zigzag(ts.wrapping_sub(prev)), out);
        prev = ts;
    }
    for col in [&batch.voltage, &batch.current, &batch.power] {
        for v in col {
            out.extend_from_slice(&v.to_le_bytes());
        }
    }
    put_bitmap(batch.energy.iter().map(Option::is_some), n, out);
    for v in batch.energy.iter().flatten() {
        out.extend_from_slice(&v.to_le_bytes());
    }
    put_bitmap(batch.relay_on.iter().map(Option::is_some), n, out);
    put_bitmap(batch.relay_on.iter().map(|r| *r == Some(true)), n, out);
    put_strings(&batch.location, out);
    put_strings(&batch.device_type, out);
}

pub fn decode(payload: &[u8]) -> Result<ReadingBatch, CodecError> {
    let mut r = Reader {
        buf: payload,
        pos: 0,
    };
    let rows = u32::from_le_bytes(r.array("row count")?) as u64;
    // Every row carries at least three f64 values.
    if rows.saturating_mul(24) > payload.len() as u64 {
        return Err(CodecError::RowCount {
            rows,
            len: payload.len(),
        });
    }
    let n = rows as usize;
    let device_id = r.strings(n, "device_id")?;
    let mut ts = Vec::with_capacity(n);
    let mut prev = 0i64;
    for _ in 0..n {
        prev = prev.wrapping_add(unzigzag(r.varint("ts")?));
        ts.push(prev);
    }
    let mut floats = |name| -> Result<Vec<f64>, CodecError> {
        let bytes = r.take(n * 8, name)?;
        Ok(bytes
            .chunks_exact(8)
            .map(|c| f64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
            .collect())
    };
    let voltage = floats("voltage")?;
    let current = floats("current")?;
    let power = floats("power")?;
    let present = r.take(n.div_ceil(8), "energy bitmap")?;
    let mut energy = Vec::with_capacity(n);
    for i in 0..n {
        energy.push(if bit(present, i) {
            Some(f64::from_le_bytes(r.array("energy")?))
        } else {
            None
        });
    }
    let present = r.take(n.div_ceil(8), "relay bitmap")?;
    let value = r.take(n.div_ceil(8), "relay values")?;
    let relay_on = (0..n)
        .map(|i| bit(present, i).then(|| bit(value, i)))
        .collect();
    let location = r.strings(n, "location")?;
    let device_type = r.strings(n, "device_type")?;
    if r.pos != payload.len() {
        return Err(CodecError::Trailing(payload.len() - r.pos));
    }
    Ok(ReadingBatch {
        device_id,
        ts,
        voltage,
        current,
        power,
        energy,
        relay_on,
        location,
        device_type,
    })
}

fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

fn unzigzag(v: u64) -> i64 {
    ((v >> 1) as i64) ^ -((v & 1) as i64)
}

fn put_varint(mut v: u64, out: &mut Vec<u8>) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn put_bitmap(bits: impl Iterator<Item = bool>, n: usize, out: &mut Vec<u8>) {
    let start = out.len();
    out.resize(start + n.div_ceil(8), 0);
    for (i, b) in bits.enumerate() {
        if b {
            out[start + i / 8] |= 1 << (i % 8);
        }
    }
}

fn bit(bitmap: &[u8], i: usize) -> bool {
    bitmap[i / 8] & (1 << (i % 8)) != 0
}

fn put_strings(col: &StrColumn, out: &mut Vec<u8>) {
    out.extend_from_slice(&(col.data().len() as u32).to_le_bytes());
    let mut prev = 0u32;
    for &end in col.ends() {
        put_varint(u64::from(end - prev), out);
        prev = end;
    }
    out.extend_from_slice(col.data().as_bytes());
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, len: usize, what: &'static str) -> Result<&'a [u8], CodecError> {
        let end = self
            .pos
            .checked_add(len)
            .filter(|&e| e <= self.buf.len())
            .ok_or(CodecError::Truncated(what))?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], CodecError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N, what)?);
        Ok(a)
    }

    fn varint(&mut self, what: &'static str) -> Result<u64, CodecError> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let [b] = self.array::<1>(what)?;
            v |= u64::from(b & 0x7f) << shift;
            if b < 0x80 {
                return Ok(v);
            }
        }
        Err(CodecError::Varint(what))
    }

    fn strings(&mut self, n: usize, what: &'static str) -> Result<StrColumn, CodecError> {
        let total = u32::from_le_bytes(self.array(what)?) as usize;
        let mut ends = Vec::with_capacity(n.min(self.buf.len() - self.pos));
        let mut end = 0u64;
        for _ in 0..n {
            end += self.varint(what)?;
            if end > total as u64 {
                return Err(CodecError::Strings(what));
            }
            ends.push(end as u32);
        }
        if end != total as u64 {
            return Err(CodecError::Strings(what));
        }
        let bytes = self.take(total, what)?;
        let data = std::str::from_utf8(bytes).map_err(|_| CodecError::Strings(what))?;
        // Every string boundary must fall on a character boundary.
        if ends.iter().any(|&e| !data.is_char_boundary(e as usize)) {
            return Err(CodecError::Strings(what));
        }
        Ok(StrColumn::from_parts(data.to_owned(), ends))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::ReadingRef;

    pub(crate) fn sample(n: usize) -> ReadingBatch {
        let mut b = ReadingBatch::new();
        for i in 0..n {
            b.push(ReadingRef {
                device_id: if i % 3 == 0 { "plug-é" } else { "plug-2" },
                ts: 1_700_000_000_000_000_000 + (i as i64 % 7) * 1_000_000_000 - 5,
                voltage: 230.0 + i as f64 / 10.0,
                current: 0.5,
                power: -1.5,
                energy: (i % 2 == 0).then_some(i as f64),
                relay_on: [None, Some(true), Some(false)][i % 3],
                location: (i % 4 == 0).then_some("kitchen"),
                device_type: None,
            });
        }
        b
    }

    #[test]
    fn round_trip() {
        for n in [0, 1, 7, 8, 9, 100] {
            let b = sample(n);
            let mut buf = Vec::new();
            encode(&b, &mut buf);
            assert_eq!(decode(&buf), Ok(b));
        }
    }

    #[test]
    fn every_truncation_is_an_error() {
        let mut buf = Vec::new();
        encode(&sample(10), &mut buf);
        for cut in 0..buf.len() {
            assert!(decode(&buf[..cut]).is_err(), "cut at {cut}");
        }
        buf.push(0);
        assert_eq!(decode(&buf), Err(CodecError::Trailing(1)));
    }

    #[test]
    fn absurd_row_count_is_refused_before_allocating() {
        let buf = u32::MAX.to_le_bytes();
        assert!(matches!(decode(&buf), Err(CodecError::RowCount { .. })));
    }
}
