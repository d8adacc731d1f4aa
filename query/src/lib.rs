//! WattDB query: SQL over the readings, through Apache DataFusion.
//!
//! This crate is the read path's middle layer. [`QueryEngine`] holds an
//! [`Engine`](wattdb_engine::Engine) handle and answers read-only SQL over the table
//! `readings`, which [`ReadingsTable`] serves from the engine's in-memory buffer and
//! the Parquet files of its manifest (a view taken when the query is planned, so a
//! query sees every write acknowledged before it started), and over the rollup tables
//! `readings_1m`, `readings_1h` and `readings_1d`, served from their files and, for the
//! readings not yet persisted, from rows computed as the next persist cycle will write
//! them ([`Engine::live_rollups`](wattdb_engine::Engine::live_rollups)). It knows
//! nothing of HTTP: the `api` crate turns the record-batch stream into JSON or CSV.
//! Every query runs under a memory limit and a deadline.

mod direct;
mod error;
mod newest;
mod readings;
mod scoped;

use std::sync::Arc;
use std::time::Duration;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use datafusion::datasource::TableProvider;
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::execution::SendableRecordBatchStream;
use datafusion::execution::cache::cache_manager::{CacheManagerConfig, FileMetadataCache};
use datafusion::execution::cache::default_cache::DefaultCache;
use datafusion::execution::context::SQLOptions;
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::prelude::{SessionConfig, SessionContext};
use datafusion::sql::parser::{DFParser, Statement as DFStatement};
use datafusion::sql::sqlparser::ast::Statement;
use futures::StreamExt;
use wattdb_engine::{Engine, Tier};

pub use error::{Error, Result};
pub use readings::ReadingsTable;
use scoped::DeviceScoped;

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

/// Parquet footers and page indexes kept in memory across queries (files never change
/// once written, so an entry is never stale).
const METADATA_CACHE_BYTES: usize = 64 << 20;

/// Plans and runs read-only SQL over WattDB's tables.
#[derive(Clone)]
pub struct QueryEngine {
    engine: Engine,
    config: QueryConfig,
    /// Shared by every query's session; each query has a memory pool of its own.
    metadata: Arc<FileMetadataCache>,
    /// Footers of the files [`QueryEngine::plug_rows`] read.
    footers: Arc<direct::FooterCache>,
}

