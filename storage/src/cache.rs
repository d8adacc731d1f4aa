//! A local disk cache of Parquet files in front of a remote object store (S3).
//!
//! Queries read Parquet files in many small ranged requests (footer, page index, the
//! pages a filter needs); against S3 each is a round trip. [`FileCache`] fetches a file
//! whole the first time any range of it is read, keeps it under its directory, and
//! serves every later read (footer and metadata included) from the local copy. Files
//! never change once the manifest lists them (a file id is never reused for other
//! content), so a cached copy never goes stale. The cache holds at most `max_bytes`;
//! the least recently read files go first. It starts empty at every start.
//!
//! Only reads of `.parquet` objects are cached; everything else passes through.

use std::collections::HashMap;
use std::fmt;
use std::ops::Range;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use futures::stream::BoxStream;
use object_store::path::Path;
use object_store::{
    Attributes, CopyOptions, GetOptions, GetResult, GetResultPayload, ListResult, MultipartUpload,
    ObjectMeta, ObjectStore, ObjectStoreExt, PutMultipartOptions, PutOptions, PutPayload,
    PutResult, Result,
};

/// Hits, misses and size, for `/metrics`.
#[derive(Debug, Default)]
pub struct CacheStats {
    pub hits: AtomicU64,
    pub misses: AtomicU64,
    pub bytes: AtomicU64,
    pub files: AtomicU64,
}

#[derive(Debug, Default)]
struct State {
    /// Path → (size, last read tick).
    entries: HashMap<Path, (u64, u64)>,
    total: u64,
    tick: u64,
}

/// See the module documentation.
#[derive(Debug)]
pub struct FileCache {
    inner: Arc<dyn ObjectStore>,
    dir: PathBuf,
    max_bytes: u64,
    state: Mutex<State>,
    stats: Arc<CacheStats>,
}

impl FileCache {
    /// A cache in `dir` (emptied now) of at most `max_bytes` in front of `inner`.
    pub fn new(inner: Arc<dyn ObjectStore>, dir: PathBuf, max_bytes: u64) -> std::io::Result<Self> {
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        std::fs::create_dir_all(&dir)?;
        Ok(Self {
            inner,
            dir,
            max_bytes,
            state: Mutex::default(),
            stats: Arc::default(),
        })
    }

    pub fn stats(&self) -> Arc<CacheStats> {
        Arc::clone(&self.stats)
    }

    fn local(&self, location: &Path) -> PathBuf {
        // Path parts are validated by object_store: no `..`, no empty parts.
        self.dir.join(location.as_ref())
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Marks a cached file as read now; false when it is not cached.
    fn touch(&self, location: &Path) -> bool {
        let mut s = self.state();
        s.tick += 1;
        let tick = s.tick;
        match s.entries.get_mut(location) {
            Some(e) => {
                e.1 = tick;
                true
            }
            None => false,
        }
    }

    /// Stores a fetched file and evicts the least recently read ones over the limit.
    fn insert(&self, location: &Path, body: &Bytes) -> std::io::Result<()> {
        let size = body.len() as u64;
        if size > self.max_bytes {
            return Ok(());
        }
        let local = self.local(location);
        if let Some(parent) = local.parent() {
            std::fs::create_dir_all(parent)?;
        }
        // A name of its own: two queries may fetch the same file at once.
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let tmp = local.with_extension(format!("tmp-{}-{n}", std::process::id()));
        std::fs::write(&tmp, body)?;
        std::fs::rename(&tmp, &local)?;
        let mut evict = Vec::new();
        {
            let mut s = self.state();
            s.tick += 1;
            let tick = s.tick;
            if s.entries.insert(location.clone(), (size, tick)).is_none() {
                s.total += size;
            }
            while s.total > self.max_bytes {
                let Some(oldest) = s
                    .entries
                    .iter()
                    .min_by_key(|(_, (_, t))| *t)
                    .map(|(p, _)| p.clone())
                else {
                    break;
                };
                if let Some((size, _)) = s.entries.remove(&oldest) {
                    s.total -= size;
                    evict.push(oldest);
                }
            }
            self.stats.bytes.store(s.total, Ordering::Relaxed);
            self.stats
                .files
                .store(s.entries.len() as u64, Ordering::Relaxed);
        }
        for p in evict {
            // A reader that opened it keeps reading (Unix); later reads refetch.
            let _ = std::fs::remove_file(self.local(&p));
        }
        Ok(())
    }

    fn cacheable(location: &Path, options: &GetOptions) -> bool {
        location.as_ref().ends_with(".parquet")
            && options.if_match.is_none()
            && options.if_none_match.is_none()
            && options.if_modified_since.is_none()
            && options.if_unmodified_since.is_none()
            && options.version.is_none()
    }

    fn cached(&self, location: &Path, options: &GetOptions) -> Result<Option<GetResult>> {
        if !self.touch(location) {
            return Ok(None);
        }
        let local = self.local(location);
        let file = match std::fs::File::open(&local) {
            Ok(f) => f,
            // Evicted between the check and the open.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_error(e)),
        };
        let md = file.metadata().map_err(io_error)?;
        let size = md.len();
        let meta = ObjectMeta {
            location: location.clone(),
            last_modified: md
                .modified()
                .map(chrono::DateTime::<chrono::Utc>::from)
                .unwrap_or_default(),
            size,
            e_tag: None,
            version: None,
        };
        let range = resolve(options, size)?;
        let payload = if options.head {
            GetResultPayload::Stream(futures::stream::empty().boxed())
        } else {
            GetResultPayload::File(file, local)
        };
        self.stats.hits.fetch_add(1, Ordering::Relaxed);
        Ok(Some(GetResult {
            payload,
            meta,
            range,
            attributes: Attributes::default(),
        }))
    }
}

fn io_error(e: std::io::Error) -> object_store::Error {
    object_store::Error::Generic {
        store: "cache",
        source: Box::new(e),
    }
}

fn resolve(options: &GetOptions, size: u64) -> Result<Range<u64>> {
    match &options.range {
        None => Ok(0..size),
        Some(r) => r.as_range(size).map_err(|e| object_store::Error::Generic {
            store: "cache",
            source: Box::new(e),
        }),
    }
}

impl fmt::Display for FileCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FileCache({})", self.inner)
    }
}

