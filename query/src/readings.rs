//! The `readings` table: the in-memory buffer, rows being persisted, and the raw
//! Parquet files of the manifest, as one table with duplicates resolved.
//!
//! Every source holds each `(device_id, ts)` at most once; across sources the newest
//! wins: the buffer, then rows being persisted, then files by descending id. When the
//! sources a query touches cannot hold the same key — their time or device ranges do
//! not overlap, the common case — the scan is a plain union. Otherwise (late data,
//! rewrites of persisted readings, a replay after a crash) each row is tagged with its
//! source's rank, and [`KeepNewest`] keeps the newest copy of each key from the rows
//! sorted by key and rank, which DataFusion sorts under the query's memory pool.

use std::sync::Arc;

use arrow::array::{AsArray, RecordBatch, UInt64Array};
use arrow::datatypes::TimestampNanosecondType;
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use async_trait::async_trait;
use datafusion::catalog::Session;
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::common::{Column, DFSchema, ScalarValue};
use datafusion::datasource::listing::PartitionedFile;
use datafusion::datasource::memory::{MemTable, MemorySourceConfig};
use datafusion::datasource::physical_plan::{FileScanConfigBuilder, ParquetSource};
use datafusion::datasource::source::DataSourceExec;
use datafusion::datasource::table_schema::TableSchema;
use datafusion::datasource::{TableProvider, TableType, provider_as_source};
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::execution::object_store::ObjectStoreUrl;
use datafusion::execution::session_state::SessionState;
use datafusion::logical_expr::utils::conjunction;
use datafusion::logical_expr::{
    BinaryExpr, Expr, ExprFunctionExt, LogicalPlanBuilder, Operator, TableProviderFilterPushDown,
};
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_expr::expressions::Column as PhysicalColumn;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::projection::ProjectionExec;
use datafusion::physical_plan::union::UnionExec;
use datafusion::prelude::{col, lit};
use wattdb_engine::{Engine, FileMeta, ReadView, Tier, tier_file_schema, tier_schema};

use crate::newest::KeepNewest;

/// The URL under which the engine's object store is registered with DataFusion.
pub const STORE_URL: &str = "wattdb://store/";

const RANK: &str = "_rank";
const WHOLE_RANK: &str = "_whole_rank";
const BUFFER_RANK: u64 = u64::MAX;
const FROZEN_RANK: u64 = u64::MAX - 1;

/// `readings`: every acknowledged reading, duplicates resolved; or, for a rollup tier,
/// `readings_1m`, `readings_1h` or `readings_1d`: the rollup rows, one per plug and
/// bucket, from the files and, where readings are not yet persisted, computed now
/// (ranked above every file, as the buffer is for `readings`).
#[derive(Debug)]
pub struct ReadingsTable {
    engine: Engine,
    tier: Tier,
    schema: SchemaRef,
}

impl ReadingsTable {
    /// The raw `readings` table.
    pub fn new(engine: Engine) -> Self {
        Self::of_tier(engine, Tier::Raw)
    }

    /// The table of `tier`.
    pub fn of_tier(engine: Engine, tier: Tier) -> Self {
        Self {
            engine,
            tier,
            schema: tier_schema(tier),
        }
    }

    /// The table name of a tier: `readings`, `readings_1m`, `readings_1h`, `readings_1d`.
    pub fn name(tier: Tier) -> String {
        match tier {
            Tier::Raw => "readings".to_owned(),
            t => format!("readings_{}", t.name()),
        }
    }
}

