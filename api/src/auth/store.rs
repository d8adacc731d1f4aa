//! The token file, `DATA_DIR/tokens.json`: one entry per token with its hash, never
//! the token. Changes happen under `DATA_DIR/tokens.lock` and replace the file
//! atomically, so `wattdb token` and a running server can change it at the same time.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use ring::digest::{SHA256, digest};
use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};

use super::Scope;

const FILE: &str = "tokens.json";
const LOCK: &str = "tokens.lock";
/// Every token starts with this, so secret scanners and people recognise one.
const TOKEN_PREFIX: &str = "wdb_";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is damaged: {msg}")]
    Corrupt { path: PathBuf, msg: String },
    /// A bad request: the message says which setting and why.
    #[error("{0}")]
    Invalid(String),
}

/// A token as listed: everything but the secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenInfo {
    pub id: String,
    pub name: Option<String>,
    pub scopes: Vec<Scope>,
    /// Plug-id prefixes the token is limited to; empty: every plug.
    pub devices: Vec<String>,
    /// RFC 3339.
    pub created: String,
    /// RFC 3339; `None`: never.
    pub expires: Option<String>,
}

#[derive(Debug, Serialize, Deserialize)]
struct Entry {
    #[serde(flatten)]
    info: TokenInfo,
    /// SHA-256 of the whole token, hex.
    sha256: String,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct FileBody {
    tokens: Vec<Entry>,
}

/// A token as the server checks it.
#[derive(Debug)]
pub struct Record {
    pub info: TokenInfo,
    pub hash: [u8; 32],
    pub expires_ns: Option<i64>,
}

/// What a new token may do.
#[derive(Debug, Clone, Default)]
pub struct NewToken {
    pub name: Option<String>,
    pub scopes: Vec<Scope>,
    pub devices: Vec<String>,
    pub expires_in: Option<Duration>,
}

/// The file's identity, to notice a replacement: inode, size, modification time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp(u64, u64, i64, i64);

pub fn hash(token: &str) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(digest(&SHA256, token.as_bytes()).as_ref());
    out
}

/// `n` random bytes from the system's generator, as hex.
pub fn random_hex(n: usize) -> Result<String, StoreError> {
    let mut bytes = vec![0u8; n];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| StoreError::Invalid("the system random generator failed".into()))?;
    Ok(hex(&bytes))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<[u8; 32]> {
    if s.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

#[derive(Debug, Clone)]
pub struct TokenStore {
    dir: PathBuf,
}

impl TokenStore {
    pub fn new(data_dir: &Path) -> Self {
        Self {
            dir: data_dir.to_owned(),
        }
    }

    fn path(&self) -> PathBuf {
        self.dir.join(FILE)
    }

    fn io(&self, source: std::io::Error) -> StoreError {
        StoreError::Io {
            path: self.path(),
            source,
        }
    }

    pub fn stamp(&self) -> Result<Option<Stamp>, StoreError> {
        match fs::metadata(self.path()) {
            Ok(m) => Ok(Some(Stamp(m.ino(), m.size(), m.mtime(), m.mtime_nsec()))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(self.io(e)),
        }
    }

    fn read(&self) -> Result<FileBody, StoreError> {
        let bytes = match fs::read(self.path()) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(FileBody::default()),
            Err(e) => return Err(self.io(e)),
        };
        serde_json::from_slice(&bytes).map_err(|e| StoreError::Corrupt {
            path: self.path(),
            msg: e.to_string(),
        })
    }

    /// Every token, as the server checks them.
    pub fn list(&self) -> Result<Vec<Record>, StoreError> {
        self.read()?
            .tokens
            .into_iter()
            .map(|e| {
                let corrupt = |msg: String| StoreError::Corrupt {
                    path: self.path(),
                    msg,
                };
                let hash = unhex(&e.sha256)
                    .ok_or_else(|| corrupt(format!("token {}: bad sha256", e.info.id)))?;
                let expires_ns = match &e.info.expires {
                    None => None,
                    Some(t) => Some(
                        chrono::DateTime::parse_from_rfc3339(t)
                            .ok()
                            .and_then(|t| t.timestamp_nanos_opt())
                            .ok_or_else(|| {
                                corrupt(format!("token {}: bad expiry {t:?}", e.info.id))
                            })?,
                    ),
                };
                Ok(Record {
                    info: e.info,
                    hash,
                    expires_ns,
                })
            })
            .collect()
    }

    /// Every token, without secrets, sorted by creation.
    pub fn infos(&self) -> Result<Vec<TokenInfo>, StoreError> {
        Ok(self.list()?.into_iter().map(|r| r.info).collect())
    }

    /// Creates a token: returns it (the only time it is seen) and its listing.
    pub fn create(&self, new: NewToken) -> Result<(String, TokenInfo), StoreError> {
        let new = validate(new)?;
        let rng = SystemRandom::new();
        let mut id = [0u8; 6];
        let mut secret = [0u8; 24];
        rng.fill(&mut id)
            .and_then(|()| rng.fill(&mut secret))
            .map_err(|_| StoreError::Invalid("the system random generator failed".into()))?;
        let id = hex(&id);
        let token = format!("{TOKEN_PREFIX}{id}_{}", hex(&secret));
        let now = crate::now_ns();
        let info = TokenInfo {
            id,
            name: new.name,
            scopes: new.scopes,
            devices: new.devices,
            created: crate::dashboard::rfc3339(now),
            expires: new.expires_in.map(|d| {
                let d = i64::try_from(d.as_nanos()).unwrap_or(i64::MAX);
                crate::dashboard::rfc3339(now.saturating_add(d))
            }),
        };
        let entry = Entry {
            info: info.clone(),
            sha256: hex(&hash(&token)),
        };
        self.modify(|body| {
            body.tokens.push(entry);
            true
        })?;
        Ok((token, info))
    }

    /// Revokes token `id`; `false` if there is none.
    pub fn revoke(&self, id: &str) -> Result<bool, StoreError> {
        self.modify(|body| {
            let before = body.tokens.len();
            body.tokens.retain(|e| e.info.id != id);
            body.tokens.len() != before
        })
    }

    /// Applies `change` to the file under the lock; writes it back if `change` says so.
    fn modify(&self, change: impl FnOnce(&mut FileBody) -> bool) -> Result<bool, StoreError> {
        fs::create_dir_all(&self.dir).map_err(|e| self.io(e))?;
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(self.dir.join(LOCK))
            .map_err(|e| self.io(e))?;
        rustix::fs::flock(&lock, rustix::fs::FlockOperation::LockExclusive)
            .map_err(|e| self.io(e.into()))?;
        let mut body = self.read()?;
        if !change(&mut body) {
            return Ok(false);
        }
        let json = serde_json::to_vec_pretty(&body)
            .map_err(|e| StoreError::Invalid(format!("cannot encode the token file: {e}")))?;
        let tmp = self.dir.join(format!("{FILE}.tmp"));
        let mut f = OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(|e| self.io(e))?;
        f.write_all(&json)
            .and_then(|()| f.sync_all())
            .map_err(|e| self.io(e))?;
        fs::rename(&tmp, self.path()).map_err(|e| self.io(e))?;
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| self.io(e))?;
        Ok(true)
    }
}

