//! Worker configuration (`configs/worker.yaml`): typed, unknown keys rejected,
//! environment overrides applied in one place.

use std::path::{Path, PathBuf};

use crate::engines::EngineConfig;
use crate::models::ModelCache;
use duplex_discovery::RegistryConfig;
use duplex_telemetry::{LogConfig, TracesConfig};
use duplex_tts::mock::MockConfig;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Name this worker goes by (`worker:<name>` in the registry).
    pub name: String,
    pub grpc: GrpcConfig,
    /// Prometheus `/metrics` on a port of its own.
    pub metrics: MetricsConfig,
    /// Model used when a session names none.
    pub default_model: String,
    /// Models loaded (and warmed) before the worker reports SERVING.
    pub preload: Vec<String>,
    /// Every model this worker can serve.
    pub models: Vec<EngineConfig>,
    /// Registration in the Redis worker registry (off when `redis_url` is empty).
    pub registry: RegistryConfig,
    /// Residency: how many models stay loaded, and for how long when idle.
    pub model_cache: ModelCache,
    pub limits: Limits,
    /// After SIGTERM: how long open streams may finish before they are stopped.
    pub shutdown_grace_ms: u64,
    /// The ONNX Runtime shared library (for Piper voices); `duplex assets` puts it here.
    pub onnxruntime_library: PathBuf,
    pub log: LogConfig,
    /// OpenTelemetry traces over OTLP (off unless an endpoint is set).
    pub traces: TracesConfig,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GrpcConfig {
    pub host: String,
    pub port: u16,
    /// TLS for gRPC (off while `tls.cert_file` is empty); `tls.client_ca_file` = mutual TLS.
    pub tls: duplex_config::tls::ServerTls,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    pub enabled: bool,
    pub host: String,
    /// 9464, the Prometheus exporter port of OpenTelemetry's conventions (0 = any free port).
    pub port: u16,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self { enabled: true, host: "0.0.0.0".into(), port: 9464 }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Sessions open at once; StartSession beyond this is RESOURCE_EXHAUSTED.
    pub max_sessions: usize,
    /// Characters in one utterance; beyond this the stream fails with RESOURCE_EXHAUSTED.
    pub max_text_chars: usize,
    /// Utterances received but not yet fully sent, per stream.
    pub max_pending_utterances: usize,
    /// A session with no open stream and no call for this long is ended
    /// (a client that vanished without EndSession).
    pub session_idle_timeout_ms: u64,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            name: "worker-0".into(),
            grpc: GrpcConfig::default(),
            metrics: MetricsConfig::default(),
            default_model: "mock".into(),
            preload: vec!["mock".into()],
            models: vec![EngineConfig::Mock(MockConfig::default())],
            registry: RegistryConfig::default(),
            model_cache: ModelCache::default(),
            limits: Limits::default(),
            shutdown_grace_ms: 5_000,
            onnxruntime_library: PathBuf::from(".cache/assets/onnxruntime/libonnxruntime.so.1.31.1"),
            log: LogConfig::default(),
            traces: TracesConfig::default(),
        }
    }
}

impl Default for GrpcConfig {
    fn default() -> Self {
        Self { host: "0.0.0.0".into(), port: 7001, tls: Default::default() }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_sessions: 1_000,
            max_text_chars: 10_000,
            max_pending_utterances: 16,
            session_idle_timeout_ms: 300_000,
        }
    }
}

pub use duplex_config::ConfigError;

/// Environment variables that override the file (documented in docs/CONFIG.md).
pub const ENV_OVERRIDES: &[(&str, &str)] = &[
    ("WORKER_NAME", "name"),
    ("WORKER_HOST", "grpc.host"),
    ("WORKER_PORT", "grpc.port"),
    ("WORKER_METRICS_PORT", "metrics.port"),
    ("DEFAULT_MODEL", "default_model"),
    ("MAX_CONCURRENT_SESSIONS", "limits.max_sessions"),
    ("ORT_DYLIB_PATH", "onnxruntime_library"),
    ("REDIS_URL", "registry.redis_url"),
    ("WORKER_ADVERTISE_ADDR", "registry.advertise_addr"),
    ("LOG_LEVEL", "log.level"),
    ("LOG_FORMAT", "log.format"),
    ("OTEL_EXPORTER_OTLP_ENDPOINT", "traces.otlp_endpoint"),
    ("OTEL_EXPORTER_OTLP_PROTOCOL", "traces.protocol"),
    ("OTEL_SERVICE_NAME", "traces.service_name"),
];

