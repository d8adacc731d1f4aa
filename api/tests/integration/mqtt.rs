//! MQTT ingest end to end: a real Mosquitto started on a free loopback port, real
//! MQTT clients (rumqttc, mosquitto_pub) publishing to it, and `wattdb serve`
//! subscribed; and the embedded broker.

use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rumqttc::{Client, Event, MqttOptions, Packet, QoS};

use crate::support::Server;

/// 2026-11-23T10:00:00Z, in seconds.
const T0_S: i64 = 1_795_428_000;

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A Mosquitto broker on a free loopback port, stopped on drop.
pub struct Mosquitto {
    child: Child,
    pub port: u16,
    /// Config, logs, certificates.
    dir: tempfile::TempDir,
}

impl Mosquitto {
    /// Settings a WattDB deployment needs (see scripts/mosquitto/wattdb.conf): a deep
    /// queue for the persistent session while WattDB is away, a wide in-flight window
    /// and no Nagle delay. Anonymous clients allowed.
    pub fn start() -> Mosquitto {
        Mosquitto::start_with(|_| "allow_anonymous true\n".to_owned())
    }

    /// With more settings, written by `extra` given the broker's config directory.
    pub fn start_with(extra: impl FnOnce(&Path) -> String) -> Mosquitto {
        Mosquitto::start_on(free_port(), extra)
    }

    fn start_on(port: u16, extra: impl FnOnce(&Path) -> String) -> Mosquitto {
        let dir = tempfile::tempdir().unwrap();
        let conf = dir.path().join("mosquitto.conf");
        // Run as root (CI), Mosquitto would switch to its own user, which cannot read
        // the test's private directory; `user root` keeps it as it is.
        std::fs::write(
            &conf,
            format!(
                "listener {port} 127.0.0.1\npersistence false\nuser root\n\
                 max_inflight_messages 1000\nmax_queued_messages 1000000\nset_tcp_nodelay true\n\
                 log_dest stderr\nlog_type error\nlog_type warning\n{}",
                extra(dir.path())
            ),
        )
        .unwrap();
        let bin = if Path::new("/usr/sbin/mosquitto").exists() {
            "/usr/sbin/mosquitto"
        } else {
            "mosquitto"
        };
        let log = std::fs::File::create(dir.path().join("mosquitto.log")).unwrap();
        let child = Command::new(bin)
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("mosquitto is installed (apt-get install mosquitto; .ci/run does it)");
        let broker = Mosquitto { child, port, dir };
        wait_for(
            Duration::from_secs(10),
            "mosquitto accepts connections",
            || TcpStream::connect(("127.0.0.1", port)).is_ok(),
        );
        broker
    }

    pub fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn wait_for(timeout: Duration, what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn wait_subscribed(server: &Server) {
    wait_for(Duration::from_secs(20), "WattDB is subscribed", || {
        server.metric("wattdb_mqtt_subscribed") == Some(1.0)
    });
}

fn count(server: &Server, sql: &str) -> i64 {
    server.sql(sql)[0]["n"].as_i64().unwrap()
}

/// Publishes `messages` from one rumqttc client and returns once the broker has them
/// all (the load generator's publisher, [`wattdb_benches::mqtt::publish`]).
fn publish(port: u16, client_id: &str, qos: QoS, messages: Vec<(String, Vec<u8>)>) {
    publish_as(port, client_id, None, qos, messages);
}

fn publish_as(
    port: u16,
    client_id: &str,
    login: Option<(&str, &str)>,
    qos: QoS,
    messages: Vec<(String, Vec<u8>)>,
) {
    wattdb_benches::mqtt::publish("127.0.0.1", port, client_id, login, qos, messages)
        .unwrap_or_else(|e| panic!("publisher {client_id}: {e}"));
}

/// Collects the topics of messages published under `filter`.
fn listen(port: u16, filter: &str) -> Arc<Mutex<Vec<String>>> {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let mut options = MqttOptions::new("dead-letter-reader", "127.0.0.1", port);
    options.set_keep_alive(Duration::from_secs(30));
    let (client, mut connection) = Client::new(options, 100);
    client.subscribe(filter, QoS::AtLeastOnce).unwrap();
    let out = seen.clone();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _client = client;
        for event in connection.iter() {
            match event {
                Ok(Event::Incoming(Packet::SubAck(_))) => {
                    let _ = ready_tx.send(());
                }
                Ok(Event::Incoming(Packet::Publish(p))) => out.lock().unwrap().push(p.topic),
                Ok(_) => {}
                Err(_) => return,
            }
        }
    });
    ready_rx.recv_timeout(Duration::from_secs(10)).unwrap();
    seen
}

