//! `wattdb disk-bench`: how long the disk under a data directory takes to make a WAL
//! commit durable, measured without a server.
//!
//! Each commit does what the WAL thread does: write the commit's bytes after the last
//! one (`pwrite`) and `fdatasync`. The file is written whole and synced before the
//! clock starts, as a reused WAL segment is, so the fsyncs carry data and no block
//! allocation. Commits are paced open loop: commit `k` starts `k / rate` s after the
//! first, or at once when the one before ran late. Each is timed from the write to
//! the end of the fsync, which is what `wattdb_wal_fsync_seconds` times in the server.
//!
//! A write cannot be acknowledged before the fsync of its group, and a write that
//! arrives during a slow fsync waits for it, so the slow fsyncs set a floor under the
//! load generator's ack tail: the more of a minute the disk spends in fsyncs over
//! 25 ms ([`DiskReport::slow_s`]), the more acknowledgements take longer than that,
//! whatever the server does. The defaults are the WAL's stream at 500,000 readings/s: 100 commits of
//! 320 KiB a second.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::histogram::Histogram;

/// Size of the file the commits cycle through: one WAL segment.
pub const FILE_BYTES: u64 = 64 << 20;

const SLOW: Duration = Duration::from_millis(25);

/// What [`run`] measures.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskBenchArgs {
    /// An existing directory on the disk to measure (the data directory); the
    /// benchmark's file is created there and removed afterwards.
    pub dir: PathBuf,
    pub duration: Duration,
    pub commits_per_s: u32,
    /// Bytes written before each fsync.
    pub commit_bytes: usize,
}

impl Default for DiskBenchArgs {
    fn default() -> Self {
        Self {
            dir: PathBuf::from("wattdb-data"),
            duration: Duration::from_secs(60),
            commits_per_s: 100,
            commit_bytes: 320 << 10,
        }
    }
}

/// Why [`run`] stopped.
#[derive(Debug, thiserror::Error)]
pub enum DiskBenchError {
    #[error("invalid disk-bench argument {field}: {reason}")]
    InvalidArgs {
        field: &'static str,
        reason: &'static str,
    },
    #[error("{path} is not a directory; give an existing directory on the disk to measure")]
    NotADirectory { path: PathBuf },
    #[error("{op} {path}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// The outcome of a run. `--json` prints it as one object with these field names.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DiskReport {
    pub dir: String,
    pub commits: u64,
    pub commit_bytes: usize,
    pub commits_per_s: u32,
    /// From the first write to the end of the last fsync.
    pub elapsed_s: f64,
    /// Write + fdatasync of one commit, in milliseconds (within 1.6 %).
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
    pub over_10ms: u64,
    pub over_25ms: u64,
    pub over_100ms: u64,
    /// Seconds spent in commits that took over 25 ms.
    pub slow_s: f64,
}

impl DiskReport {
    pub fn print_human(&self) {
        println!(
            "wattdb disk-bench: {} commits of {} KiB at {}/s (write + fdatasync) in {}, {:.1} s",
            self.commits,
            self.commit_bytes >> 10,
            self.commits_per_s,
            self.dir,
            self.elapsed_s
        );
        println!(
            "  commit  p50 {:.2} ms  p99 {:.2} ms  p99.9 {:.2} ms  max {:.2} ms",
            self.p50_ms, self.p99_ms, self.p999_ms, self.max_ms
        );
        println!(
            "  slow    {} over 10 ms, {} over 25 ms ({:.3} s in all), {} over 100 ms",
            self.over_10ms, self.over_25ms, self.slow_s, self.over_100ms
        );
    }
}

/// Removes the benchmark's file however the run ends.
struct Scratch {
    path: PathBuf,
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> DiskBenchError + 'a {
    move |source| DiskBenchError::Io {
        op,
        path: path.to_owned(),
        source,
    }
}

/// Runs `commits_per_s × duration` commits (rounded down, at least one) into a file
/// in `args.dir` and reports their latency. Takes longer than `duration` when the disk
/// cannot keep the rate.
pub fn run(args: &DiskBenchArgs) -> Result<DiskReport, DiskBenchError> {
    let bad = |field, reason| Err(DiskBenchError::InvalidArgs { field, reason });
    if args.commits_per_s == 0 {
        return bad("commits_per_s", "must be at least 1");
    }
    if args.commit_bytes == 0 {
        return bad("commit_bytes", "must be at least 1");
    }
    if args.commit_bytes as u64 > FILE_BYTES {
        return bad("commit_bytes", "must be at most 64 MiB (one WAL segment)");
    }
    if args.duration.is_zero() {
        return bad("duration", "must be more than 0");
    }
    let meta = fs::metadata(&args.dir).map_err(io_err("cannot read", &args.dir))?;
    if !meta.is_dir() {
        return Err(DiskBenchError::NotADirectory {
            path: args.dir.clone(),
        });
    }

    let path = args
        .dir
        .join(format!(".wattdb-disk-bench-{}.tmp", std::process::id()));
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)
        .map_err(io_err("cannot create", &path))?;
    let scratch = Scratch { path };
    let path = scratch.path.as_path();
    fill(&file).map_err(io_err("cannot write", path))?;

    let commits = ((f64::from(args.commits_per_s) * args.duration.as_secs_f64()) as u64).max(1);
    let interval = Duration::from_secs_f64(1.0 / f64::from(args.commits_per_s));
    let mut data = vec![0x5a_u8; args.commit_bytes];
    let mut latency_us = Histogram::new();
    let (mut over_10ms, mut over_25ms, mut over_100ms) = (0, 0, 0);
    let mut slow = Duration::ZERO;
    let start = Instant::now();
    for k in 0..commits {
        let due = start + interval.mul_f64(k as f64);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            thread::sleep(wait);
        }
        // Each commit's bytes differ from what the block held before.
        data[0] = k as u8;
        let t = Instant::now();
        file.write_all_at(&data, commit_offset(k, args.commit_bytes as u64))
            .and_then(|()| file.sync_data())
            .map_err(io_err("cannot write and sync", path))?;
        let took = t.elapsed();
        latency_us.record(u64::try_from(took.as_micros()).unwrap_or(u64::MAX));
        over_10ms += u64::from(took > Duration::from_millis(10));
        over_100ms += u64::from(took > Duration::from_millis(100));
        if took > SLOW {
            over_25ms += 1;
            slow += took;
        }
    }
    let elapsed = start.elapsed();
    let ms = |us: u64| us as f64 / 1000.0;
    Ok(DiskReport {
        dir: args.dir.display().to_string(),
        commits,
        commit_bytes: args.commit_bytes,
        commits_per_s: args.commits_per_s,
        elapsed_s: elapsed.as_secs_f64(),
        p50_ms: ms(latency_us.quantile(0.5)),
        p99_ms: ms(latency_us.quantile(0.99)),
        p999_ms: ms(latency_us.quantile(0.999)),
        max_ms: ms(latency_us.max()),
        over_10ms,
        over_25ms,
        over_100ms,
        slow_s: slow.as_secs_f64(),
    })
}

