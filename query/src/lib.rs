//! WattDB query: SQL over the readings, through Apache DataFusion.
//!
//! This crate is the read path's middle layer. [`QueryEngine`] holds an
//! [`Engine`](wattdb_engine::Engine) handle and answers read-only SQL over the table
//! `readings`, which [`ReadingsTable`] serves from the engine's in-memory buffer and
//! the Parquet files of its manifest (a view taken when the query is planned, so a
//! query sees every write acknowledged before it started), and over the rollup tables
//! `readings_1m`, `readings_1h` and `readings_1d`, served from their files. It knows
//! nothing of HTTP: the `api` crate turns the record-batch stream into JSON or CSV.
//! Every query runs under a memory limit and a deadline.

mod error;
mod readings;

use std::sync::Arc;
use std::time::Duration;

use datafusion::execution::SendableRecordBatchStream;
use datafusion::execution::context::SQLOptions;
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::prelude::{SessionConfig, SessionContext};
use datafusion::sql::parser::{DFParser, Statement as DFStatement};
use datafusion::sql::sqlparser::ast::Statement;
use wattdb_engine::{Engine, Tier};

pub use error::{Error, Result};
pub use readings::ReadingsTable;

/// Limits and settings for queries. `Default` gives the embedded defaults.
#[derive(Debug, Clone)]
pub struct QueryConfig {
    /// Memory one query may use for sorts, joins and aggregations.
    pub memory_limit: usize,
    /// A query still running after this long is cancelled.
    pub deadline: Duration,
    /// Threads a query may use.
    pub target_partitions: usize,
}

impl Default for QueryConfig {
    fn default() -> Self {
        Self {
            memory_limit: 1 << 30,
            deadline: Duration::from_secs(30),
            target_partitions: std::thread::available_parallelism().map_or(2, |n| n.get()),
        }
    }
}

/// Plans and runs read-only SQL over WattDB's tables.
#[derive(Debug, Clone)]
pub struct QueryEngine {
    engine: Engine,
    config: QueryConfig,
}

impl QueryEngine {
    pub fn new(engine: Engine, config: QueryConfig) -> Self {
        Self { engine, config }
    }

    pub fn config(&self) -> &QueryConfig {
        &self.config
    }

    /// A fresh session with WattDB's tables registered and the query limits applied.
    pub fn context(&self) -> Result<SessionContext> {
        let runtime = RuntimeEnvBuilder::new()
            .with_memory_limit(self.config.memory_limit, 1.0)
            .build_arc()
            .map_err(Error::DataFusion)?;
        let session = SessionConfig::new()
            .with_target_partitions(self.config.target_partitions)
            .with_information_schema(true);
        let ctx = SessionContext::new_with_config_rt(session, runtime);
        let url = datafusion::execution::object_store::ObjectStoreUrl::parse(readings::STORE_URL)
            .map_err(Error::DataFusion)?;
        ctx.register_object_store(url.as_ref(), self.engine.store().reader());
        for tier in Tier::ALL {
            ctx.register_table(
                ReadingsTable::name(tier),
                Arc::new(ReadingsTable::of_tier(self.engine.clone(), tier)),
            )
            .map_err(Error::DataFusion)?;
        }
        Ok(ctx)
    }

    /// Plans `sql` (a single reading statement) and starts it. The stream yields
    /// record batches as they are produced; the caller applies [`QueryConfig::deadline`]
    /// to the whole (see [`QueryEngine::deadline`]).
    pub async fn sql(&self, sql: &str) -> Result<SendableRecordBatchStream> {
        check_read_only(sql)?;
        let ctx = self.context()?;
        let options = SQLOptions::new()
            .with_allow_ddl(false)
            .with_allow_dml(false)
            .with_allow_statements(false);
        let df = ctx
            .sql_with_options(sql, options)
            .await
            .map_err(Error::from_planning)?;
        df.execute_stream().await.map_err(Error::from_planning)
    }

    pub fn deadline(&self) -> Duration {
        self.config.deadline
    }
}

/// Accepts exactly one `SELECT`-like statement (query, EXPLAIN, SHOW, DESCRIBE).
fn check_read_only(sql: &str) -> Result<()> {
    let statements = DFParser::parse_sql(sql).map_err(|e| Error::Sql(e.to_string()))?;
    if statements.len() != 1 {
        return Err(Error::NotOneStatement(statements.len()));
    }
    let ok = match &statements[0] {
        DFStatement::Statement(s) => matches!(
            **s,
            Statement::Query(_)
                | Statement::Explain { .. }
                | Statement::ShowTables { .. }
                | Statement::ShowColumns { .. }
                | Statement::ExplainTable { .. }
        ),
        DFStatement::Explain(_) => true,
        _ => false,
    };
    if ok { Ok(()) } else { Err(Error::NotReadOnly) }
}

#[cfg(test)]
mod tests;
