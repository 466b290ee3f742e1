//! Registry routing fixtures: workers that register in a test Redis, an
//! orchestrator that routes through it, and ways to see where sessions went.

use std::time::Duration;

use duplex_cli::client::Client;
use duplex_orchestrator::protocol::AudioFormat;
use duplex_proto::tts::GetCapabilitiesRequest;
use duplex_tts::mock::MockConfig;
use duplex_worker::engines::EngineConfig;

use crate::{Heard, RedisServer, grpc, is_error, is_utterance_end, read_until};

/// An in-process worker named `name` registering in `redis` (3 s TTL, 200 ms
/// heartbeat), with an extra mock model when given.
pub fn worker(redis: &RedisServer, name: &str, extra_model: Option<&str>) -> duplex_worker::Config {
    let mut c = crate::worker_config();
    c.name = name.into();
    c.registry.redis_url = redis.url();
    c.registry.ttl_ms = 3_000;
    c.registry.heartbeat_ms = 200;
    if let Some(m) = extra_model {
        c.models.push(EngineConfig::Mock(MockConfig { model_id: m.into(), ..MockConfig::default() }));
    }
    c
}

/// An orchestrator routing through `redis` (100 ms resync), asking for `model`.
pub async fn orchestrator(redis: &RedisServer, model: &str) -> duplex_orchestrator::Handle {
    let mut c = crate::orchestrator_config("grpc://127.0.0.1:1"); // unused: the registry decides
    c.routing.redis_url = redis.url();
    c.routing.resync_ms = 100;
    c.routing.default_model = model.into();
    duplex_orchestrator::spawn(c).await.unwrap()
}

/// A registered worker process named `name` (its record outlives a kill by
/// 10 s), serving once this returns. `bin`: the test's
/// `env!("CARGO_BIN_EXE_duplex-test-worker")`.
pub async fn worker_process(bin: &str, redis: &RedisServer, name: &str) -> tokio::process::Child {
    let port = crate::free_port();
    let yaml = format!("name: {name}\nregistry:\n  ttl_ms: 10000\n  heartbeat_ms: 200\n");
    let child = crate::worker_process(bin, port, Some(&yaml), &[("REDIS_URL", &redis.url())]);
    crate::wait_serving(&format!("127.0.0.1:{port}"), Duration::from_secs(20)).await;
    child
}

/// Sessions open on the worker at `addr` (its GetCapabilities).
pub async fn sessions_on(addr: std::net::SocketAddr) -> f64 {
    let caps = grpc(addr).await.get_capabilities(GetCapabilitiesRequest {}).await.unwrap().into_inner();
    caps.metrics["active_sessions"]
}

/// Connects to `url`, says `text` and reads until its end (or an error).
pub async fn talk(url: &str, text: &str) -> (Client, Heard) {
    let mut c = Client::connect(url, AudioFormat::Binary).await.unwrap();
    c.session_start().await.unwrap();
    let heard = say(&mut c, text).await;
    (c, heard)
}

/// Says `text` on `c` and reads until its end (or an error).
pub async fn say(c: &mut Client, text: &str) -> Heard {
    c.send_text(text, true).await.unwrap();
    let mut heard = Heard::default();
    read_until(c, &mut heard, Duration::from_secs(20), |e| is_utterance_end(e) || is_error(e)).await;
    heard
}

/// Waits until `n` workers are registered, then two of the orchestrator's
/// 100 ms scans so its view has them.
pub async fn wait_registered(redis: &RedisServer, n: usize) {
    let mut conn = redis.connection().await;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let keys: Vec<String> = redis::cmd("KEYS").arg("worker:*").query_async(&mut conn).await.unwrap();
        if keys.len() >= n {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{n} workers registered");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(250)).await;
}
