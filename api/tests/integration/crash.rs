//! SIGKILL at random moments under concurrent writes: every acknowledged reading must
//! be there after restart, exactly once. `WATTDB_CRASH_CYCLES=500` runs a longer mode.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::{Rng, SeedableRng};

use crate::support::{Server, agent, lp_line, response};

const CLIENTS: usize = 4;
const BATCH: usize = 25;
const T0: i64 = 1_700_000_000_000_000_000;

/// What the clients know: readings acknowledged (must exist) and readings whose fate
/// is unknown (the connection died before an answer; may exist, at most once).
#[derive(Default)]
struct Ledger {
    acked: HashMap<(String, i64), f64>,
    unknown: HashSet<(String, i64)>,
}

fn client(
    url: String,
    id: usize,
    cycle: usize,
    stop: Arc<AtomicBool>,
    ledger: Arc<Mutex<Ledger>>,
    retry: Vec<(String, i64, f64)>,
) -> Vec<(String, i64, f64)> {
    let agent = agent();
    let mut k = 0i64;
    let mut pending = retry;
    let mut failed = Vec::new();
    while !stop.load(Ordering::Relaxed) || !pending.is_empty() {
        if stop.load(Ordering::Relaxed) {
            // The server is gone: what we hold stays unknown and is retried next cycle.
            failed.append(&mut pending);
            break;
        }
        let batch: Vec<(String, i64, f64)> = if pending.is_empty() {
            (0..BATCH)
                .map(|i| {
                    let device = format!("plug-{id}-{}", i % 5);
                    let ts = T0 + (cycle as i64) * 1_000_000_000_000 + k * 1000 + i as i64;
                    (device, ts, (k * 10 + i as i64) as f64 / 10.0)
                })
                .collect()
        } else {
            std::mem::take(&mut pending)
        };
        k += 1;
        let body: String = batch
            .iter()
            .map(|(d, t, p)| lp_line(d, *t, *p) + "\n")
            .collect();
        let (status, text) = response(
            agent
                .post(&format!("{url}/api/v2/write"))
                .send_string(&body),
        );
        let mut l = ledger.lock().unwrap();
        match status {
            204 => {
                for (d, t, p) in &batch {
                    l.unknown.remove(&(d.clone(), *t));
                    l.acked.insert((d.clone(), *t), *p);
                }
            }
            503 => pending = batch,
            0 => {
                for (d, t, _) in &batch {
                    if !l.acked.contains_key(&(d.clone(), *t)) {
                        l.unknown.insert((d.clone(), *t));
                    }
                }
                drop(l);
                failed.extend(batch);
                // Connection refused or reset: the server died.
                std::thread::sleep(Duration::from_millis(5));
            }
            other => panic!("unexpected status {other}: {text}"),
        }
    }
    failed
}

