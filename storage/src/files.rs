//! Parquet files of readings: where they go in the layout, how they are encoded.
//!
//! Layout (Hive-style, so DuckDB, polars, pyarrow and Spark read it as it is):
//!
//! ```text
//! readings/resolution=raw/date=YYYY-MM-DD/hour=HH/{id}.parquet
//! readings/resolution=1m/date=YYYY-MM-DD/{id}.parquet
//! readings/resolution=1h/month=YYYY-MM/{id}.parquet
//! readings/resolution=1d/year=YYYY/{id}.parquet
//! catalog/manifest-{version}.json
//! ```
//!
//! `{id}` is a 20-digit file number, unique within the store and increasing with the
//! order in which files were written. When two files hold the same `(device_id, ts)`,
//! the one of higher *rank* wins (last write wins): a file's rank is its id, except for
//! a file compaction merged, whose rank is the highest rank among the files it replaced
//! ([`FileMeta::rank`]). Only files listed in the manifest are live.
//!
//! Encoding, chosen by measuring realistic plug readings (see the storage tests):
//! rows sorted by `(device_id, ts)`; `device_id` and the tags dictionary-encoded;
//! `ts` delta-encoded (one plug's readings a second apart are almost free);
//! `voltage`, `current` and `power` dictionary-encoded (plugs report them at a fixed
//! resolution, so a row group holds few distinct values) with byte-stream-split as the
//! fallback; the energy counter byte-stream-split; in rollup files every float column
//! byte-stream-split and every time delta-encoded, none with a dictionary, in pages of
//! 2,048 rows; ZSTD over every page; page-level statistics and the page index, so that
//! a query for one plug reads few pages. The tags (`location`, `device_type`) have no
//! statistics: in rows sorted by plug their minimum and maximum span nearly every value
//! in any row group or page, so they prune nothing, and computing them cost 7-12 % of
//! encoding a persist cycle's rows (bench `parquet_encode`).

use arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, BooleanBufferBuilder, RecordBatch, UInt32Array,
};
use arrow::buffer::NullBuffer;
use arrow::compute::take_record_batch;
use std::collections::HashMap;
use std::sync::Arc;

use arrow::datatypes::{DataType, SchemaRef, TimestampNanosecondType};
use arrow::error::ArrowError;
use bytes::Bytes;
use chrono::{DateTime, Datelike, Timelike};
use object_store::path::Path as ObjPath;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, Encoding, ZstdLevel};
use parquet::file::metadata::SortingColumn;
use parquet::file::properties::{EnabledStatistics, WriterProperties, WriterVersion};
use parquet::schema::types::ColumnPath;
use serde::{Deserialize, Serialize};

/// Nanoseconds in an hour and a day.
pub const HOUR_NS: i64 = 3_600_000_000_000;
pub const DAY_NS: i64 = 24 * HOUR_NS;

/// The tiers of the store, one directory each.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Tier {
    #[serde(rename = "raw")]
    Raw,
    #[serde(rename = "1m")]
    Minute,
    #[serde(rename = "1h")]
    Hour,
    #[serde(rename = "1d")]
    Day,
}

impl Tier {
    pub const ALL: [Tier; 4] = [Tier::Raw, Tier::Minute, Tier::Hour, Tier::Day];

