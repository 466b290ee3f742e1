//! The orchestrator's side of the worker contract. Workers come from a static
//! address or from the Redis registry (a local view refreshed by SCAN); each
//! worker has one shared HTTP/2 connection reused by every session and turn,
//! and each session keeps one Synthesize stream open across turns.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use duplex_discovery::{Affinity, View, Want, WorkerRecord};
use duplex_proto::TtsServiceClient;
use duplex_proto::tts::{
    AudioFrame, ControlCommand, ControlRequest, EndSessionRequest, ListModelsRequest, LoadModelRequest,
    StartSessionRequest, TextChunk,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status, Streaming};

use crate::config::{ConfigError, Routing, worker_uri};

/// A voice a session can choose (`config` message `model`).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Voice {
    pub id: String,
    pub languages: Vec<String>,
}

/// Text chunks queued toward the worker per session. Text is tiny and the
/// worker reads it at once; full means the worker is stuck, and the client
/// is told so instead of queueing more.
const TEXT_QUEUE: usize = 64;
/// HTTP/2 stream window toward us: audio the worker may push ahead of playout
/// per session (~0.7 s). Smaller means less discarded work on STOP.
const STREAM_WINDOW_BYTES: u32 = 64 * 1024;
/// Connection window shared by all sessions on the connection.
const CONNECTION_WINDOW_BYTES: u32 = 32 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("TTS worker {addr} is unreachable: {message}")]
    Unreachable { addr: String, message: String },
    #[error("TTS worker {addr} did not answer within {timeout_ms} ms")]
    Timeout { addr: String, timeout_ms: u64 },
    #[error("TTS worker refused: {0}")]
    Refused(String),
    #[error("TTS worker is busy: {0}")]
    Busy(String),
    #[error("no TTS worker can serve this session: {0}")]
    NoWorker(#[from] duplex_discovery::NoWorker),
}

/// What a session asks of its worker.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Route {
    /// `None` = `routing.default_model`.
    pub model: Option<String>,
    /// BCP-47 tag; `None` = any.
    pub language: Option<String>,
}

/// One worker a session talks to.
#[derive(Debug, Clone)]
pub struct WorkerRef {
    pub name: String,
    pub addr: String,
    channel: Channel,
}

enum Source {
    Static(WorkerRef),
    Registry {
        view: View,
        channels: Arc<Mutex<HashMap<String, Channel>>>,
        /// Registered workers whose gRPC health is not SERVING (or that do
        /// not answer), from the periodic health check.
        unhealthy: Arc<Mutex<HashSet<String>>>,
        /// Workers that failed, with the time they did (unix seconds): skipped
        /// until they heartbeat again after it.
        down: Mutex<HashMap<String, f64>>,
        /// This process's open streams per worker (fresher than heartbeats).
        ours: Arc<Mutex<HashMap<String, u32>>>,
        affinity: Arc<Affinity>,
        _stop: tokio_util::sync::DropGuard,
    },
}

/// Dials workers; cheap to share (`Arc`).
pub struct WorkerPool {
    source: Source,
    timeout: Duration,
    dial: Dial,
    start_timeout: Duration,
    default_model: String,
}

impl std::fmt::Debug for WorkerPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerPool").field("routing", &self.describe()).finish()
    }
}

/// How workers are dialled: the connect timeout, and TLS when `routing.tls` is on.
#[derive(Clone)]
struct Dial {
    timeout: Duration,
    tls: Option<tonic::transport::ClientTlsConfig>,
}

