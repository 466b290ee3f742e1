//! The registry record: `worker:<name>` holds this as JSON with a TTL.
//!
//! The first fields are the predecessor's schema (its readers keep working);
//! `models`, `device`, `load` and `version` are Duplex extensions.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Key prefix of worker records.
pub const WORKER_KEY_PREFIX: &str = "worker:";

pub fn worker_key(name: &str) -> String {
    format!("{WORKER_KEY_PREFIX}{name}")
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkerRecord {
    pub name: String,
    /// `grpc://host:port`.
    pub addr: String,
    pub capabilities: Capabilities,
    pub resident_models: Vec<String>,
    /// `rtf` and `queue_depth`, as the predecessor named them.
    pub metrics: BTreeMap<String, f64>,
    /// Unix time in seconds (fractional).
    pub last_heartbeat_ts: f64,
    // --- Duplex extensions ---
    #[serde(default)]
    pub models: Vec<ModelEntry>,
    /// `cpu` or `gpu`.
    #[serde(default)]
    pub device: String,
    #[serde(default)]
    pub load: Load,
    #[serde(default)]
    pub version: String,
}

/// The predecessor's capability block (same names as the gRPC message).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Capabilities {
    pub streaming: bool,
    pub zero_shot: bool,
    pub lora: bool,
    pub cpu_ok: bool,
    pub languages: Vec<String>,
    pub emotive_zero_prompt: bool,
    pub max_concurrent_sessions: u32,
}

/// A model the worker can serve.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ModelEntry {
    pub model_id: String,
    pub family: String,
    pub languages: Vec<String>,
    pub resident: bool,
}

/// Live load.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Load {
    pub active_sessions: u32,
    /// Utterances being synthesized.
    pub queue_depth: u32,
    /// Sessions the worker accepts at most.
    pub capacity: u32,
    /// Measured compute time per second of audio (0 until measured).
    pub rtf: f64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn predecessor_fields_are_present_and_named_as_before() {
        let r = WorkerRecord {
            name: "worker-0".into(),
            addr: "grpc://tts:7001".into(),
            capabilities: Capabilities { streaming: true, max_concurrent_sessions: 10, ..Default::default() },
            resident_models: vec!["mock".into()],
            metrics: [("rtf".to_string(), 0.1), ("queue_depth".to_string(), 0.0)].into(),
            last_heartbeat_ts: 1.5,
            models: vec![],
            device: "cpu".into(),
            load: Load::default(),
            version: "0.1.0".into(),
        };
        let v: serde_json::Value = serde_json::to_value(&r).unwrap();
        for key in ["name", "addr", "capabilities", "resident_models", "metrics", "last_heartbeat_ts"] {
            assert!(v.get(key).is_some(), "{key}");
        }
        assert_eq!(v["capabilities"]["max_concurrent_sessions"], 10);
        assert_eq!(v["metrics"]["rtf"], 0.1);
        // A predecessor record (no extensions) still parses.
        let old = r#"{"name":"w","addr":"grpc://h:7001","capabilities":{"streaming":true,"zero_shot":false,"lora":false,
            "cpu_ok":true,"languages":["en"],"emotive_zero_prompt":false,"max_concurrent_sessions":3},
            "resident_models":[],"metrics":{"rtf":0.2,"queue_depth":1},"last_heartbeat_ts":1700000000.0}"#;
        let parsed: WorkerRecord = serde_json::from_str(old).unwrap();
        assert_eq!(parsed.capabilities.max_concurrent_sessions, 3);
        assert_eq!(worker_key("w"), "worker:w");
    }
}
