//! Failure handling with the worker as a real process: SIGKILL and SIGSTOP
//! mid-utterance must reach the client as WORKER_UNAVAILABLE (never a hang),
//! and SIGTERM must drain and exit cleanly.

use std::time::{Duration, Instant};

use duplex_cli::client::{Client, Event};
use duplex_orchestrator::protocol::{AudioFormat, ClientMessage, EndReason, ErrorCode, ServerMessage};
use duplex_tests::*;
use tokio::process::Child;

const LONG: &str = "A long answer that is still being spoken when the worker goes away without warning.";

async fn spawn_worker(port: u16) -> Child {
    let child = worker_process(env!("CARGO_BIN_EXE_duplex-test-worker"), port, None, &[]);
    wait_serving(&format!("127.0.0.1:{port}"), Duration::from_secs(20)).await;
    child
}

fn signal(child: &Child, sig: &str) {
    let pid = child.id().expect("running").to_string();
    let ok = std::process::Command::new("kill").args([sig, &pid]).status().expect("kill runs").success();
    assert!(ok, "kill {sig} {pid}");
}

async fn session(port: u16, stall_ms: u64) -> (duplex_orchestrator::Handle, Client) {
    let mut cfg = orchestrator_config(&format!("grpc://127.0.0.1:{port}"));
    cfg.routing.stall_timeout_ms = stall_ms;
    cfg.routing.connect_timeout_ms = 1_000;
    cfg.routing.session_start_timeout_ms = 2_000;
    let orch = duplex_orchestrator::spawn(cfg).await.unwrap();
    let mut c = Client::connect(&format!("ws://{}/ws", orch.addr), AudioFormat::Binary).await.unwrap();
    c.session_start().await.unwrap();
    (orch, c)
}

/// Reads until an error arrives; returns it, the utterance ends seen and how long it took.
async fn until_error(c: &mut Client, within: Duration) -> (ErrorCode, Vec<(u64, EndReason)>, Duration) {
    let start = Instant::now();
    let mut ends = Vec::new();
    loop {
        let ev = tokio::time::timeout(within, c.next()).await.expect("an error, not a hang").unwrap();
        match ev {
            Event::Message { message: ServerMessage::UtteranceEnd { utterance_id, reason, .. }, .. } => {
                ends.push((utterance_id, reason))
            }
            Event::Message { message: ServerMessage::Error { code, .. }, .. } => return (code, ends, start.elapsed()),
            Event::Closed(code) => panic!("session closed ({code:?}) instead of reporting"),
            _ => {}
        }
    }
}

