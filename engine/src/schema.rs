//! The Arrow schema of the `readings` table and the conversion of decoded batches
//! into it.

use std::sync::{Arc, LazyLock};

use arrow::array::{
    ArrayBuilder, ArrayRef, BooleanBuilder, Float64Builder, RecordBatch, StringBuilder,
    TimestampNanosecondBuilder,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use wattdb_storage::ReadingBatch;

/// Column names of `readings`, in order.
pub mod col {
    pub const DEVICE_ID: &str = "device_id";
    pub const TS: &str = "ts";
    pub const VOLTAGE: &str = "voltage";
    pub const CURRENT: &str = "current";
    pub const POWER: &str = "power";
    pub const ENERGY: &str = "energy";
    pub const RELAY_ON: &str = "relay_on";
    pub const LOCATION: &str = "location";
    pub const DEVICE_TYPE: &str = "device_type";
}

static SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| {
    Arc::new(Schema::new(vec![
        Field::new(col::DEVICE_ID, DataType::Utf8, false),
        Field::new(
            col::TS,
            DataType::Timestamp(TimeUnit::Nanosecond, Some("UTC".into())),
            false,
        ),
        Field::new(col::VOLTAGE, DataType::Float64, false),
        Field::new(col::CURRENT, DataType::Float64, false),
        Field::new(col::POWER, DataType::Float64, false),
        Field::new(col::ENERGY, DataType::Float64, true),
        Field::new(col::RELAY_ON, DataType::Boolean, true),
        Field::new(col::LOCATION, DataType::Utf8, true),
        Field::new(col::DEVICE_TYPE, DataType::Utf8, true),
    ]))
});

/// The schema of the raw `readings` table.
pub fn readings_schema() -> SchemaRef {
    Arc::clone(&SCHEMA)
}

/// Column names of the rollup tables (`readings_1m`, `readings_1h`, `readings_1d`), in
/// order. See [`crate::rollup`] for what each holds.
pub mod rollup_col {
    pub const DEVICE_ID: &str = "device_id";
    pub const BUCKET: &str = "bucket";
    pub const COUNT: &str = "count";
    pub const VOLTAGE_MIN: &str = "voltage_min";
    pub const VOLTAGE_MAX: &str = "voltage_max";
    pub const VOLTAGE_SUM: &str = "voltage_sum";
    pub const CURRENT_MIN: &str = "current_min";
    pub const CURRENT_MAX: &str = "current_max";
    pub const CURRENT_SUM: &str = "current_sum";
    pub const POWER_MIN: &str = "power_min";
    pub const POWER_MAX: &str = "power_max";
    pub const POWER_SUM: &str = "power_sum";
    pub const ENERGY_FIRST: &str = "energy_first";
    pub const ENERGY_LAST: &str = "energy_last";
    pub const ENERGY_COUNTER_WH: &str = "energy_counter_wh";
    pub const ENERGY_WH: &str = "energy_wh";
    pub const RELAY_ON_S: &str = "relay_on_s";
    pub const FIRST_TS: &str = "first_ts";
    pub const LAST_TS: &str = "last_ts";
    pub const VOLTAGE_LAST: &str = "voltage_last";
    pub const CURRENT_LAST: &str = "current_last";
    pub const POWER_LAST: &str = "power_last";
    pub const RELAY_ON_LAST: &str = "relay_on_last";
    pub const LOCATION: &str = "location";
    pub const DEVICE_TYPE: &str = "device_type";
    /// In files only: `true` when the row adds to the rows of lower rank of the same
    /// plug and bucket, instead of replacing them (see [`crate::rollups`]).
    pub const PARTIAL: &str = "partial";
}

