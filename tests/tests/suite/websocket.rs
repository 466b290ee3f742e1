//! The orchestrator end to end: a real WebSocket client, the orchestrator and
//! a worker, checking pacing, controls, isolation and every bad input.

use std::time::{Duration, Instant};

use duplex_cli::client::{Client, Event};
use duplex_orchestrator::protocol::{AudioFormat, ClientMessage, Command, EndReason, ErrorCode, ServerMessage};
use duplex_tests::*;
use tokio_tungstenite::tungstenite::Message;

const LONG: &str = "This sentence is long enough to be paused, resumed and stopped while it plays.";

fn ends(heard: &Heard) -> Vec<(u64, EndReason, u64)> {
    heard
        .messages
        .iter()
        .filter_map(|m| match m {
            ServerMessage::UtteranceEnd { utterance_id, reason, frames } => Some((*utterance_id, *reason, *frames)),
            _ => None,
        })
        .collect()
}

fn errors(heard: &Heard) -> Vec<(ErrorCode, String)> {
    heard
        .messages
        .iter()
        .filter_map(|m| match m {
            ServerMessage::Error { code, message, .. } => Some((*code, message.clone())),
            _ => None,
        })
        .collect()
}

/// Speaks `text` and reads to its utterance_end.
async fn speak(client: &mut Client, text: &str) -> Heard {
    client.send_text(text, true).await.unwrap();
    let mut heard = Heard::default();
    read_until(client, &mut heard, Duration::from_secs(20), is_utterance_end).await;
    heard
}

async fn frames_until(client: &mut Client, heard: &mut Heard, n: usize) {
    let target = heard.frames.len() + n;
    read_until(client, heard, Duration::from_secs(10), |e| matches!(e, Event::Audio { .. })).await;
    while heard.frames.len() < target {
        read_until(client, heard, Duration::from_secs(10), |e| matches!(e, Event::Audio { .. })).await;
    }
}

