//! The MQTT subscriber: broker → [`MqttDecoder`] → a [`ReadingSink`] (the engine).
//!
//! At QoS 1 a message is acknowledged (PUBACK) only once every reading in it is durable:
//! until then the broker keeps it and redelivers it if WattDB goes away. Messages are
//! decoded into one batch until it holds [`SubscriberConfig::max_batch_readings`] or
//! [`SubscriberConfig::max_batch_delay`] has passed, so the WAL sees large appends;
//! the batch's PUBACKs go out, in the order the messages arrived, when its write is
//! durable. Several batches are in flight at once ([`SubscriberConfig::max_pending_batches`]).
//!
//! Two tasks share the connection:
//!
//! - the *pump* polls rumqttc's event loop, which reads from the broker, writes the
//!   PUBACKs and pings, and reconnects with backoff; it forwards messages to
//! - the *subscriber* loop, which decodes, writes and acknowledges.
//!
//! They meet in a bounded channel. When the sink refuses a batch (its queue or buffer
//! is full), the subscriber stops taking messages and offers the batch again with
//! backoff; the channel fills, the pump stops reading, and the broker stops sending
//! once its in-flight window is full of unacknowledged messages. Backpressure is the
//! withheld PUBACK; nothing is dropped and memory stays bounded.
//!
//! Bad messages (see [`MqttDecodeError::reason`]) are counted per reason, logged at
//! most once per reason every [`LOG_EVERY`], optionally republished to a dead-letter
//! topic, and acknowledged with the batch they arrived in, so the broker does not
//! redeliver them forever.
//!
//! After a reconnect the broker redelivers what was not acknowledged; the PUBACKs still
//! owed to the old connection are not sent (rumqttc drops them too). Redelivered
//! readings that carry their own timestamp overwrite themselves (the engine keeps one
//! reading per plug and time); readings stamped with their arrival time (Tasmota,
//! Shelly, or smart-plug JSON without `ts`) are stored again at the new time.

use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use rumqttc::{
    AsyncClient, ConnectionError, Event, EventLoop, MqttOptions, Outgoing, Packet, PubAck, Publish,
    QoS, SubscribeFilter, SubscribeReasonCode, TlsConfiguration, Transport,
};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::{error, info, warn};

use crate::mqtt::{MqttDecodeError, MqttDecoder, MqttDecoderConfig};
use crate::{ReadingBatch, now_ns};

/// A bad message of one reason is logged at most this often (with a count of the ones
/// skipped silently in between).
pub const LOG_EVERY: Duration = Duration::from_secs(10);

/// MQTT's largest packet: the remaining-length field tops out at 256 MiB.
const MQTT_MAX_PACKET: usize = 268_435_455;

/// What the subscriber hands its batches to; implemented for the engine in `api`.
pub trait ReadingSink: Send + Sync + 'static {
    /// Queues `batch`. The future resolves when the batch is durable, with the number
    /// of readings written, or with an error after which nothing may be acknowledged.
    /// A refusal gives the batch back ([`Refusal`]).
    fn offer(&self, batch: ReadingBatch) -> Result<Durable, Box<Refusal>>;
}

/// Resolves once a batch is durable: `Ok(readings)` or a fatal error message.
pub type Durable = Pin<Box<dyn Future<Output = Result<usize, String>> + Send>>;

/// A batch the sink did not take (boxed in results: it carries the whole batch).
pub struct Refusal {
    pub batch: ReadingBatch,
    /// `true`: the sink is full for now, offer the batch again later. `false`: it will
    /// never take it (shutting down, failed); the subscriber stops.
    pub retry: bool,
    pub reason: String,
}

/// Settings of a [`Subscriber`].
#[derive(Debug, Clone)]
pub struct SubscriberConfig {
    /// `mqtt://host[:port]` (plain TCP, port 1883) or `mqtts://host[:port]` (TLS, 8883).
    pub url: String,
    /// Must be unique among the broker's clients; it names the persistent session.
    pub client_id: String,
    pub username: Option<String>,
    pub password: Option<String>,
    /// PEM file of the CA certificates that sign the broker's certificate (`mqtts`);
    /// without it the system's roots are trusted.
    pub ca_file: Option<PathBuf>,
    /// Topic filters; empty: one per route of the decoder's router.
    pub filters: Vec<String>,
    /// Subscribe as `$share/{group}/{filter}`, so that WattDB nodes of one group split
    /// the messages between them.
    pub share_group: Option<String>,
    /// 1 (default): PUBACK after the readings are durable. 0: no acknowledgements;
    /// whatever is in flight when WattDB stops is lost.
    pub qos: QoS,
    /// `false` (default): the broker keeps the session, and queues messages for
    /// WattDB while it is away.
    pub clean_session: bool,
    pub keep_alive: Duration,
    pub max_batch_readings: usize,
    pub max_batch_delay: Duration,
    pub max_pending_batches: usize,
    /// Republish bad messages to `{topic}/{reason}/{original topic}` (QoS 1).
    pub dead_letter_topic: Option<String>,
    pub decoder: MqttDecoderConfig,
    pub reconnect_min: Duration,
    pub reconnect_max: Duration,
}

impl Default for SubscriberConfig {
    fn default() -> Self {
        Self {
            url: "mqtt://127.0.0.1:1883".into(),
            client_id: "wattdb".into(),
            username: None,
            password: None,
            ca_file: None,
            filters: Vec::new(),
            share_group: None,
            qos: QoS::AtLeastOnce,
            clean_session: false,
            keep_alive: Duration::from_secs(30),
            max_batch_readings: 8192,
            max_batch_delay: Duration::from_millis(5),
            max_pending_batches: 32,
            dead_letter_topic: None,
            decoder: MqttDecoderConfig::default(),
            reconnect_min: Duration::from_millis(100),
            reconnect_max: Duration::from_secs(30),
        }
    }
}

