//! `wattdb mqtt-bench`: the MQTT path measured through a real broker.
//!
//! A simulated fleet's readings are encoded as smart-plug JSON messages (one reading
//! per message, or arrays of [`MqttBenchArgs::per_message`] as a gateway sends them)
//! before the clock starts, then published flat out at QoS 0 or 1 from
//! [`MqttBenchArgs::publishers`] connections. What is timed is delivery to one of two
//! targets:
//!
//! - [`Target::Null`]: the broker's own ceiling. This process subscribes, counts each
//!   message and does nothing else (at QoS 1 it acknowledges in bursts, as WattDB
//!   does; it reads at WattDB's pace too).
//! - [`Target::Wattdb`]: a running WattDB subscribed to the same broker. Delivery is
//!   WattDB's `wattdb_ingested_readings_total{path="mqtt"}` (readings durable and
//!   acknowledged), polled every 20 ms; afterwards SQL counts the distinct
//!   `(device_id, ts)` of the run to report loss.
//!
//! The rate is readings delivered divided by the time from the first publish to the
//! last delivery.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rumqttc::{Client, Event, MqttOptions, Outgoing, Packet, QoS};
use serde::Serialize;
use wattdb_ingest::subscriber::{AckRuns, ReadPacer};

use crate::encode_json;
use crate::loadgen::stored_counts;
use crate::server_view::{ServerView, Snapshot, metrics_page};
use crate::simulator::{Fleet, FleetConfig};

const NS_PER_S: i64 = 1_000_000_000;

/// What receives the messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A subscriber in this process that only counts.
    Null,
    /// A running WattDB at this base URL (`http://127.0.0.1:8181`).
    Wattdb(String),
}

#[derive(Debug, Clone)]
pub struct MqttBenchArgs {
    /// Broker host and port.
    pub host: String,
    pub port: u16,
    pub target: Target,
    /// 0 or 1.
    pub qos: u8,
    /// Readings per message: 1 sends one object, more send a JSON array.
    pub per_message: usize,
    pub plugs: u32,
    /// Simulated seconds: the run sends `plugs × seconds` readings.
    pub seconds: u32,
    pub publishers: usize,
    pub seed: u64,
    /// Give up waiting for deliveries after this long without progress.
    pub idle_timeout: Duration,
    /// API token of the WattDB target (read scope, all plugs).
    pub token: Option<String>,
}

