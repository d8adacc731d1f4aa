//! Which MQTT topics carry which payloads: [`TopicRouter`].
//!
//! A route pairs a topic pattern such as `tele/{device_id}/SENSOR` with a
//! [`PayloadFormat`]. `{device_id}` stands for one whole topic level, which names the
//! plug; every other level is matched literally. Routes are tried in order and the
//! first that matches wins. Matching compares a literal prefix and suffix and borrows
//! the device level from the topic: nothing is allocated per message.

use std::fmt;
use std::str::FromStr;

use crate::error::Snippet;

/// The level of a pattern that names the plug.
pub const DEVICE_ID_LEVEL: &str = "{device_id}";

/// Longest accepted pattern, in bytes.
pub const MAX_PATTERN_BYTES: usize = 1024;

/// How a payload is laid out, chosen by its topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PayloadFormat {
    /// WattDB's own JSON: one reading object or an array of them (`smartplug-json`).
    SmartPlugJson,
    /// Tasmota `tele/…/SENSOR`: the `ENERGY` object (`tasmota-sensor`).
    TasmotaSensor,
    /// Tasmota `tele/…/STATE`: the relay state, remembered for the next SENSOR
    /// message; no reading (`tasmota-state`).
    TasmotaState,
    /// Shelly Gen2 `…/status/switch:0` (`shelly-switch`).
    ShellySwitch,
}

impl PayloadFormat {
    /// Every format, in the order of [`TopicRouter::default`].
    pub const ALL: [Self; 4] = [
        Self::SmartPlugJson,
        Self::TasmotaSensor,
        Self::TasmotaState,
        Self::ShellySwitch,
    ];

    /// The name used in route specifications.
    pub fn name(self) -> &'static str {
        match self {
            Self::SmartPlugJson => "smartplug-json",
            Self::TasmotaSensor => "tasmota-sensor",
            Self::TasmotaState => "tasmota-state",
            Self::ShellySwitch => "shelly-switch",
        }
    }
}

impl fmt::Display for PayloadFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A payload format name that is not one of [`PayloadFormat::name`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown payload format {found}; expected smartplug-json, tasmota-sensor, \
     tasmota-state or shelly-switch"
)]
pub struct UnknownFormat {
    pub found: Snippet,
}

impl FromStr for PayloadFormat {
    type Err = UnknownFormat;

    fn from_str(s: &str) -> Result<Self, UnknownFormat> {
        Self::ALL
            .into_iter()
            .find(|format| format.name() == s)
            .ok_or_else(|| UnknownFormat { found: s.into() })
    }
}

/// Why a topic pattern was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TopicPatternError {
    #[error("the pattern is empty")]
    Empty,
    #[error("the pattern is longer than {MAX_PATTERN_BYTES} bytes")]
    TooLong,
    #[error("the pattern has no {{device_id}} level")]
    NoDeviceId,
    #[error("the pattern has more than one {{device_id}} level")]
    SeveralDeviceIds,
    #[error("{{device_id}} must be a whole level, like \"tele/{{device_id}}/SENSOR\"")]
    DeviceIdNotALevel,
    #[error(
        "the pattern contains {0:?}; MQTT wildcards, braces other than {{device_id}} \
         and NUL are not allowed"
    )]
    Reserved(char),
}

/// A topic with one `{device_id}` level, such as `tele/{device_id}/SENSOR`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TopicPattern {
    /// Everything before `{device_id}`, with its `/`.
    prefix: Box<str>,
    /// Everything after `{device_id}`, with its `/`.
    suffix: Box<str>,
}

impl TopicPattern {
    /// Checks `pattern`: exactly one level is `{device_id}`, and no level holds an MQTT
    /// wildcard (`+`, `#`), another brace or NUL.
    pub fn new(pattern: &str) -> Result<Self, TopicPatternError> {
        if pattern.is_empty() {
            return Err(TopicPatternError::Empty);
        }
        if pattern.len() > MAX_PATTERN_BYTES {
            return Err(TopicPatternError::TooLong);
        }
        let mut split = None;
        let mut offset = 0;
        for level in pattern.split('/') {
            if level == DEVICE_ID_LEVEL {
                if split.is_some() {
                    return Err(TopicPatternError::SeveralDeviceIds);
                }
                split = Some((&pattern[..offset], &pattern[offset + level.len()..]));
            } else if level.contains(DEVICE_ID_LEVEL) {
                return Err(TopicPatternError::DeviceIdNotALevel);
            } else if let Some(c) = level
                .chars()
                .find(|c| matches!(c, '+' | '#' | '{' | '}' | '\0'))
            {
                return Err(TopicPatternError::Reserved(c));
            }
            offset += level.len() + 1;
        }
        let (prefix, suffix) = split.ok_or(TopicPatternError::NoDeviceId)?;
        Ok(Self {
            prefix: prefix.into(),
            suffix: suffix.into(),
        })
    }

    /// The device level of `topic` when `topic` matches, borrowed from it. The level
    /// may be empty (MQTT's `+` matches an empty level too); it is not validated here.
    pub fn device_id<'t>(&self, topic: &'t str) -> Option<&'t str> {
        let device = topic
            .strip_prefix(&*self.prefix)?
            .strip_suffix(&*self.suffix)?;
        (!device.contains('/')).then_some(device)
    }

    /// The MQTT topic filter that subscribes to this pattern: `{device_id}` → `+`.
    pub fn subscription_filter(&self) -> String {
        format!("{}+{}", self.prefix, self.suffix)
    }
}

