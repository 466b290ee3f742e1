//! The hearing threads: each owns a Silero model and runs the microphone
//! streams assigned to it — resampling to 16 kHz, 32 ms windows, VAD and the
//! detector — and sends each stream's events to its session. Sessions only
//! queue audio (bounded) and read events; no model runs on the async runtime.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc as std_mpsc};
use std::thread::Thread;
use std::time::{Duration, Instant};

use duplex_audio::Resampler;
use tokio::sync::mpsc;

use crate::detector::{Detector, VadConfig, VadEvent};
use crate::silero::{SileroError, SileroVad, StreamState};
use crate::{MODEL_RATE_HZ, WINDOW_SAMPLES};

/// Microphone chunks a stream may have waiting (about a second of 20 ms
/// chunks); more means the client sends faster than real time and is refused.
pub const INPUT_QUEUE_CHUNKS: usize = 50;
/// Events waiting for the session. A session reads them at once; full means
/// it is stuck, and further events of that stream are dropped (logged).
const EVENT_QUEUE: usize = 16;
/// Longest park without work; a safety net, not a poll interval.
const MAX_PARK: Duration = Duration::from_millis(500);
/// Microphone rates a client may send.
pub const INPUT_RATES_HZ: [u32; 5] = [8_000, 16_000, 24_000, 44_100, 48_000];

#[derive(Debug, thiserror::Error)]
pub enum EarsError {
    #[error(transparent)]
    Model(#[from] SileroError),
    #[error("microphone audio arrives faster than real time (more than {INPUT_QUEUE_CHUNKS} chunks waiting)")]
    TooFast,
    #[error("microphone sample rate {0} Hz is not supported (use one of 8000, 16000, 24000, 44100, 48000)")]
    Rate(u32),
    #[error("the hearing thread stopped")]
    Stopped,
}

/// What a stream's session hears.
#[derive(Debug, Clone, PartialEq)]
pub enum Heard {
    /// A detector event and when it was decided.
    Vad { event: VadEvent, at: Instant },
    /// The stream's VAD failed; nothing more comes.
    Failed(String),
}

/// Called with the compute time of every VAD window (for metrics).
pub type WindowObserver = Arc<dyn Fn(Duration) + Send + Sync>;

struct Stream {
    inbox: Mutex<VecDeque<Vec<i16>>>,
    rate_hz: u32,
    bot_speaking: AtomicBool,
    closed: AtomicBool,
    events_tx: mpsc::Sender<Heard>,
}

struct Lane {
    streams_tx: std_mpsc::Sender<Arc<Stream>>,
    thread: Thread,
}

/// The pool of hearing threads; cheap to share behind an `Arc`.
pub struct Ears {
    lanes: Vec<Lane>,
    next: AtomicUsize,
    config: VadConfig,
}

impl std::fmt::Debug for Ears {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ears").field("threads", &self.lanes.len()).finish()
    }
}

/// One session's microphone stream. Dropping it ends the stream.
pub struct Listener {
    stream: Arc<Stream>,
    thread: Thread,
    /// VAD events, in order.
    pub events: mpsc::Receiver<Heard>,
}

impl std::fmt::Debug for Listener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Listener").field("rate_hz", &self.stream.rate_hz).finish()
    }
}

impl Listener {
    /// Queues microphone samples (mono, at the stream's rate).
    pub fn push(&self, pcm: Vec<i16>) -> Result<(), EarsError> {
        if self.stream.closed.load(Ordering::Acquire) {
            return Err(EarsError::Stopped);
        }
        {
            let mut inbox = self.stream.inbox.lock().unwrap_or_else(|p| p.into_inner());
            if inbox.len() >= INPUT_QUEUE_CHUNKS {
                return Err(EarsError::TooFast);
            }
            inbox.push_back(pcm);
        }
        self.thread.unpark();
        Ok(())
    }

    /// While the bot speaks, starting speech takes more (echo guard).
    pub fn set_bot_speaking(&self, speaking: bool) {
        self.stream.bot_speaking.store(speaking, Ordering::Relaxed);
    }

    pub fn rate_hz(&self) -> u32 {
        self.stream.rate_hz
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.stream.closed.store(true, Ordering::Release);
        self.thread.unpark();
    }
}

impl Ears {
    /// Starts `threads` hearing threads, each loading the model at `model`.
    /// Blocking (model loads); returns once all are ready.
    pub fn start(model: &Path, threads: usize, config: VadConfig, observe: WindowObserver) -> Result<Self, EarsError> {
        let mut lanes = Vec::new();
        for i in 0..threads.max(1) {
            let (streams_tx, streams_rx) = std_mpsc::channel();
            let (ready_tx, ready_rx) = std_mpsc::sync_channel(1);
            let (path, config, observe) = (model.to_path_buf(), config.clone(), observe.clone());
            let handle = std::thread::Builder::new()
                .name(format!("hearing-{i}"))
                .spawn(move || run_lane(path, config, observe, streams_rx, ready_tx))
                .map_err(|_| EarsError::Stopped)?;
            ready_rx.recv().map_err(|_| EarsError::Stopped)??;
            lanes.push(Lane { streams_tx, thread: handle.thread().clone() });
        }
        Ok(Self { lanes, next: AtomicUsize::new(0), config })
    }