/// Why the subscriber could not start, or stopped.
#[derive(Debug, thiserror::Error)]
pub enum SubscriberError {
    #[error("MQTT settings: {0}")]
    Config(String),
    #[error("cannot read the MQTT CA file {path}: {reason}")]
    CaFile { path: PathBuf, reason: String },
    #[error("the write path refused MQTT readings: {0}")]
    Sink(String),
}

/// Counters of the subscriber, for `/metrics`.
#[derive(Debug, Default)]
pub struct SubscriberStats {
    /// Messages received (each redelivery counts again).
    pub messages: AtomicU64,
    /// Readings durable.
    pub readings: AtomicU64,
    /// Bad messages, per [`MqttDecodeError::REASONS`] (same order).
    pub rejected: [AtomicU64; MqttDecodeError::REASONS.len()],
    /// Bad messages republished to the dead-letter topic.
    pub dead_letters: AtomicU64,
    /// Bad messages that could not be republished (client queue full).
    pub dead_letters_dropped: AtomicU64,
    /// PUBACKs sent to the client.
    pub acks: AtomicU64,
    /// Successful connections.
    pub connects: AtomicU64,
    /// Lost connections and failed attempts.
    pub connection_errors: AtomicU64,
    /// Times the sink was full and a batch had to wait.
    pub backpressure: AtomicU64,
    /// Readings decoded but not yet durable.
    pub pending_readings: AtomicU64,
    pub connected: AtomicBool,
    /// Set once the broker confirmed a subscription (or kept the session's).
    pub subscribed: AtomicBool,
}

impl SubscriberStats {
    pub fn rejected(&self, reason: &str) -> u64 {
        MqttDecodeError::REASONS
            .iter()
            .position(|r| *r == reason)
            .map_or(0, |i| self.rejected[i].load(Ordering::Relaxed))
    }
}

/// Where and how to reach the broker, parsed from [`SubscriberConfig::url`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerAddr {
    pub host: String,
    pub port: u16,
    pub tls: bool,
}

impl BrokerAddr {
    pub fn parse(url: &str) -> Result<Self, SubscriberError> {
        let bad = |why: &str| SubscriberError::Config(format!("broker URL {url:?}: {why}"));
        let (scheme, rest) = url
            .split_once("://")
            .ok_or_else(|| bad("expected mqtt://host:port or mqtts://host:port"))?;
        let (tls, default_port) = match scheme.to_ascii_lowercase().as_str() {
            "mqtt" | "tcp" => (false, 1883),
            "mqtts" | "ssl" | "tls" => (true, 8883),
            _ => return Err(bad("the scheme must be mqtt:// or mqtts://")),
        };
        let authority = rest.strip_suffix('/').unwrap_or(rest);
        if authority.contains(['/', '?', '#', '@']) {
            return Err(bad(
                "only host and port belong in the URL (credentials have their own settings)",
            ));
        }
        let (host, port) = match authority.rsplit_once(':') {
            Some((host, port)) if !host.ends_with(']') || host.starts_with('[') => {
                let port = port
                    .parse::<u16>()
                    .map_err(|_| bad("the port must be a number from 1 to 65535"))?;
                (host, port)
            }
            _ => (authority, default_port),
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() || port == 0 {
            return Err(bad("missing host or port"));
        }
        Ok(Self {
            host: host.to_owned(),
            port,
            tls,
        })
    }
}

/// Does the MQTT topic filter `filter` (wildcards `+` and `#`, optionally
/// `$share/{group}/` in front) match `topic`?
pub fn filter_matches(filter: &str, topic: &str) -> bool {
    let filter = match filter.strip_prefix("$share/") {
        Some(rest) => rest.split_once('/').map_or("", |(_, f)| f),
        None => filter,
    };
    let mut levels = topic.split('/');
    for part in filter.split('/') {
        if part == "#" {
            return true;
        }
        match levels.next() {
            Some(level) if part == "+" || part == level => {}
            _ => return false,
        }
    }
    levels.next().is_none()
}

/// Could the filter match some topic below `prefix` (a topic without wildcards)?
/// Conservative: `true` unless a level of the filter rules the prefix out.
fn filter_may_match_under(filter: &str, prefix: &str) -> bool {
    let filter = match filter.strip_prefix("$share/") {
        Some(rest) => rest.split_once('/').map_or("", |(_, f)| f),
        None => filter,
    };
    let mut parts = filter.split('/');
    for level in prefix.split('/') {
        match parts.next() {
            Some("#") => return true,
            Some(part) if part == "+" || part == level => {}
            _ => return false,
        }
    }
    parts.next().is_some()
}

/// A connected subscriber; [`Subscriber::run`] drives it.
pub struct Subscriber<S> {
    config: SubscriberConfig,
    sink: S,
    stats: Arc<SubscriberStats>,
    options: MqttOptions,
    filters: Vec<SubscribeFilter>,
}

impl<S: ReadingSink> fmt::Debug for Subscriber<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Subscriber")
            .field("url", &self.config.url)
            .field("client_id", &self.config.client_id)
            .field("filters", &self.filters)
            .finish_non_exhaustive()
    }
}