#[async_trait]
impl TableProvider for ReadingsTable {
    fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> DfResult<Vec<TableProviderFilterPushDown>> {
        // Every filter prunes sources and Parquet row groups; DataFusion still applies
        // them row by row.
        Ok(vec![TableProviderFilterPushDown::Inexact; filters.len()])
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let filters: Vec<Expr> = filters.iter().map(unqualify).collect::<DfResult<_>>()?;
        let time = self.tier.time_column();
        let (from, to) = time_range(&filters, time);
        let devices = device_range(&filters);
        let (view, live) = match self.tier {
            Tier::Raw => (self.engine.read_view(from, to), None),
            // Rollup rows are in files, and those of the readings not yet persisted
            // are computed now.
            _ => {
                let (manifest, live) = self
                    .engine
                    .live_rollups(
                        self.tier,
                        devices.as_ref().map(|(lo, hi)| (lo.as_str(), hi.as_str())),
                        to,
                    )
                    .await
                    .map_err(|e| DataFusionError::External(Box::new(e)))?;
                let view = ReadView {
                    buffer: Vec::new(),
                    buffer_range: None,
                    frozen: None,
                    manifest,
                };
                (view, live)
            }
        };
        let files: Vec<FileMeta> = view
            .manifest
            .files
            .iter()
            .filter(|f| f.tier == self.tier)
            .filter(|f| from.is_none_or(|t| f.max_ts >= t) && to.is_none_or(|t| f.min_ts <= t))
            .filter(|f| {
                devices.as_ref().is_none_or(|(lo, hi)| {
                    f.max_device.as_str() >= lo.as_str() && f.min_device.as_str() <= hi.as_str()
                })
            })
            .cloned()
            .collect();
        // Sources and their time (and device) ranges, for the overlap test.
        let mut boxes: Vec<SourceBox<'_>> = files
            .iter()
            .map(|f| {
                (
                    f.min_ts,
                    f.max_ts,
                    Some((f.min_device.as_str(), f.max_device.as_str())),
                )
            })
            .collect();
        let mut memory: Vec<(u64, Vec<RecordBatch>)> = Vec::new();
        if let (Tier::Raw, Some(f)) = (self.tier, &view.frozen) {
            boxes.push((f.min_ts, f.max_ts, None));
            memory.push((FROZEN_RANK, f.batches.clone()));
        }
        if let Some((lo, hi)) = view.buffer_range
            && self.tier == Tier::Raw
            && !view.buffer.is_empty()
        {
            boxes.push((lo, hi, None));
            memory.push((BUFFER_RANK, view.buffer.clone()));
        }
        if let Some(rows) = live {
            let (lo, hi) = bucket_range(&rows)?;
            // As files hold them: with the partial column, which a plain union drops.
            boxes.push((lo, hi, None));
            memory.push((BUFFER_RANK, vec![rows]));
        }
        let partitions = state.config().target_partitions().max(1);
        if !overlapping(&mut boxes) {
            let mut inputs: Vec<Arc<dyn ExecutionPlan>> = Vec::new();
            if !files.is_empty() {
                let t = FilesTable::new(files, self.tier, false);
                inputs.push(t.scan(state, projection, &filters, limit).await?);
            }
            let batches: Vec<RecordBatch> = memory
                .into_iter()
                .flat_map(|(_, b)| b)
                .map(|b| table_columns(&self.schema, &b))
                .collect::<DfResult<_>>()?;
            if !batches.is_empty() || inputs.is_empty() {
                inputs.push(MemorySourceConfig::try_new_exec(
                    &split(batches, partitions),
                    Arc::clone(&self.schema),
                    projection.cloned(),
                )?);
            }
            return UnionExec::try_new(inputs);
        }
        self.deduplicating_scan(state, projection, &filters, files, memory, partitions)
            .await
    }
}

