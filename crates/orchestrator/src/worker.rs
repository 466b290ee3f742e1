//! The orchestrator's side of the worker contract: one shared HTTP/2
//! connection to the worker (reused by every session and turn) and, per
//! session, one Synthesize stream kept open across turns.

use std::time::Duration;

use duplex_proto::TtsServiceClient;
use duplex_proto::tts::{
    AudioFrame, ControlCommand, ControlRequest, EndSessionRequest, StartSessionRequest, TextChunk,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status, Streaming};

use crate::config::{ConfigError, Routing, worker_uri};

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
}

/// Dials the configured worker; cheap to clone (one shared connection).
#[derive(Debug, Clone)]
pub struct WorkerPool {
    addr: String,
    channel: Channel,
    timeout: Duration,
    start_timeout: Duration,
    default_model: String,
}

impl WorkerPool {
    pub fn new(routing: &Routing) -> Result<Self, ConfigError> {
        let uri = worker_uri(&routing.static_worker_addr)?;
        let timeout = Duration::from_millis(routing.connect_timeout_ms);
        let channel = Endpoint::from_shared(uri.clone())
            .map_err(|e| ConfigError::Invalid(format!("routing.static_worker_addr: {e}")))?
            .connect_timeout(timeout)
            .tcp_nodelay(true)
            .initial_stream_window_size(STREAM_WINDOW_BYTES)
            .initial_connection_window_size(CONNECTION_WINDOW_BYTES)
            .http2_keep_alive_interval(Duration::from_secs(10))
            .keep_alive_timeout(Duration::from_secs(5))
            .keep_alive_while_idle(true)
            .connect_lazy();
        Ok(Self {
            addr: routing.static_worker_addr.clone(),
            channel,
            timeout,
            start_timeout: Duration::from_millis(routing.session_start_timeout_ms),
            default_model: routing.default_model.clone(),
        })
    }

    pub fn addr(&self) -> &str {
        &self.addr
    }

    fn client(&self) -> TtsServiceClient<Channel> {
        TtsServiceClient::new(self.channel.clone())
    }

    fn map_status(&self, s: Status) -> WorkerError {
        match s.code() {
            Code::Unavailable | Code::Unknown | Code::Cancelled | Code::DeadlineExceeded => {
                WorkerError::Unreachable { addr: self.addr.clone(), message: s.message().to_string() }
            }
            Code::ResourceExhausted => WorkerError::Busy(s.message().to_string()),
            _ => WorkerError::Refused(format!("{:?}: {}", s.code(), s.message())),
        }
    }

    async fn timed<T>(&self, fut: impl Future<Output = Result<T, Status>>) -> Result<T, WorkerError> {
        self.within(self.timeout, fut).await
    }

    async fn within<T>(&self, limit: Duration, fut: impl Future<Output = Result<T, Status>>) -> Result<T, WorkerError> {
        match tokio::time::timeout(limit, fut).await {
            Ok(r) => r.map_err(|s| self.map_status(s)),
            Err(_) => Err(WorkerError::Timeout { addr: self.addr.clone(), timeout_ms: limit.as_millis() as u64 }),
        }
    }

    /// Is the worker SERVING (gRPC health)? For `/ready`.
    pub async fn is_serving(&self) -> Result<(), WorkerError> {
        let mut health = tonic_health::pb::health_client::HealthClient::new(self.channel.clone());
        let req = tonic_health::pb::HealthCheckRequest { service: "tts.TTSService".into() };
        let resp = self.timed(health.check(req)).await?.into_inner();
        if resp.status == tonic_health::pb::health_check_response::ServingStatus::Serving as i32 {
            Ok(())
        } else {
            Err(WorkerError::Unreachable {
                addr: self.addr.clone(),
                message: "not SERVING (warming up or draining)".into(),
            })
        }
    }

    /// Starts the session on the worker and opens its Synthesize stream with `first` as the first chunk.
    pub async fn open(&self, session_id: &str, first: TextChunk) -> Result<WorkerStream, WorkerError> {
        let mut client = self.client();
        let req = StartSessionRequest {
            session_id: session_id.to_string(),
            model_id: self.default_model.clone(),
            sample_rate_hz: duplex_audio::SAMPLE_RATE_HZ as i32,
            ..Default::default()
        };
        self.within(self.start_timeout, client.start_session(req)).await?;
        let (text_tx, text_rx) = mpsc::channel(TEXT_QUEUE);
        text_tx.try_send(first).expect("fresh channel has room");
        let frames =
            self.within(self.start_timeout, client.synthesize(ReceiverStream::new(text_rx))).await?.into_inner();
        Ok(WorkerStream { text_tx, frames })
    }

    pub async fn control(
        &self,
        session_id: &str,
        command: ControlCommand,
        utterance_id: u64,
    ) -> Result<(), WorkerError> {
        let req = ControlRequest { session_id: session_id.to_string(), command: command as i32, utterance_id };
        self.timed(self.client().control(req)).await.map(|_| ())
    }

    pub async fn end_session(&self, session_id: &str) -> Result<(), WorkerError> {
        let req = EndSessionRequest { session_id: session_id.to_string() };
        self.timed(self.client().end_session(req)).await.map(|_| ())
    }
}

/// One session's open Synthesize stream.
#[derive(Debug)]
pub struct WorkerStream {
    pub text_tx: mpsc::Sender<TextChunk>,
    pub frames: Streaming<AudioFrame>,
}
