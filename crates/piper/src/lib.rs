//! Piper voices as a Duplex TTS engine: text is normalized and cut into
//! chunks (clauses first, then sentences), phonemized with espeak-ng, mapped
//! to the voice's phoneme ids and synthesized by the VITS model on ONNX
//! Runtime, one chunk per step, on the engine host's threads.
//!
//! This crate links libespeak-ng and is GPL-3.0-or-later; see LICENSING.md.

mod engine;
pub mod espeak;
pub mod voice;

pub use duplex_onnx::init_runtime;
pub use engine::{PiperConfig, PiperEngine};

#[derive(Debug, thiserror::Error)]
pub enum PiperError {
    #[error("voice: {0}")]
    Voice(String),
    #[error("espeak-ng: {0}")]
    Espeak(String),
    #[error("ONNX Runtime: {0}")]
    Runtime(String),
}

impl From<duplex_onnx::RuntimeError> for PiperError {
    fn from(e: duplex_onnx::RuntimeError) -> Self {
        PiperError::Runtime(e.to_string())
    }
}

impl From<PiperError> for duplex_tts::EngineError {
    fn from(e: PiperError) -> Self {
        duplex_tts::EngineError::Failed(e.to_string())
    }
}
