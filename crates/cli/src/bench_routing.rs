//! `duplex bench-routing`: what routing through the registry costs and how
//! fast a dead worker is noticed.
//!
//! - selection from the local view (`duplex_discovery::select` over 50
//!   registered workers), per call;
//! - selection as a session open does it: the affinity lookup in Redis
//!   (`routing:affinity:<session_id>`, a miss and a hit) plus the selection;
//! - refreshing the view from Redis (SCAN + MGET of those 50 records), per scan;
//! - dead-worker detection with one static worker: a worker process is killed
//!   (SIGKILL) or frozen (SIGSTOP) mid-utterance; time until the client gets
//!   WORKER_UNAVAILABLE;
//! - failover with two registered workers: the session's worker is killed in
//!   its second sentence; the longest silence the client hears and how much
//!   audio it hears twice (the cut sentence, said again whole).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::Context;
use duplex_discovery::record::Capabilities;
use duplex_discovery::{Load, ModelEntry, Want, WorkerRecord};
use duplex_orchestrator::protocol::{AudioFormat, ErrorCode, ServerMessage};

use crate::bench::{start_registry_stack, start_stack};
use crate::client::{Client, Event};
use crate::stats::Summary;

const WORKERS: usize = 50;

fn record(i: usize) -> WorkerRecord {
    let models = (0..4)
        .map(|m| ModelEntry {
            model_id: format!("voice-{}", (i + m) % 8),
            family: "piper".into(),
            languages: vec!["en".into()],
            resident: m == 0,
        })
        .collect();
    WorkerRecord {
        name: format!("bench-worker-{i}"),
        addr: format!("grpc://10.0.0.{i}:7001"),
        capabilities: Capabilities { languages: vec!["en".into()], max_concurrent_sessions: 24, ..Default::default() },
        resident_models: vec![format!("voice-{}", i % 8)],
        metrics: Default::default(),
        last_heartbeat_ts: 0.0,
        models,
        device: "cpu".into(),
        load: Load { active_sessions: (i % 7) as u32, capacity: 24, queue_depth: 0, rtf: 0.08 },
        version: String::new(),
    }
}

fn local_selection() -> Summary {
    let workers: Vec<WorkerRecord> = (0..WORKERS).map(record).collect();
    let ours = HashMap::new();
    let mut us = Vec::with_capacity(20_000);
    for i in 0..20_000 {
        let model = format!("voice-{}", i % 8);
        let t = Instant::now();
        let w = duplex_discovery::select(
            &workers,
            &Want { model: Some(&model), language: Some("en-US"), affinity: None },
            &ours,
            &|_| false,
        );
        us.push(t.elapsed().as_secs_f64() * 1e6);
        std::hint::black_box(w.ok());
    }
    Summary::of(&mut us)
}

/// Affinity lookup (a miss, then a hit) plus selection, per session open.
async fn routed_selection(redis_url: &str) -> anyhow::Result<(Summary, Summary)> {
    let workers: Vec<WorkerRecord> = (0..WORKERS).map(record).collect();
    let affinity = duplex_discovery::Affinity::new(redis_url, Duration::from_secs(60))?;
    let ours = HashMap::new();
    let prefix = format!("bench-{}", std::process::id());
    let (mut miss, mut hit) = (Vec::new(), Vec::new());
    for i in 0..2_000 {
        let session = format!("{prefix}-{i}");
        for times in [&mut miss, &mut hit] {
            let t = Instant::now();
            let previous = affinity.get(&session).await;
            let want = Want { model: Some("voice-3"), language: Some("en-US"), affinity: previous.as_deref() };
            let w = duplex_discovery::select(&workers, &want, &ours, &|_| false);
            times.push(t.elapsed().as_secs_f64() * 1e3);
            if let Ok(w) = w {
                affinity.set(&session, &w.name).await;
            }
        }
    }
    if hit.len() != miss.len() {
        anyhow::bail!("Redis did not answer every lookup");
    }
    let mut conn = redis::Client::open(redis_url)?.get_multiplexed_async_connection().await?;
    for i in 0..2_000 {
        redis::cmd("DEL").arg(duplex_discovery::affinity_key(&format!("{prefix}-{i}"))).exec_async(&mut conn).await?;
    }
    Ok((Summary::of(&mut miss), Summary::of(&mut hit)))
}

