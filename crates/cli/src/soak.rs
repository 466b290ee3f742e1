//! `duplex soak`: the mock stack (worker and orchestrator as child
//! processes) under a steady conversation load for a number of minutes,
//! sampled at intervals: each process's resident memory, open file
//! descriptors, threads and Tokio tasks, and the window's first-audio
//! latency. Each client connects, speaks a few utterances (one in three
//! stopped after its first frames, as a barge-in does), closes and starts
//! over, so sessions, streams and connections churn the whole time.
//!
//! At the end it compares the last sample with the one after warm-up:
//! memory growth, descriptor and task counts, and p95 first audio against
//! the first window's. Numbers only; docs/BENCHMARKS.md records a run.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use duplex_orchestrator::protocol::{AudioFormat, Command, ServerMessage};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::bench::{http_body, start_stack};
use crate::client::{Client, Event};
use crate::stats::Summary;

const TEXTS: [&str; 3] = [
    "Sure, I can help with that.",
    "The weather tomorrow looks mild, with a little rain in the evening.",
    "Here is a longer answer, so that some of the audio is still playing when the next turn begins.",
];
/// Utterances per connection before it closes and reconnects.
const TURNS_PER_CONNECTION: usize = 6;
/// First-audio samples in flight to the sampler; a full channel drops
/// samples (the count of drops is printed) rather than slowing the clients.
const SAMPLE_QUEUE: usize = 4096;

#[derive(Debug, Clone)]
pub struct SoakArgs {
    pub minutes: f64,
    pub sessions: usize,
    pub sample_every: Duration,
}

/// One process at one moment.
#[derive(Debug, Clone, Copy, Default)]
struct Usage {
    rss_kb: u64,
    fds: u64,
    threads: u64,
    tasks: u64,
}

/// One sampling window.
#[derive(Debug, Clone)]
struct Window {
    at: Duration,
    orchestrator: Usage,
    worker: Usage,
    sessions_active: u64,
    turns: u64,
    errors: u64,
    first_audio: Summary,
}

#[derive(Default)]
struct Counters {
    turns: AtomicU64,
    errors: AtomicU64,
    dropped: AtomicU64,
}

pub async fn run(args: SoakArgs) -> anyhow::Result<()> {
    let stack = start_stack(args.sessions * 2, None).await?;
    let pids = stack.pids();
    let (worker_pid, orchestrator_pid) = (pids[0], pids[1]);
    let orchestrator_addr = stack.url.trim_start_matches("ws://").trim_end_matches("/ws").to_string();
    println!(
        "soak: {} sessions for {} min, sampled every {} s (worker pid {worker_pid}, orchestrator pid {orchestrator_pid})",
        args.sessions,
        args.minutes,
        args.sample_every.as_secs()
    );
    let stop = CancellationToken::new();
    let counters = Arc::new(Counters::default());
    let (sample_tx, mut sample_rx) = mpsc::channel::<f64>(SAMPLE_QUEUE);
    let mut clients = tokio::task::JoinSet::new();
    for i in 0..args.sessions {
        let (url, stop, counters, sample_tx) = (stack.url.clone(), stop.clone(), counters.clone(), sample_tx.clone());
        clients.spawn(async move {
            // Spread the starts over a second, as real arrivals are.
            tokio::time::sleep(Duration::from_millis((i * 1000 / args.sessions.max(1)) as u64)).await;
            let mut turn = i;
            while !stop.is_cancelled() {
                if let Err(e) = connection(&url, &mut turn, &stop, &counters, &sample_tx).await {
                    counters.errors.fetch_add(1, Ordering::Relaxed);
                    eprintln!("soak: session error: {e:#}");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        });
    }
    drop(sample_tx);

    println!(
        "{:>6} | {:>8} {:>5} {:>7} {:>5} | {:>8} {:>5} {:>7} {:>5} | {:>8} {:>6} {:>6} | {:>15}",
        "min",
        "orch MB",
        "fds",
        "threads",
        "tasks",
        "work MB",
        "fds",
        "threads",
        "tasks",
        "sessions",
        "turns",
        "errors",
        "first audio p50/p95 ms"
    );
    let started = Instant::now();
    let end = started + Duration::from_secs_f64(args.minutes * 60.0);
    let mut windows: Vec<Window> = Vec::new();
    let mut latencies = Vec::new();
    let mut next = started + args.sample_every;
    while next <= end + Duration::from_millis(10) {
        let deadline = tokio::time::Instant::from_std(next);
        while let Ok(Some(ms)) = tokio::time::timeout_at(deadline, sample_rx.recv()).await {
            latencies.push(ms);
        }
        let metrics = http_body(&orchestrator_addr, "/metrics").await.unwrap_or_default();
        let worker_metrics = http_body(&stack.worker_metrics, "/metrics").await.unwrap_or_default();
        let window = Window {
            at: started.elapsed(),
            orchestrator: Usage { tasks: gauge(&metrics, "duplex_runtime_tasks"), ..usage(orchestrator_pid)? },
            worker: Usage { tasks: gauge(&worker_metrics, "duplex_worker_runtime_tasks"), ..usage(worker_pid)? },
            sessions_active: gauge(&metrics, "duplex_sessions_active"),
            turns: counters.turns.swap(0, Ordering::Relaxed),
            errors: counters.errors.swap(0, Ordering::Relaxed),
            first_audio: Summary::of(&mut latencies),
        };
        latencies.clear();
        print_window(&window);
        windows.push(window);
        next += args.sample_every;
    }
    stop.cancel();
    while clients.join_next().await.is_some() {}
    verdict(&windows, counters.dropped.load(Ordering::Relaxed));
    Ok(())
}

/// One connection: a few utterances, then close.
async fn connection(
    url: &str,
    turn: &mut usize,
    stop: &CancellationToken,
    counters: &Counters,
    samples: &mpsc::Sender<f64>,
) -> anyhow::Result<()> {
    let mut client = Client::connect(url, AudioFormat::Binary).await?;
    client.session_start().await?;
    for _ in 0..TURNS_PER_CONNECTION {
        if stop.is_cancelled() {
            break;
        }
        *turn += 1;
        let barge_in = turn.is_multiple_of(3);
        let sent = Instant::now();
        client.send_text(TEXTS[*turn % TEXTS.len()], true).await?;
        let mut frames = 0usize;
        loop {
            let event = tokio::time::timeout(Duration::from_secs(30), client.next())
                .await
                .context("no utterance end within 30 s")??;
            match event {
                Event::Audio { at, .. } => {
                    frames += 1;
                    if frames == 1 && samples.try_send((at - sent).as_secs_f64() * 1e3).is_err() {
                        counters.dropped.fetch_add(1, Ordering::Relaxed);
                    }
                    if barge_in && frames == 10 {
                        client.control(Command::Stop).await?;
                    }
                }
                Event::Message { message: ServerMessage::UtteranceEnd { .. }, .. } => break,
                Event::Message { message: ServerMessage::Error { code, message, .. }, .. } => {
                    anyhow::bail!("{code:?}: {message}")
                }
                Event::Message { .. } => {}
                Event::Closed(code) => anyhow::bail!("closed by the server ({code:?})"),
            }
        }
        counters.turns.fetch_add(1, Ordering::Relaxed);
    }
    client.close().await;
    Ok(())
}

/// Resident memory, descriptors and threads of `pid`, from /proc.
fn usage(pid: u32) -> anyhow::Result<Usage> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).with_context(|| format!("process {pid}"))?;
    let field = |name: &str| {
        status.lines().find_map(|l| l.strip_prefix(name)).and_then(|v| v.split_whitespace().next()?.parse().ok())
    };
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))?.count() as u64;
    Ok(Usage { rss_kb: field("VmRSS:").unwrap_or(0), fds, threads: field("Threads:").unwrap_or(0), tasks: 0 })
}