    pub fn name(self) -> &'static str {
        match self {
            Tier::Raw => "raw",
            Tier::Minute => "1m",
            Tier::Hour => "1h",
            Tier::Day => "1d",
        }
    }

    /// The column that orders a file's rows per plug and that its time ranges are
    /// about: `ts` for raw readings, `bucket` for rollups.
    pub fn time_column(self) -> &'static str {
        match self {
            Tier::Raw => "ts",
            Tier::Minute | Tier::Hour | Tier::Day => "bucket",
        }
    }

    /// Start of the directory partition holding time `ts` (ns, UTC).
    pub fn partition_start(self, ts: i64) -> i64 {
        match self {
            Tier::Raw => ts.div_euclid(HOUR_NS) * HOUR_NS,
            Tier::Minute => ts.div_euclid(DAY_NS) * DAY_NS,
            Tier::Hour | Tier::Day => {
                let t = DateTime::from_timestamp_nanos(ts);
                let (y, m) = (t.year(), if self == Tier::Hour { t.month() } else { 1 });
                chrono::NaiveDate::from_ymd_opt(y, m, 1)
                    .and_then(|d| d.and_hms_opt(0, 0, 0))
                    .and_then(|d| d.and_utc().timestamp_nanos_opt())
                    .unwrap_or(ts)
            }
        }
    }

    /// `readings/resolution=…/…/` for the partition starting at `start`.
    pub fn partition_dir(self, start: i64) -> String {
        let t = DateTime::from_timestamp_nanos(start);
        match self {
            Tier::Raw => format!(
                "readings/resolution=raw/date={}/hour={:02}",
                t.format("%Y-%m-%d"),
                t.hour()
            ),
            Tier::Minute => format!("readings/resolution=1m/date={}", t.format("%Y-%m-%d")),
            Tier::Hour => format!("readings/resolution=1h/month={}", t.format("%Y-%m")),
            Tier::Day => format!("readings/resolution=1d/year={}", t.format("%Y")),
        }
    }

    /// Path of file `id` in the partition starting at `start`.
    pub fn file_path(self, start: i64, id: u64) -> String {
        format!("{}/{id:020}.parquet", self.partition_dir(start))
    }
}

/// One live file, as the manifest records it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FileMeta {
    pub id: u64,
    pub tier: Tier,
    /// Layout path (relative to the store root).
    pub path: String,
    pub size: u64,
    pub rows: u64,
    /// Time range of the rows (ns, inclusive).
    pub min_ts: i64,
    pub max_ts: i64,
    /// Device id range of the rows (inclusive).
    pub min_device: String,
    pub max_device: String,
    /// For a file compaction wrote: the highest rank of the files it replaced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub merged_rank: Option<u64>,
}

impl FileMeta {
    pub fn object_path(&self) -> ObjPath {
        ObjPath::from(self.path.as_str())
    }

    /// Which copy of a `(device_id, ts)` wins when files overlap: the higher rank.
    /// A file's id, or for a merged file the rank of the newest file it replaced, so
    /// that a file written while compaction ran still wins over the merged one.
    pub fn rank(&self) -> u64 {
        self.merged_rank.unwrap_or(self.id)
    }

    /// The entry of new file `id` of `tier`, in the partition that starts at `start`,
    /// holding `rows` encoded as `size` bytes.
    pub fn describe(
        tier: Tier,
        start: i64,
        id: u64,
        rows: &RecordBatch,
        size: u64,
        time_column: &'static str,
    ) -> Result<FileMeta, EncodeError> {
        let (min_ts, max_ts, min_device, max_device) = ranges(rows, time_column)?;
        Ok(FileMeta {
            id,
            tier,
            path: tier.file_path(start, id),
            size,
            rows: rows.num_rows() as u64,
            min_ts,
            max_ts,
            min_device,
            max_device,
            merged_rank: None,
        })
    }

    /// The directory of the file's partition (`readings/resolution=raw/date=…/hour=…`).
    pub fn partition(&self) -> &str {
        self.path.rsplit_once('/').map_or("", |(dir, _)| dir)
    }
}

