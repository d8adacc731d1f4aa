//! The load generator's MQTT sender: one broker connection per lane.
//!
//! The sender thread publishes each batch's messages in order, without waiting for the
//! batch before it, as plugs do; a second thread drives the connection and matches
//! the broker's PUBACKs to the messages by packet id (as rumqttc reports each one
//! sent). A batch is acknowledged once every QoS 1 message up to its last is. At
//! QoS 0 each batch is followed by a QoS 1 marker on a topic WattDB does not read,
//! which the broker acknowledges after it has taken the batch. At most [`WINDOW`]
//! QoS 1 messages of a lane are unacknowledged at a time: a sender that runs ahead of
//! its broker waits, as a plug does, instead of wrapping rumqttc's packet ids around
//! onto messages still in flight (which ends the connection once it lasts two
//! keep-alive pings). A connection error ends the lane: it counts once under
//! `mqtt_connection`, and each batch left without its acknowledgement (then, or
//! [`LAST_ACKS_WAIT`] after the lane's last batch) under `mqtt_unacked`.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use rumqttc::{Client, Connection, Event, Outgoing, Packet, QoS};

use super::{Batch, MqttLoad, SenderStats, Shared};

/// Topic of the marker after each QoS 0 batch.
const MARKER_TOPIC: &str = "wattdb-loadgen/marker";

/// QoS 1 messages a lane may have unacknowledged: half of rumqttc's in-flight limit
/// (see `crate::mqtt::options`).
const WINDOW: u64 = 500;

/// How long a sender waits, after its last batch, for the acknowledgements still due.
const LAST_ACKS_WAIT: Duration = Duration::from_secs(60);

/// A published batch waiting for its acknowledgement.
struct InFlight {
    /// Acknowledged once [`Track::acked`] reaches this.
    until: u64,
    batch: Batch,
    sent_at: Instant,
}

#[derive(Default)]
struct Track {
    pending: VecDeque<InFlight>,
    /// QoS 1 messages acknowledged, all of them from the first.
    acked: u64,
}

/// What the sender and the connection thread share.
#[derive(Default)]
struct Lane {
    track: Mutex<Track>,
    /// Signalled when `acked` grows, and when the connection fails.
    acked: Condvar,
    failed: AtomicBool,
}

impl Lane {
    /// Waits until `done` holds, the connection fails, or `deadline` (if any) passes;
    /// false if the connection failed.
    fn wait_until(&self, done: impl Fn(&Track) -> bool, deadline: Option<Instant>) -> bool {
        let mut t = lock(&self.track);
        while !done(&t)
            && !self.failed.load(Ordering::Relaxed)
            && deadline.is_none_or(|d| Instant::now() < d)
        {
            t = self
                .acked
                .wait_timeout(t, Duration::from_millis(100))
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        !self.failed.load(Ordering::Relaxed)
    }

    /// Waits until fewer than [`WINDOW`] of `published` QoS 1 messages are
    /// unacknowledged; false if the connection failed meanwhile.
    fn wait_for_room(&self, published: u64) -> bool {
        self.wait_until(|t| published.saturating_sub(t.acked) < WINDOW, None)
    }
}

fn lock(track: &Mutex<Track>) -> MutexGuard<'_, Track> {
    track.lock().unwrap_or_else(PoisonError::into_inner)
}

pub(super) struct MqttSender {
    client: Client,
    connection: Connection,
    qos: QoS,
    id: String,
    shared: Arc<Shared>,
}

impl MqttSender {
    pub(super) fn new(target: &MqttLoad, lane: usize, shared: Arc<Shared>) -> Self {
        let id = format!("wattdb-loadgen-{}-{lane}", std::process::id());
        let mut options = crate::mqtt::options(&id, &target.host, target.port);
        if let Some((user, password)) = &target.login {
            options.set_credentials(user, password);
        }
        let (client, mut connection) = Client::new(options, 10_000);
        // Each message goes out at once (no Nagle delay), as the shipped Mosquitto
        // configuration sends its PUBACKs.
        let mut network = connection.eventloop.network_options();
        network.set_tcp_nodelay(true);
        connection.eventloop.set_network_options(network);
        let qos = if target.qos == 0 {
            QoS::AtMostOnce
        } else {
            QoS::AtLeastOnce
        };
        Self {
            client,
            connection,
            qos,
            id,
            shared,
        }
    }