static ROLLUP_SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| {
    use rollup_col as c;
    let time = || DataType::Timestamp(TimeUnit::Nanosecond, Some("UTC".into()));
    let float = |name: &str| Field::new(name, DataType::Float64, false);
    Arc::new(Schema::new(vec![
        Field::new(c::DEVICE_ID, DataType::Utf8, false),
        Field::new(c::BUCKET, time(), false),
        Field::new(c::COUNT, DataType::Int64, false),
        float(c::VOLTAGE_MIN),
        float(c::VOLTAGE_MAX),
        float(c::VOLTAGE_SUM),
        float(c::CURRENT_MIN),
        float(c::CURRENT_MAX),
        float(c::CURRENT_SUM),
        float(c::POWER_MIN),
        float(c::POWER_MAX),
        float(c::POWER_SUM),
        Field::new(c::ENERGY_FIRST, DataType::Float64, true),
        Field::new(c::ENERGY_LAST, DataType::Float64, true),
        float(c::ENERGY_COUNTER_WH),
        float(c::ENERGY_WH),
        float(c::RELAY_ON_S),
        Field::new(c::FIRST_TS, time(), false),
        Field::new(c::LAST_TS, time(), false),
        float(c::VOLTAGE_LAST),
        float(c::CURRENT_LAST),
        float(c::POWER_LAST),
        Field::new(c::RELAY_ON_LAST, DataType::Boolean, true),
        Field::new(c::LOCATION, DataType::Utf8, true),
        Field::new(c::DEVICE_TYPE, DataType::Utf8, true),
    ]))
});

static ROLLUP_FILE_SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| {
    let mut fields: Vec<Field> = ROLLUP_SCHEMA
        .fields()
        .iter()
        .map(|f| f.as_ref().clone())
        .collect();
    fields.push(Field::new(rollup_col::PARTIAL, DataType::Boolean, true));
    Arc::new(Schema::new(fields))
});

/// The schema of the rollup tables, one row per plug and bucket.
pub fn rollup_schema() -> SchemaRef {
    Arc::clone(&ROLLUP_SCHEMA)
}

/// The schema of rollup files: the table's columns and [`rollup_col::PARTIAL`]. A file
/// may hold more than one row of a plug and bucket, merged as [`crate::merge_rollup_rows`]
/// merges them; files written before the column existed read as having it null (a
/// whole row).
pub fn rollup_file_schema() -> SchemaRef {
    Arc::clone(&ROLLUP_FILE_SCHEMA)
}

/// The schema of the table of `tier` (`readings`, `readings_1m`, ...).
pub fn tier_schema(tier: wattdb_storage::Tier) -> SchemaRef {
    match tier {
        wattdb_storage::Tier::Raw => readings_schema(),
        _ => rollup_schema(),
    }
}

/// The schema of the files of `tier`.
pub fn tier_file_schema(tier: wattdb_storage::Tier) -> SchemaRef {
    match tier {
        wattdb_storage::Tier::Raw => readings_schema(),
        _ => rollup_file_schema(),
    }
}

/// Converts several decoded batches into one Arrow record batch.
pub fn to_record_batch(parts: &[&ReadingBatch]) -> RecordBatch {
    let mut columns = ReadingColumns::with_capacity(parts.iter().map(|b| b.len()).sum());
    for b in parts {
        columns.append(b);
    }
    columns.finish()
}

/// The builders' arrays as a `readings` record batch: `finish` takes their buffers (no
/// copy), `finish_cloned` copies them.
macro_rules! readings_batch {
    ($columns:expr, $finish:ident) => {{
        let c = $columns;
        let arrays: Vec<ArrayRef> = vec![
            Arc::new(c.device_id.$finish()),
            Arc::new(c.ts.$finish().with_timezone("UTC")),
            Arc::new(c.voltage.$finish()),
            Arc::new(c.current.$finish()),
            Arc::new(c.power.$finish()),
            Arc::new(c.energy.$finish()),
            Arc::new(c.relay_on.$finish()),
            Arc::new(c.location.$finish()),
            Arc::new(c.device_type.$finish()),
        ];
        // Built to match the schema, so this cannot fail; an empty batch rather than a
        // panic if that ever changes.
        RecordBatch::try_new(readings_schema(), arrays)
            .unwrap_or_else(|_| RecordBatch::new_empty(readings_schema()))
    }};
}