async fn view_refresh(redis_url: &str) -> anyhow::Result<Summary> {
    let client = redis::Client::open(redis_url)?;
    let mut conn = client.get_multiplexed_async_connection().await.context("connecting to Redis")?;
    let prefix = format!("bench-{}", std::process::id());
    for i in 0..WORKERS {
        let mut r = record(i);
        r.name = format!("{prefix}-{i}");
        redis::cmd("SET")
            .arg(format!("worker:{}", r.name))
            .arg(serde_json::to_string(&r)?)
            .arg("PX")
            .arg(60_000)
            .query_async::<()>(&mut conn)
            .await?;
    }
    let mut ms = Vec::new();
    for _ in 0..200 {
        let t = Instant::now();
        let mut cursor: u64 = 0;
        let mut keys: Vec<String> = Vec::new();
        loop {
            let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg("worker:*")
                .arg("COUNT")
                .arg(200)
                .query_async(&mut conn)
                .await?;
            keys.extend(batch);
            if next == 0 {
                break;
            }
            cursor = next;
        }
        let values: Vec<Option<String>> = redis::cmd("MGET").arg(&keys).query_async(&mut conn).await?;
        let parsed: Vec<WorkerRecord> =
            values.into_iter().flatten().filter_map(|j| serde_json::from_str(&j).ok()).collect();
        std::hint::black_box(parsed);
        ms.push(t.elapsed().as_secs_f64() * 1e3);
    }
    for i in 0..WORKERS {
        redis::cmd("DEL").arg(format!("worker:{prefix}-{i}")).query_async::<()>(&mut conn).await?;
    }
    Ok(Summary::of(&mut ms))
}

/// Starts a stack, speaks, then breaks the worker with `signal`; returns ms until WORKER_UNAVAILABLE.
async fn detection(signal: &str) -> anyhow::Result<f64> {
    let stack = start_stack(10, None).await?;
    let mut c = Client::connect(&stack.url, AudioFormat::Binary).await?;
    c.session_start().await?;
    c.send_text("A long sentence so that the worker is still busy when it is broken on purpose.", true).await?;
    let mut frames = 0;
    while frames < 5 {
        if let Event::Audio { .. } = c.next().await? {
            frames += 1;
        }
    }
    let pid = stack.worker_pid().context("worker pid")?;
    let t = Instant::now();
    std::process::Command::new("kill").args([signal, &pid.to_string()]).status()?;
    let waited = loop {
        match tokio::time::timeout(Duration::from_secs(30), c.next()).await?? {
            Event::Message { message: ServerMessage::Error { code: ErrorCode::WorkerUnavailable, .. }, .. } => {
                break t.elapsed();
            }
            Event::Closed(_) => anyhow::bail!("session closed"),
            _ => {}
        }
    };
    if signal == "-STOP" {
        std::process::Command::new("kill").args(["-CONT", &pid.to_string()]).status()?;
    }
    Ok(waited.as_secs_f64() * 1e3)
}

