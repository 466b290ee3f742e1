//! Faults on the client's side of the network, each ending the documented
//! way with the server's state released and other sessions unaffected:
//! - a client that stops reading mid-utterance: its queue fills, the session
//!   ends (`client_not_reading`), a stalled write drops the connection;
//! - a client gone silent (half-open: no pong, no data): the keepalive ends
//!   the session (`client_unresponsive`), while a quiet client that answers
//!   pings keeps its session;
//! - connections that never finish their request headers or TLS handshake
//!   are closed.
//!
//! Worker faults (SIGKILL, SIGSTOP, SIGTERM) are in processes.rs and
//! failover.rs, Redis restarts in failover.rs, floods in access.rs and
//! hearing.rs, the orchestrator's shutdown in websocket.rs.

use std::time::{Duration, Instant};

use duplex_cli::client::{Client, Event};
use duplex_orchestrator::protocol::{AudioFormat, ClientMessage, EndReason, ServerMessage};
use duplex_tests::pki::Pki;
use duplex_tests::*;
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;

async fn sessions_active(stack: &Stack) -> f64 {
    let text = http_get(&format!("http://{}/metrics", stack.orchestrator.addr)).await;
    text.lines().find_map(|l| l.strip_prefix("duplex_sessions_active ").and_then(|v| v.trim().parse().ok())).unwrap()
}

/// Waits until the orchestrator counts `n` sessions; panics after `within`.
async fn until_sessions(stack: &Stack, n: f64, within: Duration) -> Duration {
    let started = Instant::now();
    while sessions_active(stack).await != n {
        assert!(started.elapsed() < within, "still {} sessions after {within:?}", sessions_active(stack).await);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    started.elapsed()
}

/// Reads a client to its end: what it was told, and whether the server closed.
async fn drain(client: &mut Client, within: Duration) -> Vec<ServerMessage> {
    let mut messages = Vec::new();
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, client.next()).await.expect("the server ends the connection") {
            Ok(Event::Message { message, .. }) => messages.push(message),
            Ok(Event::Audio { .. }) => {}
            Ok(Event::Closed(_)) | Err(_) => return messages,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_disconnected_and_its_session_freed() {
    let stack = Stack::start(worker_config(), |_| {}).await;
    // A small receive window, so the server's writes back up within a second or two.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let tcp = socket.connect(stack.orchestrator.addr).await.unwrap();
    let (mut ws, _) =
        tokio_tungstenite::client_async(format!("{}?audio_format=binary", stack.url()), tcp).await.unwrap();
    let _session_start = ws.next().await.unwrap().unwrap();
    let text = "A reply long enough to keep the audio coming for a good while. ".repeat(12);
    let msg = serde_json::to_string(&ClientMessage::Text { text, is_final: true }).unwrap();
    ws.send(Message::Text(msg.into())).await.unwrap();
    until_sessions(&stack, 1.0, Duration::from_secs(5)).await;

    // Meanwhile another client is served as usual.
    let mut other = stack.client(AudioFormat::Binary).await;
    other.send_text("Still here.", true).await.unwrap();
    let mut heard = Heard::default();
    read_until(&mut other, &mut heard, Duration::from_secs(20), is_utterance_end).await;
    assert_eq!(heard.end_reasons(), vec![EndReason::Completed]);

    // The reader that stopped: its session ends and is freed while the other stays.
    let took = until_sessions(&stack, 1.0, Duration::from_secs(30)).await;
    eprintln!("the non-reading session was freed {took:?} after the other one's utterance");
    other.close().await;
    until_sessions(&stack, 0.0, Duration::from_secs(5)).await;

    // Reading again: the connection has been dropped by the server.
    let ended =
        tokio::time::timeout(Duration::from_secs(30), async { while let Some(Ok(_)) = ws.next().await {} }).await;
    assert!(ended.is_ok(), "the server closed the connection");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_client_is_disconnected_by_the_keepalive_and_a_quiet_one_is_not() {
    let stack = Stack::start(worker_config(), |c| c.session.keepalive_ms = 200).await;
    // Quiet: says nothing, but keeps reading (so its pings are answered).
    let mut quiet = stack.client(AudioFormat::Binary).await;
    let listening = tokio::spawn(async move {
        let mut heard = Heard::default();
        read_for(&mut quiet, &mut heard, Duration::from_millis(1_500)).await;
        quiet
    });
    // Silent: it neither reads (so never answers a ping) nor sends.
    let connected = Instant::now();
    let mut silent = stack.client(AudioFormat::Binary).await;
    until_sessions(&stack, 1.0, Duration::from_secs(5)).await;
    let took = connected.elapsed();
    assert!(took >= Duration::from_millis(400), "two keepalive periods first ({took:?})");
    let mut quiet = listening.await.unwrap();
    assert_eq!(sessions_active(&stack).await, 1.0, "the quiet client kept its session");
    let told = drain(&mut silent, Duration::from_secs(5)).await;
    assert!(
        told.iter().any(|m| matches!(m, ServerMessage::SessionEnd { reason, .. } if reason == "client_unresponsive")),
        "{told:?}"
    );
    // The quiet one still speaks.
    quiet.send_text("Fine.", true).await.unwrap();
    let mut heard = Heard::default();
    read_until(&mut quiet, &mut heard, Duration::from_secs(20), is_utterance_end).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_that_never_finish_their_request_or_handshake_are_closed() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    let plain = Stack::start(worker_config(), |_| {}).await;
    let tls = Stack::start(worker_config(), |c| c.transport.websocket.tls = pki.server(false)).await;
    // Half a request: the headers never end.
    let mut dribble = tokio::net::TcpStream::connect(plain.orchestrator.addr).await.unwrap();
    dribble.write_all(b"GET /ws HTTP/1.1\r\nHost: localhost\r\n").await.unwrap();
    // Nothing at all, to the plain and to the TLS port.
    let mute = tokio::net::TcpStream::connect(plain.orchestrator.addr).await.unwrap();
    let no_hello = tokio::net::TcpStream::connect(tls.orchestrator.addr).await.unwrap();
    let started = Instant::now();
    let closed = |mut s: tokio::net::TcpStream| async move {
        let mut buf = [0u8; 1024];
        loop {
            match tokio::time::timeout(Duration::from_secs(20), s.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return true,
                Ok(Ok(_)) => continue, // a 408 before closing is fine
                Err(_) => return false,
            }
        }
    };
    let (a, b, c) = tokio::join!(closed(dribble), closed(mute), closed(no_hello));
    assert!(a && b && c, "closed: dribbling {a}, mute {b}, no TLS hello {c}");
    assert!(started.elapsed() < Duration::from_secs(15), "{:?}", started.elapsed());
    // Both servers still serve.
    let mut c = plain.client(AudioFormat::Binary).await;
    c.send_text("Ok.", true).await.unwrap();
    let mut heard = Heard::default();
    read_until(&mut c, &mut heard, Duration::from_secs(20), is_utterance_end).await;
    let wss = format!("wss://localhost:{}/ws", tls.orchestrator.addr.port());
    assert!(Client::connect_with(&wss, AudioFormat::Binary, Some(pki.rustls_client(false))).await.is_ok());
}
