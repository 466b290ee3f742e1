//! `transport.livekit` in the orchestrator's config.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Where the LiveKit server is, how we sign tokens and how our agent behaves.
/// The API secret is never read from the file: it comes from the variable
/// named by `api_secret_env` (LIVEKIT_API_SECRET).
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LiveKitConfig {
    /// The server's URL (`ws://host:7880`, `wss://…`); empty = LiveKit is off.
    pub url: String,
    /// The URL browsers are given with their token, when they reach the
    /// server by another name than we do (compose: `ws://localhost:7880`);
    /// empty = `url`.
    pub public_url: String,
    pub api_key: String,
    /// The variable holding the API secret.
    pub api_secret_env: String,
    /// Read from `api_secret_env` when the config is loaded; never serialized.
    #[serde(skip)]
    pub api_secret: String,
    /// Lifetime of tokens minted for browsers.
    pub token_ttl_s: u64,
    /// Rooms tokens may be minted and joined for: exact names, or prefixes
    /// ending in `*`. Empty = any valid room name.
    pub allowed_rooms: Vec<String>,
    /// Our participant's identity in every room.
    pub agent_identity: String,
    /// The agent leaves a room that has had no one else in it this long.
    pub empty_room_grace_ms: u64,
    /// Where the agent's UDP sockets bind.
    pub udp_bind: String,
    pub opus_bitrate_bps: i32,
    /// The `livekit-client` browser library the page's LiveKit mode loads
    /// (`duplex assets` fetches it from npm).
    pub client_library: PathBuf,
}

impl Default for LiveKitConfig {
    fn default() -> Self {
        Self {
            url: String::new(),
            public_url: String::new(),
            api_key: String::new(),
            api_secret_env: "LIVEKIT_API_SECRET".into(),
            api_secret: String::new(),
            token_ttl_s: 600,
            allowed_rooms: Vec::new(),
            agent_identity: "duplex-agent".into(),
            empty_room_grace_ms: 10_000,
            udp_bind: "0.0.0.0:0".into(),
            opus_bitrate_bps: 32_000,
            client_library: PathBuf::from(".cache/assets/web/livekit-client.umd.js"),
        }
    }
}

impl std::fmt::Debug for LiveKitConfig {
    // Everything but the secret, which only shows whether it is set.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LiveKitConfig")
            .field("url", &self.url)
            .field("public_url", &self.public_url)
            .field("api_key", &self.api_key)
            .field("api_secret_env", &self.api_secret_env)
            .field("api_secret", &if self.api_secret.is_empty() { "(unset)" } else { "(set)" })
            .field("token_ttl_s", &self.token_ttl_s)
            .field("allowed_rooms", &self.allowed_rooms)
            .field("agent_identity", &self.agent_identity)
            .field("empty_room_grace_ms", &self.empty_room_grace_ms)
            .field("udp_bind", &self.udp_bind)
            .field("opus_bitrate_bps", &self.opus_bitrate_bps)
            .field("client_library", &self.client_library)
            .finish()
    }
}

impl LiveKitConfig {
    /// LiveKit is usable: a URL, a key and its secret.
    pub fn enabled(&self) -> bool {
        !self.url.is_empty() && !self.api_key.is_empty() && !self.api_secret.is_empty()
    }

    /// What browsers are told to connect to.
    pub fn browser_url(&self) -> &str {
        if self.public_url.is_empty() { &self.url } else { &self.public_url }
    }

    pub fn validate(&self) -> Result<(), String> {
        if !self.url.is_empty() {
            if !["ws://", "wss://", "http://", "https://"].iter().any(|s| self.url.starts_with(s)) {
                return Err(format!(
                    "transport.livekit.url must start with ws://, wss://, http:// or https:// (got {:?})",
                    self.url
                ));
            }
            if self.api_key.is_empty() || self.api_secret.is_empty() {
                return Err(format!(
                    "transport.livekit.url is set but the API key or secret is missing (api_key, ${})",
                    self.api_secret_env
                ));
            }
        }
        if self.token_ttl_s == 0 || self.token_ttl_s > 24 * 3600 {
            return Err("transport.livekit.token_ttl_s must be 1..=86400".into());
        }
        crate::token::check_name("transport.livekit.agent_identity", &self.agent_identity).map_err(|e| e.to_string())
    }
}
