use std::collections::{BTreeMap, BTreeSet};
use std::net::TcpListener;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use wattdb_benches::simulator::NS_PER_S;
use wattdb_benches::{LoadgenArgs, Protocol, run};

use crate::server::{Knobs, Server};

fn args(server: &Server) -> LoadgenArgs {
    LoadgenArgs {
        url: server.url(),
        plugs: 20,
        seed: 9,
        progress: false,
        duration: Duration::from_millis(300),
        start_ns: Some(1_700_000_000 * NS_PER_S),
        ..LoadgenArgs::default()
    }
}

#[test]
fn open_loop_line_protocol_is_paced_and_verified() {
    let server = Server::start(Knobs::default());
    let t0 = Instant::now();
    let report = run(LoadgenArgs {
        plugs: 50,
        rate: Some(1000),
        duration: Duration::from_secs(1),
        duplicate_share: 0.05,
        out_of_order_share: 0.05,
        late_share: 0.01,
        ..args(&server)
    })
    .unwrap();
    let took = t0.elapsed();
    assert!(took >= Duration::from_millis(950), "paced: {took:?}");
    assert!(took < Duration::from_secs(5), "{took:?}");
    assert_eq!(report.sent, 1000, "rate × duration readings");
    assert_eq!(report.acked, 1000);
    assert_eq!(report.target_rate, Some(1000));
    // At most 1/connections s of data per request. Each connection has its own plugs
    // (13, 13, 12 and 12 of 50, about 260, 260, 240 and 240 readings); their first
    // batches are staggered (62, 125, 187 and 250 readings) and the last may be partial:
    // 2 + 2 + 2 + 1 requests.
    assert_eq!(report.batch_size, 250);
    assert_eq!(report.requests, 7);
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    assert!(report.acked_distinct < report.acked, "duplicates were sent");
    assert_eq!(report.acked_distinct as usize, server.distinct());
    assert_eq!(report.lost, Some(0));
    assert_eq!(report.duplicated, Some(0));
    assert_eq!(report.unacked_stored, Some(0));
    assert!(report.ack_p50_ms > 0.0 && report.ack_p50_ms <= report.ack_p99_ms);
    assert!(report.ack_p99_ms <= report.ack_p999_ms);
    assert!(report.rows_per_s > 500.0);

    let sql = server.state.queries.lock().unwrap().clone();
    assert_eq!(sql.len(), 1);
    assert!(sql[0].contains("count(DISTINCT ts)"), "{}", sql[0]);
    assert!(sql[0].contains("2023-11-14T22:"), "{}", sql[0]);

    // The JSON report carries the contract's field names.
    let json = serde_json::to_value(&report).unwrap();
    for field in [
        "sent",
        "acked",
        "rows_per_s",
        "ack_p50_ms",
        "ack_p99_ms",
        "ack_p999_ms",
        "errors",
        "lost",
        "duplicated",
        "elapsed_s",
        "requests",
    ] {
        assert!(json.get(field).is_some(), "{field} missing from {json}");
    }
    assert_eq!(json["protocol"], "lp");
    assert!(report.to_string().contains("lost 0, duplicated 0"));
    // The server's own figures cover this run's writes only: its /metrics, read
    // before and after, counted one fsync of under 1 ms per write.
    let server_view = report.server.as_ref().expect("server figures");
    assert_eq!(server_view.writes, 7);
    assert_eq!(server_view.wal_fsyncs, 7);
    assert_eq!(server_view.wal_fsync_p99_ms, Some(1.0));
    assert_eq!(server_view.writes_over_25ms, 0);
    assert_eq!(report.server_error, None);
    assert_eq!(json["server"]["wal_fsyncs"], 7);
    assert!(
        report
            .to_string()
            .contains("server    WAL fsyncs 7: p50 ≤ 1 ms"),
        "{report}"
    );
}

#[test]
fn max_json_retries_503_and_loses_nothing() {
    let server = Server::start(Knobs {
        refuse_503: AtomicU32::new(3),
        ..Knobs::default()
    });
    let report = run(LoadgenArgs {
        protocol: Protocol::Json,
        max: true,
        batch_size: Some(100),
        connections: 2,
        duplicate_share: 0.1,
        ..args(&server)
    })
    .unwrap();
    assert!(report.sent > 0);
    assert_eq!(report.acked, report.sent, "retried, not dropped");
    assert_eq!(report.errors.get("http_503"), Some(&3));
    assert_eq!(report.errors.len(), 1, "{:?}", report.errors);
    // Full batches, after a first one cut short (50 and 100 readings); each connection's
    // last one may be partial.
    let batches = report.requests - 3;
    assert!(
        (report.sent.div_ceil(100)..=report.sent / 100 + 3).contains(&batches),
        "{batches} requests for {} readings",
        report.sent
    );
    assert_eq!(report.target_rate, None);
    assert_eq!(report.lost, Some(0));
    assert_eq!(report.acked_distinct as usize, server.distinct());
}

