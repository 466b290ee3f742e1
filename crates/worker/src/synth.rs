//! One Synthesize stream: a reader task turns text chunks into utterances on
//! the engine host, a writer task forwards their frames in order, honouring the
//! session's pause and stop, and ends every utterance with exactly one
//! `is_final` frame.

use std::sync::{Arc, OnceLock};
use std::time::Instant;

use duplex_audio::{FRAME_MS, SAMPLE_RATE_HZ};
use duplex_proto::tts::{AudioFrame, EndReason, TextChunk};
use duplex_tts::{Job, JobEvent, JobHandle, Outcome};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Status, Streaming};

use crate::metrics::Metrics;
use crate::session::{Session, StreamGuard};

/// Frames queued toward gRPC before the writer waits. Small: gRPC flow
/// control adds its own window, and audio queued here plays after a STOP
/// unless the client drops it.
const OUTPUT_QUEUE_FRAMES: usize = 4;

pub type FrameStream = ReceiverStream<Result<AudioFrame, Status>>;

/// Limits one stream enforces.
#[derive(Debug, Clone, Copy)]
pub struct StreamLimits {
    pub max_text_chars: usize,
    pub max_pending_utterances: usize,
}

enum Item {
    Utterance(Utterance),
    /// Ends the stream with this status after the utterances before it.
    Fail(Status),
}

struct Utterance {
    id: u64,
    job: Option<Job>,
    /// Why the utterance was cut short, when it was.
    abort: Arc<OnceLock<String>>,
    /// When its first text arrived.
    received: Instant,
    /// `synthesize`, a child of the caller's span when its first chunk carried
    /// a trace context; ends with the utterance.
    span: tracing::Span,
}

/// Validates the first chunk and starts the stream's tasks. Errors here are
/// the RPC's status (INVALID_ARGUMENT, NOT_FOUND, FAILED_PRECONDITION).
pub async fn open(
    sessions: &crate::session::Sessions,
    tasks: &tokio_util::task::TaskTracker,
    metrics: Arc<Metrics>,
    limits: StreamLimits,
    mut input: Streaming<TextChunk>,
) -> Result<FrameStream, Status> {
    let first = input
        .message()
        .await?
        .ok_or_else(|| Status::invalid_argument("empty Synthesize stream: the first chunk must carry session_id"))?;
    if first.session_id.is_empty() {
        return Err(Status::invalid_argument("session_id is required on the first chunk"));
    }
    let session = sessions.get(&first.session_id).ok_or_else(|| {
        Status::not_found(format!("session {:?} not found; call StartSession first", first.session_id))
    })?;
    let guard = session.claim_stream().ok_or_else(|| {
        Status::failed_precondition(format!("session {:?} already has a Synthesize stream", session.id))
    })?;

    let (out_tx, out_rx) = mpsc::channel(OUTPUT_QUEUE_FRAMES);
    // Bounded by the limit: a client queueing more utterances gets RESOURCE_EXHAUSTED.
    let (item_tx, item_rx) = mpsc::channel(limits.max_pending_utterances);
    tasks.spawn(read_text(session.clone(), first, input, item_tx, limits));
    tasks.spawn(write_frames(session, item_rx, out_tx, guard, metrics));
    Ok(ReceiverStream::new(out_rx))
}

struct Open {
    id: u64,
    handle: Option<JobHandle>,
    chars: usize,
    abort: Arc<OnceLock<String>>,
}

impl Open {
    async fn finish(self) {
        if let Some(h) = self.handle {
            // A gone lane surfaces in the writer as an ended job.
            let _ = h.finish().await;
        }
    }
}

