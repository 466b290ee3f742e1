//! Serving: binds the gRPC port, reports NOT_SERVING until the preloaded
//! models are warm, then SERVING; on shutdown reports NOT_SERVING, lets open
//! streams finish within the grace period, stops the rest, and exits.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use duplex_proto::TtsServiceServer;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::service::{Service, State};

/// Longest pause between checks for abandoned sessions.
const MAX_SWEEP_INTERVAL: Duration = Duration::from_secs(30);
/// After the grace period, how long stopped streams get to send their final frames.
const STOP_FLUSH: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: String, source: std::io::Error },
    #[error("preloading {0}")]
    Preload(#[from] crate::models::ModelError),
    #[error("gRPC server: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("{0}")]
    Config(#[from] duplex_config::ConfigError),
    #[error("reflection service: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
}

/// tonic's TLS settings for `tls`, reading its files now; `None` when off.
fn grpc_tls(tls: &duplex_config::tls::ServerTls) -> Result<Option<tonic::transport::ServerTlsConfig>, ServeError> {
    use duplex_config::tls::read_pem;
    use tonic::transport::{Certificate, Identity, ServerTlsConfig};
    if !tls.enabled() {
        return Ok(None);
    }
    let identity =
        Identity::from_pem(read_pem(&tls.cert_file, "TLS certificate")?, read_pem(&tls.key_file, "TLS key")?);
    let mut config = ServerTlsConfig::new().identity(identity);
    if tls.mutual() {
        config = config.client_ca_root(Certificate::from_pem(read_pem(&tls.client_ca_file, "TLS client CA")?));
    }
    Ok(Some(config))
}

/// Binds the configured address and serves until `shutdown` is cancelled.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), ServeError> {
    let addr = format!("{}:{}", config.grpc.host, config.grpc.port);
    let listener = TcpListener::bind(&addr).await.map_err(|source| ServeError::Bind { addr, source })?;
    let metrics = bind_metrics(&config).await?;
    serve(listener, metrics, config, shutdown).await
}

/// The metrics listener, when enabled.
async fn bind_metrics(config: &Config) -> Result<Option<TcpListener>, ServeError> {
    if !config.metrics.enabled {
        return Ok(None);
    }
    let addr = format!("{}:{}", config.metrics.host, config.metrics.port);
    TcpListener::bind(&addr).await.map(Some).map_err(|source| ServeError::Bind { addr, source })
}

/// A worker running in this process (tests, the demo).
#[derive(Debug)]
pub struct Handle {
    pub addr: SocketAddr,
    /// Where `/metrics` is served, when enabled.
    pub metrics_addr: Option<SocketAddr>,
    pub shutdown: CancellationToken,
    pub join: tokio::task::JoinHandle<Result<(), ServeError>>,
}

/// Binds (port 0 allowed) and serves in a task; returns once the port is bound.
pub async fn spawn(config: Config) -> Result<Handle, ServeError> {
    let addr = format!("{}:{}", config.grpc.host, config.grpc.port);
    let listener = TcpListener::bind(&addr).await.map_err(|source| ServeError::Bind { addr: addr.clone(), source })?;
    let local = listener.local_addr().map_err(|source| ServeError::Bind { addr, source })?;
    let metrics = bind_metrics(&config).await?;
    let metrics_addr = metrics.as_ref().and_then(|l| l.local_addr().ok());
    let shutdown = CancellationToken::new();
    let join = tokio::spawn(serve(listener, metrics, config, shutdown.clone()));
    Ok(Handle { addr: local, metrics_addr, shutdown, join })
}

