//! One WebSocket session: reads the client at all times, keeps one
//! Synthesize stream to the worker across turns, and plays the audio out in
//! real time so PAUSE and STOP silence the client within one frame.
//!
//! A single task owns the session state and `select!`s over the client
//! socket, the worker stream, the playout deadline and the timeouts; a writer
//! task owns the socket's send half, and a control task sends the worker its
//! PAUSE/RESUME/STOP in order without blocking the loop.
//!
//! `connection` starts a session over a socket (the writer and control
//! tasks, admission); `text` takes the client's text to the worker; when the
//! worker fails mid-utterance, `resume` moves what it had not yet said to
//! another worker.

mod connection;
mod dialogue;
mod resume;
mod text;

pub use connection::{SharedRate, Watch, run, run_over};

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message};
use base64::Engine as _;
use duplex_audio::{FRAME_MS, SAMPLE_RATE_HZ};
use duplex_proto::tts::{self, AudioFrame, ControlCommand};
use futures_util::StreamExt;
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::link::{Link, LinkEvent, link_event};
use crate::playout::{Entry, Playout};
use crate::protocol::{
    AudioFormat, ClientMessage, Command, EndReason, ErrorCode, ServerMessage, decode_binary, decode_text,
    encode_binary_audio,
};
use crate::server::AppState;
use crate::worker::{Route, WorkerRef};

/// Messages queued toward the client socket. Playout releases ~50 a second,
/// so a full queue means the client stopped reading: the session is closed
/// rather than buffering without bound.
const OUTBOUND_QUEUE: usize = 64;
/// Text chunks held while the worker stream opens; more is refused as the
/// worker not accepting text (the stream's own queue is larger).
const TEXT_BACKLOG: usize = 32;
/// Control commands queued toward the worker (sent in order).
const CONTROL_QUEUE: usize = 16;
/// WebSocket close code "try again later".
const CLOSE_TRY_AGAIN: u16 = 1013;
/// WebSocket close code "invalid frame payload data".
const CLOSE_INVALID_PAYLOAD: u16 = 1007;
/// Longest model id or language tag a client may ask for.
const MAX_ROUTE_FIELD_BYTES: usize = 128;
/// Retry hint sent with BUSY.
const BUSY_RETRY_AFTER_MS: u64 = 1_000;
/// The WebSocket protocol version in `session_start`.
pub const PROTOCOL_VERSION: u32 = 1;

/// An utterance the client has not yet seen end.
#[derive(Debug)]
struct Utterance {
    received_at: Instant,
    /// Frames sent to the client.
    frames: u64,
    span: tracing::Span,
    /// Its text so far, kept until the worker has sent its last frame so that
    /// what was not yet said can move to another worker.
    text: String,
    chars: usize,
    /// The client sent its last chunk.
    text_final: bool,
    /// Where the text the current worker was given begins (characters).
    base: usize,
    /// Where the sentence of the latest frame from the worker begins: a
    /// failover resumes there (absolute, in characters).
    resume_at: usize,
    /// The worker sent its final frame: nothing left to resume.
    synthesized: bool,
    failovers: u32,
}

impl Utterance {
    fn new(received_at: Instant, span: tracing::Span) -> Self {
        Self {
            received_at,
            frames: 0,
            span,
            text: String::new(),
            chars: 0,
            text_final: false,
            base: 0,
            resume_at: 0,
            synthesized: false,
            failovers: 0,
        }
    }
}

