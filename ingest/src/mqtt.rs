//! MQTT messages (topic + payload) → [`ReadingBatch`].
//!
//! The MQTT subscriber hands each message to [`MqttDecoder::decode_message`]. The
//! [`TopicRouter`] picks the payload format and the plug from the topic; the payload
//! decoder appends the message's readings to the batch, or leaves the batch as it was
//! and says why in an [`MqttDecodeError`]: a message with one bad element is refused
//! whole. No networking here; the decoder never panics, whatever the bytes.
//!
//! The formats, by default route:
//!
//! - `smartplug/{device_id}/telemetry` ([`PayloadFormat::SmartPlugJson`]): one object
//!   or an array of objects (gateways batching readings):
//!   `{"ts": 1700000000, "voltage": 230.1, "current": 0.52, "power": 119.6,
//!   "energy": 1234.5, "relay_state": "on"}`.
//!   - `voltage`, `current`, `power` are required numbers; `energy` (Wh) is optional.
//!   - `relay_state` is optional: `true`/`false`, `"on"`/`"off"` in any case, 1/0.
//!   - `ts` is optional (the arrival time `now_ns` then): a number whose unit follows
//!     from its magnitude — below 10¹¹ seconds, below 10¹⁴ milliseconds, below 10¹⁷
//!     microseconds, else nanoseconds, fractions allowed in every unit — or an RFC 3339
//!     string. Every unit reads right for any time from 1973 to 2262.
//!   - `device_id` is optional and overrides the topic's; `location` and `device_type`
//!     tags are read as in JSON readings ([`crate::json`]). Other keys are ignored.
//! - `tele/{device_id}/SENSOR` ([`PayloadFormat::TasmotaSensor`]): the `ENERGY` object
//!   of Tasmota firmware; other keys (other sensors) are ignored. `Power`, `Voltage`
//!   and `Current` are required; `Total` (kWh) becomes `energy` in Wh. Multi-channel
//!   devices report any of them as an array with one number per channel: the first
//!   channel is taken. The reading time is the arrival time: Tasmota's `Time` is the
//!   device's local time with no zone, which cannot be placed on the UTC axis. The relay
//!   state is the one the plug last reported in STATE, or unknown.
//! - `tele/{device_id}/STATE` ([`PayloadFormat::TasmotaState`]): no reading; `POWER`
//!   (or `POWER1`, the first relay) is remembered for the plug's next SENSOR
//!   readings, in a cache of at most [`MqttDecoderConfig::relay_cache_capacity`]
//!   plugs.
//! - `{device_id}/status/switch:0` ([`PayloadFormat::ShellySwitch`]): Shelly Gen2;
//!   `apower`, `voltage`, `current` are required, `aenergy.total` (Wh) and `output`
//!   (relay) are optional. The reading time is the arrival time: the payload's only
//!   clock, `aenergy.minute_ts`, is the start of the minute its counters cover.
//!
//! Every reading time must fall between 2000-01-01 and a day after `now_ns`; anything
//! else is a clock or unit mistake and refused ([`BadTimestamp`]).

mod decode;
mod error;
mod relay_cache;
mod shelly;
mod smartplug;
mod tasmota;
mod topic;

use serde::de::DeserializeSeed;
use wattdb_storage::{ReadingBatch, validate_device_id};

pub use error::{BadTimestamp, MqttDecodeError, NonFiniteValue, NotJson, Oversize};
pub use topic::{
    DEVICE_ID_LEVEL, MAX_PATTERN_BYTES, PayloadFormat, Route, RouteError, TopicMatch, TopicPattern,
    TopicPatternError, TopicRouter, UnknownFormat,
};

use decode::Ctx;
use relay_cache::RelayCache;

/// Settings of an [`MqttDecoder`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MqttDecoderConfig {
    /// Which topics carry which payloads.
    pub router: TopicRouter,
    /// Larger payloads are refused unread (`too_large`).
    pub max_payload_bytes: usize,
    /// Larger smart-plug arrays are refused (`too_large`).
    pub max_readings_per_message: usize,
    /// How many Tasmota plugs' relay states are remembered. When full, the cache
    /// forgets the plugs that reported longest ago: a plug's state is kept at least
    /// until half this many other plugs have reported one since. 0 remembers nothing.
    pub relay_cache_capacity: usize,
}

impl Default for MqttDecoderConfig {
    fn default() -> Self {
        Self {
            router: TopicRouter::default(),
            max_payload_bytes: 1 << 20,
            max_readings_per_message: 10_000,
            relay_cache_capacity: 100_000,
        }
    }
}

