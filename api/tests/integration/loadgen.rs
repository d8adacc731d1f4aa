//! `wattdb loadgen` against a real `wattdb serve`: a few seconds, zero loss (a smoke
//! run, not a timing assertion).

use serde_json::Value;

use crate::support::Server;

fn loadgen(server: &Server, extra: &[&str]) -> Value {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_wattdb"))
        .args(["loadgen", "--json", "--url", &server.url])
        .args(extra)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "loadgen failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{e}: {stdout}"))
}

#[test]
fn open_loop_line_protocol_with_late_and_duplicated_readings_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), &[]);
    let r = loadgen(
        &server,
        &[
            "--plugs",
            "300",
            "--duration",
            "3s",
            "--seed",
            "7",
            "--late-share",
            "0.02",
            "--duplicate-share",
            "0.02",
            "--out-of-order-share",
            "0.02",
        ],
    );
    assert_eq!(r["lost"], 0, "{r}");
    assert_eq!(r["duplicated"], 0, "{r}");
    assert_eq!(r["errors"].as_object().map_or(0, |e| e.len()), 0, "{r}");
    assert!(r["acked"].as_u64().unwrap() >= 600, "{r}");
    assert_eq!(r["sent"], r["acked"], "{r}");
    for key in ["rows_per_s", "ack_p50_ms", "ack_p99_ms", "ack_p999_ms"] {
        assert!(r[key].as_f64().is_some(), "{key} missing in {r}");
    }
    // The server's own figures, from its /metrics before and after: one queued write
    // per request, and at least one group commit (at most one per write).
    let s = &r["server"];
    assert_eq!(s["writes"], r["requests"], "{r}");
    let fsyncs = s["wal_fsyncs"].as_u64().unwrap();
    assert!(
        fsyncs >= 1 && fsyncs <= r["requests"].as_u64().unwrap(),
        "{r}"
    );
    assert!(s["wal_fsync_p99_ms"].as_f64().is_some(), "{r}");
    assert!(r["server_error"].is_null(), "{r}");
}

#[test]
fn flat_out_json_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), &[]);
    let r = loadgen(
        &server,
        &[
            "--protocol",
            "json",
            "--plugs",
            "100",
            "--max",
            "--duration",
            "2s",
            "--connections",
            "2",
        ],
    );
    assert_eq!(r["lost"], 0, "{r}");
    assert_eq!(r["duplicated"], 0, "{r}");
    let stored = server.sql("SELECT count(*) AS n FROM readings")[0]["n"]
        .as_u64()
        .unwrap();
    assert_eq!(stored, r["acked_distinct"].as_u64().unwrap(), "{r}");
}
