//! `smartplug-json`: WattDB's own payload, one reading object or an array of them.

use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use wattdb_storage::{ReadingRef, validate_device_id};

use super::decode::{Ctx, Failure, KeySeed, number, optional_number, relay, timestamp};
use crate::error::Expected;
use crate::json::{Found, Scalar, Text, visit_scalars};

/// The whole payload: an array of readings or one reading.
pub(super) struct Payload<'c, 'a>(pub(super) &'c mut Ctx<'a>);

impl Payload<'_, '_> {
    fn other<E: de::Error>(self, found: Found) -> Result<(), E> {
        Err(self.0.fail(Failure::WrongType {
            field: None,
            expected: Expected::ReadingOrArray,
            found,
        }))
    }
}

impl<'de> DeserializeSeed<'de> for Payload<'_, '_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Payload<'_, '_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a reading object or an array of them")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let ctx = self.0;
        let mut index = 0;
        loop {
            ctx.index = Some(index);
            if seq.next_element_seed(Element(&mut *ctx))?.is_none() {
                break;
            }
            index += 1;
        }
        ctx.index = None;
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<(), A::Error> {
        reading(self.0, map)
    }

    visit_scalars!();
}

/// One element of the array.
struct Element<'c, 'a>(&'c mut Ctx<'a>);

impl Element<'_, '_> {
    fn other<E: de::Error>(self, found: Found) -> Result<(), E> {
        Err(self.0.fail(Failure::WrongType {
            field: None,
            expected: Expected::ReadingObject,
            found,
        }))
    }
}

impl<'de> DeserializeSeed<'de> for Element<'_, '_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        let ctx = self.0;
        if ctx.index.unwrap_or(0) >= ctx.max_readings {
            let limit = ctx.max_readings;
            return Err(ctx.fail(Failure::TooManyReadings(limit)));
        }
        deserializer.deserialize_any(Element(ctx))
    }
}

impl<'de> Visitor<'de> for Element<'_, '_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a reading object")
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<(), A::Error> {
        reading(self.0, map)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, _seq: A) -> Result<(), A::Error> {
        self.other(Found::Array)
    }

    visit_scalars!();
}

/// The keys of a reading object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Key {
    DeviceId,
    Ts,
    Voltage,
    Current,
    Power,
    Energy,
    RelayState,
    Location,
    DeviceType,
    Other,
}

impl Key {
    fn of(name: &str) -> Self {
        match name {
            "device_id" => Self::DeviceId,
            "ts" => Self::Ts,
            "voltage" => Self::Voltage,
            "current" => Self::Current,
            "power" => Self::Power,
            "energy" => Self::Energy,
            "relay_state" => Self::RelayState,
            "location" => Self::Location,
            "device_type" => Self::DeviceType,
            _ => Self::Other,
        }
    }

    fn name(self) -> Option<&'static str> {
        Some(match self {
            Self::DeviceId => "device_id",
            Self::Ts => "ts",
            Self::Voltage => "voltage",
            Self::Current => "current",
            Self::Power => "power",
            Self::Energy => "energy",
            Self::RelayState => "relay_state",
            Self::Location => "location",
            Self::DeviceType => "device_type",
            Self::Other => return None,
        })
    }
}

/// The values of one reading object, as found so far.
#[derive(Default)]
struct Slots<'de> {
    device_id: Option<Text<'de>>,
    ts: Option<i64>,
    voltage: Option<f64>,
    current: Option<f64>,
    power: Option<f64>,
    energy: Option<f64>,
    relay_on: Option<bool>,
    location: Option<Text<'de>>,
    device_type: Option<Text<'de>>,
}

/// Decodes one reading object and pushes it.
fn reading<'de, A: MapAccess<'de>>(ctx: &mut Ctx<'_>, mut map: A) -> Result<(), A::Error> {
    ctx.scratch.clear();
    let mut slots = Slots::default();
    while let Some(key) = map.next_key_seed(KeySeed(Key::of))? {
        let Some(field) = key.name() else {
            map.next_value::<IgnoredAny>()?;
            continue;
        };
        let value = ctx.scalar(&mut map, field)?;
        let set = slots.set(key, field, value, ctx.scratch, ctx.now_ns);
        ctx.check(set)?;
    }
    let required = |v: Option<f64>, field| v.ok_or(Failure::MissingField(field));
    let checked = (|| {
        Ok((
            required(slots.voltage, "voltage")?,
            required(slots.current, "current")?,
            required(slots.power, "power")?,
        ))
    })();
    let (voltage, current, power) = ctx.check(checked)?;
    let scratch = ctx.scratch.as_str();
    let device_id = match &slots.device_id {
        Some(text) => text.get(scratch),
        None => ctx.device_id,
    };
    ctx.out.push(ReadingRef {
        device_id,
        ts: slots.ts.unwrap_or(ctx.now_ns),
        voltage,
        current,
        power,
        energy: slots.energy,
        relay_on: slots.relay_on,
        location: slots.location.as_ref().map(|t| t.get(scratch)),
        device_type: slots.device_type.as_ref().map(|t| t.get(scratch)),
    });
    Ok(())
}

impl<'de> Slots<'de> {
    fn set(
        &mut self,
        key: Key,
        field: &'static str,
        value: Scalar<'de>,
        scratch: &str,
        now_ns: i64,
    ) -> Result<(), Failure> {
        let wrong_type = |expected, value: &Scalar<'_>| Failure::WrongType {
            field: Some(field),
            expected,
            found: value.found(scratch),
        };
        match key {
            Key::DeviceId => match value {
                Scalar::Str(text) => {
                    let id = text.get(scratch);
                    if let Err(reason) = validate_device_id(id) {
                        return Err(Failure::BadDeviceId {
                            found: id.into(),
                            reason,
                        });
                    }
                    self.device_id = Some(text);
                }
                other => return Err(wrong_type(Expected::String, &other)),
            },
            Key::Ts => self.ts = timestamp(field, &value, scratch, now_ns)?,
            Key::Voltage => self.voltage = Some(number(field, Expected::Number, &value, scratch)?),
            Key::Current => self.current = Some(number(field, Expected::Number, &value, scratch)?),
            Key::Power => self.power = Some(number(field, Expected::Number, &value, scratch)?),
            Key::Energy => self.energy = optional_number(field, Expected::Number, &value, scratch)?,
            Key::RelayState => self.relay_on = relay(field, &value, scratch)?,
            Key::Location | Key::DeviceType => {
                let slot = if key == Key::Location {
                    &mut self.location
                } else {
                    &mut self.device_type
                };
                *slot = match value {
                    Scalar::Null => None,
                    Scalar::Str(text) if text.get(scratch).is_empty() => None,
                    Scalar::Str(text) => Some(text),
                    other => return Err(wrong_type(Expected::String, &other)),
                }
            }
            Key::Other => {}
        }
        Ok(())
    }
}
