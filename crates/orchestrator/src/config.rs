//! Orchestrator configuration (`configs/orchestrator.yaml`): typed, unknown
//! keys rejected, environment overrides applied in one place.

use std::path::{Path, PathBuf};

pub use duplex_asr::WhisperConfig;
pub use duplex_reply::{LocalConfig, OpenAiConfig};
pub use duplex_speech::VadConfig;

use duplex_telemetry::{LogConfig, TracesConfig};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub transport: Transport,
    /// Second listener with /health, /ready and /metrics only (the predecessor's 8081).
    pub health: Listen,
    pub routing: Routing,
    pub session: SessionLimits,
    pub playout: PlayoutConfig,
    pub conversation: Conversation,
    pub log: LogConfig,
    /// OpenTelemetry traces over OTLP (off unless an endpoint is set).
    pub traces: TracesConfig,
    /// Who may open conversations (API keys or signed tokens; browser origins).
    pub access: crate::access::AccessConfig,
}

/// The spoken conversation: microphone in, VAD, speech recognition, replies.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Conversation {
    /// The ONNX Runtime shared library (Silero VAD); `duplex assets` puts it here.
    pub onnxruntime_library: PathBuf,
    /// Silero VAD model; empty = microphone audio is refused.
    pub vad_model: PathBuf,
    /// Threads running VAD for all sessions (each ~0.1 ms per 32 ms window).
    pub vad_threads: usize,
    pub vad: VadConfig,
    pub asr: AsrConfig,
    pub responder: ResponderConfig,
    /// Exchanges of history given to the responder.
    pub history_turns: usize,
    /// Start the reply on the transcript made when the speech paused, before
    /// the end-of-turn silence has passed (its text waits until the turn is
    /// confirmed; if the user goes on, it is cancelled).
    pub early_reply: bool,
}

/// Which speech recogniser transcribes user turns.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "engine", rename_all = "snake_case", deny_unknown_fields)]
pub enum AsrConfig {
    /// None: speech is heard (barge-in works) but not understood.
    None,
    Whisper(WhisperConfig),
}

/// Which responder answers the user.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum ResponderConfig {
    /// Says back what it heard.
    Echo,
    /// A local language model (GGUF on candle).
    Local(LocalConfig),
    /// An OpenAI-compatible chat server (llama.cpp, vLLM, Ollama, OpenAI), streamed.
    Openai(OpenAiConfig),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Transport {
    pub websocket: WebSocketConfig,
    pub webrtc: WebRtcConfig,
    /// LiveKit rooms (`/livekit/*`); off until a URL, key and secret are set.
    pub livekit: duplex_livekit::LiveKitConfig,
}

/// The WebRTC transport (`POST /rtc/offer`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebRtcConfig {
    pub enabled: bool,
    /// Where each call's UDP socket binds (port 0 = any free port).
    pub udp_bind: String,
    /// `stun:` / `turn:` URLs given to ICE; empty = host candidates only.
    pub ice_servers: Vec<String>,
    /// Opus bitrate of the bot's voice.
    pub opus_bitrate_bps: i32,
}