/// Writer settings for files of `schema` (raw readings or a rollup).
pub fn writer_properties(schema: &SchemaRef, time_column: &str) -> WriterProperties {
    // A plug's day is 86,400 raw readings but 1,440 rows of 1m rollups: rollup pages are
    // smaller, so that the page index lets a one-plug query decode about one page.
    let raw = time_column == "ts";
    let page_rows = if raw { 20_000 } else { 2_048 };
    let mut b = WriterProperties::builder()
        .set_writer_version(WriterVersion::PARQUET_2_0)
        .set_compression(Compression::ZSTD(ZstdLevel::try_new(3).unwrap_or_default()))
        .set_statistics_enabled(EnabledStatistics::Page)
        .set_max_row_group_row_count(Some(1 << 20))
        .set_data_page_row_count_limit(page_rows)
        .set_dictionary_page_size_limit(1 << 20)
        .set_created_by(format!("WattDB {}", env!("CARGO_PKG_VERSION")));
    let mut sorting = Vec::new();
    for (i, f) in schema.fields().iter().enumerate() {
        let col = ColumnPath::from(f.name().as_str());
        let name = f.name().as_str();
        if name == "device_id" || name == time_column {
            sorting.push(SortingColumn {
                column_idx: i as i32,
                descending: false,
                nulls_first: false,
            });
        }
        if name == "location" || name == "device_type" {
            // Tags: no statistics (see the module documentation).
            b = b.set_column_statistics_enabled(col.clone(), EnabledStatistics::None);
        }
        if name == time_column {
            b = b
                .set_column_dictionary_enabled(col.clone(), false)
                .set_column_encoding(col, Encoding::DELTA_BINARY_PACKED);
        } else if name == "energy"
            || name.starts_with("energy_")
            || name.ends_with("_sum")
            || (f.data_type().is_floating() && !raw)
        {
            // Counters and sums: mostly distinct values. Rollup minima, maxima and
            // last values: a dictionary page is shared by a whole row group (up to
            // 1 MiB, compressed as one), so a one-plug query would decompress it whole
            // to read a page of 2,048 rows; plain pages decode alone.
            b = b
                .set_column_dictionary_enabled(col.clone(), false)
                .set_column_encoding(col, Encoding::BYTE_STREAM_SPLIT);
        } else if f.data_type().is_floating() {
            // Readings at a fixed resolution: few distinct values; when a row group has
            // too many for the dictionary, byte-stream-split takes over.
            b = b
                .set_column_dictionary_enabled(col.clone(), true)
                .set_column_encoding(col, Encoding::BYTE_STREAM_SPLIT);
        } else if f.data_type().is_integer()
            || matches!(f.data_type(), arrow::datatypes::DataType::Timestamp(..))
        {
            // Counts and times (a rollup's first and last reading time): sorted or
            // close to it, and a dictionary page would have to be read whole.
            b = b
                .set_column_dictionary_enabled(col.clone(), false)
                .set_column_encoding(col, Encoding::DELTA_BINARY_PACKED);
        }
    }
    b.set_sorting_columns(Some(sorting)).build()
}

