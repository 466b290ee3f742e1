//! Kyutai's delayed-streams text-to-speech (the `kyutai/tts-1.6b-en_fr`
//! architecture) on candle, for the GPU worker (issue 10).
//!
//! - [`Config`]: the model's shape from its `config.json`; `tiny()` for tests.
//! - [`weights`]: every tensor's name and shape, and a writer of random
//!   weights in the real formats (tests; the GPU benchmark at full size).
//! - [`Model`]: the language model stepped for a batch of slots at once —
//!   backbone with per-slot positions and voices, then the depth transformer
//!   generating the step's codebooks.
//! - [`codec`]: the Mimi decoder (moshi's), codebooks → 80 ms of 24 kHz audio per slot.
//! - [`files`]: the release's files, from a directory or a Hugging Face repo.
//! - [`tokenizer`]: the SentencePiece unigram tokenizer, read from its `.model` file.
//! - [`machine`]: which text token each step feeds (words as the model asks for them).
//! - [`engine`]: the model thread stepping every session's slot; Busy when full.
//! - [`Sampler`]: picks tokens from logits (greedy, or top-k with a temperature).
//!
//! Built on the candle that `moshi` uses (`moshi::candle`), apart from the
//! ASR and LLM crates' newer candle: the two never exchange tensors.

pub mod bench;
pub mod codec;
pub mod config;
pub mod engine;
pub mod files;
pub mod machine;
pub mod model;
mod rng;
pub mod sampler;
pub mod tokenizer;
pub mod voice;
pub mod weights;

/// The candle this crate computes with (moshi's), for callers' tensors.
pub use moshi::candle as moshi_candle;

pub use config::Config;
pub use model::Model;
pub use sampler::Sampler;

#[derive(Debug, thiserror::Error)]
pub enum KyutaiError {
    #[error("model config: {0}")]
    Config(String),
    #[error("{what} is missing: {path}")]
    Missing { what: String, path: std::path::PathBuf },
    #[error("fetching {file} from the Hugging Face repo {repo}: {reason}")]
    Fetch { repo: String, file: String, reason: String },
    #[error("reading {path}: {source}")]
    Io { path: std::path::PathBuf, source: std::io::Error },
    #[error("model: {0}")]
    Candle(#[from] moshi::candle::Error),
}