fn validate(mut new: NewToken) -> Result<NewToken, StoreError> {
    let invalid = |m: String| Err(StoreError::Invalid(m));
    if new.scopes.is_empty() {
        return invalid("a token needs at least one scope: read, write or admin".into());
    }
    new.scopes.sort_by_key(|s| s.name());
    new.scopes.dedup();
    new.devices.retain(|d| !d.trim().is_empty());
    for d in &mut new.devices {
        *d = d.trim().to_owned();
        if let Err(e) = wattdb_engine::validate_device_id(d) {
            return invalid(format!("devices: prefix {d:?}: {e}"));
        }
    }
    if new.scopes.contains(&Scope::Admin) && !new.devices.is_empty() {
        return invalid(
            "devices: an admin token cannot be limited to plugs (it could create an unlimited token); give read and/or write"
                .into(),
        );
    }
    if let Some(name) = &new.name
        && (name.chars().count() > 200 || name.chars().any(char::is_control))
    {
        return invalid("name: at most 200 characters, no control characters".into());
    }
    if new.expires_in.is_some_and(|d| d.is_zero()) {
        return invalid("expires_in: must be longer than 0".into());
    }
    Ok(new)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_file_holds_hashes_only_and_revoked_tokens_leave_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = TokenStore::new(&dir.path().join("new-dir"));
        assert!(store.list().unwrap().is_empty());
        let (token, info) = store
            .create(NewToken {
                name: Some("kitchen dashboard".into()),
                scopes: vec![Scope::Read, Scope::Read],
                devices: vec!["house1-".into()],
                expires_in: Some(Duration::from_secs(3600)),
            })
            .unwrap();
        assert!(token.starts_with(TOKEN_PREFIX) && token.contains(&info.id));
        assert_eq!(info.scopes, vec![Scope::Read]);
        let (other, _) = store
            .create(NewToken {
                scopes: vec![Scope::Admin],
                ..NewToken::default()
            })
            .unwrap();
        let text = fs::read_to_string(store.path()).unwrap();
        assert!(!text.contains(&token) && !text.contains(&other));
        assert!(!text.contains(&token[TOKEN_PREFIX.len() + 13..]));
        let mode = fs::metadata(store.path()).unwrap().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let records = store.list().unwrap();
        assert_eq!(records.len(), 2);
        assert_eq!(records[0].hash, hash(&token));
        assert!(records[0].expires_ns.unwrap() > crate::now_ns());
        assert!(store.revoke(&info.id).unwrap());
        assert!(!store.revoke(&info.id).unwrap());
        assert_eq!(store.list().unwrap().len(), 1);
    }

    #[test]
    fn bad_settings_are_refused_with_the_setting_named() {
        let dir = tempfile::tempdir().unwrap();
        let store = TokenStore::new(dir.path());
        for (new, want) in [
            (NewToken::default(), "at least one scope"),
            (
                NewToken {
                    scopes: vec![Scope::Admin],
                    devices: vec!["a".into()],
                    ..NewToken::default()
                },
                "admin token cannot be limited",
            ),
            (
                NewToken {
                    scopes: vec![Scope::Read],
                    devices: vec!["a b".into()],
                    ..NewToken::default()
                },
                "devices: prefix \"a b\"",
            ),
        ] {
            let err = store.create(new).unwrap_err().to_string();
            assert!(err.contains(want), "{err}");
        }
        assert!(store.list().unwrap().is_empty());
    }
}
