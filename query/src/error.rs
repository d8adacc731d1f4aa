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
    /// Reading Parquet files from the object store failed (unreachable, timing out):
    /// the query may succeed later.
    #[error("the object store holding the Parquet files failed; try again later: {0}")]
    Storage(DataFusionError),
    /// The query cannot run on the data it meets: division by zero, a failed cast, a
    /// function given an argument outside its domain.
    #[error("the query cannot be computed: {0}")]
    Invalid(DataFusionError),
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
            _ if is_store_failure(&e) => Error::Storage(e),
            _ if is_invalid_input(&e) => Error::Invalid(e),
            _ => Error::DataFusion(e),
        }
    }

    /// Classifies an error raised while the result streams.
    pub fn from_execution(e: DataFusionError) -> Self {
        match e.find_root() {
            DataFusionError::ResourcesExhausted(_) => Error::MemoryLimit(e),
            _ if is_store_failure(&e) => Error::Storage(e),
            _ if is_invalid_input(&e) => Error::Invalid(e),
            _ => Error::DataFusion(e),
        }
    }
}

/// Did the query's own expressions fail on their input (rather than WattDB)?
fn is_invalid_input(e: &DataFusionError) -> bool {
    use arrow::error::ArrowError as A;
    match e.find_root() {
        DataFusionError::Execution(_) => true,
        DataFusionError::ArrowError(a, _) => matches!(
            **a,
            A::DivideByZero
                | A::CastError(_)
                | A::ComputeError(_)
                | A::InvalidArgumentError(_)
                | A::ArithmeticOverflow(_)
                | A::ParseError(_)
        ),
        _ => false,
    }
}

/// Did the object store fail underneath `e` (rather than the query itself)?
fn is_store_failure(e: &DataFusionError) -> bool {
    if matches!(e.find_root(), DataFusionError::ObjectStore(_)) {
        return true;
    }
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if err.is::<object_store::Error>() {
            return true;
        }
        if let Some(DataFusionError::ObjectStore(_)) = err.downcast_ref::<DataFusionError>() {
            return true;
        }
        if let Some(parquet::errors::ParquetError::External(inner)) =
            err.downcast_ref::<parquet::errors::ParquetError>()
            && inner.is::<object_store::Error>()
        {
            return true;
        }
        cur = err.source();
    }
    // The Parquet reader turns object store errors into text ("Failed to fetch
    // metadata for file …: Object Store error: …"): only the message is left.
    e.to_string().contains("Object Store error")
}