impl Dial {
    fn new(routing: &Routing) -> Result<Self, ConfigError> {
        use duplex_config::tls::read_pem;
        use tonic::transport::{Certificate, ClientTlsConfig, Identity};
        let t = &routing.tls;
        let tls = if t.enabled() {
            let mut c = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read_pem(&t.ca_file, "TLS CA")?));
            if !t.cert_file.as_os_str().is_empty() {
                c = c.identity(Identity::from_pem(
                    read_pem(&t.cert_file, "TLS certificate")?,
                    read_pem(&t.key_file, "TLS key")?,
                ));
            }
            if !t.domain_name.is_empty() {
                c = c.domain_name(t.domain_name.clone());
            }
            Some(c)
        } else {
            None
        };
        Ok(Self { timeout: Duration::from_millis(routing.connect_timeout_ms), tls })
    }
}

fn endpoint(uri: String, dial: &Dial) -> Result<Channel, ConfigError> {
    let uri = match (&dial.tls, uri.strip_prefix("http://")) {
        (Some(_), Some(rest)) => format!("https://{rest}"),
        _ => uri,
    };
    let mut endpoint = Endpoint::from_shared(uri).map_err(|e| ConfigError::Invalid(format!("worker address: {e}")))?;
    if let Some(tls) = &dial.tls {
        endpoint = endpoint.tls_config(tls.clone()).map_err(|e| ConfigError::Invalid(format!("routing.tls: {e}")))?;
    }
    Ok(endpoint
        .connect_timeout(dial.timeout)
        .tcp_nodelay(true)
        .initial_stream_window_size(STREAM_WINDOW_BYTES)
        .initial_connection_window_size(CONNECTION_WINDOW_BYTES)
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(5))
        .keep_alive_while_idle(true)
        .connect_lazy())
}

fn unix_now() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

impl WorkerPool {
    /// Must be called inside the runtime (the registry watcher is a task).
    pub fn new(routing: &Routing) -> Result<Self, ConfigError> {
        let dial = Dial::new(routing)?;
        let timeout = dial.timeout;
        let source = if routing.redis_url.is_empty() {
            let uri = worker_uri(&routing.static_worker_addr)?;
            let addr = routing.static_worker_addr.clone();
            Source::Static(WorkerRef { name: addr.clone(), addr, channel: endpoint(uri, &dial)? })
        } else {
            let stop = CancellationToken::new();
            let every = Duration::from_millis(routing.resync_ms);
            let view = duplex_discovery::watch(&routing.redis_url, every, stop.clone())
                .map_err(|e| ConfigError::Invalid(format!("routing.redis_url {:?}: {e}", routing.redis_url)))?;
            let channels: Arc<Mutex<HashMap<String, Channel>>> = Arc::default();
            let unhealthy: Arc<Mutex<HashSet<String>>> = Arc::default();
            let health =
                check_health(view.clone(), channels.clone(), unhealthy.clone(), every, dial.clone(), stop.clone());
            tokio::spawn(health);
            let affinity = Affinity::new(&routing.redis_url, Duration::from_millis(routing.affinity_ttl_ms))
                .map_err(|e| ConfigError::Invalid(format!("routing.redis_url {:?}: {e}", routing.redis_url)))?;
            Source::Registry {
                view,
                channels,
                unhealthy,
                down: Mutex::default(),
                ours: Arc::default(),
                affinity: Arc::new(affinity),
                _stop: stop.drop_guard(),
            }
        };
        Ok(Self {
            source,
            timeout,
            dial,
            start_timeout: Duration::from_millis(routing.session_start_timeout_ms),
            default_model: routing.default_model.clone(),
        })
    }

    /// Whether a failed worker's sessions can move to another one: with the
    /// registry; a static address has no other to go to.
    pub fn fails_over(&self) -> bool {
        matches!(self.source, Source::Registry { .. })
    }

    /// For logs: the static address or "redis registry".
    pub fn describe(&self) -> String {
        match &self.source {
            Source::Static(w) => w.addr.clone(),
            Source::Registry { .. } => "workers from the Redis registry".into(),
        }
    }

