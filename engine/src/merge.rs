//! Merging the rows of rollup files into one row per plug and bucket.
//!
//! A persist cycle writes, for a plug's open buckets (those its newest persisted reading
//! lies in), only what its new readings add: a *partial* row
//! ([`crate::rollups::Row::partial`]). Every other row is *whole*: it holds the bucket
//! as of its file, and replaces the rows of lower rank. So the row of a plug and bucket
//! is the highest-ranked whole row (or nothing) merged, in rank order, with the partial
//! rows ranked above it, as [`crate::rollup::Partial::merge_from`] merges the partials
//! of consecutive stretches of time: counts and sums add, minima and maxima combine,
//! `energy_first` is the first value there is and `energy_last` the last, `first_ts`
//! and `last_ts` the earliest and latest, and the values of the last reading (and its
//! tags) come from the highest-ranked row. Partial rows are always newer than the rows
//! they add to (a cycle extends a plug only with readings after its newest persisted
//! one), so rank order is time order.
//!
//! Compaction, the query tables, direct reads for charts and recomputations all merge
//! with [`merge_rollup_rows`], on Arrow arrays, so a merge of millions of rows costs a
//! sort of their indices and one pass per column.

use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, ArrowPrimitiveType, AsArray, BooleanArray, PrimitiveArray, RecordBatch,
    new_null_array,
};
use arrow::compute::interleave;
use arrow::datatypes::{
    DataType, Field, Float64Type, Int64Type, Schema, TimeUnit, TimestampNanosecondType,
};
use arrow::error::ArrowError;

use crate::schema::{rollup_col as rc, rollup_file_schema};

/// How a column of the rows of one plug and bucket merges: the one definition that
/// [`merge_rollup_rows`] and the query tables' merge (in DataFusion) both follow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rule {
    /// The value of the highest-ranked row (keys, the last reading's values and tags).
    Last,
    Sum,
    Min,
    Max,
    /// The first value that is not null, in rank order.
    FirstValid,
    /// The last value that is not null, in rank order.
    LastValid,
    /// [`rc::PARTIAL`]: whether the merged row is still partial (no whole row under it).
    Partial,
}

/// The rule of a rollup column (of the file schema).
pub fn rule(column: &str) -> Rule {
    match column {
        rc::COUNT
        | rc::VOLTAGE_SUM
        | rc::CURRENT_SUM
        | rc::POWER_SUM
        | rc::ENERGY_COUNTER_WH
        | rc::ENERGY_WH
        | rc::RELAY_ON_S => Rule::Sum,
        rc::VOLTAGE_MIN | rc::CURRENT_MIN | rc::POWER_MIN | rc::FIRST_TS => Rule::Min,
        rc::VOLTAGE_MAX | rc::CURRENT_MAX | rc::POWER_MAX | rc::LAST_TS => Rule::Max,
        rc::ENERGY_FIRST => Rule::FirstValid,
        rc::ENERGY_LAST => Rule::LastValid,
        rc::PARTIAL => Rule::Partial,
        _ => Rule::Last,
    }
}

/// `b` with a [`rc::PARTIAL`] column (null: whole rows) if it has none.
fn with_partial(b: &RecordBatch) -> Result<RecordBatch, ArrowError> {
    if b.schema().index_of(rc::PARTIAL).is_ok() {
        return Ok(b.clone());
    }
    let mut fields: Vec<Arc<Field>> = b.schema().fields().iter().cloned().collect();
    fields.push(Arc::new(Field::new(rc::PARTIAL, DataType::Boolean, true)));
    let mut columns: Vec<ArrayRef> = b.columns().to_vec();
    columns.push(new_null_array(&DataType::Boolean, b.num_rows()));
    RecordBatch::try_new(Arc::new(Schema::new(fields)), columns)
}

