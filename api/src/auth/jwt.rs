//! JWT bearer tokens from an external identity provider.
//!
//! The algorithm is pinned by configuration (HS256, RS256 or ES256): a token whose
//! header names another one (`none`, or HS256 signed with an RSA public key) is
//! refused. `exp`, `aud` and `iss` are required and checked, `nbf` when present. The
//! key is a file: the HS256 secret, a PEM public key, or a JWKS (keys picked by `kid`).
//! Claims map to scopes (`scope`: space-separated or an array of `read`, `write`,
//! `admin`, optionally written `wattdb:read`…) and plug prefixes (`wattdb_devices`: an
//! array or a comma-separated string).

use std::path::PathBuf;
use std::sync::Arc;

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::Value;

use super::{Access, Scope};

/// The algorithms WattDB accepts (one of them, pinned).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum JwtAlgorithm {
    #[value(name = "HS256")]
    Hs256,
    #[value(name = "RS256")]
    Rs256,
    #[value(name = "ES256")]
    Es256,
}

impl JwtAlgorithm {
    fn algorithm(self) -> Algorithm {
        match self {
            JwtAlgorithm::Hs256 => Algorithm::HS256,
            JwtAlgorithm::Rs256 => Algorithm::RS256,
            JwtAlgorithm::Es256 => Algorithm::ES256,
        }
    }
}

#[derive(Debug, Clone)]
pub struct JwtConfig {
    pub algorithm: JwtAlgorithm,
    /// HS256: a file holding the shared secret (surrounding whitespace ignored);
    /// RS256/ES256: a PEM public key.
    pub key_file: Option<PathBuf>,
    /// A JWKS file (`{"keys": [...]}`), instead of `key_file`.
    pub jwks_file: Option<PathBuf>,
    pub audience: String,
    pub issuer: String,
    pub scope_claim: String,
    pub devices_claim: String,
    /// Clock skew allowed for `exp` and `nbf`, in seconds.
    pub leeway_s: u64,
}

#[derive(Debug)]
pub struct Verifier {
    keys: Keys,
    validation: Validation,
    config: JwtConfig,
}

enum Keys {
    One(DecodingKey),
    /// By `kid`.
    Set(Vec<(Option<String>, DecodingKey)>),
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Keys::One(_) => f.write_str("Keys::One"),
            Keys::Set(k) => write!(f, "Keys::Set({} keys)", k.len()),
        }
    }
}

/// Whether `token` has a JWT's shape (three base64url parts, a JSON header).
pub fn looks_like_jwt(token: &str) -> bool {
    token.starts_with("eyJ") && token.bytes().filter(|&b| b == b'.').count() == 2
}

impl Verifier {
    /// Reads the key; the message names the setting at fault.
    pub fn new(config: &JwtConfig) -> Result<Self, String> {
        let alg = config.algorithm.algorithm();
        let read = |setting: &str, p: &PathBuf| {
            std::fs::read(p).map_err(|e| format!("{setting} {}: {e}", p.display()))
        };
        let keys = match (&config.key_file, &config.jwks_file) {
            (Some(_), Some(_)) => {
                return Err("--jwt-key-file and --jwt-jwks-file exclude each other".into());
            }
            (None, None) => {
                return Err("JWT needs --jwt-key-file or --jwt-jwks-file".into());
            }
            (Some(p), None) => {
                let bytes = read("--jwt-key-file", p)?;
                let key = match config.algorithm {
                    JwtAlgorithm::Hs256 => {
                        let secret = String::from_utf8_lossy(&bytes).trim().to_owned();
                        if secret.len() < 32 {
                            return Err(format!(
                                "--jwt-key-file {}: an HS256 secret needs at least 32 bytes",
                                p.display()
                            ));
                        }
                        DecodingKey::from_secret(secret.as_bytes())
                    }
                    JwtAlgorithm::Rs256 => DecodingKey::from_rsa_pem(&bytes).map_err(|e| {
                        format!(
                            "--jwt-key-file {}: not an RSA public key in PEM: {e}",
                            p.display()
                        )
                    })?,
                    JwtAlgorithm::Es256 => DecodingKey::from_ec_pem(&bytes).map_err(|e| {
                        format!(
                            "--jwt-key-file {}: not an EC public key in PEM: {e}",
                            p.display()
                        )
                    })?,
                };
                Keys::One(key)
            }
            (None, Some(p)) => {
                let bytes = read("--jwt-jwks-file", p)?;
                let set: JwkSet = serde_json::from_slice(&bytes)
                    .map_err(|e| format!("--jwt-jwks-file {}: not a JWKS: {e}", p.display()))?;
                let mut keys = Vec::new();
                for jwk in &set.keys {
                    let key = DecodingKey::from_jwk(jwk).map_err(|e| {
                        format!(
                            "--jwt-jwks-file {}: key {:?}: {e}",
                            p.display(),
                            jwk.common.key_id
                        )
                    })?;
                    keys.push((jwk.common.key_id.clone(), key));
                }
                if keys.is_empty() {
                    return Err(format!("--jwt-jwks-file {}: no keys", p.display()));
                }
                Keys::Set(keys)
            }
        };
        if config.audience.is_empty() || config.issuer.is_empty() {
            return Err("JWT needs --jwt-audience and --jwt-issuer".into());
        }
        let mut validation = Validation::new(alg);
        validation.set_audience(&[&config.audience]);
        validation.set_issuer(&[&config.issuer]);
        validation.set_required_spec_claims(&["exp", "aud", "iss"]);
        validation.validate_nbf = true;
        validation.leeway = config.leeway_s;
        Ok(Self {
            keys,
            validation,
            config: config.clone(),
        })
    }