impl ReadingsTable {
    /// Plans the scan of overlapping sources: union, tag by rank, then keep the newest
    /// copy (`readings`) or merge the rows of each plug and bucket (rollups).
    async fn deduplicating_scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        files: Vec<FileMeta>,
        memory: Vec<(u64, Vec<RecordBatch>)>,
        partitions: usize,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let state = state
            .as_any()
            .downcast_ref::<SessionState>()
            .ok_or_else(|| DataFusionError::Internal("unexpected session type".into()))?;
        let ranked = ranked_schema(self.tier);
        let mut tagged = Vec::new();
        for (rank, batches) in memory {
            for b in batches {
                tagged.push(with_rank(&ranked, &b, rank)?);
            }
        }
        // Only filters on the key select whole groups of copies; a filter on another
        // column could drop the newest copy, or part of a bucket's rows, and let an
        // older one through. DataFusion applies every filter again to the result.
        let time = self.tier.time_column();
        let predicate = conjunction(
            filters
                .iter()
                .filter(|f| {
                    f.column_refs()
                        .iter()
                        .all(|c| c.name == "device_id" || c.name == time)
                })
                .cloned(),
        );
        let scan = |provider: Arc<dyn TableProvider>| -> DfResult<LogicalPlanBuilder> {
            let b = LogicalPlanBuilder::scan(
                ReadingsTable::name(self.tier),
                provider_as_source(provider),
                None,
            )?;
            match &predicate {
                Some(p) => b.filter(p.clone()),
                None => Ok(b),
            }
        };
        let mem = Arc::new(MemTable::try_new(
            Arc::clone(&ranked),
            split(tagged, partitions),
        )?);
        let mut plan = scan(mem)?;
        if !files.is_empty() {
            let f = scan(Arc::new(FilesTable::new(files, self.tier, true)))?.build()?;
            plan = plan.union(f)?;
        }
        let columns: Vec<Expr> = match projection {
            Some(p) => p
                .iter()
                .map(|&i| col(self.schema.field(i).name()))
                .collect(),
            None => self.schema.fields().iter().map(|f| col(f.name())).collect(),
        };
        if self.tier != Tier::Raw {
            let plan = merged_rollups(plan)?.project(columns)?.build()?;
            return state.create_physical_plan(&plan).await;
        }
        // The newest copy of each key: the query's columns, and the key and rank
        // for KeepNewest, which a projection then drops.
        let names: Vec<String> = columns
            .iter()
            .map(|c| c.schema_name().to_string())
            .collect();
        let mut with_key = columns;
        for name in ["device_id", time, RANK] {
            if !names.iter().any(|n| n == name) {
                with_key.push(col(name));
            }
        }
        let input = state
            .create_physical_plan(&plan.project(with_key)?.build()?)
            .await?;
        let newest: Arc<dyn ExecutionPlan> =
            Arc::new(KeepNewest::try_new(input, "device_id", time, RANK)?);
        let schema = newest.schema();
        let out: Vec<(Arc<dyn PhysicalExpr>, String)> = names
            .into_iter()
            .map(|name| -> DfResult<_> {
                let column: Arc<dyn PhysicalExpr> =
                    Arc::new(PhysicalColumn::new(&name, schema.index_of(&name)?));
                Ok((column, name))
            })
            .collect::<DfResult<_>>()?;
        Ok(Arc::new(ProjectionExec::try_new(out, newest)?))
    }
}

