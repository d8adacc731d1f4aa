//! A tiny HTTP/1.1 server standing in for WattDB: it decodes writes with
//! `wattdb-ingest`, keeps `(device_id, ts)` → times written, and answers the loadgen's
//! verification query with CSV, and `/metrics` with WattDB's WAL fsync and write
//! histograms (every write counted as one fsync of under 1 ms). Knobs make it
//! misbehave.

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;

use wattdb_ingest::{Precision, ReadingBatch, decode_json_readings, decode_line_protocol};

#[derive(Debug, Default)]
pub struct Knobs {
    /// Answer this many writes with `503` and `Retry-After: 0` first.
    pub refuse_503: AtomicU32,
    /// Answer every write with 400.
    pub reject_all: bool,
    /// Acknowledge but do not store this device's readings.
    pub lose_device: Option<String>,
    /// Store every write as its own row (no last-write-wins), so duplicates show.
    pub keep_duplicates: bool,
    /// Require `Authorization: Bearer {token}`.
    pub token: Option<String>,
}

#[derive(Debug, Default)]
pub struct State {
    pub knobs: Knobs,
    /// `(device_id, ts)` → times stored.
    pub rows: Mutex<HashMap<(String, i64), u64>>,
    pub writes: AtomicU64,
    pub queries: Mutex<Vec<String>>,
    /// Every stored reading as it arrived: `(connection, device_id, ts)`, connections
    /// numbered from 0 in the order they were accepted.
    pub arrivals: Mutex<Vec<(usize, String, i64)>>,
}

pub struct Server {
    pub addr: SocketAddr,
    pub state: Arc<State>,
}

impl Server {
    pub fn start(knobs: Knobs) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(State {
            knobs,
            ..State::default()
        });
        let st = Arc::clone(&state);
        thread::spawn(move || {
            for (id, conn) in listener.incoming().enumerate() {
                let Ok(conn) = conn else { return };
                let st = Arc::clone(&st);
                thread::spawn(move || serve(conn, id, &st));
            }
        });
        Self { addr, state }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn distinct(&self) -> usize {
        self.state.rows.lock().unwrap().len()
    }
}

fn serve(conn: TcpStream, id: usize, st: &State) {
    let mut reader = BufReader::new(conn.try_clone().unwrap());
    let mut out = conn;
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
            return;
        }
        let mut headers = HashMap::new();
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some((k, v)) = line.split_once(':') {
                headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_owned());
            }
        }
        let len: usize = headers
            .get("content-length")
            .map_or(0, |v| v.parse().unwrap());
        let mut body = vec![0; len];
        reader.read_exact(&mut body).unwrap();
        let path = request_line
            .split_whitespace()
            .nth(1)
            .unwrap_or("")
            .to_owned();
        let (status, extra, resp_body) = handle(st, id, &path, &headers, &body);
        let reason = match status {
            200 => "OK",
            204 => "No Content",
            400 => "Bad Request",
            401 => "Unauthorized",
            503 => "Service Unavailable",
            _ => "Other",
        };
        let head = format!(
            "HTTP/1.1 {status} {reason}\r\nContent-Length: {}\r\n{extra}\r\n",
            resp_body.len()
        );
        if out.write_all(head.as_bytes()).is_err() || out.write_all(&resp_body).is_err() {
            return;
        }
    }
}

fn handle(
    st: &State,
    conn: usize,
    path: &str,
    headers: &HashMap<String, String>,
    body: &[u8],
) -> (u16, String, Vec<u8>) {
    if let Some(token) = &st.knobs.token
        && headers.get("authorization") != Some(&format!("Bearer {token}"))
    {
        return (401, String::new(), b"{\"error\":\"no token\"}".to_vec());
    }
    if path == "/api/v1/query" {
        return (
            200,
            "Content-Type: text/csv\r\n".to_owned(),
            query(st, body),
        );
    }
    if path == "/metrics" {
        return (200, "Content-Type: text/plain\r\n".to_owned(), metrics(st));
    }
    st.writes.fetch_add(1, Ordering::Relaxed);
    if st.knobs.reject_all {
        return (400, String::new(), b"{\"error\":\"line 1: no\"}".to_vec());
    }
    let refused = st
        .knobs
        .refuse_503
        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
    if refused.is_ok() {
        return (
            503,
            "Retry-After: 0\r\n".to_owned(),
            b"{\"error\":\"busy\"}".to_vec(),
        );
    }
    let mut batch = ReadingBatch::new();
    let decoded = match path {
        "/api/v2/write?precision=ns" => {
            decode_line_protocol(body, Precision::Ns, 0, &mut batch).map_err(|e| e.to_string())
        }
        "/api/v1/readings" => {
            assert_eq!(
                headers.get("content-type").map(String::as_str),
                Some("application/json")
            );
            decode_json_readings(body, 0, &mut batch).map_err(|e| e.to_string())
        }
        _ => return (404, String::new(), Vec::new()),
    };
    if let Err(e) = decoded {
        return (400, String::new(), e.into_bytes());
    }
    let mut rows = st.rows.lock().unwrap();
    let mut arrivals = st.arrivals.lock().unwrap();
    for i in 0..batch.len() {
        let r = batch.get(i);
        if st.knobs.lose_device.as_deref() == Some(r.device_id) {
            continue;
        }
        let n = rows.entry((r.device_id.to_owned(), r.ts)).or_insert(0);
        *n = if st.knobs.keep_duplicates { *n + 1 } else { 1 };
        arrivals.push((conn, r.device_id.to_owned(), r.ts));
    }
    (204, String::new(), Vec::new())
}

/// The two histograms the loadgen reads, as WattDB prints them.
fn metrics(st: &State) -> Vec<u8> {
    let n = st.writes.load(Ordering::Relaxed);
    let mut out = String::new();
    for name in [
        "wattdb_wal_fsync_seconds",
        "wattdb_write_to_queryable_seconds",
    ] {
        for le in ["0.0005", "0.001", "0.025", "10", "+Inf"] {
            let count = if le == "0.0005" { 0 } else { n };
            out.push_str(&format!("{name}_bucket{{le=\"{le}\"}} {count}\n"));
        }
        out.push_str(&format!("{name}_sum 0\n{name}_count {n}\n"));
    }
    out.into_bytes()
}

/// Answers any query with `device_id,n,d` over everything stored.
fn query(st: &State, body: &[u8]) -> Vec<u8> {
    let req: serde_json::Value = serde_json::from_slice(body).unwrap();
    assert_eq!(req["format"], "csv");
    st.queries
        .lock()
        .unwrap()
        .push(req["sql"].as_str().unwrap().to_owned());
    let mut per_device: BTreeMap<&str, (u64, u64)> = BTreeMap::new();
    let rows = st.rows.lock().unwrap();
    for ((device, _), n) in rows.iter() {
        let e = per_device.entry(device).or_default();
        e.0 += n;
        e.1 += 1;
    }
    let mut csv = String::from("device_id,n,d\n");
    for (device, (n, d)) in per_device {
        csv.push_str(&format!("{device},{n},{d}\n"));
    }
    csv.into_bytes()
}
