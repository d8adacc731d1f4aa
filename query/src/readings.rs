//! The `readings` table over the engine's in-memory buffer.

use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use async_trait::async_trait;
use datafusion::catalog::Session;
use datafusion::common::ScalarValue;
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::datasource::{TableProvider, TableType};
use datafusion::error::Result as DfResult;
use datafusion::logical_expr::{BinaryExpr, Expr, Operator, TableProviderFilterPushDown};
use datafusion::physical_plan::ExecutionPlan;
use wattdb_engine::{Engine, readings_schema};

/// `readings`: every acknowledged reading in the buffer, duplicates resolved.
#[derive(Debug)]
pub struct ReadingsTable {
    engine: Engine,
    schema: SchemaRef,
}

impl ReadingsTable {
    pub fn new(engine: Engine) -> Self {
        Self {
            engine,
            schema: readings_schema(),
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
        // Time filters prune buffer batches; DataFusion still applies them row by row.
        Ok(filters
            .iter()
            .map(|f| {
                if time_bound(f).is_some() {
                    TableProviderFilterPushDown::Inexact
                } else {
                    TableProviderFilterPushDown::Unsupported
                }
            })
            .collect())
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        _limit: Option<usize>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let (mut from, mut to) = (None::<i64>, None::<i64>);
        for f in filters {
            match time_bound(f) {
                Some(Bound::From(t)) => from = Some(from.map_or(t, |x| x.max(t))),
                Some(Bound::To(t)) => to = Some(to.map_or(t, |x| x.min(t))),
                Some(Bound::Exactly(t)) => {
                    from = Some(from.map_or(t, |x| x.max(t)));
                    to = Some(to.map_or(t, |x| x.min(t)));
                }
                None => {}
            }
        }
        let batches = self.engine.snapshot(from, to);
        let partitions = split(batches, state.config().target_partitions().max(1));
        let exec = MemorySourceConfig::try_new_exec(
            &partitions,
            Arc::clone(&self.schema),
            projection.cloned(),
        )?;
        Ok(exec)
    }
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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Bound {
    From(i64),
    To(i64),
    Exactly(i64),
}

/// Reads `ts <op> literal` (either side) as an inclusive bound in nanoseconds.
fn time_bound(e: &Expr) -> Option<Bound> {
    let Expr::BinaryExpr(BinaryExpr { left, op, right }) = e else {
        return None;
    };
    let (op, lit) = match (left.as_ref(), right.as_ref()) {
        (Expr::Column(c), Expr::Literal(v, _)) if c.name == "ts" => (*op, v),
        (Expr::Literal(v, _), Expr::Column(c)) if c.name == "ts" => (op.swap()?, v),
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