#[async_trait]
impl ObjectStore for FileCache {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> Result<PutResult> {
        self.inner.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> Result<Box<dyn MultipartUpload>> {
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
        if !Self::cacheable(location, &options) {
            return self.inner.get_opts(location, options).await;
        }
        if let Some(hit) = self.cached(location, &options)? {
            return Ok(hit);
        }
        self.stats.misses.fetch_add(1, Ordering::Relaxed);
        let whole = self.inner.get(location).await?;
        let meta = whole.meta.clone();
        let body = whole.bytes().await?;
        if let Err(e) = self.insert(location, &body) {
            tracing::warn!(error = %e, %location, "cannot cache a Parquet file locally");
        }
        let range = resolve(&options, body.len() as u64)?;
        let slice = if options.head {
            Bytes::new()
        } else {
            body.slice(range.start as usize..range.end as usize)
        };
        Ok(GetResult {
            payload: GetResultPayload::Stream(
                futures::stream::once(async move { Ok(slice) }).boxed(),
            ),
            meta,
            range,
            attributes: Attributes::default(),
        })
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, Result<Path>>,
    ) -> BoxStream<'static, Result<Path>> {
        self.inner.delete_stream(locations)
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        self.inner.list(prefix)
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> Result<()> {
        self.inner.copy_opts(from, to, options).await
    }
}

#[cfg(test)]
mod tests {
    use object_store::local::LocalFileSystem;

    use super::*;

    #[tokio::test]
    async fn reads_come_from_the_local_copy_and_old_files_make_room() {
        let remote_dir = tempfile::tempdir().unwrap();
        let cache_dir = tempfile::tempdir().unwrap();
        let remote: Arc<dyn ObjectStore> =
            Arc::new(LocalFileSystem::new_with_prefix(remote_dir.path()).unwrap());
        let cache = FileCache::new(Arc::clone(&remote), cache_dir.path().join("c"), 250).unwrap();
        let a = Path::from("readings/x/a.parquet");
        let b = Path::from("readings/x/b.parquet");
        let body: Vec<u8> = (0..200u8).collect();
        remote.put(&a, body.clone().into()).await.unwrap();
        remote.put(&b, body.clone().into()).await.unwrap();

        // A miss fetches the whole file and answers the range.
        let r = cache.get_range(&a, 10..20).await.unwrap();
        assert_eq!(&r[..], &body[10..20]);
        // Gone from the remote: still served, ranges and suffixes alike.
        remote.delete(&a).await.unwrap();
        assert_eq!(
            &cache.get_range(&a, 190..200).await.unwrap()[..],
            &body[190..200]
        );
        let opts = GetOptions {
            range: Some(object_store::GetRange::Suffix(8)),
            ..GetOptions::default()
        };
        let tail = cache
            .get_opts(&a, opts)
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        assert_eq!(&tail[..], &body[192..]);
        assert_eq!(cache.head(&a).await.unwrap().size, 200);
        let stats = cache.stats();
        assert_eq!(stats.misses.load(Ordering::Relaxed), 1);
        assert_eq!(stats.hits.load(Ordering::Relaxed), 3);

        // A second file does not fit beside the first: the older one goes.
        assert_eq!(&cache.get_range(&b, 0..5).await.unwrap()[..], &body[0..5]);
        assert_eq!(stats.bytes.load(Ordering::Relaxed), 200);
        assert!(
            cache.get_range(&a, 0..1).await.is_err(),
            "evicted, and gone remotely"
        );
        // Other objects pass through uncached.
        let m = Path::from("catalog/manifest.json");
        remote.put(&m, "{}".into()).await.unwrap();
        assert_eq!(
            &cache.get(&m).await.unwrap().bytes().await.unwrap()[..],
            b"{}"
        );
        assert_eq!(stats.files.load(Ordering::Relaxed), 1);
    }
}