/// The rows of each plug and bucket in `plan` (rollup rows of the file schema, with
/// `_rank`) merged into one, as `wattdb_engine::merge_rollup_rows` merges them: from
/// the highest-ranked whole row on, counts and sums add, minima and maxima combine,
/// `energy_first` is the first value in rank order and `energy_last` the last, and the
/// last reading's values and tags come from the highest-ranked row.
fn merged_rollups(plan: LogicalPlanBuilder) -> DfResult<LogicalPlanBuilder> {
    use datafusion::functions::expr_fn::coalesce;
    use datafusion::functions_aggregate::expr_fn::{max, min, sum};
    use datafusion::functions_aggregate::first_last::{first_value_udaf, last_value_udaf};
    use datafusion::functions_aggregate::min_max::max_udaf;
    use datafusion::logical_expr::expr::{NullTreatment, WindowFunction};
    use datafusion::logical_expr::when;
    use wattdb_engine::schema::rollup_col as rc;
    use wattdb_engine::{MergeRule, merge_rule};

    let key = || vec![col(rc::DEVICE_ID), col(rc::BUCKET)];
    // The rank of the highest-ranked whole row of each plug and bucket, if any.
    let whole_rank = Expr::from(WindowFunction::new(
        max_udaf(),
        vec![
            when(col(rc::PARTIAL).is_true(), lit(ScalarValue::UInt64(None)))
                .otherwise(col(RANK))?,
        ],
    ))
    .partition_by(key())
    .build()?
    .alias(WHOLE_RANK);
    let by_rank = || vec![col(RANK).sort(true, true)];
    let pick = |first: bool, name: &str, nulls: Option<NullTreatment>| -> DfResult<Expr> {
        let f = if first {
            first_value_udaf()
        } else {
            last_value_udaf()
        };
        Ok(f.call(vec![col(name)])
            .order_by(by_rank())
            .null_treatment(nulls)
            .build()?
            .alias(name))
    };
    let mut aggregates: Vec<Expr> = Vec::new();
    for field in wattdb_engine::rollup_schema().fields() {
        let name = field.name().as_str();
        let c = || col(name);
        if key().contains(&c()) {
            continue;
        }
        aggregates.push(match merge_rule(name) {
            MergeRule::Sum => sum(c()).alias(name),
            MergeRule::Min => min(c()).alias(name),
            MergeRule::Max => max(c()).alias(name),
            MergeRule::FirstValid => pick(true, name, Some(NullTreatment::IgnoreNulls))?,
            MergeRule::LastValid => pick(false, name, Some(NullTreatment::IgnoreNulls))?,
            MergeRule::Last => pick(false, name, None)?,
            // Not a table column.
            MergeRule::Partial => continue,
        });
    }
    // Aggregates are nullable; the table's columns that are not get a default that
    // no group ever needs (every group has a row), so the plan keeps the table schema.
    let schema = wattdb_engine::rollup_schema();
    let mut columns: Vec<Expr> = Vec::with_capacity(schema.fields().len());
    for field in schema.fields() {
        let c = col(field.name());
        if field.is_nullable() || key().contains(&c) {
            columns.push(c);
        } else {
            let zero = ScalarValue::new_zero(field.data_type())?;
            columns.push(coalesce(vec![c, lit(zero)]).alias(field.name()));
        }
    }
    plan.window(vec![whole_rank])?
        .filter(
            col(WHOLE_RANK)
                .is_null()
                .or(col(RANK).gt_eq(col(WHOLE_RANK))),
        )?
        .aggregate(key(), aggregates)?
        .project(columns)
}

/// The columns of `schema` (a table's) of `b` (rows as files hold them).
fn table_columns(schema: &SchemaRef, b: &RecordBatch) -> DfResult<RecordBatch> {
    let indices: Vec<usize> = schema
        .fields()
        .iter()
        .map(|f| b.schema().index_of(f.name()))
        .collect::<Result<_, _>>()?;
    Ok(b.project(&indices)?)
}

/// Parquet files of one tier from the manifest, optionally with each file's rank as
/// `_rank` (and then with every column of the files: a rollup file's partial column).
#[derive(Debug)]
struct FilesTable {
    files: Vec<FileMeta>,
    tier: Tier,
    ranked: bool,
    schema: SchemaRef,
}

impl FilesTable {
    fn new(files: Vec<FileMeta>, tier: Tier, ranked: bool) -> Self {
        let schema = if ranked {
            ranked_schema(tier)
        } else {
            tier_schema(tier)
        };
        Self {
            files,
            tier,
            ranked,
            schema,
        }
    }
}