async fn ack(client: &mut Client, heard: &mut Heard, command: Command) -> u64 {
    client.control(command).await.unwrap();
    read_until(
        client,
        heard,
        Duration::from_secs(5),
        |e| matches!(e, Event::Message { message: ServerMessage::ControlAck { command: c, .. }, .. } if *c == command),
    )
    .await;
    match heard.messages.last() {
        Some(ServerMessage::ControlAck { last_sequence, .. }) => *last_sequence,
        other => panic!("expected an ack, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_becomes_real_time_paced_frames() {
    let stack = Stack::start(worker_config(), |_| {}).await;
    let mut c = Client::connect(&stack.url(), AudioFormat::Json).await.unwrap();
    let Event::Message { message: ServerMessage::SessionStart { sample_rate, frame_ms, audio_format, .. }, .. } =
        c.next().await.unwrap()
    else {
        panic!("session_start first")
    };
    assert_eq!((sample_rate, frame_ms, audio_format), (48_000, 20, AudioFormat::Json));

    let text = "Hello world, this is Duplex.";
    let heard = speak(&mut c, text).await;
    let expected = mock_frames(text);
    assert_eq!(heard.frames.len() as u64, expected);
    assert!(heard.frames.iter().all(|f| f.2 == 1920), "every frame is 20 ms of 48 kHz s16le");
    assert_eq!(heard.frames[0].0, 1);
    assert!(heard.sequences_contiguous());
    assert_eq!(ends(&heard), vec![(1, EndReason::Completed, expected)]);
    // Real time: the frames span their own duration (minus the look-ahead), not a burst.
    let span = heard.frames.last().unwrap().3 - heard.frames[0].3;
    let air = Duration::from_millis((expected - 2) * 20);
    assert!(span >= air.mul_f64(0.9) && span <= air.mul_f64(1.5), "span {span:?} for {air:?} of paced audio");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_audio_by_url_or_by_config_message() {
    let stack = Stack::start(worker_config(), |_| {}).await;
    let mut c = stack.client(AudioFormat::Binary).await;
    let heard = speak(&mut c, "binary").await;
    assert_eq!(heard.frames.len() as u64, mock_frames("binary"));
    assert!(heard.sequences_contiguous());

    let mut c = stack.client(AudioFormat::Json).await;
    c.send(&ClientMessage::Config { audio_format: Some(AudioFormat::Binary), model: None, language: None })
        .await
        .unwrap();
    let mut heard = Heard::default();
    read_until(&mut c, &mut heard, Duration::from_secs(5), |_| true).await;
    assert_eq!(
        heard.messages,
        vec![ServerMessage::Config { audio_format: AudioFormat::Binary, model: None, language: None }]
    );
    let heard = speak(&mut c, "switched").await;
    assert_eq!(heard.frames.len() as u64, mock_frames("switched"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_silences_at_once_and_resume_continues_without_loss_or_replay() {
    let stack = Stack::start(worker_config(), |_| {}).await;
    let mut c = stack.client(AudioFormat::Binary).await;
    let mut heard = Heard::default();
    c.send_text(LONG, true).await.unwrap();
    frames_until(&mut c, &mut heard, 10).await;

    let sent = Instant::now();
    let last_before = ack(&mut c, &mut heard, Command::Pause).await;
    let acked = Instant::now();
    let at_ack = heard.frames.len();
    assert_eq!(heard.frames.last().unwrap().0, last_before, "ack names the last frame sent");
    let in_flight = heard.frames.iter().filter(|f| f.3 > sent).count();
    assert!(in_flight <= 1, "{in_flight} frames between PAUSE and its ack");
    read_for(&mut c, &mut heard, Duration::from_millis(300)).await;
    assert_eq!(heard.frames.len(), at_ack, "no audio after the ack while paused");
    assert!(acked - sent < Duration::from_millis(500));

    ack(&mut c, &mut heard, Command::Resume).await;
    read_until(&mut c, &mut heard, Duration::from_secs(20), is_utterance_end).await;
    let expected = mock_frames(LONG);
    assert_eq!(heard.frames.len() as u64, expected, "nothing lost, nothing replayed");
    assert!(heard.sequences_contiguous());
    assert_eq!(ends(&heard), vec![(1, EndReason::Completed, expected)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_flushes_and_the_session_speaks_again() {
    let stack = Stack::start(worker_config(), |_| {}).await;
    let mut c = stack.client(AudioFormat::Binary).await;
    let mut heard = Heard::default();
    c.send_text(LONG, true).await.unwrap();
    frames_until(&mut c, &mut heard, 5).await;
    ack(&mut c, &mut heard, Command::Stop).await;
    let stopped_at = heard.frames.len();
    assert!(ends(&heard).contains(&(1, EndReason::Stopped, stopped_at as u64)), "{:?}", heard.messages);
    read_for(&mut c, &mut heard, Duration::from_millis(200)).await;
    assert_eq!(heard.frames.len(), stopped_at, "no stale audio after STOP");

    let again = speak(&mut c, "Again.").await;
    assert_eq!(again.frames.len() as u64, mock_frames("Again."));
    assert!(again.frames.iter().all(|f| f.1 == 2), "only the new utterance is heard");
    assert_eq!(ends(&again), vec![(2, EndReason::Completed, mock_frames("Again."))]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streamed_text_is_one_utterance_and_empty_text_ends_empty() {
    let stack = Stack::start(worker_config(), |_| {}).await;
    let mut c = stack.client(AudioFormat::Binary).await;
    c.send_text("Hello ", false).await.unwrap();
    c.send_text("again", false).await.unwrap();
    let heard = speak(&mut c, ".").await;
    assert_eq!(heard.frames.len() as u64, mock_frames("Hello again."));
    assert_eq!(ends(&heard), vec![(1, EndReason::Completed, mock_frames("Hello again."))]);
    let heard = speak(&mut c, "   ").await;
    assert_eq!(ends(&heard), vec![(2, EndReason::Empty, 0)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_are_isolated() {
    let stack = Stack::start(worker_config(), |_| {}).await;
    let mut a = stack.client(AudioFormat::Binary).await;
    let mut b = stack.client(AudioFormat::Binary).await;
    a.send_text(LONG, true).await.unwrap();
    b.send_text(LONG, true).await.unwrap();
    let (mut ha, mut hb) = (Heard::default(), Heard::default());
    frames_until(&mut a, &mut ha, 5).await;
    frames_until(&mut b, &mut hb, 5).await;
    ack(&mut a, &mut ha, Command::Pause).await;
    let a_paused_at = ha.frames.len();
    let b_before = hb.frames.len();
    read_for(&mut b, &mut hb, Duration::from_millis(400)).await;
    assert!(hb.frames.len() - b_before >= 12, "B kept playing ({} frames in 400 ms)", hb.frames.len() - b_before);
    read_for(&mut a, &mut ha, Duration::from_millis(50)).await;
    assert_eq!(ha.frames.len(), a_paused_at, "A stayed paused");
    // STOP on B does not end A.
    ack(&mut b, &mut hb, Command::Stop).await;
    ack(&mut a, &mut ha, Command::Resume).await;
    read_until(&mut a, &mut ha, Duration::from_secs(20), is_utterance_end).await;
    assert_eq!(ends(&ha), vec![(1, EndReason::Completed, mock_frames(LONG))]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bad_input_gets_an_error_and_the_session_survives() {
    let stack = Stack::start(worker_config(), |c| {
        c.session.max_text_chars = 100;
        c.transport.websocket.max_message_bytes = 2048;
    })
    .await;
    let mut c = stack.client(AudioFormat::Binary).await;
    let too_long = serde_json::json!({"type": "text", "text": "a".repeat(101)}).to_string();
    let too_big = serde_json::json!({"type": "text", "text": "b".repeat(3000)}).to_string();
    let cases: Vec<(Message, &str)> = vec![
        (Message::Text("{not json".into()), "invalid message"),
        (Message::Text(r#"{"type":"dance"}"#.into()), "unknown message type"),
        (Message::Text(r#"{"text":"no type"}"#.into()), "missing \"type\""),
        (Message::Text(r#"{"type":"control","command":"JUMP"}"#.into()), "JUMP"),
        (Message::Text(r#"{"type":"text"}"#.into()), "text"),
        (Message::Text(too_long.into()), "exceeds the limit of 100"),
        (Message::Text(too_big.into()), "exceeds the limit of 2048"),
        (Message::Binary(b"{\"type\":\"text\",\"text\":\"\xff\xfe\"}".to_vec().into()), "UTF-8"),
        (Message::Binary(vec![2, 0, 0, 0].into()), "microphone audio"),
        (Message::Binary(vec![].into()), "empty binary"),
    ];
    for (msg, needle) in cases {
        c.send_raw(msg).await.unwrap();
        let mut heard = Heard::default();
        read_until(&mut c, &mut heard, Duration::from_secs(5), is_error).await;
        let errs = errors(&heard);
        assert_eq!(errs.len(), 1);
        assert_eq!(errs[0].0, ErrorCode::InvalidMessage);
        assert!(errs[0].1.contains(needle), "{:?} should mention {needle:?}", errs[0].1);
        assert!(!errs[0].1.contains("bbbb"), "errors do not echo input");
    }
    // The session still works.
    let heard = speak(&mut c, "still here").await;
    assert_eq!(heard.frames.len() as u64, mock_frames("still here"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_utf8_in_a_text_frame_is_reported_before_the_socket_closes() {
    use tokio_tungstenite::tungstenite::protocol::frame::{
        Frame,
        coding::{Data, OpCode},
    };
    let stack = Stack::start(worker_config(), |_| {}).await;
    let mut c = stack.client(AudioFormat::Binary).await;
    let frame = Frame::message(b"{\"type\":\"text\",\"text\":\"\xc3\x28\"}".to_vec(), OpCode::Data(Data::Text), true);
    c.send_raw(Message::Frame(frame)).await.unwrap();
    let mut heard = Heard::default();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let closed = loop {
        match tokio::time::timeout_at(deadline, c.next()).await.expect("an answer").unwrap() {
            Event::Message { message, .. } => heard.messages.push(message),
            Event::Closed(code) => break code,
            Event::Audio { .. } => {}
        }
    };
    // RFC 6455 makes this fatal for the socket; the client learns why first.
    let errs = errors(&heard);
    assert_eq!(errs.len(), 1, "{:?}", heard.messages);
    assert_eq!(errs[0].0, ErrorCode::InvalidMessage);
    assert!(errs[0].1.contains("UTF-8"), "{}", errs[0].1);
    assert_eq!(closed, Some(1007));
    // The same bytes in a binary frame are an ordinary INVALID_MESSAGE (tested above).
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_server_answers_busy() {
    let stack = Stack::start(worker_config(), |c| c.session.max_sessions = 1).await;
    let _first = stack.client(AudioFormat::Binary).await;
    let mut second = Client::connect(&stack.url(), AudioFormat::Binary).await.unwrap();
    match second.next().await.unwrap() {
        Event::Message { message: ServerMessage::Error { code, retry_after_ms, .. }, .. } => {
            assert_eq!(code, ErrorCode::Busy);
            assert!(retry_after_ms.is_some());
        }
        other => panic!("expected BUSY, got {other:?}"),
    }
    assert!(matches!(second.next().await.unwrap(), Event::Closed(Some(1013))));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_worker_is_reported_and_the_session_survives() {
    let port = free_port();
    let mut cfg = orchestrator_config(&format!("grpc://127.0.0.1:{port}"));
    cfg.routing.connect_timeout_ms = 500;
    cfg.routing.session_start_timeout_ms = 500;
    let orch = duplex_orchestrator::spawn(cfg).await.unwrap();
    let mut c = Client::connect(&format!("ws://{}/ws", orch.addr), AudioFormat::Binary).await.unwrap();
    c.session_start().await.unwrap();
    c.send_text("anyone there?", true).await.unwrap();
    let mut heard = Heard::default();
    read_until(&mut c, &mut heard, Duration::from_secs(5), is_error).await;
    assert_eq!(errors(&heard)[0].0, ErrorCode::WorkerUnavailable);
    assert_eq!(ends(&heard), vec![(1, EndReason::Error, 0)]);
    c.send(&ClientMessage::Ping { id: Some(7) }).await.unwrap();
    read_until(&mut c, &mut heard, Duration::from_secs(5), |e| {
        matches!(e, Event::Message { message: ServerMessage::Pong { .. }, .. })
    })
    .await;
    assert_eq!(heard.messages.last(), Some(&ServerMessage::Pong { id: Some(7) }));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_session_is_closed_with_a_reason() {
    let stack = Stack::start(worker_config(), |c| c.session.idle_timeout_ms = 300).await;
    let mut c = stack.client(AudioFormat::Binary).await;
    let mut heard = Heard::default();
    read_until(&mut c, &mut heard, Duration::from_secs(5), |_| true).await;
    assert!(
        matches!(&heard.messages[0], ServerMessage::SessionEnd { reason, .. } if reason == "idle_timeout"),
        "{:?}",
        heard.messages
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_report_liveness_readiness_and_metrics() {
    let worker = duplex_worker::spawn(worker_config()).await.unwrap();
    wait_serving(&worker.addr.to_string(), Duration::from_secs(10)).await;
    let mut cfg = orchestrator_config(&format!("grpc://{}", worker.addr));
    cfg.health.enabled = true;
    cfg.health.host = "127.0.0.1".into();
    cfg.health.port = 0;
    let orch = duplex_orchestrator::spawn(cfg).await.unwrap();
    let main = orch.addr.to_string();
    let probes = orch.health_addr.unwrap().to_string();
    assert_eq!(http_get(&main, "/health").await.0, 200);
    assert_eq!(http_get(&probes, "/ready").await.0, 200);
    let mut c = Client::connect(&format!("ws://{main}/ws"), AudioFormat::Binary).await.unwrap();
    c.session_start().await.unwrap();
    speak(&mut c, "count me").await;
    let (status, body) = http_get(&probes, "/metrics").await;
    assert_eq!(status, 200);
    let frames: f64 =
        body.lines().find_map(|l| l.strip_prefix("duplex_frames_sent_total ")).expect("frames metric").parse().unwrap();
    assert_eq!(frames as u64, mock_frames("count me"));
    assert!(body.contains("duplex_first_audio_seconds_count 1"), "{body}");
    assert!(body.contains("duplex_sessions_active 1"));
    // Worker gone: not ready.
    worker.shutdown.cancel();
    let _ = worker.join.await;
    let (status, body) = http_get(&probes, "/ready").await;
    assert_eq!(status, 503, "{body}");
}

async fn http_get(addr: &str, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes()).await.unwrap();
    let mut buf = String::new();
    s.read_to_string(&mut buf).await.unwrap();
    let status = buf.split_whitespace().nth(1).unwrap().parse().unwrap();
    let body = buf.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    (status, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_tells_every_session_why() {
    let stack = Stack::start(worker_config(), |_| {}).await;
    let mut a = stack.client(AudioFormat::Binary).await;
    let mut b = stack.client(AudioFormat::Json).await;
    a.send_text(LONG, true).await.unwrap();
    let mut ha = Heard::default();
    frames_until(&mut a, &mut ha, 3).await;
    stack.orchestrator.shutdown.cancel();
    for c in [&mut a, &mut b] {
        let mut heard = Heard::default();
        read_until(c, &mut heard, Duration::from_secs(5), |e| {
            matches!(e, Event::Message { message: ServerMessage::SessionEnd { .. }, .. })
        })
        .await;
        assert!(
            matches!(heard.messages.last(), Some(ServerMessage::SessionEnd { reason, .. }) if reason == "server_shutdown")
        );
    }
    let joined = tokio::time::timeout(Duration::from_secs(8), stack.orchestrator.join).await;
    assert!(matches!(joined, Ok(Ok(Ok(())))), "orchestrator exits cleanly: {joined:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_chooses_the_model_per_session() {
    use duplex_tts::mock::MockConfig;
    use duplex_worker::engines::EngineConfig;
    let mut wc = worker_config();
    wc.models.push(EngineConfig::Mock(MockConfig {
        model_id: "mock-fast".into(),
        ms_per_char: 30,
        ..MockConfig::default()
    }));
    let stack = Stack::start(wc, |_| {}).await;
    let mut c = stack.client(AudioFormat::Binary).await;
    let normal = speak(&mut c, "same words").await.frames.len();
    c.send(&ClientMessage::Config { audio_format: None, model: Some("mock-fast".into()), language: None })
        .await
        .unwrap();
    let mut heard = Heard::default();
    read_until(&mut c, &mut heard, Duration::from_secs(5), |_| true).await;
    assert_eq!(
        heard.messages,
        vec![ServerMessage::Config {
            audio_format: AudioFormat::Binary,
            model: Some("mock-fast".into()),
            language: None
        }]
    );
    let fast = speak(&mut c, "same words").await.frames.len();
    assert!(fast * 2 < normal, "the faster model spoke: {fast} vs {normal} frames");

    // Not while speaking.
    c.send_text(LONG, true).await.unwrap();
    let mut heard = Heard::default();
    frames_until(&mut c, &mut heard, 2).await;
    c.send(&ClientMessage::Config { audio_format: None, model: Some("mock".into()), language: None }).await.unwrap();
    read_until(&mut c, &mut heard, Duration::from_secs(5), is_error).await;
    assert!(errors(&heard)[0].1.contains("while speaking"), "{:?}", errors(&heard));
    ack(&mut c, &mut heard, Command::Stop).await;

    // A model no worker has: a clear error, and the session goes on.
    c.send(&ClientMessage::Config { audio_format: None, model: Some("no-such-voice".into()), language: None })
        .await
        .unwrap();
    let heard = speak_or_error(&mut c, "hello").await;
    let errs = errors(&heard);
    assert_eq!(errs.len(), 1, "{:?}", heard.messages);
    assert!(errs[0].1.contains("no-such-voice"), "{}", errs[0].1);
    c.send(&ClientMessage::Config { audio_format: None, model: Some(String::new()), language: None }).await.unwrap();
    let back = speak(&mut c, "same words").await;
    assert_eq!(back.frames.len(), normal, "back on the default model");
}

/// Speaks `text` expecting it to fail: reads to the error event.
async fn speak_or_error(client: &mut Client, text: &str) -> Heard {
    client.send_text(text, true).await.unwrap();
    let mut heard = Heard::default();
    read_until(client, &mut heard, Duration::from_secs(20), is_error).await;
    heard
}