pub async fn serve(
    listener: TcpListener,
    metrics: Option<TcpListener>,
    config: Config,
    shutdown: CancellationToken,
) -> Result<(), ServeError> {
    let addr = listener.local_addr().ok();
    let grace = Duration::from_millis(config.shutdown_grace_ms);
    let preload = config.preload.clone();
    let state = Arc::new(State::new(config));
    let metrics_stop = CancellationToken::new();
    let _metrics_stop = metrics_stop.clone().drop_guard();
    let metrics_server = metrics.map(|l| crate::metrics::serve(l, state.clone(), metrics_stop.clone()));

    let (reporter, health) = tonic_health::server::health_reporter();
    reporter.set_not_serving::<TtsServiceServer<Service>>().await;
    reporter.set_service_status("", tonic_health::ServingStatus::NotServing).await;
    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(duplex_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(duplex_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()?;

    // Closed after the streams are drained; the server then finishes open requests and exits.
    let server_stop = CancellationToken::new();
    let mut builder = tonic::transport::Server::builder();
    if let Some(tls) = grpc_tls(&state.config.grpc.tls)? {
        builder = builder.tls_config(tls)?;
    }
    let server = builder
        .tcp_nodelay(true)
        .add_service(health)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(TtsServiceServer::new(Service(state.clone())))
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), server_stop.clone().cancelled_owned());
    let server = tokio::spawn(server);
    tracing::info!(addr = ?addr, name = %state.config.name, "worker listening; warming models");

    #[cfg(feature = "piper")]
    if state.config.models.iter().any(|m| matches!(m, crate::engines::EngineConfig::Piper(_))) {
        // A failure here surfaces as each Piper model's load error.
        if let Err(e) = duplex_piper::init_runtime(&state.config.onnxruntime_library) {
            tracing::error!(error = %e, "ONNX Runtime unavailable; Piper voices cannot load");
        }
    }
    for model in &preload {
        tokio::select! {
            loaded = state.models.load(model) => match loaded {
                Ok(_) => {}
                // Without its default model the worker is of no use: fail loudly.
                Err(e) if *model == state.config.default_model => {
                    server_stop.cancel();
                    return Err(e.into());
                }
                Err(e) => tracing::error!(error = %e, "preload failed; other models keep serving"),
            },
            _ = shutdown.cancelled() => break,
        }
    }
    let mut registrar = None;
    if !shutdown.is_cancelled() {
        reporter.set_serving::<TtsServiceServer<Service>>().await;
        reporter.set_service_status("", tonic_health::ServingStatus::Serving).await;
        tracing::info!(addr = ?addr, models = ?state.models.resident().keys().collect::<Vec<_>>(), "worker SERVING");
        // Registered only once warm, so routing never picks a cold worker.
        if let (true, Some(bound)) = (state.config.registry.enabled(), addr) {
            let advertised = crate::registry::advertise_addr(&state, bound);
            let snapshot_state = state.clone();
            let snapshot = move || crate::registry::record(&snapshot_state, &advertised);
            match duplex_discovery::spawn(&state.config.registry, &state.config.name, snapshot) {
                Ok(handle) => registrar = Some(handle),
                Err(e) => tracing::error!(error = %e, "not registering in Redis"),
            }
        }
    }

    let idle = Duration::from_millis(state.config.limits.session_idle_timeout_ms);
    let sweep = idle.div_f64(2.0).min(MAX_SWEEP_INTERVAL);
    let mut sweeps = tokio::time::interval(sweep);
    let mut evictions = tokio::time::interval(Duration::from_millis(state.config.model_cache.eviction_interval_ms));
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = sweeps.tick() => {
                state.sessions.expire(idle);
            }
            _ = evictions.tick() => {
                state.models.evict_expired();
            }
        }
    }
    // Leave the registry first, so no new session is routed here while draining.
    if let Some(r) = registrar {
        r.deregister().await;
    }
    state.accepting.store(false, Ordering::Relaxed);
    reporter.set_not_serving::<TtsServiceServer<Service>>().await;
    reporter.set_service_status("", tonic_health::ServingStatus::NotServing).await;
    tracing::info!(sessions = state.sessions.len(), grace_ms = grace.as_millis() as u64, "draining");
    state.tasks.close();
    if tokio::time::timeout(grace, state.tasks.wait()).await.is_err() {
        tracing::warn!("grace period over; stopping open streams");
        state.sessions_token.cancel();
        let _ = tokio::time::timeout(STOP_FLUSH, state.tasks.wait()).await;
    }
    server_stop.cancel();
    match tokio::time::timeout(STOP_FLUSH, server).await {
        Ok(Ok(result)) => result?,
        Ok(Err(join)) => tracing::error!(error = %join, "server task failed"),
        Err(_) => tracing::warn!("server did not close its connections in time"),
    }
    metrics_stop.cancel();
    if let Some(m) = metrics_server {
        let _ = m.await;
    }
    tracing::info!("worker stopped");
    Ok(())
}

/// Checks the gRPC health of the worker on 127.0.0.1:`port` (container health checks).
pub async fn probe(port: u16) -> anyhow::Result<()> {
    use tonic_health::pb::health_check_response::ServingStatus;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{port}"))?
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(2))
        .connect()
        .await?;
    let mut client = tonic_health::pb::health_client::HealthClient::new(channel);
    let req = tonic_health::pb::HealthCheckRequest { service: "tts.TTSService".into() };
    let status = client.check(req).await?.into_inner().status;
    anyhow::ensure!(status == ServingStatus::Serving as i32, "worker is not SERVING (status {status})");
    Ok(())
}
