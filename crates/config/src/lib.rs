//! Config-file plumbing shared by the services. Each service owns its typed
//! config (with `deny_unknown_fields`); this crate reads the YAML, names the
//! file in errors and parses environment overrides in one way.

pub mod tls;

use std::path::Path;

use duplex_telemetry::LogConfig;
use serde::de::DeserializeOwned;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("invalid config {path}: {source}")]
    Parse { path: String, source: serde_yaml::Error },
    #[error("invalid environment variable {name}={value:?}: {reason}")]
    Env { name: &'static str, value: String, reason: String },
    #[error("invalid config: {0}")]
    Invalid(String),
}

/// Parses a config from YAML text.
pub fn parse<T: DeserializeOwned>(text: &str) -> Result<T, serde_yaml::Error> {
    serde_yaml::from_str(text)
}

/// Reads `path`, or returns the defaults when there is none.
pub fn read<T: DeserializeOwned + Default>(path: Option<&Path>) -> Result<T, ConfigError> {
    let Some(path) = path else { return Ok(T::default()) };
    let name = || path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: name(), source })?;
    parse(&text).map_err(|source| ConfigError::Parse { path: name(), source })
}

/// Parses one environment override.
pub fn env_value<T: std::str::FromStr>(name: &'static str, value: String) -> Result<T, ConfigError>
where
    T::Err: std::fmt::Display,
{
    value.parse().map_err(|e: T::Err| ConfigError::Env { name, reason: e.to_string(), value })
}

/// `LOG_LEVEL` and `LOG_FORMAT`, read the same way by every service.
pub fn apply_log_env(log: &mut LogConfig, env: &impl Fn(&str) -> Option<String>) -> Result<(), ConfigError> {
    if let Some(v) = env("LOG_LEVEL") {
        log.level = v.to_lowercase();
    }
    if let Some(v) = env("LOG_FORMAT") {
        log.format = serde_yaml::from_str(&v).map_err(|_| ConfigError::Env {
            name: "LOG_FORMAT",
            value: v,
            reason: "expected text or json".into(),
        })?;
    }
    Ok(())
}

/// The OpenTelemetry exporter's standard variables: `OTEL_EXPORTER_OTLP_ENDPOINT`,
/// `OTEL_EXPORTER_OTLP_PROTOCOL` (`http/protobuf` or `http/json`), `OTEL_SERVICE_NAME`.
pub fn apply_traces_env(
    traces: &mut duplex_telemetry::TracesConfig,
    env: &impl Fn(&str) -> Option<String>,
) -> Result<(), ConfigError> {
    if let Some(v) = env("OTEL_EXPORTER_OTLP_ENDPOINT") {
        traces.otlp_endpoint = v;
    }
    if let Some(v) = env("OTEL_EXPORTER_OTLP_PROTOCOL") {
        traces.protocol = match v.as_str() {
            "http/protobuf" => duplex_telemetry::OtlpProtocol::HttpProtobuf,
            "http/json" => duplex_telemetry::OtlpProtocol::HttpJson,
            _ => {
                return Err(ConfigError::Env {
                    name: "OTEL_EXPORTER_OTLP_PROTOCOL",
                    value: v,
                    reason: "expected http/protobuf or http/json".into(),
                });
            }
        };
    }
    if let Some(v) = env("OTEL_SERVICE_NAME") {
        traces.service_name = v;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_name_the_file_and_the_variable() {
        let e = read::<LogConfig>(Some(Path::new("/nonexistent/x.yaml"))).unwrap_err().to_string();
        assert!(e.contains("/nonexistent/x.yaml"), "{e}");
        let e = env_value::<u16>("PORT", "seventy".into()).unwrap_err().to_string();
        assert!(e.contains("PORT=\"seventy\""), "{e}");
        let mut log = LogConfig::default();
        let e = apply_log_env(&mut log, &|k| (k == "LOG_FORMAT").then(|| "xml".to_string())).unwrap_err();
        assert!(e.to_string().contains("expected text or json"));
        apply_log_env(&mut log, &|k| (k == "LOG_LEVEL").then(|| "DEBUG".to_string())).unwrap();
        assert_eq!(log.level, "debug");
    }
}