/// The rows of `tagged` (batches of rollup rows with the rank of their source; any
/// projection that holds `device_id` and `bucket`), one per plug and bucket, merged as
/// the module documentation says, sorted by plug and bucket. The result has the columns
/// of the inputs and [`rc::PARTIAL`]: `true` for a plug and bucket with no whole row
/// among the inputs.
pub fn merge_rollup_rows(tagged: &[(u64, RecordBatch)]) -> Result<RecordBatch, ArrowError> {
    // The inputs stay where they are (no concatenated copy): rows are addressed as
    // (input, row) and the output gathered from them.
    let batches: Vec<RecordBatch> = tagged
        .iter()
        .map(|(_, b)| with_partial(b))
        .collect::<Result<_, _>>()?;
    let Some(schema) = batches.first().map(RecordBatch::schema) else {
        return Ok(RecordBatch::new_empty(rollup_file_schema()));
    };
    let named = |b: &RecordBatch, name: &str| -> Result<ArrayRef, ArrowError> {
        b.column_by_name(name)
            .cloned()
            .ok_or_else(|| ArrowError::SchemaError(format!("rollup rows without {name}")))
    };
    let mut devices = Vec::with_capacity(batches.len());
    let mut buckets = Vec::with_capacity(batches.len());
    let mut partials = Vec::with_capacity(batches.len());
    for b in &batches {
        let columns = |s: &Schema| -> Vec<(String, DataType)> {
            s.fields()
                .iter()
                .map(|f| (f.name().clone(), f.data_type().clone()))
                .collect()
        };
        if columns(&b.schema()) != columns(&schema) {
            return Err(ArrowError::SchemaError(
                "rollup rows of different columns".into(),
            ));
        }
        devices.push(named(b, rc::DEVICE_ID)?);
        buckets.push(named(b, rc::BUCKET)?);
        partials.push(named(b, rc::PARTIAL)?);
    }
    let device: Vec<&arrow::array::StringArray> = devices
        .iter()
        .map(|a| a.as_string_opt::<i32>())
        .collect::<Option<_>>()
        .ok_or_else(|| ArrowError::SchemaError("device_id is not a string".into()))?;
    let bucket: Vec<&PrimitiveArray<TimestampNanosecondType>> = buckets
        .iter()
        .map(|a| a.as_primitive_opt::<TimestampNanosecondType>())
        .collect::<Option<_>>()
        .ok_or_else(|| ArrowError::SchemaError("bucket is not a timestamp".into()))?;
    let partial: Vec<&BooleanArray> = partials
        .iter()
        .map(|a| a.as_boolean_opt())
        .collect::<Option<_>>()
        .ok_or_else(|| ArrowError::SchemaError("partial is not a boolean".into()))?;
    let is_partial = |(b, i): Slot| partial[b].is_valid(i as usize) && partial[b].value(i as usize);
    let key = |(b, i): Slot| (device[b].value(i as usize), bucket[b].value(i as usize));

    let n: usize = batches.iter().map(RecordBatch::num_rows).sum();
    let mut order: Vec<Slot> = Vec::with_capacity(n);
    for (b, batch) in batches.iter().enumerate() {
        order.extend((0..batch.num_rows() as u32).map(|i| (b, i)));
    }
    order.sort_unstable_by(|&x, &y| {
        key(x)
            .cmp(&key(y))
            .then(tagged[x.0].0.cmp(&tagged[y.0].0))
            .then(x.cmp(&y))
    });
    // Each plug and bucket: the rows that count (from its highest-ranked whole row on),
    // as a range of `order`, and whether it is still partial.
    let mut groups: Vec<Group> = Vec::new();
    let mut s = 0;
    while s < n {
        let k = key(order[s]);
        let mut e = s + 1;
        while e < n && key(order[e]) == k {
            e += 1;
        }
        let whole = (s..e).rev().find(|&j| !is_partial(order[j]));
        groups.push((whole.unwrap_or(s), e, whole.is_none()));
        s = e;
    }

    let slot = |(b, i): Slot| (b, i as usize);
    let last: Vec<(usize, usize)> = groups.iter().map(|&(_, e, _)| slot(order[e - 1])).collect();
    let mut columns: Vec<ArrayRef> = Vec::with_capacity(schema.fields().len());
    for (c, field) in schema.fields().iter().enumerate() {
        let inputs: Vec<&dyn Array> = batches.iter().map(|b| b.column(c).as_ref()).collect();
        let merged: ArrayRef = match rule(field.name()) {
            Rule::Last => interleave(&inputs, &last)?,
            Rule::Partial => Arc::new(BooleanArray::from_iter(
                groups.iter().map(|&(_, _, p)| Some(p)),
            )),
            r @ (Rule::FirstValid | Rule::LastValid) => {
                // A group with no value takes its last row, which is null there.
                let pick = |&(s, e, _): &Group| {
                    let valid = |x: &&Slot| inputs[x.0].is_valid(x.1 as usize);
                    let rows = &order[s..e];
                    let found = if r == Rule::FirstValid {
                        rows.iter().find(valid)
                    } else {
                        rows.iter().rev().find(valid)
                    };
                    slot(*found.unwrap_or(&order[e - 1]))
                };
                let indices: Vec<(usize, usize)> = groups.iter().map(pick).collect();
                interleave(&inputs, &indices)?
            }
            r => fold_column(&inputs, field.data_type(), r, &groups, &order)?,
        };
        columns.push(merged);
    }
    RecordBatch::try_new(schema, columns)
}

/// A row of the inputs: (input, row).
type Slot = (usize, u32);

