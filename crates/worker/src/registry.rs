//! What this worker publishes in the Redis registry, built from live state
//! at every heartbeat.

use std::net::SocketAddr;

use duplex_discovery::record::Capabilities;
use duplex_discovery::{Load, ModelEntry, WorkerRecord};

use crate::service::State;

/// `grpc://host:port` others should dial: the configured advertise address, or
/// this host's name (when listening on all interfaces) and the bound port.
pub fn advertise_addr(state: &State, bound: SocketAddr) -> String {
    let configured = &state.config.registry.advertise_addr;
    if !configured.is_empty() {
        return configured.clone();
    }
    let host = match state.config.grpc.host.as_str() {
        "0.0.0.0" | "::" | "[::]" => std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .ok()
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "127.0.0.1".into()),
        h => h.to_string(),
    };
    format!("grpc://{host}:{}", bound.port())
}

/// `cuda` when a configured model runs on the GPU, else `cpu`.
fn device(state: &State) -> String {
    #[cfg(feature = "kyutai")]
    if state.models.configs().iter().any(|c| matches!(c, crate::engines::EngineConfig::Kyutai(k) if k.device == "cuda"))
    {
        return "cuda".into();
    }
    let _ = state;
    "cpu".into()
}

pub fn record(state: &State, addr: &str) -> WorkerRecord {
    let resident = state.models.resident();
    let models: Vec<ModelEntry> = state
        .models
        .configs()
        .iter()
        .map(|c| {
            let r = resident.get(c.model_id());
            ModelEntry {
                model_id: c.model_id().to_string(),
                family: c.family().to_string(),
                languages: r.map(|r| r.descriptor.languages.clone()).unwrap_or_else(|| c.languages()),
                resident: r.is_some(),
            }
        })
        .collect();
    let mut languages: Vec<String> = models.iter().flat_map(|m| m.languages.clone()).collect();
    languages.sort();
    languages.dedup();
    let rtf = state.models.rtf();
    let queue_depth = state.models.active_jobs() as u32;
    let capacity = state.config.limits.max_sessions as u32;
    WorkerRecord {
        name: state.config.name.clone(),
        addr: addr.to_string(),
        capabilities: Capabilities {
            streaming: true,
            zero_shot: false,
            lora: false,
            cpu_ok: true,
            languages,
            emotive_zero_prompt: false,
            max_concurrent_sessions: capacity,
        },
        resident_models: resident.keys().cloned().collect(),
        metrics: [("rtf".to_string(), rtf), ("queue_depth".to_string(), queue_depth as f64)]
            .into_iter()
            .chain(state.models.free_slots().map(|n| ("free_slots".to_string(), n as f64)))
            .collect(),
        last_heartbeat_ts: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0),
        models,
        device: device(state),
        load: Load { active_sessions: state.sessions.len() as u32, queue_depth, capacity, rtf },
        version: env!("CARGO_PKG_VERSION").to_string(),
    }
}