#[async_trait]
impl TableProvider for FilesTable {
    fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> DfResult<Vec<TableProviderFilterPushDown>> {
        Ok(vec![TableProviderFilterPushDown::Inexact; filters.len()])
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let file_schema = if self.ranked {
            tier_file_schema(self.tier)
        } else {
            tier_schema(self.tier)
        };
        let table_schema = if self.ranked {
            TableSchema::builder(Arc::clone(&file_schema))
                .with_table_partition_cols(vec![Arc::new(Field::new(
                    RANK,
                    DataType::UInt64,
                    false,
                ))])
                .build()
        } else {
            TableSchema::from(Arc::clone(&file_schema))
        };
        let mut source = ParquetSource::new(table_schema)
            .with_enable_page_index(true)
            .with_pushdown_filters(true)
            .with_reorder_filters(true);
        // Partition columns cannot prune Parquet pages; leave them to DataFusion.
        let file_filters: Vec<Expr> = filters
            .iter()
            .map(unqualify)
            .collect::<DfResult<Vec<_>>>()?
            .into_iter()
            .filter(|f| !f.column_refs().iter().any(|c| c.name == RANK))
            .collect();
        if let Some(predicate) = conjunction(file_filters) {
            let df_schema = DFSchema::try_from(file_schema.as_ref().clone())?;
            source = source.with_predicate(state.create_physical_expr(predicate, &df_schema)?);
        }
        let n = state
            .config()
            .target_partitions()
            .max(1)
            .min(self.files.len().max(1));
        let mut groups: Vec<Vec<PartitionedFile>> = vec![Vec::new(); n];
        let mut sizes = vec![0u64; n];
        let mut files = self.files.clone();
        files.sort_by_key(|f| std::cmp::Reverse(f.size));
        for f in files {
            // Largest first into the lightest group: balanced scans.
            let i = (0..n).min_by_key(|&i| sizes[i]).unwrap_or(0);
            sizes[i] += f.size;
            let mut pf = PartitionedFile::new(f.path.clone(), f.size);
            if self.ranked {
                pf = pf.with_partition_values(vec![ScalarValue::UInt64(Some(f.rank()))]);
            }
            groups[i].push(pf);
        }
        let config =
            FileScanConfigBuilder::new(ObjectStoreUrl::parse(STORE_URL)?, Arc::new(source))
                .with_file_groups(groups.into_iter().map(Into::into).collect())
                .with_projection_indices(projection.cloned())?
                .with_limit(limit)
                .build();
        Ok(DataSourceExec::from_data_source(config))
    }
}

fn ranked_schema(tier: Tier) -> SchemaRef {
    let mut fields: Vec<Field> = tier_file_schema(tier)
        .fields()
        .iter()
        .map(|f| f.as_ref().clone())
        .collect();
    fields.push(Field::new(RANK, DataType::UInt64, false));
    Arc::new(Schema::new(fields))
}

fn with_rank(schema: &SchemaRef, b: &RecordBatch, rank: u64) -> DfResult<RecordBatch> {
    let mut cols = b.columns().to_vec();
    cols.push(Arc::new(UInt64Array::from_value(rank, b.num_rows())));
    Ok(RecordBatch::try_new(Arc::clone(schema), cols)?)
}

/// A source's time range and, for files, its device id range.
type SourceBox<'a> = (i64, i64, Option<(&'a str, &'a str)>);

/// The oldest and newest bucket of rollup rows.
fn bucket_range(rows: &RecordBatch) -> DfResult<(i64, i64)> {
    let buckets = rows
        .column_by_name("bucket")
        .and_then(|c| c.as_primitive_opt::<TimestampNanosecondType>())
        .ok_or_else(|| DataFusionError::Internal("rollup rows without bucket".into()))?;
    let lo = arrow::compute::min(buckets).unwrap_or(i64::MIN);
    let hi = arrow::compute::max(buckets).unwrap_or(i64::MAX);
    Ok((lo, hi))
}