    fn map_status(&self, addr: &str, s: Status) -> WorkerError {
        match s.code() {
            Code::Unavailable | Code::Unknown | Code::Cancelled | Code::DeadlineExceeded => {
                WorkerError::Unreachable { addr: addr.to_string(), message: s.message().to_string() }
            }
            Code::ResourceExhausted => WorkerError::Busy(s.message().to_string()),
            _ => WorkerError::Refused(format!("{:?}: {}", s.code(), s.message())),
        }
    }

    async fn within<T>(
        &self,
        addr: &str,
        limit: Duration,
        fut: impl Future<Output = Result<T, Status>>,
    ) -> Result<T, WorkerError> {
        match tokio::time::timeout(limit, fut).await {
            Ok(r) => r.map_err(|s| self.map_status(addr, s)),
            Err(_) => Err(WorkerError::Timeout { addr: addr.to_string(), timeout_ms: limit.as_millis() as u64 }),
        }
    }

    /// The voices (models) sessions can ask for: the static worker's list,
    /// or every model of the registered workers (languages merged).
    pub async fn voices(&self) -> Result<Vec<Voice>, WorkerError> {
        let mut voices: Vec<Voice> = match &self.source {
            Source::Static(w) => {
                let mut client = TtsServiceClient::new(w.channel.clone());
                let models = self.within(&w.addr, self.timeout, client.list_models(ListModelsRequest {})).await?;
                models
                    .into_inner()
                    .models
                    .into_iter()
                    .map(|m| Voice { id: m.model_id, languages: m.languages })
                    .collect()
            }
            Source::Registry { view, .. } => {
                let mut by_id: std::collections::BTreeMap<String, Vec<String>> = Default::default();
                for record in view.workers() {
                    for m in record.models {
                        let languages = by_id.entry(m.model_id).or_default();
                        languages
                            .extend(m.languages.into_iter().filter(|l| !languages.contains(l)).collect::<Vec<_>>());
                    }
                }
                by_id.into_iter().map(|(id, languages)| Voice { id, languages }).collect()
            }
        };
        voices.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(voices)
    }

    /// Ready to take sessions? Static: the worker answers gRPC health SERVING.
    /// Registry: at least one live worker is registered.
    pub async fn is_serving(&self) -> Result<(), WorkerError> {
        match &self.source {
            Source::Static(w) => {
                let mut health = tonic_health::pb::health_client::HealthClient::new(w.channel.clone());
                let req = tonic_health::pb::HealthCheckRequest { service: "tts.TTSService".into() };
                let resp = self.within(&w.addr, self.timeout, health.check(req)).await?.into_inner();
                if resp.status == tonic_health::pb::health_check_response::ServingStatus::Serving as i32 {
                    Ok(())
                } else {
                    Err(WorkerError::Unreachable {
                        addr: w.addr.clone(),
                        message: "not SERVING (warming up or draining)".into(),
                    })
                }
            }
            Source::Registry { view, .. } => {
                if view.workers().is_empty() {
                    Err(duplex_discovery::NoWorker::NoneRegistered.into())
                } else {
                    Ok(())
                }
            }
        }
    }

    /// The worker a new stream should go to, and whether it must load the
    /// model first.
    fn choose(&self, route: &Route, affinity: Option<&str>) -> Result<(WorkerRef, bool), WorkerError> {
        match &self.source {
            Source::Static(w) => Ok((w.clone(), false)),
            Source::Registry { view, channels, unhealthy, down, ours, .. } => {
                let workers = view.workers();
                let model = route.model.as_deref().or(Some(self.default_model.as_str())).filter(|m| !m.is_empty());
                let ours_now = ours.lock().expect("pool lock").clone();
                let down_now = down.lock().expect("pool lock").clone();
                let unhealthy_now = unhealthy.lock().expect("pool lock").clone();
                let is_down = |w: &WorkerRecord| {
                    unhealthy_now.contains(&w.name)
                        || down_now.get(&w.name).is_some_and(|at| w.last_heartbeat_ts <= *at)
                };
                let want = Want { model, language: route.language.as_deref(), affinity };
                let w: &WorkerRecord = duplex_discovery::select(&workers, &want, &ours_now, &is_down)?;
                let channel =
                    channel_for(channels, &w.addr, &self.dial).map_err(|e| WorkerError::Refused(e.to_string()))?;
                let load = !duplex_discovery::is_resident(w, model);
                Ok((WorkerRef { name: w.name.clone(), addr: w.addr.clone(), channel }, load))
            }
        }
    }

