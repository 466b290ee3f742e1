//! HTTP surface: the WebSocket endpoint (at `/` and `/ws`), the browser page
//! (`crate::web`), `/health`,
//! `/ready`, `/metrics`, an optional second listener for the probes, and
//! graceful shutdown.

use std::collections::HashSet;
use std::net::SocketAddr;

use crate::rate::Bucket;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Deserialize;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{Config, ConfigError};
use crate::metrics::Metrics;
use crate::protocol::AudioFormat;
use crate::worker::WorkerPool;

/// Messages larger than the configured limit are answered with INVALID_MESSAGE
/// up to this multiple of it; beyond, the socket closes (1009) before buffering more.
const HARD_MESSAGE_LIMIT_FACTOR: usize = 16;
/// Longest session id a reconnecting client may name.
const MAX_SESSION_ID_BYTES: usize = 64;
/// How long sessions get to say goodbye on shutdown.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// State shared by every request and session.
#[derive(Debug)]
pub struct AppState {
    pub config: Config,
    pub pool: Arc<WorkerPool>,
    pub metrics: Metrics,
    /// One permit per session; none left = BUSY.
    pub session_slots: Arc<Semaphore>,
    pub shutdown: CancellationToken,
    /// Background work (EndSession calls) awaited on shutdown.
    pub tasks: TaskTracker,
    /// Ids of the sessions open now (a reconnect may not take a live one).
    pub live: Arc<Mutex<HashSet<String>>>,
    /// VAD, speech recognition and the responder.
    pub conversation: crate::conversation::Parts,
    /// The LiveKit rooms our agent is in.
    pub livekit: crate::livekit::Rooms,
    /// Open WebSocket connections per client address.
    pub per_ip: Counts<std::net::IpAddr>,
    /// Open sessions per credential (API key or token subject).
    pub per_key: Counts<String>,
}

/// What one client address or credential holds: its open connections and
/// the message rate its sessions share.
#[derive(Debug)]
pub struct Entry {
    open: usize,
    rate: Arc<Mutex<Bucket>>,
}

/// Open connections per client address, or sessions per credential.
pub type Counts<K> = Arc<Mutex<std::collections::HashMap<K, Entry>>>;

/// One connection's place under a per-address or per-credential limit;
/// dropping it gives the place back (and the shared rate with the last one).
#[derive(Debug)]
pub struct Held<K: std::hash::Hash + Eq + Clone> {
    key: K,
    counts: Counts<K>,
    rate: Arc<Mutex<Bucket>>,
}

impl<K: std::hash::Hash + Eq + Clone> Held<K> {
    /// `None` when `key` already holds `limit` places (0 = no limit).
    pub(crate) fn claim(counts: &Counts<K>, key: K, limit: usize, rate: impl FnOnce() -> Bucket) -> Option<Self> {
        let mut map = counts.lock().expect("limit counts lock");
        let entry = map.entry(key.clone()).or_insert_with(|| Entry { open: 0, rate: Arc::new(Mutex::new(rate())) });
        if limit > 0 && entry.open >= limit {
            return None;
        }
        entry.open += 1;
        Some(Self { key, counts: counts.clone(), rate: entry.rate.clone() })
    }

    /// The message rate shared by every session of this address or credential.
    pub(crate) fn rate(&self) -> Arc<Mutex<Bucket>> {
        self.rate.clone()
    }
}

impl<K: std::hash::Hash + Eq + Clone> Drop for Held<K> {
    fn drop(&mut self) {
        let mut map = self.counts.lock().expect("limit counts lock");
        if let Some(entry) = map.get_mut(&self.key) {
            entry.open -= 1;
            if entry.open == 0 {
                map.remove(&self.key);
            }
        }
    }
}

/// The rate every session of one client (address or credential) shares.
pub(crate) fn client_rate(state: &AppState) -> Bucket {
    let per_s = state.config.session.max_messages_per_s_per_client;
    // 0 = no limit: a bucket that never runs dry.
    let per_s = if per_s == 0 { u32::MAX } else { per_s };
    Bucket::new(per_s, per_s.saturating_mul(2), std::time::Instant::now())
}

/// A connection refused by a per-address or per-credential limit: 429 with a retry hint.
#[derive(Debug)]
pub(crate) struct TooMany(String);

impl TooMany {
    /// Counted as BUSY, like the server-wide session limit.
    fn new(state: &AppState, message: String) -> Self {
        state.metrics.errors.with_label_values(&[crate::protocol::ErrorCode::Busy.as_str()]).inc();
        Self(message)
    }
}

impl IntoResponse for TooMany {
    fn into_response(self) -> Response {
        (StatusCode::TOO_MANY_REQUESTS, [(header::RETRY_AFTER, "5")], self.0).into_response()
    }
}

