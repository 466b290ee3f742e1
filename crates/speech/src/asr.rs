//! Speech recognition: a [`Transcriber`] turns one user turn's audio (16 kHz
//! mono, from the detector) into text. Implementations run their model on
//! threads of their own and answer through a oneshot channel.

use tokio::sync::oneshot;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum AsrError {
    #[error("speech recognition failed: {0}")]
    Failed(String),
    #[error("speech recognition is busy ({0} turns waiting)")]
    Busy(usize),
}

pub trait Transcriber: Send + Sync + std::fmt::Debug {
    /// Transcribes `audio` (16 kHz mono, -1.0..=1.0). An empty string means
    /// nothing intelligible was said.
    fn transcribe(&self, audio: Vec<f32>) -> oneshot::Receiver<Result<String, AsrError>>;

    fn describe(&self) -> String;
}