/// A plug and bucket: the range of `order` that counts, and whether it stays partial.
type Group = (usize, usize, bool);

/// A [`Rule::Sum`], [`Rule::Min`] or [`Rule::Max`] column, merged per group.
fn fold_column(
    inputs: &[&dyn Array],
    data_type: &DataType,
    rule: Rule,
    groups: &[Group],
    order: &[Slot],
) -> Result<ArrayRef, ArrowError> {
    let unsupported =
        || ArrowError::SchemaError(format!("cannot merge a rollup column of type {data_type}"));
    Ok(match data_type {
        DataType::Float64 => Arc::new(fold::<Float64Type>(
            inputs,
            groups,
            order,
            match rule {
                Rule::Sum => |a, b| a + b,
                Rule::Min => f64::min,
                Rule::Max => f64::max,
                _ => return Err(unsupported()),
            },
        )?),
        DataType::Int64 => Arc::new(fold::<Int64Type>(
            inputs,
            groups,
            order,
            match rule {
                Rule::Sum => i64::saturating_add,
                Rule::Min => i64::min,
                Rule::Max => i64::max,
                _ => return Err(unsupported()),
            },
        )?),
        DataType::Timestamp(TimeUnit::Nanosecond, _) => Arc::new(
            fold::<TimestampNanosecondType>(
                inputs,
                groups,
                order,
                match rule {
                    Rule::Min => i64::min,
                    Rule::Max => i64::max,
                    _ => return Err(unsupported()),
                },
            )?
            .with_data_type(data_type.clone()),
        ),
        _ => return Err(unsupported()),
    })
}

