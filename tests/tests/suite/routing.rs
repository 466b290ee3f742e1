//! Sessions routed through the Redis registry: by model and language, spread
//! by load, back to their worker on reconnect, and to a worker that loads a
//! model it does not hold yet.

use std::time::Duration;

use duplex_cli::client::Client;
use duplex_orchestrator::protocol::{AudioFormat, ClientMessage, EndReason, ErrorCode, ServerMessage};
use duplex_tests::routing::{orchestrator, say, sessions_on, talk, wait_registered, worker};
use duplex_tests::*;
use duplex_tts::mock::MockConfig;
use duplex_worker::engines::EngineConfig;

fn completed(h: &Heard) -> bool {
    matches!(h.messages.last(), Some(ServerMessage::UtteranceEnd { reason: EndReason::Completed, .. }))
}

/// Opens a session that asks for `model` and says `text` on it.
async fn talk_with(url: &str, model: &str, text: &str) -> (Client, Heard) {
    let mut c = Client::connect(url, AudioFormat::Binary).await.unwrap();
    c.session_start().await.unwrap();
    c.send(&ClientMessage::Config { audio_format: None, model: Some(model.into()), language: None }).await.unwrap();
    let heard = say(&mut c, text).await;
    (c, heard)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_go_to_the_worker_that_offers_the_voice() {
    let redis = RedisServer::start();
    let a = duplex_worker::spawn(worker(&redis, "a", None)).await.unwrap();
    let b = duplex_worker::spawn(worker(&redis, "b", Some("mock-b"))).await.unwrap();
    let c = duplex_worker::spawn(worker(&redis, "c", Some("mock-c"))).await.unwrap();
    let orch = orchestrator(&redis, "mock-b").await;
    wait_registered(&redis, 3).await;
    let url = format!("ws://{}/ws", orch.addr);
    // The configured default model, twice; then a voice only c has.
    let (_s1, h1) = talk(&url, "one").await;
    let (_s2, h2) = talk(&url, "two").await;
    let (_s3, h3) = talk_with(&url, "mock-c", "three").await;
    for h in [&h1, &h2, &h3] {
        assert!(completed(h), "{:?}", h.messages);
    }
    let on = async |w: &duplex_worker::Handle| sessions_on(w.addr).await;
    assert_eq!((on(&a).await, on(&b).await, on(&c).await), (0.0, 2.0, 1.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_session_language_picks_a_worker_whose_model_speaks_it() {
    let redis = RedisServer::start();
    let a = duplex_worker::spawn(worker(&redis, "a", None)).await.unwrap();
    let mut b_cfg = worker(&redis, "b", None);
    let french = MockConfig { model_id: "mock-fr".into(), languages: vec!["fr".into()], ..MockConfig::default() };
    b_cfg.models.push(EngineConfig::Mock(french));
    let b = duplex_worker::spawn(b_cfg).await.unwrap();
    let orch = orchestrator(&redis, "").await;
    wait_registered(&redis, 2).await;
    let url = format!("ws://{}/ws", orch.addr);

    let mut c = Client::connect(&url, AudioFormat::Binary).await.unwrap();
    c.session_start().await.unwrap();
    let config =
        ClientMessage::Config { audio_format: None, model: Some("mock-fr".into()), language: Some("fr-FR".into()) };
    c.send(&config).await.unwrap();
    let h = say(&mut c, "bonjour").await;
    assert!(completed(&h), "{:?}", h.messages);
    assert_eq!((sessions_on(a.addr).await, sessions_on(b.addr).await), (0.0, 1.0));

    // Both workers' default model speaks English only: nothing serves German.
    let mut d = Client::connect(&url, AudioFormat::Binary).await.unwrap();
    d.session_start().await.unwrap();
    d.send(&ClientMessage::Config { audio_format: None, model: None, language: Some("de".into()) }).await.unwrap();
    d.send_text("hallo", true).await.unwrap();
    let mut h = Heard::default();
    read_until(&mut d, &mut h, Duration::from_secs(10), is_error).await;
    let error = h.messages.iter().find_map(|m| match m {
        ServerMessage::Error { code, message, .. } => Some((*code, message.clone())),
        _ => None,
    });
    let (code, message) = error.expect("an error");
    assert_eq!(code, ErrorCode::WorkerUnavailable);
    assert!(message.contains("\"de\""), "{message}");
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

/// Connects a session; returns it and its id.
async fn connect(url: &str) -> (Client, String) {
    let mut c = Client::connect(url, AudioFormat::Binary).await.unwrap();
    let id = c.session_start().await.unwrap();
    (c, id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconnecting_session_returns_to_its_worker() {
    let redis = RedisServer::start();
    let a = duplex_worker::spawn(worker(&redis, "a", None)).await.unwrap();
    let b = duplex_worker::spawn(worker(&redis, "b", None)).await.unwrap();
    let orch = orchestrator(&redis, "").await;
    wait_registered(&redis, 2).await;
    let url = format!("ws://{}/ws", orch.addr);
    let (mut on_a, _) = connect(&url).await;
    assert!(completed(&say(&mut on_a, "first").await));
    let (mut on_b, id_b) = connect(&url).await;
    assert!(completed(&say(&mut on_b, "second").await));
    assert_eq!((sessions_on(a.addr).await, sessions_on(b.addr).await), (1.0, 1.0));

    // The record names the worker, with the configured TTL (3600 s).
    let mut conn = redis.connection().await;
    let key = format!("routing:affinity:{id_b}");
    let name: String = redis::cmd("GET").arg(&key).query_async(&mut conn).await.unwrap();
    let ttl_ms: i64 = redis::cmd("PTTL").arg(&key).query_async(&mut conn).await.unwrap();
    assert_eq!(name, "b");
    assert!(ttl_ms > 500_000, "{ttl_ms}");

    on_b.close().await;
    // Its EndSession reaches b, b's next heartbeat says so, and the
    // orchestrator's view (100 ms scans) has it.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let json: String = redis::cmd("GET").arg("worker:b").query_async(&mut conn).await.unwrap();
        let record: duplex_discovery::WorkerRecord = serde_json::from_str(&json).unwrap();
        if record.load.active_sessions == 0 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "b reports its session ended");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(250)).await;
    // A new session takes b's place: a=1, b=1, and ties go to "a"...
    let (_third, h) = talk(&url, "third").await;
    assert!(completed(&h));
    assert_eq!((sessions_on(a.addr).await, sessions_on(b.addr).await), (1.0, 1.0));
    // ...yet the session that reconnects with its id goes back to b.
    let back_url = format!("{url}?session_id={id_b}");
    let (mut back, id) = connect(&back_url).await;
    assert_eq!(id, id_b, "the session keeps its id");
    let h = say(&mut back, "I am back").await;
    assert!(completed(&h), "{:?}", h.messages);
    assert_eq!((sessions_on(a.addr).await, sessions_on(b.addr).await), (1.0, 2.0));

    // A session id that is connected now, or malformed, is refused.
    assert!(Client::connect(&back_url, AudioFormat::Binary).await.is_err(), "a live id is not taken twice");
    assert!(Client::connect(&format!("{url}?session_id=no%20spaces"), AudioFormat::Binary).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_not_resident_anywhere_is_loaded_before_the_session_starts() {
    let redis = RedisServer::start();
    // Only the default model is preloaded.
    let a = duplex_worker::spawn(worker(&redis, "a", Some("mock-lazy"))).await.unwrap();
    let orch = orchestrator(&redis, "mock-lazy").await;
    wait_registered(&redis, 1).await;
    let mut conn = redis.connection().await;
    let record: String = redis::cmd("GET").arg("worker:a").query_async(&mut conn).await.unwrap();
    let record: duplex_discovery::WorkerRecord = serde_json::from_str(&record).unwrap();
    assert!(!record.resident_models.contains(&"mock-lazy".to_string()), "{:?}", record.resident_models);
    let (_c, h) = talk(&format!("ws://{}/ws", orch.addr), "lazy").await;
    assert!(completed(&h), "{:?}", h.messages);
    let models = grpc(a.addr).await.list_models(duplex_proto::tts::ListModelsRequest {}).await.unwrap().into_inner();
    assert!(models.models.iter().any(|m| m.model_id == "mock-lazy" && m.is_loaded), "{models:?}");
}
