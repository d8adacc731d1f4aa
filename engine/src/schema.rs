//! The Arrow schema of the `readings` table and the conversion of decoded batches
//! into it.

use std::sync::{Arc, LazyLock};

use arrow::array::{
    ArrayRef, BooleanArray, Float64Array, RecordBatch, StringArray, StringBuilder,
    TimestampNanosecondArray,
};
use arrow::buffer::{Buffer, OffsetBuffer, ScalarBuffer};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use wattdb_storage::{ReadingBatch, StrColumn};

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

/// The schema of the rollup tables, one row per plug and bucket.
pub fn rollup_schema() -> SchemaRef {
    Arc::clone(&ROLLUP_SCHEMA)
}

/// The schema of the files of `tier`.
pub fn tier_schema(tier: wattdb_storage::Tier) -> SchemaRef {
    match tier {
        wattdb_storage::Tier::Raw => readings_schema(),
        _ => rollup_schema(),
    }
}

/// Converts several decoded batches into one Arrow record batch.
pub fn to_record_batch(parts: &[&ReadingBatch]) -> RecordBatch {
    let rows: usize = parts.iter().map(|b| b.len()).sum();
    let device_id = non_null_strings(parts.iter().map(|b| &b.device_id), rows);
    let mut ts = Vec::with_capacity(rows);
    let mut voltage = Vec::with_capacity(rows);
    let mut current = Vec::with_capacity(rows);
    let mut power = Vec::with_capacity(rows);
    let mut energy = Vec::with_capacity(rows);
    let mut relay = Vec::with_capacity(rows);
    for b in parts {
        ts.extend_from_slice(&b.ts);
        voltage.extend_from_slice(&b.voltage);
        current.extend_from_slice(&b.current);
        power.extend_from_slice(&b.power);
        energy.extend_from_slice(&b.energy);
        relay.extend_from_slice(&b.relay_on);
    }
    let columns: Vec<ArrayRef> = vec![
        Arc::new(device_id),
        Arc::new(TimestampNanosecondArray::from(ts).with_timezone("UTC")),
        Arc::new(Float64Array::from(voltage)),
        Arc::new(Float64Array::from(current)),
        Arc::new(Float64Array::from(power)),
        Arc::new(Float64Array::from(energy)),
        Arc::new(BooleanArray::from(relay)),
        Arc::new(tag_strings(parts.iter().map(|b| &b.location), rows)),
        Arc::new(tag_strings(parts.iter().map(|b| &b.device_type), rows)),
    ];
    // The columns are built to match the schema, so this cannot fail; fall back to an
    // empty batch rather than panic if that ever changes.
    RecordBatch::try_new(readings_schema(), columns)
        .unwrap_or_else(|_| RecordBatch::new_empty(readings_schema()))
}

/// A non-null string array made straight from the arenas: one copy of the bytes, no
/// per-value work beyond the offsets.
fn non_null_strings<'a>(cols: impl Iterator<Item = &'a StrColumn>, rows: usize) -> StringArray {
    let mut offsets: Vec<i32> = Vec::with_capacity(rows + 1);
    let mut data: Vec<u8> = Vec::new();
    offsets.push(0);
    for c in cols {
        let base = data.len() as i32;
        data.extend_from_slice(c.data().as_bytes());
        offsets.extend(c.ends().iter().map(|&e| base + e as i32));
    }
    let offsets = OffsetBuffer::new(ScalarBuffer::from(offsets));
    // Valid UTF-8 (it came from `String`s) and monotonic offsets by construction.
    StringArray::try_new(offsets, Buffer::from(data), None)
        .unwrap_or_else(|_| StringArray::from(Vec::<&str>::new()))
}

fn tag_strings<'a>(cols: impl Iterator<Item = &'a StrColumn>, rows: usize) -> StringArray {
    let cols: Vec<&StrColumn> = cols.collect();
    if cols.iter().all(|c| c.all_empty()) {
        return StringArray::new_null(rows);
    }
    let bytes = cols.iter().map(|c| c.data().len()).sum();
    let mut b = StringBuilder::with_capacity(rows, bytes);
    for c in cols {
        for s in c.iter() {
            if s.is_empty() {
                b.append_null();
            } else {
                b.append_value(s);
            }
        }
    }
    b.finish()
}