    /// Skips `worker` in selection until it heartbeats again.
    pub fn mark_down(&self, worker: &WorkerRef) {
        if let Source::Registry { down, .. } = &self.source {
            tracing::warn!(worker = %worker.name, addr = %worker.addr, "worker marked down");
            down.lock().expect("pool lock").insert(worker.name.clone(), unix_now());
        }
    }

    /// Chooses a worker (the session's affinity worker when it can serve),
    /// has it load the model when it is not resident, starts the session
    /// there and opens its Synthesize stream with `first` as the first chunk.
    pub async fn open(&self, session_id: &str, first: TextChunk, route: &Route) -> Result<WorkerStream, WorkerError> {
        let previous = match &self.source {
            Source::Registry { affinity, .. } => affinity.get(session_id).await,
            Source::Static(_) => None,
        };
        let (worker, load) = self.choose(route, previous.as_deref())?;
        let model = route.model.as_deref().unwrap_or(&self.default_model);
        let result = async {
            if load {
                self.load_model(&worker, model).await?;
            }
            self.open_on(&worker, session_id, first, model, route.language.as_deref()).await
        }
        .await;
        if matches!(result, Err(WorkerError::Unreachable { .. } | WorkerError::Timeout { .. })) {
            self.mark_down(&worker);
        }
        let (text_tx, frames) = result?;
        let lease = match &self.source {
            Source::Registry { ours, affinity, .. } => {
                // Written (or its TTL refreshed) on every open; bounded by the
                // record's own timeout, and the stream does not wait for it.
                let (records, id, name) = (affinity.clone(), session_id.to_string(), worker.name.clone());
                tokio::spawn(async move { records.set(&id, &name).await });
                Some(Lease::take(ours.clone(), worker.name.clone()))
            }
            Source::Static(_) => None,
        };
        Ok(WorkerStream { text_tx, frames, worker, _lease: lease })
    }

    /// Asks `worker` to load `model` and waits for it (bounded like a session start).
    async fn load_model(&self, worker: &WorkerRef, model: &str) -> Result<(), WorkerError> {
        let started = std::time::Instant::now();
        let mut client = TtsServiceClient::new(worker.channel.clone());
        let req = LoadModelRequest { model_id: model.to_string(), preload_only: false };
        self.within(&worker.addr, self.start_timeout, client.load_model(req)).await?;
        tracing::info!(worker = %worker.name, model, took_ms = started.elapsed().as_millis() as u64, "model loaded for routing");
        Ok(())
    }

    async fn open_on(
        &self,
        worker: &WorkerRef,
        session_id: &str,
        first: TextChunk,
        model: &str,
        language: Option<&str>,
    ) -> Result<(mpsc::Sender<TextChunk>, Streaming<AudioFrame>), WorkerError> {
        let mut client = TtsServiceClient::new(worker.channel.clone());
        let req = StartSessionRequest {
            session_id: session_id.to_string(),
            model_id: model.to_string(),
            language: language.unwrap_or_default().to_string(),
            sample_rate_hz: duplex_audio::SAMPLE_RATE_HZ as i32,
            ..Default::default()
        };
        self.within(&worker.addr, self.start_timeout, client.start_session(req)).await?;
        let (text_tx, text_rx) = mpsc::channel(TEXT_QUEUE);
        text_tx.try_send(first).expect("fresh channel has room");
        let stream = client.synthesize(ReceiverStream::new(text_rx));
        let frames = self.within(&worker.addr, self.start_timeout, stream).await?.into_inner();
        Ok((text_tx, frames))
    }

