//! Retention: files older than their resolution's retention period leave the manifest
//! and the store.
//!
//! A file expires when its newest row (`max_ts`, the newest bucket start for rollups)
//! is older than `now − retention` of its tier. Files never straddle a partition (an
//! hour of raw readings, a day of 1m rows, a month of 1h rows, a year of 1d rows), so
//! data leaves a partition at a time. Raw readings are never dropped before the rollups
//! that cover them exist: rollups are committed in the same manifest version as the raw
//! files they summarise (see [`crate::rollups`]). Expired files are deleted after
//! [`crate::CompactionConfig::delete_after`], like files replaced by compaction, so a
//! query planned just before still reads them.
//!
//! Retention runs on the persist thread, at most once a minute, and when asked
//! ([`crate::Engine::expire`]). "Now" comes from the engine's [`Clock`], which tests
//! set by hand.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant};

use tracing::info;
use wattdb_storage::files::Tier;

use crate::compact::Graveyard;
use crate::error::Result;
use crate::persist::View;
use crate::{PersistFaults, Shared};

const DAY: Duration = Duration::from_secs(86_400);

/// How long each resolution is kept; `None` keeps it forever.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetentionConfig {
    pub raw: Option<Duration>,
    pub minute: Option<Duration>,
    pub hour: Option<Duration>,
    pub day: Option<Duration>,
}

impl Default for RetentionConfig {
    /// Raw 7 days, 1m 30 days, 1h 1 year, 1d 5 years.
    fn default() -> Self {
        Self {
            raw: Some(7 * DAY),
            minute: Some(30 * DAY),
            hour: Some(365 * DAY),
            day: Some(5 * 365 * DAY),
        }
    }
}

impl RetentionConfig {
    /// Keeps everything.
    pub fn forever() -> Self {
        Self {
            raw: None,
            minute: None,
            hour: None,
            day: None,
        }
    }

    pub fn of(&self, tier: Tier) -> Option<Duration> {
        match tier {
            Tier::Raw => self.raw,
            Tier::Minute => self.minute,
            Tier::Hour => self.hour,
            Tier::Day => self.day,
        }
    }

    /// The time before which files of `tier` expire, at `now`.
    pub fn cutoff(&self, tier: Tier, now: i64) -> Option<i64> {
        let keep = self.of(tier)?;
        Some(now.saturating_sub(i64::try_from(keep.as_nanos()).unwrap_or(i64::MAX)))
    }
}

/// Where "now" comes from: the system clock, or a time tests set.
#[derive(Debug, Clone, Default)]
pub enum Clock {
    #[default]
    System,
    Manual(Arc<AtomicI64>),
}

impl Clock {
    /// A clock that stays at `ns` until [`Clock::set`].
    pub fn manual(ns: i64) -> Clock {
        Clock::Manual(Arc::new(AtomicI64::new(ns)))
    }

    pub fn set(&self, ns: i64) {
        if let Clock::Manual(t) = self {
            t.store(ns, Ordering::SeqCst);
        }
    }

    /// Nanoseconds since the Unix epoch.
    pub fn now(&self) -> i64 {
        match self {
            Clock::System => std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX)),
            Clock::Manual(t) => t.load(Ordering::SeqCst),
        }
    }
}

/// What one retention pass removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RetentionReport {
    /// Files, rows and bytes removed, per tier (raw, 1m, 1h, 1d).
    pub files: [u64; 4],
    pub rows: [u64; 4],
    pub bytes: [u64; 4],
    pub manifest_version: u64,
}

impl RetentionReport {
    pub fn total_files(&self) -> u64 {
        self.files.iter().sum()
    }
}

fn tier_index(tier: Tier) -> usize {
    match tier {
        Tier::Raw => 0,
        Tier::Minute => 1,
        Tier::Hour => 2,
        Tier::Day => 3,
    }
}

/// Removes expired files from the manifest (one commit) and schedules their deletion.
pub(crate) async fn expire(
    shared: &Shared,
    store: &wattdb_storage::Store,
    config: &RetentionConfig,
    now: i64,
    graveyard: &mut Graveyard,
    delete_after: Duration,
    faults: Option<&PersistFaults>,
) -> Result<RetentionReport> {
    let base = Arc::clone(&shared.view.read().manifest);
    let expired = |f: &wattdb_storage::FileMeta| {
        config
            .cutoff(f.tier, now)
            .is_some_and(|cutoff| f.max_ts < cutoff)
    };
    let mut report = RetentionReport {
        manifest_version: base.version,
        ..Default::default()
    };
    let gone: Vec<&wattdb_storage::FileMeta> = base.files.iter().filter(|f| expired(f)).collect();
    if gone.is_empty() {
        return Ok(report);
    }
    for f in &gone {
        let i = tier_index(f.tier);
        report.files[i] += 1;
        report.rows[i] += f.rows;
        report.bytes[i] += f.size;
    }
    let mut m = base.next();
    m.files.retain(|f| !expired(f));
    if let Some(f) = faults {
        f.check_commit()?;
    }
    m.commit(store).await?;
    report.manifest_version = m.version;
    graveyard.bury(
        gone.iter().map(|f| f.object_path()),
        Instant::now() + delete_after,
    );
    {
        let mut view = shared.view.write();
        *view = View {
            manifest: Arc::new(m),
            frozen: view.frozen.take(),
        };
    }
    let stats = &shared.stats;
    stats
        .expired_files
        .fetch_add(report.total_files(), Ordering::Relaxed);
    info!(
        raw = report.files[0],
        minute = report.files[1],
        hour = report.files[2],
        day = report.files[3],
        rows = report.rows.iter().sum::<u64>(),
        bytes = report.bytes.iter().sum::<u64>(),
        manifest = report.manifest_version,
        "expired files past their retention"
    );
    Ok(report)
}
