//! The load generator behind `wattdb loadgen`: a [`Fleet`] writing to a server over
//! HTTP, then checking that the server kept what it acknowledged.
//!
//! ```text
//!  Fleet ─► producer (calling thread) ─► N bounded queues ─► N sender threads ─► server
//!  encode + batch, pace by schedule                         one keep-alive connection each
//!                                     ◄── recycled buffers ──┘ acks → AckSet, histogram
//! ```
//!
//! Each sender has its own share of the fleet (plug `p` belongs to sender
//! `p % connections`) and its own queue: a plug's readings go over one connection, one
//! request after another, so they reach the server in the order the fleet emits them,
//! as from a real plug or gateway. With one shared queue, a plug's next second could
//! overtake the one before on another connection; out-of-order readings are something
//! the run configures (`out_of_order_share`), not an accident of scheduling. The
//! senders' batches fill at the same pace, so each sender's first batch is cut short
//! (sender `k` of `n`: `(k + 1) / n` of a batch) to keep them a batch's time apart
//! rather than all due at once.
//!
//! Pacing:
//!
//! - Open loop (default): reading `k` of the run is due at `k / rate` seconds after the
//!   start (`rate` defaults to one reading per plug per second, i.e. real time). A batch
//!   is due when its last reading is; ack latency is measured from that scheduled
//!   time, not from when a sender got round to it, so a server that falls behind shows
//!   growing latency instead of a quietly lower send rate (no coordinated omission).
//!   The run sends `rate × duration` readings.
//! - `max`: flat out, closed loop: batches go out as fast as senders get acks; latency
//!   is measured from the actual send. Stops after `duration`.
//! - `backfill`: writes the simulated range `[start, end)` flat out, then delivers the
//!   held-back readings too; `duration` does not apply.
//!
//! Batch size: `batch_size` readings per request (default 5000 for line protocol, 1000
//! for JSON). In open loop it is capped at `rate / connections` (at least 1), so that
//! a request never holds more than `1 / connections` s of data and every connection
//! sends at least once a second, however low the rate.
//!
//! Errors: 429 and 503 are retried after the server's `Retry-After` (seconds) or a
//! backoff from 50 ms doubling to 2 s, up to [`LoadgenArgs::max_retries`] times; each
//! refusal counts in [`Report::errors`] under `http_429`/`http_503`, and a batch that
//! runs out of retries counts under `retries_exhausted`. Any other failure (`http_400`,
//! `connection_failed`, `io`, …) counts once and the batch is not acknowledged. A
//! batch is never dropped without a count.
//!
//! MQTT ([`Protocol::Mqtt`]): each sender is a broker connection instead
//! (`mqtt_sender`). It publishes a batch as smart-plug JSON messages (one per reading
//! on the plug's topic, or arrays on its lane's gateway topic) and goes on to the next
//! without waiting; the batch is acknowledged by the broker's PUBACKs. After the last
//! one, [`run`] waits for WattDB's MQTT reading count to take in what was published
//! ([`Report::mqtt_drain_s`]) before it reads the server's figures and verifies.
//!
//! Server figures: the loadgen reads the server's `/metrics` before the first write
//! and after the last acknowledgement, and reports what the server's own histograms
//! recorded in between ([`ServerView`]: WAL fsyncs, and each write's time from the
//! write queue to queryable). A high ack p99 next to slow fsyncs is the disk's.
//!
//! Verification: the loadgen knows exactly which distinct readings `(plug, second)` were
//! acknowledged: one bit each, kept per simulated second in words of 64 plugs, so
//! `ceil(plugs / 64) × 8` bytes per simulated second (10 k plugs for an hour: 4.5 MB;
//! 1 M plugs for an hour: 450 MB). Nothing per timestamp is stored. After the run it
//! asks the server, per device, for the stored rows and distinct timestamps in the
//! acknowledged time range ([`verify_sqls`]: one query per range of plug ids), and
//! reports `lost` (acknowledged distinct readings not stored) and `duplicated` (rows
//! stored beyond the distinct ones).

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::fmt::{self, Write as _};
use std::io::{self, Read};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use serde::Serialize;

use crate::encode::{encode_json, encode_lp};
use crate::histogram::Histogram;
use crate::http1::{Http1Client, Http1Error, UrlError};
use crate::mqtt::{mqtt_ingested, wait_for_count};
use crate::server_view::{ServerView, Snapshot, metrics_page};
use crate::simulator::{Fleet, FleetConfig, NS_PER_S, Reading};

mod mqtt_sender;
use mqtt_sender::MqttSender;

/// How readings are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// InfluxDB line protocol, `POST /api/v2/write?precision=ns`.
    #[default]
    Lp,
    /// JSON array of readings, `POST /api/v1/readings`.
    Json,
    /// Smart-plug JSON messages published to an MQTT broker that WattDB is subscribed
    /// to (see [`MqttLoad`]).
    Mqtt,
}

impl Protocol {
    fn path(self) -> &'static str {
        match self {
            Self::Lp => "/api/v2/write?precision=ns",
            Self::Json => "/api/v1/readings",
            Self::Mqtt => "",
        }
    }

    fn content_type(self) -> &'static str {
        match self {
            Self::Lp => "text/plain; charset=utf-8",
            Self::Json | Self::Mqtt => "application/json",
        }
    }

    /// Default readings per request.
    pub fn default_batch_size(self) -> usize {
        match self {
            Self::Lp => 5000,
            Self::Json | Self::Mqtt => 1000,
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Lp => "lp",
            Self::Json => "json",
            Self::Mqtt => "mqtt",
        })
    }
}