async fn first_frames(c: &mut Client, n: usize) {
    let mut got = 0;
    while got < n {
        if let Event::Audio { .. } = tokio::time::timeout(Duration::from_secs(10), c.next()).await.unwrap().unwrap() {
            got += 1;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_killed_mid_utterance_is_reported_and_a_new_worker_is_used() {
    let port = free_port();
    let mut worker = spawn_worker(port).await;
    let (_orch, mut c) = session(port, 5_000).await;
    c.send_text(LONG, true).await.unwrap();
    first_frames(&mut c, 5).await;
    worker.kill().await.unwrap(); // SIGKILL
    let (code, ends, took) = until_error(&mut c, Duration::from_secs(5)).await;
    assert_eq!(code, ErrorCode::WorkerUnavailable);
    assert_eq!(ends, vec![(1, EndReason::Error)]);
    assert!(took < Duration::from_secs(2), "noticed in {took:?}");

    // The session survives, and speaks again once a worker is back on the address.
    let _worker = spawn_worker(port).await;
    c.send_text("back again", true).await.unwrap();
    let mut frames = 0;
    loop {
        match tokio::time::timeout(Duration::from_secs(10), c.next()).await.unwrap().unwrap() {
            Event::Audio { utterance_id, .. } => {
                assert_eq!(utterance_id, 2);
                frames += 1;
            }
            Event::Message { message: ServerMessage::UtteranceEnd { reason, .. }, .. } => {
                assert_eq!(reason, EndReason::Completed);
                break;
            }
            Event::Message { message: ServerMessage::Error { message, .. }, .. } => panic!("{message}"),
            _ => {}
        }
    }
    assert_eq!(frames, mock_frames("back again"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_worker_is_detected_by_the_stall_timeout() {
    let port = free_port();
    let worker = spawn_worker(port).await;
    let (_orch, mut c) = session(port, 800).await;
    c.send_text(LONG, true).await.unwrap();
    first_frames(&mut c, 3).await;
    signal(&worker, "-STOP"); // alive but silent
    let (code, ends, took) = until_error(&mut c, Duration::from_secs(10)).await;
    signal(&worker, "-CONT");
    assert_eq!(code, ErrorCode::WorkerUnavailable);
    assert_eq!(ends, vec![(1, EndReason::Error)]);
    // Queued audio (~0.2 s) plays first, then the 0.8 s stall clock runs.
    assert!(took < Duration::from_secs(4), "reported after {took:?}");
    c.send(&ClientMessage::Ping { id: None }).await.unwrap();
    loop {
        if let Event::Message { message: ServerMessage::Pong { .. }, .. } = c.next().await.unwrap() {
            break;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_and_exits_cleanly() {
    let port = free_port();
    let mut worker = spawn_worker(port).await;
    let mut grpc = grpc(format!("127.0.0.1:{port}").parse().unwrap()).await;
    use duplex_proto::tts::{StartSessionRequest, TextChunk};
    grpc.start_session(StartSessionRequest { session_id: "s".into(), ..Default::default() }).await.unwrap();
    let chunk = TextChunk { session_id: "s".into(), text: "short".into(), is_final: true, ..Default::default() };
    let mut frames = grpc.synthesize(tokio_stream::iter(vec![chunk])).await.unwrap().into_inner();
    signal(&worker, "-TERM");
    // The stream already open is finished, with its final frame.
    let mut finals = 0;
    while let Some(f) = frames.message().await.unwrap() {
        finals += f.is_final as u32;
    }
    assert_eq!(finals, 1);
    let status =
        tokio::time::timeout(Duration::from_secs(5), worker.wait()).await.expect("exits within grace").unwrap();
    assert!(status.success(), "exit status {status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_is_read_while_a_frozen_worker_is_being_dialled() {
    let port = free_port();
    let worker = spawn_worker(port).await;
    signal(&worker, "-STOP"); // accepts TCP (kernel backlog) but never answers
    let mut cfg = orchestrator_config(&format!("grpc://127.0.0.1:{port}"));
    cfg.routing.connect_timeout_ms = 1_500;
    cfg.routing.session_start_timeout_ms = 1_500;
    let orch = duplex_orchestrator::spawn(cfg).await.unwrap();
    let mut c = Client::connect(&format!("ws://{}/ws", orch.addr), AudioFormat::Binary).await.unwrap();
    c.session_start().await.unwrap();
    c.send_text("hello?", true).await.unwrap();
    let sent = Instant::now();
    c.send(&ClientMessage::Ping { id: Some(1) }).await.unwrap();
    loop {
        match tokio::time::timeout(Duration::from_secs(5), c.next()).await.unwrap().unwrap() {
            Event::Message { message: ServerMessage::Pong { .. }, .. } => break,
            Event::Message { message: ServerMessage::Error { message, .. }, .. } => {
                panic!("error before pong: {message}")
            }
            _ => {}
        }
    }
    assert!(sent.elapsed() < Duration::from_millis(1_000), "pong waited for the dial ({:?})", sent.elapsed());
    let (code, ends, _) = until_error(&mut c, Duration::from_secs(5)).await;
    signal(&worker, "-CONT");
    assert_eq!(code, ErrorCode::WorkerUnavailable);
    assert_eq!(ends, vec![(1, EndReason::Error)]);
}
