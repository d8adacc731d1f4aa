//! Where Parquet files and the manifest live: a local directory (the default) or an
//! S3-compatible bucket, behind one [`Store`] handle.
//!
//! Paths given to a [`Store`] are layout paths (`readings/resolution=raw/…`,
//! `catalog/…`); the store adds the bucket prefix. On local disk every put is made
//! durable (file and parent directories fsynced) before it returns, because the engine
//! releases WAL segments as soon as the manifest that lists a file is committed. S3
//! puts are durable when they return. Requests to S3 are retried with exponential
//! backoff by the client; errors that survive the retries reach the caller, which
//! keeps the data in the WAL and tries again later.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::TryStreamExt;
use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::path::Path as ObjPath;
use object_store::prefix::PrefixStore;
use object_store::{
    BackoffConfig, ClientOptions, ObjectMeta, ObjectStore, ObjectStoreExt, PutPayload, RetryConfig,
};

/// Errors of the object store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("object store: {op} {path}")]
    Request {
        op: &'static str,
        path: String,
        #[source]
        source: object_store::Error,
    },
    #[error("object store configuration: {0}")]
    Config(String),
    #[error("object store: making {path} durable")]
    Sync {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl StoreError {
    fn request(op: &'static str, path: &ObjPath) -> impl FnOnce(object_store::Error) -> Self {
        let path = path.to_string();
        move |source| StoreError::Request { op, path, source }
    }

    /// Whether the object does not exist.
    pub fn is_not_found(&self) -> bool {
        matches!(
            self,
            StoreError::Request {
                source: object_store::Error::NotFound { .. },
                ..
            }
        )
    }
}

/// Settings of an S3-compatible bucket. Unset credentials and region come from the
/// usual `AWS_*` environment variables.
#[derive(Clone, Default)]
pub struct S3Config {
    /// `http://127.0.0.1:9000` for a local server; unset for AWS itself.
    pub endpoint: Option<String>,
    pub region: Option<String>,
    pub bucket: String,
    /// Key prefix under which WattDB's layout starts (may be empty).
    pub prefix: String,
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
    /// Allows `http://` endpoints (local test servers).
    pub allow_http: bool,
    /// Per-request timeout.
    pub request_timeout: Duration,
}

impl std::fmt::Debug for S3Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Config")
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("bucket", &self.bucket)
            .field("prefix", &self.prefix)
            .field("access_key_id", &self.access_key_id.as_ref().map(|_| "***"))
            .field(
                "secret_access_key",
                &self.secret_access_key.as_ref().map(|_| "***"),
            )
            .field("allow_http", &self.allow_http)
            .finish()
    }
}

/// Which store to use.
#[derive(Debug, Clone)]
pub enum StoreConfig {
    /// A directory on local disk (created if missing).
    Local(PathBuf),
    S3(S3Config),
}

/// A handle to the object store, cheap to clone.
#[derive(Debug, Clone)]
pub struct Store {
    inner: Arc<dyn ObjectStore>,
    /// Local copies of Parquet files for reads ([`Store::with_read_cache`]).
    cache: Option<Arc<crate::cache::FileCache>>,
    /// Set for local stores: the directory that layout paths are relative to.
    local_root: Option<PathBuf>,
    description: String,
}

impl Store {
    pub fn open(config: &StoreConfig) -> Result<Store, StoreError> {
        match config {
            StoreConfig::Local(root) => {
                std::fs::create_dir_all(root).map_err(|source| StoreError::Sync {
                    path: root.clone(),
                    source,
                })?;
                let root = root.canonicalize().map_err(|source| StoreError::Sync {
                    path: root.clone(),
                    source,
                })?;
                let fs = LocalFileSystem::new_with_prefix(&root)
                    .map_err(|e| StoreError::Config(e.to_string()))?;
                Ok(Store {
                    cache: None,
                    inner: Arc::new(fs),
                    description: format!("file://{}", root.display()),
                    local_root: Some(root),
                })
            }
            StoreConfig::S3(s3) => {
                if s3.bucket.is_empty() {
                    return Err(StoreError::Config("S3 bucket is not set".into()));
                }
                let timeout = if s3.request_timeout.is_zero() {
                    Duration::from_secs(30)
                } else {
                    s3.request_timeout
                };
                let mut b = AmazonS3Builder::from_env()
                    .with_bucket_name(&s3.bucket)
                    .with_allow_http(s3.allow_http)
                    .with_client_options(
                        ClientOptions::new()
                            .with_allow_http(s3.allow_http)
                            .with_timeout(timeout)
                            .with_connect_timeout(Duration::from_secs(5)),
                    )
                    .with_retry(RetryConfig {
                        backoff: BackoffConfig {
                            init_backoff: Duration::from_millis(100),
                            max_backoff: Duration::from_secs(5),
                            base: 2.0,
                        },
                        max_retries: 5,
                        // Bounds a request's retries; the persist loop retries later.
                        retry_timeout: (timeout * 4).min(Duration::from_secs(60)),
                    });
                if let Some(e) = &s3.endpoint {
                    // Local S3-compatible servers want path-style requests.
                    b = b.with_endpoint(e).with_virtual_hosted_style_request(false);
                }
                if let Some(r) = &s3.region {
                    b = b.with_region(r);
                }
                if let Some(k) = &s3.access_key_id {
                    b = b.with_access_key_id(k);
                }
                if let Some(k) = &s3.secret_access_key {
                    b = b.with_secret_access_key(k);
                }
                let s3_store = b.build().map_err(|e| StoreError::Config(e.to_string()))?;
                let prefix = s3.prefix.trim_matches('/');
                let description = format!(
                    "s3://{}/{}{}",
                    s3.bucket,
                    prefix,
                    s3.endpoint
                        .as_ref()
                        .map(|e| format!(" at {e}"))
                        .unwrap_or_default()
                );
                let inner: Arc<dyn ObjectStore> = if prefix.is_empty() {
                    Arc::new(s3_store)
                } else {
                    Arc::new(PrefixStore::new(s3_store, prefix))
                };
                Ok(Store {
                    cache: None,
                    inner,
                    local_root: None,
                    description,
                })
            }
        }
    }

