//! Worker registration in a real Redis (a `redis-server` of the test's own):
//! the record's fields and TTL, heartbeats, deregistration on a graceful stop,
//! expiry after SIGKILL, and re-registration after Redis restarts.

use std::time::{Duration, Instant};

use duplex_discovery::WorkerRecord;
use duplex_tests::*;
use redis::AsyncCommands;

fn registered_worker(redis: &RedisServer, name: &str, ttl_ms: u64, heartbeat_ms: u64) -> duplex_worker::Config {
    let mut c = worker_config();
    c.name = name.into();
    c.registry.redis_url = redis.url();
    c.registry.ttl_ms = ttl_ms;
    c.registry.heartbeat_ms = heartbeat_ms;
    c
}

async fn record(conn: &mut redis::aio::MultiplexedConnection, name: &str) -> Option<WorkerRecord> {
    let json: Option<String> = conn.get(format!("worker:{name}")).await.unwrap();
    json.map(|j| serde_json::from_str(&j).expect("a valid record"))
}

async fn until(what: &str, within: Duration, mut check: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !check().await {
        assert!(Instant::now() < deadline, "{what} within {within:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_record_has_the_predecessor_fields_a_ttl_and_heartbeats() {
    let redis = RedisServer::start();
    let worker = duplex_worker::spawn(registered_worker(&redis, "w-fields", 2_000, 300)).await.unwrap();
    let mut conn = redis.connection().await;
    until("registered", Duration::from_secs(10), async || record(&mut conn, "w-fields").await.is_some()).await;

    let r = record(&mut conn, "w-fields").await.unwrap();
    assert_eq!(r.name, "w-fields");
    assert_eq!(r.addr, format!("grpc://127.0.0.1:{}", worker.addr.port()));
    assert!(r.capabilities.streaming);
    assert_eq!(r.capabilities.max_concurrent_sessions, 1_000);
    assert_eq!(r.resident_models, vec!["mock"]);
    assert!(r.metrics.contains_key("rtf") && r.metrics.contains_key("queue_depth"));
    assert_eq!(r.device, "cpu");
    assert_eq!(r.models[0].model_id, "mock");
    assert!(r.models[0].resident);
    assert_eq!(r.load.capacity, 1_000);
    let ttl: i64 = redis::cmd("PTTL").arg("worker:w-fields").query_async(&mut conn).await.unwrap();
    assert!(ttl > 0 && ttl <= 2_000, "PTTL {ttl}");

    // Heartbeats keep it alive well past its TTL, with a newer timestamp and live load.
    let mut c = grpc(worker.addr).await;
    c.start_session(duplex_proto::tts::StartSessionRequest { session_id: "s".into(), ..Default::default() })
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(4_500)).await;
    let later = record(&mut conn, "w-fields").await.expect("still registered after 2x the TTL");
    assert!(later.last_heartbeat_ts > r.last_heartbeat_ts);
    assert_eq!(later.load.active_sessions, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_stop_deregisters_at_once() {
    let redis = RedisServer::start();
    let worker = duplex_worker::spawn(registered_worker(&redis, "w-stop", 30_000, 200)).await.unwrap();
    let mut conn = redis.connection().await;
    until("registered", Duration::from_secs(10), async || record(&mut conn, "w-stop").await.is_some()).await;
    let stopped = Instant::now();
    worker.shutdown.cancel();
    until("deregistered", Duration::from_secs(3), async || record(&mut conn, "w-stop").await.is_none()).await;
    assert!(stopped.elapsed() < Duration::from_secs(3), "gone long before its 30 s TTL");
    worker.join.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_worker_disappears_with_its_ttl() {
    let redis = RedisServer::start();
    let port = free_port();
    let yaml = "name: w-kill\nregistry:\n  ttl_ms: 1500\n  heartbeat_ms: 300\n";
    let mut child =
        worker_process(env!("CARGO_BIN_EXE_duplex-test-worker"), port, Some(yaml), &[("REDIS_URL", &redis.url())]);
    let mut conn = redis.connection().await;
    until("registered", Duration::from_secs(20), async || record(&mut conn, "w-kill").await.is_some()).await;
    child.kill().await.unwrap(); // SIGKILL: no deregistration
    let killed = Instant::now();
    assert!(record(&mut conn, "w-kill").await.is_some(), "still there right after the kill");
    until("expired", Duration::from_secs(5), async || record(&mut conn, "w-kill").await.is_none()).await;
    assert!(killed.elapsed() <= Duration::from_millis(2_000), "expired after {:?} (TTL 1.5 s)", killed.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_worker_serves_through_a_redis_outage_and_registers_again() {
    let mut redis = RedisServer::start();
    let worker = duplex_worker::spawn(registered_worker(&redis, "w-outage", 2_000, 200)).await.unwrap();
    {
        let mut conn = redis.connection().await;
        until("registered", Duration::from_secs(10), async || record(&mut conn, "w-outage").await.is_some()).await;
    }
    redis.stop();
    // Serving goes on without Redis.
    let mut c = grpc(worker.addr).await;
    c.start_session(duplex_proto::tts::StartSessionRequest { session_id: "s".into(), ..Default::default() })
        .await
        .unwrap();
    let chunk = duplex_proto::tts::TextChunk {
        session_id: "s".into(),
        text: "still".into(),
        is_final: true,
        ..Default::default()
    };
    let mut frames = c.synthesize(tokio_stream::iter(vec![chunk])).await.unwrap().into_inner();
    let mut finals = 0;
    while let Some(f) = frames.message().await.unwrap() {
        finals += f.is_final as u32;
    }
    assert_eq!(finals, 1);
    // Redis comes back empty; the next heartbeats register again, no restart.
    tokio::time::sleep(Duration::from_millis(500)).await;
    redis.restart();
    let mut conn = redis.connection().await;
    until("registered again", Duration::from_secs(10), async || record(&mut conn, "w-outage").await.is_some()).await;
}
