//! Runs engines on OS threads they own and streams framed audio out of them.
//!
//! A host has one or more lanes; each lane is a thread with its own engine
//! instance that round-robins over its jobs, one step each, so many
//! utterances share a model without any inference on the async runtime. A lane
//! parks when no job can move (waiting for text, for its consumer, or for a
//! simulated compute deadline) and is unparked by whoever changes that.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread::{self, Thread};
use std::time::{Duration, Instant};

use duplex_audio::{Framer, Resampler};
use tokio::sync::mpsc::{self, error::TryRecvError};
use tokio_util::sync::CancellationToken;

use crate::engine::{Engine, EngineError, ModelDescriptor, Step, Synthesis, SynthesisParams};

/// Commands queued to a lane. When full, `Job::push_text` waits: text input
/// is slowed to the pace the lane can take it.
const LANE_COMMAND_QUEUE: usize = 256;
/// A job is stepped again only while fewer frames than this (1 s) wait for its
/// consumer: synthesis stays about a second ahead of a slow or paused
/// listener, and a STOP discards at most that much work (plus one chunk).
const SYNTH_AHEAD_FRAMES: usize = 50;
/// The consumer wakes the lane when a job's waiting frames fall to this (0.8 s).
const RESUME_FRAMES: usize = 40;
/// Time a lane spends stepping jobs before it re-reads commands and deadlines.
const PASS_BUDGET: Duration = Duration::from_millis(2);
/// Longest park without a known deadline; a safety net, not a poll interval.
const MAX_PARK: Duration = Duration::from_secs(1);

/// What a job sends back.
#[derive(Debug, PartialEq)]
pub enum JobEvent {
    /// One full 20 ms / 48 kHz s16le frame.
    Frame(Vec<u8>),
    /// Frames from here on speak the utterance text from this character on.
    Speaking { text_offset: usize },
    /// The job is over; `last` is the final partial frame, zero-padded.
    End { last: Option<Vec<u8>>, outcome: Outcome },
}

#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Completed,
    /// The text held nothing to speak.
    Empty,
    Failed(String),
}

#[derive(Debug, thiserror::Error)]
pub enum HostError {
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error("engine thread for {0} stopped")]
    LaneGone(String),
}

/// Shared between a job's owner and its lane.
/// A job's frames on their way to the consumer. The lane appends whole
/// chunks at once and the consumer takes them without the lane's help, so a
/// lane busy with another job's inference never starves this one's listener.
/// Bounded by the lane: it steps a job only while fewer than
/// `SYNTH_AHEAD_FRAMES` wait here (so at most that plus one chunk).
#[derive(Default)]
struct Queue {
    events: std::sync::Mutex<VecDeque<JobEvent>>,
    ready: tokio::sync::Notify,
    /// The lane is done with the job: nothing more will be added.
    closed: AtomicBool,
}

impl Queue {
    fn push(&self, events: impl IntoIterator<Item = JobEvent>) {
        self.events.lock().unwrap_or_else(|p| p.into_inner()).extend(events);
        self.ready.notify_one();
    }

    fn len(&self) -> usize {
        self.events.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// The next event and how many remain behind it.
    fn pop(&self) -> Option<(JobEvent, usize)> {
        let mut events = self.events.lock().unwrap_or_else(|p| p.into_inner());
        events.pop_front().map(|e| (e, events.len()))
    }

    fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.ready.notify_one();
    }
}

#[derive(Default)]
struct Control {
    cancel: CancellationToken,
    paused: AtomicBool,
    /// Aborts the engine step in progress (set by the lane when the job starts).
    interrupt: std::sync::Mutex<Option<crate::engine::Interrupt>>,
}

enum Command {
    Start { id: u64, params: SynthesisParams, queue: Arc<Queue>, control: Arc<Control> },
    Text { id: u64, text: String },
    Finish { id: u64 },
}