async fn read_text(
    session: Arc<Session>,
    first: TextChunk,
    mut input: Streaming<TextChunk>,
    item_tx: mpsc::Sender<Item>,
    limits: StreamLimits,
) {
    let mut open: Option<Open> = None;
    let mut next = Some(first);
    loop {
        let chunk = match next.take() {
            Some(c) => c,
            None => tokio::select! {
                msg = input.message() => match msg {
                    Ok(Some(c)) => c,
                    // Half-close: finish what is open; the writer drains and ends.
                    Ok(None) => break,
                    Err(status) => {
                        tracing::debug!(session_id = %session.id, %status, "client stream ended with error");
                        if let Some(h) = open.and_then(|o| o.handle) {
                            h.cancel();
                        }
                        return;
                    }
                },
                _ = session.closed.cancelled() => return,
            },
        };
        if !chunk.session_id.is_empty() && chunk.session_id != session.id {
            let msg = format!("chunk for session {:?} on the stream of {:?}", chunk.session_id, session.id);
            return fail(&item_tx, open, Status::invalid_argument(msg)).await;
        }
        let id = match (&open, chunk.utterance_id) {
            (_, 0) => open.as_ref().map_or(session.last_seen() + 1, |o| o.id),
            (_, id) => id,
        };
        if open.as_ref().is_some_and(|o| o.id != id) {
            // A new id implies the previous utterance's text is complete.
            open.take().expect("checked").finish().await;
        }
        if open.is_none() {
            let received = Instant::now();
            let span = tracing::info_span!("synthesize", session_id = %session.id, utterance_id = id);
            duplex_telemetry::propagation::adopt_traceparent(&span, &chunk.traceparent);
            if id <= session.last_seen() && !session.is_stopped(id) {
                let msg = format!("utterance_id {id} does not increase (last was {})", session.last_seen());
                return fail(&item_tx, None, Status::invalid_argument(msg)).await;
            }
            session.note_seen(id);
            let abort = Arc::new(OnceLock::new());
            let job = if session.is_stopped(id) {
                // STOP overtook this utterance's first chunk: it ends at once, unspoken.
                None
            } else {
                match session.model.start_job(session.params.clone()).await {
                    Ok(job) => {
                        session.register(id, job.handle().clone());
                        Some(job)
                    }
                    Err(e) => {
                        let _ = abort.set(e.to_string());
                        None
                    }
                }
            };
            let handle = job.as_ref().map(|j| j.handle().clone());
            match item_tx.try_send(Item::Utterance(Utterance { id, job, abort: abort.clone(), received, span })) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(_)) => {
                    let msg = format!("more than {} utterances pending on this stream", limits.max_pending_utterances);
                    return fail(&item_tx, None, Status::resource_exhausted(msg)).await;
                }
                Err(mpsc::error::TrySendError::Closed(_)) => return,
            }
            open = Some(Open { id, handle, chars: 0, abort });
        }
        let o = open.as_mut().expect("opened above");
        o.chars += chunk.text.chars().count();
        if o.chars > limits.max_text_chars {
            let msg = format!("utterance {} exceeds {} characters", o.id, limits.max_text_chars);
            let _ = o.abort.set(msg.clone());
            return fail(&item_tx, open, Status::resource_exhausted(msg)).await;
        }
        if let Some(h) = &o.handle
            && !chunk.text.is_empty()
            && h.push_text(chunk.text).await.is_err()
        {
            let _ = o.abort.set("engine stopped".into());
            h.cancel();
        }
        if chunk.is_final {
            open.take().expect("opened above").finish().await;
        }
    }
    if let Some(o) = open {
        o.finish().await;
    }
}

/// Cuts the open utterance short and queues `status` behind it.
async fn fail(item_tx: &mpsc::Sender<Item>, open: Option<Open>, status: Status) {
    tracing::info!(code = ?status.code(), message = status.message(), "synthesize stream rejected input");
    if let Some(o) = open {
        let _ = o.abort.set(status.message().to_string());
        if let Some(h) = o.handle {
            h.cancel();
        }
    }
    let _ = item_tx.send(Item::Fail(status)).await;
}

/// How an utterance ended, and the error message when it failed.
type End = (EndReason, String);

/// Why the writer stopped early.
struct ClientGone;

struct Writer {
    session: Arc<Session>,
    out_tx: mpsc::Sender<Result<AudioFrame, Status>>,
    sequence: i64,
    metrics: Arc<Metrics>,
    /// Text offset of the sentence being spoken (from the engine's marks).
    text_offset: u32,
}

impl Writer {
    fn frame(&mut self, utterance_id: u64, audio: Vec<u8>, end: Option<End>) -> AudioFrame {
        self.sequence += 1;
        let (is_final, end_reason, error_message) = match end {
            Some((reason, msg)) => {
                let name = match reason {
                    EndReason::Completed => "completed",
                    EndReason::Stopped => "stopped",
                    EndReason::Empty => "empty",
                    EndReason::Error | EndReason::Unspecified => "error",
                };
                self.metrics.utterances.with_label_values(&[name]).inc();
                (true, reason as i32, msg)
            }
            None => (false, EndReason::Unspecified as i32, String::new()),
        };
        AudioFrame {
            session_id: self.session.id.clone(),
            audio_data: audio,
            sample_rate: SAMPLE_RATE_HZ as i32,
            frame_duration_ms: FRAME_MS as i32,
            sequence_number: self.sequence,
            is_final,
            utterance_id,
            end_reason,
            error_message,
            text_offset: self.text_offset,
        }
    }