impl fmt::Display for TopicPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{DEVICE_ID_LEVEL}{}", self.prefix, self.suffix)
    }
}

impl FromStr for TopicPattern {
    type Err = TopicPatternError;

    fn from_str(s: &str) -> Result<Self, TopicPatternError> {
        Self::new(s)
    }
}

/// One topic pattern and the format of the payloads published under it.
///
/// Written `PATTERN=FORMAT` (whitespace around either part is ignored), e.g.
/// `tele/{device_id}/SENSOR=tasmota-sensor`; the format is what follows the last `=`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Route {
    pub pattern: TopicPattern,
    pub format: PayloadFormat,
}

impl Route {
    pub fn new(pattern: TopicPattern, format: PayloadFormat) -> Self {
        Self { pattern, format }
    }
}

/// Why a `PATTERN=FORMAT` route specification was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    #[error(
        "route {spec}: expected PATTERN=FORMAT, like \"tele/{{device_id}}/SENSOR=tasmota-sensor\""
    )]
    MissingFormat { spec: Snippet },
    #[error("route {spec}: {error}")]
    Format { spec: Snippet, error: UnknownFormat },
    #[error("route {spec}: {error}")]
    Pattern {
        spec: Snippet,
        error: TopicPatternError,
    },
}

impl FromStr for Route {
    type Err = RouteError;

    fn from_str(spec: &str) -> Result<Self, RouteError> {
        let Some((pattern, format)) = spec.rsplit_once('=') else {
            return Err(RouteError::MissingFormat { spec: spec.into() });
        };
        let format = format.trim().parse().map_err(|error| RouteError::Format {
            spec: spec.into(),
            error,
        })?;
        let pattern = TopicPattern::new(pattern.trim()).map_err(|error| RouteError::Pattern {
            spec: spec.into(),
            error,
        })?;
        Ok(Self { pattern, format })
    }
}

impl fmt::Display for Route {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}={}", self.pattern, self.format)
    }
}

/// What a topic routes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TopicMatch<'t> {
    pub format: PayloadFormat,
    /// The topic's `{device_id}` level, not yet validated.
    pub device_id: &'t str,
}

/// Routes topics to payload formats; the first matching route wins.
///
/// The default routes:
///
/// | pattern | format |
/// |---|---|
/// | `smartplug/{device_id}/telemetry` | `smartplug-json` |
/// | `tele/{device_id}/SENSOR` | `tasmota-sensor` |
/// | `tele/{device_id}/STATE` | `tasmota-state` |
/// | `{device_id}/status/switch:0` | `shelly-switch` |
///
/// Tasmota also answers commands on `stat/{device_id}/RESULT` with `{"POWER":"ON"}`;
/// routing that to `tasmota-state` makes relay changes known before the next STATE.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicRouter {
    routes: Vec<Route>,
}

impl TopicRouter {
    pub fn new(routes: Vec<Route>) -> Self {
        Self { routes }
    }

    /// Parses `PATTERN=FORMAT` specifications, such as the lines of a config file.
    pub fn parse<I>(specs: I) -> Result<Self, RouteError>
    where
        I: IntoIterator,
        I::Item: AsRef<str>,
    {
        specs
            .into_iter()
            .map(|spec| spec.as_ref().parse())
            .collect()
    }

    pub fn routes(&self) -> &[Route] {
        &self.routes
    }

    /// The format and device level of the first route `topic` matches.
    pub fn route<'t>(&self, topic: &'t str) -> Option<TopicMatch<'t>> {
        self.routes.iter().find_map(|route| {
            let device_id = route.pattern.device_id(topic)?;
            Some(TopicMatch {
                format: route.format,
                device_id,
            })
        })
    }

    /// MQTT topic filters covering every route (`{device_id}` → `+`), in route order,
    /// without duplicates.
    pub fn subscription_filters(&self) -> Vec<String> {
        let mut filters: Vec<String> = Vec::with_capacity(self.routes.len());
        for route in &self.routes {
            let filter = route.pattern.subscription_filter();
            if !filters.contains(&filter) {
                filters.push(filter);
            }
        }
        filters
    }
}

impl Default for TopicRouter {
    fn default() -> Self {
        let routes = [
            ("smartplug/", "/telemetry", PayloadFormat::SmartPlugJson),
            ("tele/", "/SENSOR", PayloadFormat::TasmotaSensor),
            ("tele/", "/STATE", PayloadFormat::TasmotaState),
            ("", "/status/switch:0", PayloadFormat::ShellySwitch),
        ];
        Self::new(
            routes
                .into_iter()
                .map(|(prefix, suffix, format)| Route {
                    pattern: TopicPattern {
                        prefix: prefix.into(),
                        suffix: suffix.into(),
                    },
                    format,
                })
                .collect(),
        )
    }
}

impl FromIterator<Route> for TopicRouter {
    fn from_iter<I: IntoIterator<Item = Route>>(routes: I) -> Self {
        Self::new(routes.into_iter().collect())
    }
}
