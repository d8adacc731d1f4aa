//! Simulated plug readings as one Arrow record batch in the raw readings schema,
//! shared by the Parquet size test and the Parquet encoding benchmark.
#![allow(dead_code, clippy::unwrap_used)]

use std::sync::Arc;

use arrow::array::{
    ArrayRef, BooleanArray, Float64Array, RecordBatch, StringArray, TimestampNanosecondArray,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use wattdb_benches::simulator::{Fleet, FleetConfig};

pub fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("device_id", DataType::Utf8, false),
        Field::new(
            "ts",
            DataType::Timestamp(TimeUnit::Nanosecond, Some("UTC".into())),
            false,
        ),
        Field::new("voltage", DataType::Float64, false),
        Field::new("current", DataType::Float64, false),
        Field::new("power", DataType::Float64, false),
        Field::new("energy", DataType::Float64, true),
        Field::new("relay_on", DataType::Boolean, true),
        Field::new("location", DataType::Utf8, true),
        Field::new("device_type", DataType::Utf8, true),
    ]))
}

/// `seconds` simulated seconds of `plugs` plugs reporting every second, in arrival
/// order.
pub fn readings(plugs: u32, seconds: u32) -> RecordBatch {
    let mut fleet = Fleet::new(FleetConfig {
        plugs,
        seed: 7,
        ..FleetConfig::default()
    });
    let (mut id, mut ts, mut v, mut c, mut p, mut e, mut r, mut loc, mut ty) = (
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
    );
    let mut push = |x: &wattdb_benches::simulator::Reading<'_>| {
        id.push(x.device_id().to_owned());
        ts.push(x.ts);
        v.push(x.voltage());
        c.push(x.current());
        p.push(x.power());
        e.push(Some(x.energy()));
        r.push(Some(x.relay_on));
        loc.push(Some(x.plug.location()));
        ty.push(Some(format!("{:?}", x.plug.device_type()).to_lowercase()));
    };
    for _ in 0..seconds {
        fleet.next_second(&mut push);
    }
    fleet.flush(&mut push);
    let cols: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from(id)),
        Arc::new(TimestampNanosecondArray::from(ts).with_timezone("UTC")),
        Arc::new(Float64Array::from(v)),
        Arc::new(Float64Array::from(c)),
        Arc::new(Float64Array::from(p)),
        Arc::new(Float64Array::from(e)),
        Arc::new(BooleanArray::from(r)),
        Arc::new(StringArray::from(loc)),
        Arc::new(StringArray::from(ty)),
    ];
    RecordBatch::try_new(schema(), cols).unwrap()
}
