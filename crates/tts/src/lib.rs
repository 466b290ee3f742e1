//! Text-to-speech engines behind one synchronous, step-wise trait, and the host
//! that runs them on OS threads they own (never on the async runtime).
//!
//! - [`engine`]: the [`Engine`] / [`Synthesis`] traits every engine implements.
//! - [`host`]: [`EngineHost`] steps many syntheses on its threads, frames their
//!   audio into 20 ms wire frames and honours pause and cancellation per job.
//! - [`mock`]: a deterministic, speech-like engine with configurable latency and speed.
//! - [`text`]: normalization (numbers, abbreviations, symbols) and segmentation.

pub mod engine;
pub mod host;
pub mod mock;
pub mod text;

pub use engine::{Engine, EngineError, Interrupt, ModelDescriptor, Step, Synthesis, SynthesisParams};
pub use host::{EngineHost, HostError, Job, JobEvent, JobHandle, Outcome};
