//! Authentication and authorization: API tokens (and JWTs from an identity provider,
//! see [`jwt`]), their scopes and plug-id prefixes, and per-token rate limits.
//!
//! API tokens live in `DATA_DIR/tokens.json`, only as SHA-256 hashes (a token is 24
//! random bytes, so a fast hash is as good as a slow one). `wattdb token` and the admin
//! routes change that file under a lock and replace it atomically; a running server
//! polls it and picks up new and revoked tokens within a second.
//!
//! Every route but `/health` needs a token; [`require`] checks it and the route
//! group's [`Scope`], and leaves an [`Access`] in the request for the handlers, which
//! hold a prefix-limited caller to its plugs.

pub mod jwt;
mod store;

use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::http::{HeaderMap, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use parking_lot::{Mutex, RwLock};
use serde::{Deserialize, Serialize};
pub use store::{NewToken, StoreError, TokenInfo, TokenStore, random_hex};

use crate::error::ApiError;

/// What a token may do. `admin` includes `read` and `write`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    Read,
    Write,
    Admin,
}

impl Scope {
    fn bit(self) -> u8 {
        match self {
            Scope::Read => 1,
            Scope::Write => 2,
            Scope::Admin => 4,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Scope::Read => "read",
            Scope::Write => "write",
            Scope::Admin => "admin",
        }
    }

    pub fn parse(s: &str) -> Result<Scope, String> {
        match s.trim() {
            "read" => Ok(Scope::Read),
            "write" => Ok(Scope::Write),
            "admin" => Ok(Scope::Admin),
            other => Err(format!("scope {other:?} is not one of read, write, admin")),
        }
    }
}

/// What a request may do: the scopes and plugs of its token.
#[derive(Debug, Clone)]
pub struct Access {
    /// The token's id (or the JWT's subject), for rate limits and logs; never the
    /// secret.
    pub id: Arc<str>,
    scopes: u8,
    /// Plug-id prefixes the caller may see and write; `None`: every plug.
    pub devices: Option<Arc<[String]>>,
}

impl Access {
    /// Everything: the access of every request when the server runs without auth.
    pub fn everything() -> Self {
        Self {
            id: Arc::from("anonymous"),
            scopes: Scope::Admin.bit(),
            devices: None,
        }
    }

    pub fn new(id: Arc<str>, scopes: &[Scope], devices: Option<Arc<[String]>>) -> Self {
        Self {
            id,
            scopes: scopes.iter().fold(0, |acc, s| acc | s.bit()),
            devices,
        }
    }

    pub fn has(&self, scope: Scope) -> bool {
        self.scopes & (scope.bit() | Scope::Admin.bit()) != 0
    }

    /// Whether the caller may see plug `id`.
    pub fn allows(&self, id: &str) -> bool {
        self.devices
            .as_ref()
            .is_none_or(|prefixes| prefixes.iter().any(|p| id.starts_with(p.as_str())))
    }

    /// 403 naming the first of `ids` the caller may not see.
    pub fn check_devices<'a>(
        &self,
        ids: impl IntoIterator<Item = &'a str>,
    ) -> Result<(), ApiError> {
        let Some(prefixes) = &self.devices else {
            return Ok(());
        };
        match ids.into_iter().find(|id| !self.allows(id)) {
            None => Ok(()),
            Some(id) => Err(ApiError::Forbidden(format!(
                "plug {id:?} is outside this token's plugs (ids starting with {})",
                prefixes.join(", ")
            ))),
        }
    }

    /// 403 unless the caller sees every plug (fleet-wide routes such as /metrics).
    pub fn check_fleet(&self) -> Result<(), ApiError> {
        match &self.devices {
            None => Ok(()),
            Some(_) => Err(ApiError::Forbidden(
                "this token is limited to some plugs; this route is fleet-wide".into(),
            )),
        }
    }
}

/// How requests are authenticated.
#[derive(Debug, Clone, Default)]
pub struct AuthConfig {
    /// Accept every request as [`Access::everything`] (`--without-auth`).
    pub disabled: bool,
    /// Requests per second one token may make (with a burst of as many); 0: no limit.
    pub rate_limit_rps: u32,
    /// JWTs from an external identity provider, accepted besides API tokens.
    pub jwt: Option<jwt::JwtConfig>,
}

/// The server's view of the tokens, kept in step with the token file.
#[derive(Debug)]
pub struct Auth {
    config: AuthConfig,
    store: TokenStore,
    tokens: RwLock<Tokens>,
    jwt: Option<jwt::Verifier>,
    limiter: RateLimiter,
}

#[derive(Debug, Default)]
struct Tokens {
    by_hash: HashMap<[u8; 32], (Access, Option<i64>)>,
    /// The file's identity when it was read, to notice changes.
    stamp: Option<store::Stamp>,
}

