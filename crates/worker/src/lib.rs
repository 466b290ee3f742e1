//! The Duplex TTS worker: a tonic gRPC server (`tts.TTSService`, health,
//! reflection) over engines running on their own threads.
//!
//! - [`config`]: `configs/worker.yaml` and its environment overrides.
//! - [`engines`]: the engine families (tagged config) and how each is built.
//! - `kyutai`: Kyutai's TTS model, sessions batched on one model (feature `kyutai`).
//! - [`models`]: configured vs loaded models, load/unload/reload.
//! - [`registry`]: the record this worker publishes in Redis.
//! - [`session`]: per-session pause / stop / close.
//! - [`synth`]: one Synthesize stream (reader and writer tasks).
//! - [`service`]: the RPC handlers and their status codes.
//! - [`server`]: bind, health, warm-up, graceful shutdown.

pub mod config;
pub mod engines;
#[cfg(feature = "kyutai")]
pub mod kyutai;
pub mod metrics;
pub mod models;
pub mod registry;
pub mod server;
pub mod service;
pub mod session;
pub mod synth;

pub use config::Config;
pub use server::{Handle, probe, run, spawn};