enum Flow {
    Continue,
    End(&'static str),
}

struct Session {
    id: String,
    state: Arc<AppState>,
    out_tx: mpsc::Sender<Message>,
    control_tx: mpsc::Sender<(ControlCommand, u64, WorkerRef)>,
    audio_format: AudioFormat,
    /// Model and language chosen by the client (`None` = defaults).
    route: Route,
    link: Link,
    /// Last utterance id assigned; ids start at 1.
    last_utterance: u64,
    /// Utterance still receiving text (`is_final: false` so far).
    open_utterance: Option<u64>,
    chunk_sequence: i64,
    stopped_through: u64,
    active: BTreeMap<u64, Utterance>,
    playout: Playout,
    /// Audio frames sent to the client.
    sequence: u64,
    last_client_message: Instant,
    /// Anything from the client, pongs included (the keepalive's evidence of life).
    last_heard: Instant,
    keepalive: Option<Duration>,
    client_rates: Vec<SharedRate>,
    /// Client messages other than microphone audio (which has its own flood check).
    message_rate: crate::rate::Bucket,
    last_worker_frame: Instant,
    /// The spoken conversation, from the first microphone audio on.
    dialogue: Option<dialogue::Dialogue>,
}

fn end_reason(frame: &AudioFrame) -> EndReason {
    match tts::EndReason::try_from(frame.end_reason).unwrap_or(tts::EndReason::Unspecified) {
        tts::EndReason::Stopped => EndReason::Stopped,
        tts::EndReason::Empty => EndReason::Empty,
        tts::EndReason::Error => EndReason::Error,
        // Predecessor workers leave it unset on a normal end.
        tts::EndReason::Completed | tts::EndReason::Unspecified => EndReason::Completed,
    }
}

impl Session {
    async fn run<I>(&mut self, ws_rx: &mut I) -> &'static str
    where
        I: futures_util::Stream<Item = Result<Message, axum::Error>> + Unpin,
    {
        let start = ServerMessage::SessionStart {
            session_id: self.id.clone(),
            sample_rate: SAMPLE_RATE_HZ,
            frame_ms: FRAME_MS,
            audio_format: self.audio_format,
            protocol_version: PROTOCOL_VERSION,
        };
        if let Flow::End(r) = self.send(start) {
            return r;
        }
        let limits = &self.state.config.session;
        let idle = Duration::from_millis(limits.idle_timeout_ms);
        let stall = Duration::from_millis(self.state.config.routing.stall_timeout_ms);
        let ends_at = Instant::now() + Duration::from_millis(limits.max_duration_ms);
        let shutdown = self.state.shutdown.clone();
        let far = Instant::now() + Duration::from_secs(86_400 * 365);
        let mut next_ping = self.keepalive.map_or(far, |k| Instant::now() + k);

        let reason = loop {
            let now = Instant::now();
            let due = self.playout.next_due(now.into_std()).map(Instant::from_std);
            let read_worker = self.playout.has_room();
            // Idle only counts while nothing is being said.
            let idle_at = if self.active.is_empty() { self.last_client_message + idle } else { far };
            let waiting_on_worker = matches!(self.link, Link::Up(_))
                && !self.active.is_empty()
                && self.playout.is_empty()
                && !self.playout.is_paused();
            let stall_at = if waiting_on_worker { Some(self.last_worker_frame + stall) } else { None };

            let flow = tokio::select! {
                biased;
                _ = shutdown.cancelled() => Flow::End("server_shutdown"),
                msg = ws_rx.next() => match msg {
                    Some(Ok(msg)) => self.on_client(msg),
                    Some(Err(e)) => self.on_socket_error(e),
                    None => Flow::End("client_closed"),
                },
                _ = tokio::time::sleep_until(due.unwrap_or(far)), if due.is_some() => self.play_due(),
                event = link_event(&mut self.link, read_worker) => match event {
                    LinkEvent::Opened(result) => self.on_opened(result),
                    LinkEvent::Frame(frame) => self.on_worker(frame),
                },
                next = dialogue::next(&mut self.dialogue) => self.on_dialogue(next),
                _ = tokio::time::sleep_until(stall_at.unwrap_or(far)), if stall_at.is_some() => {
                    self.worker_failed(&format!("no audio for {} ms", stall.as_millis()))
                }
                _ = tokio::time::sleep_until(idle_at) => Flow::End("idle_timeout"),
                _ = tokio::time::sleep_until(next_ping), if self.keepalive.is_some() => {
                    let every = self.keepalive.unwrap_or_default();
                    next_ping = Instant::now() + every;
                    if self.last_heard.elapsed() >= 2 * every {
                        Flow::End("client_unresponsive")
                    } else {
                        self.send_raw(Message::Ping(Default::default()))
                    }
                }
                _ = tokio::time::sleep_until(ends_at) => Flow::End("max_duration"),
            };
            if let Flow::End(reason) = flow {
                break reason;
            }
        };
        if !matches!(reason, "client_closed" | "connection_error" | "invalid_utf8") {
            let _ = self.send(ServerMessage::SessionEnd { session_id: self.id.clone(), reason: reason.into() });
            let _ = self.out_tx.try_send(Message::Close(None));
        }
        reason
    }

