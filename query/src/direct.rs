//! Reading a few plugs' rows of a tier straight from its Parquet files, without
//! planning a query: what a dashboard series needs from a rollup table.
//!
//! For a chart of one plug, planning and running SQL costs more than the reading: the
//! rows sit in one or two pages per file (files are sorted by plug and time). This
//! path keeps every file's footer and page index in memory once read (files never
//! change), picks the row groups and pages whose plug and time ranges can hold the
//! rows, decodes only those, and resolves rows written more than once by rank, as
//! the tables do (rollup rows of one plug and bucket merge, partial rows adding to the
//! rows under them).

use std::collections::HashMap;
use std::ops::Range;
use std::sync::Arc;

use arrow::array::{Array, AsArray, RecordBatch, UInt32Array};
use arrow::compute::{concat_batches, take_record_batch};
use arrow::datatypes::{SchemaRef, TimestampNanosecondType};
use bytes::Bytes;
use futures::FutureExt;
use futures::TryStreamExt;
use futures::future::BoxFuture;
use object_store::ObjectStore;
use object_store::ObjectStoreExt;
use object_store::path::Path as ObjPath;
use parking_lot::Mutex;
use parquet::arrow::ProjectionMask;
use parquet::arrow::arrow_reader::{ArrowReaderMetadata, ArrowReaderOptions, RowSelection};
use parquet::arrow::async_reader::{AsyncFileReader, ParquetRecordBatchStreamBuilder};
use parquet::file::metadata::{PageIndexPolicy, ParquetMetaData, ParquetMetaDataReader};
use parquet::file::page_index::column_index::ColumnIndexMetaData;
use parquet::file::statistics::Statistics;
use wattdb_engine::schema::rollup_col;
use wattdb_engine::{FileMeta, Tier, merge_rollup_rows};

use crate::{Error, Result};

/// Footers and page indexes of files read by this path, by file path.
#[derive(Debug, Default)]
pub(crate) struct FooterCache {
    entries: Mutex<HashMap<String, ArrowReaderMetadata>>,
}

/// Files whose footers are kept (a rollup footer with its page index is some tens of
/// KiB; the map is cleared when full).
const FOOTERS: usize = 4096;

impl FooterCache {
    async fn get(&self, reader: &mut FileReader, path: &str) -> Result<ArrowReaderMetadata> {
        if let Some(m) = self.entries.lock().get(path) {
            return Ok(m.clone());
        }
        let options = ArrowReaderOptions::new().with_page_index_policy(PageIndexPolicy::Optional);
        let m = ArrowReaderMetadata::load_async(reader, options)
            .await
            .map_err(storage_error)?;
        let mut entries = self.entries.lock();
        if entries.len() >= FOOTERS {
            entries.clear();
        }
        entries.insert(path.to_owned(), m.clone());
        Ok(m)
    }
}

/// One Parquet file of the store, of known size.
#[derive(Debug, Clone)]
struct FileReader {
    store: Arc<dyn ObjectStore>,
    path: ObjPath,
    size: u64,
}

fn external(e: object_store::Error) -> parquet::errors::ParquetError {
    parquet::errors::ParquetError::External(Box::new(e))
}

impl AsyncFileReader for FileReader {
    fn get_bytes(&mut self, range: Range<u64>) -> BoxFuture<'_, parquet::errors::Result<Bytes>> {
        async move {
            self.store
                .get_range(&self.path, range)
                .await
                .map_err(external)
        }
        .boxed()
    }

    fn get_byte_ranges(
        &mut self,
        ranges: Vec<Range<u64>>,
    ) -> BoxFuture<'_, parquet::errors::Result<Vec<Bytes>>> {
        async move {
            self.store
                .get_ranges(&self.path, &ranges)
                .await
                .map_err(external)
        }
        .boxed()
    }

    /// The footer with the page index (the caller keeps it).
    fn get_metadata<'a>(
        &'a mut self,
        _options: Option<&'a ArrowReaderOptions>,
    ) -> BoxFuture<'a, parquet::errors::Result<Arc<ParquetMetaData>>> {
        async move {
            let size = self.size;
            let m = ParquetMetaDataReader::new()
                .with_page_index_policy(PageIndexPolicy::Optional)
                .load_and_finish(self, size)
                .await?;
            Ok(Arc::new(m))
        }
        .boxed()
    }
}

fn storage_error(e: parquet::errors::ParquetError) -> Error {
    Error::Storage(datafusion::error::DataFusionError::ParquetError(Box::new(
        e,
    )))
}