impl Default for MqttBenchArgs {
    fn default() -> Self {
        Self {
            host: "127.0.0.1".into(),
            port: 1883,
            target: Target::Null,
            qos: 1,
            per_message: 1,
            plugs: 10_000,
            seconds: 30,
            publishers: 1,
            seed: 1,
            idle_timeout: Duration::from_secs(10),
            token: None,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct MqttBenchReport {
    pub target: String,
    pub qos: u8,
    pub per_message: usize,
    pub messages: u64,
    pub readings: u64,
    /// Seconds until every publisher had its messages accepted by the broker.
    pub publish_seconds: f64,
    pub delivered_readings: u64,
    /// Seconds from the first publish to the last delivery.
    pub seconds: f64,
    pub readings_per_second: f64,
    pub messages_per_second: f64,
    /// Readings of the run not stored (WattDB target, after the run).
    pub lost: Option<u64>,
    /// Readings stored more than once (WattDB target).
    pub duplicated: Option<u64>,
    /// WattDB's own figures for the run (WAL fsyncs, queue to queryable), from its
    /// `/metrics` before the first publish and after the last delivery; `null` for
    /// the null subscriber, or if WattDB restarted in between.
    pub server: Option<ServerView>,
}

impl MqttBenchReport {
    pub fn print_human(&self) {
        println!(
            "{} readings in {} messages (QoS {}, {} per message) to {}",
            self.readings, self.messages, self.qos, self.per_message, self.target
        );
        println!("  published in   {:.2} s", self.publish_seconds);
        println!(
            "  delivered      {} readings in {:.2} s: {:.0} readings/s, {:.0} messages/s",
            self.delivered_readings,
            self.seconds,
            self.readings_per_second,
            self.messages_per_second
        );
        if let (Some(lost), Some(dup)) = (self.lost, self.duplicated) {
            println!("  verified       {lost} lost, {dup} duplicated");
        }
        if let Some(server) = &self.server {
            println!("  server         {server}");
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum MqttBenchError {
    #[error("invalid arguments: {0}")]
    Args(String),
    #[error("MQTT: {0}")]
    Mqtt(String),
    #[error("WattDB at {url}: {reason}")]
    Wattdb { url: String, reason: String },
}

/// One publisher's share: (topic, payload) in send order.
type Messages = Vec<(String, Vec<u8>)>;

pub fn run(args: &MqttBenchArgs) -> Result<MqttBenchReport, MqttBenchError> {
    if args.qos > 1 || args.per_message == 0 || args.publishers == 0 || args.plugs == 0 {
        return Err(MqttBenchError::Args(
            "qos 0 or 1, and at least one reading per message, publisher and plug".into(),
        ));
    }
    let qos = if args.qos == 0 {
        QoS::AtMostOnce
    } else {
        QoS::AtLeastOnce
    };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let start_ns = (now - i64::from(args.seconds) - 60) * NS_PER_S;
    let (shares, messages, readings) = encode(args, start_ns);
    let end_ns = start_ns + i64::from(args.seconds) * NS_PER_S;

    let delivered = Arc::new(AtomicU64::new(0));
    let token = args.token.as_deref();
    let page = |url: &str| metrics_page(url, token).map_err(|e| wattdb_error(url, e));
    // WattDB's /metrics before the first publish: the MQTT count to subtract, and the
    // histograms of the server view.
    let (baseline, before) = match &args.target {
        Target::Null => {
            null_subscriber(args, qos, delivered.clone())?;
            (0, None)
        }
        Target::Wattdb(url) => {
            let before = page(url)?;
            (
                mqtt_readings(url, &before)?,
                Some(Snapshot::parse(&before).map_err(|e| wattdb_error(url, e))?),
            )
        }
    };

    let started = Instant::now();
    let publishers: Vec<_> = shares
        .into_iter()
        .enumerate()
        .map(|(i, share)| {
            let (host, port) = (args.host.clone(), args.port);
            std::thread::spawn(move || {
                publish(&host, port, &format!("bench-pub-{i}"), None, qos, share)
            })
        })
        .collect();
    let mut publish_error = None;
    for p in publishers {
        match p.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => publish_error = Some(e),
            Err(_) => publish_error = Some(MqttBenchError::Mqtt("publisher panicked".into())),
        }
    }
    if let Some(e) = publish_error {
        return Err(e);
    }
    let publish_seconds = started.elapsed().as_secs_f64();

    // Wait for deliveries until all are in or progress stops.
    let (delivered_readings, done) = wait_for_count(
        || match &args.target {
            Target::Null => Ok(Some(delivered.load(Ordering::Relaxed))),
            Target::Wattdb(url) => Ok(Some(
                mqtt_readings(url, &page(url)?)?.saturating_sub(baseline),
            )),
        },
        readings,
        args.idle_timeout,
    )?;
    let delivered_readings = delivered_readings.unwrap_or(0);
    let seconds = done.duration_since(started).as_secs_f64().max(1e-9);
    let server = match (&args.target, &before) {
        (Target::Wattdb(url), Some(before)) => {
            let after = Snapshot::fetch(url, token).map_err(|e| wattdb_error(url, e))?;
            ServerView::between(before, &after)
        }
        _ => None,
    };
    let (lost, duplicated) = match &args.target {
        Target::Null => (None, None),
        Target::Wattdb(url) => {
            let (stored, distinct) = stored(
                url,
                args.token.as_deref(),
                args.plugs,
                readings,
                start_ns,
                end_ns - 1,
            )?;
            (
                Some(readings.saturating_sub(distinct)),
                Some(stored.saturating_sub(distinct)),
            )
        }
    };
    Ok(MqttBenchReport {
        target: match &args.target {
            Target::Null => "null-subscriber".into(),
            Target::Wattdb(url) => url.clone(),
        },
        qos: args.qos,
        per_message: args.per_message,
        messages,
        readings,
        publish_seconds,
        delivered_readings,
        seconds,
        readings_per_second: delivered_readings as f64 / seconds,
        messages_per_second: delivered_readings as f64 / args.per_message as f64 / seconds,
        lost,
        duplicated,
        server,
    })
}

/// The fleet's readings as messages, split between the publishers by plug (so each
/// plug's readings keep their order). Returns the shares, messages and readings.
fn encode(args: &MqttBenchArgs, start_ns: i64) -> (Vec<Messages>, u64, u64) {
    let mut fleet = Fleet::new(FleetConfig {
        plugs: args.plugs,
        seed: args.seed,
        start_ns,
        ..FleetConfig::default()
    });
    let n = args.publishers;
    let mut shares: Vec<Messages> = vec![Vec::new(); n];
    // Per publisher: readings gathered for the next array message.
    let mut open: Vec<(Vec<u8>, usize)> = vec![(Vec::new(), 0); n];
    let (mut messages, mut readings) = (0u64, 0u64);
    for _ in 0..args.seconds {
        fleet.next_second(&mut |r| {
            let p = r.plug_index as usize % n;
            readings += 1;
            if args.per_message == 1 {
                let mut payload = Vec::with_capacity(200);
                encode_json(r, &mut payload);
                shares[p].push((format!("smartplug/{}/telemetry", r.device_id()), payload));
                messages += 1;
                return;
            }
            let (buf, count) = &mut open[p];
            buf.push(if *count == 0 { b'[' } else { b',' });
            encode_json(r, buf);
            *count += 1;
            if *count == args.per_message {
                buf.push(b']');
                shares[p].push((
                    format!("smartplug/gateway-{p}/telemetry"),
                    std::mem::take(buf),
                ));
                *count = 0;
                messages += 1;
            }
        });
    }
    for (p, (mut buf, count)) in open.into_iter().enumerate() {
        if count > 0 {
            buf.push(b']');
            shares[p].push((format!("smartplug/gateway-{p}/telemetry"), buf));
            messages += 1;
        }
    }
    (shares, messages, readings)
}

pub(crate) fn options(client_id: &str, host: &str, port: u16) -> MqttOptions {
    let mut o = MqttOptions::new(client_id, host, port);
    o.set_keep_alive(Duration::from_secs(30))
        .set_max_packet_size(64 << 20, 64 << 20)
        .set_inflight(1000);
    o
}

/// Publishes `messages` (topic, payload) from one connection, logged in with `login`
/// (user, password) when given, and returns once the broker accepted them all (QoS 0
/// ones are followed by a QoS 1 marker, which the broker handles after them).
pub fn publish(
    host: &str,
    port: u16,
    client_id: &str,
    login: Option<(&str, &str)>,
    qos: QoS,
    messages: Vec<(String, Vec<u8>)>,
) -> Result<(), MqttBenchError> {
    let mut options = options(client_id, host, port);
    if let Some((user, password)) = login {
        options.set_credentials(user, password);
    }
    let (client, mut connection) = Client::new(options, 10_000);
    let expected = match qos {
        QoS::AtMostOnce => 1,
        _ => messages.len() + 1,
    };
    let sender = std::thread::spawn(move || {
        for (topic, payload) in messages {
            if client.publish(topic, qos, false, payload).is_err() {
                return client;
            }
        }
        let _ = client.publish("wattdb-bench/marker", QoS::AtLeastOnce, false, "x");
        client
    });
    let mut acked = 0;
    let mut error = None;
    for event in connection.iter() {
        match event {
            Ok(Event::Incoming(Packet::PubAck(_))) => {
                acked += 1;
                if acked == expected {
                    break;
                }
            }
            Ok(_) => {}
            Err(e) => {
                error = Some(MqttBenchError::Mqtt(format!("{client_id}: {e}")));
                break;
            }
        }
    }
    let client = sender
        .join()
        .map_err(|_| MqttBenchError::Mqtt("publisher panicked".into()))?;
    let _ = client.disconnect();
    error.map_or(Ok(()), Err)
}

/// Subscribes to the smart-plug topics and counts readings; returns once subscribed.
/// The same client stack as WattDB's subscriber (rumqttc's async event loop on a tokio
/// runtime, read at the same pace: [`ReadPacer`]) and the same acknowledgement pattern
/// (at QoS 1, PUBACKs in runs of up to 1,000 messages or 5 ms, as WattDB sends them
/// after each write, written by [`AckRuns`]), minus the decoding and the writes.
fn null_subscriber(
    args: &MqttBenchArgs,
    qos: QoS,
    delivered: Arc<AtomicU64>,
) -> Result<(), MqttBenchError> {
    let mut options = options("bench-null", &args.host, args.port);
    options
        .set_manual_acks(true)
        .set_request_channel_capacity(70_000);
    let per_message = args.per_message as u64;
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        else {
            return;
        };
        runtime.block_on(async move {
            let (client, mut eventloop) = rumqttc::AsyncClient::new(options, 70_000);
            if client
                .subscribe("smartplug/+/telemetry", qos)
                .await
                .is_err()
            {
                return;
            }
            let mut owed: Vec<u16> = Vec::new();
            let mut tick = tokio::time::interval(Duration::from_millis(5));
            let mut pacer = ReadPacer::default();
            let acks = AckRuns::default();
            let ack_all = |owed: &mut Vec<u16>| {
                acks.queue(&client, 0, std::mem::take(owed));
            };
            loop {
                tokio::select! {
                    _ = tick.tick() => ack_all(&mut owed),
                    event = pacer.poll(&mut eventloop) => match event {
                        Ok(Event::Incoming(Packet::SubAck(_))) => {
                            let _ = ready_tx.send(());
                        }
                        Ok(Event::Incoming(Packet::Publish(p))) => {
                            delivered.fetch_add(per_message, Ordering::Relaxed);
                            if p.qos != QoS::AtMostOnce {
                                owed.push(p.pkid);
                                if owed.len() >= 1000 {
                                    ack_all(&mut owed);
                                }
                            }
                        }
                        Ok(Event::Outgoing(Outgoing::PubAck(pkid))) => {
                            acks.sent(&mut eventloop, 0, pkid).await;
                        }
                        Ok(_) => {}
                        Err(_) => return,
                    },
                }
            }
        });
    });
    ready_rx
        .recv_timeout(Duration::from_secs(10))
        .map_err(|_| MqttBenchError::Mqtt("the null subscriber could not subscribe".into()))
}

fn wattdb_error(url: &str, reason: impl ToString) -> MqttBenchError {
    MqttBenchError::Wattdb {
        url: url.to_owned(),
        reason: reason.to_string(),
    }
}

/// Polls `count` every 20 ms until it reads at least `target` or has read the same
/// for `idle` (`None`: could not be read this time). Returns the last reading and when
/// it was first read: the moment the target was reached, or the last change.
pub(crate) fn wait_for_count<E>(
    mut count: impl FnMut() -> Result<Option<u64>, E>,
    target: u64,
    idle: Duration,
) -> Result<(Option<u64>, Instant), E> {
    let mut last = (None, Instant::now());
    loop {
        let now = count()?;
        if now != last.0 {
            last = (now, Instant::now());
        }
        if now.is_some_and(|n| n >= target) || last.1.elapsed() > idle {
            return Ok(last);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// WattDB's `wattdb_ingested_readings_total{path="mqtt"}` on its `/metrics` page.
fn mqtt_readings(url: &str, page: &str) -> Result<u64, MqttBenchError> {
    mqtt_ingested(page)
        .ok_or_else(|| wattdb_error(url, "no MQTT ingest (is it started with --no-mqtt?)"))
}

/// `wattdb_ingested_readings_total{path="mqtt"}` on a `/metrics` page, if there.
pub(crate) fn mqtt_ingested(page: &str) -> Option<u64> {
    page.lines()
        .find_map(|l| l.strip_prefix("wattdb_ingested_readings_total{path=\"mqtt\"} "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map(|v| v as u64)
}

/// Stored and distinct readings of the run's `plugs` in `[min_ts, max_ts]`, where
/// `readings` were published.
fn stored(
    url: &str,
    token: Option<&str>,
    plugs: u32,
    readings: u64,
    min_ts: i64,
    max_ts: i64,
) -> Result<(u64, u64), MqttBenchError> {
    let agent = crate::http_agent(token, Duration::from_secs(300));
    let counts =
        stored_counts(&agent, url, None, plugs, readings, (min_ts, max_ts)).map_err(|e| {
            match std::error::Error::source(&e) {
                Some(cause) => wattdb_error(url, format!("{e}: {cause}")),
                None => wattdb_error(url, e),
            }
        })?;
    Ok(counts
        .values()
        .fold((0, 0), |(n, d), &(rows, distinct)| (n + rows, d + distinct)))
}