/// What [`run`] does. See the [module docs](self) for pacing, batching and errors.
#[derive(Debug, Clone, PartialEq)]
pub struct LoadgenArgs {
    /// Base URL of the server, e.g. `http://127.0.0.1:8181`.
    pub url: String,
    pub protocol: Protocol,
    pub plugs: u32,
    /// Readings per second, open loop; `None`: one per plug per second.
    pub rate: Option<u64>,
    /// Flat out instead of paced (then `rate` must be `None`).
    pub max: bool,
    /// How long to send (open loop and `max`).
    pub duration: Duration,
    pub seed: u64,
    /// Readings per request; `None`: [`Protocol::default_batch_size`].
    pub batch_size: Option<usize>,
    /// Concurrent sender threads, each with its own keep-alive connection and its own
    /// share of the plugs (at most one thread per plug).
    pub connections: usize,
    /// Write the simulated range `[start_ns, end_ns)` flat out instead.
    pub backfill: Option<(i64, i64)>,
    /// Simulated start time (ns since the epoch) for non-backfill runs; `None`: now.
    pub start_ns: Option<i64>,
    pub late_share: f64,
    pub duplicate_share: f64,
    pub out_of_order_share: f64,
    /// Query the server after the run for lost and duplicated readings.
    pub verify: bool,
    /// Sent as `Authorization: Bearer {token}`.
    pub token: Option<String>,
    /// Print a progress line on stderr every second.
    pub progress: bool,
    /// Retries of a batch refused with 429 or 503.
    pub max_retries: u32,
    /// Timeout of one request (connect + send + ack).
    pub request_timeout: Duration,
    /// Where and how [`Protocol::Mqtt`] publishes.
    pub mqtt: MqttLoad,
}

/// The broker and messages of a [`Protocol::Mqtt`] run. `url` stays WattDB's, for
/// `/metrics` and verification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MqttLoad {
    pub host: String,
    pub port: u16,
    /// 0 or 1.
    pub qos: u8,
    /// Readings per message: 1 publishes each reading as one object on the plug's
    /// own topic (`smartplug/{id}/telemetry`); more publish JSON arrays on a gateway
    /// topic per connection (`smartplug/gateway-{k}/telemetry`).
    pub per_message: usize,
    /// User name and password to log in with (the embedded broker takes a write
    /// token as password).
    pub login: Option<(String, String)>,
}

impl Default for MqttLoad {
    fn default() -> Self {
        Self {
            host: "127.0.0.1".to_owned(),
            port: 1883,
            qos: 1,
            per_message: 1,
            login: None,
        }
    }
}

impl Default for LoadgenArgs {
    fn default() -> Self {
        Self {
            url: "http://127.0.0.1:8181".to_owned(),
            protocol: Protocol::Lp,
            plugs: 1000,
            rate: None,
            max: false,
            duration: Duration::from_secs(10),
            seed: 1,
            batch_size: None,
            connections: 4,
            backfill: None,
            start_ns: None,
            late_share: 0.0,
            duplicate_share: 0.0,
            out_of_order_share: 0.0,
            verify: true,
            token: None,
            progress: true,
            max_retries: 30,
            request_timeout: Duration::from_secs(60),
            mqtt: MqttLoad::default(),
        }
    }
}

