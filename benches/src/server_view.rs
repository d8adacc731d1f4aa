//! What the server's own `/metrics` say about a run: WAL fsync and write latency,
//! read before the first write and after the last acknowledgement, and subtracted.
//!
//! A load generator on the server's machine measures everything between a batch being
//! due and its acknowledgement: its own scheduling, the network, parsing, the queue,
//! the WAL fsync and the buffer insert. When its p99 is high, these figures say which
//! part of that was the disk: a WAL fsync the storage took 300 ms over holds every write
//! that arrives meanwhile, and no code above the file system can shorten it.
//!
//! The figures come from the server's Prometheus histograms, so they are bucket bounds
//! (`p99 ≤ 2.5 ms`), not exact values. They cover everything the server did during the
//! run, other clients' writes included.

use std::collections::BTreeMap;
use std::io::Read;
use std::time::Duration;

use serde::Serialize;

use crate::loadgen::response_text;

/// Histogram of the WAL's group commits (one write and fdatasync each).
const FSYNC: &str = "wattdb_wal_fsync_seconds";
/// Histogram of the time from a batch entering the write queue to its being durable
/// and queryable (one per write request).
const WRITE: &str = "wattdb_write_to_queryable_seconds";
/// The latency both are judged against: the ack p99 aim of the benchmarks.
const SLOW_S: f64 = 0.025;

/// A Prometheus histogram as `/metrics` prints it: cumulative counts per upper bound
/// (seconds, ascending; `+Inf` as infinity).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Buckets {
    pub cumulative: Vec<(f64, u64)>,
}

impl Buckets {
    fn count(&self) -> u64 {
        self.cumulative.last().map_or(0, |&(_, n)| n)
    }

    /// What was recorded after `before` (the same histogram, read earlier). `None` if
    /// the bounds differ or a count went down (the server restarted in between).
    fn since(&self, before: &Self) -> Option<Self> {
        if before.cumulative.is_empty() {
            return Some(self.clone());
        }
        if before.cumulative.len() != self.cumulative.len() {
            return None;
        }
        let mut cumulative = Vec::with_capacity(self.cumulative.len());
        for (&(le, n), &(le0, n0)) in self.cumulative.iter().zip(&before.cumulative) {
            if le != le0 || n < n0 {
                return None;
            }
            cumulative.push((le, n - n0));
        }
        Some(Self { cumulative })
    }

    /// The smallest upper bound at or under which the share `q` of the values fall;
    /// `None` if that is past the last finite bound (or nothing was recorded).
    fn quantile_bound(&self, q: f64) -> Option<f64> {
        let total = self.count();
        if total == 0 {
            return None;
        }
        let want = (q * total as f64).ceil().max(1.0) as u64;
        self.cumulative
            .iter()
            .find(|&&(_, n)| n >= want)
            .map(|&(le, _)| le)
            .filter(|le| le.is_finite())
    }

    /// Values over `le`, which must be one of the bounds.
    fn over(&self, le: f64) -> Option<u64> {
        let at = self.cumulative.iter().find(|&&(b, _)| b == le)?.1;
        Some(self.count() - at)
    }
}

/// Every histogram in a Prometheus text page, by name (label-free ones only, which is
/// how WattDB prints the two read here).
pub fn parse_histograms(text: &str) -> BTreeMap<String, Buckets> {
    let mut out: BTreeMap<String, Buckets> = BTreeMap::new();
    for line in text.lines() {
        let Some((name, rest)) = line.split_once("_bucket{le=\"") else {
            continue;
        };
        let Some((le, value)) = rest.split_once("\"} ") else {
            continue;
        };
        let le = if le == "+Inf" {
            f64::INFINITY
        } else {
            match le.parse::<f64>() {
                Ok(le) => le,
                Err(_) => continue,
            }
        };
        let Ok(n) = value.trim().parse::<f64>() else {
            continue;
        };
        out.entry(name.to_owned())
            .or_default()
            .cumulative
            .push((le, n as u64));
    }
    for b in out.values_mut() {
        b.cumulative.sort_by(|a, b| a.0.total_cmp(&b.0));
    }
    out
}

/// The histograms a [`ServerView`] is made from, read at one moment.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    fsync: Buckets,
    write: Buckets,
}