impl Auth {
    /// Reads the token file of `data_dir` and starts watching it.
    pub fn start(data_dir: &std::path::Path, config: AuthConfig) -> Result<Arc<Auth>, String> {
        let jwt = match &config.jwt {
            Some(c) => Some(jwt::Verifier::new(c)?),
            None => None,
        };
        let auth = Arc::new(Auth {
            store: TokenStore::new(data_dir),
            limiter: RateLimiter::new(config.rate_limit_rps),
            config,
            tokens: RwLock::default(),
            jwt,
        });
        if !auth.config.disabled {
            auth.reload().map_err(|e| e.to_string())?;
            watch(Arc::downgrade(&auth));
        }
        Ok(auth)
    }

    pub fn disabled(&self) -> bool {
        self.config.disabled
    }

    pub fn store(&self) -> &TokenStore {
        &self.store
    }

    /// Whether anything can authenticate: a token exists or JWTs are accepted.
    pub fn has_credentials(&self) -> bool {
        self.jwt.is_some() || !self.tokens.read().by_hash.is_empty()
    }

    /// Re-reads the token file if it changed since it was last read.
    pub fn reload(&self) -> Result<(), StoreError> {
        let stamp = self.store.stamp()?;
        if stamp.is_some() && stamp == self.tokens.read().stamp {
            return Ok(());
        }
        let records = self.store.list()?;
        let mut by_hash = HashMap::with_capacity(records.len());
        for r in records {
            let devices = (!r.info.devices.is_empty()).then(|| Arc::from(r.info.devices));
            let access = Access::new(Arc::from(r.info.id.as_str()), &r.info.scopes, devices);
            by_hash.insert(r.hash, (access, r.expires_ns));
        }
        *self.tokens.write() = Tokens { by_hash, stamp };
        Ok(())
    }

    /// The access of a request with these headers, if it may use a route of `need`.
    pub fn authorize(&self, headers: &HeaderMap, need: Need) -> Result<Access, ApiError> {
        if self.config.disabled {
            return Ok(Access::everything());
        }
        let token = bearer(headers)?;
        let access = self.authenticate(token)?;
        if let Need::Scope(scope) = need
            && !access.has(scope)
        {
            return Err(ApiError::Forbidden(format!(
                "this token lacks the {} scope this route needs",
                scope.name()
            )));
        }
        if let Some(wait) = self.limiter.take(&access.id) {
            return Err(ApiError::RateLimited(wait));
        }
        Ok(access)
    }

    /// Whether `password` may publish plug readings to the embedded MQTT broker: a
    /// token with the write scope for every plug.
    pub fn mqtt_login(&self, password: &str) -> Result<(), String> {
        let access = self.authenticate(password).map_err(|e| e.to_string())?;
        if !access.has(Scope::Write) {
            return Err(format!("token {} lacks the write scope", access.id));
        }
        if access.devices.is_some() {
            return Err(format!(
                "token {} is limited to some plugs, which the embedded broker cannot enforce on topics",
                access.id
            ));
        }
        Ok(())
    }

    fn authenticate(&self, token: &str) -> Result<Access, ApiError> {
        if let Some(v) = &self.jwt
            && jwt::looks_like_jwt(token)
        {
            return v.verify(token).map_err(ApiError::Unauthorized);
        }
        let hash = store::hash(token);
        let tokens = self.tokens.read();
        let Some((access, expires)) = tokens.by_hash.get(&hash) else {
            return Err(ApiError::Unauthorized(
                "unknown or revoked token".to_owned(),
            ));
        };
        if let Some(at) = *expires
            && crate::now_ns() >= at
        {
            return Err(ApiError::Unauthorized(format!(
                "token {} expired at {}",
                access.id,
                crate::dashboard::rfc3339(at)
            )));
        }
        Ok(access.clone())
    }
}

/// Polls the token file until the server's [`Auth`] is gone.
fn watch(auth: Weak<Auth>) {
    let spawned = std::thread::Builder::new()
        .name("wattdb-tokens".into())
        .spawn(move || {
            let mut failing = false;
            loop {
                std::thread::sleep(Duration::from_millis(250));
                let Some(auth) = auth.upgrade() else { return };
                match auth.reload() {
                    Ok(()) => failing = false,
                    Err(error) if !failing => {
                        failing = true;
                        tracing::error!(%error, "cannot read the token file; keeping the tokens read before");
                    }
                    Err(_) => {}
                }
            }
        });
    if let Err(error) = spawned {
        tracing::error!(%error, "cannot start the token file watcher; token changes need a restart");
    }
}

