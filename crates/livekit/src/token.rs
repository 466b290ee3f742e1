//! Access tokens and webhook checks, signed with the configured API key and
//! secret (HS256, LiveKit's claims).
//!
//! A browser asks for a token for one room and one identity; both names are
//! checked (characters, length, the room allow-list) before anything is
//! signed, and the token lives `token_ttl_s`. Our agent gets a token of kind
//! `agent` for the room it is sent to.

use std::time::Duration;

use livekit_api::access_token::{AccessToken, TokenVerifier, VideoGrants};
use livekit_api::webhooks::WebhookReceiver;
use livekit_protocol as proto;

use crate::LiveKitConfig;

/// Longest room or identity name we sign.
const MAX_NAME_CHARS: usize = 128;

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("{what} must be 1 to {MAX_NAME_CHARS} characters of letters, digits, '-', '_' or '.'")]
    BadName { what: String },
    #[error("room {0:?} is not one this server joins (transport.livekit.allowed_rooms)")]
    RoomNotAllowed(String),
    #[error("LiveKit is not configured (transport.livekit.url, api_key and the secret)")]
    NotConfigured,
    #[error("token: {0}")]
    Sign(String),
    #[error("webhook refused: {0}")]
    Webhook(String),
}

/// Checks a room or identity name: what LiveKit accepts everywhere, and
/// nothing that needs escaping in a URL or a log line.
pub fn check_name(what: &str, name: &str) -> Result<(), TokenError> {
    let ok = !name.is_empty()
        && name.chars().count() <= MAX_NAME_CHARS
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok { Ok(()) } else { Err(TokenError::BadName { what: what.into() }) }
}

/// Signs tokens and checks webhooks for one LiveKit project.
#[derive(Clone)]
pub struct Tokens {
    api_key: String,
    api_secret: String,
    ttl: Duration,
    allowed_rooms: Vec<String>,
    agent_identity: String,
}

impl std::fmt::Debug for Tokens {
    // The secret stays out of logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokens").field("api_key", &self.api_key).field("ttl", &self.ttl).finish_non_exhaustive()
    }
}

impl Tokens {
    pub fn new(config: &LiveKitConfig) -> Result<Self, TokenError> {
        if !config.enabled() {
            return Err(TokenError::NotConfigured);
        }
        Ok(Self {
            api_key: config.api_key.clone(),
            api_secret: config.api_secret.clone(),
            ttl: Duration::from_secs(config.token_ttl_s),
            allowed_rooms: config.allowed_rooms.clone(),
            agent_identity: config.agent_identity.clone(),
        })
    }

    /// How long minted tokens live.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// The room is a valid name this server serves.
    pub fn check_room(&self, room: &str) -> Result<(), TokenError> {
        check_name("room", room)?;
        let allowed = self.allowed_rooms.is_empty()
            || self.allowed_rooms.iter().any(|pattern| match pattern.strip_suffix('*') {
                Some(prefix) => room.starts_with(prefix),
                None => room == pattern,
            });
        if allowed { Ok(()) } else { Err(TokenError::RoomNotAllowed(room.into())) }
    }

    /// A browser's token: join `room` as `identity`, publish its microphone,
    /// subscribe, send data.
    pub fn for_user(&self, room: &str, identity: &str) -> Result<String, TokenError> {
        self.check_room(room)?;
        check_name("identity", identity)?;
        if identity == self.agent_identity {
            return Err(TokenError::BadName { what: "identity (it is the agent's)".into() });
        }
        self.sign(room, identity, None)
    }

    /// Our agent's token for `room`.
    pub fn for_agent(&self, room: &str) -> Result<String, TokenError> {
        self.check_room(room)?;
        self.sign(room, &self.agent_identity, Some("agent"))
    }

    fn sign(&self, room: &str, identity: &str, kind: Option<&str>) -> Result<String, TokenError> {
        let grants = VideoGrants {
            room_join: true,
            room: room.into(),
            can_publish: Some(true),
            can_subscribe: Some(true),
            can_publish_data: Some(true),
            agent: kind == Some("agent"),
            ..Default::default()
        };
        let mut token = AccessToken::with_api_key(&self.api_key, &self.api_secret)
            .with_identity(identity)
            .with_ttl(self.ttl)
            .with_grants(grants);
        if let Some(kind) = kind {
            token = token.with_kind(kind);
        }
        token.to_jwt().map_err(|e| TokenError::Sign(e.to_string()))
    }