/// Why [`run`] could not run. Failures during the run (HTTP errors, refused
/// connections) are counted in the [`Report`] instead.
#[derive(Debug, thiserror::Error)]
pub enum LoadgenError {
    #[error("invalid loadgen argument {field}: {reason}")]
    InvalidArgs {
        field: &'static str,
        reason: &'static str,
    },
    #[error("cannot write to this URL")]
    Url(#[source] UrlError),
    #[error("could not start a loadgen thread")]
    Spawn(#[source] io::Error),
    #[error("a loadgen sender thread panicked")]
    SenderPanicked,
}

/// Why verification failed; the run's figures are still reported.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("verification query failed with HTTP {status}: {body}")]
    Status { status: u16, body: String },
    #[error("verification query could not reach the server")]
    Transport(#[source] Box<ureq::Transport>),
    #[error("reading the verification response failed")]
    Read(#[source] io::Error),
    #[error("verification response line {line}: expected `device_id,n,d`, found {found:?}")]
    Csv { line: usize, found: String },
}

/// The outcome of a run. `--json` prints it as one object with these field names.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Report {
    pub protocol: Protocol,
    pub plugs: u32,
    pub connections: usize,
    /// Readings per request actually used.
    pub batch_size: usize,
    /// Scheduled readings/s (open loop); `null` for `max` and backfill.
    pub target_rate: Option<u64>,
    /// Readings sent (each once, however often its batch was retried).
    pub sent: u64,
    /// Readings in acknowledged requests (deliberate duplicates included).
    pub acked: u64,
    /// Distinct `(device_id, ts)` among the acknowledged readings.
    pub acked_distinct: u64,
    /// `acked / elapsed_s`.
    pub rows_per_s: f64,
    /// Ack latency per request, from its scheduled send time (open loop) or its actual
    /// send time (`max`, backfill), in milliseconds. Over MQTT a request is a batch of
    /// messages, acknowledged by the broker's PUBACK of its last message (QoS 1) or of
    /// a QoS 1 marker published after it (QoS 0).
    pub ack_p50_ms: f64,
    pub ack_p99_ms: f64,
    pub ack_p999_ms: f64,
    pub ack_max_ms: f64,
    /// Failures by kind: `http_<status>`, `retries_exhausted`, `connection_failed`,
    /// `dns`, `io`, `transport`.
    pub errors: BTreeMap<String, u64>,
    /// The first message seen for each error kind.
    pub error_samples: BTreeMap<String, String>,
    /// Acknowledged distinct readings the server does not have; `null` if not verified.
    pub lost: Option<u64>,
    /// Rows stored beyond one per `(device_id, ts)`; `null` if not verified.
    pub duplicated: Option<u64>,
    /// Distinct readings stored that were never acknowledged (a request that failed
    /// after the write, or an earlier run in the same range); `null` if not verified.
    pub unacked_stored: Option<u64>,
    /// Why verification was not done, if it was asked for and failed.
    pub verify_error: Option<String>,
    /// From the first send to the last ack.
    pub elapsed_s: f64,
    /// HTTP requests made, retries included; over MQTT, messages published.
    pub requests: u64,
    /// MQTT: seconds from the last PUBACK until WattDB had ingested as many readings
    /// as were published (or until its count last moved, when it stood still for
    /// 10 s); `null` over HTTP, or when WattDB's `/metrics` could not be read.
    pub mqtt_drain_s: Option<f64>,
    /// The server's own figures for the run (WAL fsyncs, queue to queryable), from its
    /// `/metrics` before and after; `null` if they could not be read (see
    /// `server_error`). They include other clients' writes, if any.
    pub server: Option<ServerView>,
    /// Why `server` is `null`.
    pub server_error: Option<String>,
}

impl Report {
    /// Prints the summary for people on stdout.
    pub fn print_human(&self) {
        print!("{self}");
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let rate = match self.target_rate {
            Some(r) => format!("{r} readings/s scheduled"),
            None => "flat out".to_owned(),
        };
        writeln!(
            f,
            "wattdb loadgen: {} plugs over {}, {rate}, {} connections, batches of {}",
            self.plugs, self.protocol, self.connections, self.batch_size
        )?;
        let unit = match self.protocol {
            Protocol::Mqtt => "messages",
            Protocol::Lp | Protocol::Json => "requests",
        };
        writeln!(
            f,
            "  sent      {} readings in {} {unit} over {:.1} s",
            self.sent, self.requests, self.elapsed_s
        )?;
        writeln!(
            f,
            "  acked     {} readings ({} distinct), {:.0} rows/s",
            self.acked, self.acked_distinct, self.rows_per_s
        )?;
        writeln!(
            f,
            "  ack       p50 {:.2} ms  p99 {:.2} ms  p99.9 {:.2} ms  max {:.2} ms",
            self.ack_p50_ms, self.ack_p99_ms, self.ack_p999_ms, self.ack_max_ms
        )?;
        if let Some(drain) = self.mqtt_drain_s {
            writeln!(
                f,
                "  drained   WattDB took the published readings {drain:.2} s after the last PUBACK"
            )?;
        }
        if self.errors.is_empty() {
            writeln!(f, "  errors    none")?;
        } else {
            for (kind, n) in &self.errors {
                let sample = self.error_samples.get(kind).map_or("", String::as_str);
                writeln!(f, "  errors    {kind}: {n}  ({sample})")?;
            }
        }
        match (self.lost, self.duplicated, &self.verify_error) {
            (Some(lost), Some(dup), _) => writeln!(
                f,
                "  verified  lost {lost}, duplicated {dup}, stored but not acked {}",
                self.unacked_stored.unwrap_or(0)
            ),
            (_, _, Some(e)) => writeln!(f, "  verified  no: {e}"),
            _ => writeln!(f, "  verified  not asked"),
        }?;
        match (&self.server, &self.server_error) {
            (Some(server), _) => writeln!(f, "  server    {server}"),
            (None, Some(e)) => writeln!(f, "  server    no figures: {e}"),
            (None, None) => Ok(()),
        }
    }
}

/// Readings one verification query counts, at most (about). Counting distinct times
/// per plug takes memory in proportion to the readings counted: one query over a
/// flat-out run of a minute (44 M readings) exceeded the server's default query memory
/// of 1 GiB.
const VERIFY_READINGS_PER_QUERY: u64 = 4_000_000;

/// The verification queries for readings of `plugs` simulated plugs with `ts` in
/// `[min_ts, max_ts]` (ns), `readings` of them expected: each counts, per device, the
/// rows and distinct times of one range of plug ids, so that none counts more than
/// about [`VERIFY_READINGS_PER_QUERY`] readings. The ranges follow the ids' text order
/// (`plug-1000000` sorts before `plug-100001`), which is also the order of the rows
/// in the Parquet files, so each query reads only its plugs' row groups. Together the
/// ranges cover every id of the fleet once; ids of other plugs inside a range are
/// counted by the server and skipped by the reader.
pub fn verify_sqls(plugs: u32, readings: u64, min_ts: i64, max_ts: i64) -> Vec<String> {
    let mut ids: Vec<String> = (0..plugs).map(crate::simulator::plug_id).collect();
    ids.sort_unstable();
    let groups = readings
        .div_ceil(VERIFY_READINGS_PER_QUERY)
        .clamp(1, u64::from(plugs.max(1)));
    let per_group = ids.len().div_ceil(groups as usize).max(1);
    let time = format!(
        "ts >= '{}' AND ts <= '{}'",
        rfc3339_ns(min_ts),
        rfc3339_ns(max_ts)
    );
    let select = "SELECT device_id, count(*) AS n, count(DISTINCT ts) AS d FROM readings";
    if ids.is_empty() || groups == 1 {
        return vec![format!(
            "{select} WHERE device_id LIKE 'plug-%' AND {time} GROUP BY device_id"
        )];
    }
    ids.chunks(per_group)
        .map(|c| {
            format!(
                "{select} WHERE device_id >= '{}' AND device_id <= '{}' AND {time} \
                 GROUP BY device_id",
                c[0],
                c[c.len() - 1]
            )
        })
        .collect()
}

/// `2023-11-14T22:13:20.123456789Z`.
fn rfc3339_ns(ns: i64) -> String {
    let secs = ns.div_euclid(NS_PER_S);
    let frac = ns.rem_euclid(NS_PER_S);
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{frac:09}Z",
        sod / 3600,
        sod / 60 % 60,
        sod % 60
    )
}

/// Runs the load and, if asked, verifies it. Blocks until done.
pub fn run(args: LoadgenArgs) -> Result<Report, LoadgenError> {
    validate(&args)?;
    let pacing = match (args.max, args.backfill, args.rate) {
        (false, None, rate) => Pacing::Open {
            rate: rate.unwrap_or(u64::from(args.plugs)),
        },
        _ => Pacing::Flat,
    };
    let mut batch_size = args
        .batch_size
        .unwrap_or(args.protocol.default_batch_size());
    // At most one sender per plug: each has its own share of the plugs.
    let connections = args.connections.min(args.plugs as usize);
    if let Pacing::Open { rate } = pacing {
        let per_connection = usize::try_from(rate / connections as u64).unwrap_or(usize::MAX);
        batch_size = batch_size.min(per_connection.max(1));
    }
    let start_ns = match (args.backfill, args.start_ns) {
        (Some((start, _)), _) => start,
        (None, Some(start)) => start,
        (None, None) => now_ns() / NS_PER_S * NS_PER_S,
    };
    let mut fleet = Fleet::new(FleetConfig {
        plugs: args.plugs,
        seed: args.seed,
        start_ns,
        late_share: args.late_share,
        duplicate_share: args.duplicate_share,
        out_of_order_share: args.out_of_order_share,
        ..FleetConfig::default()
    });

    let shared = Arc::new(Shared::new(args.plugs));
    // One queue per sender, two batches deep.
    let (work_txs, work_rxs): (Vec<_>, Vec<_>) = (0..connections)
        .map(|_| crossbeam_channel::bounded::<Batch>(2))
        .unzip();
    let (recycle_tx, recycle_rx) = crossbeam_channel::unbounded::<Batch>();
    let url = format!("{}{}", args.url.trim_end_matches('/'), args.protocol.path());
    let auth = args.token.as_ref().map(|t| format!("Bearer {t}"));

    // The server's /metrics before the first write: histograms to subtract from those
    // after, and (MQTT) the readings it had taken over MQTT.
    let before_page = metrics_page(&args.url, args.token.as_deref());
    let before = before_page
        .as_deref()
        .map_err(Clone::clone)
        .and_then(Snapshot::parse);
    let mqtt_before = before_page.as_deref().ok().and_then(mqtt_ingested);

    let t0 = Instant::now();
    let mut senders = Vec::with_capacity(connections);
    for (i, work) in work_rxs.into_iter().enumerate() {
        let recycle = recycle_tx.clone();
        let thread = thread::Builder::new().name(format!("loadgen-sender-{i}"));
        let handle = if args.protocol == Protocol::Mqtt {
            let sender = MqttSender::new(&args.mqtt, i, Arc::clone(&shared));
            thread.spawn(move || sender.run(&work, &recycle))
        } else {
            let sender = HttpSender {
                client: Http1Client::new(
                    &url,
                    args.protocol.content_type(),
                    auth.as_deref(),
                    args.request_timeout,
                )
                .map_err(LoadgenError::Url)?,
                max_retries: args.max_retries,
                shared: Arc::clone(&shared),
            };
            thread.spawn(move || sender.run(&work, &recycle))
        };
        senders.push(handle.map_err(LoadgenError::Spawn)?);
    }
    drop(recycle_tx);

    let (stop_tx, stop_rx) = crossbeam_channel::bounded::<()>(0);
    let progress = if args.progress {
        let shared = Arc::clone(&shared);
        Some(
            thread::Builder::new()
                .name("loadgen-progress".to_owned())
                .spawn(move || print_progress(&shared, t0, &stop_rx))
                .map_err(LoadgenError::Spawn)?,
        )
    } else {
        None
    };

    let mut producer = Producer {
        protocol: args.protocol,
        per_message: args.mqtt.per_message,
        batch_size,
        lanes: work_txs
            .into_iter()
            .enumerate()
            .map(|(k, work)| Lane {
                batch: Batch::with_capacity(batch_size, args.protocol),
                target: (batch_size * (k + 1) / connections).max(1),
                work,
            })
            .collect(),
        recycle: recycle_rx,
        pacing,
        t0,
        emitted: 0,
        limit: match pacing {
            Pacing::Open { rate } => Some((rate as f64 * args.duration.as_secs_f64()) as u64),
            Pacing::Flat => None,
        },
        deadline: (args.backfill.is_none() && args.max).then(|| t0 + args.duration),
        ts_end: args.backfill.map(|(_, end)| end),
        done: false,
        shared: Arc::clone(&shared),
    };
    match args.backfill {
        Some((_, end)) => {
            while fleet.now_ns() < end && !producer.done {
                fleet.next_second(&mut |r| producer.push(r));
            }
            fleet.flush(&mut |r| producer.push(r));
        }
        None => {
            while !producer.done {
                fleet.next_second(&mut |r| producer.push(r));
            }
        }
    }
    producer.dispatch_all();
    drop(producer);

    let mut stats = SenderStats::default();
    let mut panicked = false;
    for handle in senders {
        match handle.join() {
            Ok(s) => stats.merge(s),
            Err(_) => panicked = true,
        }
    }
    let elapsed = t0.elapsed();
    drop(stop_tx);
    if let Some(p) = progress {
        let _ = p.join();
    }
    if panicked {
        return Err(LoadgenError::SenderPanicked);
    }
    // Over MQTT the acknowledgements came from the broker: wait for WattDB to take
    // what was published before reading its figures and verifying. (Waiting for the
    // acknowledged count alone is not enough: the broker may pass on messages of a
    // batch it never acknowledged, which WattDB then counts too.)
    let mqtt_drain_s = match (args.protocol, mqtt_before) {
        (Protocol::Mqtt, Some(baseline)) => Some(drain_mqtt(
            &args,
            baseline + shared.sent.load(Ordering::Relaxed),
        )),
        _ => None,
    };

    let (server, server_error) = match (before, Snapshot::fetch(&args.url, args.token.as_deref())) {
        (Ok(before), Ok(after)) => match ServerView::between(&before, &after) {
            Some(view) => (Some(view), None),
            None => (None, Some("the server restarted during the run".to_owned())),
        },
        (Err(e), _) | (_, Err(e)) => (None, Some(e)),
    };

    let acks = shared.acks.lock().unwrap_or_else(PoisonError::into_inner);
    let acked = shared.acked.load(Ordering::Relaxed);
    let elapsed_s = elapsed.as_secs_f64();
    let ms = |us: u64| us as f64 / 1000.0;
    let mut report = Report {
        protocol: args.protocol,
        plugs: args.plugs,
        connections,
        batch_size,
        target_rate: match pacing {
            Pacing::Open { rate } => Some(rate),
            Pacing::Flat => None,
        },
        sent: shared.sent.load(Ordering::Relaxed),
        acked,
        acked_distinct: acks.distinct(),
        rows_per_s: if elapsed_s > 0.0 {
            acked as f64 / elapsed_s
        } else {
            0.0
        },
        ack_p50_ms: ms(stats.latency_us.quantile(0.5)),
        ack_p99_ms: ms(stats.latency_us.quantile(0.99)),
        ack_p999_ms: ms(stats.latency_us.quantile(0.999)),
        ack_max_ms: ms(stats.latency_us.max()),
        errors: stats.errors,
        error_samples: stats.samples,
        lost: None,
        duplicated: None,
        unacked_stored: None,
        verify_error: None,
        elapsed_s,
        requests: shared.requests.load(Ordering::Relaxed),
        mqtt_drain_s,
        server,
        server_error,
    };
    if args.verify {
        match verify(&args, auth.as_deref(), &acks) {
            Ok(v) => {
                report.lost = Some(v.lost);
                report.duplicated = Some(v.duplicated);
                report.unacked_stored = Some(v.unacked_stored);
            }
            Err(e) => report.verify_error = Some(error_chain(&e)),
        }
    }
    Ok(report)
}

fn validate(args: &LoadgenArgs) -> Result<(), LoadgenError> {
    let bad = |field, reason| Err(LoadgenError::InvalidArgs { field, reason });
    let share = |s: f64| (0.0..=1.0).contains(&s);
    if args.plugs == 0 {
        return bad("plugs", "must be at least 1");
    }
    if args.connections == 0 {
        return bad("connections", "must be at least 1");
    }
    if args.rate == Some(0) {
        return bad("rate", "must be at least 1");
    }
    if args.max && args.rate.is_some() {
        return bad("rate", "cannot be combined with max");
    }
    if args.batch_size == Some(0) {
        return bad("batch_size", "must be at least 1");
    }
    if !share(args.late_share) || !share(args.duplicate_share) || !share(args.out_of_order_share) {
        return bad("late/duplicate/out_of_order share", "must be within 0..=1");
    }
    if args.late_share + args.out_of_order_share > 1.0 {
        return bad("late_share + out_of_order_share", "must not exceed 1");
    }
    if let Some((start, end)) = args.backfill
        && start >= end
    {
        return bad("backfill", "start must be before end");
    }
    if args.protocol == Protocol::Mqtt {
        if args.mqtt.qos > 1 {
            return bad("qos", "must be 0 or 1");
        }
        if args.mqtt.per_message == 0 {
            return bad("per_message", "must be at least 1");
        }
    }
    if !args.url.starts_with("http://") && !args.url.starts_with("https://") {
        return bad("url", "must start with http:// or https://");
    }
    Ok(())
}

fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
}

