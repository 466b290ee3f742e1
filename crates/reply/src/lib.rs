//! The reply step: given what was said so far and the user's new words, a
//! [`Responder`] streams the bot's answer in pieces as they are produced, so
//! speech can start before the answer is finished.
//!
//! - [`echo`]: says back what it heard (no model; tests and demos).
//! - [`local`]: a local language model (SmolLM2 GGUF on candle).
//! - [`openai`]: any OpenAI-compatible chat server, streamed.

pub mod echo;
pub mod local;
pub mod openai;

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

pub use echo::Echo;
pub use local::{LocalConfig, LocalLlm};
pub use openai::{OpenAi, OpenAiConfig};

/// What the bot is told it is, unless configured otherwise: its answers are spoken.
pub const DEFAULT_SYSTEM_PROMPT: &str = "You are a friendly voice assistant. Answer in one or two short spoken sentences, with no lists, markdown or emoji.";

/// Reply pieces queued toward the session; a piece is a token or a few, so
/// this is a fraction of a second of generation. Full = the session is slow
/// to read and generation waits.
pub const PIECE_QUEUE: usize = 64;

/// One finished exchange of the conversation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Exchange {
    pub user: String,
    /// What the user heard of the reply (cut short when they interrupted).
    pub assistant: String,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ReplyError {
    #[error("the reply model failed: {0}")]
    Model(String),
    #[error("the reply server failed: {0}")]
    Server(String),
}

/// What a responder is asked.
#[derive(Debug, Clone)]
pub struct Request {
    pub history: Vec<Exchange>,
    pub user: String,
    /// Cancelled when the reply is no longer wanted (the user interrupted).
    pub cancel: CancellationToken,
}

/// Produces replies. Implementations do their work off the caller's task
/// (a thread for a local model, a task for a server) and stop when `cancel`
/// fires or the receiver is dropped.
pub trait Responder: Send + Sync + std::fmt::Debug {
    fn respond(&self, request: Request) -> mpsc::Receiver<Result<String, ReplyError>>;

    /// For logs and `/ready`.
    fn describe(&self) -> String;
}
