//! Hearing the user.
//!
//! - [`silero`]: the Silero VAD model on ONNX Runtime — speech probability
//!   per 32 ms window at 16 kHz.
//! - [`detector`]: turns those probabilities into speech segments (start and
//!   stop thresholds, minimum speech and silence, pre-roll kept for ASR);
//!   pure, so its timing rules are unit-tested without a model.
//! - [`asr`]: the speech recognition contract.
//! - [`ears`]: threads that own the models and run every session's
//!   microphone stream through resampling, VAD and the detector, off the
//!   async runtime.

pub mod asr;
pub mod detector;
pub mod ears;
pub mod silero;

pub use asr::{AsrError, Transcriber};
pub use detector::{Detector, VadConfig, VadEvent};
pub use ears::{Ears, EarsError, Listener};
pub use silero::{SileroError, SileroVad};

/// Rate the speech models work at.
pub const MODEL_RATE_HZ: u32 = 16_000;
/// Samples per VAD window at 16 kHz (32 ms).
pub const WINDOW_SAMPLES: usize = 512;
/// One VAD window in milliseconds.
pub const WINDOW_MS: u32 = (WINDOW_SAMPLES as u32 * 1000) / MODEL_RATE_HZ;
