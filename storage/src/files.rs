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
//! fallback; the energy counter byte-stream-split; ZSTD over every page; page-level
//! statistics and the page index, so that a query for one plug reads few pages.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, RecordBatch, UInt32Array};
use arrow::compute::{
    SortColumn, SortOptions, concat_batches, lexsort_to_indices, take_record_batch,
};
use arrow::datatypes::{SchemaRef, TimestampNanosecondType};
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

    /// The directory of the file's partition (`readings/resolution=raw/date=…/hour=…`).
    pub fn partition(&self) -> &str {
        self.path.rsplit_once('/').map_or("", |(dir, _)| dir)
    }
}

/// Writer settings for files of `schema` (raw readings or a rollup).
pub fn writer_properties(schema: &SchemaRef, time_column: &str) -> WriterProperties {
    let mut b = WriterProperties::builder()
        .set_writer_version(WriterVersion::PARQUET_2_0)
        .set_compression(Compression::ZSTD(ZstdLevel::try_new(3).unwrap_or_default()))
        .set_statistics_enabled(EnabledStatistics::Page)
        .set_max_row_group_row_count(Some(1 << 20))
        .set_data_page_row_count_limit(20_000)
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
        if name == time_column {
            b = b
                .set_column_dictionary_enabled(col.clone(), false)
                .set_column_encoding(col, Encoding::DELTA_BINARY_PACKED);
        } else if name == "energy" || name.starts_with("energy_") || name.ends_with("_sum") {
            // Counters and sums: mostly distinct values.
            b = b
                .set_column_dictionary_enabled(col.clone(), false)
                .set_column_encoding(col, Encoding::BYTE_STREAM_SPLIT);
        } else if f.data_type().is_floating() {
            // Readings at a fixed resolution: few distinct values; when a row group has
            // too many for the dictionary, byte-stream-split takes over.
            b = b
                .set_column_dictionary_enabled(col.clone(), true)
                .set_column_encoding(col, Encoding::BYTE_STREAM_SPLIT);
        } else if f.data_type().is_integer() {
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
}

/// Concatenates `batches` and sorts the rows by `(device_id, time_column)`.
pub fn sort_rows(
    schema: &SchemaRef,
    batches: &[RecordBatch],
    time_column: &'static str,
) -> Result<RecordBatch, EncodeError> {
    let all = concat_batches(schema, batches)?;
    let dev = all
        .column_by_name("device_id")
        .ok_or(EncodeError::Column("device_id"))?;
    let ts = all
        .column_by_name(time_column)
        .ok_or(EncodeError::Column(time_column))?;
    let order = lexsort_to_indices(
        &[
            SortColumn {
                values: Arc::clone(dev),
                options: Some(SortOptions::default()),
            },
            SortColumn {
                values: Arc::clone(ts),
                options: Some(SortOptions::default()),
            },
        ],
        None,
    )?;
    Ok(take_record_batch(&all, &order)?)
}

/// Merges the rows of overlapping files: sorted by `(device_id, time_column)`, one row
/// per key, the row of the highest-ranked input winning. `inputs` are `(rank, rows)`.
pub fn merge_newest(
    schema: &SchemaRef,
    inputs: &[(u64, RecordBatch)],
    time_column: &'static str,
) -> Result<RecordBatch, EncodeError> {
    let batches: Vec<RecordBatch> = inputs.iter().map(|(_, b)| b.clone()).collect();
    let all = concat_batches(schema, &batches)?;
    let mut ranks = Vec::with_capacity(all.num_rows());
    for (rank, b) in inputs {
        ranks.extend(std::iter::repeat_n(*rank, b.num_rows()));
    }
    let ranks: ArrayRef = Arc::new(arrow::array::UInt64Array::from(ranks));
    let dev = all
        .column_by_name("device_id")
        .ok_or(EncodeError::Column("device_id"))?;
    let ts = all
        .column_by_name(time_column)
        .ok_or(EncodeError::Column(time_column))?;
    let order = lexsort_to_indices(
        &[
            SortColumn {
                values: Arc::clone(dev),
                options: Some(SortOptions::default()),
            },
            SortColumn {
                values: Arc::clone(ts),
                options: Some(SortOptions::default()),
            },
            SortColumn {
                values: ranks,
                options: Some(SortOptions {
                    descending: true,
                    nulls_first: false,
                }),
            },
        ],
        None,
    )?;
    let sorted = take_record_batch(&all, &order)?;
    // Keep the first row of every key: the highest rank.
    let dev = sorted
        .column_by_name("device_id")
        .and_then(|c| c.as_string_opt::<i32>())
        .ok_or(EncodeError::Column("device_id"))?;
    let ts = sorted
        .column_by_name(time_column)
        .and_then(|c| c.as_primitive_opt::<TimestampNanosecondType>())
        .ok_or(EncodeError::Column(time_column))?;
    let keep: arrow::array::BooleanArray = (0..sorted.num_rows())
        .map(|i| Some(i == 0 || dev.value(i) != dev.value(i - 1) || ts.value(i) != ts.value(i - 1)))
        .collect();
    Ok(arrow::compute::filter_record_batch(&sorted, &keep)?)
}

/// Decodes a whole Parquet file.
pub fn decode(body: Bytes) -> Result<Vec<RecordBatch>, EncodeError> {
    let reader =
        parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(body)?.build()?;
    Ok(reader.collect::<Result<Vec<_>, _>>()?)
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
    let mut out = Vec::with_capacity(batch.num_rows() * 3 + 4096);
    let mut w = ArrowWriter::try_new(&mut out, batch.schema(), Some(props))?;
    w.write(batch)?;
    w.close()?;
    Ok(Bytes::from(out))
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