impl Default for WebRtcConfig {
    fn default() -> Self {
        Self { enabled: true, udp_bind: "0.0.0.0:0".into(), ice_servers: Vec::new(), opus_bitrate_bps: 32_000 }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebSocketConfig {
    pub host: String,
    pub port: u16,
    /// Largest client message answered normally; larger ones get INVALID_MESSAGE.
    pub max_message_bytes: usize,
    /// HTTPS/WSS on this port (off while `tls.cert_file` is empty;
    /// `tls.client_ca_file` = clients must present a certificate).
    pub tls: duplex_config::tls::ServerTls,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Listen {
    pub enabled: bool,
    pub host: String,
    pub port: u16,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Routing {
    /// Redis of the worker registry; set = pick workers from it, empty = the static address.
    pub redis_url: String,
    /// How often the registry is scanned into the local view.
    pub resync_ms: u64,
    /// The worker every session uses without a registry (`grpc://host:port`).
    pub static_worker_addr: String,
    /// Model requested for sessions; empty = the worker's default.
    pub default_model: String,
    pub connect_timeout_ms: u64,
    /// StartSession and opening the stream; longer, since the worker may load
    /// the model on demand.
    pub session_start_timeout_ms: u64,
    /// No frame for this long while an utterance is playing = worker unavailable.
    pub stall_timeout_ms: u64,
    /// TLS to workers (off while `tls.ca_file` is empty; `cert_file`/`key_file` = mutual TLS).
    pub tls: duplex_config::tls::ClientTls,
    /// How long `routing:affinity:<session_id>` outlives a session's last
    /// stream: a client reconnecting with its session id within it returns
    /// to the same worker.
    pub affinity_ttl_ms: u64,
    /// Times one utterance moves to another worker after its worker fails
    /// mid-utterance (resuming from the first sentence not yet heard); past
    /// it the utterance ends with WORKER_UNAVAILABLE. 0 = no failover.
    pub max_failovers: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SessionLimits {
    /// Concurrent WebSocket sessions; more are answered BUSY.
    pub max_sessions: usize,
    /// A session with no client message and nothing playing for this long is closed.
    pub idle_timeout_ms: u64,
    /// WebSocket sessions are pinged this often; one whose client answers
    /// nothing (no pong, no message) for two periods is closed (0 = off).
    pub keepalive_ms: u64,
    pub max_duration_ms: u64,
    /// Characters in one text message.
    pub max_text_chars: usize,
    /// Characters in one utterance (all its messages): kept until it is
    /// spoken so it can resume on another worker.
    pub max_utterance_chars: usize,
    /// Concurrent WebSocket connections from one IP address; more are
    /// answered 429 (0 = no limit).
    pub max_connections_per_ip: usize,
    /// Sessions (WebSocket and WebRTC) one credential may hold open at once:
    /// an API key, or a token's `sub` (0 = no limit; needs `access.mode`).
    pub max_sessions_per_key: usize,
    /// Client messages other than microphone audio, per second and session
    /// (bursts up to `max_message_burst`); more are refused with RATE_LIMITED.
    pub max_messages_per_s: u32,
    pub max_message_burst: u32,
    /// The same, summed over every session of one client address, and of
    /// one credential (bursts of twice it; 0 = no limit).
    pub max_messages_per_s_per_client: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PlayoutConfig {
    /// Frames sent ahead of real time: the client's buffer, and what still plays after PAUSE.
    pub lookahead_frames: u32,
    /// Frames held in the orchestrator before it stops reading the worker.
    pub queue_frames: usize,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            transport: Transport::default(),
            health: Listen { enabled: true, host: "0.0.0.0".into(), port: 8081 },
            routing: Routing::default(),
            session: SessionLimits::default(),
            playout: PlayoutConfig::default(),
            conversation: Conversation::default(),
            log: LogConfig::default(),
            traces: TracesConfig::default(),
            access: crate::access::AccessConfig::default(),
        }
    }
}

impl Default for Transport {
    fn default() -> Self {
        Self {
            websocket: WebSocketConfig {
                host: "0.0.0.0".into(),
                port: 8080,
                max_message_bytes: 64 * 1024,
                tls: Default::default(),
            },
            webrtc: WebRtcConfig::default(),
            livekit: duplex_livekit::LiveKitConfig::default(),
        }
    }
}

impl Default for WebSocketConfig {
    fn default() -> Self {
        Transport::default().websocket
    }
}

impl Default for Listen {
    fn default() -> Self {
        Config::default().health
    }
}

impl Default for Routing {
    fn default() -> Self {
        Self {
            redis_url: String::new(),
            resync_ms: 1_000,
            static_worker_addr: "grpc://127.0.0.1:7001".into(),
            default_model: String::new(),
            connect_timeout_ms: 2_000,
            session_start_timeout_ms: 15_000,
            stall_timeout_ms: 5_000,
            affinity_ttl_ms: 3_600_000,
            tls: Default::default(),
            max_failovers: 2,
        }
    }
}

impl Default for SessionLimits {
    fn default() -> Self {
        Self {
            max_sessions: 1_000,
            idle_timeout_ms: 300_000,
            keepalive_ms: 15_000,
            max_duration_ms: 3_600_000,
            max_text_chars: 5_000,
            max_utterance_chars: 10_000,
            max_connections_per_ip: 32,
            max_sessions_per_key: 0,
            max_messages_per_s: 20,
            max_message_burst: 40,
            max_messages_per_s_per_client: 100,
        }
    }
}

impl Default for Conversation {
    fn default() -> Self {
        Self {
            onnxruntime_library: PathBuf::from(".cache/assets/onnxruntime/libonnxruntime.so.1.31.1"),
            vad_model: PathBuf::from(".cache/assets/vad/silero_vad.onnx"),
            vad_threads: 1,
            vad: VadConfig::default(),
            asr: AsrConfig::Whisper(WhisperConfig::default()),
            responder: ResponderConfig::Local(LocalConfig::default()),
            history_turns: 20,
            early_reply: true,
        }
    }
}

impl Default for PlayoutConfig {
    fn default() -> Self {
        Self { lookahead_frames: 1, queue_frames: 8 }
    }
}

pub use duplex_config::ConfigError;

/// Environment variables that override the file, and the key each sets.
pub const ENV_OVERRIDES: &[(&str, &str)] = &[
    ("ORCHESTRATOR_WS_HOST", "transport.websocket.host"),
    ("ORCHESTRATOR_WS_PORT", "transport.websocket.port"),
    ("ORCHESTRATOR_HEALTH_PORT", "health.port"),
    ("TTS_WORKER_ADDR", "routing.static_worker_addr"),
    ("REDIS_URL", "routing.redis_url"),
    ("DEFAULT_MODEL", "routing.default_model"),
    ("MAX_CONCURRENT_SESSIONS", "session.max_sessions"),
    ("SESSION_IDLE_TIMEOUT_S", "session.idle_timeout_ms (in seconds)"),
    ("MAX_CONNECTIONS_PER_IP", "session.max_connections_per_ip"),
    ("MAX_MESSAGES_PER_S_PER_CLIENT", "session.max_messages_per_s_per_client"),
    ("ORT_DYLIB_PATH", "conversation.onnxruntime_library"),
    ("LOG_LEVEL", "log.level"),
    ("LOG_FORMAT", "log.format"),
    ("OTEL_EXPORTER_OTLP_ENDPOINT", "traces.otlp_endpoint"),
    ("OTEL_EXPORTER_OTLP_PROTOCOL", "traces.protocol"),
    ("OTEL_SERVICE_NAME", "traces.service_name"),
    ("DUPLEX_API_KEYS", "the API keys (access.api_keys_env names the variable)"),
    ("DUPLEX_JWT_SECRET", "the HS256 token secret (access.jwt_secret_env names the variable)"),
    ("LIVEKIT_URL", "transport.livekit.url"),
    ("LIVEKIT_PUBLIC_URL", "transport.livekit.public_url"),
    ("LIVEKIT_API_KEY", "transport.livekit.api_key"),
    ("LIVEKIT_API_SECRET", "the API secret (transport.livekit.api_secret_env names the variable)"),
];

impl Config {
    pub fn load(path: Option<&Path>, env: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let mut config: Self = duplex_config::read(path)?;
        config.apply_env(env)?;
        config.validate()?;
        Ok(config)
    }

    pub fn parse(text: &str) -> Result<Self, serde_yaml::Error> {
        duplex_config::parse(text)
    }

    fn apply_env(&mut self, env: impl Fn(&str) -> Option<String>) -> Result<(), ConfigError> {
        use duplex_config::env_value as parsed;
        if let Some(v) = env("ORCHESTRATOR_WS_HOST") {
            self.transport.websocket.host = v;
        }
        if let Some(v) = env("ORCHESTRATOR_WS_PORT") {
            self.transport.websocket.port = parsed("ORCHESTRATOR_WS_PORT", v)?;
        }
        if let Some(v) = env("ORCHESTRATOR_HEALTH_PORT") {
            self.health.port = parsed("ORCHESTRATOR_HEALTH_PORT", v)?;
        }
        if let Some(v) = env("TTS_WORKER_ADDR") {
            self.routing.static_worker_addr = v;
        }
        if let Some(v) = env("REDIS_URL") {
            self.routing.redis_url = v;
        }
        if let Some(v) = env("DEFAULT_MODEL") {
            self.routing.default_model = v;
        }
        if let Some(v) = env("MAX_CONCURRENT_SESSIONS") {
            self.session.max_sessions = parsed("MAX_CONCURRENT_SESSIONS", v)?;
        }
        if let Some(v) = env("MAX_CONNECTIONS_PER_IP") {
            self.session.max_connections_per_ip = parsed("MAX_CONNECTIONS_PER_IP", v)?;
        }
        if let Some(v) = env("MAX_MESSAGES_PER_S_PER_CLIENT") {
            self.session.max_messages_per_s_per_client = parsed("MAX_MESSAGES_PER_S_PER_CLIENT", v)?;
        }
        if let Some(v) = env("SESSION_IDLE_TIMEOUT_S") {
            self.session.idle_timeout_ms = parsed::<u64>("SESSION_IDLE_TIMEOUT_S", v)?.saturating_mul(1000);
        }
        if let Some(v) = env("ORT_DYLIB_PATH") {
            self.conversation.onnxruntime_library = PathBuf::from(v);
        }
        let livekit = &mut self.transport.livekit;
        if let Some(v) = env("LIVEKIT_URL") {
            livekit.url = v;
        }
        if let Some(v) = env("LIVEKIT_PUBLIC_URL") {
            livekit.public_url = v;
        }
        if let Some(v) = env("LIVEKIT_API_KEY") {
            livekit.api_key = v;
        }
        if let Some(v) = env(&livekit.api_secret_env) {
            livekit.api_secret = v;
        }
        self.access.apply_env(&env);
        duplex_config::apply_traces_env(&mut self.traces, &env)?;
        duplex_config::apply_log_env(&mut self.log, &env)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        worker_uri(&self.routing.static_worker_addr)?;
        let s = &self.session;
        if s.max_sessions == 0
            || s.idle_timeout_ms == 0
            || s.max_duration_ms == 0
            || s.max_text_chars == 0
            || s.max_utterance_chars == 0
        {
            return Err(ConfigError::Invalid("session: every limit must be > 0".into()));
        }
        if !self.routing.redis_url.is_empty() && (self.routing.resync_ms == 0 || self.routing.affinity_ttl_ms == 0) {
            return Err(ConfigError::Invalid("routing.resync_ms and routing.affinity_ttl_ms must be > 0".into()));
        }
        self.conversation.vad.validate().map_err(ConfigError::Invalid)?;
        self.transport.livekit.validate().map_err(ConfigError::Invalid)?;
        self.access.validate().map_err(ConfigError::Invalid)?;
        if let ResponderConfig::Openai(openai) = &self.conversation.responder {
            openai.validate().map_err(|e| ConfigError::Invalid(format!("conversation.{e}")))?;
        }
        if self.conversation.vad_threads == 0 {
            return Err(ConfigError::Invalid("conversation.vad_threads must be > 0".into()));
        }
        if self.playout.queue_frames == 0 {
            return Err(ConfigError::Invalid("playout.queue_frames must be > 0".into()));
        }
        self.transport.websocket.tls.validate("transport.websocket.tls")?;
        self.routing.tls.validate("routing.tls")?;
        if self.transport.websocket.max_message_bytes < 1024 {
            return Err(ConfigError::Invalid("transport.websocket.max_message_bytes must be >= 1024".into()));
        }
        Ok(())
    }
}

/// `grpc://host:port` (or `http://`, or a bare `host:port`) as the URI tonic dials.
pub fn worker_uri(addr: &str) -> Result<String, ConfigError> {
    let rest = addr.strip_prefix("grpc://").or_else(|| addr.strip_prefix("http://")).unwrap_or(addr);
    let valid = rest.rsplit_once(':').is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
    if !valid || rest.contains('/') {
        return Err(ConfigError::Invalid(format!(
            "routing.static_worker_addr {addr:?}: expected grpc://host:port, e.g. grpc://localhost:7001"
        )));
    }
    Ok(format!("http://{rest}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_config_parses() {
        let c = Config::parse(include_str!("../../../configs/orchestrator.yaml")).expect("parses");
        c.validate().expect("valid");
        assert_eq!(c.transport.websocket.port, 8080);
        assert_eq!(c.health.port, 8081);
    }

    #[test]
    fn typos_are_named() {
        let e = Config::parse("routing:\n  static_worker_adr: x\n").unwrap_err().to_string();
        assert!(e.contains("static_worker_adr"), "{e}");
    }

    #[test]
    fn env_overrides() {
        let c = Config::load(None, |k| match k {
            "ORCHESTRATOR_WS_PORT" => Some("9000".into()),
            "TTS_WORKER_ADDR" => Some("grpc://tts:7002".into()),
            "SESSION_IDLE_TIMEOUT_S" => Some("60".into()),
            _ => None,
        })
        .unwrap();
        assert_eq!(c.transport.websocket.port, 9000);
        assert_eq!(c.routing.static_worker_addr, "grpc://tts:7002");
        assert_eq!(c.session.idle_timeout_ms, 60_000);
    }

    #[test]
    fn livekit_comes_from_the_environment_and_its_secret_stays_there() {
        let env = |k: &str| match k {
            "LIVEKIT_URL" => Some("ws://livekit:7880".into()),
            "LIVEKIT_PUBLIC_URL" => Some("ws://localhost:7880".into()),
            "LIVEKIT_API_KEY" => Some("devkey".into()),
            "LIVEKIT_API_SECRET" => Some("a-secret-nobody-may-see-0123456789".into()),
            _ => None,
        };
        let c = Config::load(None, env).unwrap();
        let lk = &c.transport.livekit;
        assert!(lk.enabled());
        assert_eq!((lk.url.as_str(), lk.browser_url()), ("ws://livekit:7880", "ws://localhost:7880"));
        assert!(
            !serde_yaml::to_string(&c).unwrap().contains("a-secret-nobody-may-see"),
            "the secret is not written out"
        );
        assert!(!format!("{c:?}").contains("a-secret-nobody-may-see"), "nor logged");
        // A URL without its secret is an error that says what is missing.
        let e = Config::load(None, |k| (k == "LIVEKIT_URL").then(|| "ws://livekit:7880".to_string())).unwrap_err();
        assert!(e.to_string().contains("LIVEKIT_API_SECRET"), "{e}");
    }

    #[test]
    fn worker_addresses() {
        assert_eq!(worker_uri("grpc://localhost:7001").unwrap(), "http://localhost:7001");
        assert_eq!(worker_uri("127.0.0.1:7001").unwrap(), "http://127.0.0.1:7001");
        assert!(worker_uri("localhost").is_err());
        assert!(worker_uri("grpc://:7001").is_err());
    }
}