/// Errors while encoding a file.
#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    #[error("arrow: {0}")]
    Arrow(#[from] arrow::error::ArrowError),
    #[error("parquet: {0}")]
    Parquet(#[from] parquet::errors::ParquetError),
    #[error("column {0} is missing or has the wrong type")]
    Column(&'static str),
    #[error("{0} rows are more than one file can be sorted with")]
    TooManyRows(usize),
}

/// The rows of `batches` in one batch, sorted by `(device_id, time_column)`; rows with
/// equal keys keep their input order.
pub fn sort_rows(
    schema: &SchemaRef,
    batches: &[RecordBatch],
    time_column: &'static str,
) -> Result<RecordBatch, EncodeError> {
    let batches: Vec<&RecordBatch> = batches.iter().filter(|b| b.num_rows() > 0).collect();
    if batches.is_empty() {
        return Ok(RecordBatch::new_empty(Arc::clone(schema)));
    }
    let order = key_order(&batches, time_column)?;
    // One gather straight from the inputs: no concatenated copy first.
    let columns = (0..batches[0].num_columns())
        .map(|i| {
            let inputs: Vec<&dyn Array> = batches.iter().map(|b| b.column(i).as_ref()).collect();
            gather(&inputs, &order)
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(RecordBatch::try_new(batches[0].schema(), columns)?)
}

/// The rows `order` names, `(input, row)`, of arrays of one type, as one array: Arrow's
/// `interleave`, except for booleans, which it gathers through a generic path that cost
/// a fifth of putting a persist cycle's rows in order (bench `persist_order`).
pub fn gather(inputs: &[&dyn Array], order: &[(usize, usize)]) -> Result<ArrayRef, ArrowError> {
    if inputs.is_empty() || inputs.iter().any(|a| a.data_type() != &DataType::Boolean) {
        return arrow::compute::interleave(inputs, order);
    }
    let inputs: Vec<&BooleanArray> = inputs.iter().map(|a| a.as_boolean()).collect();
    let mut values = BooleanBufferBuilder::new(order.len());
    if inputs.iter().all(|a| a.null_count() == 0) {
        for &(a, row) in order {
            values.append(inputs[a].value(row));
        }
        return Ok(Arc::new(BooleanArray::new(values.finish(), None)));
    }
    let mut valid = BooleanBufferBuilder::new(order.len());
    for &(a, row) in order {
        let input = inputs[a];
        values.append(input.value(row));
        valid.append(input.is_valid(row));
    }
    let nulls = NullBuffer::new(valid.finish());
    Ok(Arc::new(BooleanArray::new(values.finish(), Some(nulls))))
}

/// `(batch, row)` of every row of `batches` in `(device_id, time_column, input order)`
/// order.
///
/// Each row becomes one `u128`: the rank of its device id among the distinct ids, the
/// time (sign bit flipped, so it orders as unsigned) and its position in the input.
/// Sorting those integers is much faster than a comparator sort over a string and a
/// time column (half the time, for a whole persist cycle's rows; see the README's
/// persistence throughput), and the position keeps equal keys in input order.
fn key_order(
    batches: &[&RecordBatch],
    time_column: &'static str,
) -> Result<Vec<(usize, usize)>, EncodeError> {
    let mut columns = Vec::with_capacity(batches.len());
    let mut n = 0usize;
    for b in batches {
        let dev = b
            .column_by_name("device_id")
            .and_then(|c| c.as_string_opt::<i32>())
            .ok_or(EncodeError::Column("device_id"))?;
        let ts = b
            .column_by_name(time_column)
            .and_then(|c| c.as_primitive_opt::<TimestampNanosecondType>())
            .ok_or(EncodeError::Column(time_column))?;
        columns.push((dev, ts, n));
        n += b.num_rows();
    }
    if n > u32::MAX as usize {
        return Err(EncodeError::TooManyRows(n));
    }
    let mut ids: HashMap<&str, u32, foldhash::fast::RandomState> = HashMap::default();
    let mut row_ids = Vec::with_capacity(n);
    for (dev, _, _) in &columns {
        for i in 0..dev.len() {
            let next = ids.len() as u32;
            row_ids.push(*ids.entry(dev.value(i)).or_insert(next));
        }
    }
    let mut distinct: Vec<(&str, u32)> = ids.into_iter().collect();
    distinct.sort_unstable_by(|a, b| a.0.cmp(b.0));
    let mut rank = vec![0u32; distinct.len()];
    for (r, (_, id)) in distinct.iter().enumerate() {
        rank[*id as usize] = r as u32;
    }
    let mut keys: Vec<u128> = Vec::with_capacity(n);
    for (_, ts, offset) in &columns {
        for (i, t) in ts.values().iter().enumerate() {
            let row = offset + i;
            let t = (*t as u64) ^ (1 << 63);
            keys.push(
                (u128::from(rank[row_ids[row] as usize]) << 96)
                    | (u128::from(t) << 32)
                    | row as u128,
            );
        }
    }
    keys.sort_unstable();
    // Global row number back to (batch, row).
    let starts: Vec<usize> = columns.iter().map(|(_, _, offset)| *offset).collect();
    Ok(keys
        .into_iter()
        .map(|k| {
            let row = k as u32 as usize;
            let b = starts.partition_point(|&s| s <= row) - 1;
            (b, row - starts[b])
        })
        .collect())
}

/// Merges the rows of overlapping files: sorted by `(device_id, time_column)`, one row
/// per key, the row of the highest-ranked input winning. `inputs` are `(rank, rows)`.
pub fn merge_newest(
    schema: &SchemaRef,
    inputs: &[(u64, RecordBatch)],
    time_column: &'static str,
) -> Result<RecordBatch, EncodeError> {
    // In ascending rank, so that among equal keys the last row is the newest copy.
    let mut inputs: Vec<&(u64, RecordBatch)> = inputs.iter().collect();
    inputs.sort_by_key(|(rank, _)| *rank);
    let batches: Vec<RecordBatch> = inputs.iter().map(|(_, b)| b.clone()).collect();
    let sorted = sort_rows(schema, &batches, time_column)?;
    // Keep the last row of every key: the highest rank.
    let dev = sorted
        .column_by_name("device_id")
        .and_then(|c| c.as_string_opt::<i32>())
        .ok_or(EncodeError::Column("device_id"))?;
    let ts = sorted
        .column_by_name(time_column)
        .and_then(|c| c.as_primitive_opt::<TimestampNanosecondType>())
        .ok_or(EncodeError::Column(time_column))?;
    let n = sorted.num_rows();
    let keep: arrow::array::BooleanArray = (0..n)
        .map(|i| {
            Some(i + 1 == n || dev.value(i) != dev.value(i + 1) || ts.value(i) != ts.value(i + 1))
        })
        .collect();
    Ok(arrow::compute::filter_record_batch(&sorted, &keep)?)
}

/// Decodes a whole Parquet file.
pub fn decode(body: Bytes) -> Result<Vec<RecordBatch>, EncodeError> {
    let reader =
        parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(body)?.build()?;
    Ok(reader.collect::<Result<Vec<_>, _>>()?)
}

/// A file's rows, read a batch at a time ([`batches`]).
pub type BatchReader = Box<dyn Iterator<Item = Result<RecordBatch, ArrowError>> + Send>;

/// Reads a file's rows in batches of at most `rows`: memory for one batch's pages at
/// a time, where [`decode`] holds all of them.
pub fn batches(body: Bytes, rows: usize) -> Result<BatchReader, EncodeError> {
    let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(body)?
        .with_batch_size(rows.max(1))
        .build()?;
    Ok(Box::new(reader))
}

/// Writes batches one after another into one file, as [`encode`] writes one.
pub struct Encoder {
    writer: ArrowWriter<Vec<u8>>,
}

impl Encoder {
    pub fn new(schema: SchemaRef, props: WriterProperties) -> Result<Self, EncodeError> {
        Self::into_buffer(Vec::new(), schema, props)
    }

    fn into_buffer(
        out: Vec<u8>,
        schema: SchemaRef,
        props: WriterProperties,
    ) -> Result<Self, EncodeError> {
        Ok(Self {
            writer: ArrowWriter::try_new(out, schema, Some(props))?,
        })
    }

    pub fn write(&mut self, batch: &RecordBatch) -> Result<(), EncodeError> {
        Ok(self.writer.write(batch)?)
    }

    /// The file's bytes.
    pub fn finish(self) -> Result<Bytes, EncodeError> {
        Ok(Bytes::from(self.writer.into_inner()?))
    }
}

/// Splits rows by the tier's directory partition: `(partition start, rows)` in order
/// of partition, each keeping the input's row order.
pub fn split_by_partition(
    tier: Tier,
    batch: &RecordBatch,
    time_column: &'static str,
) -> Result<Vec<(i64, RecordBatch)>, EncodeError> {
    let ts = batch
        .column_by_name(time_column)
        .and_then(|c| c.as_primitive_opt::<TimestampNanosecondType>())
        .ok_or(EncodeError::Column(time_column))?;
    let mut groups: std::collections::BTreeMap<i64, Vec<u32>> = Default::default();
    for (i, t) in ts.values().iter().enumerate() {
        groups
            .entry(tier.partition_start(*t))
            .or_default()
            .push(i as u32);
    }
    if groups.len() == 1 {
        let (start, _) = groups.pop_first().ok_or(EncodeError::Column(time_column))?;
        return Ok(vec![(start, batch.clone())]);
    }
    groups
        .into_iter()
        .map(|(start, idx)| Ok((start, take_record_batch(batch, &UInt32Array::from(idx))?)))
        .collect()
}

/// Encodes rows (already sorted by `(device_id, time)`) as one Parquet file.
pub fn encode(batch: &RecordBatch, props: WriterProperties) -> Result<Bytes, EncodeError> {
    let out = Vec::with_capacity(batch.num_rows() * 3 + 4096);
    let mut e = Encoder::into_buffer(out, batch.schema(), props)?;
    e.write(batch)?;
    e.finish()
}

/// The time and device ranges of sorted rows, for the manifest.
pub fn ranges(
    batch: &RecordBatch,
    time_column: &'static str,
) -> Result<(i64, i64, String, String), EncodeError> {
    let ts = batch
        .column_by_name(time_column)
        .and_then(|c| c.as_primitive_opt::<TimestampNanosecondType>())
        .ok_or(EncodeError::Column(time_column))?;
    let dev: &ArrayRef = batch
        .column_by_name("device_id")
        .ok_or(EncodeError::Column("device_id"))?;
    let dev = dev
        .as_string_opt::<i32>()
        .ok_or(EncodeError::Column("device_id"))?;
    let (mut lo, mut hi) = (i64::MAX, i64::MIN);
    for &t in ts.values().iter() {
        lo = lo.min(t);
        hi = hi.max(t);
    }
    let n = dev.len();
    let (first, last) = if n == 0 {
        (String::new(), String::new())
    } else {
        (dev.value(0).to_owned(), dev.value(n - 1).to_owned())
    };
    Ok((lo, hi, first, last))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{Float64Array, StringArray, TimestampNanosecondArray};
    use arrow::datatypes::{DataType, Field, Schema, TimeUnit};

    use super::*;

    fn batch(rows: &[(&str, i64, f64)]) -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![
            Field::new("device_id", DataType::Utf8, false),
            Field::new("ts", DataType::Timestamp(TimeUnit::Nanosecond, None), false),
            Field::new("power", DataType::Float64, false),
        ]));
        RecordBatch::try_new(
            schema,
            vec![
                Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.0))),
                Arc::new(TimestampNanosecondArray::from_iter_values(
                    rows.iter().map(|r| r.1),
                )),
                Arc::new(Float64Array::from_iter_values(rows.iter().map(|r| r.2))),
            ],
        )
        .unwrap()
    }

    fn rows(b: &RecordBatch) -> Vec<(String, i64, f64)> {
        let dev = b.column(0).as_string::<i32>();
        let ts = b.column(1).as_primitive::<TimestampNanosecondType>();
        let p = b.column(2).as_primitive::<arrow::datatypes::Float64Type>();
        (0..b.num_rows())
            .map(|i| (dev.value(i).to_owned(), ts.value(i), p.value(i)))
            .collect()
    }

    /// A small deterministic generator (no dependency needed).
    fn lcg(state: &mut u64) -> u64 {
        *state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        *state >> 33
    }

    #[test]
    fn gather_gives_what_arrow_interleave_gives() {
        use arrow::array::Int64Array;
        let mut seed = 11;
        let bools = |nulls: bool, seed: &mut u64| -> BooleanArray {
            (0..(lcg(seed) % 50 + 1))
                .map(|_| match lcg(seed) % 3 {
                    0 if nulls => None,
                    v => Some(v == 1),
                })
                .collect()
        };
        for nulls in [false, true, false, true] {
            // Whole arrays and a slice (an offset into its bits).
            let a = bools(nulls, &mut seed);
            let b = bools(nulls, &mut seed);
            let c = bools(false, &mut seed);
            let c = c.slice(c.len() / 3, c.len() - c.len() / 3);
            let inputs: [&dyn Array; 3] = [&a, &b, &c];
            let order: Vec<(usize, usize)> = (0..200)
                .map(|_| {
                    let i = (lcg(&mut seed) % 3) as usize;
                    (i, (lcg(&mut seed) as usize) % inputs[i].len())
                })
                .collect();
            let ours = gather(&inputs, &order).unwrap();
            assert_eq!(ours.null_count() > 0, nulls);
            assert_eq!(
                ours.as_ref(),
                arrow::compute::interleave(&inputs, &order)
                    .unwrap()
                    .as_ref()
            );
        }
        // Other types are Arrow's interleave itself.
        let n = Int64Array::from(vec![Some(1), None, Some(3)]);
        let order = [(0, 2), (0, 1), (0, 0)];
        assert_eq!(
            gather(&[&n], &order).unwrap().as_ref(),
            &Int64Array::from(vec![Some(3), None, Some(1)]) as &dyn Array
        );
    }

    #[test]
    fn sorting_and_merging_agree_with_a_plain_sort() {
        let devices = [
            "plug-b", "plug-a", "plug-aa", "", "ü-plug", "plug-10", "plug-9",
        ];
        let mut seed = 7;
        for round in 0..50 {
            let n = (lcg(&mut seed) % 300) as usize;
            let mut inputs = Vec::new();
            let mut all = Vec::new();
            for rank in [3u64, 1, 2] {
                let part: Vec<(&str, i64, f64)> = (0..n / 3)
                    .map(|_| {
                        let d = devices[(lcg(&mut seed) % devices.len() as u64) as usize];
                        // Negative times, equal times, extremes.
                        let t = match lcg(&mut seed) % 10 {
                            0 => i64::MIN,
                            1 => i64::MAX,
                            _ => (lcg(&mut seed) % 40) as i64 - 20,
                        };
                        (d, t, (rank * 1000 + lcg(&mut seed) % 1000) as f64)
                    })
                    .collect();
                all.extend(part.iter().map(|r| (r.0.to_owned(), r.1, r.2, rank)));
                inputs.push((rank, batch(&part)));
            }
            let schema = inputs[0].1.schema();
            // sort_rows: every row, by device then time (stable for equal keys).
            let batches: Vec<RecordBatch> = inputs.iter().map(|(_, b)| b.clone()).collect();
            let mut expected: Vec<(String, i64, f64)> =
                all.iter().map(|r| (r.0.clone(), r.1, r.2)).collect();
            expected.sort_by(|a, b| (&a.0, a.1).cmp(&(&b.0, b.1)));
            let sorted = rows(&sort_rows(&schema, &batches, "ts").unwrap());
            let key = |r: &(String, i64, f64)| (r.0.clone(), r.1);
            assert_eq!(
                sorted.iter().map(key).collect::<Vec<_>>(),
                expected.iter().map(key).collect::<Vec<_>>(),
                "round {round}"
            );
            // merge_newest: one row per key, from the highest rank; within a rank the
            // later row.
            let mut newest: std::collections::BTreeMap<(String, i64), (u64, f64)> =
                Default::default();
            let mut by_rank = all.clone();
            by_rank.sort_by_key(|r| r.3);
            for r in by_rank {
                newest.insert((r.0, r.1), (r.3, r.2));
            }
            let expected: Vec<(String, i64, f64)> = newest
                .into_iter()
                .map(|((d, t), (_, p))| (d, t, p))
                .collect();
            let merged = rows(&merge_newest(&schema, &inputs, "ts").unwrap());
            assert_eq!(merged, expected, "round {round}");
        }
    }
}