    /// Wraps any object store (tests inject failing or slow stores this way).
    pub fn from_object_store(inner: Arc<dyn ObjectStore>, description: &str) -> Store {
        Store {
            cache: None,
            inner,
            local_root: None,
            description: description.to_owned(),
        }
    }

    /// The store with layout paths as keys (for DataFusion's object store registry).
    pub fn object_store(&self) -> Arc<dyn ObjectStore> {
        Arc::clone(&self.inner)
    }

    /// Reads of Parquet files through [`Store::reader`] go through a local cache of at
    /// most `max_bytes` in `dir` (emptied now). For remote stores.
    pub fn with_read_cache(mut self, dir: PathBuf, max_bytes: u64) -> Result<Store, StoreError> {
        let cache = crate::cache::FileCache::new(Arc::clone(&self.inner), dir.clone(), max_bytes)
            .map_err(|source| StoreError::Sync { path: dir, source })?;
        self.cache = Some(Arc::new(cache));
        Ok(self)
    }

    /// The store queries read through: the read cache when there is one.
    pub fn reader(&self) -> Arc<dyn ObjectStore> {
        match &self.cache {
            Some(c) => Arc::clone(c) as Arc<dyn ObjectStore>,
            None => Arc::clone(&self.inner),
        }
    }

    /// Counters of the read cache, when there is one.
    pub fn cache_stats(&self) -> Option<Arc<crate::cache::CacheStats>> {
        self.cache.as_ref().map(|c| c.stats())
    }

    /// `file:///…` or `s3://bucket/prefix`, for logs and messages.
    pub fn description(&self) -> &str {
        &self.description
    }

    /// Local directory of a local store.
    pub fn local_root(&self) -> Option<&Path> {
        self.local_root.as_deref()
    }

    /// Writes an object whole; durable when it returns.
    pub async fn put(&self, path: &ObjPath, bytes: Bytes) -> Result<(), StoreError> {
        self.inner
            .put(path, PutPayload::from_bytes(bytes))
            .await
            .map_err(StoreError::request("put", path))?;
        if let Some(root) = &self.local_root {
            let root = root.clone();
            let rel = path.to_string();
            tokio::task::spawn_blocking(move || sync_local(&root, &rel))
                .await
                .map_err(|e| StoreError::Sync {
                    path: PathBuf::from(path.to_string()),
                    source: std::io::Error::other(e),
                })??;
        }
        Ok(())
    }

    pub async fn get(&self, path: &ObjPath) -> Result<Bytes, StoreError> {
        let r = self
            .inner
            .get(path)
            .await
            .map_err(StoreError::request("get", path))?;
        r.bytes().await.map_err(StoreError::request("get", path))
    }

    /// Deletes an object; a missing object is not an error.
    pub async fn delete(&self, path: &ObjPath) -> Result<(), StoreError> {
        match self.inner.delete(path).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(source) => Err(StoreError::Request {
                op: "delete",
                path: path.to_string(),
                source,
            }),
        }
    }

    /// Whether the store answers: one listing of its top level.
    pub async fn check(&self) -> Result<(), StoreError> {
        let top = ObjPath::from("");
        self.inner
            .list_with_delimiter(None)
            .await
            .map(|_| ())
            .map_err(StoreError::request("list", &top))
    }

    /// Every object under `prefix` (recursively).
    pub async fn list(&self, prefix: &ObjPath) -> Result<Vec<ObjectMeta>, StoreError> {
        self.inner
            .list(Some(prefix))
            .try_collect()
            .await
            .map_err(StoreError::request("list", prefix))
    }
}

/// fsyncs a file written by the local store and the directories above it, up to the
/// root: a freshly created partition directory is itself an entry to persist.
fn sync_local(root: &Path, rel: &str) -> Result<(), StoreError> {
    let sync = |p: &Path| -> Result<(), StoreError> {
        std::fs::File::open(p)
            .and_then(|f| f.sync_all())
            .map_err(|source| StoreError::Sync {
                path: p.to_owned(),
                source,
            })
    };
    let file = root.join(rel);
    sync(&file)?;
    let mut dir = file.parent();
    while let Some(d) = dir {
        sync(d)?;
        if d == root {
            break;
        }
        dir = d.parent();
    }
    Ok(())
}
