//! The `tts.TTSService` implementation: validates requests, maps them onto
//! sessions and models, and answers with proper gRPC status codes.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use duplex_proto::TtsService;
use duplex_proto::tts::{
    Capabilities, ControlCommand, ControlRequest, ControlResponse, EndSessionRequest, EndSessionResponse,
    GetCapabilitiesRequest, GetCapabilitiesResponse, ListModelsRequest, ListModelsResponse, LoadModelRequest,
    LoadModelResponse, ModelInfo, StartSessionRequest, StartSessionResponse, TextChunk, UnloadModelRequest,
    UnloadModelResponse,
};
use duplex_tts::SynthesisParams;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::{Request, Response, Status, Streaming};

use crate::config::Config;
use crate::metrics::Metrics;
use crate::models::{ModelError, Models};
use crate::session::{Session, Sessions};
use crate::synth::{self, FrameStream, StreamLimits};

/// Fastest and slowest speaking rate a session may ask for.
const SPEED_RANGE: std::ops::RangeInclusive<f32> = 0.25..=4.0;

/// Everything the service shares across requests.
#[derive(Debug)]
pub struct State {
    pub config: Config,
    pub models: Models,
    pub sessions: Sessions,
    pub metrics: Arc<Metrics>,
    /// Stream tasks, awaited on shutdown.
    pub tasks: TaskTracker,
    /// Parent of every session's token; cancelled when the grace period ends.
    pub sessions_token: CancellationToken,
    /// False once shutdown begins: no new sessions.
    pub accepting: AtomicBool,
    pub started: Instant,
}