/// Decodes MQTT messages into readings. Owns the topic routes and the Tasmota relay
/// cache, and keeps a scratch buffer for escaped strings between messages (it grows to
/// the longest escaped string seen, at most the payload limit), so a message allocates
/// nothing beyond the batch's own growth and a cache entry when a new Tasmota plug
/// reports its state. One decoder per subscriber task; it is not shared.
#[derive(Debug, Clone)]
pub struct MqttDecoder {
    router: TopicRouter,
    max_payload_bytes: usize,
    max_readings: usize,
    relays: RelayCache,
    /// Escaped strings of the object being decoded, unescaped.
    scratch: String,
}

impl Default for MqttDecoder {
    fn default() -> Self {
        Self::new(MqttDecoderConfig::default())
    }
}

impl MqttDecoder {
    pub fn new(config: MqttDecoderConfig) -> Self {
        Self {
            router: config.router,
            max_payload_bytes: config.max_payload_bytes,
            max_readings: config.max_readings_per_message,
            relays: RelayCache::new(config.relay_cache_capacity),
            scratch: String::new(),
        }
    }

    pub fn router(&self) -> &TopicRouter {
        &self.router
    }

    /// The relay state a Tasmota plug last reported, if remembered.
    pub fn relay_state(&self, device_id: &str) -> Option<bool> {
        self.relays.get(device_id)
    }

    /// How many plugs' relay states are remembered (at most the configured capacity).
    pub fn remembered_relays(&self) -> usize {
        self.relays.len()
    }

    /// Decodes one message and appends its readings to `out`.
    ///
    /// Returns how many readings were appended (0 for a Tasmota STATE). All or
    /// nothing: on error `out` is as it was on entry, and the relay cache too. `now_ns`
    /// (nanoseconds since the Unix epoch) is the arrival time.
    pub fn decode_message(
        &mut self,
        topic: &str,
        payload: &[u8],
        now_ns: i64,
        out: &mut ReadingBatch,
    ) -> Result<usize, MqttDecodeError> {
        let Some(TopicMatch { format, device_id }) = self.router.route(topic) else {
            return Err(MqttDecodeError::UnknownTopic {
                topic: topic.into(),
            });
        };
        if let Err(reason) = validate_device_id(device_id) {
            return Err(MqttDecodeError::BadDeviceId {
                at: None,
                found: device_id.into(),
                reason,
            });
        }
        if payload.len() > self.max_payload_bytes {
            return Err(MqttDecodeError::TooLarge(Oversize::Payload {
                bytes: payload.len(),
                limit: self.max_payload_bytes,
            }));
        }
        // Validating the whole payload first refuses bad bytes even inside ignored
        // members, which `serde_json` would skip unchecked.
        let text = match std::str::from_utf8(payload) {
            Ok(text) => text,
            Err(e) => {
                let (line, column) = crate::json::line_column(payload, e.valid_up_to());
                return Err(MqttDecodeError::NotJson {
                    index: None,
                    problem: NotJson::InvalidUtf8 { line, column },
                });
            }
        };
        let relay = match format {
            PayloadFormat::TasmotaSensor => self.relays.get(device_id),
            _ => None,
        };
        let start = out.len();
        let mut ctx = Ctx::new(
            out,
            device_id,
            now_ns,
            &mut self.scratch,
            self.max_readings,
            relay,
        );
        let mut de = serde_json::Deserializer::from_str(text);
        let decoded = match format {
            PayloadFormat::SmartPlugJson => smartplug::Payload(&mut ctx).deserialize(&mut de),
            PayloadFormat::TasmotaSensor => tasmota::Sensor(&mut ctx).deserialize(&mut de),
            PayloadFormat::TasmotaState => tasmota::State(&mut ctx).deserialize(&mut de),
            PayloadFormat::ShellySwitch => shelly::Switch(&mut ctx).deserialize(&mut de),
        }
        .and_then(|()| de.end());
        if let Err(error) = decoded {
            let error = ctx.error(error);
            ctx.out.truncate(start);
            return Err(error);
        }
        let reported = ctx.relay;
        let appended = ctx.out.len() - start;
        if let (PayloadFormat::TasmotaState, Some(on)) = (format, reported) {
            self.relays.set(device_id, on);
        }
        Ok(appended)
    }
}

#[cfg(test)]
mod tests;
