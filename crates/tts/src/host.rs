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
/// Frames a job may have synthesized ahead of its consumer. When full the job
/// is not stepped, so a slow or paused consumer stops synthesis, and a STOP
/// discards at most this much work.
const JOB_QUEUE_FRAMES: usize = 4;
/// Longest park without a known deadline; a safety net, not a poll interval.
const MAX_PARK: Duration = Duration::from_secs(1);

/// What a job sends back.
#[derive(Debug, PartialEq)]
pub enum JobEvent {
    /// One full 20 ms / 48 kHz s16le frame.
    Frame(Vec<u8>),
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
#[derive(Debug, Default)]
struct Control {
    cancel: CancellationToken,
    paused: AtomicBool,
}

enum Command {
    Start { id: u64, params: SynthesisParams, events_tx: mpsc::Sender<JobEvent>, control: Arc<Control> },
    Text { id: u64, text: String },
    Finish { id: u64 },
}

struct Lane {
    cmd_tx: mpsc::Sender<Command>,
    thread: Thread,
    active: Arc<AtomicUsize>,
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
            let build = build.clone();
            let handle = thread::Builder::new()
                .name(format!("tts-{model_id}-{index}"))
                .spawn(move || {
                    let engine = build().and_then(|mut e| e.warm_up().map(|_| e));
                    match engine {
                        Ok(engine) => {
                            let _ = ready_tx.send(Ok(engine.descriptor().clone()));
                            run_lane(engine, cmd_rx, lane_active);
                        }
                        Err(e) => {
                            let _ = ready_tx.send(Err(e));
                        }
                    }
                })
                .map_err(|e| EngineError::Failed(format!("cannot spawn engine thread: {e}")))?;
            let d = ready_rx.recv().map_err(|_| HostError::LaneGone(model_id.to_string()))??;
            descriptor = Some(d);
            lanes.push(Arc::new(Lane { cmd_tx, thread: handle.thread().clone(), active }));
        }
        let descriptor = descriptor.ok_or_else(|| EngineError::Failed("no engine threads configured".into()))?;
        Ok(Self { descriptor, lanes, next_id: 0.into() })
    }

    pub fn descriptor(&self) -> &ModelDescriptor {
        &self.descriptor
    }

    /// Jobs currently running on all lanes.
    pub fn active_jobs(&self) -> usize {
        self.lanes.iter().map(|l| l.active.load(Ordering::Relaxed)).sum()
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
        let (events_tx, events_rx) = mpsc::channel(JOB_QUEUE_FRAMES);
        let control = Arc::new(Control::default());
        // Count it now so back-to-back starts spread over lanes.
        lane.active.fetch_add(1, Ordering::Relaxed);
        lane.send(Command::Start { id, params, events_tx, control: control.clone() }, &self.descriptor.model_id)
            .await?;
        let handle = JobHandle { id, lane, model: self.descriptor.model_id.as_str().into(), control };
        Ok(Job { handle, events_rx })
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

    /// Stops synthesis within one step; nothing more is sent.
    pub fn cancel(&self) {
        self.control.cancel.cancel();
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
    events_rx: mpsc::Receiver<JobEvent>,
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
        let ev = self.events_rx.recv().await;
        // Room was made in the queue: the lane may step this job again.
        self.handle.lane.thread.unpark();
        ev
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
    events_tx: mpsc::Sender<JobEvent>,
    outbox: VecDeque<JobEvent>,
    control: Arc<Control>,
    produced_audio: bool,
    ended: bool,
}

enum Progress {
    Idle,
    Moved,
    WakeAt(Instant),
    Gone,
}

impl Running {
    /// Moves queued events to the consumer; false if the consumer is gone.
    fn flush(&mut self) -> Result<bool, ()> {
        let mut moved = false;
        while !self.outbox.is_empty() {
            match self.events_tx.try_reserve() {
                Ok(permit) => {
                    permit.send(self.outbox.pop_front().expect("checked non-empty"));
                    moved = true;
                }
                Err(mpsc::error::TrySendError::Full(())) => break,
                Err(mpsc::error::TrySendError::Closed(())) => return Err(()),
            }
        }
        Ok(moved)
    }

    fn advance(&mut self, now: Instant) -> Progress {
        if self.control.cancel.is_cancelled() {
            return Progress::Gone;
        }
        let Ok(mut moved) = self.flush() else { return Progress::Gone };
        if self.ended {
            return if self.outbox.is_empty() {
                Progress::Gone
            } else if moved {
                Progress::Moved
            } else {
                Progress::Idle
            };
        }
        if self.control.paused.load(Ordering::Relaxed) || !self.outbox.is_empty() {
            return if moved { Progress::Moved } else { Progress::Idle };
        }
        match self.synthesis.step(now) {
            Ok(Step::Audio(samples)) => {
                self.produced_audio |= !samples.is_empty();
                let wire = to_i16(&self.resampler.push(&samples));
                self.outbox.extend(self.framer.push(&wire).into_iter().map(JobEvent::Frame));
                moved = true;
            }
            Ok(Step::NeedText) => {}
            Ok(Step::NotBefore(at)) => return if moved { Progress::Moved } else { Progress::WakeAt(at) },
            Ok(Step::Done) => {
                let tail = to_i16(&self.resampler.finish());
                self.outbox.extend(self.framer.push(&tail).into_iter().map(JobEvent::Frame));
                let last = self.framer.finish();
                let outcome = if self.produced_audio { Outcome::Completed } else { Outcome::Empty };
                self.outbox.push_back(JobEvent::End { last, outcome });
                self.ended = true;
                moved = true;
            }
            Err(e) => {
                tracing::warn!(job = self.id, error = %e, "synthesis failed");
                self.framer.clear();
                self.outbox.push_back(JobEvent::End { last: None, outcome: Outcome::Failed(e.to_string()) });
                self.ended = true;
                moved = true;
            }
        }
        if self.flush().is_err() {
            return Progress::Gone;
        }
        if moved { Progress::Moved } else { Progress::Idle }
    }
}

fn to_i16(samples: &[f32]) -> Vec<i16> {
    samples.iter().map(|s| (s.clamp(-1.0, 1.0) * i16::MAX as f32).round() as i16).collect()
}

fn run_lane(mut engine: Box<dyn Engine>, mut cmd_rx: mpsc::Receiver<Command>, active: Arc<AtomicUsize>) {
    let rate = engine.descriptor().sample_rate_hz;
    let mut jobs: Vec<Running> = Vec::new();
    loop {
        loop {
            match cmd_rx.try_recv() {
                Ok(Command::Start { id, params, events_tx, control }) => match engine.start(&params) {
                    Ok(synthesis) => jobs.push(Running {
                        id,
                        synthesis,
                        resampler: Resampler::new(rate, duplex_audio::SAMPLE_RATE_HZ),
                        framer: Framer::new(),
                        events_tx,
                        outbox: VecDeque::new(),
                        control,
                        produced_audio: false,
                        ended: false,
                    }),
                    Err(e) => {
                        let _ =
                            events_tx.try_send(JobEvent::End { last: None, outcome: Outcome::Failed(e.to_string()) });
                        active.fetch_sub(1, Ordering::Relaxed);
                    }
                },
                Ok(Command::Text { id, text }) => {
                    if let Some(job) = jobs.iter_mut().find(|j| j.id == id) {
                        job.synthesis.push_text(&text);
                    }
                }
                Ok(Command::Finish { id }) => {
                    if let Some(job) = jobs.iter_mut().find(|j| j.id == id) {
                        job.synthesis.finish_text();
                    }
                }
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => return,
            }
        }

        let now = Instant::now();
        let mut moved = false;
        let mut wake_at: Option<Instant> = None;
        jobs.retain_mut(|job| match job.advance(now) {
            Progress::Gone => {
                active.fetch_sub(1, Ordering::Relaxed);
                false
            }
            Progress::Moved => {
                moved = true;
                true
            }
            Progress::WakeAt(at) => {
                wake_at = Some(wake_at.map_or(at, |w| w.min(at)));
                true
            }
            Progress::Idle => true,
        });

        if !moved {
            // A command, a consumed frame, pause/cancel or the deadline unparks us.
            let wait = wake_at.map_or(MAX_PARK, |at| at.saturating_duration_since(Instant::now()).min(MAX_PARK));
            if !wait.is_zero() {
                thread::park_timeout(wait);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mock::{MockConfig, MockEngine};

    fn host(cfg: MockConfig) -> EngineHost {
        EngineHost::start("mock", 1, move || Ok(Box::new(MockEngine::new(cfg.clone())?) as Box<dyn Engine>))
            .expect("mock starts")
    }

    async fn collect(job: &mut Job) -> (usize, JobEvent) {
        let mut frames = 0;
        loop {
            match job.next().await.expect("lane alive") {
                JobEvent::Frame(f) => {
                    assert_eq!(f.len(), duplex_audio::FRAME_BYTES);
                    frames += 1;
                }
                end => return (frames, end),
            }
        }
    }

    #[tokio::test]
    async fn streams_frames_then_one_end() {
        let h = host(MockConfig::default());
        let mut job = h.start_job(SynthesisParams::default()).await.unwrap();
        job.handle().push_text("Hi there.".into()).await.unwrap();
        job.handle().finish().await.unwrap();
        let (frames, end) = collect(&mut job).await;
        // 7 letters + space/2 + stop*4 = 11.5 chars * 75 ms = 862.5 ms -> 43 frames + a partial.
        assert_eq!(frames, 43);
        assert!(matches!(end, JobEvent::End { last: Some(_), outcome: Outcome::Completed }));
    }

    #[tokio::test]
    async fn empty_text_ends_empty() {
        let h = host(MockConfig::default());
        let mut job = h.start_job(SynthesisParams::default()).await.unwrap();
        job.handle().finish().await.unwrap();
        assert_eq!(collect(&mut job).await, (0, JobEvent::End { last: None, outcome: Outcome::Empty }));
    }

    #[tokio::test]
    async fn bad_params_fail_the_job_not_the_lane() {
        let h = host(MockConfig::default());
        let mut bad = h.start_job(SynthesisParams { speed: -1.0, voice: None }).await.unwrap();
        assert!(matches!(collect(&mut bad).await.1, JobEvent::End { outcome: Outcome::Failed(_), .. }));
        let mut good = h.start_job(SynthesisParams::default()).await.unwrap();
        good.handle().push_text("ok".into()).await.unwrap();
        good.handle().finish().await.unwrap();
        assert!(matches!(collect(&mut good).await.1, JobEvent::End { outcome: Outcome::Completed, .. }));
    }

    #[tokio::test]
    async fn paused_job_makes_no_progress_and_cancel_frees_lane() {
        let h = host(MockConfig::default());
        let mut job = h.start_job(SynthesisParams::default()).await.unwrap();
        job.handle().set_paused(true);
        job.handle().push_text("a long sentence to speak".into()).await.unwrap();
        job.handle().finish().await.unwrap();
        let waited = tokio::time::timeout(Duration::from_millis(100), job.next()).await;
        assert!(waited.is_err(), "no frame while paused");
        job.handle().set_paused(false);
        assert!(matches!(job.next().await, Some(JobEvent::Frame(_))));
        job.handle().cancel();
        drop(job);
        for _ in 0..100 {
            if h.active_jobs() == 0 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        panic!("cancelled job still active");
    }
}