struct Lane {
    cmd_tx: mpsc::Sender<Command>,
    thread: Thread,
    active: Arc<AtomicUsize>,
    stats: Arc<Stats>,
}

/// Compute spent and audio made, for the measured real-time factor.
#[derive(Debug, Default)]
struct Stats {
    busy_us: std::sync::atomic::AtomicU64,
    audio_us: std::sync::atomic::AtomicU64,
}

impl Lane {
    async fn send(&self, cmd: Command, model: &str) -> Result<(), HostError> {
        self.cmd_tx.send(cmd).await.map_err(|_| HostError::LaneGone(model.to_string()))?;
        self.thread.unpark();
        Ok(())
    }
}

/// A loaded model on its threads. Dropping the host stops its threads once
/// their jobs are dropped.
pub struct EngineHost {
    descriptor: ModelDescriptor,
    lanes: Vec<Arc<Lane>>,
    next_id: std::sync::atomic::AtomicU64,
    /// For engines that serve a fixed number of sessions at once (a batch):
    /// how many more they can take now.
    free_slots: Option<Arc<dyn Fn() -> usize + Send + Sync>>,
}

impl std::fmt::Debug for EngineHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EngineHost")
            .field("model", &self.descriptor.model_id)
            .field("lanes", &self.lanes.len())
            .finish()
    }
}

impl EngineHost {
    /// Builds and warms one engine per lane (`lanes` of them, at least one),
    /// each on its own thread named after `model_id`. Blocks until all are
    /// warm: call it off the async runtime.
    pub fn start<F>(model_id: &str, lanes: usize, build: F) -> Result<Self, HostError>
    where
        F: Fn() -> Result<Box<dyn Engine>, EngineError> + Clone + Send + 'static,
    {
        let count = lanes.max(1);
        let mut lanes = Vec::new();
        let mut descriptor = None;
        for index in 0..count {
            let (ready_tx, ready_rx) = std::sync::mpsc::sync_channel(1);
            let (cmd_tx, cmd_rx) = mpsc::channel(LANE_COMMAND_QUEUE);
            let active = Arc::new(AtomicUsize::new(0));
            let lane_active = active.clone();
            let stats = Arc::new(Stats::default());
            let lane_stats = stats.clone();
            let build = build.clone();
            let handle = thread::Builder::new()
                .name(format!("tts-{model_id}-{index}"))
                .spawn(move || {
                    let engine = build().and_then(|mut e| e.warm_up().map(|_| e));
                    match engine {
                        Ok(engine) => {
                            let _ = ready_tx.send(Ok(engine.descriptor().clone()));
                            run_lane(engine, cmd_rx, lane_active, lane_stats);
                        }
                        Err(e) => {
                            let _ = ready_tx.send(Err(e));
                        }
                    }
                })
                .map_err(|e| EngineError::Failed(format!("cannot spawn engine thread: {e}")))?;
            let d = ready_rx.recv().map_err(|_| HostError::LaneGone(model_id.to_string()))??;
            descriptor = Some(d);
            lanes.push(Arc::new(Lane { cmd_tx, thread: handle.thread().clone(), active, stats }));
        }
        let descriptor = descriptor.ok_or_else(|| EngineError::Failed("no engine threads configured".into()))?;
        Ok(Self { descriptor, lanes, next_id: 0.into(), free_slots: None })
    }

    pub fn descriptor(&self) -> &ModelDescriptor {
        &self.descriptor
    }

    /// Measured compute time per second of audio made (0 until something was made).
    pub fn rtf(&self) -> f64 {
        let (busy, audio) = self.lanes.iter().fold((0u64, 0u64), |(b, a), l| {
            (b + l.stats.busy_us.load(Ordering::Relaxed), a + l.stats.audio_us.load(Ordering::Relaxed))
        });
        if audio == 0 { 0.0 } else { busy as f64 / audio as f64 }
    }

    /// Jobs currently running on all lanes.
    pub fn active_jobs(&self) -> usize {
        self.lanes.iter().map(|l| l.active.load(Ordering::Relaxed)).sum()
    }