impl<S: ReadingSink> Subscriber<S> {
    /// Checks the settings; connects only when run.
    pub fn new(config: SubscriberConfig, sink: S) -> Result<Self, SubscriberError> {
        let addr = BrokerAddr::parse(&config.url)?;
        if config.client_id.is_empty() {
            return Err(SubscriberError::Config(
                "the client id must not be empty".into(),
            ));
        }
        if config.max_batch_readings == 0 || config.max_pending_batches == 0 {
            return Err(SubscriberError::Config(
                "batch size and pending batches must be at least 1".into(),
            ));
        }
        let mut filters = if config.filters.is_empty() {
            config.decoder.router.subscription_filters()
        } else {
            config.filters.clone()
        };
        if let Some(group) = &config.share_group {
            if group.is_empty() || group.contains(['/', '+', '#']) {
                return Err(SubscriberError::Config(format!(
                    "share group {group:?}: a name without '/', '+' or '#'"
                )));
            }
            filters = filters
                .into_iter()
                .map(|f| format!("$share/{group}/{f}"))
                .collect();
        }
        if let Some(dead) = &config.dead_letter_topic {
            if dead.is_empty() || dead.contains(['+', '#']) {
                return Err(SubscriberError::Config(format!(
                    "dead-letter topic {dead:?}: a topic without wildcards"
                )));
            }
            if let Some(f) = filters.iter().find(|f| filter_may_match_under(f, dead)) {
                return Err(SubscriberError::Config(format!(
                    "dead-letter topic {dead:?} is covered by the subscription {f:?}: WattDB would read its own dead letters"
                )));
            }
        }
        let mut options = MqttOptions::new(config.client_id.clone(), addr.host.clone(), addr.port);
        options
            .set_keep_alive(config.keep_alive.max(Duration::from_secs(1)))
            .set_clean_session(config.clean_session)
            .set_manual_acks(true)
            // Any packet the broker sends is read: a message over the payload limit
            // is refused (and acknowledged) by the decoder, never left to be
            // redelivered forever because the client could not read it.
            .set_max_packet_size(
                MQTT_MAX_PACKET,
                config.decoder.max_payload_bytes + 64 * 1024,
            )
            // Room for every PUBACK the broker can be owed (packet ids are 16 bits).
            .set_request_channel_capacity(70_000)
            .set_inflight(100);
        if let Some(user) = &config.username {
            options.set_credentials(user.clone(), config.password.clone().unwrap_or_default());
        }
        if addr.tls {
            let tls = tls_config(config.ca_file.as_deref())?;
            options.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
                Arc::new(tls),
            )));
        }
        let filters = filters
            .into_iter()
            .map(|f| SubscribeFilter::new(f, config.qos))
            .collect();
        Ok(Self {
            config,
            sink,
            stats: Arc::default(),
            options,
            filters,
        })
    }

    pub fn stats(&self) -> Arc<SubscriberStats> {
        self.stats.clone()
    }

    /// The filters subscribed to, with the share group applied.
    pub fn filters(&self) -> Vec<String> {
        self.filters.iter().map(|f| f.path.clone()).collect()
    }

    /// Connects (and reconnects) and ingests until `shutdown` completes or the sink
    /// fails. On shutdown it waits briefly for the writes in flight and sends their
    /// PUBACKs; what is not acknowledged then is redelivered on the next start.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), SubscriberError> {
        let Subscriber {
            config,
            sink,
            stats,
            options,
            filters,
        } = self;
        info!(
            url = %config.url,
            client_id = %config.client_id,
            filters = ?filters.iter().map(|f| f.path.as_str()).collect::<Vec<_>>(),
            "MQTT subscriber starting"
        );
        let (client, eventloop) = AsyncClient::new(options, 70_000);
        let (tx, rx) = mpsc::channel(4096);
        let acks = Arc::new(AckRuns::default());
        let pump = tokio::spawn(pump(
            eventloop,
            client.clone(),
            Arc::clone(&acks),
            tx,
            filters,
            stats.clone(),
            config.reconnect_min..=config.reconnect_max,
        ));
        let mut state = Loop {
            decoder: MqttDecoder::new(config.decoder.clone()),
            config,
            sink,
            stats,
            client,
            acks,
            generation: 0,
            batch: ReadingBatch::new(),
            owed: Vec::new(),
            flush_at: None,
            retry: None,
            pending: VecDeque::new(),
            log: LogLimiter::default(),
        };
        let result = state.run(rx, shutdown).await;
        state.drain().await;
        let _ = state.client.try_disconnect();
        // Give the pump a moment to send the last PUBACKs and the DISCONNECT.
        let mut pump = pump;
        if tokio::time::timeout(Duration::from_secs(2), &mut pump)
            .await
            .is_err()
        {
            pump.abort();
        }
        state.stats.connected.store(false, Ordering::Relaxed);
        result
    }
}