fn msg(topic: &str, payload: &str) -> (String, Vec<u8>) {
    (topic.to_owned(), payload.as_bytes().to_vec())
}

#[test]
fn every_payload_format_becomes_rows_and_bad_messages_are_skipped() {
    let broker = Mosquitto::start();
    let dir = tempfile::tempdir().unwrap();
    let url = broker.url();
    let server = Server::start(
        &dir.path().join("data"),
        &[
            "--mqtt-url",
            &url,
            "--mqtt-client-id",
            "wattdb-formats",
            "--mqtt-topic",
            "smartplug/#",
            "--mqtt-topic",
            "tele/+/+",
            "--mqtt-topic",
            "+/status/switch:0",
            "--mqtt-dead-letter-topic",
            "wattdb/dead",
        ],
    );
    wait_subscribed(&server);
    let dead = listen(broker.port, "wattdb/dead/#");
    let ts = T0_S;
    let good = [
        msg(
            "smartplug/plug-1/telemetry",
            &format!(
                r#"{{"ts": {ts}, "voltage": 230.1, "current": 0.52, "power": 119.6, "energy": 1234.5, "relay_state": "on"}}"#
            ),
        ),
        msg(
            "smartplug/gateway-1/telemetry",
            &format!(
                r#"[{{"device_id": "plug-2", "ts": {}, "voltage": 229.0, "current": 1.0, "power": 229.0}},
                    {{"device_id": "plug-2", "ts": "2026-11-23T10:00:01Z", "voltage": 229.5, "current": 1.1, "power": 250.0, "relay_state": false}}]"#,
                ts * 1000
            ),
        ),
        msg(
            "tele/tasmota-1/STATE",
            r#"{"Time": "2026-11-23T11:00:00", "POWER": "ON"}"#,
        ),
        msg(
            "tele/tasmota-1/SENSOR",
            r#"{"Time": "2026-11-23T11:00:00", "ENERGY": {"Total": 1.5, "Power": 60, "Voltage": 231, "Current": 0.26}}"#,
        ),
        msg(
            "shelly-1/status/switch:0",
            r#"{"id": 0, "output": true, "apower": 12.5, "voltage": 229.8, "current": 0.06, "aenergy": {"total": 100.25}}"#,
        ),
    ];
    let bad = [
        msg("smartplug/plug-3/telemetry", "not json"),
        msg(
            "smartplug/plug-3/telemetry",
            r#"{"voltage": "high", "current": 1, "power": 1}"#,
        ),
        msg(
            "smartplug/plug-3/telemetry",
            r#"{"current": 1, "power": 1}"#,
        ),
        msg(
            "smartplug/plug-3/telemetry",
            r#"{"voltage": 1, "current": 1, "power": 1e999}"#,
        ),
        msg(
            "smartplug/plug-3/telemetry",
            r#"{"ts": 4102444800, "voltage": 230, "current": 1, "power": 1}"#,
        ),
        msg("smartplug/plug-3/config", r#"{"voltage": 1}"#),
    ];
    let all: Vec<_> = good.iter().chain(&bad).cloned().collect();
    publish(broker.port, "publisher-formats", QoS::AtLeastOnce, all);
    // A second, different client: Mosquitto's own.
    let pub_out = Command::new("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", &broker.port.to_string(), "-q", "1"])
        .args(["-t", "smartplug/plug-4/telemetry"])
        .args([
            "-m",
            &format!(r#"{{"ts": {ts}, "voltage": 231, "current": 2, "power": 462}}"#),
        ])
        .output()
        .unwrap();
    assert!(pub_out.status.success(), "{pub_out:?}");

    let deadline = Instant::now() + Duration::from_secs(20);
    while count(&server, "SELECT COUNT(*) AS n FROM readings") != 6 {
        assert!(
            Instant::now() < deadline,
            "6 readings expected: {:?}\n{}",
            server.sql("SELECT device_id, ts FROM readings"),
            server.log_tail()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let rows = server.sql(
        "SELECT device_id, CAST(ts AS BIGINT) AS ts, voltage, current, power, energy, relay_on \
         FROM readings ORDER BY device_id, ts",
    );
    let by_plug = |plug: &str| -> Vec<&serde_json::Value> {
        rows.iter().filter(|r| r["device_id"] == plug).collect()
    };
    let p1 = by_plug("plug-1");
    assert_eq!(p1.len(), 1);
    assert_eq!(p1[0]["ts"], ts * 1_000_000_000);
    assert_eq!(p1[0]["power"], 119.6);
    assert_eq!(p1[0]["energy"], 1234.5);
    assert_eq!(p1[0]["relay_on"], true);
    let p2 = by_plug("plug-2");
    assert_eq!(p2.len(), 2);
    assert_eq!(p2[1]["ts"], (ts + 1) * 1_000_000_000);
    assert_eq!(p2[1]["relay_on"], false);
    assert!(p2[0]["relay_on"].is_null());
    let tasmota = by_plug("tasmota-1");
    assert_eq!(tasmota.len(), 1);
    assert_eq!(tasmota[0]["energy"], 1500.0, "Total kWh becomes Wh");
    assert_eq!(tasmota[0]["relay_on"], true, "from the STATE before it");
    let shelly = by_plug("shelly-1");
    assert_eq!(shelly.len(), 1);
    assert_eq!(shelly[0]["power"], 12.5);
    assert_eq!(shelly[0]["energy"], 100.25);
    assert_eq!(by_plug("plug-4").len(), 1);
    assert!(by_plug("plug-3").is_empty());

    for reason in [
        "not_json",
        "wrong_type",
        "missing_field",
        "non_finite",
        "bad_timestamp",
        "unknown_topic",
    ] {
        let name = format!("wattdb_mqtt_rejected_messages_total{{reason=\"{reason}\"}}");
        assert_eq!(server.metric(&name), Some(1.0), "{name}");
    }
    assert_eq!(
        server.metric("wattdb_ingested_readings_total{path=\"mqtt\"}"),
        Some(6.0)
    );
    // 12 messages, each acknowledged once: good, bad and the STATE alike.
    wait_for(
        Duration::from_secs(10),
        "every message is acknowledged",
        || server.metric("wattdb_mqtt_acks_total") == Some(12.0),
    );
    wait_for(Duration::from_secs(10), "six dead letters arrive", || {
        dead.lock().unwrap().len() == 6
    });
    let dead = dead.lock().unwrap().clone();
    assert!(dead.contains(&"wattdb/dead/not_json/smartplug/plug-3/telemetry".to_owned()));
    assert!(dead.contains(&"wattdb/dead/unknown_topic/smartplug/plug-3/config".to_owned()));
    let log = std::fs::read_to_string(dir.path().join("data.log")).unwrap();
    assert!(log.contains("bad MQTT message skipped"), "{log}");
}

/// Publishes `n` readings of `plugs` plugs, one per message, each with its own `ts`.
fn readings(plugs: usize, n: usize, first_ts: i64) -> Vec<(String, Vec<u8>)> {
    (0..n)
        .map(|i| {
            let plug = i % plugs;
            let ts = first_ts + (i / plugs) as i64;
            msg(
                &format!("smartplug/plug-{plug}/telemetry"),
                &format!(
                    r#"{{"ts": {ts}, "voltage": 230.0, "current": 0.5, "power": {}, "energy": {}}}"#,
                    i % 1000,
                    i
                ),
            )
        })
        .collect()
}

#[test]
fn sigkill_mid_stream_loses_nothing_and_stores_each_reading_once() {
    let broker = Mosquitto::start();
    let dir = tempfile::tempdir().unwrap();
    let url = broker.url();
    let args = ["--mqtt-url", &url, "--mqtt-client-id", "wattdb-durability"];
    let mut server = Server::start(&dir.path().join("data"), &args);
    wait_subscribed(&server);
    const N: usize = 30_000;
    let port = broker.port;
    let publisher = std::thread::spawn(move || {
        publish(
            port,
            "publisher-durability",
            QoS::AtLeastOnce,
            readings(50, N, T0_S),
        );
    });
    // Kill WattDB while the stream is flowing: some readings durable, some in flight.
    wait_for(Duration::from_secs(30), "ingest is under way", || {
        server
            .metric("wattdb_ingested_readings_total{path=\"mqtt\"}")
            .unwrap_or(0.0)
            >= 2000.0
    });
    let before_kill = server
        .metric("wattdb_ingested_readings_total{path=\"mqtt\"}")
        .unwrap();
    server.kill();
    assert!(before_kill < N as f64, "killed mid-stream, not after it");
    // The broker keeps queueing for the persistent session meanwhile.
    std::thread::sleep(Duration::from_millis(500));
    server.restart();
    publisher.join().unwrap();
    wait_for(Duration::from_secs(60), "every reading is stored", || {
        count(&server, "SELECT COUNT(*) AS n FROM readings") >= N as i64
    });
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        count(&server, "SELECT COUNT(*) AS n FROM readings"),
        N as i64
    );
    let distinct = count(
        &server,
        "SELECT COUNT(*) AS n FROM (SELECT DISTINCT device_id, ts FROM readings)",
    );
    assert_eq!(distinct, N as i64);
    let energy_sum = server.sql("SELECT CAST(SUM(energy) AS BIGINT) AS n FROM readings")[0]["n"]
        .as_i64()
        .unwrap();
    assert_eq!(
        energy_sum,
        (N as i64 - 1) * N as i64 / 2,
        "every reading's own values"
    );
}

#[test]
fn a_full_write_path_withholds_pubacks_until_there_is_room() {
    let broker = Mosquitto::start();
    let dir = tempfile::tempdir().unwrap();
    let url = broker.url();
    // A 1 MiB buffer that only an explicit persist empties.
    let server = Server::start(
        &dir.path().join("data"),
        &[
            "--mqtt-url",
            &url,
            "--mqtt-client-id",
            "wattdb-backpressure",
            "--max-buffer-mib",
            "1",
            "--persist-interval-s",
            "3600",
            "--persist-mib",
            "1024",
        ],
    );
    wait_subscribed(&server);
    // About 3 MiB in the buffer: three times what it may hold.
    const N: usize = 40_000;
    let port = broker.port;
    let publisher = std::thread::spawn(move || {
        publish(
            port,
            "publisher-backpressure",
            QoS::AtLeastOnce,
            readings(20, N, T0_S),
        );
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    while server
        .metric("wattdb_mqtt_backpressure_total")
        .unwrap_or(0.0)
        == 0.0
    {
        assert!(
            Instant::now() < deadline,
            "no backpressure: {} readings stored, {:?} messages received, publisher done: {}\n{}",
            count(&server, "SELECT COUNT(*) AS n FROM readings"),
            server.metric("wattdb_mqtt_messages_total"),
            publisher.is_finished(),
            server.log_tail()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let stored = count(&server, "SELECT COUNT(*) AS n FROM readings");
    assert!(stored < N as i64, "the buffer limit held ({stored})");
    wait_for(Duration::from_secs(120), "every reading is stored", || {
        let (status, body) = server.post("/api/v1/admin/persist", "application/json", b"");
        assert_eq!(status, 200, "{body}");
        count(&server, "SELECT COUNT(*) AS n FROM readings") == N as i64
    });
    publisher.join().unwrap();
    let distinct = count(
        &server,
        "SELECT COUNT(*) AS n FROM (SELECT DISTINCT device_id, ts FROM readings)",
    );
    assert_eq!(distinct, N as i64);
}

#[test]
fn the_embedded_broker_takes_plug_messages() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let server = Server::start(&dir.path().join("data"), &["--mqtt-listen", &listen]);
    wait_subscribed(&server);
    publish(
        port,
        "plug-fleet",
        QoS::AtLeastOnce,
        readings(10, 500, T0_S),
    );
    publish(
        port,
        "plug-fleet-qos0",
        QoS::AtMostOnce,
        readings(10, 100, T0_S + 1000),
    );
    wait_for(Duration::from_secs(20), "600 readings are stored", || {
        count(&server, "SELECT COUNT(*) AS n FROM readings") == 600
    });

    // The port is taken now: a second server says so and does not start.
    let other = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_wattdb"))
        .args(["serve", "--without-auth", "--http-addr", "127.0.0.1:0"])
        .args(["--mqtt-listen", &listen, "--data-dir"])
        .arg(other.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&listen) && stderr.contains("--no-mqtt"),
        "{stderr}"
    );
}

#[test]
fn the_documented_mosquitto_acl_confines_each_plug_to_its_own_topics() {
    let acl = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/mosquitto/wattdb.acl");
    let broker = Mosquitto::start_with(|dir| {
        let passwd = dir.join("passwd");
        for (i, (user, password)) in [("wattdb", "w-secret"), ("plug-1", "p1-secret")]
            .into_iter()
            .enumerate()
        {
            let mut cmd = Command::new("mosquitto_passwd");
            if i == 0 {
                cmd.arg("-c");
            }
            let out = cmd
                .arg("-b")
                .arg(&passwd)
                .args([user, password])
                .output()
                .unwrap();
            assert!(out.status.success(), "{out:?}");
        }
        let acl_copy = dir.join("wattdb.acl");
        std::fs::copy(&acl, &acl_copy).unwrap();
        format!(
            "allow_anonymous false\npassword_file {}\nacl_file {}\n",
            passwd.display(),
            acl_copy.display()
        )
    });
    let dir = tempfile::tempdir().unwrap();
    let url = broker.url();
    let server = Server::start_with_env(
        &dir.path().join("data"),
        &["--mqtt-url", &url, "--mqtt-username", "wattdb"],
        &[("WATTDB_MQTT_PASSWORD", "w-secret")],
    );
    wait_subscribed(&server);
    let reading =
        |ts: i64| format!(r#"{{"ts": {ts}, "voltage": 230, "current": 1, "power": 230}}"#);
    publish_as(
        broker.port,
        "plug-1",
        Some(("plug-1", "p1-secret")),
        QoS::AtLeastOnce,
        vec![
            msg("smartplug/plug-1/telemetry", &reading(T0_S)),
            // Not its own topic: the broker drops it.
            msg("smartplug/plug-2/telemetry", &reading(T0_S)),
            msg("smartplug/plug-1/telemetry", &reading(T0_S + 1)),
        ],
    );
    wait_for(
        Duration::from_secs(20),
        "plug-1's readings are stored",
        || {
            count(
                &server,
                "SELECT COUNT(*) AS n FROM readings WHERE device_id = 'plug-1'",
            ) == 2
        },
    );
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(count(&server, "SELECT COUNT(*) AS n FROM readings"), 2);
}

#[test]
fn wattdb_reconnects_and_subscribes_again_after_the_broker_restarts() {
    let broker = Mosquitto::start();
    let port = broker.port;
    let dir = tempfile::tempdir().unwrap();
    let url = broker.url();
    let server = Server::start(&dir.path().join("data"), &["--mqtt-url", &url]);
    wait_subscribed(&server);
    publish(
        port,
        "plug-fleet",
        QoS::AtLeastOnce,
        readings(10, 100, T0_S),
    );
    wait_for(Duration::from_secs(20), "the first 100 readings", || {
        count(&server, "SELECT COUNT(*) AS n FROM readings") == 100
    });
    // A new broker without the old session: WattDB must subscribe again.
    drop(broker);
    let _broker = Mosquitto::start_on(port, |_| "allow_anonymous true\n".to_owned());
    wait_for(Duration::from_secs(30), "WattDB is back", || {
        server.metric("wattdb_mqtt_connects_total") == Some(2.0)
            && server.metric("wattdb_mqtt_subscribed") == Some(1.0)
    });
    assert!(
        server
            .metric("wattdb_mqtt_connection_errors_total")
            .unwrap()
            >= 1.0
    );
    publish(
        port,
        "plug-fleet",
        QoS::AtLeastOnce,
        readings(10, 100, T0_S + 100),
    );
    wait_for(Duration::from_secs(20), "all 200 readings", || {
        count(&server, "SELECT COUNT(*) AS n FROM readings") == 200
    });
}

#[test]
fn mqtts_with_a_private_ca() {
    let broker = Mosquitto::start_with(|dir| {
        let run = |args: &[&str]| {
            let out = Command::new("openssl")
                .args(args)
                .current_dir(dir)
                .output()
                .expect("openssl is installed");
            assert!(out.status.success(), "openssl {args:?}: {out:?}");
        };
        run(&[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=WattDB test CA",
        ]);
        run(&[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=localhost",
        ]);
        std::fs::write(
            dir.join("ext.cnf"),
            "subjectAltName=IP:127.0.0.1,DNS:localhost\n",
        )
        .unwrap();
        run(&[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.pem",
            "-days",
            "2",
            "-extfile",
            "ext.cnf",
        ]);
        let d = dir.display();
        format!(
            "allow_anonymous true\ncafile {d}/ca.pem\ncertfile {d}/server.pem\nkeyfile {d}/server.key\n"
        )
    });
    let ca = broker.dir.path().join("ca.pem");
    let dir = tempfile::tempdir().unwrap();
    let url = format!("mqtts://127.0.0.1:{}", broker.port);
    let server = Server::start(
        &dir.path().join("data"),
        &["--mqtt-url", &url, "--mqtt-ca-file", ca.to_str().unwrap()],
    );
    wait_subscribed(&server);
    let out = Command::new("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", &broker.port.to_string(), "-q", "1"])
        .arg("--cafile")
        .arg(&ca)
        .args(["-t", "smartplug/plug-tls/telemetry"])
        .args([
            "-m",
            &format!(r#"{{"ts": {T0_S}, "voltage": 231, "current": 2, "power": 462}}"#),
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    wait_for(Duration::from_secs(20), "the reading sent over TLS", || {
        count(
            &server,
            "SELECT COUNT(*) AS n FROM readings WHERE device_id = 'plug-tls'",
        ) == 1
    });

    // Trusting another certificate than the CA: the broker's is refused.
    let other = tempfile::tempdir().unwrap();
    let wrong_ca = broker.dir.path().join("server.pem");
    let untrusting = Server::start(
        &other.path().join("data"),
        &[
            "--mqtt-url",
            &url,
            "--mqtt-ca-file",
            wrong_ca.to_str().unwrap(),
        ],
    );
    wait_for(Duration::from_secs(20), "a refused TLS handshake", || {
        untrusting
            .metric("wattdb_mqtt_connection_errors_total")
            .unwrap_or(0.0)
            >= 1.0
    });
    assert_eq!(untrusting.metric("wattdb_mqtt_connected"), Some(0.0));
}

#[test]
fn a_share_group_splits_the_fleet_between_nodes() {
    let broker = Mosquitto::start();
    let dir = tempfile::tempdir().unwrap();
    let url = broker.url();
    let node = |name: &str| {
        Server::start(
            &dir.path().join(name),
            &[
                "--mqtt-url",
                &url,
                "--mqtt-client-id",
                name,
                "--mqtt-share-group",
                "fleet",
            ],
        )
    };
    let (a, b) = (node("node-a"), node("node-b"));
    wait_subscribed(&a);
    wait_subscribed(&b);
    publish(
        broker.port,
        "plug-fleet",
        QoS::AtLeastOnce,
        readings(20, 1000, T0_S),
    );
    let total = || {
        count(&a, "SELECT COUNT(*) AS n FROM readings")
            + count(&b, "SELECT COUNT(*) AS n FROM readings")
    };
    wait_for(
        Duration::from_secs(20),
        "1000 readings between the nodes",
        || total() == 1000,
    );
    let on_a = count(&a, "SELECT COUNT(*) AS n FROM readings");
    assert!(
        on_a > 0 && on_a < 1000,
        "each node took a share: {on_a} on a"
    );
}

#[test]
fn the_embedded_broker_takes_only_plugs_that_log_in_with_a_write_token() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let write = crate::support::create_token(&data, &["--scope", "write"]);
    let read = crate::support::create_token(&data, &["--scope", "read"]);
    let limited = crate::support::create_token(&data, &["--scope", "write", "--devices", "plug-"]);
    let server = Server::start_with_auth(&data, &["--mqtt-listen", &listen]);
    wait_subscribed(&server);
    let message =
        |ts: i64| format!(r#"{{"ts": {ts}, "voltage": 230, "current": 1, "power": 230}}"#);
    // mosquitto_pub: a real client; it fails when the broker refuses the login.
    let publish = |login: Option<(&str, &str)>, ts: i64| -> bool {
        let mut cmd = Command::new("mosquitto_pub");
        cmd.args(["-h", "127.0.0.1", "-p", &port.to_string(), "-q", "1"])
            .args(["-t", "smartplug/plug-1/telemetry", "-m", &message(ts)]);
        if let Some((user, password)) = login {
            cmd.args(["-u", user, "-P", password]);
        }
        cmd.output().unwrap().status.success()
    };
    assert!(!publish(None, T0_S), "anonymous plug accepted");
    assert!(!publish(Some(("plug-1", "wdb_nonsense")), T0_S + 1));
    assert!(
        !publish(Some(("plug-1", &read)), T0_S + 2),
        "read token accepted"
    );
    assert!(
        !publish(Some(("plug-1", &limited)), T0_S + 3),
        "plug-limited token accepted"
    );
    assert!(publish(Some(("plug-1", &write)), T0_S + 4));
    wait_for(Duration::from_secs(20), "the reading is stored", || {
        count(&server, "SELECT COUNT(*) AS n FROM readings") == 1
    });
    let rows = server.sql("SELECT CAST(ts AS BIGINT) AS t FROM readings");
    assert_eq!(rows[0]["t"], (T0_S + 4) * 1_000_000_000);
    let log = std::fs::read_to_string(data.with_extension("log")).unwrap();
    assert!(log.contains("MQTT login refused"), "{log}");
    assert!(!log.contains(read.rsplit('_').next().unwrap()));
}

/// `wattdb loadgen --protocol mqtt --json` with `args`; the report.
fn loadgen_mqtt(args: &[&str]) -> serde_json::Value {
    crate::support::loadgen_json(&[&["--protocol", "mqtt"], args].concat())
}

#[test]
fn loadgen_over_mosquitto_loses_nothing_at_qos_1_and_qos_0() {
    let broker = Mosquitto::start();
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), &["--mqtt-url", &broker.url()]);
    wait_subscribed(&server);
    let common = ["--url", &server.url, "--broker", &broker.url()];

    // QoS 1, one reading per message on each plug's own topic, with late, resent and
    // out-of-order readings.
    let r = loadgen_mqtt(
        &[
            &common[..],
            &[
                "--plugs",
                "200",
                "--duration",
                "3s",
                "--seed",
                "3",
                "--late-share",
                "0.02",
                "--duplicate-share",
                "0.02",
                "--out-of-order-share",
                "0.02",
            ],
        ]
        .concat(),
    );
    assert_eq!(r["protocol"], "mqtt", "{r}");
    assert_eq!(r["errors"].as_object().map_or(0, |e| e.len()), 0, "{r}");
    assert!(r["acked"].as_u64().unwrap() >= 400, "{r}");
    assert_eq!(r["sent"], r["acked"], "{r}");
    // One message a reading.
    assert_eq!(r["requests"], r["sent"], "{r}");
    assert_eq!(r["lost"], 0, "{r}");
    assert_eq!(r["duplicated"], 0, "{r}");
    assert!(r["mqtt_drain_s"].as_f64().is_some(), "{r}");
    assert!(r["ack_p99_ms"].as_f64().unwrap() > 0.0, "{r}");
    // WattDB wrote what the broker delivered: at least one group commit.
    assert!(r["server"]["wal_fsyncs"].as_u64().unwrap() >= 1, "{r}");

    // QoS 0, gateway arrays of 50 readings: each batch ends with a QoS 1 marker.
    let r = loadgen_mqtt(
        &[
            &common[..],
            &[
                "--plugs",
                "300",
                "--duration",
                "2s",
                "--seed",
                "4",
                "--qos",
                "0",
                "--per-message",
                "50",
                "--connections",
                "2",
            ],
        ]
        .concat(),
    );
    assert_eq!(r["errors"].as_object().map_or(0, |e| e.len()), 0, "{r}");
    let sent = r["sent"].as_u64().unwrap();
    assert_eq!(sent, 600, "{r}");
    assert_eq!(r["acked"], sent, "{r}");
    assert_eq!(r["lost"], 0, "{r}");
    assert_eq!(r["duplicated"], 0, "{r}");
    // At least 12 arrays of 50 (a batch's last array may be shorter), and a marker
    // after each batch.
    let messages = r["requests"].as_u64().unwrap();
    assert!((14..=40).contains(&messages), "{r}");
}

#[test]
fn loadgen_mqtt_flags_without_protocol_mqtt_are_an_error() {
    let out = Command::new(env!("CARGO_BIN_EXE_wattdb"))
        .args(["loadgen", "--qos", "0", "--url", "http://127.0.0.1:9"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("--broker, --qos and --per-message apply only to --protocol mqtt"),
        "{stderr}"
    );
}

#[test]
fn loadgen_counts_every_batch_a_broker_never_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), &[]);
    // Nothing listens on the broker port.
    let closed = format!("mqtt://127.0.0.1:{}", free_port());
    let r = loadgen_mqtt(&[
        "--url",
        &server.url,
        "--broker",
        &closed,
        "--plugs",
        "20",
        "--duration",
        "1s",
        "--connections",
        "2",
    ]);
    assert_eq!(r["acked"], 0, "{r}");
    assert_eq!(r["sent"], 20, "{r}");
    let errors = &r["errors"];
    assert_eq!(errors["mqtt_connection"], 2, "one per connection: {r}");
    assert!(errors["mqtt_unacked"].as_u64().unwrap() >= 2, "{r}");
    assert!(
        r["error_samples"]["mqtt_connection"]
            .as_str()
            .unwrap()
            .contains("refused"),
        "{r}"
    );
    assert_eq!(r["lost"], 0, "nothing acknowledged, nothing to lose: {r}");
}

#[test]
fn loadgen_logs_in_to_the_embedded_broker_with_its_token() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let server = Server::start_with_auth(&dir.path().join("data"), &["--mqtt-listen", &listen]);
    wait_subscribed(&server);
    let token = server.token.clone().unwrap();
    let r = loadgen_mqtt(&[
        "--url",
        &server.url,
        "--broker",
        &format!("mqtt://{listen}"),
        "--token",
        &token,
        "--plugs",
        "100",
        "--duration",
        "2s",
    ]);
    assert_eq!(r["errors"].as_object().map_or(0, |e| e.len()), 0, "{r}");
    assert_eq!(r["acked"], 200, "{r}");
    assert_eq!(r["lost"], 0, "{r}");
    assert_eq!(r["duplicated"], 0, "{r}");
    assert!(r["server"].is_object(), "{r}");
}
