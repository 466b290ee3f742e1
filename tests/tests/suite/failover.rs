//! Failover across registered workers: a worker that dies mid-utterance hands
//! the rest to another (from the sentence it was saying, none repeated), a
//! dead or silent one is skipped at once, and a Redis restart changes nothing.

use std::time::{Duration, Instant};

use duplex_cli::client::{Client, Event};
use duplex_orchestrator::protocol::{AudioFormat, ClientMessage, EndReason, ErrorCode, ServerMessage};
use duplex_tests::routing::{orchestrator, say, sessions_on, talk, wait_registered, worker, worker_process};
use duplex_tests::*;

const BIN: &str = env!("CARGO_BIN_EXE_duplex-test-worker");

fn completed(h: &Heard) -> bool {
    matches!(h.messages.last(), Some(ServerMessage::UtteranceEnd { reason: EndReason::Completed, .. }))
}

/// Character offsets where each sentence of `text` starts.
fn sentence_starts(text: &str) -> Vec<u64> {
    let mut starts = vec![0];
    let chars: Vec<char> = text.chars().collect();
    for i in 1..chars.len() {
        if chars[i - 1] == ' ' && i >= 2 && chars[i - 2] == '.' {
            starts.push(i as u64);
        }
    }
    starts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_mid_utterance_hands_the_rest_to_another_with_no_sentence_repeated() {
    let redis = RedisServer::start();
    // "doomed" sorts before "spare": with equal load the session lands there.
    let mut doomed = worker_process(BIN, &redis, "doomed").await;
    let spare = duplex_worker::spawn(worker(&redis, "spare", None)).await.unwrap();
    let orch = orchestrator(&redis, "").await;
    wait_registered(&redis, 2).await;
    let mut c = Client::connect(&format!("ws://{}/ws", orch.addr), AudioFormat::Json).await.unwrap();
    c.session_start().await.unwrap();

    let text = "One two three. Four five six. Seven eight nine. Ten and done.";
    let starts = sentence_starts(text);
    assert_eq!(starts.len(), 4);
    c.send_text(text, true).await.unwrap();
    // (text offset, arrival)
    let mut frames: Vec<(u64, Instant)> = Vec::new();
    let mut killed_at = None;
    let end = loop {
        match tokio::time::timeout(Duration::from_secs(20), c.next()).await.expect("no hang").unwrap() {
            Event::Audio { text_offset, at, .. } => {
                frames.push((text_offset, at));
                if killed_at.is_none() && text_offset == starts[1] {
                    // Mid-utterance: the second sentence has begun playing.
                    doomed.kill().await.unwrap();
                    killed_at = Some(Instant::now());
                }
            }
            Event::Message { message: ServerMessage::Error { message, .. }, .. } => panic!("error: {message}"),
            Event::Message { message: ServerMessage::UtteranceEnd { reason, .. }, .. } => break reason,
            _ => {}
        }
    };
    assert_eq!(end, EndReason::Completed);
    assert!(killed_at.is_some(), "the worker was killed mid-utterance");
    assert_eq!(sessions_on(spare.addr).await, 1.0, "the rest went to the spare");

    // No sentence said again: offsets never go back, the sentences before and
    // after the cut are heard once (to within the frame two sentences share,
    // and the last partial frame), and the cut one is said again whole after
    // what the dead worker had already delivered.
    let offsets: Vec<u64> = frames.iter().map(|f| f.0).collect();
    assert!(offsets.windows(2).all(|w| w[0] <= w[1]), "offsets went back: {offsets:?}");
    let mut bounds = starts.clone();
    bounds.push(text.chars().count() as u64);
    for (i, w) in bounds.windows(2).enumerate() {
        let sentence = &text[w[0] as usize..w[1] as usize];
        let heard = offsets.iter().filter(|o| **o == w[0]).count() as i64;
        let once = mock_frames(sentence) as i64;
        if i == 1 {
            assert!(heard >= once - 1, "the cut sentence {sentence:?} is heard whole: {heard} < {once}");
        } else {
            assert!((heard - once).abs() <= 2, "{sentence:?} heard once: {heard} frames, not {once}");
        }
    }
    let gap = frames.windows(2).map(|w| w[1].1 - w[0].1).max().unwrap();
    eprintln!("longest gap between frames across the failover: {gap:?}");
    assert!(gap < Duration::from_secs(3), "no session hangs: {gap:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_after_a_worker_died_between_turns_goes_to_another_at_once() {
    let redis = RedisServer::start();
    let mut doomed = worker_process(BIN, &redis, "doomed").await;
    let orch = orchestrator(&redis, "").await;
    wait_registered(&redis, 1).await;
    let url = format!("ws://{}/ws", orch.addr);
    let (mut c, first) = talk(&url, "first").await;
    assert!(completed(&first));
    // A second worker appears, the first dies (its record stays for 10 s).
    let spare = duplex_worker::spawn(worker(&redis, "spare", None)).await.unwrap();
    wait_registered(&redis, 2).await;
    doomed.kill().await.unwrap();
    let next = say(&mut c, "are you there?").await;
    assert!(completed(&next), "{:?}", next.messages);
    assert_eq!(sessions_on(spare.addr).await, 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_no_worker_left_the_utterance_fails_and_the_session_goes_on() {
    let redis = RedisServer::start();
    let mut doomed = worker_process(BIN, &redis, "doomed").await;
    let orch = orchestrator(&redis, "").await;
    wait_registered(&redis, 1).await;
    let mut c = Client::connect(&format!("ws://{}/ws", orch.addr), AudioFormat::Binary).await.unwrap();
    c.session_start().await.unwrap();
    c.send_text("A long sentence that will not be finished by this worker.", true).await.unwrap();
    let mut heard = Heard::default();
    read_until(&mut c, &mut heard, Duration::from_secs(10), |e| matches!(e, Event::Audio { .. })).await;
    doomed.kill().await.unwrap();
    let started = Instant::now();
    read_until(&mut c, &mut heard, Duration::from_secs(10), is_error).await;
    let took = started.elapsed();
    assert_eq!(heard.end_reasons(), vec![EndReason::Error]);
    let Some(ServerMessage::Error { code, message, .. }) = heard.messages.last() else { unreachable!() };
    assert_eq!(*code, ErrorCode::WorkerUnavailable);
    eprintln!("reported in {took:?}: {message}");
    c.send(&ClientMessage::Ping { id: Some(7) }).await.unwrap();
    let mut pong = Heard::default();
    read_until(&mut c, &mut pong, Duration::from_secs(5), |e| {
        matches!(e, Event::Message { message: ServerMessage::Pong { .. }, .. })
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_sessions_avoid_a_registered_worker_that_does_not_answer() {
    let redis = RedisServer::start();
    // "doomed" sorts before "spare": with equal load it would be picked first.
    let mut doomed = worker_process(BIN, &redis, "doomed").await;
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
        assert!(completed(&heard), "session {i}: {:?}", heard.messages);
        clients.push(c);
    }
    assert_eq!(sessions_on(spare.addr).await, 3.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routing_recovers_from_a_redis_restart_without_restarting_anything() {
    let mut redis = RedisServer::start();
    let _a = duplex_worker::spawn(worker(&redis, "a", None)).await.unwrap();
    let orch = orchestrator(&redis, "").await;
    wait_registered(&redis, 1).await;
    let url = format!("ws://{}/ws", orch.addr);
    let (_c1, h) = talk(&url, "before").await;
    assert!(completed(&h));

    redis.stop();
    // Redis is down: sessions route with the last view.
    let (_c2, h) = talk(&url, "during").await;
    assert!(completed(&h), "{:?}", h.messages);

    redis.restart();
    // A worker that only registers after the restart is found: the
    // orchestrator's watcher reconnected by itself.
    let b = duplex_worker::spawn(worker(&redis, "b", Some("mock-b"))).await.unwrap();
    wait_registered(&redis, 2).await;
    let mut c = Client::connect(&url, AudioFormat::Binary).await.unwrap();
    c.session_start().await.unwrap();
    c.send(&ClientMessage::Config { audio_format: None, model: Some("mock-b".into()), language: None }).await.unwrap();
    let h = say(&mut c, "after").await;
    assert!(completed(&h), "{:?}", h.messages);
    assert_eq!(sessions_on(b.addr).await, 1.0);
}
