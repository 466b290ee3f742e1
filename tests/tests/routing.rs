//! Sessions routed through the Redis registry: by model, spread by load, and
//! away from a worker that died.

use std::time::Duration;

use duplex_cli::client::Client;
use duplex_orchestrator::protocol::{AudioFormat, EndReason, ErrorCode, ServerMessage};
use duplex_proto::tts::GetCapabilitiesRequest;
use duplex_tests::*;
use duplex_tts::mock::MockConfig;
use duplex_worker::engines::EngineConfig;

fn worker(redis: &RedisServer, name: &str, extra_model: Option<&str>) -> duplex_worker::Config {
    let mut c = worker_config();
    c.name = name.into();
    c.registry.redis_url = redis.url();
    c.registry.ttl_ms = 3_000;
    c.registry.heartbeat_ms = 200;
    if let Some(m) = extra_model {
        c.models.push(EngineConfig::Mock(MockConfig { model_id: m.into(), ..MockConfig::default() }));
    }
    c
}

async fn orchestrator(redis: &RedisServer, model: &str) -> duplex_orchestrator::Handle {
    let mut c = orchestrator_config("grpc://127.0.0.1:1"); // unused: the registry decides
    c.routing.redis_url = redis.url();
    c.routing.resync_ms = 100;
    c.routing.default_model = model.into();
    duplex_orchestrator::spawn(c).await.unwrap()
}

/// A registered worker process named "doomed" (its record outlives a kill by
/// 10 s), serving once this returns.
async fn doomed_worker(redis: &RedisServer) -> tokio::process::Child {
    let port = free_port();
    let yaml = "name: doomed\nregistry:\n  ttl_ms: 10000\n  heartbeat_ms: 200\n";
    let child =
        worker_process(env!("CARGO_BIN_EXE_duplex-test-worker"), port, Some(yaml), &[("REDIS_URL", &redis.url())]);
    wait_serving(&format!("127.0.0.1:{port}"), Duration::from_secs(20)).await;
    child
}

async fn sessions_on(addr: std::net::SocketAddr) -> f64 {
    let caps = grpc(addr).await.get_capabilities(GetCapabilitiesRequest {}).await.unwrap().into_inner();
    caps.metrics["active_sessions"]
}

async fn talk(url: &str, text: &str) -> (Client, Heard) {
    let mut c = Client::connect(url, AudioFormat::Binary).await.unwrap();
    c.session_start().await.unwrap();
    c.send_text(text, true).await.unwrap();
    let mut heard = Heard::default();
    read_until(&mut c, &mut heard, Duration::from_secs(20), |e| is_utterance_end(e) || is_error(e)).await;
    (c, heard)
}

/// Waits until `n` workers are registered, then two of the orchestrator's
/// 100 ms scans so its view has them.
async fn wait_registered(redis: &RedisServer, n: usize) {
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_go_to_the_worker_that_offers_the_model() {
    let redis = RedisServer::start();
    let a = duplex_worker::spawn(worker(&redis, "a", None)).await.unwrap();
    let b = duplex_worker::spawn(worker(&redis, "b", Some("mock-b"))).await.unwrap();
    let orch = orchestrator(&redis, "mock-b").await;
    wait_registered(&redis, 2).await;
    let url = format!("ws://{}/ws", orch.addr);
    let (_c1, h1) = talk(&url, "one").await;
    let (_c2, h2) = talk(&url, "two").await;
    for h in [&h1, &h2] {
        assert!(
            matches!(h.messages.last(), Some(ServerMessage::UtteranceEnd { reason: EndReason::Completed, .. })),
            "{:?}",
            h.messages
        );
    }
    assert_eq!(sessions_on(b.addr).await, 2.0, "both on the worker with mock-b");
    assert_eq!(sessions_on(a.addr).await, 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_spreads_across_equal_workers() {
    let redis = RedisServer::start();
    let a = duplex_worker::spawn(worker(&redis, "a", None)).await.unwrap();
    let b = duplex_worker::spawn(worker(&redis, "b", None)).await.unwrap();
    let orch = orchestrator(&redis, "").await;
    wait_registered(&redis, 2).await;
    let url = format!("ws://{}/ws", orch.addr);
    let mut clients = Vec::new();
    for i in 0..4 {
        clients.push(talk(&url, &format!("session {i}")).await.0);
    }
    assert_eq!((sessions_on(a.addr).await, sessions_on(b.addr).await), (2.0, 2.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_worker_is_skipped_and_the_session_goes_on_elsewhere() {
    let redis = RedisServer::start();
    let mut doomed = doomed_worker(&redis).await;
    let orch = orchestrator(&redis, "").await;
    wait_registered(&redis, 1).await;
    let url = format!("ws://{}/ws", orch.addr);
    // The only worker: the session lands there.
    let (mut c, first) = talk(&url, "first").await;
    assert!(matches!(first.messages.last(), Some(ServerMessage::UtteranceEnd { reason: EndReason::Completed, .. })));
    // A second worker appears, the first dies (its record stays for 10 s).
    let spare = duplex_worker::spawn(worker(&redis, "spare", None)).await.unwrap();
    wait_registered(&redis, 2).await;
    doomed.kill().await.unwrap();
    c.send_text("are you there?", true).await.unwrap();
    let mut heard = Heard::default();
    read_until(&mut c, &mut heard, Duration::from_secs(10), is_error).await;
    assert!(
        heard.messages.iter().any(|m| matches!(m, ServerMessage::Error { code: ErrorCode::WorkerUnavailable, .. }))
    );
    // Marked down at once: the next text goes to the spare, long before the TTL.
    let mut next = Heard::default();
    c.send_text("and now?", true).await.unwrap();
    read_until(&mut c, &mut next, Duration::from_secs(10), |e| is_utterance_end(e) || is_error(e)).await;
    assert!(
        matches!(next.messages.last(), Some(ServerMessage::UtteranceEnd { reason: EndReason::Completed, .. })),
        "{:?}",
        next.messages
    );
    assert_eq!(sessions_on(spare.addr).await, 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_sessions_avoid_a_registered_worker_that_does_not_answer() {
    let redis = RedisServer::start();
    // "doomed" sorts before "spare": with equal load it would be picked first.
    let mut doomed = doomed_worker(&redis).await;
    let spare = duplex_worker::spawn(worker(&redis, "spare", None)).await.unwrap();
    let orch = orchestrator(&redis, "").await;
    wait_registered(&redis, 2).await;
    doomed.kill().await.unwrap(); // its record stays for 10 s
    // A few 100 ms health rounds later, new sessions never try it.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let url = format!("ws://{}/ws", orch.addr);
    let mut clients = Vec::new();
    for i in 0..3 {
        let (c, heard) = talk(&url, &format!("new session {i}")).await;
        assert!(
            matches!(heard.messages.last(), Some(ServerMessage::UtteranceEnd { reason: EndReason::Completed, .. })),
            "session {i}: {:?}",
            heard.messages
        );
        clients.push(c);
    }
    assert_eq!(sessions_on(spare.addr).await, 3.0);
}
