//! Duplex in LiveKit rooms (issue 9).
//!
//! - [`token`]: access tokens — for browsers (one room, one identity, short
//!   TTL, names checked against an allow-list) and for our agent — and the
//!   check of LiveKit's signed webhooks.
//! - [`agent`]: our participant. It joins a room through LiveKit's signal
//!   client (WebSocket + protobuf, `livekit-api`), answers the server's
//!   subscriber offers (the user's microphone arrives decoded to 48 kHz PCM),
//!   publishes its own Opus voice track and talks on the `_reliable` data
//!   channel. It leaves when the room has been empty for a grace period.
//! - [`data`]: our messages in LiveKit data packets (topic `duplex`).
//!
//! Media (Opus, peers) comes from `duplex-rtc`; what the agent hears and says
//! is the same [`Inbound`]/[`Outbound`] as a direct WebRTC call, so the
//! orchestrator runs one session pipeline for every transport.

pub mod agent;
pub mod config;
pub mod data;
pub mod token;

pub use config::LiveKitConfig;
pub use duplex_rtc::peer::{Inbound, Outbound};

#[derive(Debug, thiserror::Error)]
pub enum LiveKitError {
    #[error("livekit signalling: {0}")]
    Signal(String),
    #[error(transparent)]
    Rtc(#[from] duplex_rtc::peer::RtcError),
    #[error(transparent)]
    Token(#[from] token::TokenError),
    #[error("livekit: {0}")]
    Protocol(String),
}
