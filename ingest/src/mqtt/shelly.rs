//! `shelly-switch`: the status a Shelly Gen2 plug publishes under
//! `{id}/status/switch:0`.

use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, Visitor};
use wattdb_storage::ReadingRef;

use super::decode::{Ctx, Failure, KeySeed, number, optional_number, relay};
use crate::error::Expected;
use crate::json::{Found, visit_scalars};

/// A switch status: one reading.
pub(super) struct Switch<'c, 'a>(pub(super) &'c mut Ctx<'a>);

impl Switch<'_, '_> {
    fn other<E: de::Error>(self, found: Found) -> Result<(), E> {
        Err(self.0.fail(Failure::WrongType {
            field: None,
            expected: Expected::Object,
            found,
        }))
    }
}

impl<'de> DeserializeSeed<'de> for Switch<'_, '_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Key {
    Apower,
    Voltage,
    Current,
    Output,
    Aenergy,
    Other,
}

impl Key {
    fn of(name: &str) -> Self {
        match name {
            "apower" => Self::Apower,
            "voltage" => Self::Voltage,
            "current" => Self::Current,
            "output" => Self::Output,
            "aenergy" => Self::Aenergy,
            _ => Self::Other,
        }
    }
}

impl<'de> Visitor<'de> for Switch<'_, '_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a Shelly switch status object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let ctx = self.0;
        ctx.scratch.clear();
        let (mut power, mut voltage, mut current, mut relay_on, mut wh) =
            (None, None, None, None, None);
        while let Some(key) = map.next_key_seed(KeySeed(Key::of))? {
            let field = match key {
                Key::Apower => "apower",
                Key::Voltage => "voltage",
                Key::Current => "current",
                Key::Output => "output",
                Key::Aenergy => {
                    wh = map.next_value_seed(AenergySeed(&mut *ctx))?;
                    continue;
                }
                Key::Other => {
                    map.next_value::<IgnoredAny>()?;
                    continue;
                }
            };
            let value = ctx.scalar(&mut map, field)?;
            let scratch = ctx.scratch.as_str();
            let set = match key {
                Key::Apower => {
                    number(field, Expected::Number, &value, scratch).map(|v| power = Some(v))
                }
                Key::Voltage => {
                    number(field, Expected::Number, &value, scratch).map(|v| voltage = Some(v))
                }
                Key::Current => {
                    number(field, Expected::Number, &value, scratch).map(|v| current = Some(v))
                }
                Key::Output => relay(field, &value, scratch).map(|v| relay_on = v),
                Key::Aenergy | Key::Other => Ok(()),
            };
            ctx.check(set)?;
        }
        let required = |v: Option<f64>, field| v.ok_or(Failure::MissingField(field));
        let checked = (|| {
            Ok((
                required(power, "apower")?,
                required(voltage, "voltage")?,
                required(current, "current")?,
            ))
        })();
        let (power, voltage, current) = ctx.check(checked)?;
        ctx.out.push(ReadingRef {
            device_id: ctx.device_id,
            ts: ctx.now_ns,
            voltage,
            current,
            power,
            energy: wh,
            relay_on,
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

/// `aenergy`: its `total` in Wh; `null` or a missing `total` is no energy.
struct AenergySeed<'c, 'a>(&'c mut Ctx<'a>);

impl AenergySeed<'_, '_> {
    fn other<E: de::Error>(self, found: Found) -> Result<Option<f64>, E> {
        match found {
            Found::Null => Ok(None),
            found => Err(self.0.fail(Failure::WrongType {
                field: Some("aenergy"),
                expected: Expected::Object,
                found,
            })),
        }
    }
}

impl<'de> DeserializeSeed<'de> for AenergySeed<'_, '_> {
    type Value = Option<f64>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for AenergySeed<'_, '_> {
    type Value = Option<f64>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the aenergy object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let ctx = self.0;
        let mut wh = None;
        while let Some(is_total) = map.next_key_seed(KeySeed(|k| k == "total"))? {
            if !is_total {
                map.next_value::<IgnoredAny>()?;
                continue;
            }
            let field = "aenergy.total";
            let value = ctx.scalar(&mut map, field)?;
            let total = optional_number(field, Expected::Number, &value, ctx.scratch);
            wh = ctx.check(total)?;
        }
        Ok(wh)
    }

    fn visit_seq<A: de::SeqAccess<'de>>(self, _seq: A) -> Result<Self::Value, A::Error> {
        self.other(Found::Array)
    }

    visit_scalars!();
}