impl Config {
    /// Reads the file (or the defaults when `path` is `None`), then applies the environment.
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
        if let Some(v) = env("WORKER_NAME") {
            self.name = v;
        }
        if let Some(v) = env("WORKER_HOST") {
            self.grpc.host = v;
        }
        if let Some(v) = env("WORKER_PORT") {
            self.grpc.port = parsed("WORKER_PORT", v)?;
        }
        if let Some(v) = env("WORKER_METRICS_PORT") {
            self.metrics.port = parsed("WORKER_METRICS_PORT", v)?;
        }
        if let Some(v) = env("DEFAULT_MODEL") {
            self.default_model = v;
        }
        if let Some(v) = env("MAX_CONCURRENT_SESSIONS") {
            self.limits.max_sessions = parsed("MAX_CONCURRENT_SESSIONS", v)?;
        }
        if let Some(v) = env("ORT_DYLIB_PATH") {
            self.onnxruntime_library = PathBuf::from(v);
        }
        if let Some(v) = env("REDIS_URL") {
            self.registry.redis_url = v;
        }
        if let Some(v) = env("WORKER_ADVERTISE_ADDR") {
            self.registry.advertise_addr = v;
        }
        duplex_config::apply_traces_env(&mut self.traces, &env)?;
        duplex_config::apply_log_env(&mut self.log, &env)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        self.grpc.tls.validate("grpc.tls")?;
        let known = |id: &str| self.models.iter().any(|m| m.model_id() == id);
        let r = &self.registry;
        if r.enabled() && (r.heartbeat_ms == 0 || r.heartbeat_ms >= r.ttl_ms) {
            return Err(ConfigError::Invalid(format!(
                "registry: heartbeat_ms ({}) must be > 0 and below ttl_ms ({})",
                r.heartbeat_ms, r.ttl_ms
            )));
        }
        if self.model_cache.max_resident == 0 || self.model_cache.eviction_interval_ms == 0 {
            return Err(ConfigError::Invalid("model_cache: max_resident and eviction_interval_ms must be > 0".into()));
        }
        if self.models.is_empty() {
            return Err(ConfigError::Invalid("models: at least one model is required".into()));
        }
        let mut ids: Vec<&str> = self.models.iter().map(|m| m.model_id()).collect();
        ids.sort_unstable();
        if let Some(w) = ids.windows(2).find(|w| w[0] == w[1]) {
            return Err(ConfigError::Invalid(format!("models: model_id {:?} appears twice", w[0])));
        }
        if !known(&self.default_model) {
            return Err(ConfigError::Invalid(format!(
                "default_model {:?} is not one of the models ({})",
                self.default_model,
                ids.join(", ")
            )));
        }
        if let Some(p) = self.preload.iter().find(|p| !known(p)) {
            return Err(ConfigError::Invalid(format!("preload: {p:?} is not one of the models ({})", ids.join(", "))));
        }
        let l = &self.limits;
        if l.max_sessions == 0
            || l.max_text_chars == 0
            || l.max_pending_utterances == 0
            || l.session_idle_timeout_ms == 0
        {
            return Err(ConfigError::Invalid("limits: every limit must be > 0".into()));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_config_parses() {
        let text = include_str!("../../../configs/worker.yaml");
        let c = Config::parse(text).expect("configs/worker.yaml parses");
        c.validate().expect("and is valid");
        assert_eq!(c.grpc.port, 7001);
    }

    #[test]
    fn unknown_keys_are_rejected_with_their_name() {
        let err = Config::parse("grpc:\n  prot: 7001\n").unwrap_err().to_string();
        assert!(err.contains("prot"), "{err}");
        let err = Config::parse("models:\n  - engine: mock\n    ms_per_chr: 3\n").unwrap_err().to_string();
        assert!(err.contains("ms_per_chr"), "{err}");
        let err = Config::parse("models:\n  - engine: nope\n").unwrap_err().to_string();
        assert!(err.contains("nope"), "{err}");
    }

    #[test]
    fn env_overrides_and_bad_values() {
        let env = |k: &str| match k {
            "WORKER_PORT" => Some("7002".to_string()),
            "LOG_FORMAT" => Some("json".to_string()),
            _ => None,
        };
        let c = Config::load(None, env).unwrap();
        assert_eq!(c.grpc.port, 7002);
        assert_eq!(c.log.format, duplex_telemetry::LogFormat::Json);
        let bad = Config::load(None, |k| (k == "WORKER_PORT").then(|| "seventy".to_string()));
        assert!(matches!(bad, Err(ConfigError::Env { name: "WORKER_PORT", .. })));
    }

    #[test]
    fn default_model_must_exist() {
        let c = Config { default_model: "nope".into(), ..Config::default() };
        assert!(c.validate().unwrap_err().to_string().contains("nope"));
    }
}
