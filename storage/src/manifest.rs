//! The manifest (catalog): which files are live.
//!
//! Each commit writes a new, complete manifest as `catalog/manifest-{version:020}.json`
//! and then deletes versions older than the previous one. The live state is the highest
//! version that exists. Writing a whole object is atomic on every store (local puts
//! write a temporary file and rename it; S3 objects appear whole), so a crash leaves
//! either the old or the new version, never a torn one.
//!
//! A Parquet file becomes visible only when a committed manifest lists it. Files
//! written by a persist that crashed before its commit are orphans: never read, and
//! deleted by [`remove_orphans`] on the next start.

use object_store::path::Path as ObjPath;
use serde::{Deserialize, Serialize};

use crate::files::FileMeta;
use crate::store::{Store, StoreError};

pub const FORMAT: u32 = 1;
const DIR: &str = "catalog";
const PREFIX: &str = "manifest-";

/// One version of the catalog.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: u32,
    pub version: u64,
    /// The next file id to hand out (ids only grow).
    pub next_file_id: u64,
    /// Every WAL record up to this sequence number is in the files (recovery replays
    /// only later records).
    #[serde(default)]
    pub persisted_seq: Option<u64>,
    /// Every live file.
    pub files: Vec<FileMeta>,
}

/// Errors reading or committing the manifest.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("manifest {path} is unreadable: {reason}")]
    Corrupt { path: String, reason: String },
    #[error("manifest {path} has format {found}; this WattDB reads format {FORMAT}")]
    Format { path: String, found: u32 },
}

fn version_path(version: u64) -> ObjPath {
    ObjPath::from(format!("{DIR}/{PREFIX}{version:020}.json"))
}

fn parse_version(location: &ObjPath) -> Option<u64> {
    let name = location.filename()?;
    name.strip_prefix(PREFIX)?
        .strip_suffix(".json")?
        .parse()
        .ok()
}

impl Manifest {
    pub fn empty() -> Manifest {
        Manifest {
            format: FORMAT,
            version: 0,
            next_file_id: 1,
            persisted_seq: None,
            files: Vec::new(),
        }
    }

    /// Reads the newest version, or an empty manifest when there is none.
    pub async fn load(store: &Store) -> Result<Manifest, ManifestError> {
        let listed = store.list(&ObjPath::from(DIR)).await?;
        let Some(newest) = listed
            .iter()
            .filter_map(|m| parse_version(&m.location))
            .max()
        else {
            return Ok(Manifest::empty());
        };
        let path = version_path(newest);
        let bytes = store.get(&path).await?;
        let m: Manifest = serde_json::from_slice(&bytes).map_err(|e| ManifestError::Corrupt {
            path: path.to_string(),
            reason: e.to_string(),
        })?;
        if m.format != FORMAT {
            return Err(ManifestError::Format {
                path: path.to_string(),
                found: m.format,
            });
        }
        if m.version != newest {
            return Err(ManifestError::Corrupt {
                path: path.to_string(),
                reason: format!("it says version {}", m.version),
            });
        }
        Ok(m)
    }

    /// Writes this manifest as its version (durable when it returns), then deletes
    /// versions older than the one before it.
    pub async fn commit(&self, store: &Store) -> Result<(), ManifestError> {
        let body = serde_json::to_vec(self).map_err(|e| ManifestError::Corrupt {
            path: version_path(self.version).to_string(),
            reason: e.to_string(),
        })?;
        store.put(&version_path(self.version), body.into()).await?;
        let listed = store.list(&ObjPath::from(DIR)).await?;
        for m in listed {
            if parse_version(&m.location).is_some_and(|v| v + 1 < self.version) {
                // Best effort: a leftover old version is ignored by `load`.
                if let Err(error) = store.delete(&m.location).await {
                    tracing::warn!(%error, "could not delete an old manifest version");
                }
            }
        }
        Ok(())
    }

    /// The next version: same files, version + 1.
    pub fn next(&self) -> Manifest {
        Manifest {
            version: self.version + 1,
            ..self.clone()
        }
    }

    /// Rows in the files of `tier`.
    pub fn rows(&self, tier: crate::files::Tier) -> u64 {
        self.files
            .iter()
            .filter(|f| f.tier == tier)
            .map(|f| f.rows)
            .sum()
    }

    pub fn bytes(&self) -> u64 {
        self.files.iter().map(|f| f.size).sum()
    }
}

/// Deletes every Parquet file under `readings/` that `manifest` does not list (left by
/// a crash between upload and commit). Returns how many were deleted.
pub async fn remove_orphans(store: &Store, manifest: &Manifest) -> Result<usize, StoreError> {
    let live: std::collections::HashSet<&str> =
        manifest.files.iter().map(|f| f.path.as_str()).collect();
    let mut removed = 0;
    for m in store.list(&ObjPath::from("readings")).await? {
        let p = m.location.as_ref();
        if !live.contains(p) {
            tracing::info!(
                path = p,
                "deleting a file no manifest lists (left by a crash)"
            );
            store.delete(&m.location).await?;
            removed += 1;
        }
    }
    Ok(removed)
}