    pub(super) fn run(self, work: &Receiver<Batch>, recycle: &Sender<Batch>) -> SenderStats {
        let Self {
            client,
            connection,
            qos,
            id,
            shared,
        } = self;
        let mut stats = SenderStats::default();
        let lane = Arc::new(Lane::default());
        let acks = {
            let (lane, shared) = (Arc::clone(&lane), Arc::clone(&shared));
            let recycle = recycle.clone();
            thread::Builder::new()
                .name(format!("{id}-acks"))
                .spawn(move || count_acks(connection, &lane, &shared, &recycle))
        };
        let acks = match acks {
            Ok(handle) => Some(handle),
            Err(e) => {
                stats.error(&shared, "mqtt_connection".to_owned(), || {
                    format!("{id}: cannot start its thread: {e}")
                });
                lane.failed.store(true, Ordering::Relaxed);
                None
            }
        };

        // QoS 1 messages published (markers included): what PUBACKs count.
        let mut published = 0;
        while let Ok(mut batch) = work.recv() {
            if lane.failed.load(Ordering::Relaxed) {
                unacked(&mut stats, &shared, batch, recycle);
                continue;
            }
            let messages = std::mem::take(&mut batch.messages);
            let until = published
                + match qos {
                    QoS::AtMostOnce => 1,
                    _ => messages.len() as u64,
                };
            lock(&lane.track).pending.push_back(InFlight {
                until,
                batch,
                sent_at: Instant::now(),
            });
            // A publish fails only once the connection thread has stopped.
            for (topic, payload) in messages {
                if qos != QoS::AtMostOnce {
                    if !lane.wait_for_room(published) {
                        break;
                    }
                    published += 1;
                }
                if client.publish(topic, qos, false, payload).is_err() {
                    break;
                }
                shared.requests.fetch_add(1, Ordering::Relaxed);
            }
            if qos == QoS::AtMostOnce
                && lane.wait_for_room(published)
                && client
                    .publish(MARKER_TOPIC, QoS::AtLeastOnce, false, Vec::new())
                    .is_ok()
            {
                shared.requests.fetch_add(1, Ordering::Relaxed);
            }
            published = until;
        }
        // The acknowledgements still due, then a clean disconnect, which also ends the
        // connection thread.
        lane.wait_until(
            |t| t.pending.is_empty(),
            Some(Instant::now() + LAST_ACKS_WAIT),
        );
        let _ = client.disconnect();
        drop(client);
        if let Some(handle) = acks {
            match handle.join() {
                Ok(s) => stats.merge(s),
                Err(_) => stats.error(&shared, "mqtt_connection".to_owned(), || {
                    format!("{id}: its connection thread panicked")
                }),
            }
        }
        for left in std::mem::take(&mut lock(&lane.track).pending) {
            unacked(&mut stats, &shared, left.batch, recycle);
        }
        stats
    }
}

/// Counts a batch that was never acknowledged, and hands its buffers back.
fn unacked(stats: &mut SenderStats, shared: &Shared, mut batch: Batch, recycle: &Sender<Batch>) {
    let rows = batch.rows();
    stats.error(shared, "mqtt_unacked".to_owned(), || {
        format!(
            "a batch of {rows} readings was not acknowledged (connection lost, or no \
             PUBACK within {} s of the last batch)",
            LAST_ACKS_WAIT.as_secs()
        )
    });
    batch.clear();
    let _ = recycle.send(batch);
}

/// Drives the connection and completes batches as their messages are acknowledged,
/// until the sender disconnects or the connection fails.
fn count_acks(
    mut connection: Connection,
    lane: &Lane,
    shared: &Shared,
    recycle: &Sender<Batch>,
) -> SenderStats {
    let mut stats = SenderStats::default();
    // QoS 1 messages sent so far, the index of each still in flight by packet id, and
    // those acknowledged ahead of one still in flight.
    let mut sent = 0;
    let mut in_flight: HashMap<u16, u64> = HashMap::new();
    let mut ahead: BTreeSet<u64> = BTreeSet::new();
    loop {
        match connection.recv() {
            Ok(Ok(Event::Outgoing(Outgoing::Publish(pkid)))) if pkid != 0 => {
                in_flight.insert(pkid, sent);
                sent += 1;
            }
            Ok(Ok(Event::Incoming(Packet::PubAck(ack)))) => {
                let Some(index) = in_flight.remove(&ack.pkid) else {
                    continue;
                };
                ahead.insert(index);
                let mut t = lock(&lane.track);
                let before = t.acked;
                while ahead.remove(&t.acked) {
                    t.acked += 1;
                }
                if t.acked == before {
                    continue;
                }
                lane.acked.notify_all();
                while t.pending.front().is_some_and(|f| f.until <= t.acked) {
                    let Some(InFlight {
                        mut batch, sent_at, ..
                    }) = t.pending.pop_front()
                    else {
                        break;
                    };
                    stats.acknowledged(shared, &batch, sent_at);
                    batch.clear();
                    let _ = recycle.send(batch);
                }
            }
            Ok(Ok(Event::Outgoing(Outgoing::Disconnect))) => break,
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                stats.error(shared, "mqtt_connection".to_owned(), || e.to_string());
                lane.failed.store(true, Ordering::Relaxed);
                lane.acked.notify_all();
                break;
            }
            // Every client handle is gone.
            Err(_) => break,
        }
    }
    stats
}