/// Speaks `text` on a new session; returns its id, the frames' (text offset,
/// arrival) and, when `kill_at_offset` is set, kills the session's worker
/// (found through its affinity record) when that offset is first heard.
async fn speak(
    stack: &crate::bench::Stack,
    redis: &mut redis::aio::MultiplexedConnection,
    pids: &HashMap<String, u32>,
    text: &str,
    kill_at_offset: Option<u64>,
) -> anyhow::Result<Vec<(u64, Instant)>> {
    let mut c = Client::connect(&stack.url, AudioFormat::Json).await?;
    let session = c.session_start().await?;
    c.send_text(text, true).await?;
    let mut frames = Vec::new();
    let mut killed = false;
    loop {
        match tokio::time::timeout(Duration::from_secs(30), c.next()).await?? {
            Event::Audio { text_offset, at, .. } => {
                frames.push((text_offset, at));
                if !killed && Some(text_offset) == kill_at_offset {
                    let key = duplex_discovery::affinity_key(&session);
                    let name: String = redis::cmd("GET").arg(&key).query_async(redis).await?;
                    let pid = pids.get(&name).context("the session's worker is ours")?;
                    std::process::Command::new("kill").args(["-KILL", &pid.to_string()]).status()?;
                    killed = true;
                }
            }
            Event::Message { message: ServerMessage::UtteranceEnd { .. }, .. } => return Ok(frames),
            Event::Message { message: ServerMessage::Error { message, .. }, .. } => anyhow::bail!("{message}"),
            Event::Closed(_) => anyhow::bail!("session closed"),
            _ => {}
        }
    }
}

/// Longest silence (ms) and audio heard twice (ms) when the session's worker
/// is killed in the second sentence, one run on a fresh pair of workers.
async fn failover(redis_url: &str, run: usize) -> anyhow::Result<(f64, f64)> {
    const TEXT: &str = "The first sentence is short. The second one is where the worker dies. \
                        A third follows it. And a fourth ends the test.";
    let prefix = format!("bench-failover-{}-{run}", std::process::id());
    let stack = start_registry_stack(redis_url, &prefix, 2).await?;
    let pids: HashMap<String, u32> =
        stack.pids().into_iter().take(2).enumerate().map(|(i, p)| (format!("{prefix}-{i}"), p)).collect();
    let mut redis = redis::Client::open(redis_url)?.get_multiplexed_async_connection().await?;
    let clean = speak(&stack, &mut redis, &pids, TEXT, None).await?;
    let second = TEXT.find(". ").map(|i| (i + 2) as u64).context("two sentences")?;
    let cut = speak(&stack, &mut redis, &pids, TEXT, Some(second)).await?;
    let gap = cut.windows(2).map(|w| w[1].1 - w[0].1).max().unwrap_or_default();
    let twice = cut.len() as f64 - clean.len() as f64;
    let frame_ms = duplex_audio::FRAME_MS as f64;
    Ok((gap.as_secs_f64() * 1e3, twice * frame_ms))
}

pub async fn run(redis_url: &str) -> anyhow::Result<()> {
    println!("duplex bench-routing: {WORKERS} registered workers; times per call");
    let local = local_selection();
    println!("selection from the local view (µs):   {local}");
    let (miss, hit) = routed_selection(redis_url).await?;
    println!("affinity lookup + selection, miss (ms): {miss}");
    println!("affinity lookup + selection, hit (ms):  {hit}");
    let refresh = view_refresh(redis_url).await?;
    println!("view refresh, SCAN + MGET (ms):        {refresh}");
    let killed = detection("-KILL").await?;
    println!("dead worker (SIGKILL) noticed after:   {killed:.0} ms (broken gRPC stream)");
    let frozen = detection("-STOP").await?;
    println!(
        "silent worker (SIGSTOP) noticed after: {frozen:.0} ms (stall timeout {} ms after the queued audio)",
        duplex_orchestrator::Config::default().routing.stall_timeout_ms
    );
    let (mut gaps, mut twice) = (Vec::new(), Vec::new());
    for run in 0..3 {
        let (gap, again) = failover(redis_url, run).await?;
        gaps.push(gap);
        twice.push(again);
    }
    println!("failover, longest silence (ms):        {}", Summary::of(&mut gaps));
    println!("failover, audio heard twice (ms):      {}", Summary::of(&mut twice));
    Ok(())
}