fn agent(timeout: Duration) -> ureq::Agent {
    ureq::AgentBuilder::new()
        .timeout_connect(Duration::from_secs(5))
        .timeout(timeout)
        .max_idle_connections(4)
        .max_idle_connections_per_host(2)
        .build()
}

/// How long WattDB took, from now, until its `/metrics` counted `target` readings
/// taken over MQTT in all; gives up after [`MQTT_DRAIN_IDLE`] without progress (then:
/// until the count last moved).
fn drain_mqtt(args: &LoadgenArgs, target: u64) -> f64 {
    let start = Instant::now();
    let read = || {
        let page = metrics_page(&args.url, args.token.as_deref());
        Ok::<_, Infallible>(page.ok().as_deref().and_then(mqtt_ingested))
    };
    let Ok((_, done)) = wait_for_count(read, target, MQTT_DRAIN_IDLE);
    done.saturating_duration_since(start).as_secs_f64()
}

/// `error: cause: cause`.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let _ = write!(s, ": {c}");
        cause = c.source();
    }
    s
}

/// State the producer, the senders and the progress line share.
#[derive(Debug)]
struct Shared {
    sent: AtomicU64,
    acked: AtomicU64,
    errors: AtomicU64,
    requests: AtomicU64,
    /// Slowest acknowledgement since the progress line last printed (µs).
    slowest_us: AtomicU64,
    acks: Mutex<AckSet>,
}