#[test]
fn a_plugs_readings_go_over_one_connection_in_order() {
    let server = Server::start(Knobs::default());
    let report = run(LoadgenArgs {
        max: true,
        batch_size: Some(7),
        connections: 4,
        ..args(&server)
    })
    .unwrap();
    assert!(report.acked > 200, "{report:?}");
    assert_eq!(report.lost, Some(0));
    let arrivals = server.state.arrivals.lock().unwrap();
    let mut plugs: BTreeMap<&str, (usize, i64)> = BTreeMap::new();
    for (conn, device, ts) in arrivals.iter() {
        match plugs.get_mut(device.as_str()) {
            None => {
                plugs.insert(device, (*conn, *ts));
            }
            Some((first_conn, last_ts)) => {
                assert_eq!(conn, first_conn, "{device} on two connections");
                assert!(ts > last_ts, "{device}: {ts} arrived after {last_ts}");
                *last_ts = *ts;
            }
        }
    }
    assert_eq!(plugs.len(), 20);
    let connections: BTreeSet<usize> = plugs.values().map(|&(conn, _)| conn).collect();
    assert_eq!(connections.len(), 4, "every connection has plugs");
}

#[test]
fn backfill_writes_the_whole_range_once() {
    let server = Server::start(Knobs::default());
    let start = 1_600_000_000 * NS_PER_S;
    let report = run(LoadgenArgs {
        plugs: 10,
        backfill: Some((start, start + 60 * NS_PER_S)),
        late_share: 0.1,
        out_of_order_share: 0.1,
        duplicate_share: 0.1,
        batch_size: Some(64),
        ..args(&server)
    })
    .unwrap();
    assert_eq!(report.acked_distinct, 600, "10 plugs × 60 s");
    assert!(report.sent > 600, "with resends");
    assert_eq!(report.acked, report.sent);
    assert_eq!(server.distinct(), 600);
    assert_eq!(report.lost, Some(0));
    let sql = server.state.queries.lock().unwrap()[0].clone();
    assert!(sql.contains("'2020-09-13T12:26:40."), "{sql}");
}

#[test]
fn verification_finds_lost_and_duplicated_rows() {
    let server = Server::start(Knobs {
        lose_device: Some("plug-000003".to_owned()),
        keep_duplicates: true,
        ..Knobs::default()
    });
    let start = 1_600_000_000 * NS_PER_S;
    let report = run(LoadgenArgs {
        plugs: 10,
        backfill: Some((start, start + 30 * NS_PER_S)),
        duplicate_share: 0.2,
        ..args(&server)
    })
    .unwrap();
    assert_eq!(report.acked_distinct, 300);
    assert_eq!(report.lost, Some(30), "plug-000003's 30 readings");
    let dups = report.acked - report.acked_distinct;
    assert!(dups > 0);
    // Resends of plug-000003 were lost too.
    let dup = report.duplicated.unwrap();
    assert!(dup > 0 && dup <= dups, "{dup} of {dups}");
    assert!(report.to_string().contains("lost 30"));
}

#[test]
fn rejected_batches_are_counted_not_acked() {
    let server = Server::start(Knobs {
        reject_all: true,
        ..Knobs::default()
    });
    let report = run(LoadgenArgs {
        max: true,
        batch_size: Some(20),
        connections: 1,
        ..args(&server)
    })
    .unwrap();
    assert!(report.sent > 0);
    assert_eq!(report.acked, 0);
    assert_eq!(report.errors.get("http_400"), Some(&report.requests));
    assert_eq!(
        report.error_samples["http_400"],
        "{\"error\":\"line 1: no\"}"
    );
    assert_eq!(report.lost, Some(0));
}

#[test]
fn refused_connections_are_counted() {
    let port = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let report = run(LoadgenArgs {
        url: format!("http://127.0.0.1:{port}"),
        plugs: 10,
        max: true,
        duration: Duration::from_millis(100),
        progress: false,
        ..LoadgenArgs::default()
    })
    .unwrap();
    assert_eq!(report.acked, 0);
    let refused = report.errors.get("connection_failed").copied().unwrap_or(0);
    assert!(refused > 0, "{:?}", report.errors);
    assert_eq!(refused, report.requests);
    assert_eq!(report.server, None);
    let why = report.server_error.unwrap();
    assert!(why.contains("/metrics could not be read"), "{why}");
}

#[test]
fn bearer_token_is_sent() {
    let server = Server::start(Knobs {
        token: Some("s3cret".to_owned()),
        ..Knobs::default()
    });
    let report = run(LoadgenArgs {
        token: Some("s3cret".to_owned()),
        max: true,
        ..args(&server)
    })
    .unwrap();
    assert!(report.acked > 0);
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    assert_eq!(report.lost, Some(0));
    assert!(server.state.writes.load(Ordering::Relaxed) > 0);

    let report = run(LoadgenArgs {
        max: true,
        ..args(&server)
    })
    .unwrap();
    assert_eq!(report.acked, 0);
    assert!(report.errors.contains_key("http_401"));
    let why = report.server_error.unwrap();
    assert!(why.contains("answered HTTP 401"), "{why}");
}
