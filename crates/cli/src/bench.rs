//! `duplex bench`: runs the worker and orchestrator as child processes (or
//! uses a running orchestrator) and measures, at each concurrency level:
//! first audio (text sent → first audio frame received), PAUSE and STOP to
//! silence (command sent → last frame received after it; 0 when none came),
//! PAUSE to its acknowledgement (the server has stopped sending: a round trip),
//! and frame-interval jitter (|arrival interval − 20 ms| in steady state).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use duplex_orchestrator::protocol::{AudioFormat, Command, ServerMessage};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, Command as Process};

use crate::client::{Client, Event};
use crate::stats::Summary;

/// Frames played before PAUSE, and again after RESUME before STOP.
const FRAMES_BEFORE_CONTROL: usize = 25;
/// How long after a control command frames are still watched for.
const SILENCE_WINDOW: Duration = Duration::from_millis(250);
/// Session starts are spread over this window, as real arrivals are.
const START_SPREAD: Duration = Duration::from_millis(500);
/// The spoken text (about 6 s with the mock's default rate).
const TEXT: &str = "Hello from Duplex. This benchmark sentence is long enough to pause, resume and stop it.";

#[derive(Debug, Clone)]
pub struct BenchArgs {
    pub levels: Vec<usize>,
    /// A running orchestrator (`ws://host:port/ws`); None = start our own processes.
    pub url: Option<String>,
    pub audio_format: AudioFormat,
    /// Frames the orchestrator sends ahead of real time (its `lookahead_frames`).
    pub lookahead_frames: usize,
}

/// One session's measurements, in milliseconds.
#[derive(Debug, Default)]
struct Sample {
    first_audio: f64,
    pause_silence: f64,
    pause_ack: f64,
    stop_silence: f64,
    frames_after_pause: usize,
    jitter: Vec<f64>,
    gaps_in_sequence: usize,
}

/// Aggregated result of one level.
#[derive(Debug)]
pub struct LevelReport {
    pub sessions: usize,
    pub failed: usize,
    pub first_audio: Summary,
    pub pause_silence: Summary,
    pub pause_ack: Summary,
    pub stop_silence: Summary,
    pub jitter: Summary,
    pub max_frames_after_pause: usize,
    pub sequence_gaps: usize,
}

/// The worker and orchestrator processes of a benchmark; killed on drop.
pub(crate) struct Stack {
    _children: Vec<Child>,
    pub url: String,
    pub grpc_addr: String,
    /// The worker's `/metrics` (`host:port`; empty where not known).
    pub worker_metrics: String,
}

impl Stack {
    pub fn worker_pid(&self) -> Option<u32> {
        self._children.first().and_then(Child::id)
    }

    /// Process ids, workers first.
    pub fn pids(&self) -> Vec<u32> {
        self._children.iter().filter_map(Child::id).collect()
    }
}

fn sibling_binary(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let path = exe.with_file_name(name);
    if !path.exists() {
        bail!("{} not found next to {}; build the workspace first (just bench does)", name, exe.display());
    }
    Ok(path)
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// `GET http://{addr}{path}` (HTTP/1.1, `Connection: close`): status and body.
async fn http_get(addr: &str, path: &str) -> Option<(u16, String)> {
    let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes()).await.ok()?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.ok()?;
    let text = String::from_utf8(buf).ok()?;
    let (head, body) = text.split_once("\r\n\r\n")?;
    Some((head.split_whitespace().nth(1)?.parse().ok()?, body.to_string()))
}

/// The body of `GET http://{addr}{path}`.
pub(crate) async fn http_body(addr: &str, path: &str) -> Option<String> {
    http_get(addr, path).await.map(|(_, body)| body)
}

async fn http_status(addr: &str, path: &str) -> Option<u16> {
    http_get(addr, path).await.map(|(status, _)| status)
}

/// Starts both services; `worker_config` None = the worker's built-in mock defaults.
pub(crate) async fn start_stack(max_sessions: usize, worker_config: Option<&std::path::Path>) -> anyhow::Result<Stack> {
    start_stack_with(max_sessions, worker_config, None).await
}