impl State {
    pub fn new(config: Config) -> Self {
        Self {
            models: Models::new(config.models.clone(), config.model_cache.clone(), config.default_model.clone()),
            config,
            sessions: Sessions::default(),
            metrics: Arc::default(),
            tasks: TaskTracker::new(),
            sessions_token: CancellationToken::new(),
            accepting: AtomicBool::new(true),
            started: Instant::now(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Service(pub Arc<State>);

fn model_status(e: ModelError) -> Status {
    match e {
        ModelError::Unknown(_) => Status::not_found(e.to_string()),
        ModelError::Full { .. } => Status::resource_exhausted(e.to_string()),
        ModelError::Load { .. } => {
            tracing::error!(error = %e, "model load failed");
            Status::unavailable(e.to_string())
        }
    }
}

fn require_id<'a>(field: &str, id: &'a str) -> Result<&'a str, Status> {
    if id.is_empty() { Err(Status::invalid_argument(format!("{field} is required"))) } else { Ok(id) }
}

fn session_params(req: &StartSessionRequest) -> Result<SynthesisParams, Status> {
    let mut params = SynthesisParams::default();
    for (key, value) in &req.options {
        match key.as_str() {
            "speed" => {
                let speed: f32 = value.parse().ok().filter(|s| SPEED_RANGE.contains(s)).ok_or_else(|| {
                    Status::invalid_argument(format!("option speed={value:?}: expected a number in 0.25..=4"))
                })?;
                params.speed = speed;
            }
            other => tracing::debug!(option = other, "ignoring unknown session option"),
        }
    }
    if !req.voice.is_empty() {
        params.voice = Some(req.voice.clone());
    }
    Ok(params)
}

#[tonic::async_trait]
impl TtsService for Service {
    async fn start_session(
        &self,
        request: Request<StartSessionRequest>,
    ) -> Result<Response<StartSessionResponse>, Status> {
        let state = &self.0;
        let req = request.into_inner();
        let id = require_id("session_id", &req.session_id)?;
        if !state.accepting.load(Ordering::Relaxed) {
            return Err(Status::unavailable("worker is shutting down"));
        }
        if req.sample_rate_hz != 0 && req.sample_rate_hz != duplex_audio::SAMPLE_RATE_HZ as i32 {
            return Err(Status::invalid_argument(format!(
                "sample_rate_hz {} is not offered; this worker sends {} Hz",
                req.sample_rate_hz,
                duplex_audio::SAMPLE_RATE_HZ
            )));
        }
        let params = session_params(&req)?;
        let model_id = if req.model_id.is_empty() { state.config.default_model.clone() } else { req.model_id.clone() };
        if !req.language.is_empty() {
            let cfg = state.models.configs().iter().find(|c| c.model_id() == model_id);
            if let Some(languages) = cfg.map(|c| c.languages())
                && !languages.is_empty()
                && !languages.iter().any(|l| req.language.starts_with(l.as_str()))
            {
                return Err(Status::invalid_argument(format!(
                    "model {model_id:?} does not speak {:?} (it speaks {})",
                    req.language,
                    languages.join(", ")
                )));
            }
        }
        let (model, _) = state.models.load(&model_id).await.map_err(model_status)?;
        if model.free_slots() == Some(0) {
            return Err(Status::resource_exhausted(format!(
                "every slot of model {model_id:?} is in use; try another worker"
            )));
        }
        let session = Arc::new(Session::new(id.to_string(), model, params, &state.sessions_token));
        if let Err(open) = state.sessions.insert(session, state.config.limits.max_sessions) {
            return Err(Status::resource_exhausted(format!(
                "worker is at capacity ({open} sessions); try another worker"
            )));
        }
        tracing::info!(session_id = id, model = %model_id, "session started");
        Ok(Response::new(StartSessionResponse {
            success: true,
            message: "session started".into(),
            sample_rate_hz: duplex_audio::SAMPLE_RATE_HZ as i32,
            frame_duration_ms: duplex_audio::FRAME_MS as i32,
            model_id,
        }))
    }

    async fn end_session(&self, request: Request<EndSessionRequest>) -> Result<Response<EndSessionResponse>, Status> {
        let req = request.into_inner();
        let id = require_id("session_id", &req.session_id)?;
        self.0.sessions.remove(id).ok_or_else(|| Status::not_found(format!("session {id:?} not found")))?;
        tracing::info!(session_id = id, "session ended");
        Ok(Response::new(EndSessionResponse { success: true }))
    }

    type SynthesizeStream = FrameStream;

    async fn synthesize(
        &self,
        request: Request<Streaming<TextChunk>>,
    ) -> Result<Response<Self::SynthesizeStream>, Status> {
        let state = &self.0;
        let limits = StreamLimits {
            max_text_chars: state.config.limits.max_text_chars,
            max_pending_utterances: state.config.limits.max_pending_utterances,
        };
        let stream =
            synth::open(&state.sessions, &state.tasks, state.metrics.clone(), limits, request.into_inner()).await?;
        Ok(Response::new(stream))
    }

    async fn control(&self, request: Request<ControlRequest>) -> Result<Response<ControlResponse>, Status> {
        let req = request.into_inner();
        let id = require_id("session_id", &req.session_id)?;
        let command = ControlCommand::try_from(req.command)
            .map_err(|_| Status::invalid_argument(format!("unknown control command {}", req.command)))?;
        let session = self.0.sessions.get(id).ok_or_else(|| Status::not_found(format!("session {id:?} not found")))?;
        session.touch();
        let message = match command {
            ControlCommand::Pause => {
                session.pause();
                "paused".to_string()
            }
            ControlCommand::Resume => {
                session.resume();
                "resumed".to_string()
            }
            ControlCommand::Stop => {
                let mark = session.stop(req.utterance_id);
                format!("stopped utterances through {mark}")
            }
            ControlCommand::Reload => {
                let model_id = session.model.descriptor().model_id.clone();
                let (_, took) = self.0.models.reload(&model_id).await.map_err(model_status)?;
                format!("model {model_id} reloaded in {} ms; new sessions use it", took.as_millis())
            }
        };
        tracing::debug!(session_id = id, ?command, "control");
        Ok(Response::new(ControlResponse { success: true, message, timestamp_ms: duplex_proto::unix_millis() }))
    }

    async fn list_models(&self, _: Request<ListModelsRequest>) -> Result<Response<ListModelsResponse>, Status> {
        let loaded = self.0.models.resident();
        let models = self
            .0
            .models
            .configs()
            .iter()
            .map(|c| {
                let id = c.model_id();
                let (family, languages, metadata) = match loaded.get(id) {
                    Some(r) => {
                        let d = &r.descriptor;
                        let mut metadata: std::collections::HashMap<String, String> =
                            d.metadata.clone().into_iter().collect();
                        metadata.insert("sample_rate_hz".into(), d.sample_rate_hz.to_string());
                        metadata.insert("load_ms".into(), r.load_time.as_millis().to_string());
                        metadata.insert("in_use".into(), r.in_use.to_string());
                        (d.family.clone(), d.languages.clone(), metadata)
                    }
                    None => (c.family().to_string(), c.languages(), Default::default()),
                };
                ModelInfo { model_id: id.to_string(), family, is_loaded: loaded.contains_key(id), languages, metadata }
            })
            .collect();
        Ok(Response::new(ListModelsResponse { models }))
    }

    async fn load_model(&self, request: Request<LoadModelRequest>) -> Result<Response<LoadModelResponse>, Status> {
        let req = request.into_inner();
        let id = require_id("model_id", &req.model_id)?;
        let (_, took) = self.0.models.load(id).await.map_err(model_status)?;
        let message = if took.is_zero() { "already loaded" } else { "loaded" };
        Ok(Response::new(LoadModelResponse {
            success: true,
            message: message.into(),
            load_duration_ms: took.as_millis() as i64,
        }))
    }

    async fn unload_model(
        &self,
        request: Request<UnloadModelRequest>,
    ) -> Result<Response<UnloadModelResponse>, Status> {
        let req = request.into_inner();
        let id = require_id("model_id", &req.model_id)?;
        let was_loaded = self.0.models.unload(id).map_err(model_status)?;
        let message =
            if was_loaded { "unloaded; sessions still using it keep it until they end" } else { "was not loaded" };
        Ok(Response::new(UnloadModelResponse { success: was_loaded, message: message.into() }))
    }

    async fn get_capabilities(
        &self,
        _: Request<GetCapabilitiesRequest>,
    ) -> Result<Response<GetCapabilitiesResponse>, Status> {
        let state = &self.0;
        let loaded = state.models.resident();
        let languages: BTreeSet<String> = state.models.configs().iter().flat_map(|c| c.languages()).collect();
        let capabilities = Capabilities {
            streaming: true,
            zero_shot: false,
            lora: false,
            // Every engine in this build runs on CPU.
            cpu_ok: true,
            languages: languages.into_iter().collect(),
            emotive_zero_prompt: false,
            max_concurrent_sessions: state.config.limits.max_sessions as i32,
        };
        let metrics = [
            ("active_sessions", state.sessions.len() as f64),
            ("active_jobs", state.models.active_jobs() as f64),
            ("frames_sent_total", state.metrics.frames_sent.get() as f64),
            ("utterances_total", state.metrics.utterances_total() as f64),
            ("uptime_s", state.started.elapsed().as_secs_f64()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        Ok(Response::new(GetCapabilitiesResponse {
            capabilities: Some(capabilities),
            resident_models: loaded.into_keys().collect(),
            metrics,
        }))
    }
}