fn tls_config(ca_file: Option<&std::path::Path>) -> Result<rustls::ClientConfig, SubscriberError> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    match ca_file {
        Some(path) => {
            let ca_error = |reason: String| SubscriberError::CaFile {
                path: path.to_owned(),
                reason,
            };
            let certs = CertificateDer::pem_file_iter(path)
                .map_err(|e| ca_error(e.to_string()))?
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| ca_error(e.to_string()))?;
            if certs.is_empty() {
                return Err(ca_error("no PEM certificate in it".into()));
            }
            for cert in certs {
                roots.add(cert).map_err(|e| ca_error(e.to_string()))?;
            }
        }
        None => {
            let native = rustls_native_certs::load_native_certs();
            for cert in native.certs {
                let _ = roots.add(cert);
            }
            if roots.is_empty() {
                return Err(SubscriberError::Config(
                    "mqtts:// without a CA file, and the system has no root certificates".into(),
                ));
            }
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| SubscriberError::Config(format!("TLS: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(config)
}

/// What the pump forwards.
enum Incoming {
    Connected {
        generation: u64,
        session_present: bool,
    },
    Message {
        generation: u64,
        publish: Publish,
    },
    SubscribeRefused {
        filter: String,
    },
}

/// How long a subscriber leaves the socket alone after a poll that had to wait for
/// the network and got a small message ([`ReadPacer`]).
pub const READ_NAP: Duration = Duration::from_millis(1);

/// Paces the reads of an event loop, so that a fast subscriber does not read a broker's
/// messages a few at a time.
///
/// A subscriber that drains its socket as soon as anything arrives makes its kernel
/// acknowledge every small TCP segment at once, and a broker with Nagle's algorithm on
/// (Mosquitto's default) then sends each next message or two alone, as soon as that
/// acknowledgement is in: both sides pay for TCP once per message or two. On two cores
/// shared with Mosquitto and a publisher, WattDB spent about 6 µs of CPU per
/// one-reading message that way, most of it in `recv`. So when a poll had to wait for the
/// network and got a message, the next poll waits [`READ_NAP`] first; meanwhile the
/// broker's writes pile up into large segments, read in one go. Messages wait at most
/// that long more (batches wait [`SubscriberConfig::max_batch_delay`] anyway), and a
/// subscriber that is behind never naps.
///
/// Only a small message ([`NAP_BELOW`]) calls for a nap: a large one (a gateway's array)
/// is worth its TCP round on its own, and napping after those let the socket's receive
/// window fill, which held arrays of 100 readings at 0.4 M readings/s instead of 3 M.
#[derive(Debug, Default)]
pub struct ReadPacer {
    nap: bool,
}

/// Messages shorter than this (payload bytes) are small for [`ReadPacer`].
pub const NAP_BELOW: usize = 2048;

impl ReadPacer {
    /// [`EventLoop::poll`], after the nap the previous poll called for.
    pub async fn poll(&mut self, eventloop: &mut EventLoop) -> Result<Event, ConnectionError> {
        if std::mem::take(&mut self.nap) {
            tokio::time::sleep(READ_NAP).await;
        }
        // A poll that cannot complete at once waits for the network: the socket is
        // drained. (Told apart without reading the clock, which costs per message.)
        let mut waited = false;
        let mut poll = std::pin::pin!(eventloop.poll());
        let event = std::future::poll_fn(|cx| {
            let ready = poll.as_mut().poll(cx);
            waited |= ready.is_pending();
            ready
        })
        .await;
        self.nap = waited
            && matches!(&event, Ok(Event::Incoming(Packet::Publish(p))) if p.payload.len() < NAP_BELOW);
        event
    }
}

/// Sends PUBACKs a batch at a time.
///
/// rumqttc takes acknowledgements one by one through its request channel and writes
/// and flushes each on its own: one `writev` per message, a third of the subscriber
/// thread's time at QoS 1. So only the first PUBACK of a run goes that way; the others
/// wait here. When the event loop reports that first one sent, the task that polls it
/// calls [`AckRuns::sent`], which writes the rest of the run behind it and flushes
/// once. PUBACKs keep the order of their messages (MQTT 3.1.1, 4.6): a run's rest
/// follows its first, and runs follow each other as they were queued.
#[derive(Debug, Default)]
pub struct AckRuns {
    runs: std::sync::Mutex<VecDeque<AckRun>>,
}

#[derive(Debug)]
struct AckRun {
    /// The connection the PUBACKs belong to; never sent on another.
    connection: u64,
    /// In message order; the first goes through rumqttc.
    pkids: Vec<u16>,
}

impl AckRuns {
    /// Acknowledges `pkids` (in this order) on connection `connection`. Returns how
    /// many were queued: all, or none when the client's request channel is full.
    pub fn queue(&self, client: &AsyncClient, connection: u64, pkids: Vec<u16>) -> usize {
        let Some(&first) = pkids.first() else {
            return 0;
        };
        let queued = pkids.len();
        let mut runs = self.lock();
        runs.push_back(AckRun { connection, pkids });
        // Queued under the lock, so that the runs and the channel keep one order.
        if client.try_ack(&puback_for(first)).is_err() {
            runs.pop_back();
            return 0;
        }
        queued
    }

    /// The event loop sent the PUBACK `pkid` on connection `connection`: writes the rest
    /// of the run it opens. Returns how many PUBACKs were written. Runs of connections
    /// lost before are dropped here.
    pub async fn sent(&self, eventloop: &mut EventLoop, connection: u64, pkid: u16) -> usize {
        let run = {
            let mut runs = self.lock();
            while runs.front().is_some_and(|r| r.connection != connection) {
                runs.pop_front();
            }
            match runs.front() {
                Some(run) if run.pkids[0] == pkid => runs.pop_front(),
                _ => None,
            }
        };
        let Some(run) = run else { return 0 };
        let rest = &run.pkids[1..];
        let timeout = Duration::from_secs(eventloop.network_options().connection_timeout());
        let Some(network) = eventloop.network.as_mut() else {
            return 0;
        };
        let write = async {
            for &pkid in rest {
                network.write(Packet::PubAck(PubAck::new(pkid))).await?;
            }
            network.flush().await
        };
        match tokio::time::timeout(timeout, write).await {
            Ok(Ok(())) => rest.len(),
            // The connection is broken; the next poll reports it and reconnects, and
            // the broker redelivers what was not acknowledged.
            _ => 0,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<AckRun>> {
        self.runs.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn puback_for(pkid: u16) -> Publish {
    Publish {
        dup: false,
        qos: QoS::AtLeastOnce,
        retain: false,
        topic: String::new(),
        pkid,
        payload: Default::default(),
    }
}

/// Polls the event loop until the subscriber loop goes away.
async fn pump(
    mut eventloop: EventLoop,
    client: AsyncClient,
    acks: Arc<AckRuns>,
    tx: mpsc::Sender<Incoming>,
    filters: Vec<SubscribeFilter>,
    stats: Arc<SubscriberStats>,
    reconnect: std::ops::RangeInclusive<Duration>,
) {
    let (reconnect_min, reconnect_max) = reconnect.into_inner();
    let mut backoff = reconnect_min;
    let mut generation = 0;
    let mut subscribing: VecDeque<Vec<String>> = VecDeque::new();
    let mut pacer = ReadPacer::default();
    loop {
        let forward = match pacer.poll(&mut eventloop).await {
            Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                backoff = reconnect_min;
                generation += 1;
                stats.connects.fetch_add(1, Ordering::Relaxed);
                stats.connected.store(true, Ordering::Relaxed);
                // A kept session keeps its subscriptions; subscribing again would
                // make the broker resend its retained messages.
                stats
                    .subscribed
                    .store(ack.session_present, Ordering::Relaxed);
                if !ack.session_present {
                    subscribing.push_back(filters.iter().map(|f| f.path.clone()).collect());
                    if let Err(e) = client.try_subscribe_many(filters.clone()) {
                        error!(error = %e, "cannot queue the MQTT subscription");
                    }
                }
                Incoming::Connected {
                    generation,
                    session_present: ack.session_present,
                }
            }
            Ok(Event::Incoming(Packet::Publish(publish))) => Incoming::Message {
                generation,
                publish,
            },
            Ok(Event::Incoming(Packet::SubAck(ack))) => {
                let paths = subscribing.pop_front().unwrap_or_default();
                let refused: Vec<_> = ack
                    .return_codes
                    .iter()
                    .zip(paths)
                    .filter(|(code, _)| matches!(code, SubscribeReasonCode::Failure))
                    .map(|(_, path)| path)
                    .collect();
                if refused.len() < ack.return_codes.len() {
                    stats.subscribed.store(true, Ordering::Relaxed);
                }
                for filter in refused {
                    if tx
                        .send(Incoming::SubscribeRefused { filter })
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
                continue;
            }
            Ok(Event::Outgoing(Outgoing::PubAck(pkid))) => {
                let written = acks.sent(&mut eventloop, generation, pkid).await;
                stats.acks.fetch_add(written as u64, Ordering::Relaxed);
                continue;
            }
            Ok(_) => continue,
            Err(ConnectionError::RequestsDone) => return,
            Err(e) => {
                stats.connection_errors.fetch_add(1, Ordering::Relaxed);
                let was_connected = stats.connected.swap(false, Ordering::Relaxed);
                stats.subscribed.store(false, Ordering::Relaxed);
                subscribing.clear();
                if was_connected {
                    warn!(error = %e, "MQTT connection lost; reconnecting");
                } else {
                    warn!(error = %e, retry_in = ?backoff, "cannot connect to the MQTT broker");
                }
                if tx.is_closed() {
                    return;
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(reconnect_max);
                continue;
            }
        };
        if tx.send(forward).await.is_err() {
            return;
        }
    }
}

/// The PUBACK a message is owed: its connection and packet id.
#[derive(Debug, Clone, Copy)]
struct Owed {
    generation: u64,
    pkid: u16,
}

/// A batch written but not yet durable, with the PUBACKs that wait for it.
struct InFlight {
    durable: Durable,
    owed: Vec<Owed>,
    readings: usize,
}

/// A batch the sink refused, waiting to be offered again.
struct Retry {
    at: Instant,
    backoff: Duration,
}

struct Loop<S> {
    config: SubscriberConfig,
    sink: S,
    stats: Arc<SubscriberStats>,
    client: AsyncClient,
    acks: Arc<AckRuns>,
    decoder: MqttDecoder,
    /// Connection the PUBACKs go to; older ones are not sent.
    generation: u64,
    batch: ReadingBatch,
    /// PUBACKs owed for the messages in `batch`.
    owed: Vec<Owed>,
    flush_at: Option<Instant>,
    retry: Option<Retry>,
    pending: VecDeque<InFlight>,
    log: LogLimiter,
}

impl<S: ReadingSink> Loop<S> {
    async fn run(
        &mut self,
        mut rx: mpsc::Receiver<Incoming>,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), SubscriberError> {
        tokio::pin!(shutdown);
        loop {
            let receiving =
                self.retry.is_none() && self.pending.len() < self.config.max_pending_batches;
            let flush_at = self.flush_at;
            let retry_at = self.retry.as_ref().map(|r| r.at);
            let front = async {
                match self.pending.front_mut() {
                    Some(f) => (&mut f.durable).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                biased;
                () = &mut shutdown => return Ok(()),
                durable = front => self.durable(durable)?,
                () = sleep_until(retry_at), if retry_at.is_some() => self.flush()?,
                () = sleep_until(flush_at), if flush_at.is_some() && retry_at.is_none() => {
                    self.flush()?;
                }
                incoming = rx.recv(), if receiving => match incoming {
                    Some(incoming) => {
                        self.incoming(incoming)?;
                        // Take what else is waiting without going round the select.
                        for _ in 0..256 {
                            if self.retry.is_some()
                                || self.pending.len() >= self.config.max_pending_batches
                            {
                                break;
                            }
                            match rx.try_recv() {
                                Ok(incoming) => self.incoming(incoming)?,
                                Err(_) => break,
                            }
                        }
                    }
                    None => return Ok(()),
                },
            }
        }
    }

    /// Waits up to a few seconds for the batches in flight (written before shutdown)
    /// and sends their PUBACKs.
    async fn drain(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while let Some(front) = self.pending.front_mut() {
            match tokio::time::timeout_at(deadline, &mut front.durable).await {
                Ok(result) => {
                    if self.durable(result).is_err() {
                        return;
                    }
                }
                Err(_) => return,
            }
        }
    }

    fn incoming(&mut self, incoming: Incoming) -> Result<(), SubscriberError> {
        match incoming {
            Incoming::Connected {
                generation,
                session_present,
            } => {
                self.generation = generation;
                info!(
                    url = %self.config.url,
                    session_present,
                    "connected to the MQTT broker"
                );
                Ok(())
            }
            Incoming::SubscribeRefused { filter } => {
                error!(
                    filter,
                    "the MQTT broker refused the subscription (check its ACL for this client)"
                );
                Ok(())
            }
            Incoming::Message {
                generation,
                publish,
            } => self.message(generation, &publish),
        }
    }

    fn message(&mut self, generation: u64, publish: &Publish) -> Result<(), SubscriberError> {
        self.stats.messages.fetch_add(1, Ordering::Relaxed);
        let now = now_ns();
        match self
            .decoder
            .decode_message(&publish.topic, &publish.payload, now, &mut self.batch)
        {
            Ok(n) => {
                self.stats
                    .pending_readings
                    .fetch_add(n as u64, Ordering::Relaxed);
            }
            Err(e) => self.reject(publish, &e),
        }
        if publish.qos != QoS::AtMostOnce {
            self.owed.push(Owed {
                generation,
                pkid: publish.pkid,
            });
        }
        if self.batch.len() >= self.config.max_batch_readings {
            if self.retry.is_none() {
                self.flush()?;
            }
        } else if self.flush_at.is_none() && (!self.batch.is_empty() || !self.owed.is_empty()) {
            self.flush_at = Some(Instant::now() + self.config.max_batch_delay);
        }
        Ok(())
    }

    fn reject(&mut self, publish: &Publish, error: &MqttDecodeError) {
        let reason = error.reason();
        let index = MqttDecodeError::REASONS
            .iter()
            .position(|r| *r == reason)
            .unwrap_or(0);
        self.stats.rejected[index].fetch_add(1, Ordering::Relaxed);
        if let Some(skipped) = self.log.allow(index) {
            warn!(
                topic = %crate::Snippet::from(publish.topic.as_str()),
                reason,
                %error,
                skipped_since_last_log = skipped,
                "bad MQTT message skipped"
            );
        }
        if let Some(dead) = &self.config.dead_letter_topic {
            let topic = format!("{dead}/{reason}/{}", publish.topic);
            match self
                .client
                .try_publish(topic, QoS::AtLeastOnce, false, publish.payload.clone())
            {
                Ok(()) => self.stats.dead_letters.fetch_add(1, Ordering::Relaxed),
                Err(_) => self
                    .stats
                    .dead_letters_dropped
                    .fetch_add(1, Ordering::Relaxed),
            };
        }
    }

    /// Offers the current batch to the sink; on refusal, schedules another try.
    fn flush(&mut self) -> Result<(), SubscriberError> {
        self.flush_at = None;
        if self.batch.is_empty() && self.owed.is_empty() {
            self.retry = None;
            return Ok(());
        }
        let batch = std::mem::take(&mut self.batch);
        let readings = batch.len();
        match self.sink.offer(batch) {
            Ok(durable) => {
                self.retry = None;
                self.pending.push_back(InFlight {
                    durable,
                    owed: std::mem::take(&mut self.owed),
                    readings,
                });
                Ok(())
            }
            Err(refusal) if refusal.retry => {
                self.batch = refusal.batch;
                self.stats.backpressure.fetch_add(1, Ordering::Relaxed);
                let backoff = match &self.retry {
                    None => Duration::from_millis(5),
                    Some(r) => (r.backoff * 2).min(Duration::from_millis(500)),
                };
                if self.retry.is_none() {
                    warn!(reason = %refusal.reason, "write path full; MQTT ingest pauses (PUBACKs withheld)");
                }
                self.retry = Some(Retry {
                    at: Instant::now() + backoff,
                    backoff,
                });
                Ok(())
            }
            Err(refusal) => Err(SubscriberError::Sink(refusal.reason)),
        }
    }

    /// The oldest batch in flight is durable (or failed): send its PUBACKs.
    fn durable(&mut self, result: Result<usize, String>) -> Result<(), SubscriberError> {
        let Some(done) = self.pending.pop_front() else {
            return Ok(());
        };
        self.stats
            .pending_readings
            .fetch_sub(done.readings as u64, Ordering::Relaxed);
        let rows = result.map_err(SubscriberError::Sink)?;
        self.stats
            .readings
            .fetch_add(rows as u64, Ordering::Relaxed);
        let pkids: Vec<u16> = done
            .owed
            .iter()
            .filter(|owed| owed.generation == self.generation)
            .map(|owed| owed.pkid)
            .collect();
        // The first counts now; the rest when the pump has written them.
        let queued = self.acks.queue(&self.client, self.generation, pkids);
        self.stats
            .acks
            .fetch_add(queued.min(1) as u64, Ordering::Relaxed);
        Ok(())
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// At most one log line per reason every [`LOG_EVERY`].
#[derive(Default)]
struct LogLimiter {
    last: [Option<std::time::Instant>; MqttDecodeError::REASONS.len()],
    skipped: [u64; MqttDecodeError::REASONS.len()],
}

impl LogLimiter {
    /// `Some(skipped since the last line)` when this one may be logged.
    fn allow(&mut self, reason: usize) -> Option<u64> {
        let now = std::time::Instant::now();
        match self.last[reason] {
            Some(last) if now.duration_since(last) < LOG_EVERY => {
                self.skipped[reason] += 1;
                None
            }
            _ => {
                self.last[reason] = Some(now);
                Some(std::mem::take(&mut self.skipped[reason]))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broker_urls() {
        let a = BrokerAddr::parse("mqtt://broker.local").unwrap();
        assert_eq!(
            (a.host.as_str(), a.port, a.tls),
            ("broker.local", 1883, false)
        );
        let a = BrokerAddr::parse("mqtts://10.0.0.1:9883/").unwrap();
        assert_eq!((a.host.as_str(), a.port, a.tls), ("10.0.0.1", 9883, true));
        let a = BrokerAddr::parse("tcp://[::1]:1884").unwrap();
        assert_eq!((a.host.as_str(), a.port), ("::1", 1884));
        for bad in [
            "broker:1883",
            "http://broker",
            "mqtt://user:pw@broker",
            "mqtt://broker:99999",
            "mqtt://broker/topic",
            "mqtt://:1883",
        ] {
            let e = BrokerAddr::parse(bad).unwrap_err().to_string();
            assert!(e.contains(bad), "{e}");
        }
    }

    #[test]
    fn filters_match_like_a_broker() {
        assert!(filter_matches(
            "smartplug/+/telemetry",
            "smartplug/p1/telemetry"
        ));
        assert!(!filter_matches(
            "smartplug/+/telemetry",
            "smartplug/p1/x/telemetry"
        ));
        assert!(filter_matches("#", "a/b/c"));
        assert!(filter_matches("a/#", "a/b"));
        assert!(!filter_matches("a/b", "a/b/c"));
        assert!(!filter_matches("a/+", "a"));
        assert!(filter_matches(
            "$share/g/+/status/switch:0",
            "s1/status/switch:0"
        ));
    }

    struct NullSink;
    impl ReadingSink for NullSink {
        fn offer(&self, batch: ReadingBatch) -> Result<Durable, Box<Refusal>> {
            let n = batch.len();
            Ok(Box::pin(async move { Ok(n) }))
        }
    }

    /// One MQTT packet from a raw socket: its first byte and its body.
    fn read_packet(s: &mut std::net::TcpStream) -> (u8, Vec<u8>) {
        use std::io::Read;
        let mut byte = [0u8; 1];
        s.read_exact(&mut byte).unwrap();
        let kind = byte[0];
        let (mut len, mut shift) = (0usize, 0);
        loop {
            s.read_exact(&mut byte).unwrap();
            len |= usize::from(byte[0] & 0x7f) << shift;
            shift += 7;
            if byte[0] & 0x80 == 0 {
                break;
            }
        }
        let mut body = vec![0u8; len];
        s.read_exact(&mut body).unwrap();
        (kind, body)
    }
    /// An MQTT packet: first byte, remaining length, body.
    fn packet(kind: u8, body: &[u8]) -> Vec<u8> {
        let mut out = vec![kind];
        let mut len = body.len();
        loop {
            let mut b = (len & 0x7f) as u8;
            len >>= 7;
            if len > 0 {
                b |= 0x80;
            }
            out.push(b);
            if len == 0 {
                break;
            }
        }
        out.extend_from_slice(body);
        out
    }

    /// A PUBLISH of `payload` on `topic`: QoS 1 with packet id `pkid`, or QoS 0.
    fn publish(topic: &str, pkid: Option<u16>, payload: &[u8]) -> Vec<u8> {
        let mut body = (topic.len() as u16).to_be_bytes().to_vec();
        body.extend_from_slice(topic.as_bytes());
        if let Some(pkid) = pkid {
            body.extend_from_slice(&pkid.to_be_bytes());
        }
        body.extend_from_slice(payload);
        packet(if pkid.is_some() { 0x32 } else { 0x30 }, &body)
    }

    /// A peer that plays broker over plain TCP (the wire order of PUBACKs is not
    /// something a real broker reports): it publishes `n` QoS 1 messages with packet
    /// ids 1..=n and returns the packet ids of the PUBACKs it got, in arrival order.
    fn broker_counting_pubacks(listener: std::net::TcpListener, n: u16) -> Vec<u16> {
        use std::io::Write;
        let (mut s, _) = listener.accept().unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        assert_eq!(read_packet(&mut s).0, 0x10, "CONNECT");
        s.write_all(&[0x20, 2, 0, 0]).unwrap();
        let (kind, body) = read_packet(&mut s);
        assert_eq!(kind, 0x82, "SUBSCRIBE");
        // One QoS byte after each filter: count them by walking the filters.
        let (mut at, mut filters) = (2, 0);
        while at < body.len() {
            at += 2 + usize::from(u16::from_be_bytes([body[at], body[at + 1]])) + 1;
            filters += 1;
        }
        let mut suback = body[..2].to_vec();
        suback.extend(std::iter::repeat_n(1u8, filters));
        s.write_all(&packet(0x90, &suback)).unwrap();
        let mut out = Vec::new();
        for pkid in 1..=n {
            let topic = format!("smartplug/p{}/telemetry", pkid % 7);
            let payload = format!(
                r#"{{"ts":{},"voltage":230.1,"current":0.5,"power":{pkid}}}"#,
                1_700_000_000 + u64::from(pkid)
            );
            out.extend(publish(&topic, Some(pkid), payload.as_bytes()));
        }
        s.write_all(&out).unwrap();
        let mut acks = Vec::new();
        while acks.len() < usize::from(n) {
            match read_packet(&mut s) {
                (0x40, body) => acks.push(u16::from_be_bytes([body[0], body[1]])),
                (0xc0, _) => s.write_all(&[0xd0, 0]).unwrap(),
                (kind, _) => panic!("unexpected packet {kind:#x}"),
            }
        }
        acks
    }

    #[tokio::test(flavor = "current_thread")]
    async fn the_pacer_naps_after_a_small_message_it_had_to_wait_for() {
        use std::io::Write;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let (go_tx, go_rx) = std::sync::mpsc::channel::<Vec<u8>>();
        let peer = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
            assert_eq!(read_packet(&mut s).0, 0x10, "CONNECT");
            s.write_all(&[0x20, 2, 0, 0]).unwrap();
            // Each write only when the test says so, after the client started waiting.
            while let Ok(bytes) = go_rx.recv() {
                s.write_all(&bytes).unwrap();
            }
        });
        let mut options = MqttOptions::new("pacer", "127.0.0.1", port);
        options.set_max_packet_size(1 << 20, 1 << 20);
        let (_client, mut eventloop) = AsyncClient::new(options, 10);
        let mut pacer = ReadPacer::default();
        assert!(matches!(
            pacer.poll(&mut eventloop).await,
            Ok(Event::Incoming(Packet::ConnAck(_)))
        ));
        let small = publish("smartplug/p1/telemetry", None, br#"{"power":1}"#);
        let large = publish("smartplug/gw/telemetry", None, &[b' '; NAP_BELOW]);
        let next = |bytes: Vec<u8>| {
            let sender = go_tx.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(20)).await;
                sender.send(bytes).unwrap();
            });
        };
        // A small message the poll had to wait for: nap before the next poll.
        next(small.clone());
        let event = pacer.poll(&mut eventloop).await;
        assert!(
            matches!(event, Ok(Event::Incoming(Packet::Publish(_)))),
            "{event:?}"
        );
        assert!(pacer.nap);
        // A large one: no nap.
        next(large);
        let event = pacer.poll(&mut eventloop).await;
        assert!(
            matches!(event, Ok(Event::Incoming(Packet::Publish(_)))),
            "{event:?}"
        );
        assert!(!pacer.nap);
        // Two small ones that arrive together: a nap after the first, which waited;
        // none after the second, which was already there.
        next([small.clone(), small].concat());
        pacer.poll(&mut eventloop).await.unwrap();
        assert!(pacer.nap);
        pacer.poll(&mut eventloop).await.unwrap();
        assert!(!pacer.nap);
        drop(go_tx);
        drop(eventloop);
        peer.join().unwrap();
    }

    #[tokio::test(flavor = "current_thread")]
    async fn pubacks_go_out_in_message_order_a_run_at_a_time() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let n = 3000;
        let broker = std::thread::spawn(move || broker_counting_pubacks(listener, n));
        let subscriber = Subscriber::new(
            SubscriberConfig {
                url: format!("mqtt://127.0.0.1:{port}"),
                clean_session: true,
                // Many small batches, so that several runs are queued at once.
                max_batch_readings: 64,
                ..SubscriberConfig::default()
            },
            NullSink,
        )
        .unwrap();
        let stats = subscriber.stats();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let run = tokio::spawn(subscriber.run(async {
            let _ = stopped.await;
        }));
        let acks = tokio::task::spawn_blocking(move || broker.join().unwrap())
            .await
            .unwrap();
        assert_eq!(acks, (1..=n).collect::<Vec<_>>());
        assert_eq!(stats.acks.load(Ordering::Relaxed), u64::from(n));
        assert_eq!(stats.readings.load(Ordering::Relaxed), u64::from(n));
        let _ = stop.send(());
        run.await.unwrap().unwrap();
    }

    #[test]
    fn settings_are_checked() {
        fn config(f: impl FnOnce(&mut SubscriberConfig)) -> Result<Vec<String>, SubscriberError> {
            let mut c = SubscriberConfig::default();
            f(&mut c);
            Subscriber::new(c, NullSink).map(|s| s.filters())
        }
        assert_eq!(
            config(|_| {}).unwrap(),
            [
                "smartplug/+/telemetry",
                "tele/+/SENSOR",
                "tele/+/STATE",
                "+/status/switch:0"
            ]
        );
        let shared = config(|c| c.share_group = Some("fleet".into())).unwrap();
        assert_eq!(shared[0], "$share/fleet/smartplug/+/telemetry");
        assert!(config(|c| c.dead_letter_topic = Some("wattdb/dead".into())).is_ok());
        for filter in ["#", "wattdb/#", "+/dead/+/+", "$share/g/wattdb/+/#"] {
            let e = config(|c| {
                c.filters = vec![filter.into()];
                c.dead_letter_topic = Some("wattdb/dead".into());
            })
            .unwrap_err();
            assert!(e.to_string().contains(filter), "{e}");
        }
        let e = config(|c| c.dead_letter_topic = Some("wattdb/#".into())).unwrap_err();
        assert!(e.to_string().contains("wildcards"), "{e}");
        assert!(config(|c| c.client_id.clear()).is_err());
        assert!(config(|c| c.share_group = Some("a/b".into())).is_err());
        let e = config(|c| {
            c.url = "mqtts://127.0.0.1".into();
            c.ca_file = Some("/nonexistent/ca.pem".into());
        })
        .unwrap_err();
        assert!(e.to_string().contains("/nonexistent/ca.pem"), "{e}");
    }
}