/// Which rows: those of `devices` (sorted, distinct) with the time column of `tier` in
/// `[from, to)`, with `columns` (which start with `device_id` and the time column).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Wanted<'a> {
    pub tier: Tier,
    pub devices: &'a [String],
    pub from: i64,
    pub to: i64,
    pub columns: &'a [&'a str],
}

/// The `wanted` rows of the files in `files`, one per `(device_id, time)` (the highest
/// rank wins).
pub(crate) async fn plug_rows(
    store: Arc<dyn ObjectStore>,
    footers: &FooterCache,
    files: &[FileMeta],
    wanted: Wanted<'_>,
) -> Result<Option<RecordBatch>> {
    let Wanted {
        tier,
        devices,
        from,
        to,
        ..
    } = wanted;
    let (lo, hi) = match (devices.first(), devices.last()) {
        (Some(lo), Some(hi)) => (lo.as_str(), hi.as_str()),
        _ => return Ok(None),
    };
    let chosen: Vec<FileMeta> = files
        .iter()
        .filter(|f| f.tier == tier && f.max_ts >= from && f.min_ts < to)
        .filter(|f| f.max_device.as_str() >= lo && f.min_device.as_str() <= hi)
        .cloned()
        .collect();
    // A chart touches a few files: read them all at once.
    let reads: Vec<_> = chosen
        .into_iter()
        .map(|f| {
            let store = Arc::clone(&store);
            async move {
                let batches = read_file(store, footers, &f, wanted).await?;
                Ok::<_, Error>((f.rank(), batches))
            }
        })
        .collect();
    let parts: Vec<(u64, Vec<RecordBatch>)> = futures::future::try_join_all(reads).await?;
    let mut tagged: Vec<(u64, RecordBatch)> = Vec::new();
    for (rank, batches) in parts {
        tagged.extend(batches.into_iter().map(|b| (rank, b)));
    }
    let Some(schema) = tagged.first().map(|(_, b)| b.schema()) else {
        return Ok(None);
    };
    if tier == Tier::Raw {
        return newest_copies(schema, &tagged).map(Some);
    }
    // Rollups: a plug's rows of one bucket merge (partial rows add to the rows under
    // them); the partial column read for that is dropped.
    let merged = merge_rollup_rows(&tagged).map_err(arrow_error)?;
    merged
        .project(&(0..wanted.columns.len()).collect::<Vec<_>>())
        .map(Some)
        .map_err(arrow_error)
}

/// One batch of the rows of `tagged`, one per `(device_id, time)`: the copy of the
/// highest rank.
fn newest_copies(schema: SchemaRef, tagged: &[(u64, RecordBatch)]) -> Result<RecordBatch> {
    let batches: Vec<RecordBatch> = tagged.iter().map(|(_, b)| b.clone()).collect();
    let all = concat_batches(&schema, &batches).map_err(arrow_error)?;
    let device = all.column(0).as_string::<i32>();
    let time = all.column(1).as_primitive::<TimestampNanosecondType>();
    let mut ranks = Vec::with_capacity(all.num_rows());
    for (rank, b) in tagged {
        ranks.extend(std::iter::repeat_n(*rank, b.num_rows()));
    }
    let mut order: Vec<u32> = (0..all.num_rows() as u32).collect();
    order.sort_unstable_by(|&a, &b| {
        let (a, b) = (a as usize, b as usize);
        device
            .value(a)
            .cmp(device.value(b))
            .then(time.value(a).cmp(&time.value(b)))
            .then(ranks[b].cmp(&ranks[a]))
    });
    order.dedup_by(|b, a| {
        let (a, b) = (*a as usize, *b as usize);
        device.value(a) == device.value(b) && time.value(a) == time.value(b)
    });
    take_record_batch(&all, &UInt32Array::from(order)).map_err(arrow_error)
}

fn arrow_error(e: arrow::error::ArrowError) -> Error {
    Error::DataFusion(e.into())
}

