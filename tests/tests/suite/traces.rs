//! OpenTelemetry traces of a spoken turn, received by a small OTLP/HTTP
//! (JSON) server in the test: the orchestrator (in this process) exports a
//! session span with a turn span under it and the turn's phases under that;
//! the worker (a separate process) exports its synthesis span as a child of
//! the orchestrator's utterance span — the trace context crossed the gRPC hop.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::routing::post;
use duplex_cli::client::{Client, Event};
use duplex_orchestrator::protocol::{AudioFormat, ServerMessage};
use duplex_telemetry::{LogConfig, OtlpProtocol, TracesConfig};
use duplex_tests::speech::{silence, spoken, with_hearing};
use duplex_tests::*;
use serde_json::Value;

#[derive(Debug, Clone)]
struct Span {
    service: String,
    name: String,
    trace: String,
    id: String,
    parent: String,
}

/// An OTLP/HTTP receiver: every span of every export, as sent.
async fn receiver() -> (String, Arc<Mutex<Vec<Span>>>) {
    let spans: Arc<Mutex<Vec<Span>>> = Arc::default();
    let store = spans.clone();
    let app = axum::Router::new().route(
        "/v1/traces",
        post(move |body: String| {
            let store = store.clone();
            async move {
                let export: Value = serde_json::from_str(&body).expect("OTLP JSON");
                for rs in export["resourceSpans"].as_array().into_iter().flatten() {
                    let service = rs["resource"]["attributes"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .find(|a| a["key"] == "service.name")
                        .and_then(|a| a["value"]["stringValue"].as_str())
                        .unwrap_or_default()
                        .to_string();
                    for ss in rs["scopeSpans"].as_array().into_iter().flatten() {
                        for s in ss["spans"].as_array().into_iter().flatten() {
                            let text = |k: &str| s[k].as_str().unwrap_or_default().to_string();
                            store.lock().unwrap().push(Span {
                                service: service.clone(),
                                name: text("name"),
                                trace: text("traceId"),
                                id: text("spanId"),
                                parent: text("parentSpanId"),
                            });
                        }
                    }
                }
                axum::Json(serde_json::json!({}))
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, spans)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spoken_turn_is_one_trace_across_the_grpc_hop() {
    let (otlp, spans) = receiver().await;
    let traces = TracesConfig {
        otlp_endpoint: otlp.clone(),
        protocol: OtlpProtocol::HttpJson,
        service_name: "duplex-orchestrator".into(),
    };
    let telemetry = duplex_telemetry::init(
        &LogConfig { level: "warn,duplex_orchestrator=info".into(), ..Default::default() },
        &traces,
        "x",
    )
    .unwrap();

    let port = free_port();
    let _worker = worker_process(
        env!("CARGO_BIN_EXE_duplex-test-worker"),
        port,
        None,
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &otlp),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"),
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
            ("LOG_LEVEL", "info"),
        ],
    );
    wait_serving(&format!("127.0.0.1:{port}"), Duration::from_secs(30)).await;
    let mut config = orchestrator_config(&format!("grpc://127.0.0.1:{port}"));
    with_hearing(&mut config);
    let orchestrator = duplex_orchestrator::spawn(config).await.unwrap();

    let mut c = Client::connect(&format!("ws://{}/ws", orchestrator.addr), AudioFormat::Binary).await.unwrap();
    c.session_start().await.unwrap();
    let mut mic = silence(300, 16_000);
    mic.extend(spoken("Is it raining?", 16_000));
    mic.extend(silence(1_000, 16_000));
    for (i, chunk) in mic.chunks(320).enumerate() {
        c.send_mic(16_000, i as u64, chunk).await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let until = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut replied = false;
    loop {
        let ev = tokio::time::timeout_at(until, c.next()).await.expect("the turn ends").unwrap();
        if let Event::Message { message, .. } = ev {
            match message {
                ServerMessage::Reply { .. } => replied = true,
                ServerMessage::State { state, .. } if state == "listening" && replied => break,
                _ => {}
            }
        }
    }
    c.close().await; // the session span ends with the session
    tokio::time::sleep(Duration::from_millis(500)).await;
    telemetry.flush();

    // The worker exports on its own schedule.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !spans.lock().unwrap().iter().any(|s| s.service == "duplex-worker" && s.name == "synthesize") {
        assert!(tokio::time::Instant::now() < deadline, "no worker span arrived");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let spans = spans.lock().unwrap().clone();
    let find = |service: &str, name: &str| -> Span {
        spans.iter().find(|s| s.service == service && s.name == name).cloned().unwrap_or_else(|| {
            panic!("no {service} span {name:?} in {:?}", spans.iter().map(|s| &s.name).collect::<Vec<_>>())
        })
    };
    let session = find("duplex-orchestrator", "session");
    let turn = find("duplex-orchestrator", "turn");
    assert_eq!(turn.parent, session.id, "the turn is a child of the session");
    assert_eq!(turn.trace, session.trace);
    for phase in ["vad", "asr", "reply", "tts_first_audio", "playback", "utterance"] {
        let span = find("duplex-orchestrator", phase);
        assert_eq!(span.parent, turn.id, "{phase} is a child of the turn");
        assert_eq!(span.trace, turn.trace, "{phase} is in the turn's trace");
    }
    let utterance = find("duplex-orchestrator", "utterance");
    let synthesize = find("duplex-worker", "synthesize");
    assert_eq!(synthesize.trace, utterance.trace, "the worker's span is in the same trace");
    assert_eq!(synthesize.parent, utterance.id, "the worker's span is a child of the orchestrator's utterance");
}