    pub fn config(&self) -> &VadConfig {
        &self.config
    }

    /// Opens a microphone stream at `rate_hz`.
    pub fn listen(&self, rate_hz: u32) -> Result<Listener, EarsError> {
        if !INPUT_RATES_HZ.contains(&rate_hz) {
            return Err(EarsError::Rate(rate_hz));
        }
        let (events_tx, events) = mpsc::channel(EVENT_QUEUE);
        let stream = Arc::new(Stream {
            inbox: Mutex::new(VecDeque::new()),
            rate_hz,
            bot_speaking: AtomicBool::new(false),
            closed: AtomicBool::new(false),
            events_tx,
        });
        let lane = &self.lanes[self.next.fetch_add(1, Ordering::Relaxed) % self.lanes.len()];
        lane.streams_tx.send(stream.clone()).map_err(|_| EarsError::Stopped)?;
        lane.thread.unpark();
        Ok(Listener { stream, thread: lane.thread.clone(), events })
    }
}

impl Drop for Ears {
    fn drop(&mut self) {
        // Dropping the senders ends each lane once its streams are gone.
        for lane in self.lanes.drain(..) {
            let thread = lane.thread.clone();
            drop(lane);
            thread.unpark();
        }
    }
}

/// A stream as its lane sees it.
struct Work {
    stream: Arc<Stream>,
    resampler: Resampler,
    pending: Vec<f32>,
    state: StreamState,
    detector: Detector,
}

impl Work {
    /// Processes what the stream has queued; false when the stream is over.
    fn run(&mut self, vad: &mut SileroVad, observe: &WindowObserver) -> Result<bool, SileroError> {
        loop {
            let chunk = self.stream.inbox.lock().unwrap_or_else(|p| p.into_inner()).pop_front();
            let Some(chunk) = chunk else { return Ok(true) };
            let samples: Vec<f32> = chunk.iter().map(|s| *s as f32 / 32_768.0).collect();
            let resampled = self.resampler.push(&samples);
            self.pending.extend_from_slice(&resampled);
            let mut used = 0;
            while self.pending.len() - used >= WINDOW_SAMPLES {
                let window = &self.pending[used..used + WINDOW_SAMPLES];
                let started = Instant::now();
                let p = vad.probability(&mut self.state, window)?;
                observe(started.elapsed());
                let bot = self.stream.bot_speaking.load(Ordering::Relaxed);
                if let Some(event) = self.detector.push(window, p, bot)
                    && self.stream.events_tx.try_send(Heard::Vad { event, at: Instant::now() }).is_err()
                {
                    tracing::warn!("a session is not reading its VAD events; one was dropped");
                }
                used += WINDOW_SAMPLES;
            }
            self.pending.drain(..used);
        }
    }
}

fn run_lane(
    path: PathBuf,
    config: VadConfig,
    observe: WindowObserver,
    streams_rx: std_mpsc::Receiver<Arc<Stream>>,
    ready_tx: std_mpsc::SyncSender<Result<(), EarsError>>,
) {
    let mut vad = match SileroVad::load(&path) {
        Ok(v) => {
            let _ = ready_tx.send(Ok(()));
            v
        }
        Err(e) => {
            let _ = ready_tx.send(Err(e.into()));
            return;
        }
    };
    let mut work: Vec<Work> = Vec::new();
    let mut open = true;
    loop {
        loop {
            match streams_rx.try_recv() {
                Ok(stream) => work.push(Work {
                    resampler: Resampler::new(stream.rate_hz, MODEL_RATE_HZ),
                    stream,
                    pending: Vec::new(),
                    state: StreamState::default(),
                    detector: Detector::new(config.clone()),
                }),
                Err(std_mpsc::TryRecvError::Empty) => break,
                Err(std_mpsc::TryRecvError::Disconnected) => {
                    open = false;
                    break;
                }
            }
        }
        work.retain_mut(|w| {
            if w.stream.closed.load(Ordering::Acquire) {
                return false;
            }
            match w.run(&mut vad, &observe) {
                Ok(alive) => alive,
                Err(e) => {
                    tracing::warn!(error = %e, "VAD failed; the stream stops hearing");
                    let _ = w.stream.events_tx.try_send(Heard::Failed(e.to_string()));
                    w.stream.closed.store(true, Ordering::Release);
                    false
                }
            }
        });
        if !open && work.is_empty() {
            return;
        }
        std::thread::park_timeout(MAX_PARK);
    }
}