/// `start_stack` with an orchestrator config file too.
pub(crate) async fn start_stack_with(
    max_sessions: usize,
    worker_config: Option<&std::path::Path>,
    orchestrator_config: Option<&std::path::Path>,
) -> anyhow::Result<Stack> {
    let (grpc, ws, probes, worker_metrics) = (free_port()?, free_port()?, free_port()?, free_port()?);
    // Every benchmark client connects from 127.0.0.1: no per-address limit.
    let quiet = [
        ("LOG_LEVEL", "warn"),
        ("MAX_CONCURRENT_SESSIONS", &max_sessions.to_string()),
        ("MAX_CONNECTIONS_PER_IP", "0"),
        ("MAX_MESSAGES_PER_S_PER_CLIENT", "0"),
    ]
    .map(|(k, v)| (k.to_string(), v.to_string()));
    let mut worker = Process::new(sibling_binary("duplex-worker")?);
    if let Some(path) = worker_config {
        worker.arg("--config").arg(path);
    }
    // A static pair: the registry from our own environment must not apply.
    let worker = worker
        .args(["--port", &grpc.to_string()])
        .env("WORKER_METRICS_PORT", worker_metrics.to_string())
        .env_remove("REDIS_URL")
        .envs(quiet.clone())
        .kill_on_drop(true)
        .spawn()
        .context("starting duplex-worker")?;
    let mut orchestrator = Process::new(sibling_binary("duplex-orchestrator")?);
    if let Some(path) = orchestrator_config {
        orchestrator.arg("--config").arg(path);
    }
    let orchestrator = orchestrator
        .args(["--port", &ws.to_string(), "--worker", &format!("grpc://127.0.0.1:{grpc}")])
        .env_remove("REDIS_URL")
        .env("ORCHESTRATOR_HEALTH_PORT", probes.to_string())
        .envs(quiet)
        .kill_on_drop(true)
        .spawn()
        .context("starting duplex-orchestrator")?;
    let addr = format!("127.0.0.1:{ws}");
    let deadline = Instant::now() + Duration::from_secs(60);
    while http_status(&addr, "/ready").await != Some(200) {
        if Instant::now() > deadline {
            bail!("the stack did not become ready within 60 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(Stack {
        _children: vec![worker, orchestrator],
        url: format!("ws://{addr}/ws"),
        grpc_addr: format!("127.0.0.1:{grpc}"),
        worker_metrics: format!("127.0.0.1:{worker_metrics}"),
    })
}

/// `workers` worker processes registering in `redis_url` (named
/// `<prefix>-0`, `-1`, …) and an orchestrator routing through it; ready when
/// every worker is registered and the orchestrator answers `/ready`.
pub(crate) async fn start_registry_stack(redis_url: &str, prefix: &str, workers: usize) -> anyhow::Result<Stack> {
    let quiet = [("LOG_LEVEL", "warn"), ("REDIS_URL", redis_url)].map(|(k, v)| (k.to_string(), v.to_string()));
    let mut children = Vec::new();
    for i in 0..workers {
        let port = free_port()?;
        let child = Process::new(sibling_binary("duplex-worker")?)
            .args(["--port", &port.to_string()])
            .env("WORKER_NAME", format!("{prefix}-{i}"))
            .env("WORKER_HOST", "127.0.0.1")
            .env("WORKER_METRICS_PORT", "0")
            .envs(quiet.clone())
            .kill_on_drop(true)
            .spawn()
            .context("starting duplex-worker")?;
        children.push(child);
    }
    let (ws, probes) = (free_port()?, free_port()?);
    let orchestrator = Process::new(sibling_binary("duplex-orchestrator")?)
        .args(["--port", &ws.to_string()])
        .env("ORCHESTRATOR_HEALTH_PORT", probes.to_string())
        .env("MAX_CONNECTIONS_PER_IP", "0")
        .env("MAX_MESSAGES_PER_S_PER_CLIENT", "0")
        .envs(quiet)
        .kill_on_drop(true)
        .spawn()
        .context("starting duplex-orchestrator")?;
    children.push(orchestrator);
    let mut conn = redis::Client::open(redis_url)?.get_multiplexed_async_connection().await?;
    let addr = format!("127.0.0.1:{ws}");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let keys: Vec<String> = redis::cmd("KEYS").arg(format!("worker:{prefix}-*")).query_async(&mut conn).await?;
        if keys.len() == workers && http_status(&addr, "/ready").await == Some(200) {
            break;
        }
        if Instant::now() > deadline {
            bail!("{workers} workers did not register within 60 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Two resyncs, so the orchestrator's view holds them all.
    tokio::time::sleep(Duration::from_millis(2_100)).await;
    Ok(Stack {
        _children: children,
        url: format!("ws://{addr}/ws"),
        grpc_addr: String::new(),
        worker_metrics: String::new(),
    })
}

async fn next_within(client: &mut Client, until: Instant) -> anyhow::Result<Option<Event>> {
    match tokio::time::timeout_at(until.into(), client.next()).await {
        Ok(e) => Ok(Some(e?)),
        Err(_) => Ok(None),
    }
}

/// What followed a control command, in ms: last audio after it, its ack.
struct AfterControl {
    silence: f64,
    frames: usize,
    ack: f64,
}

/// Watches what arrives in the window after a control command.
async fn silence_after(
    client: &mut Client,
    sent: Instant,
    seen: &mut Vec<(u64, Instant)>,
) -> anyhow::Result<AfterControl> {
    let mut last = sent;
    let mut count = 0;
    let mut ack = None;
    let until = sent + SILENCE_WINDOW;
    loop {
        match next_within(client, until).await? {
            None => break,
            Some(Event::Message { message: ServerMessage::ControlAck { .. }, at }) => {
                ack = Some((at - sent).as_secs_f64() * 1e3);
            }
            Some(Event::Audio { sequence, at, .. }) => {
                seen.push((sequence, at));
                last = at;
                count += 1;
            }
            Some(Event::Closed(_)) => bail!("server closed the session"),
            Some(_) => {}
        }
    }
    let ack = ack.ok_or_else(|| anyhow::anyhow!("no control_ack within {SILENCE_WINDOW:?}"))?;
    Ok(AfterControl { silence: (last - sent).as_secs_f64() * 1e3, frames: count, ack })
}

async fn one_session(url: String, format: AudioFormat, offset: Duration, lookahead: usize) -> anyhow::Result<Sample> {
    let mut client = Client::connect(&url, format).await?;
    client.session_start().await?;
    tokio::time::sleep(offset).await;
    let mut sample = Sample::default();
    let mut seen: Vec<(u64, Instant)> = Vec::new();

    let sent = Instant::now();
    client.send_text(TEXT, true).await?;
    let deadline = sent + Duration::from_secs(10);
    while seen.len() < FRAMES_BEFORE_CONTROL {
        match next_within(&mut client, deadline).await? {
            Some(Event::Audio { sequence, at, .. }) => seen.push((sequence, at)),
            Some(Event::Message { message: ServerMessage::Error { message, .. }, .. }) => bail!("error: {message}"),
            Some(Event::Closed(_)) | None => bail!("no audio"),
            Some(_) => {}
        }
    }
    sample.first_audio = (seen[0].1 - sent).as_secs_f64() * 1e3;
    let run1 = seen.len();

    let paused = Instant::now();
    client.control(Command::Pause).await?;
    let after = silence_after(&mut client, paused, &mut seen).await?;
    sample.pause_silence = after.silence;
    sample.frames_after_pause = after.frames;
    sample.pause_ack = after.ack;
    let run1_end = seen.len();

    client.control(Command::Resume).await?;
    let resumed_at = seen.len();
    while seen.len() < resumed_at + FRAMES_BEFORE_CONTROL {
        match next_within(&mut client, Instant::now() + Duration::from_secs(5)).await? {
            Some(Event::Audio { sequence, at, .. }) => seen.push((sequence, at)),
            Some(Event::Closed(_)) | None => bail!("no audio after resume"),
            Some(_) => {}
        }
    }
    let run2_end = seen.len();
    let stopped = Instant::now();
    client.control(Command::Stop).await?;
    let after = silence_after(&mut client, stopped, &mut seen).await?;
    sample.stop_silence = after.silence;

    // Steady-state intervals: skip the look-ahead burst at the start of each run.
    for (from, to) in [(0, run1.min(run1_end)), (resumed_at, run2_end)] {
        let skip = lookahead + 1;
        if std::env::var_os("DUPLEX_BENCH_DUMP").is_some() {
            let iv: Vec<String> =
                seen[from..to].windows(2).map(|w| format!("{:.1}", (w[1].1 - w[0].1).as_secs_f64() * 1e3)).collect();
            eprintln!("intervals: {}", iv.join(" "));
        }
        for w in seen[(from + skip).min(to)..to].windows(2) {
            sample.jitter.push(((w[1].1 - w[0].1).as_secs_f64() * 1e3 - 20.0).abs());
        }
    }
    sample.gaps_in_sequence = seen.windows(2).filter(|w| w[1].0 != w[0].0 + 1).count();
    client.close().await;
    Ok(sample)
}

pub async fn run_level(url: &str, sessions: usize, args: &BenchArgs) -> LevelReport {
    let mut set = tokio::task::JoinSet::new();
    for i in 0..sessions {
        let offset = START_SPREAD.mul_f64(i as f64 / sessions.max(1) as f64);
        set.spawn(one_session(url.to_string(), args.audio_format, offset, args.lookahead_frames));
    }
    let (mut first, mut pause, mut ack, mut stop, mut jitter) = (vec![], vec![], vec![], vec![], vec![]);
    let (mut failed, mut max_after, mut gaps) = (0, 0, 0);
    while let Some(r) = set.join_next().await {
        match r {
            Ok(Ok(s)) => {
                first.push(s.first_audio);
                pause.push(s.pause_silence);
                ack.push(s.pause_ack);
                stop.push(s.stop_silence);
                jitter.extend(s.jitter);
                max_after = max_after.max(s.frames_after_pause);
                gaps += s.gaps_in_sequence;
            }
            Ok(Err(e)) => {
                failed += 1;
                if failed <= 3 {
                    eprintln!("  session failed: {e:#}");
                }
            }
            Err(e) => {
                failed += 1;
                eprintln!("  session task panicked: {e}");
            }
        }
    }
    LevelReport {
        sessions,
        failed,
        first_audio: Summary::of(&mut first),
        pause_silence: Summary::of(&mut pause),
        pause_ack: Summary::of(&mut ack),
        stop_silence: Summary::of(&mut stop),
        jitter: Summary::of(&mut jitter),
        max_frames_after_pause: max_after,
        sequence_gaps: gaps,
    }
}

pub async fn run(args: BenchArgs) -> anyhow::Result<Vec<LevelReport>> {
    let max = args.levels.iter().copied().max().unwrap_or(1);
    let stack = match &args.url {
        Some(_) => None,
        None => Some(start_stack(max + 10, None).await?),
    };
    let url = args.url.clone().unwrap_or_else(|| stack.as_ref().expect("started").url.clone());
    println!("duplex bench: mock engine, {:?} audio, url {url}", args.audio_format);
    println!("machine: {} cores; all times in ms; jitter = |frame interval - 20 ms| at the client", num_cpus());
    let mut reports = Vec::new();
    for &n in &args.levels {
        let r = run_level(&url, n, &args).await;
        println!("\n== {n} concurrent sessions ({} failed) ==", r.failed);
        println!("  first audio      {}", r.first_audio);
        println!("  pause->silence   {}", r.pause_silence);
        println!("  pause->ack       {}", r.pause_ack);
        println!("  stop->silence    {}", r.stop_silence);
        println!("  frame jitter     {}", r.jitter);
        println!(
            "  frames after PAUSE (max) {}   sequence gaps (expected 0) {}",
            r.max_frames_after_pause, r.sequence_gaps
        );
        reports.push(r);
    }
    println!(
        "\n| sessions | first audio p50/p95/p99 | pause→silence p95/p99 | pause→ack p95/p99 | stop→silence p95 | jitter p50/p95/p99 | failed |"
    );
    println!("|---:|---|---|---|---|---|---:|");
    for r in &reports {
        println!(
            "| {} | {:.2} / {:.2} / {:.2} | {:.2} / {:.2} | {:.2} / {:.2} | {:.2} | {:.2} / {:.2} / {:.2} | {} |",
            r.sessions,
            r.first_audio.p50,
            r.first_audio.p95,
            r.first_audio.p99,
            r.pause_silence.p95,
            r.pause_silence.p99,
            r.pause_ack.p95,
            r.pause_ack.p99,
            r.stop_silence.p95,
            r.jitter.p50,
            r.jitter.p95,
            r.jitter.p99,
            r.failed
        );
    }
    drop(stack);
    Ok(reports)
}

pub(crate) fn num_cpus() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}
