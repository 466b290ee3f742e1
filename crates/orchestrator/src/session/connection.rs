//! Starting a session over a connection: admission (BUSY past
//! `session.max_sessions`), the writer task that owns the socket's send half
//! (a stalled write drops the connection), the control task that sends the
//! worker PAUSE/RESUME/STOP in order, and the session loop itself.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, WebSocket};
use duplex_proto::tts::ControlCommand;
use futures_util::{SinkExt, StreamExt};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::Instrument;

use super::{BUSY_RETRY_AFTER_MS, CLOSE_TRY_AGAIN, CONTROL_QUEUE, OUTBOUND_QUEUE, Session};
use crate::link::Link;
use crate::playout::Playout;
use crate::protocol::{AudioFormat, ErrorCode, ServerMessage};
use crate::server::AppState;
use crate::worker::{Route, WorkerRef};

/// Runs a session to its end. `audio_format` and `id` come from the connect
/// URL (a client reconnecting names its earlier session to return to its worker).
pub async fn run(
    socket: WebSocket,
    state: Arc<AppState>,
    audio_format: AudioFormat,
    id: crate::server::LiveId,
    client_rates: Vec<SharedRate>,
) {
    let (ws_tx, ws_rx) = socket.split();
    let keepalive = Some(Duration::from_millis(state.config.session.keepalive_ms)).filter(|k| !k.is_zero());
    run_over(ws_rx, ws_tx, state, audio_format, id, Watch { keepalive, client_rates }).await
}

/// A message rate several sessions share (one client address's, one credential's).
pub type SharedRate = Arc<std::sync::Mutex<crate::rate::Bucket>>;

/// What a session watches besides its own limits.
#[derive(Debug, Default)]
pub struct Watch {
    /// Ping the client this often; nothing heard for two periods ends the
    /// session (WebSocket; the media transports watch their own connections).
    pub keepalive: Option<Duration>,
    /// Rates shared with the client's other sessions; each message takes from all.
    pub client_rates: Vec<SharedRate>,
}

/// Runs a session over any message transport shaped like a WebSocket: the
/// WebRTC transport feeds decoded microphone audio in as binary frames and
/// client messages from its data channel, and takes the same frames and
/// events out. One session pipeline serves every transport.
pub async fn run_over<I, O>(
    mut ws_rx: I,
    mut ws_tx: O,
    state: Arc<AppState>,
    audio_format: AudioFormat,
    id: crate::server::LiveId,
    watch: Watch,
) where
    I: futures_util::Stream<Item = Result<Message, axum::Error>> + Unpin + Send,
    O: futures_util::Sink<Message> + Unpin + Send + 'static,
{
    let Ok(_permit) = state.session_slots.clone().try_acquire_owned() else {
        state.metrics.sessions_rejected.inc();
        state.metrics.errors.with_label_values(&[ErrorCode::Busy.as_str()]).inc();
        let busy = ServerMessage::Error {
            code: ErrorCode::Busy,
            message: format!(
                "server is at capacity ({} sessions); try again shortly",
                state.config.session.max_sessions
            ),
            retry_after_ms: Some(BUSY_RETRY_AFTER_MS),
        };
        let _ = ws_tx.send(Message::Text(busy.to_json().into())).await;
        let close = CloseFrame { code: CLOSE_TRY_AGAIN, reason: "busy".into() };
        let _ = ws_tx.send(Message::Close(Some(close))).await;
        return;
    };

    let span = tracing::info_span!("session", session_id = %id.as_str());
    state.metrics.sessions_total.inc();
    state.metrics.sessions_active.inc();

    let (out_tx, out_rx) = mpsc::channel(OUTBOUND_QUEUE);
    let writer = tokio::spawn(write_socket(ws_tx, out_rx).instrument(span.clone()));
    let (control_tx, control_rx) = mpsc::channel(CONTROL_QUEUE);
    let controls = tokio::spawn(send_controls(state.clone(), id.to_string(), control_rx).instrument(span.clone()));

    let now = Instant::now();
    let mut session = Session {
        id: id.to_string(),
        playout: Playout::new(state.config.playout.queue_frames, state.config.playout.lookahead_frames),
        state: state.clone(),
        out_tx,
        control_tx,
        audio_format,
        route: Route::default(),
        link: Link::Down,
        last_utterance: 0,
        open_utterance: None,
        chunk_sequence: 0,
        stopped_through: 0,
        active: BTreeMap::new(),
        sequence: 0,
        last_client_message: now,
        last_heard: now,
        keepalive: watch.keepalive,
        client_rates: watch.client_rates,
        message_rate: crate::rate::Bucket::new(
            state.config.session.max_messages_per_s,
            state.config.session.max_message_burst,
            now.into_std(),
        ),
        last_worker_frame: now,
        dialogue: None,
    };
    async {
        tracing::info!(?audio_format, "session started");
        let reason = session.run(&mut ws_rx).await;
        tracing::info!(reason, frames = session.sequence, "session ended");
        // Frees the worker's session now instead of letting it finish the text.
        session.end_worker_session();
    }
    .instrument(span)
    .await;
    drop(session);
    let _ = controls.await;
    let _ = writer.await;
    state.metrics.sessions_active.dec();
}

/// One write to the client that takes longer than this means the client
/// stopped reading (its TCP window is shut): the connection is dropped,
/// instead of the session's tasks waiting on it for ever.
const WRITE_STALL: Duration = Duration::from_secs(5);

async fn write_socket<O>(mut ws_tx: O, mut out_rx: mpsc::Receiver<Message>)
where
    O: futures_util::Sink<Message> + Unpin,
{
    while let Some(msg) = out_rx.recv().await {
        let closing = matches!(msg, Message::Close(_));
        match tokio::time::timeout(WRITE_STALL, ws_tx.send(msg)).await {
            Ok(Ok(())) if !closing => {}
            Ok(Ok(())) | Ok(Err(_)) => break,
            Err(_) => {
                tracing::warn!("a write to the client stalled; dropping the connection");
                return;
            }
        }
    }
    let _ = tokio::time::timeout(WRITE_STALL, ws_tx.close()).await;
}

async fn send_controls(
    state: Arc<AppState>,
    session_id: String,
    mut rx: mpsc::Receiver<(ControlCommand, u64, WorkerRef)>,
) {
    while let Some((command, utterance_id, worker)) = rx.recv().await {
        if let Err(e) = state.pool.control(&worker, &session_id, command, utterance_id).await {
            tracing::debug!(?command, error = %e, "worker control failed");
        }
    }
}
