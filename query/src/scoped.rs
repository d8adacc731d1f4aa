//! A table seen through an API token's plug-id prefixes: only the rows whose
//! `device_id` starts with one of them exist. Registered in place of the table itself,
//! so no SQL can reach the rows of other plugs.

use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use async_trait::async_trait;
use datafusion::catalog::Session;
use datafusion::datasource::{TableProvider, TableType, provider_as_source};
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::execution::session_state::SessionState;
use datafusion::functions::expr_fn::starts_with;
use datafusion::logical_expr::utils::conjunction;
use datafusion::logical_expr::{Expr, LogicalPlanBuilder, TableProviderFilterPushDown};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::prelude::{col, lit};

use crate::readings::unqualify;

#[derive(Debug)]
pub struct DeviceScoped {
    inner: Arc<dyn TableProvider>,
    name: String,
    /// `starts_with(device_id, p1) OR starts_with(device_id, p2) …`; `false` for no
    /// prefix at all.
    predicate: Expr,
}

impl DeviceScoped {
    pub fn new(inner: Arc<dyn TableProvider>, name: String, prefixes: &[String]) -> Self {
        let predicate = prefixes
            .iter()
            .map(|p| starts_with(col("device_id"), lit(p.clone())))
            .reduce(Expr::or)
            .unwrap_or(lit(false));
        Self {
            inner,
            name,
            predicate,
        }
    }
}

#[async_trait]
impl TableProvider for DeviceScoped {
    fn schema(&self) -> SchemaRef {
        self.inner.schema()
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

    /// The inner table's scan under the query's filters and the prefix predicate,
    /// then the projection and the limit (after the filter, so a limit never lets
    /// rows of other plugs count).
    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let state = state
            .as_any()
            .downcast_ref::<SessionState>()
            .ok_or_else(|| DataFusionError::Internal("unexpected session type".into()))?;
        let mut all: Vec<Expr> = filters.iter().map(unqualify).collect::<DfResult<_>>()?;
        all.push(self.predicate.clone());
        let mut plan = LogicalPlanBuilder::scan(
            self.name.as_str(),
            provider_as_source(Arc::clone(&self.inner)),
            None,
        )?;
        if let Some(p) = conjunction(all) {
            plan = plan.filter(p)?;
        }
        if let Some(p) = projection {
            let schema = self.inner.schema();
            plan = plan.project(p.iter().map(|&i| col(schema.field(i).name())))?;
        }
        if limit.is_some() {
            plan = plan.limit(0, limit)?;
        }
        state.create_physical_plan(&plan.build()?).await
    }
}