    /// Says how many sessions the engine can still take (batched engines).
    pub fn with_free_slots(mut self, free_slots: Arc<dyn Fn() -> usize + Send + Sync>) -> Self {
        self.free_slots = Some(free_slots);
        self
    }

    /// Sessions the engine can still take now; `None` when it has no fixed number.
    pub fn free_slots(&self) -> Option<usize> {
        self.free_slots.as_ref().map(|f| f())
    }

    /// Starts an utterance on the least busy lane.
    pub async fn start_job(&self, params: SynthesisParams) -> Result<Job, HostError> {
        let lane = self
            .lanes
            .iter()
            .min_by_key(|l| l.active.load(Ordering::Relaxed))
            .expect("a host has at least one lane")
            .clone();
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let queue = Arc::new(Queue::default());
        let control = Arc::new(Control::default());
        // Count it now so back-to-back starts spread over lanes.
        lane.active.fetch_add(1, Ordering::Relaxed);
        lane.send(
            Command::Start { id, params, queue: queue.clone(), control: control.clone() },
            &self.descriptor.model_id,
        )
        .await?;
        let handle = JobHandle { id, lane, model: self.descriptor.model_id.as_str().into(), control };
        Ok(Job { handle, queue })
    }
}

/// The controlling side of a job: feed text, pause, cancel. Cheap to clone.
#[derive(Clone)]
pub struct JobHandle {
    id: u64,
    lane: Arc<Lane>,
    model: Arc<str>,
    control: Arc<Control>,
}

impl std::fmt::Debug for JobHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobHandle").field("id", &self.id).field("model", &self.model).finish()
    }
}

impl JobHandle {
    pub async fn push_text(&self, text: String) -> Result<(), HostError> {
        self.lane.send(Command::Text { id: self.id, text }, &self.model).await
    }

    /// No more text for this utterance.
    pub async fn finish(&self) -> Result<(), HostError> {
        self.lane.send(Command::Finish { id: self.id }, &self.model).await
    }

    /// Pauses or resumes synthesis (frames already queued stay queued).
    pub fn set_paused(&self, paused: bool) {
        self.control.paused.store(paused, Ordering::Relaxed);
        self.lane.thread.unpark();
    }

    /// Stops synthesis: an engine step in progress is interrupted where the
    /// engine supports it, otherwise the job ends after that step; nothing
    /// more is sent either way.
    pub fn cancel(&self) {
        if !self.control.cancel.is_cancelled() {
            self.control.cancel.cancel();
            if let Some(interrupt) = self.control.interrupt.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
                interrupt();
            }
        }
        self.lane.thread.unpark();
    }

    pub fn is_cancelled(&self) -> bool {
        self.control.cancel.is_cancelled()
    }
}

/// One utterance on a lane: its handle plus the frames coming out. Dropping
/// it cancels the synthesis.
pub struct Job {
    handle: JobHandle,
    queue: Arc<Queue>,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.handle.fmt(f)
    }
}

impl Job {
    pub fn handle(&self) -> &JobHandle {
        &self.handle
    }

    /// Next frame or the end; `None` if the job was cancelled or its lane died.
    /// Cancel-safe: a frame is either returned or left in the queue.
    pub async fn next(&mut self) -> Option<JobEvent> {
        loop {
            // Registered before the check: a push in between is not missed.
            let ready = self.queue.ready.notified();
            if let Some((ev, left)) = self.queue.pop() {
                // The lane tops the job up once its look-ahead has run down to
                // RESUME_FRAMES (not on every frame: that would wake it 50
                // times a second per listener).
                if left == RESUME_FRAMES || left == 0 {
                    self.handle.lane.thread.unpark();
                }
                return Some(ev);
            }
            if self.queue.closed.load(Ordering::Acquire) {
                return self.queue.pop().map(|(ev, _)| ev);
            }
            ready.await;
        }
    }
}

