//! TLS: the orchestrator serves HTTPS/WSS (optionally requiring client
//! certificates) and talks gRPC over TLS (optionally mutual) to a worker
//! that requires it; plain-text and certificate-less clients are refused.
//! Real rustls handshakes, certificates from a private CA made per test.

use std::time::Duration;

use duplex_cli::client::Client;
use duplex_orchestrator::protocol::{AudioFormat, EndReason, ServerMessage};
use duplex_tests::pki::Pki;
use duplex_tests::*;

/// Speaks a sentence and returns the utterance's end reason and frame count.
async fn speak(client: &mut Client) -> (EndReason, usize) {
    client.send_text("Hello over an encrypted line.", true).await.unwrap();
    let mut heard = Heard::default();
    read_until(client, &mut heard, Duration::from_secs(20), is_utterance_end).await;
    (heard.end_reasons()[0], heard.frames.len())
}

/// A started session over WSS, trusting the test CA (and presenting the
/// client certificate with `certificate`).
async fn wss_session(stack: &Stack, pki: &Pki, certificate: bool) -> Client {
    let tls = Some(pki.rustls_client(certificate));
    let mut client = Client::connect_with(&wss(stack), AudioFormat::Binary, tls).await.expect("wss");
    client.session_start().await.unwrap();
    client
}

/// A worker requiring mutual TLS on gRPC, and an orchestrator serving WSS
/// that dials it with `client` TLS settings.
async fn stack(pki: &Pki, worker_mutual: bool, routing: duplex_config::tls::ClientTls, wss_mutual: bool) -> Stack {
    let mut worker = worker_config();
    worker.grpc.tls = pki.server(worker_mutual);
    let worker = duplex_worker::spawn(worker).await.expect("worker starts");
    let mut oc = orchestrator_config(&format!("grpc://localhost:{}", worker.addr.port()));
    oc.routing.tls = routing;
    oc.transport.websocket.tls = pki.server(wss_mutual);
    let orchestrator = duplex_orchestrator::spawn(oc).await.expect("orchestrator starts");
    Stack { worker, orchestrator }
}

fn wss(stack: &Stack) -> String {
    format!("wss://localhost:{}/ws", stack.orchestrator.addr.port())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_runs_over_wss_and_mutual_tls_grpc() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    let stack = stack(&pki, true, pki.client(true), false).await;
    let mut client = wss_session(&stack, &pki, false).await;
    let (reason, frames) = speak(&mut client).await;
    assert_eq!(reason, EndReason::Completed);
    assert!(frames > 10, "{frames} frames");

    // Plain text to the TLS port: no WebSocket.
    let plain = format!("ws://127.0.0.1:{}/ws", stack.orchestrator.addr.port());
    assert!(Client::connect(&plain, AudioFormat::Binary).await.is_err(), "plain ws refused");
    // A client that does not trust the CA: the handshake fails.
    assert!(Client::connect(&wss(&stack), AudioFormat::Binary).await.is_err(), "unknown CA refused");
    // The session on the TLS port is unaffected by those.
    let (reason, _) = speak(&mut client).await;
    assert_eq!(reason, EndReason::Completed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wss_with_client_certificates_refuses_clients_without_one() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    let stack = stack(&pki, false, pki.client(false), true).await;
    let refused = Client::connect_with(&wss(&stack), AudioFormat::Binary, Some(pki.rustls_client(false))).await;
    assert!(refused.is_err(), "no client certificate: refused");
    let mut client = wss_session(&stack, &pki, true).await;
    assert_eq!(speak(&mut client).await.0, EndReason::Completed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_requiring_mutual_tls_refuses_plain_and_certificate_less_clients() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    // The orchestrator trusts the worker's CA but has no client certificate.
    let stack = stack(&pki, true, pki.client(false), false).await;
    let mut client = wss_session(&stack, &pki, false).await;
    client.send_text("Nobody will say this.", true).await.unwrap();
    let mut heard = Heard::default();
    read_until(&mut client, &mut heard, Duration::from_secs(20), |e| {
        matches!(e, duplex_cli::client::Event::Message { message: ServerMessage::Error { .. }, .. })
    })
    .await;
    let said = format!("{:?}", heard.messages);
    assert!(said.contains("WorkerUnavailable"), "{said}");
    assert!(heard.frames.is_empty());

    // A plain-text gRPC client gets no answer from the TLS port.
    let plain = tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{}", stack.worker.addr.port()))
        .unwrap()
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(2));
    let answered = match plain.connect().await {
        Ok(channel) => {
            let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
            health.check(tonic_health::pb::HealthCheckRequest { service: String::new() }).await.is_ok()
        }
        Err(_) => false,
    };
    assert!(!answered, "plain-text gRPC refused");
}
