//! Access control on the conversation endpoints with real clients: without
//! a credential, with a wrong one, with an API key in the query or the
//! header, with a signed token, and a browser origin off the list — each
//! refusal a clear HTTP status and sentence; the page and probes stay open.

use base64::Engine as _;
use duplex_orchestrator::access::{AccessConfig, Mode};
use duplex_orchestrator::protocol::AudioFormat;
use duplex_tests::*;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

async fn handshake(url: &str, headers: &[(&str, &str)]) -> Result<(), (u16, String)> {
    let mut request = url.into_client_request().unwrap();
    for (name, value) in headers {
        let name = axum::http::HeaderName::from_bytes(name.as_bytes()).unwrap();
        request.headers_mut().insert(name, value.parse().unwrap());
    }
    match tokio_tungstenite::connect_async(request).await {
        Ok(_) => Ok(()),
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            let body = response.body().as_ref().map(|b| String::from_utf8_lossy(b).into_owned()).unwrap_or_default();
            Err((response.status().as_u16(), body))
        }
        Err(e) => panic!("handshake failed otherwise: {e}"),
    }
}

/// Retries the handshake until it is accepted (a closed connection's place
/// comes back once the server has seen it close).
async fn until_accepted(url: &str, what: &str) {
    let until = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while handshake(url, &[]).await.is_err() {
        assert!(std::time::Instant::now() < until, "{what}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

type Socket = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Pongs and RATE_LIMITED refusals read from `ws` within `window`; each
/// refusal's message must contain `refusal`.
async fn replies(ws: &mut Socket, window: std::time::Duration, refusal: &str) -> (usize, usize) {
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    let (mut pongs, mut limited) = (0, 0);
    let until = tokio::time::Instant::now() + window;
    while let Ok(Some(Ok(Message::Text(t)))) = tokio::time::timeout_at(until, ws.next()).await {
        let v: serde_json::Value = serde_json::from_str(&t).unwrap();
        match v["type"].as_str() {
            Some("pong") => pongs += 1,
            Some("error") if v["code"] == "RATE_LIMITED" => {
                limited += 1;
                assert!(v["message"].as_str().unwrap().contains(refusal), "{t}");
            }
            _ => {}
        }
    }
    (pongs, limited)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_keys_guard_the_conversation_endpoints() {
    let stack = Stack::start(worker_config(), |c| {
        c.access = AccessConfig { mode: Mode::ApiKey, api_keys: vec!["key-1".into()], ..Default::default() };
    })
    .await;
    let ws = stack.url();
    let (status, body) = handshake(&ws, &[]).await.unwrap_err();
    assert_eq!(status, 401);
    assert!(body.contains("Authorization: Bearer"), "{body}");
    assert_eq!(handshake(&format!("{ws}?token=key-2"), &[]).await.unwrap_err(), (401, "invalid API key".into()));
    handshake(&format!("{ws}?token=key-1"), &[]).await.expect("the key in the query");
    handshake(&ws, &[("authorization", "Bearer key-1")]).await.expect("the key in the header");
    // A real session with the key: it starts as usual.
    let mut client =
        duplex_cli::client::Client::connect(&format!("{ws}?token=key-1"), AudioFormat::Binary).await.unwrap();
    client.session_start().await.expect("session_start");

    let _ = rustls::crypto::ring::default_provider().install_default();
    let http = reqwest::Client::new();
    let base = format!("http://{}", stack.orchestrator.addr);
    let offer = http.post(format!("{base}/rtc/offer")).json(&serde_json::json!({"sdp": "v=0"})).send().await.unwrap();
    assert_eq!(offer.status(), 401);
    let token = http.get(format!("{base}/livekit/token?room=a&identity=b")).send().await.unwrap();
    assert_eq!(token.status(), 401);
    // The page and the probes need nothing.
    assert_eq!(http.get(format!("{base}/")).send().await.unwrap().status(), 200);
    assert_eq!(http.get(format!("{base}/health")).send().await.unwrap().status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_tokens_and_browser_origins() {
    const SECRET: &str = "an-integration-secret-of-32-bytes!!";
    let stack = Stack::start(worker_config(), |c| {
        c.access = AccessConfig {
            mode: Mode::Jwt,
            jwt_secret: SECRET.into(),
            allowed_origins: vec!["https://app.example".into()],
            ..Default::default()
        };
    })
    .await;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let sign = |claims: serde_json::Value, secret: &str| {
        use hmac::Mac;
        let head = b64.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
        let body = b64.encode(claims.to_string());
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
        mac.update(format!("{head}.{body}").as_bytes());
        format!("{head}.{body}.{}", b64.encode(mac.finalize().into_bytes()))
    };
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let good = sign(serde_json::json!({"sub": "alice", "exp": now + 60}), SECRET);
    let expired = sign(serde_json::json!({"sub": "alice", "exp": now - 5}), SECRET);
    let forged = sign(serde_json::json!({"sub": "alice", "exp": now + 60}), "not-the-secret-but-also-32-bytes-long");
    let ws = stack.url();
    handshake(&format!("{ws}?token={good}"), &[("origin", "https://app.example")])
        .await
        .expect("signed, allowed origin");
    assert_eq!(handshake(&format!("{ws}?token={expired}"), &[]).await.unwrap_err(), (401, "token has expired".into()));
    assert_eq!(
        handshake(&format!("{ws}?token={forged}"), &[]).await.unwrap_err(),
        (401, "token signature is invalid".into())
    );
    let (status, body) =
        handshake(&format!("{ws}?token={good}"), &[("origin", "https://evil.example")]).await.unwrap_err();
    assert_eq!((status, body.as_str()), (403, "origin https://evil.example is not allowed"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_from_one_address_are_limited() {
    let stack = Stack::start(worker_config(), |c| c.session.max_connections_per_ip = 2).await;
    let ws = stack.url();
    let first = tokio_tungstenite::connect_async(ws.as_str()).await.expect("first");
    let _second = tokio_tungstenite::connect_async(ws.as_str()).await.expect("second");
    let (status, body) = handshake(&ws, &[]).await.unwrap_err();
    assert_eq!(status, 429);
    assert!(body.contains("too many connections from 127.0.0.1 (2 open)"), "{body}");
    // Closing one gives its place back.
    drop(first);
    until_accepted(&ws, "the closed connection's place came back").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_flood_is_refused_and_the_session_goes_on() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let stack = Stack::start(worker_config(), |c| {
        c.session.max_messages_per_s = 10;
        c.session.max_message_burst = 20;
    })
    .await;
    let (mut ws, _) = tokio_tungstenite::connect_async(stack.url()).await.unwrap();
    for id in 0..60 {
        ws.send(Message::Text(format!(r#"{{"type":"ping","id":{id}}}"#).into())).await.unwrap();
    }
    let window = std::time::Duration::from_millis(800);
    let (pongs, limited) = replies(&mut ws, window, "more than 10 messages a second").await;
    assert!((20..=30).contains(&pongs), "{pongs} answered: the burst and what refilled");
    assert_eq!(pongs + limited, 60, "every message answered or refused");
    // The session is still there once the rate allows.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    ws.send(Message::Text(r#"{"type":"ping","id":999}"#.into())).await.unwrap();
    loop {
        let Some(Ok(Message::Text(t))) =
            tokio::time::timeout(std::time::Duration::from_secs(5), ws.next()).await.unwrap()
        else {
            panic!("the session ended")
        };
        if t.contains("pong") && t.contains("999") {
            break;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_per_credential_are_limited() {
    let stack = Stack::start(worker_config(), |c| {
        c.access =
            AccessConfig { mode: Mode::ApiKey, api_keys: vec!["key-a".into(), "key-b".into()], ..Default::default() };
        c.session.max_sessions_per_key = 2;
    })
    .await;
    let ws = stack.url();
    let open = |key: &str| {
        let url = format!("{ws}?token={key}");
        async move {
            let mut c = duplex_cli::client::Client::connect(&url, AudioFormat::Binary).await.unwrap();
            c.session_start().await.unwrap();
            c
        }
    };
    let first = open("key-a").await;
    let _second = open("key-a").await;
    let (status, body) = handshake(&format!("{ws}?token=key-a"), &[]).await.unwrap_err();
    assert_eq!(status, 429);
    assert!(body.contains("too many sessions for this credential (2 open)"), "{body}");
    // Another key is counted apart.
    let _other = open("key-b").await;
    // A closed session gives its place back.
    first.close().await;
    until_accepted(&format!("{ws}?token=key-a"), "the place came back").await;
}

/// The sessions of one address share a message rate: three sessions, each
/// under its own limit, are refused together once their sum passes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_of_one_address_share_a_message_rate() {
    use futures_util::SinkExt;
    use tokio_tungstenite::tungstenite::Message;
    let stack = Stack::start(worker_config(), |c| {
        c.session.max_messages_per_s = 100;
        c.session.max_message_burst = 100;
        c.session.max_messages_per_s_per_client = 10;
    })
    .await;
    let mut sockets = Vec::new();
    for _ in 0..3 {
        sockets.push(tokio_tungstenite::connect_async(stack.url()).await.unwrap().0);
    }
    for (n, ws) in sockets.iter_mut().enumerate() {
        for id in 0..15 {
            ws.send(Message::Text(format!(r#"{{"type":"ping","id":{}}}"#, n * 100 + id).into())).await.unwrap();
        }
    }
    let (mut pongs, mut limited) = (0, 0);
    for ws in &mut sockets {
        let window = std::time::Duration::from_millis(500);
        let (p, l) = replies(ws, window, "all sessions together").await;
        (pongs, limited) = (pongs + p, limited + l);
    }
    // 45 messages against a shared burst of 20 (and 10 a second while they came).
    assert!((20..=28).contains(&pongs), "{pongs} answered");
    assert_eq!(pongs + limited, 45, "every message answered or refused");
}