impl Shared {
    fn new(plugs: u32) -> Self {
        Self {
            sent: AtomicU64::new(0),
            acked: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            slowest_us: AtomicU64::new(0),
            acks: Mutex::new(AckSet::new(plugs)),
        }
    }
}

/// One bit per distinct reading `(tick, plug)`, tick-major, plus the acked `ts` range.
#[derive(Debug)]
struct AckSet {
    plugs: u32,
    words_per_tick: usize,
    bits: Vec<u64>,
    min_ts: i64,
    max_ts: i64,
}

impl AckSet {
    fn new(plugs: u32) -> Self {
        Self {
            plugs,
            words_per_tick: (plugs as usize).div_ceil(64),
            bits: Vec::new(),
            min_ts: i64::MAX,
            max_ts: i64::MIN,
        }
    }

    fn mark(&mut self, batch: &Batch) {
        for &key in &batch.keys {
            let (tick, plug) = split_key(key);
            let word = tick as usize * self.words_per_tick + plug as usize / 64;
            if word >= self.bits.len() {
                let want = (tick as usize + 1) * self.words_per_tick;
                self.bits.resize(want.max(self.bits.len() * 2), 0);
            }
            self.bits[word] |= 1 << (plug % 64);
        }
        self.min_ts = self.min_ts.min(batch.min_ts);
        self.max_ts = self.max_ts.max(batch.max_ts);
    }

    fn distinct(&self) -> u64 {
        self.bits.iter().map(|w| u64::from(w.count_ones())).sum()
    }

    fn per_plug(&self) -> Vec<u64> {
        let mut counts = vec![0; self.plugs as usize];
        for row in self.bits.chunks(self.words_per_tick.max(1)) {
            for (w, &word) in row.iter().enumerate() {
                let mut bits = word;
                while bits != 0 {
                    counts[w * 64 + bits.trailing_zeros() as usize] += 1;
                    bits &= bits - 1;
                }
            }
        }
        counts
    }
}

fn key(r: &Reading<'_>) -> u64 {
    (r.tick << 32) | u64::from(r.plug_index)
}

fn split_key(key: u64) -> (u64, u32) {
    (key >> 32, key as u32)
}

/// One request's worth of readings (over MQTT, a run of messages).
#[derive(Debug)]
struct Batch {
    /// The request body; over MQTT, the JSON array being filled.
    body: Vec<u8>,
    /// MQTT: (topic, payload) in publishing order.
    messages: Vec<(String, Vec<u8>)>,
    /// MQTT: readings in `body`'s open array.
    in_array: usize,
    keys: Vec<u64>,
    min_ts: i64,
    max_ts: i64,
    /// When the batch was due (open loop); `None`: measure from the actual send.
    scheduled: Option<Instant>,
}