async fn read_file(
    store: Arc<dyn ObjectStore>,
    footers: &FooterCache,
    f: &FileMeta,
    wanted: Wanted<'_>,
) -> Result<Vec<RecordBatch>> {
    let Wanted {
        tier,
        devices,
        from,
        to,
        columns,
    } = wanted;
    let mut reader = FileReader {
        store,
        path: f.object_path(),
        size: f.size,
    };
    let meta = footers.get(&mut reader, &f.path).await?;
    let parquet = meta.metadata();
    let schema = parquet.file_metadata().schema_descr();
    let index_of = |name: &str| {
        schema
            .columns()
            .iter()
            .position(|c| c.name() == name)
            .ok_or_else(|| {
                Error::Plan(datafusion::error::DataFusionError::Plan(format!(
                    "file {} has no column {name}",
                    f.path
                )))
            })
    };
    let device_col = index_of("device_id")?;
    let time_col = index_of(tier.time_column())?;
    let (groups, selection) = select_pages(parquet, device_col, time_col, devices, from, to);
    if groups.is_empty() {
        return Ok(Vec::new());
    }
    // A rollup file's partial column says how its rows merge with other files' rows.
    let mut columns = columns.to_vec();
    if tier != Tier::Raw && index_of(rollup_col::PARTIAL).is_ok() {
        columns.push(rollup_col::PARTIAL);
    }
    let mask = ProjectionMask::columns(schema, columns.iter().copied());
    let mut builder = ParquetRecordBatchStreamBuilder::new_with_metadata(reader, meta.clone())
        .with_projection(mask)
        .with_row_groups(groups);
    if let Some(s) = selection {
        builder = builder.with_row_selection(s);
    }
    let stream = builder.build().map_err(storage_error)?;
    let batches: Vec<RecordBatch> = stream.try_collect().await.map_err(storage_error)?;
    let mut out = Vec::new();
    for b in batches {
        // The projection keeps the file's column order: put them in the asked order.
        let b = b
            .project(
                &columns
                    .iter()
                    .map(|c| b.schema().index_of(c))
                    .collect::<std::result::Result<Vec<_>, _>>()
                    .map_err(arrow_error)?,
            )
            .map_err(arrow_error)?;
        let device = b.column(0).as_string::<i32>();
        let time = b.column(1).as_primitive::<TimestampNanosecondType>();
        let keep: arrow::array::BooleanArray = (0..b.num_rows())
            .map(|i| {
                Some(
                    !device.is_null(i)
                        && devices
                            .binary_search_by(|d| d.as_str().cmp(device.value(i)))
                            .is_ok()
                        && (from..to).contains(&time.value(i)),
                )
            })
            .collect();
        let b = arrow::compute::filter_record_batch(&b, &keep).map_err(arrow_error)?;
        if b.num_rows() > 0 {
            out.push(b);
        }
    }
    Ok(out)
}

/// The row groups whose statistics may hold the rows, and within them the rows of the
/// pages of `device_id` whose range holds one of `devices` (`None`: every row).
fn select_pages(
    meta: &ParquetMetaData,
    device_col: usize,
    time_col: usize,
    devices: &[String],
    from: i64,
    to: i64,
) -> (Vec<usize>, Option<RowSelection>) {
    let holds_device = |min: Option<&[u8]>, max: Option<&[u8]>| match (min, max) {
        (Some(min), Some(max)) => devices
            .iter()
            .any(|d| d.as_bytes() >= min && d.as_bytes() <= max),
        _ => true,
    };
    let mut groups = Vec::new();
    for (g, rg) in meta.row_groups().iter().enumerate() {
        let dev_ok = match rg.column(device_col).statistics() {
            Some(Statistics::ByteArray(s)) => {
                holds_device(s.min_opt().map(|v| v.data()), s.max_opt().map(|v| v.data()))
            }
            _ => true,
        };
        let time_ok = match rg.column(time_col).statistics() {
            Some(Statistics::Int64(s)) => match (s.min_opt(), s.max_opt()) {
                (Some(&min), Some(&max)) => max >= from && min < to,
                _ => true,
            },
            _ => true,
        };
        if dev_ok && time_ok {
            groups.push(g);
        }
    }
    let (Some(offsets), Some(index)) = (meta.offset_index(), meta.column_index()) else {
        return (groups, None);
    };
    let mut ranges: Vec<Range<usize>> = Vec::new();
    let mut base = 0usize;
    for &g in &groups {
        let rows = meta.row_group(g).num_rows() as usize;
        let pages = offsets[g][device_col].page_locations();
        let ColumnIndexMetaData::BYTE_ARRAY(ci) = &index[g][device_col] else {
            ranges.push(base..base + rows);
            base += rows;
            continue;
        };
        for (p, loc) in pages.iter().enumerate() {
            let start = loc.first_row_index as usize;
            let end = pages
                .get(p + 1)
                .map_or(rows, |next| next.first_row_index as usize);
            if holds_device(ci.min_value(p), ci.max_value(p)) {
                ranges.push(base + start..base + end);
            }
        }
        base += rows;
    }
    (
        groups,
        Some(RowSelection::from_consecutive_ranges(
            ranges.into_iter(),
            base,
        )),
    )
}
