//! The Duplex orchestrator: accepts WebSocket sessions, sends their text to
//! a TTS worker over gRPC and plays the audio back paced in real time.
//!
//! - [`config`]: `configs/orchestrator.yaml` and environment overrides.
//! - [`conversation`]: VAD, speech recognition and responder shared by sessions.
//! - [`protocol`]: the typed WebSocket messages and binary frame header.
//! - [`playout`]: the paced, pausable, flushable playout queue.
//! - [`session`]: one session's task.
//! - [`turn`]: turn-taking and barge-in as a pure state machine.
//! - [`worker`]: the gRPC client side (shared connection, per-session stream).
//! - [`metrics`]: Prometheus metrics.
//! - [`server`]: routes, probes, graceful shutdown.
//! - `http`: the main port's server (header and TLS handshake deadlines, HTTPS/WSS).
//! - [`web`]: the browser page and the voices it offers.
//! - [`webrtc`]: the WebRTC transport (offer/answer, a session over the call).

pub mod access;
pub mod config;
pub mod conversation;
mod http;
mod link;
pub mod livekit;
pub mod metrics;
pub mod playout;
/// The WebSocket protocol (its own crate, so fuzzing it builds nothing else).
pub use duplex_protocol as protocol;
pub mod rate;
pub mod server;
pub mod session;
pub mod turn;
pub mod web;
pub mod webrtc;
pub mod worker;

pub use config::Config;
pub use server::{Handle, run, spawn};
