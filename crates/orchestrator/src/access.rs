//! Who may open a conversation (`access` in the config): nobody is asked by
//! default; with `mode: api_key` a client shows one of the keys, with
//! `mode: jwt` a token signed with the shared secret (HS256) or with the
//! private key whose public half is configured (RS256); expiry, not before
//! and, when configured, audience checked. The header's `alg` must be the
//! configured one (no `none`, no HS256 keyed with the public key). The credential comes as
//! `Authorization: Bearer …` or, for browsers' WebSockets which cannot set
//! headers, `?token=…`. A browser's `Origin` must be on `allowed_origins`
//! when that list is set. Keys and the secret come from the environment
//! only and never appear in logs or serialized config.
//!
//! Checked on the conversation endpoints (`/ws`, `/rtc/offer`,
//! `/livekit/token`, `/livekit/join`); the page, probes and metrics stay open.

use axum::http::{HeaderMap, StatusCode, header};
use base64::Engine as _;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    #[default]
    None,
    ApiKey,
    Jwt,
}

/// How `jwt` tokens are signed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Algorithm {
    /// HMAC-SHA256 with the shared secret.
    #[default]
    Hs256,
    /// RSA PKCS#1 v1.5 with SHA-256 (2048 to 8192-bit keys), checked with the public key.
    Rs256,
}

impl Algorithm {
    fn name(self) -> &'static str {
        match self {
            Self::Hs256 => "HS256",
            Self::Rs256 => "RS256",
        }
    }
}

#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AccessConfig {
    pub mode: Mode,
    /// The variable holding the API keys, comma-separated.
    pub api_keys_env: String,
    /// The variable holding the HS256 secret of `jwt` mode.
    pub jwt_secret_env: String,
    pub jwt_algorithm: Algorithm,
    /// PEM public key (`BEGIN PUBLIC KEY`, RSA) that checks RS256 tokens.
    pub jwt_public_key_file: std::path::PathBuf,
    /// Required `aud` of tokens; empty = not checked.
    pub jwt_audience: String,
    /// Browser origins allowed (`https://app.example`); empty = any.
    pub allowed_origins: Vec<String>,
    #[serde(skip)]
    pub api_keys: Vec<String>,
    #[serde(skip)]
    pub jwt_secret: String,
    /// The RSA public key (PKCS#1 DER) read from `jwt_public_key_file` at start.
    #[serde(skip)]
    pub jwt_public_key: Vec<u8>,
}

impl Default for AccessConfig {
    fn default() -> Self {
        Self {
            mode: Mode::None,
            api_keys_env: "DUPLEX_API_KEYS".into(),
            jwt_secret_env: "DUPLEX_JWT_SECRET".into(),
            jwt_algorithm: Algorithm::Hs256,
            jwt_public_key_file: std::path::PathBuf::new(),
            jwt_audience: String::new(),
            allowed_origins: Vec::new(),
            api_keys: Vec::new(),
            jwt_secret: String::new(),
            jwt_public_key: Vec::new(),
        }
    }
}

impl std::fmt::Debug for AccessConfig {
    // The keys and the secret only show whether they are set.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccessConfig")
            .field("mode", &self.mode)
            .field("api_keys", &format!("({} set)", self.api_keys.len()))
            .field("jwt_secret", &if self.jwt_secret.is_empty() { "(unset)" } else { "(set)" })
            .field("jwt_algorithm", &self.jwt_algorithm)
            .field("jwt_public_key_file", &self.jwt_public_key_file)
            .field("jwt_audience", &self.jwt_audience)
            .field("allowed_origins", &self.allowed_origins)
            .finish()
    }
}

/// A refused request: the status and a sentence for the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denied {
    pub status: StatusCode,
    pub message: String,
}

impl axum::response::IntoResponse for Denied {
    fn into_response(self) -> axum::response::Response {
        (self.status, self.message).into_response()
    }
}

fn unauthorized(message: &str) -> Denied {
    Denied { status: StatusCode::UNAUTHORIZED, message: message.into() }
}

/// A short fingerprint of a credential: counted by, never shown.
fn digest(credential: &str) -> String {
    use sha2::Digest as _;
    Sha256::digest(credential.as_bytes())[..8].iter().map(|b| format!("{b:02x}")).collect()
}

