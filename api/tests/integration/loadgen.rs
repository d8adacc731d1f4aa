//! `wattdb loadgen` against a real `wattdb serve`: a few seconds, zero loss (a smoke
//! run, not a timing assertion); and `wattdb disk-bench`, which needs no server.

use serde_json::Value;

use crate::support::Server;

fn loadgen(server: &Server, extra: &[&str]) -> Value {
    crate::support::loadgen_json(&[&["--url", server.url.as_str()], extra].concat())
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

fn disk_bench(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_wattdb"))
        .arg("disk-bench")
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn disk_bench_times_wal_like_commits_and_leaves_the_directory_as_it_was() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap();
    let common = [
        "--data-dir",
        data,
        "--seconds",
        "1",
        "--commits-per-s",
        "20",
    ];
    let out = disk_bench(&[&common[..], &["--commit-kib", "8", "--json"]].concat());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: Value = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{e}: {stdout}"));
    assert_eq!(r["commits"], 20, "{r}");
    assert_eq!(r["commit_bytes"], 8192, "{r}");
    assert!(
        r["elapsed_s"].as_f64().unwrap() >= 0.95,
        "paced at 20/s: {r}"
    );
    let p50 = r["p50_ms"].as_f64().unwrap();
    assert!(p50 > 0.0 && p50 <= r["max_ms"].as_f64().unwrap(), "{r}");
    assert!(r["over_25ms"].as_u64().unwrap() <= 20, "{r}");
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        0,
        "file removed"
    );

    // The human form, with the defaults' commit size.
    let out = disk_bench(&common);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(
        stdout.contains("20 commits of 320 KiB at 20/s (write + fdatasync)"),
        "{stdout}"
    );
    assert!(stdout.contains("commit  p50 "), "{stdout}");
    assert!(stdout.contains(" over 25 ms ("), "{stdout}");

    // A directory that is not there is named, and nothing is created.
    let missing = dir.path().join("not-yet");
    let out = disk_bench(&["--data-dir", missing.to_str().unwrap(), "--seconds", "1"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("cannot read") && stderr.contains("not-yet"),
        "{stderr}"
    );
    assert!(!missing.exists());

    let out = disk_bench(&["--data-dir", data, "--commits-per-s", "0"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("'0' for '--commits-per-s"), "{stderr}");
}