impl Snapshot {
    /// Reads the histograms from a `/metrics` page.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut all = parse_histograms(text);
        let mut take = |name: &str| {
            all.remove(name)
                .ok_or_else(|| format!("`{name}` is not in the server's /metrics"))
        };
        Ok(Self {
            fsync: take(FSYNC)?,
            write: take(WRITE)?,
        })
    }

    /// Reads the histograms from the `/metrics` of the server at `url` (its base URL);
    /// the token needs the read scope.
    pub fn fetch(url: &str, token: Option<&str>) -> Result<Self, String> {
        Self::parse(&metrics_page(url, token)?)
    }
}

/// The `/metrics` page of the server at `url` (its base URL); the token needs the read
/// scope. The error says which URL and why (its status and the start of its body).
pub fn metrics_page(url: &str, token: Option<&str>) -> Result<String, String> {
    let url = format!("{}/metrics", url.trim_end_matches('/'));
    match crate::http_agent(token, Duration::from_secs(30))
        .get(&url)
        .call()
    {
        Ok(resp) => resp
            .into_string()
            .map_err(|e| format!("reading {url} failed: {e}")),
        Err(ureq::Error::Status(status, resp)) => {
            let mut body = Vec::new();
            let _ = resp.into_reader().take(1 << 20).read_to_end(&mut body);
            Err(format!(
                "{url} answered HTTP {status}: {}",
                response_text(&body)
            ))
        }
        Err(e) => Err(format!("{url} could not be read: {e}")),
    }
}

/// The server's side of a run, from its `/metrics` before and after. Latencies are the
/// upper bounds of Prometheus buckets, in milliseconds; `null` where the value is past
/// the last bound (10 s) or nothing was recorded.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ServerView {
    /// WAL group commits: one write and fdatasync each, covering every write request
    /// that arrived while the one before was being synced.
    pub wal_fsyncs: u64,
    pub wal_fsync_p50_ms: Option<f64>,
    pub wal_fsync_p99_ms: Option<f64>,
    /// The bucket of the slowest one.
    pub wal_fsync_max_ms: Option<f64>,
    /// Group commits that took over 25 ms.
    pub wal_fsyncs_over_25ms: u64,
    /// Write requests that reached the write queue.
    pub writes: u64,
    /// From entering the write queue to durable and queryable (the server's share of
    /// the ack latency, without HTTP and parsing).
    pub write_p50_ms: Option<f64>,
    pub write_p99_ms: Option<f64>,
    pub writes_over_25ms: u64,
}

impl ServerView {
    /// What happened between two snapshots; `None` if the server restarted in between.
    pub fn between(before: &Snapshot, after: &Snapshot) -> Option<Self> {
        let fsync = after.fsync.since(&before.fsync)?;
        let write = after.write.since(&before.write)?;
        let ms = |s: Option<f64>| s.map(|s| (s * 1e6).round() / 1e3);
        Some(Self {
            wal_fsyncs: fsync.count(),
            wal_fsync_p50_ms: ms(fsync.quantile_bound(0.5)),
            wal_fsync_p99_ms: ms(fsync.quantile_bound(0.99)),
            wal_fsync_max_ms: ms(fsync.quantile_bound(1.0)),
            wal_fsyncs_over_25ms: fsync.over(SLOW_S).unwrap_or(0),
            writes: write.count(),
            write_p50_ms: ms(write.quantile_bound(0.5)),
            write_p99_ms: ms(write.quantile_bound(0.99)),
            writes_over_25ms: write.over(SLOW_S).unwrap_or(0),
        })
    }
}

/// `≤ 2.5 ms`, or `> 10 s` past the last bound.
fn bound(ms: Option<f64>) -> String {
    match ms {
        Some(ms) => format!("≤ {ms} ms"),
        None => "> 10 s".to_owned(),
    }
}