/// Equal without telling by its timing where two strings differ.
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl AccessConfig {
    /// Fills the keys and secret from the environment.
    pub fn apply_env(&mut self, env: &impl Fn(&str) -> Option<String>) {
        if let Some(keys) = env(&self.api_keys_env) {
            self.api_keys = keys.split(',').map(str::trim).filter(|k| !k.is_empty()).map(String::from).collect();
        }
        if let Some(secret) = env(&self.jwt_secret_env) {
            self.jwt_secret = secret;
        }
    }

    /// Reads the RS256 public key (at start; a no-op otherwise or when read).
    pub fn load_public_key(&mut self) -> Result<(), String> {
        if self.mode != Mode::Jwt || self.jwt_algorithm != Algorithm::Rs256 || !self.jwt_public_key.is_empty() {
            return Ok(());
        }
        let path = &self.jwt_public_key_file;
        let pem = std::fs::read(path).map_err(|e| format!("access.jwt_public_key_file {}: {e}", path.display()))?;
        self.jwt_public_key = rsa_public_key(&pem)
            .ok_or_else(|| format!("access.jwt_public_key_file {}: not a PEM RSA public key", path.display()))?;
        Ok(())
    }

    pub fn validate(&self) -> Result<(), String> {
        match self.mode {
            Mode::ApiKey if self.api_keys.is_empty() => {
                Err(format!("access.mode is api_key but ${} holds no key", self.api_keys_env))
            }
            Mode::Jwt if self.jwt_algorithm == Algorithm::Rs256 => {
                if self.jwt_public_key_file.as_os_str().is_empty() && self.jwt_public_key.is_empty() {
                    Err("access.jwt_algorithm is RS256 but access.jwt_public_key_file is not set".into())
                } else {
                    Ok(())
                }
            }
            Mode::Jwt if self.jwt_secret.len() < 32 => {
                Err(format!("access.mode is jwt but ${} is shorter than 32 bytes", self.jwt_secret_env))
            }
            _ => Ok(()),
        }
    }

    /// Lets the request through, naming who it is (for per-credential
    /// limits: a digest of the API key, or the token's `sub`; `None` when
    /// nobody is asked), or says why not.
    pub fn check(&self, headers: &HeaderMap, query_token: Option<&str>) -> Result<Option<String>, Denied> {
        if !self.allowed_origins.is_empty()
            && let Some(origin) = headers.get(header::ORIGIN).and_then(|o| o.to_str().ok())
            && !self.allowed_origins.iter().any(|o| o == origin)
        {
            return Err(Denied { status: StatusCode::FORBIDDEN, message: format!("origin {origin} is not allowed") });
        }
        if self.mode == Mode::None {
            return Ok(None);
        }
        let bearer = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim);
        let Some(credential) = bearer.or(query_token).filter(|c| !c.is_empty()) else {
            return Err(unauthorized("credentials required: send `Authorization: Bearer <token>` or `?token=<token>`"));
        };
        match self.mode {
            Mode::None => Ok(None),
            Mode::ApiKey => {
                // Every key is compared, so the time taken does not say which came close.
                let matched = self.api_keys.iter().fold(false, |hit, key| hit | same(key, credential));
                if matched {
                    Ok(Some(format!("key:{}", digest(credential))))
                } else {
                    Err(unauthorized("invalid API key"))
                }
            }
            Mode::Jwt => self.check_jwt(credential).map(Some),
        }
    }

    /// The token's subject (`sub`, else a digest of the token) once it is valid.
    fn check_jwt(&self, token: &str) -> Result<String, Denied> {
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let mut parts = token.split('.');
        let (Some(head), Some(body), Some(signature), None) = (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(unauthorized("malformed token: expected header.payload.signature"));
        };
        let header: serde_json::Value = b64
            .decode(head)
            .ok()
            .and_then(|h| serde_json::from_slice(&h).ok())
            .ok_or_else(|| unauthorized("malformed token header"))?;
        let algorithm = self.jwt_algorithm.name();
        if header["alg"] != algorithm {
            return Err(unauthorized(&format!("token algorithm must be {algorithm}")));
        }
        let signature = b64.decode(signature).map_err(|_| unauthorized("malformed token signature"))?;
        let signed = format!("{head}.{body}");
        match self.jwt_algorithm {
            Algorithm::Hs256 => {
                let mut mac = Hmac::<Sha256>::new_from_slice(self.jwt_secret.as_bytes())
                    .map_err(|_| unauthorized("token signing is not configured"))?;
                mac.update(signed.as_bytes());
                mac.verify_slice(&signature).map_err(|_| unauthorized("token signature is invalid"))?;
            }
            Algorithm::Rs256 => {
                let key = ring::signature::UnparsedPublicKey::new(
                    &ring::signature::RSA_PKCS1_2048_8192_SHA256,
                    &self.jwt_public_key,
                );
                key.verify(signed.as_bytes(), &signature).map_err(|_| unauthorized("token signature is invalid"))?;
            }
        }
        let claims: serde_json::Value = b64
            .decode(body)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or_else(|| unauthorized("malformed token claims"))?;
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_secs();
        match claims["exp"].as_u64() {
            None => return Err(unauthorized("token has no expiry (exp)")),
            Some(exp) if exp <= now => return Err(unauthorized("token has expired")),
            _ => {}
        }
        if claims["nbf"].as_u64().is_some_and(|nbf| nbf > now) {
            return Err(unauthorized("token is not valid yet (nbf)"));
        }
        if !self.jwt_audience.is_empty() {
            let aud = &claims["aud"];
            let ok = aud == self.jwt_audience.as_str()
                || aud.as_array().is_some_and(|a| a.iter().any(|v| v == self.jwt_audience.as_str()));
            if !ok {
                return Err(unauthorized("token is not for this audience (aud)"));
            }
        }
        Ok(match claims["sub"].as_str() {
            Some(sub) => format!("sub:{sub}"),
            None => format!("token:{}", digest(token)),
        })
    }
}