/// Decoded batches appended as the columns of `readings`, in Arrow builders: the one
/// conversion from [`ReadingBatch`] to Arrow (an empty tag is a null).
#[derive(Debug)]
pub struct ReadingColumns {
    device_id: StringBuilder,
    ts: TimestampNanosecondBuilder,
    voltage: Float64Builder,
    current: Float64Builder,
    power: Float64Builder,
    energy: Float64Builder,
    relay_on: BooleanBuilder,
    location: StringBuilder,
    device_type: StringBuilder,
}

/// Bytes per row of the string columns' values: what a new set of builders is sized by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StrWidths {
    pub device_id: usize,
    pub location: usize,
    pub device_type: usize,
}

impl Default for StrWidths {
    /// Plug ids of 16 bytes, no tags.
    fn default() -> Self {
        Self {
            device_id: 16,
            location: 0,
            device_type: 0,
        }
    }
}

impl ReadingColumns {
    /// Room for `rows` rows (plug ids of 16 bytes, no tags) before any builder grows.
    pub fn with_capacity(rows: usize) -> Self {
        Self::with_widths(rows, StrWidths::default())
    }

    /// Room for `rows` rows whose strings are `widths` bytes long before any builder
    /// grows.
    pub fn with_widths(rows: usize, widths: StrWidths) -> Self {
        Self {
            device_id: StringBuilder::with_capacity(rows, rows * widths.device_id),
            ts: TimestampNanosecondBuilder::with_capacity(rows),
            voltage: Float64Builder::with_capacity(rows),
            current: Float64Builder::with_capacity(rows),
            power: Float64Builder::with_capacity(rows),
            energy: Float64Builder::with_capacity(rows),
            relay_on: BooleanBuilder::with_capacity(rows),
            location: StringBuilder::with_capacity(rows, rows * widths.location),
            device_type: StringBuilder::with_capacity(rows, rows * widths.device_type),
        }
    }

    /// The string bytes per row so far, rounded up, with an eighth to spare: the
    /// widths for the next builders of rows like these.
    pub fn widths(&self) -> StrWidths {
        let rows = self.len().max(1);
        let width = |b: &StringBuilder| {
            let bytes = b.values_slice().len();
            (bytes + bytes / 8).div_ceil(rows)
        };
        StrWidths {
            device_id: width(&self.device_id),
            location: width(&self.location),
            device_type: width(&self.device_type),
        }
    }

    pub fn len(&self) -> usize {
        ArrayBuilder::len(&self.ts)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn append(&mut self, b: &ReadingBatch) {
        for id in b.device_id.iter() {
            self.device_id.append_value(id);
        }
        self.ts.append_slice(&b.ts);
        self.voltage.append_slice(&b.voltage);
        self.current.append_slice(&b.current);
        self.power.append_slice(&b.power);
        for &e in &b.energy {
            self.energy.append_option(e);
        }
        for &r in &b.relay_on {
            self.relay_on.append_option(r);
        }
        for (builder, column) in [
            (&mut self.location, &b.location),
            (&mut self.device_type, &b.device_type),
        ] {
            if column.all_empty() {
                builder.append_nulls(column.len());
            } else {
                for s in column.iter() {
                    builder.append_option((!s.is_empty()).then_some(s));
                }
            }
        }
    }

    /// The rows as a record batch, taking the builders' buffers (no copy); the
    /// builders start over empty.
    pub fn finish(&mut self) -> RecordBatch {
        readings_batch!(self, finish)
    }

    /// A copy of the rows as a record batch.
    pub fn finish_cloned(&self) -> RecordBatch {
        readings_batch!(self, finish_cloned)
    }
}
