//! The `duplex` command's library: a protocol client and the tools built on it.
//!
//! - [`assets`]: fetch and verify models and native libraries.
//! - [`client`]: WebSocket client of the orchestrator protocol.
//! - [`talk`]: send text and controls, save or play the reply.
//! - [`bench`]: latency, control and jitter benchmark at several concurrencies.
//! - [`bench_duplex`]: the spoken conversation: VAD, ASR, turn latency, barge-in.
//! - [`bench_gpu`]: the Kyutai TTS model's step time per batch size.
//! - [`bench_webrtc`]: Opus encode and decode cost per 20 ms frame.
//! - [`bench_routing`]: selection cost and dead-worker detection.
//! - [`bench_tts`]: the Piper voice: first audio, real-time sessions, engine overhead.
//! - [`stats`]: percentile summaries.
//! - [`voice`]: real speech from the Piper voice (the "user" of benchmarks and tests).

pub mod assets;
pub mod bench;
pub mod bench_duplex;
pub mod bench_gpu;
pub mod bench_routing;
pub mod bench_tts;
pub mod bench_webrtc;
pub mod client;
pub mod soak;
pub mod stats;
pub mod talk;
pub mod voice;