impl Batch {
    fn with_capacity(rows: usize, protocol: Protocol) -> Self {
        let per_row = match protocol {
            Protocol::Lp => 190,
            Protocol::Json => 230,
            Protocol::Mqtt => 0,
        };
        Self {
            body: Vec::with_capacity(rows * per_row + 2),
            messages: Vec::new(),
            in_array: 0,
            keys: Vec::with_capacity(rows),
            min_ts: i64::MAX,
            max_ts: i64::MIN,
            scheduled: None,
        }
    }

    fn clear(&mut self) {
        self.body.clear();
        self.messages.clear();
        self.in_array = 0;
        self.keys.clear();
        self.min_ts = i64::MAX;
        self.max_ts = i64::MIN;
        self.scheduled = None;
    }

    fn rows(&self) -> usize {
        self.keys.len()
    }

    /// MQTT: ends the open JSON array (if any) as a message on lane `lane`'s gateway
    /// topic.
    fn close_array(&mut self, lane: usize) {
        if self.in_array == 0 {
            return;
        }
        self.body.push(b']');
        let topic = format!("smartplug/gateway-{lane}/telemetry");
        let next = Vec::with_capacity(self.body.len());
        let payload = std::mem::replace(&mut self.body, next);
        self.messages.push((topic, payload));
        self.in_array = 0;
    }
}

#[derive(Debug, Clone, Copy)]
enum Pacing {
    Open { rate: u64 },
    Flat,
}

/// A sender's share of the fleet: the batch being filled and the sender's queue.
struct Lane {
    batch: Batch,
    /// Readings that fill the batch: `batch_size`, except for the staggered first.
    target: usize,
    work: Sender<Batch>,
}

/// Encodes readings into batches and hands them to the senders on schedule.
struct Producer {
    protocol: Protocol,
    /// MQTT: readings per message.
    per_message: usize,
    batch_size: usize,
    /// One per sender; plug `p` goes to lane `p % lanes`.
    lanes: Vec<Lane>,
    recycle: Receiver<Batch>,
    pacing: Pacing,
    t0: Instant,
    /// Readings put in batches so far.
    emitted: u64,
    /// Open loop: readings in the whole run.
    limit: Option<u64>,
    /// `max`: stop at this instant.
    deadline: Option<Instant>,
    /// Backfill: readings at or after this ts are not sent.
    ts_end: Option<i64>,
    done: bool,
    shared: Arc<Shared>,
}

impl Producer {
    fn push(&mut self, r: &Reading<'_>) {
        if self.done || self.ts_end.is_some_and(|end| r.ts >= end) {
            return;
        }
        if self.limit.is_some_and(|limit| self.emitted >= limit) {
            self.done = true;
            return;
        }
        let lane = r.plug_index as usize % self.lanes.len();
        let Lane {
            batch: b, target, ..
        } = &mut self.lanes[lane];
        match self.protocol {
            Protocol::Lp => encode_lp(r, &mut b.body),
            Protocol::Json => {
                b.body.push(if b.keys.is_empty() { b'[' } else { b',' });
                encode_json(r, &mut b.body);
            }
            Protocol::Mqtt if self.per_message == 1 => {
                let mut payload = Vec::with_capacity(200);
                encode_json(r, &mut payload);
                let topic = format!("smartplug/{}/telemetry", r.device_id());
                b.messages.push((topic, payload));
            }
            Protocol::Mqtt => {
                b.body.push(if b.in_array == 0 { b'[' } else { b',' });
                encode_json(r, &mut b.body);
                b.in_array += 1;
                if b.in_array == self.per_message {
                    b.close_array(lane);
                }
            }
        }
        b.keys.push(key(r));
        b.min_ts = b.min_ts.min(r.ts);
        b.max_ts = b.max_ts.max(r.ts);
        self.emitted += 1;
        if b.rows() >= *target {
            self.dispatch(lane);
        }
    }

    /// Sends the batches still being filled (the end of the run).
    fn dispatch_all(&mut self) {
        for lane in 0..self.lanes.len() {
            self.dispatch(lane);
        }
    }

    /// Sends a lane's batch (if any) once it is due.
    fn dispatch(&mut self, lane: usize) {
        let Lane {
            batch,
            target,
            work,
        } = &mut self.lanes[lane];
        if batch.rows() == 0 {
            return;
        }
        *target = self.batch_size;
        match self.protocol {
            Protocol::Json => batch.body.push(b']'),
            Protocol::Mqtt => batch.close_array(lane),
            Protocol::Lp => {}
        }
        if let Pacing::Open { rate } = self.pacing {
            let due = self.t0 + Duration::from_secs_f64(self.emitted as f64 / rate as f64);
            let now = Instant::now();
            if due > now {
                thread::sleep(due - now);
            }
            batch.scheduled = Some(due);
        }
        self.shared
            .sent
            .fetch_add(batch.rows() as u64, Ordering::Relaxed);
        let next = self
            .recycle
            .try_recv()
            .unwrap_or_else(|_| Batch::with_capacity(self.batch_size, self.protocol));
        let full = std::mem::replace(batch, next);
        if work.send(full).is_err() {
            // The lane's sender is gone (senders only stop when their queue closes):
            // nothing more can be sent.
            self.done = true;
        }
        if self.deadline.is_some_and(|d| Instant::now() >= d) {
            self.done = true;
        }
    }
}

/// What one sender thread measured.
#[derive(Debug, Default)]
struct SenderStats {
    latency_us: Histogram,
    errors: BTreeMap<String, u64>,
    samples: BTreeMap<String, String>,
}

impl SenderStats {
    fn error(&mut self, shared: &Shared, kind: String, sample: impl FnOnce() -> String) {
        shared.errors.fetch_add(1, Ordering::Relaxed);
        if !self.samples.contains_key(&kind) {
            self.samples.insert(kind.clone(), sample());
        }
        *self.errors.entry(kind).or_insert(0) += 1;
    }

