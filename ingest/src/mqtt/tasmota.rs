//! `tasmota-sensor` and `tasmota-state`: what Tasmota firmware publishes every
//! TelePeriod under `tele/{topic}/SENSOR` and `tele/{topic}/STATE`.

use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, Visitor};
use wattdb_storage::ReadingRef;

use super::decode::{Ctx, Failure, KeySeed, kwh_to_wh, number, optional_number, relay};
use crate::error::Expected;
use crate::json::{Found, visit_scalars};

/// A SENSOR payload: one reading from its `ENERGY` object.
pub(super) struct Sensor<'c, 'a>(pub(super) &'c mut Ctx<'a>);

impl Sensor<'_, '_> {
    fn other<E: de::Error>(self, found: Found) -> Result<(), E> {
        Err(self.0.fail(Failure::WrongType {
            field: None,
            expected: Expected::Object,
            found,
        }))
    }
}

impl<'de> DeserializeSeed<'de> for Sensor<'_, '_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Sensor<'_, '_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a Tasmota SENSOR object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let ctx = self.0;
        let mut energy = None;
        while let Some(is_energy) = map.next_key_seed(KeySeed(|k| k == "ENERGY"))? {
            if is_energy {
                energy = Some(map.next_value_seed(EnergySeed(&mut *ctx))?);
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        let Some(energy) = energy else {
            return Err(ctx.fail(Failure::MissingField("ENERGY")));
        };
        ctx.out.push(ReadingRef {
            device_id: ctx.device_id,
            ts: ctx.now_ns,
            voltage: energy.voltage,
            current: energy.current,
            power: energy.power,
            energy: energy.wh,
            relay_on: ctx.relay,
            location: None,
            device_type: None,
        });
        Ok(())
    }

    fn visit_seq<A: de::SeqAccess<'de>>(self, _seq: A) -> Result<(), A::Error> {
        self.other(Found::Array)
    }

    visit_scalars!();
}

/// The values a reading takes from `ENERGY`.
struct Energy {
    power: f64,
    voltage: f64,
    current: f64,
    wh: Option<f64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum EnergyKey {
    Power,
    Voltage,
    Current,
    Total,
    Other,
}

impl EnergyKey {
    fn of(name: &str) -> Self {
        match name {
            "Power" => Self::Power,
            "Voltage" => Self::Voltage,
            "Current" => Self::Current,
            "Total" => Self::Total,
            _ => Self::Other,
        }
    }
}

struct EnergySeed<'c, 'a>(&'c mut Ctx<'a>);

impl EnergySeed<'_, '_> {
    fn other<E: de::Error>(self, found: Found) -> Result<Energy, E> {
        Err(self.0.fail(Failure::WrongType {
            field: Some("ENERGY"),
            expected: Expected::Object,
            found,
        }))
    }
}

impl<'de> DeserializeSeed<'de> for EnergySeed<'_, '_> {
    type Value = Energy;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Energy, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for EnergySeed<'_, '_> {
    type Value = Energy;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the ENERGY object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Energy, A::Error> {
        let ctx = self.0;
        ctx.scratch.clear();
        let (mut power, mut voltage, mut current, mut wh) = (None, None, None, None);
        while let Some(key) = map.next_key_seed(KeySeed(EnergyKey::of))? {
            let field = match key {
                EnergyKey::Power => "ENERGY.Power",
                EnergyKey::Voltage => "ENERGY.Voltage",
                EnergyKey::Current => "ENERGY.Current",
                EnergyKey::Total => "ENERGY.Total",
                EnergyKey::Other => {
                    map.next_value::<IgnoredAny>()?;
                    continue;
                }
            };
            let value = ctx.first_channel(&mut map, field)?;
            let expected = Expected::NumberOrChannels;
            let scratch = ctx.scratch.as_str();
            let set = match key {
                EnergyKey::Power => {
                    number(field, expected, &value, scratch).map(|v| power = Some(v))
                }
                EnergyKey::Voltage => {
                    number(field, expected, &value, scratch).map(|v| voltage = Some(v))
                }
                EnergyKey::Current => {
                    number(field, expected, &value, scratch).map(|v| current = Some(v))
                }
                EnergyKey::Total => optional_number(field, expected, &value, scratch)
                    .and_then(|kwh| kwh.map(|kwh| kwh_to_wh(field, kwh)).transpose())
                    .map(|v| wh = v),
                EnergyKey::Other => Ok(()),
            };
            ctx.check(set)?;
        }
        let required = |v: Option<f64>, field| v.ok_or(Failure::MissingField(field));
        let checked = (|| {
            Ok(Energy {
                power: required(power, "ENERGY.Power")?,
                voltage: required(voltage, "ENERGY.Voltage")?,
                current: required(current, "ENERGY.Current")?,
                wh,
            })
        })();
        ctx.check(checked)
    }

    fn visit_seq<A: de::SeqAccess<'de>>(self, _seq: A) -> Result<Energy, A::Error> {
        self.other(Found::Array)
    }

    visit_scalars!();
}

/// A STATE payload: no reading; its `POWER` (or `POWER1`, the first relay of a
/// multi-relay device) goes to `ctx.relay`.
pub(super) struct State<'c, 'a>(pub(super) &'c mut Ctx<'a>);

impl State<'_, '_> {
    fn other<E: de::Error>(self, found: Found) -> Result<(), E> {
        Err(self.0.fail(Failure::WrongType {
            field: None,
            expected: Expected::Object,
            found,
        }))
    }
}

impl<'de> DeserializeSeed<'de> for State<'_, '_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for State<'_, '_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a Tasmota STATE object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let ctx = self.0;
        ctx.relay = None;
        let power_key = |k: &str| match k {
            "POWER" => Some("POWER"),
            "POWER1" => Some("POWER1"),
            _ => None,
        };
        while let Some(key) = map.next_key_seed(KeySeed(power_key))? {
            let Some(field) = key else {
                map.next_value::<IgnoredAny>()?;
                continue;
            };
            ctx.scratch.clear();
            let value = ctx.scalar(&mut map, field)?;
            let state = relay(field, &value, ctx.scratch);
            if let Some(on) = ctx.check(state)? {
                ctx.relay = Some(on);
            }
        }
        Ok(())
    }

    fn visit_seq<A: de::SeqAccess<'de>>(self, _seq: A) -> Result<(), A::Error> {
        self.other(Found::Array)
    }

    visit_scalars!();
}