    pub async fn control(
        &self,
        worker: &WorkerRef,
        session_id: &str,
        command: ControlCommand,
        utterance_id: u64,
    ) -> Result<(), WorkerError> {
        let req = ControlRequest { session_id: session_id.to_string(), command: command as i32, utterance_id };
        let mut client = TtsServiceClient::new(worker.channel.clone());
        self.within(&worker.addr, self.timeout, client.control(req)).await.map(|_| ())
    }

    pub async fn end_session(&self, worker: &WorkerRef, session_id: &str) -> Result<(), WorkerError> {
        let req = EndSessionRequest { session_id: session_id.to_string() };
        let mut client = TtsServiceClient::new(worker.channel.clone());
        self.within(&worker.addr, self.timeout, client.end_session(req)).await.map(|_| ())
    }
}

/// The shared connection to `addr`, created on first use.
fn channel_for(channels: &Mutex<HashMap<String, Channel>>, addr: &str, dial: &Dial) -> Result<Channel, ConfigError> {
    let mut channels = channels.lock().expect("pool lock");
    if let Some(c) = channels.get(addr) {
        return Ok(c.clone());
    }
    let c = endpoint(worker_uri(addr)?, dial)?;
    channels.insert(addr.to_string(), c.clone());
    Ok(c)
}

/// Every `every`, asks each registered worker for its gRPC health (all at
/// once, each bounded by the connect timeout); those not SERVING are skipped by
/// selection until they are again.
async fn check_health(
    view: View,
    channels: Arc<Mutex<HashMap<String, Channel>>>,
    unhealthy: Arc<Mutex<HashSet<String>>>,
    every: Duration,
    dial: Dial,
    stop: CancellationToken,
) {
    use tonic_health::pb::health_check_response::ServingStatus;
    let timeout = dial.timeout;
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = ticks.tick() => {}
        }
        let mut checks = tokio::task::JoinSet::new();
        for w in view.workers() {
            let Ok(channel) = channel_for(&channels, &w.addr, &dial) else { continue };
            checks.spawn(async move {
                let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
                let req = tonic_health::pb::HealthCheckRequest { service: "tts.TTSService".into() };
                let answer = tokio::time::timeout(timeout, health.check(req)).await;
                let serving = matches!(answer, Ok(Ok(r)) if r.get_ref().status == ServingStatus::Serving as i32);
                (w.name, serving)
            });
        }
        let mut now_unhealthy = HashSet::new();
        while let Some(Ok((name, serving))) = checks.join_next().await {
            if !serving {
                now_unhealthy.insert(name);
            }
        }
        let mut current = unhealthy.lock().expect("pool lock");
        for name in now_unhealthy.difference(&current) {
            tracing::warn!(worker = %name, "registered worker is not SERVING; skipping it");
        }
        *current = now_unhealthy;
    }
}

/// Counts a stream against its worker in this process while it lives.
struct Lease {
    ours: Arc<Mutex<HashMap<String, u32>>>,
    name: String,
}

impl Lease {
    fn take(ours: Arc<Mutex<HashMap<String, u32>>>, name: String) -> Self {
        *ours.lock().expect("pool lock").entry(name.clone()).or_insert(0) += 1;
        Self { ours, name }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Some(n) = self.ours.lock().expect("pool lock").get_mut(&self.name) {
            *n = n.saturating_sub(1);
        }
    }
}

/// One session's open Synthesize stream.
pub struct WorkerStream {
    pub text_tx: mpsc::Sender<TextChunk>,
    pub frames: Streaming<AudioFrame>,
    pub worker: WorkerRef,
    _lease: Option<Lease>,
}

impl std::fmt::Debug for WorkerStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerStream").field("worker", &self.worker.name).finish()
    }
}
