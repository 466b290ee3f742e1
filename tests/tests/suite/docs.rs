//! The docs, configs and compose file agree with the config types.

use std::collections::BTreeSet;

fn repo(path: &str) -> String {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    std::fs::read_to_string(root.join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Dotted paths of every leaf key (sequences are not descended).
fn keys(value: &serde_yaml::Value, prefix: &str, out: &mut BTreeSet<String>) {
    if let serde_yaml::Value::Mapping(map) = value {
        for (k, v) in map {
            let k = k.as_str().expect("string keys");
            let path = if prefix.is_empty() { k.to_string() } else { format!("{prefix}.{k}") };
            match v {
                serde_yaml::Value::Mapping(_) => keys(v, &path, out),
                _ => {
                    out.insert(path);
                }
            }
        }
    }
}

fn all_keys<T: serde::Serialize>(value: &T) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    keys(&serde_yaml::to_value(value).unwrap(), "", &mut out);
    out
}

/// Backticked names in the first column of markdown tables.
fn documented(doc: &str) -> BTreeSet<String> {
    doc.lines()
        .filter_map(|l| l.strip_prefix("| `"))
        .filter_map(|l| l.split_once('`').map(|(k, _)| k.to_string()))
        .collect()
}

#[test]
fn every_config_key_is_documented() {
    let doc = documented(&repo("docs/CONFIG.md"));
    let mut missing: Vec<String> = Vec::new();
    for key in all_keys(&duplex_worker::Config::default()) {
        if !doc.contains(&key) {
            missing.push(format!("worker {key}"));
        }
    }
    for key in all_keys(&duplex_tts::mock::MockConfig::default()) {
        if !doc.contains(&key) {
            missing.push(format!("mock {key}"));
        }
    }
    let piper: duplex_piper::PiperConfig =
        serde_yaml::from_str("model_id: v\nvoice_dir: d\nnoise_scale: 0.5\nlength_scale: 1.0\nnoise_w: 0.8\n").unwrap();
    for key in all_keys(&piper) {
        if !doc.contains(&key) {
            missing.push(format!("piper {key}"));
        }
    }
    for key in all_keys(&duplex_orchestrator::Config::default()) {
        if !doc.contains(&key) {
            missing.push(format!("orchestrator {key}"));
        }
    }
    assert!(missing.is_empty(), "docs/CONFIG.md lacks: {missing:?}");
}

#[test]
fn env_variables_agree_between_code_docs_and_compose() {
    let doc = documented(&repo("docs/CONFIG.md"));
    let documented_env: BTreeSet<String> =
        doc.iter().filter(|k| k.chars().all(|c| c.is_ascii_uppercase() || c == '_')).cloned().collect();
    let mut known: BTreeSet<String> =
        ["WORKER_CONFIG", "ORCHESTRATOR_CONFIG", "DUPLEX_ASSETS"].map(String::from).into();
    known.extend(duplex_worker::config::ENV_OVERRIDES.iter().map(|(k, _)| k.to_string()));
    known.extend(duplex_orchestrator::config::ENV_OVERRIDES.iter().map(|(k, _)| k.to_string()));
    known.extend(duplex_kyutai::files::HUB_ENV.map(String::from));
    assert_eq!(documented_env, known, "env vars in docs/CONFIG.md vs the code");

    let compose: serde_yaml::Value = serde_yaml::from_str(&repo("docker-compose.yml")).unwrap();
    for (name, service) in compose["services"].as_mapping().unwrap() {
        // Our services; third-party ones (Grafana) read their own variables.
        let ours = service["image"].as_str().is_some_and(|i| i.starts_with("duplex-"));
        if let Some(env) = service["environment"].as_mapping().filter(|_| ours) {
            for var in env.keys().map(|k| k.as_str().unwrap()) {
                assert!(known.contains(var), "compose service {name:?} sets {var}, which nothing reads");
            }
        }
    }
}

#[test]
fn shipped_configs_and_compose_ports_agree() {
    let worker = duplex_worker::Config::parse(&repo("configs/worker.yaml")).unwrap();
    let orch = duplex_orchestrator::Config::parse(&repo("configs/orchestrator.yaml")).unwrap();
    worker.validate().unwrap();
    orch.validate().unwrap();
    let compose = repo("docker-compose.yml");
    for port in [worker.grpc.port, worker.metrics.port, orch.transport.websocket.port, orch.health.port] {
        assert!(compose.contains(&format!("\"{port}:{port}\"")), "compose publishes {port}");
    }
    assert!(compose.contains(&format!("grpc://worker-0:{}", worker.grpc.port)));
    // The GPU worker's shipped config parses and its ports are the compose ones.
    let gpu = duplex_worker::Config::parse(&repo("configs/worker-gpu.yaml")).unwrap();
    gpu.validate().unwrap();
    for port in [gpu.grpc.port, gpu.metrics.port] {
        assert!(compose.contains(&format!("\"{port}:{port}\"")), "compose publishes the GPU worker's {port}");
    }
    let ops = repo("docs/OPERATIONS.md");
    for port in [worker.grpc.port, worker.metrics.port, orch.transport.websocket.port, orch.health.port] {
        assert!(ops.contains(&format!("| {port} |")), "docs/OPERATIONS.md lists port {port}");
    }
}

#[test]
fn compose_services_check_health_and_monitoring_scrapes_what_exists() {
    let compose: serde_yaml::Value = serde_yaml::from_str(&repo("docker-compose.yml")).unwrap();
    let services = compose["services"].as_mapping().unwrap();
    for (name, service) in services {
        assert!(service["healthcheck"]["test"].is_sequence(), "service {name:?} has a health check");
        assert!(service["restart"].as_str().is_some(), "service {name:?} has a restart policy");
    }
    let profile = |name: &str| services[name]["profiles"].as_sequence().cloned().unwrap_or_default();
    for name in ["prometheus", "grafana", "jaeger"] {
        assert_eq!(profile(name), [serde_yaml::Value::from("monitoring")], "{name} is in the monitoring profile");
    }
    // Prometheus scrapes the orchestrator's probe port and each worker's metrics port, as compose sets them.
    let prometheus = repo("configs/monitoring/prometheus.yml");
    let orch = duplex_orchestrator::Config::parse(&repo("configs/orchestrator.yaml")).unwrap();
    assert!(prometheus.contains(&format!("\"orchestrator:{}\"", orch.health.port)));
    for worker in ["worker-0", "worker-1"] {
        let port = services[worker]["environment"]["WORKER_METRICS_PORT"].as_str().expect("metrics port set");
        assert!(prometheus.contains(&format!("\"{worker}:{port}\"")), "prometheus scrapes {worker}:{port}");
    }
    // Every metric the dashboard queries is one docs/METRICS.md documents.
    let metrics_doc = repo("docs/METRICS.md");
    let dashboard: serde_json::Value =
        serde_json::from_str(&repo("configs/monitoring/grafana/dashboards/duplex.json")).unwrap();
    let mut queried = 0;
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap();
            for word in
                expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).filter(|w| w.starts_with("duplex_"))
            {
                let metric = word.trim_end_matches("_bucket");
                assert!(
                    metrics_doc.contains(&format!("`{metric}")),
                    "the dashboard queries {metric}, not in docs/METRICS.md"
                );
                queried += 1;
            }
        }
    }
    assert!(queried >= 10, "the dashboard queries the metrics");
}