    /// Queues a message for the client; a full queue ends the session.
    fn send(&self, msg: ServerMessage) -> Flow {
        self.send_raw(Message::Text(msg.to_json().into()))
    }

    fn send_raw(&self, msg: Message) -> Flow {
        match self.out_tx.try_send(msg) {
            Ok(()) => Flow::Continue,
            Err(mpsc::error::TrySendError::Full(_)) => {
                tracing::warn!("client is not reading; closing the session");
                Flow::End("client_not_reading")
            }
            Err(mpsc::error::TrySendError::Closed(_)) => Flow::End("connection_error"),
        }
    }

    fn error(&self, code: ErrorCode, message: impl Into<String>) -> Flow {
        let message = message.into();
        tracing::info!(code = code.as_str(), %message, "error sent to client");
        self.state.metrics.errors.with_label_values(&[code.as_str()]).inc();
        self.send(ServerMessage::error(code, message))
    }

    /// Invalid UTF-8 in a *text* frame fails the WebSocket connection (RFC 6455
    /// section 8.1; the socket layer will not read on), so the client is told why
    /// and the socket closes with 1007. JSON in a binary frame is checked by us
    /// and such a session goes on.
    fn on_socket_error(&mut self, e: axum::Error) -> Flow {
        let inner = e.into_inner();
        if let Some(tungstenite::Error::Utf8(_)) = inner.downcast_ref::<tungstenite::Error>() {
            let _ = self.error(ErrorCode::InvalidMessage, crate::protocol::DecodeError::Utf8.to_string());
            let close = CloseFrame { code: CLOSE_INVALID_PAYLOAD, reason: "text frame is not valid UTF-8".into() };
            let _ = self.out_tx.try_send(Message::Close(Some(close)));
            return Flow::End("invalid_utf8");
        }
        tracing::debug!(error = %inner, "client socket error");
        Flow::End("connection_error")
    }

    fn on_client(&mut self, msg: Message) -> Flow {
        self.last_heard = Instant::now();
        let limit = self.state.config.transport.websocket.max_message_bytes;
        let decoded = match msg {
            Message::Text(t) => decode_text(t.as_str(), limit),
            Message::Binary(b) => decode_binary(&b, limit),
            Message::Ping(_) | Message::Pong(_) => return Flow::Continue,
            Message::Close(_) => return Flow::End("client_closed"),
        };
        self.last_client_message = Instant::now();
        let audio = matches!(decoded, Ok(ClientMessage::Mic { .. } | ClientMessage::AudioIn { .. }));
        let now = self.last_client_message.into_std();
        if !audio && !self.message_rate.take(now) {
            let s = &self.state.config.session;
            let msg = format!(
                "more than {} messages a second (bursts of {}); this one was dropped",
                s.max_messages_per_s, s.max_message_burst
            );
            return self.error(ErrorCode::RateLimited, msg);
        }
        if !audio && !self.client_rates.iter().all(|r| r.lock().expect("client rate lock").take(now)) {
            let per_s = self.state.config.session.max_messages_per_s_per_client;
            let msg = format!(
                "more than {per_s} messages a second from your address or credential, all sessions together; this one was dropped"
            );
            return self.error(ErrorCode::RateLimited, msg);
        }
        match decoded {
            Err(e) => self.error(ErrorCode::InvalidMessage, e.to_string()),
            Ok(ClientMessage::Text { text, is_final }) => self.on_text(text, is_final),
            Ok(ClientMessage::Control { command }) => self.on_control(command),
            Ok(ClientMessage::Config { audio_format, model, language }) => {
                if let Some(f) = audio_format {
                    self.audio_format = f;
                }
                if (model.is_some() || language.is_some())
                    && let Flow::End(r) = self.set_route(model, language)
                {
                    return Flow::End(r);
                }
                self.send(ServerMessage::Config {
                    audio_format: self.audio_format,
                    model: self.route.model.clone(),
                    language: self.route.language.clone(),
                })
            }
            Ok(ClientMessage::Ping { id }) => self.send(ServerMessage::Pong { id }),
            Ok(ClientMessage::Mic { pcm, sample_rate }) => self.on_mic(pcm, sample_rate),
            Ok(ClientMessage::UserText { text }) => self.on_user_text(text),
            // Decoded into `Mic` by the protocol layer.
            Ok(ClientMessage::AudioIn { .. }) => Flow::Continue,
        }
    }