impl Drop for Job {
    fn drop(&mut self) {
        self.handle.cancel();
    }
}

/// A job as its lane sees it.
struct Running {
    id: u64,
    synthesis: Box<dyn Synthesis>,
    /// Engine rate to the wire rate, continuous across the whole utterance.
    resampler: Resampler,
    framer: Framer,
    queue: Arc<Queue>,
    control: Arc<Control>,
    started: Instant,
    /// When the first frame was made, and how many frames since: the
    /// listener's playback clock, which sets this job's deadline.
    first_frame_at: Option<Instant>,
    frames_made: u32,
    /// The engine asked not to be stepped before this.
    not_before: Option<Instant>,
    /// The engine has spoken all text it has; set again by new text.
    needs_text: bool,
    produced_audio: bool,
    ended: bool,
}

impl Running {
    fn new(id: u64, synthesis: Box<dyn Synthesis>, rate: u32, queue: Arc<Queue>, control: Arc<Control>) -> Self {
        Self {
            id,
            synthesis,
            resampler: Resampler::new(rate, duplex_audio::SAMPLE_RATE_HZ),
            framer: Framer::new(),
            queue,
            control,
            started: Instant::now(),
            first_frame_at: None,
            frames_made: 0,
            not_before: None,
            needs_text: false,
            produced_audio: false,
            ended: false,
        }
    }

    /// When the listener would run out of this job's audio: jobs that have
    /// said nothing yet are due at their start, so first audio comes first.
    fn deadline(&self) -> Instant {
        match self.first_frame_at {
            Some(t) => t + duplex_audio::FRAME_DURATION * self.frames_made,
            None => self.started,
        }
    }

    fn runnable(&self, now: Instant) -> bool {
        !self.ended
            && !self.needs_text
            && !self.control.paused.load(Ordering::Relaxed)
            && self.queue.len() < SYNTH_AHEAD_FRAMES
            && self.not_before.is_none_or(|t| t <= now)
    }

    /// Frames samples already at the wire rate.
    fn push_frames(&mut self, wire: &[f32], now: Instant) {
        let frames = self.framer.push(&to_i16(wire));
        if !frames.is_empty() {
            self.first_frame_at.get_or_insert(now);
            self.frames_made += frames.len() as u32;
        }
        self.queue.push(frames.into_iter().map(JobEvent::Frame));
    }

    /// One step of the engine; returns the samples it made (at the engine rate).
    fn step(&mut self, now: Instant) -> usize {
        self.not_before = None;
        let mut made = 0;
        // Time left before the listener runs out; no pressure on a first chunk
        // (the segmenter already keeps it short).
        let slack = match self.first_frame_at {
            Some(_) => self.deadline().saturating_duration_since(now),
            None => Duration::MAX,
        };
        match self.synthesis.step_within(now, slack) {
            Ok(Step::Audio(samples)) => {
                made = samples.len();
                self.produced_audio |= !samples.is_empty();
                let wire = self.resampler.push(&samples);
                self.push_frames(&wire, now);
            }
            Ok(Step::Speaking { text_offset }) => {
                // Frames still in the framer go out after this mark and count
                // as the new text: at most one frame of the previous chunk's tail.
                self.queue.push([JobEvent::Speaking { text_offset }]);
            }
            Ok(Step::NeedText) => self.needs_text = true,
            Ok(Step::NotBefore(at)) => self.not_before = Some(at),
            Ok(Step::Done) => {
                let tail = self.resampler.finish();
                self.push_frames(&tail, now);
                let last = self.framer.finish();
                let outcome = if self.produced_audio { Outcome::Completed } else { Outcome::Empty };
                self.queue.push([JobEvent::End { last, outcome }]);
                self.ended = true;
            }
            Err(_) if self.control.cancel.is_cancelled() => self.ended = true, // interrupted by cancel
            Err(e) => {
                tracing::warn!(job = self.id, error = %e, "synthesis failed");
                self.framer.clear();
                self.queue.push([JobEvent::End { last: None, outcome: Outcome::Failed(e.to_string()) }]);
                self.ended = true;
            }
        }
        made
    }
}

