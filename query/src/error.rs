use datafusion::error::DataFusionError;

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Why a query was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The SQL text does not parse.
    #[error("SQL syntax: {0}")]
    Sql(String),
    #[error("expected exactly one SQL statement, found {0}")]
    NotOneStatement(usize),
    #[error("only reading statements (SELECT, EXPLAIN, SHOW, DESCRIBE) are allowed")]
    NotReadOnly,
    /// The query is valid SQL but cannot be planned (unknown table or column, type
    /// mismatch).
    #[error("{0}")]
    Plan(DataFusionError),
    /// The query needed more memory than its limit.
    #[error("query exceeded its memory limit: {0}")]
    MemoryLimit(DataFusionError),
    #[error("query exceeded its deadline of {0:?} and was cancelled")]
    Deadline(std::time::Duration),
    /// Any other failure while running.
    #[error("query failed: {0}")]
    DataFusion(DataFusionError),
}

impl Error {
    pub(crate) fn from_planning(e: DataFusionError) -> Self {
        match e.find_root() {
            DataFusionError::ResourcesExhausted(_) => Error::MemoryLimit(e),
            DataFusionError::Plan(_)
            | DataFusionError::SQL(..)
            | DataFusionError::SchemaError(..)
            | DataFusionError::NotImplemented(_) => Error::Plan(e),
            _ => Error::DataFusion(e),
        }
    }

    /// Classifies an error raised while the result streams.
    pub fn from_execution(e: DataFusionError) -> Self {
        match e.find_root() {
            DataFusionError::ResourcesExhausted(_) => Error::MemoryLimit(e),
            _ => Error::DataFusion(e),
        }
    }
}