impl std::fmt::Debug for QueryEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueryEngine")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl QueryEngine {
    pub fn new(engine: Engine, config: QueryConfig) -> Self {
        let metadata: Arc<FileMetadataCache> =
            Arc::new(DefaultCache::new(METADATA_CACHE_BYTES).with_name("wattdb-parquet-metadata"));
        Self {
            engine,
            config,
            metadata,
            footers: Arc::default(),
        }
    }

    /// The rows of a few plugs with the tier's time column in `[from, to)`, straight
    /// from the tier's Parquet files (persisted rows only, no query planned), one per
    /// plug and time as the table has them. `columns` must start with `device_id` and
    /// the time column. For dashboards: a chart's rollup rows cost a page or two per
    /// file.
    pub async fn plug_rows(
        &self,
        tier: Tier,
        devices: &[String],
        from: i64,
        to: i64,
        columns: &[&str],
    ) -> Result<Option<RecordBatch>> {
        let mut devices = devices.to_vec();
        devices.sort_unstable();
        devices.dedup();
        let manifest = self.engine.manifest();
        direct::plug_rows(
            self.engine.store().reader(),
            &self.footers,
            &manifest.files,
            direct::Wanted {
                tier,
                devices: &devices,
                from,
                to,
                columns,
            },
        )
        .await
    }

    pub fn config(&self) -> &QueryConfig {
        &self.config
    }

    /// A fresh session with WattDB's tables registered and the query limits applied.
    /// With `devices`, the tables hold only the plugs whose ids start with one of
    /// those prefixes.
    pub fn context(&self, devices: Option<&[String]>) -> Result<SessionContext> {
        let runtime = RuntimeEnvBuilder::new()
            .with_memory_limit(self.config.memory_limit, 1.0)
            .with_cache_manager(
                CacheManagerConfig::default()
                    .with_file_metadata_cache(Some(Arc::clone(&self.metadata)))
                    .with_metadata_cache_limit(METADATA_CACHE_BYTES),
            )
            .build_arc()
            .map_err(Error::DataFusion)?;
        // Files are not split into byte ranges: WattDB's files are many and
        // partitioned by time, which gives scans their parallelism, and a query for one
        // plug would otherwise open the same file (footer, page index) twice.
        let session = SessionConfig::new()
            .with_target_partitions(self.config.target_partitions)
            .with_repartition_file_scans(false)
            .with_information_schema(true);
        let ctx = SessionContext::new_with_config_rt(session, runtime);
        let url = datafusion::execution::object_store::ObjectStoreUrl::parse(readings::STORE_URL)
            .map_err(Error::DataFusion)?;
        ctx.register_object_store(url.as_ref(), self.engine.store().reader());
        for tier in Tier::ALL {
            let name = ReadingsTable::name(tier);
            let table: Arc<dyn TableProvider> =
                Arc::new(ReadingsTable::of_tier(self.engine.clone(), tier));
            let table: Arc<dyn TableProvider> = match devices {
                None => table,
                Some(prefixes) => Arc::new(DeviceScoped::new(table, name.clone(), prefixes)),
            };
            ctx.register_table(name, table).map_err(Error::DataFusion)?;
        }
        Ok(ctx)
    }

    /// Plans `sql` (a single reading statement) and starts it. The stream yields
    /// record batches as they are produced; the caller applies [`QueryConfig::deadline`]
    /// to the whole (see [`QueryEngine::deadline`]).
    ///
    /// Planning and execution run on the query runtime ([`query_runtime`]), not on the
    /// caller's: a query that computes for long without yielding never holds up HTTP
    /// requests or writes, and the caller's deadline fires on time. Dropping the stream
    /// (or this future) cancels the query and frees its memory.
    pub async fn sql(&self, sql: &str) -> Result<SendableRecordBatchStream> {
        self.sql_for(sql, None).await
    }

    /// [`QueryEngine::sql`] for a caller who may see only the plugs whose ids start
    /// with one of `devices` (every plug with `None`): the tables of its session hold
    /// nothing else.
    pub async fn sql_for(
        &self,
        sql: &str,
        devices: Option<&[String]>,
    ) -> Result<SendableRecordBatchStream> {
        check_read_only(sql)?;
        let ctx = self.context(devices)?;
        let options = SQLOptions::new()
            .with_allow_ddl(false)
            .with_allow_dml(false)
            .with_allow_statements(false);
        let sql = sql.to_owned();
        let (tx, rx) = tokio::sync::mpsc::channel::<DfResult<RecordBatch>>(2);
        let (planned_tx, planned_rx) = tokio::sync::oneshot::channel::<Result<SchemaRef>>();
        let work = async move {
            let planned = async {
                let df = ctx
                    .sql_with_options(&sql, options)
                    .await
                    .map_err(Error::from_planning)?;
                df.execute_stream().await.map_err(Error::from_planning)
            }
            .await;
            let mut stream = match planned {
                Ok(s) => s,
                Err(e) => {
                    let _ = planned_tx.send(Err(e));
                    return;
                }
            };
            let _ = planned_tx.send(Ok(stream.schema()));
            while let Some(b) = stream.next().await {
                if tx.send(b).await.is_err() {
                    break;
                }
            }
        };
        // Without a runtime of its own (it could not start), on the caller's.
        let task = match query_runtime() {
            Some(rt) => rt.spawn(work),
            None => tokio::spawn(work),
        };
        let guard = AbortOnDrop(task.abort_handle());
        let schema = planned_rx.await.map_err(|_| {
            Error::DataFusion(DataFusionError::Internal("the query task ended".into()))
        })??;
        let batches = futures::stream::unfold((rx, guard), |(mut rx, guard)| async move {
            rx.recv().await.map(|b| (b, (rx, guard)))
        });
        Ok(Box::pin(RecordBatchStreamAdapter::new(schema, batches)))
    }

    pub fn deadline(&self) -> Duration {
        self.config.deadline
    }
}

/// Aborts a query's task when the stream (or the future waiting for its plan) is
/// dropped.
struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The runtime queries run on, shared by every [`QueryEngine`] of the process: one
/// worker thread per core, apart from the runtime that serves HTTP and MQTT.
pub fn query_runtime() -> Option<&'static tokio::runtime::Handle> {
    static RUNTIME: std::sync::OnceLock<Option<tokio::runtime::Handle>> =
        std::sync::OnceLock::new();
    RUNTIME
        .get_or_init(|| {
            let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
            let (tx, rx) = std::sync::mpsc::channel();
            std::thread::Builder::new()
                .name("wattdb-query".into())
                .spawn(move || {
                    let rt = tokio::runtime::Builder::new_multi_thread()
                        .worker_threads(threads)
                        .thread_name("wattdb-query-worker")
                        .enable_all()
                        .build();
                    match rt {
                        Ok(rt) => {
                            let _ = tx.send(Some(rt.handle().clone()));
                            // Lives as long as the process.
                            rt.block_on(std::future::pending::<()>());
                        }
                        Err(e) => {
                            tracing::error!(error = %e, "cannot start the query runtime");
                            let _ = tx.send(None);
                        }
                    }
                })
                .ok()
                .and_then(|_| rx.recv().ok().flatten())
        })
        .as_ref()
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
