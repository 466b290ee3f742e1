//! The engine contract: synchronous and step-wise, so the host can interleave
//! many syntheses on one thread and check cancellation between steps.

use std::collections::BTreeMap;
use std::time::Instant;

/// What a loaded engine says about itself (reported by ListModels/GetCapabilities).
#[derive(Debug, Clone, PartialEq)]
pub struct ModelDescriptor {
    pub model_id: String,
    pub family: String,
    pub languages: Vec<String>,
    /// Rate of the samples `Synthesis::step` returns (the host resamples to 48 kHz).
    pub sample_rate_hz: u32,
    pub metadata: BTreeMap<String, String>,
}

/// Per-utterance parameters.
#[derive(Debug, Clone, PartialEq)]
pub struct SynthesisParams {
    /// Speaking-rate multiplier, 1.0 = the engine's normal rate.
    pub speed: f32,
    /// Voice within the model; `None` = default.
    pub voice: Option<String>,
}

impl Default for SynthesisParams {
    fn default() -> Self {
        Self { speed: 1.0, voice: None }
    }
}

/// Result of one step of a synthesis.
#[derive(Debug, PartialEq)]
pub enum Step {
    /// Newly synthesized samples at the engine's rate, in -1.0..=1.0.
    Audio(Vec<f32>),
    /// The audio that follows speaks the text from this character on (counted
    /// over everything pushed). Engines say it at each sentence or clause they
    /// start, so a cut-off utterance can be resumed there on another worker.
    Speaking { text_offset: usize },
    /// Everything pushed so far is spoken; more text may follow.
    NeedText,
    /// Nothing to do before this instant (the host parks until then).
    NotBefore(Instant),
    /// All text is spoken and no more will come.
    Done,
}

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("invalid engine option {name}: {reason}")]
    InvalidOption { name: &'static str, reason: String },
    #[error("voice {0:?} not found")]
    VoiceNotFound(String),
    #[error("synthesis failed: {0}")]
    Failed(String),
}

/// A loaded model. Lives on one host thread; `start` is called there.
pub trait Engine: Send {
    fn descriptor(&self) -> &ModelDescriptor;

    /// Runs a short synthesis so the first real request is not slow.
    fn warm_up(&mut self) -> Result<(), EngineError> {
        let mut s = self.start(&SynthesisParams::default())?;
        s.push_text("Warm up.");
        s.finish_text();
        let deadline = Instant::now() + std::time::Duration::from_secs(30);
        loop {
            match s.step(Instant::now())? {
                Step::Done => return Ok(()),
                Step::NotBefore(t) => std::thread::sleep(t.saturating_duration_since(Instant::now())),
                Step::Audio(_) | Step::Speaking { .. } | Step::NeedText => {}
            }
            if Instant::now() > deadline {
                return Err(EngineError::Failed("warm-up did not finish in 30 s".into()));
            }
        }
    }

    /// Begins one utterance. Text is pushed into the returned synthesis.
    fn start(&mut self, params: &SynthesisParams) -> Result<Box<dyn Synthesis>, EngineError>;
}

/// Aborts a synthesis step in progress, from any thread.
pub type Interrupt = std::sync::Arc<dyn Fn() + Send + Sync>;

/// One utterance in progress. Each `step` should do a bounded amount of work
/// so cancellation is noticed quickly; an engine whose steps are long (a whole
/// chunk of neural inference) offers an [`Interrupt`] instead.
pub trait Synthesis: Send {
    fn push_text(&mut self, text: &str);
    /// No more text will be pushed.
    fn finish_text(&mut self);
    fn step(&mut self, now: Instant) -> Result<Step, EngineError>;
    /// Like `step`, knowing the listener runs out of audio in `slack`: an
    /// engine with long steps may do a smaller piece of work so audio comes in
    /// time. The default ignores the hint.
    fn step_within(&mut self, now: Instant, slack: std::time::Duration) -> Result<Step, EngineError> {
        let _ = slack;
        self.step(now)
    }
    /// Called by the host when the job is cancelled while a step may be running.
    fn interrupter(&self) -> Option<Interrupt> {
        None
    }
}
