//! The worker registry in Redis.
//!
//! - [`record`]: what a worker publishes under `worker:<name>` (the
//!   predecessor's JSON schema plus what routing needs).
//! - [`registrar`]: the worker side — register after warm-up, refresh on a
//!   heartbeat with a TTL, keep serving through Redis outages, deregister on
//!   shutdown.

pub mod record;
pub mod registrar;

pub use record::{Load, ModelEntry, WorkerRecord, worker_key};
pub use registrar::{RegistrarHandle, RegistryConfig, spawn};