    /// The access a JWT grants, or why it is refused.
    pub fn verify(&self, token: &str) -> Result<Access, String> {
        let header = jsonwebtoken::decode_header(token)
            .map_err(|e| format!("not a valid JWT: {}", describe(e.kind())))?;
        if header.alg != self.validation.algorithms[0] {
            return Err(format!(
                "JWT algorithm {:?} is not the configured {:?}",
                header.alg, self.validation.algorithms[0]
            ));
        }
        let key = match &self.keys {
            Keys::One(k) => k,
            Keys::Set(keys) => match &header.kid {
                Some(kid) => keys
                    .iter()
                    .find(|(id, _)| id.as_deref() == Some(kid.as_str()))
                    .map(|(_, k)| k)
                    .ok_or_else(|| format!("no key with kid {kid:?} in the JWKS"))?,
                None if keys.len() == 1 => &keys[0].1,
                None => return Err("the JWT has no kid and the JWKS has several keys".into()),
            },
        };
        let data =
            jsonwebtoken::decode::<serde_json::Map<String, Value>>(token, key, &self.validation)
                .map_err(|e| format!("JWT refused: {}", describe(e.kind())))?;
        let claims = data.claims;
        // jsonwebtoken treats an `nbf` that is not a number as absent.
        if let Some(nbf) = claims.get("nbf")
            && !nbf.is_number()
        {
            return Err("JWT refused: nbf is not a number".into());
        }
        let scopes: Vec<Scope> = strings(claims.get(&self.config.scope_claim), ' ')
            .iter()
            .filter_map(|s| Scope::parse(s.strip_prefix("wattdb:").unwrap_or(s)).ok())
            .collect();
        let devices = strings(claims.get(&self.config.devices_claim), ',');
        for d in &devices {
            wattdb_engine::validate_device_id(d).map_err(|e| {
                format!("JWT claim {}: prefix {d:?}: {e}", self.config.devices_claim)
            })?;
        }
        if scopes.contains(&Scope::Admin) && !devices.is_empty() {
            return Err("JWT grants admin limited to plugs, which WattDB does not allow".into());
        }
        let sub = claims.get("sub").and_then(Value::as_str).unwrap_or("");
        let id: Arc<str> = Arc::from(format!("jwt:{sub}"));
        let devices = (!devices.is_empty()).then(|| Arc::from(devices));
        Ok(Access::new(id, &scopes, devices))
    }
}

/// A claim that is a string split at `sep`, or an array of strings.
fn strings(v: Option<&Value>, sep: char) -> Vec<String> {
    match v {
        Some(Value::String(s)) => s
            .split(sep)
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect(),
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(Value::as_str)
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
            .collect(),
        _ => Vec::new(),
    }
}

fn describe(kind: &ErrorKind) -> String {
    match kind {
        ErrorKind::ExpiredSignature => "expired (exp)".into(),
        ErrorKind::ImmatureSignature => "not valid yet (nbf)".into(),
        ErrorKind::InvalidAudience => "wrong audience (aud)".into(),
        ErrorKind::InvalidIssuer => "wrong issuer (iss)".into(),
        ErrorKind::InvalidSignature => "bad signature".into(),
        ErrorKind::InvalidAlgorithm => "algorithm not allowed".into(),
        ErrorKind::MissingRequiredClaim(c) => format!("claim {c} missing"),
        ErrorKind::InvalidClaimFormat(c) => format!("claim {c} has the wrong type"),
        ErrorKind::InvalidToken
        | ErrorKind::Base64(_)
        | ErrorKind::Json(_)
        | ErrorKind::Utf8(_) => "malformed".into(),
        other => format!("{other:?}"),
    }
}
