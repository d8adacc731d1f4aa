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

#[cfg(test)]
mod tests {
    use jsonwebtoken::{EncodingKey, Header, encode};
    use serde_json::json;

    use super::*;

    const SECRET: &str = "a-shared-secret-of-at-least-32-bytes!!";

    fn config(dir: &std::path::Path, jwks: bool) -> JwtConfig {
        let (key_file, jwks_file) = if jwks {
            let p = dir.join("jwks.json");
            let k = base64_url(SECRET.as_bytes());
            let set = json!({"keys": [{"kty": "oct", "kid": "k1", "alg": "HS256", "k": k}]});
            std::fs::write(&p, set.to_string()).unwrap();
            (None, Some(p))
        } else {
            let p = dir.join("secret");
            std::fs::write(&p, format!("{SECRET}\n")).unwrap();
            (Some(p), None)
        };
        JwtConfig {
            algorithm: JwtAlgorithm::Hs256,
            key_file,
            jwks_file,
            audience: "wattdb".into(),
            issuer: "idp".into(),
            scope_claim: "scope".into(),
            devices_claim: "wattdb_devices".into(),
            leeway_s: 0,
        }
    }

    fn base64_url(bytes: &[u8]) -> String {
        const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let mut out = String::new();
        for chunk in bytes.chunks(3) {
            let n = chunk
                .iter()
                .enumerate()
                .fold(0u32, |acc, (i, &b)| acc | (u32::from(b) << (16 - 8 * i)));
            for i in 0..=chunk.len() {
                out.push(A[((n >> (18 - 6 * i)) & 63) as usize] as char);
            }
        }
        out
    }

    fn token(kid: Option<&str>, claims: serde_json::Value) -> String {
        let mut header = Header::new(Algorithm::HS256);
        header.kid = kid.map(str::to_owned);
        encode(
            &header,
            &claims,
            &EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .unwrap()
    }

    fn claims() -> serde_json::Value {
        let now = jsonwebtoken::get_current_timestamp() as i64;
        json!({"sub": "bob", "aud": "wattdb", "iss": "idp", "exp": now + 60, "scope": ["read", "wattdb:write"], "wattdb_devices": "house1-, house2-"})
    }

    #[test]
    fn an_hs256_secret_file_or_a_jwks_verifies_and_maps_the_claims() {
        let dir = tempfile::tempdir().unwrap();
        for jwks in [false, true] {
            let v = Verifier::new(&config(dir.path(), jwks)).unwrap();
            let access = v.verify(&token(Some("k1"), claims())).unwrap();
            assert!(
                access.has(Scope::Read) && access.has(Scope::Write) && !access.has(Scope::Admin)
            );
            assert_eq!(
                access.devices.as_deref(),
                Some(&["house1-".to_owned(), "house2-".to_owned()][..])
            );
            assert_eq!(&*access.id, "jwt:bob");
            let mut expired = claims();
            expired["exp"] = json!(1);
            assert!(
                v.verify(&token(Some("k1"), expired))
                    .unwrap_err()
                    .contains("expired")
            );
        }
        let v = Verifier::new(&config(dir.path(), true)).unwrap();
        assert!(
            v.verify(&token(Some("k2"), claims()))
                .unwrap_err()
                .contains("kid")
        );
    }

    #[test]
    fn bad_settings_are_refused_naming_them() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = config(dir.path(), false);
        std::fs::write(c.key_file.as_ref().unwrap(), "short").unwrap();
        assert!(Verifier::new(&c).unwrap_err().contains("--jwt-key-file"));
        c.key_file = None;
        assert!(Verifier::new(&c).unwrap_err().contains("--jwt-jwks-file"));
        let mut c = config(dir.path(), false);
        c.audience.clear();
        assert!(Verifier::new(&c).unwrap_err().contains("--jwt-audience"));
    }
}
