//! Process-wide telemetry for Duplex binaries: tracing subscriber setup (text
//! or JSON, level from config or `RUST_LOG`), OpenTelemetry traces exported
//! over OTLP/HTTP when an endpoint is configured (W3C trace context carried
//! across gRPC by [`propagation`]), and the shutdown signal.

pub mod propagation;

use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use tracing_subscriber::Layer as _;

/// Log output format.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// The `log:` section of every config file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// A level (`info`) or a full filter (`info,duplex_worker=debug`); `RUST_LOG` wins when set.
    pub level: String,
    pub format: LogFormat,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self { level: "info".into(), format: LogFormat::Text }
    }
}

/// OTLP wire format.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OtlpProtocol {
    /// `application/x-protobuf` (what collectors and Jaeger take on 4318).
    #[default]
    HttpProtobuf,
    HttpJson,
}

/// The `traces:` section of every config file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TracesConfig {
    /// OTLP/HTTP base URL (`http://collector:4318`); spans go to `{endpoint}/v1/traces`.
    /// Empty = no traces exported. `OTEL_EXPORTER_OTLP_ENDPOINT` sets it.
    pub otlp_endpoint: String,
    pub protocol: OtlpProtocol,
    /// `service.name` of the spans; empty = the binary's own name.
    pub service_name: String,
}

impl Default for TracesConfig {
    fn default() -> Self {
        Self { otlp_endpoint: String::new(), protocol: OtlpProtocol::HttpProtobuf, service_name: String::new() }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("invalid log filter {0:?}: {1}")]
    Filter(String, String),
    #[error("logging already initialised")]
    AlreadySet,
    #[error("traces: OTLP exporter for {endpoint:?}: {message}")]
    Exporter { endpoint: String, message: String },
}

/// Keeps the trace pipeline alive; dropping it sends what is buffered.
#[must_use = "traces stop being exported when this is dropped"]
pub struct Telemetry {
    provider: Option<opentelemetry_sdk::trace::SdkTracerProvider>,
}

impl Telemetry {
    /// Sends the spans buffered so far (tests; shutdown does it too).
    pub fn flush(&self) {
        if let Some(p) = &self.provider {
            let _ = p.force_flush();
        }
    }
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(p) = self.provider.take() {
            let _ = p.shutdown_with_timeout(std::time::Duration::from_secs(3));
        }
    }
}

/// Installs the global subscriber (and the trace exporter when
/// `traces.otlp_endpoint` is set). Call once, first thing in `main`.
pub fn init(config: &LogConfig, traces: &TracesConfig, service: &str) -> Result<Telemetry, TelemetryError> {
    use tracing_subscriber::EnvFilter;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let filter = match std::env::var("RUST_LOG") {
        Ok(f) if !f.is_empty() => EnvFilter::try_new(&f).map_err(|e| TelemetryError::Filter(f, e.to_string()))?,
        _ => EnvFilter::try_new(&config.level)
            .map_err(|e| TelemetryError::Filter(config.level.clone(), e.to_string()))?,
    };
    let provider = tracer_provider(traces, service)?;
    let otel = provider.as_ref().map(|p| {
        use opentelemetry::trace::TracerProvider as _;
        tracing_opentelemetry::layer().with_tracer(p.tracer("duplex"))
    });
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let fmt = match config.format {
        LogFormat::Text => fmt.boxed(),
        LogFormat::Json => fmt.json().flatten_event(true).with_current_span(true).with_span_list(false).boxed(),
    };
    tracing_subscriber::registry()
        .with(filter)
        .with(fmt)
        .with(otel)
        .try_init()
        .map_err(|_| TelemetryError::AlreadySet)?;
    if provider.is_some() {
        opentelemetry::global::set_text_map_propagator(opentelemetry_sdk::propagation::TraceContextPropagator::new());
        tracing::info!(endpoint = %traces.otlp_endpoint, "exporting traces over OTLP");
    }
    Ok(Telemetry { provider })
}

fn tracer_provider(
    traces: &TracesConfig,
    service: &str,
) -> Result<Option<opentelemetry_sdk::trace::SdkTracerProvider>, TelemetryError> {
    use opentelemetry_otlp::{Protocol, WithExportConfig};
    if traces.otlp_endpoint.is_empty() {
        return Ok(None);
    }
    // The exporter's HTTP client (reqwest on rustls) needs the process's crypto provider.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let endpoint = format!("{}/v1/traces", traces.otlp_endpoint.trim_end_matches('/'));
    let protocol = match traces.protocol {
        OtlpProtocol::HttpProtobuf => Protocol::HttpBinary,
        OtlpProtocol::HttpJson => Protocol::HttpJson,
    };
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(protocol)
        .with_endpoint(endpoint.clone())
        .build()
        .map_err(|e| TelemetryError::Exporter { endpoint, message: e.to_string() })?;
    let name = if traces.service_name.is_empty() { service.to_string() } else { traces.service_name.clone() };
    let resource = opentelemetry_sdk::Resource::builder().with_service_name(name).build();
    Ok(Some(
        opentelemetry_sdk::trace::SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(resource)
            .build(),
    ))
}

/// A token cancelled on the first SIGINT or SIGTERM. A second signal exits at once.
pub fn shutdown_on_signals() -> CancellationToken {
    let token = CancellationToken::new();
    let t = token.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutdown signal received; draining (send again to exit now)");
        t.cancel();
        wait_for_signal().await;
        tracing::warn!("second signal: exiting without draining");
        std::process::exit(130);
    });
    token
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate()).expect("install SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
}