/// Where commit `k` of `bytes` goes: one after the other, from the start again when the
/// next would not fit.
fn commit_offset(k: u64, bytes: u64) -> u64 {
    (k % (FILE_BYTES / bytes)) * bytes
}

/// Writes the whole file once and syncs it, so that the timed writes land on blocks
/// that are allocated and written.
fn fill(file: &File) -> io::Result<()> {
    let chunk = vec![0xa5_u8; 1 << 20];
    let mut off = 0;
    while off < FILE_BYTES {
        file.write_all_at(&chunk, off)?;
        off += chunk.len() as u64;
    }
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("wattdb-disk-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn times_every_commit_and_leaves_nothing_behind() {
        let dir = scratch_dir("run");
        let report = run(&DiskBenchArgs {
            dir: dir.clone(),
            duration: Duration::from_millis(500),
            commits_per_s: 40,
            commit_bytes: 4096,
        })
        .unwrap();
        assert_eq!(report.commits, 20);
        assert_eq!(report.commit_bytes, 4096);
        // Paced: 20 commits at 40/s start over 0.475 s.
        assert!(report.elapsed_s >= 0.475, "{report:?}");
        assert!(report.p50_ms > 0.0, "{report:?}");
        assert!(report.p50_ms <= report.p99_ms && report.p99_ms <= report.p999_ms);
        assert!(report.p999_ms <= report.max_ms, "{report:?}");
        assert!(report.over_100ms <= report.over_25ms && report.over_25ms <= report.over_10ms);
        assert!(report.over_10ms <= report.commits);
        assert_eq!(report.slow_s > 0.0, report.over_25ms > 0, "{report:?}");
        assert_eq!(
            fs::read_dir(&dir).unwrap().count(),
            0,
            "the file is removed"
        );
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn commits_follow_each_other_and_wrap_around_the_file() {
        assert_eq!(commit_offset(0, 4096), 0);
        assert_eq!(commit_offset(1, 4096), 4096);
        assert_eq!(commit_offset(16383, 4096), FILE_BYTES - 4096);
        assert_eq!(commit_offset(16384, 4096), 0);
        // 30 MiB: two fit, the third starts over.
        assert_eq!(commit_offset(1, 30 << 20), 30 << 20);
        assert_eq!(commit_offset(2, 30 << 20), 0);
        assert_eq!(commit_offset(5, FILE_BYTES), 0);
    }

    #[test]
    fn bad_arguments_and_directories_are_refused() {
        let ok = DiskBenchArgs {
            dir: std::env::temp_dir(),
            ..DiskBenchArgs::default()
        };
        let field = |args: DiskBenchArgs| match run(&args) {
            Err(DiskBenchError::InvalidArgs { field, .. }) => field,
            other => panic!("{other:?}"),
        };
        assert_eq!(
            field(DiskBenchArgs {
                commits_per_s: 0,
                ..ok.clone()
            }),
            "commits_per_s"
        );
        assert_eq!(
            field(DiskBenchArgs {
                commit_bytes: 0,
                ..ok.clone()
            }),
            "commit_bytes"
        );
        assert_eq!(
            field(DiskBenchArgs {
                commit_bytes: (64 << 20) + 1,
                ..ok.clone()
            }),
            "commit_bytes"
        );
        assert_eq!(
            field(DiskBenchArgs {
                duration: Duration::ZERO,
                ..ok.clone()
            }),
            "duration"
        );

        let missing = std::env::temp_dir().join("wattdb-disk-bench-no-such-dir");
        let err = run(&DiskBenchArgs {
            dir: missing.clone(),
            ..ok.clone()
        })
        .unwrap_err();
        assert!(
            matches!(
                err,
                DiskBenchError::Io {
                    op: "cannot read",
                    ..
                }
            ),
            "{err:?}"
        );
        assert!(
            err.to_string().contains("wattdb-disk-bench-no-such-dir"),
            "{err}"
        );

        let dir = scratch_dir("file");
        let file = dir.join("plain");
        fs::write(&file, b"x").unwrap();
        let err = run(&DiskBenchArgs {
            dir: file.clone(),
            ..ok
        })
        .unwrap_err();
        assert!(
            matches!(err, DiskBenchError::NotADirectory { .. }),
            "{err:?}"
        );
        assert!(
            err.to_string().contains("plain is not a directory"),
            "{err}"
        );
        fs::remove_dir_all(&dir).unwrap();
    }
}