#[test]
fn sigkill_under_concurrent_writes_loses_no_acknowledged_reading() {
    let cycles: usize = std::env::var("WATTDB_CRASH_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let seed: u64 = std::env::var("WATTDB_CRASH_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| rand::rng().random());
    eprintln!("crash test: {cycles} cycles, WATTDB_CRASH_SEED={seed}");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let dir = tempfile::tempdir().unwrap();
    // Small segments so that kills also land around segment rolls.
    let mut server = Server::start(
        &dir.path().join("data"),
        &["--group-commit-ms", "1", "--wal-segment-mib", "1"],
    );
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let mut retries: Vec<Vec<(String, i64, f64)>> = vec![Vec::new(); CLIENTS];
    for cycle in 0..cycles {
        let stop = Arc::new(AtomicBool::new(false));
        let handles: Vec<_> = (0..CLIENTS)
            .map(|id| {
                let (url, stop, ledger) =
                    (server.url.clone(), Arc::clone(&stop), Arc::clone(&ledger));
                let retry = std::mem::take(&mut retries[id]);
                std::thread::spawn(move || client(url, id, cycle, stop, ledger, retry))
            })
            .collect();
        // Persist cycles and compactions run all along, so kills also land mid-upload,
        // mid-merge, around manifest commits and the WAL release.
        let persister = {
            let (url, stop) = (server.url.clone(), Arc::clone(&stop));
            std::thread::spawn(move || {
                let agent = agent();
                let mut round = 0u32;
                while !stop.load(Ordering::Relaxed) {
                    let _ = agent.post(&format!("{url}/api/v1/admin/persist")).call();
                    round += 1;
                    if round >= 2 {
                        let _ = agent.post(&format!("{url}/api/v1/admin/compact")).call();
                    }
                    std::thread::sleep(Duration::from_millis(15));
                }
            })
        };
        std::thread::sleep(Duration::from_millis(rng.random_range(20..300)));
        server.kill();
        stop.store(true, Ordering::Relaxed);
        for (id, h) in handles.into_iter().enumerate() {
            retries[id] = h.join().unwrap();
        }
        persister.join().unwrap();
        server.restart();
        verify(&server, &ledger.lock().unwrap(), cycle);
        // What the WAL replayed persists (and its rollups are recomputed) before the
        // next round; otherwise a backlog that no short life of the server can persist
        // would keep growing.
        let (status, body) = server.post("/api/v1/admin/persist", "application/json", b"");
        assert_eq!(status, 200, "{body}");
    }
    // The rollups survived the kills too: after a last persist, every minute of every
    // plug counts the readings stored and sums their power.
    let (status, body) = server.post("/api/v1/admin/persist", "application/json", b"");
    assert_eq!(status, 200, "{body}");
    let diff = server.sql(
        "SELECT r.device_id, r.m, r.n, m.count AS rolled_up FROM \
           (SELECT device_id, date_trunc('minute', ts) AS m, count(*) AS n, sum(power) AS p \
            FROM readings GROUP BY 1, 2) r \
         FULL JOIN readings_1m m ON r.device_id = m.device_id AND r.m = m.bucket \
         WHERE r.n IS NULL OR m.count IS NULL OR r.n <> m.count \
            OR abs(r.p - m.power_sum) > 1e-6 * abs(r.p) LIMIT 5",
    );
    assert!(
        diff.is_empty(),
        "1m rollups differ from the readings: {diff:?}"
    );
    let persisted = server.sql("SELECT 1 FROM readings LIMIT 1");
    assert_eq!(persisted.len(), 1);
    assert!(
        dir.path().join("data/readings/resolution=raw").is_dir(),
        "persist cycles ran during the test"
    );
    let log = std::fs::read_to_string(dir.path().join("data.log")).unwrap();
    let failures: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("failed") && !l.contains("connection"))
        .take(5)
        .collect();
    let persists: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("persisted buffered readings"))
        .collect();
    assert!(
        log.contains("compacted a partition"),
        "compactions ran during the test; failures logged: {failures:#?}; {} persist cycles, the last: {:?}",
        persists.len(),
        persists.last()
    );
    // Released WAL segments were reused, so kills also landed in segments that still
    // hold an older segment's records after their end.
    assert!(
        log.lines()
            .any(|l| l.contains("released persisted WAL segments")
                && !l.contains("kept_for_reuse=0")),
        "WAL segments were kept for reuse during the test"
    );
    let l = ledger.lock().unwrap();
    eprintln!(
        "crash test: {} readings acknowledged, {} in doubt at a kill, all verified; {} persist cycles",
        l.acked.len(),
        l.unknown.len(),
        persists.len()
    );
    assert!(
        l.acked.len() > cycles * BATCH,
        "too few writes acknowledged: {}",
        l.acked.len()
    );
}

fn verify(server: &Server, ledger: &Ledger, cycle: usize) {
    let rows = server.sql("SELECT device_id, CAST(ts AS BIGINT) AS t, power FROM readings");
    let mut seen: HashMap<(String, i64), f64> = HashMap::new();
    for r in &rows {
        let key = (
            r["device_id"].as_str().unwrap().to_owned(),
            r["t"].as_i64().unwrap(),
        );
        let power = r["power"].as_f64().unwrap();
        assert!(
            seen.insert(key.clone(), power).is_none(),
            "cycle {cycle}: {key:?} stored twice"
        );
        assert!(
            ledger.acked.contains_key(&key) || ledger.unknown.contains(&key),
            "cycle {cycle}: {key:?} was never written"
        );
    }
    for (key, power) in &ledger.acked {
        match seen.get(key) {
            Some(p) => assert_eq!(p, power, "cycle {cycle}: {key:?} has the wrong value"),
            None => panic!(
                "cycle {cycle}: acknowledged reading {key:?} lost ({} acked, {} stored)",
                ledger.acked.len(),
                rows.len()
            ),
        }
    }
}