/// The place of a connection under `session.max_connections_per_ip`, or why not.
fn claim_for_address(state: &AppState, ip: std::net::IpAddr) -> Result<Held<std::net::IpAddr>, TooMany> {
    let limit = state.config.session.max_connections_per_ip;
    Held::claim(&state.per_ip, ip, limit, || client_rate(state)).ok_or_else(|| {
        TooMany::new(state, format!("too many connections from {ip} ({limit} open); close one or retry later"))
    })
}

/// The place of a session under `session.max_sessions_per_key`, or why not.
pub(crate) fn claim_for_credential(state: &AppState, who: Option<String>) -> Result<Option<Held<String>>, TooMany> {
    let limit = state.config.session.max_sessions_per_key;
    let Some(who) = who else { return Ok(None) };
    let held = Held::claim(&state.per_key, who, limit, || client_rate(state)).ok_or_else(|| {
        TooMany::new(state, format!("too many sessions for this credential ({limit} open); close one or retry later"))
    })?;
    Ok(Some(held))
}

/// A session id held while its session runs; dropping it frees the id.
#[derive(Debug)]
pub struct LiveId {
    id: String,
    live: Arc<Mutex<HashSet<String>>>,
}

impl LiveId {
    /// `None` when a session with this id is open now.
    pub(crate) fn claim(live: &Arc<Mutex<HashSet<String>>>, id: String) -> Option<Self> {
        live.lock().expect("live ids lock").insert(id.clone()).then(|| Self { id, live: live.clone() })
    }

    pub fn as_str(&self) -> &str {
        &self.id
    }
}

impl std::fmt::Display for LiveId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.id)
    }
}

impl Drop for LiveId {
    fn drop(&mut self) {
        self.live.lock().expect("live ids lock").remove(&self.id);
    }
}

/// A session id a client may bring back: what `session_start` gave it (a
/// UUID) or its own of the same alphabet.
fn valid_session_id(id: &str) -> bool {
    (1..=MAX_SESSION_ID_BYTES).contains(&id.len())
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: String, source: std::io::Error },
    #[error("HTTP server: {0}")]
    Serve(std::io::Error),
}

#[derive(Debug, Default, Deserialize)]
struct ConnectParams {
    #[serde(default)]
    audio_format: Option<AudioFormat>,
    /// Reconnect: the id `session_start` gave an earlier connection; the
    /// session is routed to the worker that one used (its affinity record).
    #[serde(default)]
    session_id: Option<String>,
    /// The credential, for clients that cannot send `Authorization` (browsers' WebSockets).
    #[serde(default)]
    token: Option<String>,
}

async fn websocket(
    State(state): State<Arc<AppState>>,
    Query(params): Query<ConnectParams>,
    headers: axum::http::HeaderMap,
    axum::extract::ConnectInfo(peer): axum::extract::ConnectInfo<SocketAddr>,
    upgrade: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Response {
    let Ok(upgrade) = upgrade else {
        return crate::web::index();
    };
    let who = match state.config.access.check(&headers, params.token.as_deref()) {
        Ok(who) => who,
        Err(denied) => {
            state.metrics.errors.with_label_values(&["UNAUTHORIZED"]).inc();
            return denied.into_response();
        }
    };
    let hard_limit = state.config.transport.websocket.max_message_bytes * HARD_MESSAGE_LIMIT_FACTOR;
    let format = params.audio_format.unwrap_or_default();
    let id = match params.session_id {
        Some(id) if !valid_session_id(&id) => {
            let msg = format!("session_id must be 1-{MAX_SESSION_ID_BYTES} characters of A-Z a-z 0-9 - _");
            return (StatusCode::BAD_REQUEST, msg).into_response();
        }
        Some(id) => id,
        None => uuid::Uuid::new_v4().to_string(),
    };
    let ip_slot = match claim_for_address(&state, peer.ip()) {
        Ok(slot) => slot,
        Err(refused) => return refused.into_response(),
    };
    let key_slot = match claim_for_credential(&state, who) {
        Ok(slot) => slot,
        Err(refused) => return refused.into_response(),
    };
    let Some(id) = LiveId::claim(&state.live, id) else {
        return (StatusCode::CONFLICT, "that session is connected now").into_response();
    };
    upgrade.max_message_size(hard_limit).max_frame_size(hard_limit).on_upgrade(move |socket| async move {
        let mut rates = vec![ip_slot.rate()];
        rates.extend(key_slot.as_ref().map(Held::rate));
        crate::session::run(socket, state, format, id, rates).await;
        drop((ip_slot, key_slot));
    })
}

async fn health() -> &'static str {
    "ok"
}

async fn ready(State(state): State<Arc<AppState>>) -> Response {
    match state.pool.is_serving().await {
        Ok(()) => (StatusCode::OK, "ready").into_response(),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {e}")).into_response(),
    }
}

async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], state.metrics.render()).into_response()
}

fn probes() -> Router<Arc<AppState>> {
    Router::new().route("/health", get(health)).route("/ready", get(ready)).route("/metrics", get(metrics))
}