/// Whether any two sources may hold the same `(device_id, ts)`.
fn overlapping(boxes: &mut [SourceBox<'_>]) -> bool {
    if boxes.len() < 2 {
        return false;
    }
    boxes.sort_by_key(|b| b.0);
    for i in 0..boxes.len() {
        for j in i + 1..boxes.len() {
            if boxes[j].0 > boxes[i].1 {
                break;
            }
            let devices_meet = match (boxes[i].2, boxes[j].2) {
                (Some((a_lo, a_hi)), Some((b_lo, b_hi))) => a_lo <= b_hi && b_lo <= a_hi,
                _ => true,
            };
            if devices_meet {
                return true;
            }
        }
    }
    false
}

/// Removes table qualifiers, so filters apply to the inner sources.
pub(crate) fn unqualify(e: &Expr) -> DfResult<Expr> {
    e.clone()
        .transform(|e| {
            Ok(match e {
                Expr::Column(c) if c.relation.is_some() => {
                    Transformed::yes(Expr::Column(Column::new_unqualified(c.name)))
                }
                e => Transformed::no(e),
            })
        })
        .map(|t| t.data)
}

/// Deals batches round-robin into `n` partitions, so a scan uses every core.
fn split(batches: Vec<RecordBatch>, n: usize) -> Vec<Vec<RecordBatch>> {
    let mut parts: Vec<Vec<RecordBatch>> = vec![Vec::new(); n.min(batches.len()).max(1)];
    let len = parts.len();
    for (i, b) in batches.into_iter().enumerate() {
        parts[i % len].push(b);
    }
    parts
}

/// The inclusive range of the `time` column the filters allow (nanoseconds; `None` =
/// open).
fn time_range(filters: &[Expr], time: &str) -> (Option<i64>, Option<i64>) {
    let (mut from, mut to) = (None::<i64>, None::<i64>);
    for f in filters {
        match time_bound(f, time) {
            Some(Bound::From(t)) => from = Some(from.map_or(t, |x| x.max(t))),
            Some(Bound::To(t)) => to = Some(to.map_or(t, |x| x.min(t))),
            Some(Bound::Exactly(t)) => {
                from = Some(from.map_or(t, |x| x.max(t)));
                to = Some(to.map_or(t, |x| x.min(t)));
            }
            None => {}
        }
    }
    (from, to)
}

/// The device id range the filters allow: from `device_id = 'x'`, `IN (…)` and `OR`s
/// of those.
fn device_range(filters: &[Expr]) -> Option<(String, String)> {
    filters.iter().find_map(|f| {
        let values = device_values(f)?;
        let lo = values.iter().min()?.clone();
        let hi = values.iter().max()?.clone();
        Some((lo, hi))
    })
}

/// The device ids an expression limits `device_id` to, if it does.
fn device_values(e: &Expr) -> Option<Vec<String>> {
    let literal = |e: &Expr| match e {
        Expr::Literal(ScalarValue::Utf8(Some(v)) | ScalarValue::Utf8View(Some(v)), _) => {
            Some(v.clone())
        }
        _ => None,
    };
    let is_device = |e: &Expr| matches!(e, Expr::Column(c) if c.name == "device_id");
    match e {
        Expr::BinaryExpr(BinaryExpr {
            left,
            op: Operator::Eq,
            right,
        }) => {
            if is_device(left) {
                literal(right).map(|v| vec![v])
            } else if is_device(right) {
                literal(left).map(|v| vec![v])
            } else {
                None
            }
        }
        Expr::BinaryExpr(BinaryExpr {
            left,
            op: Operator::Or,
            right,
        }) => {
            let mut l = device_values(left)?;
            l.extend(device_values(right)?);
            Some(l)
        }
        Expr::InList(l) if !l.negated && is_device(&l.expr) => l.list.iter().map(literal).collect(),
        _ => None,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Bound {
    From(i64),
    To(i64),
    Exactly(i64),
}

/// Reads `time <op> literal` (either side) as an inclusive bound in nanoseconds.
fn time_bound(e: &Expr, time: &str) -> Option<Bound> {
    let Expr::BinaryExpr(BinaryExpr { left, op, right }) = e else {
        return None;
    };
    let (op, lit) = match (left.as_ref(), right.as_ref()) {
        (Expr::Column(c), Expr::Literal(v, _)) if c.name == time => (*op, v),
        (Expr::Literal(v, _), Expr::Column(c)) if c.name == time => (op.swap()?, v),
        _ => return None,
    };
    let t = nanos(lit)?;
    match op {
        Operator::Gt | Operator::GtEq => Some(Bound::From(t)),
        Operator::Lt | Operator::LtEq => Some(Bound::To(t)),
        Operator::Eq => Some(Bound::Exactly(t)),
        _ => None,
    }
}

fn nanos(v: &ScalarValue) -> Option<i64> {
    match v {
        ScalarValue::TimestampNanosecond(Some(t), _) => Some(*t),
        ScalarValue::TimestampMicrosecond(Some(t), _) => t.checked_mul(1_000),
        ScalarValue::TimestampMillisecond(Some(t), _) => t.checked_mul(1_000_000),
        ScalarValue::TimestampSecond(Some(t), _) => t.checked_mul(1_000_000_000),
        _ => None,
    }
}