fn to_i16(samples: &[f32]) -> Vec<i16> {
    samples.iter().map(|s| (s.clamp(-1.0, 1.0) * i16::MAX as f32).round() as i16).collect()
}

/// A lane's loop: take commands, drop finished and cancelled jobs, then step
/// runnable jobs earliest deadline first (the listener closest to running out
/// of audio is served next, and a new utterance's first chunk goes before
/// anyone's look-ahead).
fn run_lane(
    mut engine: Box<dyn Engine>,
    mut cmd_rx: mpsc::Receiver<Command>,
    active: Arc<AtomicUsize>,
    stats: Arc<Stats>,
) {
    let rate = engine.descriptor().sample_rate_hz;
    let mut jobs: Vec<Running> = Vec::new();
    loop {
        loop {
            match cmd_rx.try_recv() {
                Ok(Command::Start { id, params, queue, control }) => match engine.start(&params) {
                    Ok(synthesis) => {
                        *control.interrupt.lock().unwrap_or_else(|p| p.into_inner()) = synthesis.interrupter();
                        jobs.push(Running::new(id, synthesis, rate, queue, control));
                    }
                    Err(e) => {
                        queue.push([JobEvent::End { last: None, outcome: Outcome::Failed(e.to_string()) }]);
                        queue.close();
                        active.fetch_sub(1, Ordering::Relaxed);
                    }
                },
                Ok(Command::Text { id, text }) => {
                    if let Some(job) = jobs.iter_mut().find(|j| j.id == id) {
                        job.synthesis.push_text(&text);
                        job.needs_text = false;
                    }
                }
                Ok(Command::Finish { id }) => {
                    if let Some(job) = jobs.iter_mut().find(|j| j.id == id) {
                        job.synthesis.finish_text();
                        job.needs_text = false;
                    }
                }
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => return,
            }
        }

        jobs.retain_mut(|job| {
            let keep = !job.ended && !job.control.cancel.is_cancelled();
            if !keep {
                job.queue.close();
                active.fetch_sub(1, Ordering::Relaxed);
            }
            keep
        });

        // Step runnable jobs in deadline order until the pass's budget is
        // spent: cheap steps (the mock) all run in one pass, an expensive one
        // (a neural chunk) ends the pass, so deadlines and commands are looked
        // at again before the next.
        let now = Instant::now();
        let mut order: Vec<usize> = (0..jobs.len()).filter(|&i| jobs[i].runnable(now)).collect();
        if !order.is_empty() {
            order.sort_by_key(|&i| jobs[i].deadline());
            'pass: for i in order {
                // Top each job up to its look-ahead while the budget lasts.
                loop {
                    let started = Instant::now();
                    let made = jobs[i].step(started);
                    if made > 0 {
                        let audio_us = made as u64 * 1_000_000 / rate.max(1) as u64;
                        stats.busy_us.fetch_add(started.elapsed().as_micros() as u64, Ordering::Relaxed);
                        stats.audio_us.fetch_add(audio_us, Ordering::Relaxed);
                    }
                    if now.elapsed() > PASS_BUDGET {
                        break 'pass;
                    }
                    if !jobs[i].runnable(Instant::now()) {
                        break;
                    }
                }
            }
            continue;
        }
        // A command, a consumed frame, pause/cancel or a deadline unparks us.
        let wake_at = jobs.iter().filter_map(|j| j.not_before).min();
        let wait = wake_at.map_or(MAX_PARK, |at| at.saturating_duration_since(Instant::now()).min(MAX_PARK));
        if !wait.is_zero() {
            thread::park_timeout(wait);
        }
    }
}

#[cfg(test)]
#[path = "host_tests.rs"]
mod tests;