impl std::fmt::Display for ServerView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "WAL fsyncs {}", self.wal_fsyncs)?;
        if self.wal_fsyncs > 0 {
            write!(
                f,
                ": p50 {}, p99 {}, slowest {}, {} over 25 ms",
                bound(self.wal_fsync_p50_ms),
                bound(self.wal_fsync_p99_ms),
                bound(self.wal_fsync_max_ms),
                self.wal_fsyncs_over_25ms,
            )?;
        }
        write!(f, "; writes {}", self.writes)?;
        if self.writes > 0 {
            write!(
                f,
                ": queue to queryable p99 {}, {} over 25 ms",
                bound(self.write_p99_ms),
                self.writes_over_25ms,
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A page as WattDB prints it, for fsync counts per bucket bound (ms) and writes.
    fn page(fsync: &[(f64, u64)], write: &[(f64, u64)]) -> String {
        let mut out = String::from("# HELP wattdb_wal_fsyncs_total x\nwattdb_wal_fsyncs_total 9\n");
        for (name, counts) in [(FSYNC, fsync), (WRITE, write)] {
            let mut cum = 0;
            for &(le, n) in counts {
                cum += n;
                let le = if le.is_finite() {
                    (le / 1000.0).to_string()
                } else {
                    "+Inf".to_owned()
                };
                out.push_str(&format!("{name}_bucket{{le=\"{le}\"}} {cum}\n"));
            }
            out.push_str(&format!("{name}_sum 1.5\n{name}_count {cum}\n"));
        }
        out
    }

    const INF: f64 = f64::INFINITY;

    #[test]
    fn the_view_is_what_happened_between_the_two_pages() {
        let before = page(
            &[
                (1.0, 10),
                (2.5, 0),
                (25.0, 5),
                (500.0, 0),
                (10_000.0, 0),
                (INF, 0),
            ],
            &[
                (1.0, 0),
                (2.5, 3),
                (25.0, 0),
                (500.0, 0),
                (10_000.0, 0),
                (INF, 0),
            ],
        );
        // Since then: 100 fsyncs, 97 within 1 ms, one of 1–2.5 ms, one of 2.5–25 ms,
        // one of 25–500 ms; 50 writes, 48 within 2.5 ms, 2 over 25 ms.
        let after = page(
            &[
                (1.0, 107),
                (2.5, 1),
                (25.0, 6),
                (500.0, 1),
                (10_000.0, 0),
                (INF, 0),
            ],
            &[
                (1.0, 0),
                (2.5, 51),
                (25.0, 0),
                (500.0, 2),
                (10_000.0, 0),
                (INF, 0),
            ],
        );
        let view = ServerView::between(
            &Snapshot::parse(&before).unwrap(),
            &Snapshot::parse(&after).unwrap(),
        )
        .unwrap();
        assert_eq!(
            view,
            ServerView {
                wal_fsyncs: 100,
                wal_fsync_p50_ms: Some(1.0),
                wal_fsync_p99_ms: Some(25.0),
                wal_fsync_max_ms: Some(500.0),
                wal_fsyncs_over_25ms: 1,
                writes: 50,
                write_p50_ms: Some(2.5),
                write_p99_ms: Some(500.0),
                writes_over_25ms: 2,
            }
        );
        assert_eq!(
            view.to_string(),
            "WAL fsyncs 100: p50 ≤ 1 ms, p99 ≤ 25 ms, slowest ≤ 500 ms, 1 over 25 ms; \
             writes 50: queue to queryable p99 ≤ 500 ms, 2 over 25 ms"
        );
    }

    #[test]
    fn past_the_last_bound_and_nothing_recorded_are_null() {
        let empty = page(
            &[(1.0, 0), (25.0, 0), (INF, 0)],
            &[(1.0, 0), (25.0, 0), (INF, 0)],
        );
        let after = page(
            &[(1.0, 0), (25.0, 0), (INF, 1)],
            &[(1.0, 0), (25.0, 0), (INF, 0)],
        );
        let view = ServerView::between(
            &Snapshot::parse(&empty).unwrap(),
            &Snapshot::parse(&after).unwrap(),
        )
        .unwrap();
        assert_eq!(view.wal_fsyncs, 1);
        assert_eq!(view.wal_fsync_max_ms, None);
        assert_eq!(view.wal_fsyncs_over_25ms, 1);
        assert_eq!(view.writes, 0);
        assert_eq!(view.write_p99_ms, None);
        assert_eq!(
            view.to_string(),
            "WAL fsyncs 1: p50 > 10 s, p99 > 10 s, slowest > 10 s, 1 over 25 ms; writes 0"
        );
    }

    #[test]
    fn a_restart_in_between_gives_no_view() {
        let before = page(&[(1.0, 10), (INF, 0)], &[(1.0, 10), (INF, 0)]);
        let after = page(&[(1.0, 3), (INF, 0)], &[(1.0, 3), (INF, 0)]);
        let (before, after) = (
            Snapshot::parse(&before).unwrap(),
            Snapshot::parse(&after).unwrap(),
        );
        assert_eq!(ServerView::between(&before, &after), None);
    }

    #[test]
    fn a_page_without_the_histograms_is_an_error_naming_the_missing_one() {
        let err = Snapshot::parse("wattdb_wal_fsyncs_total 3\n").unwrap_err();
        assert!(err.contains("wattdb_wal_fsync_seconds"), "{err}");
    }
}