    /// Counts `batch`, sent at `sent_at`, as acknowledged now.
    fn acknowledged(&mut self, shared: &Shared, batch: &Batch, sent_at: Instant) {
        let from = batch.scheduled.unwrap_or(sent_at);
        let us = u64::try_from(from.elapsed().as_micros()).unwrap_or(u64::MAX);
        self.latency_us.record(us);
        shared.slowest_us.fetch_max(us, Ordering::Relaxed);
        shared
            .acked
            .fetch_add(batch.rows() as u64, Ordering::Relaxed);
        shared
            .acks
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .mark(batch);
    }

    fn merge(&mut self, other: Self) {
        self.latency_us.merge(&other.latency_us);
        for (k, n) in other.errors {
            *self.errors.entry(k).or_insert(0) += n;
        }
        for (k, s) in other.samples {
            self.samples.entry(k).or_insert(s);
        }
    }
}

/// One sender thread: one keep-alive connection.
struct HttpSender {
    client: Http1Client,
    max_retries: u32,
    shared: Arc<Shared>,
}

const MAX_RETRY_WAIT: Duration = Duration::from_secs(30);
/// How long [`drain_mqtt`] waits for WattDB's MQTT count to move.
const MQTT_DRAIN_IDLE: Duration = Duration::from_secs(10);
const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// Bytes of an error response kept as its sample.
const SAMPLE_LEN: usize = 300;

impl HttpSender {
    fn run(mut self, work: &Receiver<Batch>, recycle: &Sender<Batch>) -> SenderStats {
        let mut stats = SenderStats::default();
        while let Ok(mut batch) = work.recv() {
            let sent_at = Instant::now();
            if self.send(&batch.body, &mut stats) {
                stats.acknowledged(&self.shared, &batch, sent_at);
            }
            batch.clear();
            // The producer may be gone already; then the buffer is simply dropped.
            let _ = recycle.send(batch);
        }
        stats
    }

    /// Sends one body until it is acknowledged, refused, or out of retries.
    fn send(&mut self, body: &[u8], stats: &mut SenderStats) -> bool {
        let mut backoff = Duration::from_millis(50);
        let mut retries = 0;
        loop {
            self.shared.requests.fetch_add(1, Ordering::Relaxed);
            let resp = match self.client.post(body) {
                Ok(resp) => resp,
                Err(e) => {
                    let kind = match e {
                        Http1Error::Connect { .. } => "connection_failed",
                        Http1Error::Io(_) => "io",
                        Http1Error::Protocol(_) => "transport",
                    };
                    stats.error(&self.shared, kind.to_owned(), || e.to_string());
                    return false;
                }
            };
            let status = resp.status;
            if (200..300).contains(&status) {
                return true;
            }
            let text = response_text(&resp.body);
            stats.error(&self.shared, format!("http_{status}"), || text);
            if !matches!(status, 429 | 503) {
                return false;
            }
            if retries >= self.max_retries {
                stats.error(&self.shared, "retries_exhausted".to_owned(), || {
                    format!("HTTP {status} after {retries} retries")
                });
                return false;
            }
            retries += 1;
            thread::sleep(resp.retry_after.unwrap_or(backoff).min(MAX_RETRY_WAIT));
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }
}

/// The start of an error response's body, for the report's sample.
pub(crate) fn response_text(body: &[u8]) -> String {
    let mut text = String::from_utf8_lossy(body).into_owned();
    if text.len() > SAMPLE_LEN {
        let mut cut = SAMPLE_LEN;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
        text.push('…');
    }
    text
}

fn print_progress(shared: &Shared, t0: Instant, stop: &Receiver<()>) {
    let mut last_acked = 0;
    let mut last = t0;
    loop {
        match stop.recv_timeout(Duration::from_secs(1)) {
            Err(RecvTimeoutError::Timeout) => {}
            Ok(()) | Err(RecvTimeoutError::Disconnected) => return,
        }
        let now = Instant::now();
        let acked = shared.acked.load(Ordering::Relaxed);
        let rate = (acked - last_acked) as f64 / (now - last).as_secs_f64();
        let slowest_ms = shared.slowest_us.swap(0, Ordering::Relaxed) as f64 / 1000.0;
        eprintln!(
            "loadgen {:>6.1} s  {:>10.0} rows/s  sent {:>12}  acked {:>12}  slowest ack {:>8.1} ms  errors {}",
            (now - t0).as_secs_f64(),
            rate,
            shared.sent.load(Ordering::Relaxed),
            acked,
            slowest_ms,
            shared.errors.load(Ordering::Relaxed),
        );
        last_acked = acked;
        last = now;
    }
}

/// What the server says it holds, compared with what was acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Verified {
    lost: u64,
    duplicated: u64,
    unacked_stored: u64,
}

fn verify(args: &LoadgenArgs, auth: Option<&str>, acks: &AckSet) -> Result<Verified, VerifyError> {
    let acked = acks.per_plug();
    if acks.min_ts > acks.max_ts {
        // Nothing was acknowledged: nothing can be lost.
        return Ok(Verified {
            lost: 0,
            duplicated: 0,
            unacked_stored: 0,
        });
    }
    let stored = stored_counts(
        &agent(Duration::from_secs(600)),
        &args.url,
        auth,
        args.plugs,
        acked.iter().sum(),
        (acks.min_ts, acks.max_ts),
    )?;
    let mut v = Verified {
        lost: 0,
        duplicated: 0,
        unacked_stored: 0,
    };
    for (plug, &a) in acked.iter().enumerate() {
        let (n, d) = stored.get(&(plug as u32)).copied().unwrap_or((0, 0));
        v.lost += a.saturating_sub(d);
        v.unacked_stored += d.saturating_sub(a);
        v.duplicated += n.saturating_sub(d);
    }
    Ok(v)
}

