//! `GET /api/v1/live`: a WebSocket that streams the readings of chosen plugs as they
//! are acknowledged.
//!
//! Each acknowledged write batch that holds readings of the chosen plugs becomes one
//! text message, a JSON array of readings (`device_id`, `ts`, `voltage`, `current`,
//! `power`, `energy`, `relay_on`, `location`, `device_type`). Writers never wait for
//! subscribers: a subscriber that falls more than
//! [`LIVE_BACKLOG_BATCHES`](wattdb_engine::LIVE_BACKLOG_BATCHES) batches behind skips
//! the oldest and gets `{"notice": "skipped", "batches": N}` instead; one that does
//! not take a message within `--live-send-timeout-s` (30 s) is disconnected. Memory per subscriber
//! is bounded by that backlog, shared by all subscribers.

use std::sync::Arc;
use std::time::Duration;

use axum::Extension;
use axum::extract::rejection::QueryRejection;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::response::Response;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::broadcast::error::RecvError;
use wattdb_engine::ReadingBatch;

use crate::AppState;
use crate::auth::Access;
use crate::dashboard::rfc3339;
use crate::error::ApiError;
use crate::params::device_ids;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LiveQuery {
    device: Option<String>,
    prefix: Option<String>,
}

/// Which plugs a subscriber gets.
#[derive(Debug, Clone)]
struct Selection {
    devices: Option<Vec<String>>,
    prefix: String,
    /// The caller's plugs.
    access: Access,
}

impl Selection {
    fn wants(&self, id: &str) -> bool {
        id.starts_with(&self.prefix)
            && self.access.allows(id)
            && self
                .devices
                .as_ref()
                .is_none_or(|d| d.iter().any(|x| x == id))
    }

    /// The batch's readings of the chosen plugs as one JSON array, if it has any.
    fn encode(&self, batch: &ReadingBatch) -> Option<String> {
        let rows: Vec<Value> = (0..batch.len())
            .map(|i| batch.get(i))
            .filter(|r| self.wants(r.device_id))
            .map(|r| {
                json!({
                    "device_id": r.device_id,
                    "ts": rfc3339(r.ts),
                    "voltage": r.voltage,
                    "current": r.current,
                    "power": r.power,
                    "energy": r.energy,
                    "relay_on": r.relay_on,
                    "location": r.location,
                    "device_type": r.device_type,
                })
            })
            .collect();
        (!rows.is_empty()).then(|| Value::Array(rows).to_string())
    }
}

/// `GET /api/v1/live?device=a,b&prefix=p`.
pub async fn live(
    State(app): State<AppState>,
    Extension(access): Extension<Access>,
    query: Result<Query<LiveQuery>, QueryRejection>,
    ws: WebSocketUpgrade,
) -> Result<Response, ApiError> {
    let Query(q) = query?;
    let devices = q
        .device
        .as_deref()
        .filter(|d| !d.trim().is_empty())
        .map(device_ids)
        .transpose()?;
    if let Some(ids) = &devices {
        access.check_devices(ids.iter().map(String::as_str))?;
    }
    let selection = Selection {
        devices,
        prefix: q.prefix.unwrap_or_default(),
        access,
    };
    // Subscribed before the upgrade: nothing acknowledged after the answer is missed.
    let rx = app.engine.subscribe();
    let metrics = Arc::clone(&app.metrics);
    let timeout = app.live_send_timeout;
    Ok(ws.on_upgrade(move |socket| async move {
        metrics
            .live_subscribers
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        forward(socket, rx, selection, timeout).await;
        metrics
            .live_subscribers
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }))
}

async fn send(socket: &mut WebSocket, text: String, timeout: Duration) -> bool {
    matches!(
        tokio::time::timeout(timeout, socket.send(Message::Text(text.into()))).await,
        Ok(Ok(()))
    )
}

async fn forward(
    mut socket: WebSocket,
    mut rx: tokio::sync::broadcast::Receiver<Arc<ReadingBatch>>,
    selection: Selection,
    timeout: Duration,
) {
    loop {
        tokio::select! {
            batch = rx.recv() => {
                let text = match batch {
                    Ok(b) => match selection.encode(&b) {
                        Some(t) => t,
                        None => continue,
                    },
                    Err(RecvError::Lagged(n)) => {
                        json!({"notice": "skipped", "batches": n}).to_string()
                    }
                    Err(RecvError::Closed) => break,
                };
                if !send(&mut socket, text, timeout).await {
                    break;
                }
            }
            incoming = socket.recv() => match incoming {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => break,
                Some(Ok(_)) => {}
            },
        }
    }
    let _ = socket.send(Message::Close(None)).await;
}