/// A gauge's value in a Prometheus text exposition (0 when absent).
fn gauge(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse::<f64>().ok())
        .map_or(0, |v| v as u64)
}

fn print_window(w: &Window) {
    let (o, k) = (&w.orchestrator, &w.worker);
    println!(
        "{:>6.1} | {:>8.1} {:>5} {:>7} {:>5} | {:>8.1} {:>5} {:>7} {:>5} | {:>8} {:>6} {:>6} | {:>7.2} / {:>6.2}",
        w.at.as_secs_f64() / 60.0,
        o.rss_kb as f64 / 1024.0,
        o.fds,
        o.threads,
        o.tasks,
        k.rss_kb as f64 / 1024.0,
        k.fds,
        k.threads,
        k.tasks,
        w.sessions_active,
        w.turns,
        w.errors,
        w.first_audio.p50,
        w.first_audio.p95
    );
}

/// Last window against the one after warm-up (the second; the first when
/// there is only one or two).
fn verdict(windows: &[Window], dropped: u64) {
    let (Some(first), Some(last)) = (windows.first(), windows.last()) else { return };
    let warm = windows.get(1).filter(|_| windows.len() > 2).unwrap_or(first);
    let growth = |a: u64, b: u64| if a == 0 { 0.0 } else { (b as f64 - a as f64) / a as f64 * 100.0 };
    let errors: u64 = windows.iter().map(|w| w.errors).sum();
    let turns: u64 = windows.iter().map(|w| w.turns).sum();
    println!(
        "\nafter warm-up ({:.1} min) → end ({:.1} min):",
        warm.at.as_secs_f64() / 60.0,
        last.at.as_secs_f64() / 60.0
    );
    for (name, a, b) in
        [("orchestrator", &warm.orchestrator, &last.orchestrator), ("worker", &warm.worker, &last.worker)]
    {
        println!(
            "  {name}: RSS {:.1} → {:.1} MB ({:+.2} %), fds {} → {}, threads {} → {}, tasks {} → {}",
            a.rss_kb as f64 / 1024.0,
            b.rss_kb as f64 / 1024.0,
            growth(a.rss_kb, b.rss_kb),
            a.fds,
            b.fds,
            a.threads,
            b.threads,
            a.tasks,
            b.tasks
        );
    }
    let p95 = |w: &Window| w.first_audio.p95;
    println!(
        "  first audio p95: first window {:.2} ms, last {:.2} ms ({:+.1} %)",
        p95(first),
        p95(last),
        if p95(first) > 0.0 { (p95(last) - p95(first)) / p95(first) * 100.0 } else { 0.0 }
    );
    println!("  turns {turns}, errors {errors}, latency samples dropped {dropped}");
}