/// Per plug index of a fleet of `plugs` simulated plugs (`readings` of them expected
/// in `[min_ts, max_ts]`, ns): the rows and distinct times the server at `url` stores,
/// counted by the [`verify_sqls`] queries. `auth` is an `Authorization` value.
pub fn stored_counts(
    agent: &ureq::Agent,
    url: &str,
    auth: Option<&str>,
    plugs: u32,
    readings: u64,
    (min_ts, max_ts): (i64, i64),
) -> Result<BTreeMap<u32, (u64, u64)>, VerifyError> {
    let url = format!("{}/api/v1/query", url.trim_end_matches('/'));
    let mut stored = BTreeMap::new();
    for sql in verify_sqls(plugs, readings, min_ts, max_ts) {
        let mut req = agent.post(&url);
        if let Some(auth) = auth {
            req = req.set("Authorization", auth);
        }
        let csv = match req.send_json(serde_json::json!({"sql": sql, "format": "csv"})) {
            Ok(resp) => resp.into_string().map_err(VerifyError::Read)?,
            Err(ureq::Error::Status(status, resp)) => {
                let mut body = Vec::new();
                let _ = resp.into_reader().take(1 << 20).read_to_end(&mut body);
                return Err(VerifyError::Status {
                    status,
                    body: response_text(&body),
                });
            }
            Err(ureq::Error::Transport(t)) => return Err(VerifyError::Transport(Box::new(t))),
        };
        parse_counts(&csv, plugs, &mut stored)?;
    }
    Ok(stored)
}

/// Adds a `device_id,n,d` CSV with a header to plug index → (rows, distinct ts).
/// Devices that are not this fleet's plugs are skipped.
fn parse_counts(
    csv: &str,
    plugs: u32,
    out: &mut BTreeMap<u32, (u64, u64)>,
) -> Result<(), VerifyError> {
    for (i, line) in csv.lines().enumerate().skip(1) {
        let line = line.trim_end_matches('\r');
        if line.is_empty() {
            continue;
        }
        let bad = || VerifyError::Csv {
            line: i + 1,
            found: line.chars().take(200).collect(),
        };
        let mut fields = line.split(',');
        let (Some(id), Some(n), Some(d), None) =
            (fields.next(), fields.next(), fields.next(), fields.next())
        else {
            return Err(bad());
        };
        let (Ok(n), Ok(d)) = (n.trim().parse::<u64>(), d.trim().parse::<u64>()) else {
            return Err(bad());
        };
        let Some(plug) = id
            .trim_matches('"')
            .strip_prefix("plug-")
            .and_then(|p| p.parse::<u32>().ok())
            .filter(|&p| p < plugs)
        else {
            continue;
        };
        let e = out.entry(plug).or_insert((0, 0));
        e.0 += n;
        e.1 += d;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339() {
        assert_eq!(rfc3339_ns(0), "1970-01-01T00:00:00.000000000Z");
        assert_eq!(
            rfc3339_ns(1_700_000_000_123_456_789),
            "2023-11-14T22:13:20.123456789Z"
        );
        assert_eq!(
            rfc3339_ns(951_782_400 * NS_PER_S),
            "2000-02-29T00:00:00.000000000Z"
        );
    }

    #[test]
    fn counts_csv() {
        let csv = "device_id,n,d\nplug-000001,10,9\nplug-000000,5,5\nother,1,1\nplug-999999,1,1\n";
        let mut got = BTreeMap::new();
        parse_counts(csv, 2, &mut got).unwrap();
        assert_eq!(got.get(&0), Some(&(5, 5)));
        assert_eq!(got.get(&1), Some(&(10, 9)));
        assert_eq!(got.len(), 2);
        // A second answer (another range of plugs) adds to the first.
        parse_counts("device_id,n,d\nplug-000001,2,1\n", 2, &mut got).unwrap();
        assert_eq!(got.get(&1), Some(&(12, 10)));
        assert!(matches!(
            parse_counts("h\nplug-000001,x,1\n", 2, &mut got),
            Err(VerifyError::Csv { line: 2, .. })
        ));
    }

    #[test]
    fn verification_queries_split_the_fleet_into_ranges_of_ids_covering_it_once() {
        assert_eq!(verify_sqls(10, 1_000, 0, 1).len(), 1);
        assert!(verify_sqls(10, 1_000, 0, 1)[0].contains("LIKE 'plug-%'"));
        // 1.2 M plugs (ids of 6 and 7 digits), 100 M readings: 25 ranges.
        let plugs = 1_200_000;
        let sqls = verify_sqls(plugs, 100_000_000, 0, 1);
        assert_eq!(sqls.len(), 25);
        let ranges: Vec<(String, String)> = sqls
            .iter()
            .map(|s| {
                let bound = |after: &str| {
                    let rest = &s[s.find(after).unwrap() + after.len()..];
                    rest[..rest.find('\'').unwrap()].to_owned()
                };
                (bound("device_id >= '"), bound("device_id <= '"))
            })
            .collect();
        for w in ranges.windows(2) {
            assert!(w[0].1 < w[1].0, "ranges overlap or are out of order: {w:?}");
        }
        let covered = (0..plugs)
            .map(crate::simulator::plug_id)
            .filter(|id| ranges.iter().any(|(lo, hi)| lo <= id && id <= hi))
            .count();
        assert_eq!(covered, plugs as usize);
        // Never more queries than plugs.
        assert_eq!(verify_sqls(3, 1_000_000_000, 0, 1).len(), 3);
    }

    #[test]
    fn ack_set_counts_distinct() {
        let mut acks = AckSet::new(70);
        let mut b = Batch::with_capacity(4, Protocol::Lp);
        b.keys = vec![(3 << 32) | 69, 65, (3 << 32) | 69, 0];
        b.min_ts = 5;
        b.max_ts = 9;
        acks.mark(&b);
        assert_eq!(acks.distinct(), 3);
        let per = acks.per_plug();
        assert_eq!((per[0], per[65], per[69]), (1, 1, 1));
        assert_eq!((acks.min_ts, acks.max_ts), (5, 9));
    }

    #[test]
    fn invalid_args() {
        let args = LoadgenArgs {
            plugs: 0,
            ..LoadgenArgs::default()
        };
        assert!(matches!(
            run(args),
            Err(LoadgenError::InvalidArgs { field: "plugs", .. })
        ));
        let args = LoadgenArgs {
            max: true,
            rate: Some(5),
            ..LoadgenArgs::default()
        };
        assert!(matches!(
            run(args),
            Err(LoadgenError::InvalidArgs { field: "rate", .. })
        ));
    }
}