/// The PKCS#1 `RSAPublicKey` inside a PEM `PUBLIC KEY` (SubjectPublicKeyInfo),
/// as ring takes it: the SPKI's BIT STRING, checked to be an RSA key.
fn rsa_public_key(pem: &[u8]) -> Option<Vec<u8>> {
    use rustls_pki_types::pem::PemObject;
    let spki = rustls_pki_types::SubjectPublicKeyInfoDer::from_pem_slice(pem).ok()?;
    let (tag, spki, _) = der(&spki)?;
    let (algorithm_tag, algorithm, rest) = der(spki)?;
    let (oid_tag, oid, _) = der(algorithm)?;
    let (bits_tag, bits, _) = der(rest)?;
    // 1.2.840.113549.1.1.1, rsaEncryption.
    const RSA: [u8; 9] = [0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01];
    let ok = tag == 0x30 && algorithm_tag == 0x30 && oid_tag == 0x06 && oid == RSA && bits_tag == 0x03;
    (ok && bits.first() == Some(&0)).then(|| bits[1..].to_vec())
}

/// One DER element: tag, contents, and what follows it.
fn der(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (first as usize, rest)
    } else {
        let n = (first & 0x7f) as usize;
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        (rest[..n].iter().fold(0usize, |acc, b| (acc << 8) | *b as usize), &rest[n..])
    };
    (rest.len() >= len).then(|| (tag, &rest[..len], &rest[len..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jwt(secret: &str, claims: serde_json::Value) -> String {
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let head = b64.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
        let body = b64.encode(claims.to_string());
        let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
        mac.update(format!("{head}.{body}").as_bytes());
        format!("{head}.{body}.{}", b64.encode(mac.finalize().into_bytes()))
    }

    fn now() -> u64 {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
    }

    fn bearer(token: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, format!("Bearer {token}").parse().unwrap());
        h
    }

    const SECRET: &str = "a-test-secret-of-at-least-32-bytes!!";

    #[test]
    fn api_keys_from_the_environment_and_their_refusals() {
        let mut a = AccessConfig { mode: Mode::ApiKey, ..Default::default() };
        assert!(a.validate().unwrap_err().contains("DUPLEX_API_KEYS"));
        a.apply_env(&|k: &str| (k == "DUPLEX_API_KEYS").then(|| "k-one, k-two".to_string()));
        a.validate().unwrap();
        assert!(a.check(&bearer("k-two"), None).is_ok());
        assert!(a.check(&HeaderMap::new(), Some("k-one")).is_ok());
        assert_eq!(a.check(&bearer("k-thre"), None).unwrap_err().message, "invalid API key");
        let missing = a.check(&HeaderMap::new(), None).unwrap_err();
        assert_eq!(missing.status, StatusCode::UNAUTHORIZED);
        assert!(missing.message.contains("Authorization: Bearer"));
        assert!(!format!("{a:?}").contains("k-one"), "keys are not logged");
    }

    #[test]
    fn jwt_signature_expiry_and_audience_are_checked() {
        let a = AccessConfig {
            mode: Mode::Jwt,
            jwt_secret: SECRET.into(),
            jwt_audience: "duplex".into(),
            ..Default::default()
        };
        let good = jwt(SECRET, serde_json::json!({"sub": "u", "aud": "duplex", "exp": now() + 60}));
        assert!(a.check(&bearer(&good), None).is_ok());
        let expired = jwt(SECRET, serde_json::json!({"aud": "duplex", "exp": now() - 1}));
        assert_eq!(a.check(&bearer(&expired), None).unwrap_err().message, "token has expired");
        let forged =
            jwt("another-secret-of-at-least-32-bytes!!", serde_json::json!({"aud": "duplex", "exp": now() + 60}));
        assert_eq!(a.check(&bearer(&forged), None).unwrap_err().message, "token signature is invalid");
        let elsewhere = jwt(SECRET, serde_json::json!({"aud": "other", "exp": now() + 60}));
        assert!(a.check(&bearer(&elsewhere), None).unwrap_err().message.contains("audience"));
        let forever = jwt(SECRET, serde_json::json!({"aud": "duplex"}));
        assert!(a.check(&bearer(&forever), None).unwrap_err().message.contains("no expiry"));
        assert!(a.check(&bearer("not.a-token"), None).unwrap_err().message.contains("malformed"));
        let none_alg =
            format!("{}.{}.", base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(br#"{"alg":"none"}"#), "e30");
        assert!(a.check(&bearer(&none_alg), None).unwrap_err().message.contains("HS256"));
    }

    fn rs256(claims: serde_json::Value) -> String {
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let head = b64.encode(br#"{"alg":"RS256","typ":"JWT"}"#);
        let body = b64.encode(claims.to_string());
        use rustls_pki_types::pem::PemObject;
        let key =
            rustls_pki_types::PrivatePkcs8KeyDer::from_pem_slice(include_bytes!("../testdata/jwt-rs256-test.key"))
                .unwrap();
        let pair = ring::signature::RsaKeyPair::from_pkcs8(key.secret_pkcs8_der()).unwrap();
        let mut signature = vec![0; pair.public().modulus_len()];
        let rng = ring::rand::SystemRandom::new();
        let signed = format!("{head}.{body}");
        pair.sign(&ring::signature::RSA_PKCS1_SHA256, &rng, signed.as_bytes(), &mut signature).unwrap();
        format!("{signed}.{}", b64.encode(signature))
    }

    #[test]
    fn rs256_tokens_are_checked_with_the_public_key_and_no_other_algorithm() {
        let mut a = AccessConfig {
            mode: Mode::Jwt,
            jwt_algorithm: Algorithm::Rs256,
            jwt_public_key_file: concat!(env!("CARGO_MANIFEST_DIR"), "/testdata/jwt-rs256-test.pub").into(),
            ..AccessConfig::default()
        };
        a.validate().unwrap();
        a.load_public_key().unwrap();
        let good = rs256(serde_json::json!({ "exp": now() + 60 }));
        assert_eq!(a.check(&bearer(&good), None), Ok(Some("token:".to_string() + &digest(&good))));
        let expired = rs256(serde_json::json!({ "exp": now() - 1 }));
        assert!(a.check(&bearer(&expired), None).unwrap_err().message.contains("expired"));
        // A flipped signature byte, and a claim changed after signing.
        let mut forged = good.clone().into_bytes();
        let last = forged.len() - 2;
        forged[last] = if forged[last] == b'A' { b'B' } else { b'A' };
        let forged = String::from_utf8(forged).unwrap();
        assert!(a.check(&bearer(&forged), None).unwrap_err().message.contains("signature"));
        let (head, rest) = good.split_once('.').unwrap();
        let sig = rest.split_once('.').unwrap().1;
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let other = b64.encode(serde_json::json!({ "exp": now() + 3600, "admin": true }).to_string());
        assert!(a.check(&bearer(&format!("{head}.{other}.{sig}")), None).unwrap_err().message.contains("signature"));
        // HS256 keyed with the public key's bytes (algorithm confusion): refused by alg.
        let pem = std::fs::read_to_string(&a.jwt_public_key_file).unwrap();
        let confused = jwt(&pem, serde_json::json!({ "exp": now() + 60 }));
        assert!(a.check(&bearer(&confused), None).unwrap_err().message.contains("RS256"));
        // Not a public key.
        a.jwt_public_key.clear();
        a.jwt_public_key_file = concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml").into();
        assert!(a.load_public_key().unwrap_err().contains("not a PEM RSA public key"));
    }

    #[test]
    fn origins_off_the_list_are_forbidden() {
        let a = AccessConfig { allowed_origins: vec!["https://app.example".into()], ..Default::default() };
        let mut h = HeaderMap::new();
        assert!(a.check(&h, None).is_ok(), "no Origin: not a browser");
        h.insert(header::ORIGIN, "https://app.example".parse().unwrap());
        assert!(a.check(&h, None).is_ok());
        h.insert(header::ORIGIN, "https://evil.example".parse().unwrap());
        let denied = a.check(&h, None).unwrap_err();
        assert_eq!(denied.status, StatusCode::FORBIDDEN);
        assert!(denied.message.contains("evil.example"));
    }
}
