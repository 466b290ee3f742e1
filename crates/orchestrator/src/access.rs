//! Who may open a conversation (`access` in the config): nobody is asked by
//! default; with `mode: api_key` a client shows one of the keys, with
//! `mode: jwt` an HS256 token signed with the shared secret (expiry, not
//! before and, when configured, audience checked). The credential comes as
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

#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AccessConfig {
    pub mode: Mode,
    /// The variable holding the API keys, comma-separated.
    pub api_keys_env: String,
    /// The variable holding the HS256 secret of `jwt` mode.
    pub jwt_secret_env: String,
    /// Required `aud` of tokens; empty = not checked.
    pub jwt_audience: String,
    /// Browser origins allowed (`https://app.example`); empty = any.
    pub allowed_origins: Vec<String>,
    #[serde(skip)]
    pub api_keys: Vec<String>,
    #[serde(skip)]
    pub jwt_secret: String,
}

impl Default for AccessConfig {
    fn default() -> Self {
        Self {
            mode: Mode::None,
            api_keys_env: "DUPLEX_API_KEYS".into(),
            jwt_secret_env: "DUPLEX_JWT_SECRET".into(),
            jwt_audience: String::new(),
            allowed_origins: Vec::new(),
            api_keys: Vec::new(),
            jwt_secret: String::new(),
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

    pub fn validate(&self) -> Result<(), String> {
        match self.mode {
            Mode::ApiKey if self.api_keys.is_empty() => {
                Err(format!("access.mode is api_key but ${} holds no key", self.api_keys_env))
            }
            Mode::Jwt if self.jwt_secret.len() < 32 => {
                Err(format!("access.mode is jwt but ${} is shorter than 32 bytes", self.jwt_secret_env))
            }
            _ => Ok(()),
        }
    }

    /// Lets the request through or says why not.
    pub fn check(&self, headers: &HeaderMap, query_token: Option<&str>) -> Result<(), Denied> {
        if !self.allowed_origins.is_empty()
            && let Some(origin) = headers.get(header::ORIGIN).and_then(|o| o.to_str().ok())
            && !self.allowed_origins.iter().any(|o| o == origin)
        {
            return Err(Denied { status: StatusCode::FORBIDDEN, message: format!("origin {origin} is not allowed") });
        }
        if self.mode == Mode::None {
            return Ok(());
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
            Mode::None => Ok(()),
            Mode::ApiKey => {
                // Every key is compared, so the time taken does not say which came close.
                let matched = self.api_keys.iter().fold(false, |hit, key| hit | same(key, credential));
                if matched { Ok(()) } else { Err(unauthorized("invalid API key")) }
            }
            Mode::Jwt => self.check_jwt(credential),
        }
    }

    fn check_jwt(&self, token: &str) -> Result<(), Denied> {
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
        if header["alg"] != "HS256" {
            return Err(unauthorized("token algorithm must be HS256"));
        }
        let signature = b64.decode(signature).map_err(|_| unauthorized("malformed token signature"))?;
        let mut mac = Hmac::<Sha256>::new_from_slice(self.jwt_secret.as_bytes())
            .map_err(|_| unauthorized("token signing is not configured"))?;
        mac.update(format!("{head}.{body}").as_bytes());
        mac.verify_slice(&signature).map_err(|_| unauthorized("token signature is invalid"))?;
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
        Ok(())
    }
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