    /// Sends a final frame without audio (stop, error, empty): no pause applies.
    async fn end(&mut self, utterance_id: u64, reason: EndReason, msg: String) -> Result<(), ClientGone> {
        let frame = self.frame(utterance_id, Vec::new(), Some((reason, msg)));
        self.out_tx.send(Ok(frame)).await.map_err(|_| ClientGone)
    }

    /// Plays one utterance to its final frame.
    async fn play(&mut self, u: Utterance) -> Result<(), ClientGone> {
        let session = self.session.clone();
        self.text_offset = 0;
        let Some(mut job) = u.job else {
            let (reason, msg) = match u.abort.get() {
                Some(msg) => (EndReason::Error, msg.clone()),
                None => (EndReason::Stopped, String::new()),
            };
            return self.end(u.id, reason, msg).await;
        };
        let mut paused_rx = session.subscribe_paused();
        let mut stops_rx = session.subscribe_stops();
        let out_tx = self.out_tx.clone();
        // A frame taken from the job but not yet sent, and whether it ends the utterance.
        let mut pending: Option<(Vec<u8>, Option<End>)> = None;
        let mut first = true;
        let result = loop {
            if session.is_stopped(u.id) || session.closed.is_cancelled() {
                drop(job);
                break self.end(u.id, EndReason::Stopped, String::new()).await;
            }
            let paused = *paused_rx.borrow_and_update();
            tokio::select! {
                biased;
                // Control changes are checked first so they act before the next frame.
                _ = stops_rx.changed() => {}
                _ = paused_rx.changed() => {}
                _ = session.closed.cancelled() => {}
                permit = out_tx.reserve(), if pending.is_some() && !paused => {
                    let Ok(permit) = permit else { break Err(ClientGone) };
                    let (audio, end) = pending.take().expect("guarded");
                    let last = end.is_some();
                    let frame = self.frame(u.id, audio, end);
                    permit.send(Ok(frame));
                    self.metrics.frames_sent.inc();
                    if first {
                        first = false;
                        self.metrics.first_frame.observe(u.received.elapsed().as_secs_f64());
                    }
                    if last {
                        break Ok(());
                    }
                }
                ev = job.next(), if pending.is_none() && !paused => match ev {
                    Some(JobEvent::Frame(f)) => pending = Some((f, None)),
                    Some(JobEvent::Speaking { text_offset }) => {
                        self.text_offset = u32::try_from(text_offset).unwrap_or(u32::MAX);
                    }
                    Some(JobEvent::End { last, outcome }) => {
                        let end = match outcome {
                            Outcome::Completed => (EndReason::Completed, String::new()),
                            Outcome::Empty => (EndReason::Empty, String::new()),
                            Outcome::Failed(msg) => (EndReason::Error, msg),
                        };
                        match last {
                            Some(audio) => pending = Some((audio, Some(end))),
                            None => break self.end(u.id, end.0, end.1).await,
                        }
                    }
                    None => {
                        let msg = u.abort.get().cloned().unwrap_or_else(|| "engine stopped".into());
                        break self.end(u.id, EndReason::Error, msg).await;
                    }
                },
            }
        };
        session.unregister(u.id);
        u.span.in_scope(|| tracing::debug!(utterance_id = u.id, "utterance played"));
        result
    }
}

async fn write_frames(
    session: Arc<Session>,
    mut item_rx: mpsc::Receiver<Item>,
    out_tx: mpsc::Sender<Result<AudioFrame, Status>>,
    _guard: StreamGuard,
    metrics: Arc<Metrics>,
) {
    let mut writer = Writer { session: session.clone(), out_tx, sequence: 0, metrics, text_offset: 0 };
    while let Some(item) = item_rx.recv().await {
        match item {
            Item::Utterance(u) => {
                if writer.play(u).await.is_err() {
                    tracing::debug!(session_id = %session.id, "client went away mid-stream");
                    return;
                }
            }
            Item::Fail(status) => {
                let _ = writer.out_tx.send(Err(status)).await;
                return;
            }
        }
    }
}