    /// Drops the worker stream and ends the worker's session in the
    /// background (tracked for shutdown); the next text opens a new one.
    fn end_worker_session(&mut self) {
        if let Link::Up(stream) = std::mem::replace(&mut self.link, Link::Down) {
            let (pool, id, worker) = (self.state.pool.clone(), self.id.clone(), stream.worker.clone());
            drop(stream);
            self.state.tasks.spawn(async move {
                if let Err(e) = pool.end_session(&worker, &id).await {
                    tracing::debug!(error = %e, "EndSession failed");
                }
            });
        }
    }

    fn on_control(&mut self, command: Command) -> Flow {
        let received = std::time::Instant::now();
        let worker_command = match command {
            Command::Pause => {
                self.playout.pause();
                ControlCommand::Pause
            }
            Command::Resume => {
                self.playout.resume();
                self.last_worker_frame = Instant::now();
                ControlCommand::Resume
            }
            Command::Stop => {
                if let Flow::End(r) = self.stop_all() {
                    return Flow::End(r);
                }
                if let Flow::End(r) = self.on_stopped_by_client() {
                    return Flow::End(r);
                }
                ControlCommand::Stop
            }
        };
        self.state
            .metrics
            .control
            .with_label_values(&[command_label(command)])
            .observe(received.elapsed().as_secs_f64());
        // While the stream is still opening there is no worker session to
        // control yet; what it sends for stopped utterances is dropped here.
        if let Link::Up(stream) = &self.link
            && self.control_tx.try_send((worker_command, self.last_utterance, stream.worker.clone())).is_err()
        {
            tracing::warn!("control queue full; the worker may keep synthesizing");
        }
        self.send(ServerMessage::ControlAck { command, last_sequence: self.sequence })
    }

    /// Ends every utterance now, as stopped: queued audio is dropped and late
    /// frames of them are ignored. The worker is told separately.
    fn stop_all(&mut self) -> Flow {
        let through = self.last_utterance;
        self.stopped_through = through;
        self.open_utterance = None;
        self.playout.discard_through(through);
        self.playout.resume();
        for (id, u) in std::mem::take(&mut self.active) {
            if let Flow::End(r) = self.end_utterance(id, u, EndReason::Stopped) {
                return Flow::End(r);
            }
        }
        Flow::Continue
    }

    /// Tells the worker to stop everything through the last utterance.
    fn stop_worker(&self) {
        if let Link::Up(stream) = &self.link
            && self.control_tx.try_send((ControlCommand::Stop, self.last_utterance, stream.worker.clone())).is_err()
        {
            tracing::warn!("control queue full; the worker may keep synthesizing");
        }
    }

