//! Piper voices as a Duplex TTS engine: text is normalized and cut into
//! chunks (clauses first, then sentences), phonemized with espeak-ng, mapped
//! to the voice's phoneme ids and synthesized by the VITS model on ONNX
//! Runtime, one chunk per step, on the engine host's threads.
//!
//! This crate links libespeak-ng and is GPL-3.0-or-later; see LICENSING.md.

mod engine;
pub mod espeak;
mod runtime;
pub mod voice;

pub use engine::{PiperConfig, PiperEngine};
pub use runtime::init_runtime;

#[derive(Debug, thiserror::Error)]
pub enum PiperError {
    #[error("voice: {0}")]
    Voice(String),
    #[error("espeak-ng: {0}")]
    Espeak(String),
    #[error("ONNX Runtime: {0}")]
    Runtime(String),
}

impl From<PiperError> for duplex_tts::EngineError {
    fn from(e: PiperError) -> Self {
        duplex_tts::EngineError::Failed(e.to_string())
    }
}