/// A running orchestrator (tests, the demo).
#[derive(Debug)]
pub struct Handle {
    pub addr: SocketAddr,
    pub health_addr: Option<SocketAddr>,
    pub shutdown: CancellationToken,
    pub join: tokio::task::JoinHandle<Result<(), ServeError>>,
}

async fn bind(host: &str, port: u16) -> Result<TcpListener, ServeError> {
    let addr = format!("{host}:{port}");
    TcpListener::bind(&addr).await.map_err(|source| ServeError::Bind { addr, source })
}

/// Binds both listeners (port 0 allowed) and serves in a task.
pub async fn spawn(config: Config) -> Result<Handle, ServeError> {
    let ws = &config.transport.websocket;
    let main = bind(&ws.host, ws.port).await?;
    let probe = if config.health.enabled { Some(bind(&config.health.host, config.health.port).await?) } else { None };
    let addr = main.local_addr().map_err(ServeError::Serve)?;
    let health_addr = probe.as_ref().and_then(|l| l.local_addr().ok());
    let shutdown = CancellationToken::new();
    let join = tokio::spawn(serve(main, probe, config, shutdown.clone()));
    Ok(Handle { addr, health_addr, shutdown, join })
}

/// Binds the configured ports and serves until `shutdown` is cancelled.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), ServeError> {
    let ws = &config.transport.websocket;
    let main = bind(&ws.host, ws.port).await?;
    let probe = if config.health.enabled { Some(bind(&config.health.host, config.health.port).await?) } else { None };
    serve(main, probe, config, shutdown).await
}

pub async fn serve(
    main: TcpListener,
    probe: Option<TcpListener>,
    mut config: Config,
    shutdown: CancellationToken,
) -> Result<(), ServeError> {
    config.access.load_public_key().map_err(ConfigError::Invalid)?;
    let metrics = Metrics::new();
    let parts = {
        let (conversation, metrics) = (config.conversation.clone(), metrics.clone());
        tokio::task::spawn_blocking(move || crate::conversation::Parts::load(&conversation, &metrics))
            .await
            .unwrap_or_else(|_| crate::conversation::Parts::none("loading the conversation models panicked"))
    };
    let config_livekit = config.transport.livekit.clone();
    let tls = config.transport.websocket.tls.clone();
    let tls = if tls.enabled() { Some(tls.rustls()?) } else { None };
    let state = Arc::new(AppState {
        pool: Arc::new(WorkerPool::new(&config.routing)?),
        session_slots: Arc::new(Semaphore::new(config.session.max_sessions)),
        config,
        metrics,
        conversation: parts,
        shutdown: shutdown.clone(),
        live: Arc::default(),
        tasks: TaskTracker::new(),
        livekit: crate::livekit::Rooms::new(&config_livekit),
        per_ip: Arc::default(),
        per_key: Arc::default(),
    });
    let app = Router::new()
        .route("/", get(websocket))
        .route("/ws", get(websocket))
        .route("/rtc/offer", axum::routing::post(crate::webrtc::offer))
        .merge(crate::livekit::routes())
        .merge(probes())
        .merge(crate::web::routes())
        .with_state(state.clone());
    tracing::info!(
        addr = ?main.local_addr().ok(),
        probes = ?probe.as_ref().and_then(|l| l.local_addr().ok()),
        workers = %state.pool.describe(),
        "orchestrator listening"
    );
    let probe_server = probe.map(|listener| {
        let app = probes().with_state(state.clone());
        let stop = shutdown.clone();
        tokio::spawn(crate::http::serve(listener, app, None, stop))
    });
    let main_server = tokio::spawn(crate::http::serve(main, app, tls, shutdown.clone()));

    shutdown.cancelled().await;
    tracing::info!(sessions = state.metrics.sessions_active.get(), "shutting down; closing sessions");
    state.tasks.close();
    let drained = async {
        let _ = main_server.await;
        if let Some(p) = probe_server {
            let _ = p.await;
        }
        state.tasks.wait().await;
    };
    if tokio::time::timeout(SHUTDOWN_GRACE, drained).await.is_err() {
        tracing::warn!("shutdown grace period over; exiting with connections open");
    }
    tracing::info!("orchestrator stopped");
    Ok(())
}

/// GET http://127.0.0.1:`port`/ready; Ok if it answers 200 (container health checks).
pub async fn probe(port: u16) -> anyhow::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let io = async {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
        s.write_all(b"GET /ready HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").await?;
        let mut out = String::new();
        s.read_to_string(&mut out).await?;
        Ok::<_, std::io::Error>(out)
    };
    let out = tokio::time::timeout(Duration::from_secs(3), io).await??;
    let status = out.split_whitespace().nth(1).unwrap_or("");
    anyhow::ensure!(status == "200", "not ready: {}", out.lines().last().unwrap_or(""));
    Ok(())
}