    fn on_worker(&mut self, frame: Result<Option<AudioFrame>, tonic::Status>) -> Flow {
        let frame = match frame {
            Ok(Some(f)) => f,
            Ok(None) if self.active.is_empty() => {
                // Closed between turns (the worker drains): reopen on the next text.
                self.link = Link::Down;
                return Flow::Continue;
            }
            Ok(None) => return self.worker_failed("worker ended the stream"),
            Err(status) => return self.worker_failed(&format!("{:?}: {}", status.code(), status.message())),
        };
        self.last_worker_frame = Instant::now();
        let id = frame.utterance_id;
        if id <= self.stopped_through {
            return Flow::Continue; // audio of a stopped utterance still in flight
        }
        let Some(u) = self.active.get_mut(&id) else { return Flow::Continue };
        u.resume_at = u.base + frame.text_offset as usize;
        let text_offset = u.resume_at;
        let last = frame.is_final;
        if last {
            u.synthesized = true;
            u.text = String::new(); // no longer needed for a failover
        }
        let resumed = u.base > 0;
        if !frame.audio_data.is_empty() {
            self.playout.push(Entry::Audio { utterance_id: id, pcm: frame.audio_data.clone(), last, text_offset });
        }
        if last {
            let reason = match end_reason(&frame) {
                // The part left after a failover held nothing more to say.
                EndReason::Empty if resumed => EndReason::Completed,
                r => r,
            };
            let error = (reason == EndReason::Error).then(|| frame.error_message.clone());
            self.playout.push(Entry::End { utterance_id: id, reason, error });
        }
        Flow::Continue
    }

    /// Sends every entry that is due now.
    fn play_due(&mut self) -> Flow {
        let now = Instant::now();
        while let Some(entry) = self.playout.pop_due(now.into_std()) {
            let flow = match entry {
                Entry::Audio { utterance_id, pcm, last, text_offset } => {
                    self.send_audio(utterance_id, pcm, last, text_offset, now)
                }
                Entry::End { utterance_id, reason, error } => {
                    if let Some(msg) = error
                        && let Flow::End(r) = self.error(ErrorCode::SynthesisFailed, format!("synthesis failed: {msg}"))
                    {
                        return Flow::End(r);
                    }
                    match self.active.remove(&utterance_id) {
                        Some(u) => match self.end_utterance(utterance_id, u, reason) {
                            Flow::Continue => self.on_utterance_ended(utterance_id, reason),
                            end => end,
                        },
                        None => Flow::Continue,
                    }
                }
            };
            if let Flow::End(r) = flow {
                return Flow::End(r);
            }
        }
        Flow::Continue
    }

    fn send_audio(&mut self, utterance_id: u64, pcm: Vec<u8>, last: bool, text_offset: usize, now: Instant) -> Flow {
        self.sequence += 1;
        if let Some(u) = self.active.get_mut(&utterance_id) {
            if u.frames == 0 {
                let latency = now - u.received_at;
                self.state.metrics.first_audio.observe(latency.as_secs_f64());
                u.span.in_scope(|| tracing::debug!(latency_ms = latency.as_secs_f64() * 1e3, "first audio"));
            }
            u.frames += 1;
        }
        self.state.metrics.frames_sent.inc();
        let msg = match self.audio_format {
            AudioFormat::Binary => Message::Binary(encode_binary_audio(utterance_id, self.sequence, last, &pcm).into()),
            AudioFormat::Json => Message::Text(
                ServerMessage::Audio {
                    pcm: base64::engine::general_purpose::STANDARD.encode(&pcm),
                    sample_rate: SAMPLE_RATE_HZ,
                    frame_ms: FRAME_MS,
                    sequence: self.sequence,
                    utterance_id,
                    text_offset: text_offset as u64,
                }
                .to_json()
                .into(),
            ),
        };
        match self.send_raw(msg) {
            Flow::Continue => self.on_frame_sent(utterance_id, text_offset),
            end => end,
        }
    }

    fn end_utterance(&self, id: u64, u: Utterance, reason: EndReason) -> Flow {
        u.span.in_scope(|| tracing::debug!(reason = reason.as_str(), frames = u.frames, "utterance ended"));
        self.state.metrics.utterances.with_label_values(&[reason.as_str()]).inc();
        self.send(ServerMessage::UtteranceEnd { utterance_id: id, reason, frames: u.frames })
    }
}

fn command_label(c: Command) -> &'static str {
    match c {
        Command::Pause => "pause",
        Command::Resume => "resume",
        Command::Stop => "stop",
    }
}