/// One value per group: `f` over the group's values that are not null (null if none).
fn fold<T: ArrowPrimitiveType>(
    inputs: &[&dyn Array],
    groups: &[Group],
    order: &[Slot],
    f: fn(T::Native, T::Native) -> T::Native,
) -> Result<PrimitiveArray<T>, ArrowError> {
    let arrays: Vec<&PrimitiveArray<T>> = inputs
        .iter()
        .map(|a| a.as_primitive_opt::<T>())
        .collect::<Option<_>>()
        .ok_or_else(|| ArrowError::SchemaError("rollup inputs of different types".into()))?;
    Ok(groups
        .iter()
        .map(|&(s, e, _)| {
            order[s..e]
                .iter()
                .filter(|&&(b, i)| arrays[b].is_valid(i as usize))
                .map(|&(b, i)| arrays[b].value(i as usize))
                .reduce(f)
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{AsArray, BooleanArray, RecordBatch};
    use arrow::datatypes::{Float64Type, Int64Type, TimestampNanosecondType};

    use super::merge_rollup_rows;
    use crate::rollup::{Partial, Resolution, RollupConfig, Sample, compute};
    use crate::rollups::{Row, batch_to_rows, rows_to_batch};
    use crate::schema::rollup_col as rc;

    fn sample(ts: i64, power: f64, energy: Option<f64>) -> Sample {
        Sample {
            ts,
            voltage: 230.0 + power / 100.0,
            current: power / 230.0,
            power,
            energy,
            relay_on: Some(power > 0.0),
        }
    }

    fn row(device: &str, p: Partial, partial: bool, location: &str) -> Row {
        Row {
            device: Arc::from(device),
            p,
            location: Some(Arc::from(location)),
            device_type: None,
            partial,
        }
    }

    /// One plug's readings split in three stretches: a whole row for the first, partial
    /// rows for the others, in three sources of rising rank (given out of order). The
    /// merge equals the partial of all readings at once.
    #[test]
    fn partial_rows_merge_into_the_row_of_all_readings() {
        let cfg = RollupConfig::default();
        let s: Vec<Sample> = (0..30)
            .map(|i| {
                let energy = (i % 4 != 1).then_some(f64::from(i) * 0.5);
                sample(
                    i64::from(i) * 1_000_000_000,
                    f64::from(i % 7) * 10.0,
                    energy,
                )
            })
            .collect();
        let one = |samples: &[Sample], prev: Option<&Sample>, prev_energy| {
            let mut p = compute(Resolution::Minute, prev, prev_energy, samples, &cfg);
            assert_eq!(p.len(), 1);
            p.remove(0)
        };
        let whole = one(&s, None, None);
        let a = one(&s[..10], None, None);
        let b = one(&s[10..21], Some(&s[9]), Some(4.0));
        let c = one(&s[21..], Some(&s[20]), Some(10.0));
        let batch = |rows: Vec<Row>| rows_to_batch(&rows).unwrap();
        let other = |bucket: i64, partial| {
            let mut p = one(&s[..3], None, None);
            p.bucket = bucket;
            row("plug-b", p, partial, "x")
        };
        let tagged = vec![
            (
                7,
                batch(vec![
                    row("plug-a", c, true, "kitchen"),
                    other(60_000_000_000, true),
                ]),
            ),
            (
                2,
                batch(vec![row("plug-a", a, false, "hall"), other(0, false)]),
            ),
            (
                5,
                batch(vec![row("plug-a", b, true, "hall"), other(0, true)]),
            ),
        ];
        let merged = merge_rollup_rows(&tagged).unwrap();
        let rows = batch_to_rows(&merged).unwrap();
        assert_eq!(rows.len(), 3, "one row per plug and bucket");
        let got = &rows[0];
        assert_eq!(&*got.device, "plug-a");
        assert!(!got.partial, "a whole row lies under the partial ones");
        assert_eq!(
            got.location.as_deref(),
            Some("kitchen"),
            "tags of the newest row"
        );
        assert_eq!(got.p.count, whole.count);
        assert_eq!(got.p.first_ts, whole.first_ts);
        assert_eq!(got.p.last_ts, whole.last_ts);
        assert_eq!(got.p.energy_first, whole.energy_first);
        assert_eq!(got.p.energy_last, whole.energy_last);
        for (x, y) in [
            (got.p.power_sum, whole.power_sum),
            (got.p.power_min, whole.power_min),
            (got.p.power_max, whole.power_max),
            (got.p.voltage_sum, whole.voltage_sum),
            (got.p.energy_wh, whole.energy_wh),
            (got.p.energy_counter_wh, whole.energy_counter_wh),
            (got.p.relay_on_s, whole.relay_on_s),
            (got.p.power_last, whole.power_last),
        ] {
            assert!((x - y).abs() < 1e-9, "{x} != {y}");
        }
        // plug-b, minute 0: its whole row at rank 2 is replaced by nothing newer than
        // the partial of rank 5, which adds to it; minute 1: partial only.
        assert_eq!(rows[1].p.count, 6);
        assert!(!rows[1].partial);
        assert_eq!((rows[2].p.count, rows[2].partial), (3, true));
    }

    /// A whole row replaces every row ranked under it, partial or not.
    #[test]
    fn a_whole_row_replaces_the_rows_under_it() {
        let cfg = RollupConfig::default();
        let s: Vec<Sample> = (0..6)
            .map(|i| sample(i * 1_000_000_000, 5.0, None))
            .collect();
        let p = |r: std::ops::Range<usize>| {
            compute(Resolution::Minute, None, None, &s[r], &cfg).remove(0)
        };
        let tagged = vec![
            (1, rows_to_batch(&[row("d", p(0..2), false, "a")]).unwrap()),
            (2, rows_to_batch(&[row("d", p(2..4), true, "b")]).unwrap()),
            (3, rows_to_batch(&[row("d", p(0..5), false, "c")]).unwrap()),
        ];
        let merged = merge_rollup_rows(&tagged).unwrap();
        assert_eq!(merged.num_rows(), 1);
        let count = merged
            .column_by_name(rc::COUNT)
            .unwrap()
            .as_primitive::<Int64Type>();
        assert_eq!(count.value(0), 5);
        let partial = merged.column_by_name(rc::PARTIAL).unwrap().as_boolean();
        assert!(!partial.value(0));
        let first = merged
            .column_by_name(rc::FIRST_TS)
            .unwrap()
            .as_primitive::<TimestampNanosecondType>();
        assert_eq!(first.value(0), 0);
    }

    /// A projection without the partial column (a file written before it existed, or
    /// read for a few columns) merges as whole rows: the newest wins.
    #[test]
    fn rows_without_the_partial_column_are_whole() {
        let cfg = RollupConfig::default();
        let s: Vec<Sample> = (0..4)
            .map(|i| sample(i * 1_000_000_000, 5.0, None))
            .collect();
        let p = compute(Resolution::Minute, None, None, &s, &cfg).remove(0);
        let full = rows_to_batch(&[row("d", p.clone(), false, "a")]).unwrap();
        let old = full.project(&[0, 1, 11]).unwrap();
        let newer = rows_to_batch(&[row("d", p, true, "b")])
            .unwrap()
            .project(&[0, 1, 11, 25]);
        let merged = merge_rollup_rows(&[(1, old), (2, newer.unwrap())]).unwrap();
        let sum = merged.column(2).as_primitive::<Float64Type>();
        assert_eq!(
            sum.value(0),
            2.0 * 4.0 * 5.0,
            "whole row plus the partial one"
        );
        assert_eq!(
            merged.column(3).as_boolean(),
            &BooleanArray::from(vec![false])
        );
        let _: &RecordBatch = &merged;
    }
}