    /// A webhook from the server, its `Authorization` token and body hash checked.
    pub fn webhook(&self, body: &str, authorization: &str) -> Result<proto::WebhookEvent, TokenError> {
        let token = authorization.strip_prefix("Bearer ").unwrap_or(authorization);
        WebhookReceiver::new(TokenVerifier::with_api_key(&self.api_key, &self.api_secret))
            .receive(body, token)
            .map_err(|e| TokenError::Webhook(e.to_string()))
    }

    /// The claims of a token we signed (checks signature and expiry).
    pub fn verify(&self, token: &str) -> Result<livekit_api::access_token::Claims, TokenError> {
        TokenVerifier::with_api_key(&self.api_key, &self.api_secret)
            .verify(token)
            .map_err(|e| TokenError::Sign(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens(allowed: &[&str]) -> Tokens {
        let config = LiveKitConfig {
            url: "ws://127.0.0.1:7880".into(),
            api_key: "devkey".into(),
            api_secret: "a-secret-of-at-least-32-characters!!".into(),
            allowed_rooms: allowed.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        };
        Tokens::new(&config).unwrap()
    }

    #[test]
    fn a_user_token_grants_one_room_to_one_identity_for_the_ttl() {
        let t = tokens(&[]);
        let jwt = t.for_user("support-1", "alice").unwrap();
        let claims = t.verify(&jwt).unwrap();
        assert_eq!(claims.sub, "alice");
        assert_eq!(claims.iss, "devkey");
        assert_eq!(claims.video.room, "support-1");
        assert!(claims.video.room_join && claims.video.can_publish() && claims.video.can_subscribe());
        assert!(!claims.video.agent && !claims.video.room_admin && !claims.video.room_create);
        let lifetime = claims.exp as i64 - claims.nbf as i64;
        assert!((590..=610).contains(&lifetime), "ttl {lifetime} s");
    }

    #[test]
    fn the_agent_token_is_of_kind_agent() {
        let t = tokens(&[]);
        let claims = t.verify(&t.for_agent("support-1").unwrap()).unwrap();
        assert_eq!(claims.sub, "duplex-agent");
        assert_eq!(claims.kind, "agent");
        assert!(claims.video.agent);
    }

    #[test]
    fn bad_names_and_rooms_outside_the_allow_list_are_refused() {
        let t = tokens(&["support-*", "lobby"]);
        assert!(t.for_user("support-7", "bob").is_ok());
        assert!(t.for_user("lobby", "bob").is_ok());
        assert!(matches!(t.for_user("admin", "bob"), Err(TokenError::RoomNotAllowed(_))));
        assert!(matches!(t.for_user("lobby", ""), Err(TokenError::BadName { .. })));
        assert!(matches!(t.for_user("lobby", "bob smith"), Err(TokenError::BadName { .. })));
        assert!(matches!(t.for_user("lob/by", "bob"), Err(TokenError::BadName { .. })));
        assert!(matches!(t.for_user("lobby", &"x".repeat(129)), Err(TokenError::BadName { .. })));
        assert!(matches!(t.for_user("lobby", "duplex-agent"), Err(TokenError::BadName { .. })));
    }

    #[test]
    fn a_forged_or_foreign_token_does_not_verify() {
        let t = tokens(&[]);
        let jwt = t.for_user("room", "alice").unwrap();
        let mut forged = jwt.clone();
        forged.pop();
        forged.push(if jwt.ends_with('A') { 'B' } else { 'A' });
        assert!(t.verify(&forged).is_err());
        let other = LiveKitConfig {
            url: "ws://x".into(),
            api_key: "devkey".into(),
            api_secret: "another-secret-of-at-least-32-chars!".into(),
            ..Default::default()
        };
        assert!(Tokens::new(&other).unwrap().verify(&jwt).is_err());
    }

    #[test]
    fn unconfigured_livekit_mints_nothing() {
        assert!(matches!(Tokens::new(&LiveKitConfig::default()), Err(TokenError::NotConfigured)));
    }
}