/// The bearer token of a request: `Authorization: Bearer TOKEN` (or `Token TOKEN`, as
/// InfluxDB clients send it).
fn bearer(headers: &HeaderMap) -> Result<&str, ApiError> {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Err(ApiError::Unauthorized(
            "this route needs a token: send `Authorization: Bearer TOKEN` (create one with `wattdb token create`)".into(),
        ));
    };
    let value = value
        .to_str()
        .map_err(|_| ApiError::Unauthorized("the Authorization header is not ASCII".into()))?;
    let (scheme, token) = value.trim().split_once(' ').ok_or_else(|| {
        ApiError::Unauthorized("the Authorization header is not `Bearer TOKEN`".into())
    })?;
    if !scheme.eq_ignore_ascii_case("bearer") && !scheme.eq_ignore_ascii_case("token") {
        return Err(ApiError::Unauthorized(format!(
            "authorization scheme {scheme:?} is not Bearer"
        )));
    }
    Ok(token.trim())
}

/// What a route group needs.
#[derive(Debug, Clone, Copy)]
pub enum Need {
    /// Any valid token.
    AnyToken,
    Scope(Scope),
}

/// Middleware of a route group: authenticates, checks the scope and the rate limit,
/// and hands the [`Access`] to the handler.
pub async fn require(
    State((auth, need)): State<(Arc<Auth>, Need)>,
    mut req: Request,
    next: Next,
) -> Response {
    match auth.authorize(req.headers(), need) {
        Ok(access) => {
            req.extensions_mut().insert(access);
            next.run(req).await
        }
        Err(e) => e.into_response(),
    }
}

/// Token buckets, one per token id: `rps` requests a second, bursts of `rps`.
#[derive(Debug)]
struct RateLimiter {
    rps: f64,
    buckets: Mutex<HashMap<Arc<str>, (f64, Instant)>>,
}

/// Buckets idle for this long are full again and are forgotten, so JWT subjects cannot
/// grow the map without bound.
const BUCKET_IDLE: Duration = Duration::from_secs(60);

impl RateLimiter {
    fn new(rps: u32) -> Self {
        Self {
            rps: f64::from(rps),
            buckets: Mutex::default(),
        }
    }

    /// Takes one request from `id`'s bucket; `Some(wait)` when it is empty.
    fn take(&self, id: &Arc<str>) -> Option<Duration> {
        if self.rps <= 0.0 {
            return None;
        }
        let now = Instant::now();
        let mut buckets = self.buckets.lock();
        if buckets.len() > 10_000 {
            buckets.retain(|_, (_, at)| now.duration_since(*at) < BUCKET_IDLE);
        }
        let (level, at) = buckets.entry(Arc::clone(id)).or_insert((self.rps, now));
        *level = (*level + now.duration_since(*at).as_secs_f64() * self.rps).min(self.rps);
        *at = now;
        if *level >= 1.0 {
            *level -= 1.0;
            None
        } else {
            Some(Duration::from_secs_f64((1.0 - *level) / self.rps))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_allows_its_burst_then_asks_to_wait() {
        let limiter = RateLimiter::new(5);
        let id: Arc<str> = Arc::from("t");
        for _ in 0..5 {
            assert_eq!(limiter.take(&id), None);
        }
        let wait = limiter.take(&id).unwrap();
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_millis(200),
            "{wait:?}"
        );
        // Another token has its own bucket.
        assert_eq!(limiter.take(&Arc::from("u")), None);
    }

    #[test]
    fn admin_includes_read_and_write_and_prefixes_limit_plugs() {
        let admin = Access::new(Arc::from("a"), &[Scope::Admin], None);
        assert!(admin.has(Scope::Read) && admin.has(Scope::Write) && admin.has(Scope::Admin));
        let reader = Access::new(
            Arc::from("r"),
            &[Scope::Read],
            Some(Arc::from(vec!["house1-".to_owned()])),
        );
        assert!(reader.has(Scope::Read) && !reader.has(Scope::Write) && !reader.has(Scope::Admin));
        assert!(reader.allows("house1-kettle"));
        assert!(!reader.allows("house10-kettle") && !reader.allows("house2-tv"));
        assert!(reader.check_devices(["house1-a", "house1-b"]).is_ok());
        assert!(reader.check_devices(["house1-a", "house2-b"]).is_err());
        assert!(reader.check_fleet().is_err() && admin.check_fleet().is_ok());
    }

    #[test]
    fn the_authorization_header_takes_bearer_or_token() {
        let mut h = HeaderMap::new();
        assert!(bearer(&h).is_err());
        h.insert(header::AUTHORIZATION, "Bearer abc".parse().unwrap());
        assert_eq!(bearer(&h).unwrap(), "abc");
        h.insert(header::AUTHORIZATION, "token  abc ".parse().unwrap());
        assert_eq!(bearer(&h).unwrap(), "abc");
        h.insert(header::AUTHORIZATION, "Basic abc".parse().unwrap());
        assert!(bearer(&h).is_err());
    }
}
