//! MQTT in the server: the engine as the subscriber's sink, the embedded broker, and
//! the subscriber's metrics.

use std::collections::HashMap;
use std::fmt::Write;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use wattdb_engine::{Engine, Error, Refused};
use wattdb_ingest::MqttDecodeError;
use wattdb_ingest::subscriber::{Durable, ReadingSink, Refusal, SubscriberStats};
use wattdb_storage::ReadingBatch;

use crate::error::chain;
use crate::metrics::metric;

/// The engine, as the place the MQTT subscriber writes to.
#[derive(Debug, Clone)]
pub struct EngineSink(pub Engine);

impl ReadingSink for EngineSink {
    fn offer(&self, batch: ReadingBatch) -> Result<Durable, Box<Refusal>> {
        match self.0.offer(batch) {
            Ok(rx) => Ok(Box::pin(async move {
                match rx.await {
                    Ok(Ok(receipt)) => Ok(receipt.rows),
                    Ok(Err(e)) => Err(chain(&e)),
                    Err(_) => Err("the engine stopped".to_owned()),
                }
            })),
            Err(refused) => {
                let Refused { error, batch } = *refused;
                Err(Box::new(Refusal {
                    retry: matches!(error, Error::QueueFull { .. } | Error::BufferFull { .. }),
                    reason: chain(&error),
                    batch,
                }))
            }
        }
    }
}

/// Settings of the embedded broker.
#[derive(Debug, Clone)]
pub struct EmbeddedBroker {
    pub listen: SocketAddr,
    /// Largest payload the broker accepts.
    pub max_payload_bytes: usize,
    pub max_connections: usize,
    /// Who may connect; `None`: anyone.
    pub login: Option<BrokerLogin>,
}

/// Logins to the embedded broker: WattDB's own subscriber with a secret made at start,
/// and plugs with an API token (or JWT) of the `write` scope for every plug as password
/// (the broker cannot hold a plug-limited token to its topics, so those are refused).
#[derive(Clone)]
pub struct BrokerLogin {
    pub auth: Arc<crate::auth::Auth>,
    pub internal_user: String,
    pub internal_password: String,
}

impl std::fmt::Debug for BrokerLogin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BrokerLogin")
            .field("internal_user", &self.internal_user)
            .finish_non_exhaustive()
    }
}

impl BrokerLogin {
    fn allows(&self, client_id: &str, user: &str, password: &str) -> bool {
        if user == self.internal_user {
            return password == self.internal_password;
        }
        match self.auth.mqtt_login(password) {
            Ok(()) => true,
            Err(reason) => {
                tracing::warn!(client_id, user, %reason, "MQTT login refused");
                false
            }
        }
    }
}

impl EmbeddedBroker {
    /// Starts rumqttd on its own threads. It runs until the process exits.
    ///
    /// The port is claimed here first, so a taken port is a clear error rather than a
    /// log line from the broker's thread.
    pub fn start(&self) -> anyhow::Result<()> {
        use anyhow::Context;
        let probe = std::net::TcpListener::bind(self.listen).with_context(|| {
            format!(
                "cannot listen for MQTT on {} (--mqtt-listen); pick another address, point WattDB at a broker with --mqtt-url, or pass --no-mqtt",
                self.listen
            )
        })?;
        drop(probe);
        let connections = rumqttd::ConnectionSettings {
            connection_timeout_ms: 10_000,
            max_payload_size: self.max_payload_bytes,
            max_inflight_count: 500,
            auth: None,
            external_auth: self.login.clone().map(|login| {
                let handler: rumqttd::AuthHandler =
                    Arc::new(move |client_id: String, user: String, password: String| {
                        let ok = login.allows(&client_id, &user, &password);
                        Box::pin(async move { ok })
                    });
                handler
            }),
            dynamic_filters: true,
        };
        let server = rumqttd::ServerSettings {
            name: "wattdb-mqtt".into(),
            listen: self.listen,
            tls: None,
            next_connection_delay_ms: 0,
            connections,
        };
        let config = rumqttd::Config {
            id: 0,
            router: rumqttd::RouterConfig {
                max_connections: self.max_connections,
                max_outgoing_packet_count: 1000,
                // Per subscription filter: up to 4 × 32 MiB of messages in memory.
                max_segment_size: 32 << 20,
                max_segment_count: 4,
                custom_segment: None,
                initialized_filters: None,
                shared_subscriptions_strategy: Default::default(),
            },
            v4: Some(HashMap::from([("1".to_owned(), server)])),
            v5: None,
            ws: None,
            cluster: None,
            console: None,
            bridge: None,
            prometheus: None,
            metrics: None,
        };
        let mut broker = rumqttd::Broker::new(config);
        std::thread::Builder::new()
            .name("wattdb-mqtt-broker".into())
            .spawn(move || {
                if let Err(error) = broker.start() {
                    tracing::error!(%error, "the embedded MQTT broker stopped");
                }
            })
            .context("cannot start the embedded MQTT broker")?;
        Ok(())
    }
}

/// The subscriber's counters in Prometheus text format.
pub fn render_metrics(out: &mut String, s: &SubscriberStats) {
    let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
    let flag = |b: &std::sync::atomic::AtomicBool| u64::from(b.load(Ordering::Relaxed));
    let single = [
        (
            "wattdb_mqtt_messages_total",
            "counter",
            "MQTT messages received (redeliveries count again).",
            load(&s.messages),
        ),
        (
            "wattdb_mqtt_acks_total",
            "counter",
            "PUBACKs sent, each after the message's readings were durable.",
            load(&s.acks),
        ),
        (
            "wattdb_mqtt_connects_total",
            "counter",
            "Connections made to the MQTT broker.",
            load(&s.connects),
        ),
        (
            "wattdb_mqtt_connection_errors_total",
            "counter",
            "Lost connections and failed connection attempts.",
            load(&s.connection_errors),
        ),
        (
            "wattdb_mqtt_backpressure_total",
            "counter",
            "Times the write path was full and MQTT ingest paused.",
            load(&s.backpressure),
        ),
        (
            "wattdb_mqtt_pending_readings",
            "gauge",
            "Readings decoded from MQTT and not yet durable.",
            load(&s.pending_readings),
        ),
        (
            "wattdb_mqtt_connected",
            "gauge",
            "1 while connected to the MQTT broker.",
            flag(&s.connected),
        ),
        (
            "wattdb_mqtt_subscribed",
            "gauge",
            "1 once the broker confirmed WattDB's subscription on this connection.",
            flag(&s.subscribed),
        ),
    ];
    for (name, kind, help, value) in single {
        metric(out, name, kind, help);
        let _ = writeln!(out, "{name} {value}");
    }
    let name = "wattdb_mqtt_rejected_messages_total";
    metric(
        out,
        name,
        "counter",
        "Bad MQTT messages skipped (and acknowledged), by reason.",
    );
    for (i, reason) in MqttDecodeError::REASONS.iter().enumerate() {
        let _ = writeln!(
            out,
            "{name}{{reason=\"{reason}\"}} {}",
            load(&s.rejected[i])
        );
    }
    let name = "wattdb_mqtt_dead_letters_total";
    metric(
        out,
        name,
        "counter",
        "Bad messages republished to the dead-letter topic, or dropped because the client queue was full.",
    );
    let _ = writeln!(
        out,
        "{name}{{outcome=\"published\"}} {}",
        load(&s.dead_letters)
    );
    let _ = writeln!(
        out,
        "{name}{{outcome=\"dropped\"}} {}",
        load(&s.dead_letters_dropped)
    );
}
