//! The worker registry in Redis.
//!
//! - [`record`]: what a worker publishes under `worker:<name>` (the
//!   predecessor's JSON schema plus what routing needs).
//! - [`registrar`]: the worker side — register after warm-up, refresh on a
//!   heartbeat with a TTL, keep serving through Redis outages, deregister on
//!   shutdown.
//! - [`watch`]: the orchestrator side — a periodic SCAN into a local view.
//! - [`select`]: choosing a worker for a session from that view.
//! - [`affinity`]: `routing:affinity:<session_id>`, so a reconnecting
//!   session returns to its worker.

pub mod affinity;
pub mod record;
pub mod registrar;
pub mod select;
pub mod watch;

pub use affinity::{Affinity, affinity_key};
pub use record::{Load, ModelEntry, WorkerRecord, worker_key};
pub use registrar::{RegistrarHandle, RegistryConfig, spawn};
pub use select::{NoWorker, Want, is_resident, select};
pub use watch::{View, watch};
