//! The cross-component suite, one test binary: a binary per file linked the
//! whole stack (orchestrator, worker, models, WebRTC) seventeen times over.
//! nextest still runs every test in its own process.

mod access;
mod asr;
mod browser;
mod conversation;
mod docs;
mod failover;
mod faults;
mod hearing;
mod kyutai;
mod livekit;
mod metrics;
mod openai;
mod piper;
mod processes;
mod registry;
mod reply;
mod routing;
mod tls;
mod traces;
mod webrtc;
mod websocket;
mod worker_grpc;
