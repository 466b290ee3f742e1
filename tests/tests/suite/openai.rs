//! The OpenAI-compatible responder against a stand-in chat server over real
//! HTTP: the streamed answer arrives in pieces, the request carries the
//! history, model and key, errors name the server and its answer, and a
//! cancelled reply closes the stream.

use std::time::{Duration, Instant};

use duplex_reply::{Exchange, OpenAi, OpenAiConfig, ReplyError, Request, Responder};
use duplex_tests::chat::{ChatServer, Script};
use tokio_util::sync::CancellationToken;

fn config(url: &str) -> OpenAiConfig {
    OpenAiConfig { url: url.into(), model: "tiny".into(), api_key: "sk-test".into(), ..OpenAiConfig::default() }
}

fn pieces(words: &[&str], every_ms: u64) -> Script {
    Script::Reply { pieces: words.iter().map(|w| w.to_string()).collect(), every: Duration::from_millis(every_ms) }
}

async fn collect(api: &OpenAi, request: Request) -> (Vec<String>, Option<ReplyError>) {
    let mut rx = api.respond(request);
    let (mut got, mut error) = (Vec::new(), None);
    while let Some(piece) = rx.recv().await {
        match piece {
            Ok(p) => got.push(p),
            Err(e) => error = Some(e),
        }
    }
    (got, error)
}

#[tokio::test]
async fn the_answer_streams_in_pieces_with_history_model_and_key() {
    let server = ChatServer::start(pieces(&["Paris ", "is ", "the capital."], 30)).await;
    let api = OpenAi::new(&config(&server.url)).unwrap();
    let history = vec![Exchange { user: "Hi".into(), assistant: "Hello!".into() }];
    let started = Instant::now();
    let mut rx = api.respond(Request { history, user: "Capital of France?".into(), cancel: CancellationToken::new() });
    let first = rx.recv().await.unwrap().unwrap();
    let first_after = started.elapsed();
    let mut all = vec![first];
    while let Some(p) = rx.recv().await {
        all.push(p.unwrap());
    }
    assert_eq!(all, ["Paris ", "is ", "the capital."]);
    assert!(first_after < Duration::from_millis(80), "the first piece came at once ({first_after:?}), not at the end");
    let asked = server.asked();
    assert_eq!(asked.len(), 1);
    let body = &asked[0].body;
    assert_eq!(body["model"], "tiny");
    assert_eq!(body["stream"], true);
    let messages: Vec<(String, String)> = body["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| (m["role"].as_str().unwrap().into(), m["content"].as_str().unwrap().into()))
        .collect();
    assert_eq!(messages[0].0, "system");
    assert_eq!(
        messages[1..],
        [
            ("user".into(), "Hi".into()),
            ("assistant".into(), "Hello!".into()),
            ("user".into(), "Capital of France?".into())
        ]
    );
    assert_eq!(asked[0].authorization.as_deref(), Some("Bearer sk-test"));
}

#[tokio::test]
async fn a_refusal_is_an_error_with_the_servers_words() {
    let server = ChatServer::start(Script::Fail { status: 401, message: "Incorrect API key provided".into() }).await;
    let api = OpenAi::new(&config(&server.url)).unwrap();
    let (got, error) =
        collect(&api, Request { history: vec![], user: "Hi".into(), cancel: CancellationToken::new() }).await;
    assert!(got.is_empty());
    let message = error.expect("an error").to_string();
    assert!(message.contains("401") && message.contains("Incorrect API key"), "{message}");
}

#[tokio::test]
async fn no_server_is_a_quick_clear_error() {
    let port = duplex_tests::free_port();
    let api = OpenAi::new(&config(&format!("http://127.0.0.1:{port}/v1"))).unwrap();
    let started = Instant::now();
    let (_, error) =
        collect(&api, Request { history: vec![], user: "Hi".into(), cancel: CancellationToken::new() }).await;
    let message = error.expect("an error").to_string();
    assert!(message.contains(&format!("127.0.0.1:{port}")), "names the server: {message}");
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[tokio::test]
async fn a_cancelled_reply_closes_the_stream() {
    let words: Vec<String> = (0..100).map(|i| format!("w{i} ")).collect();
    let server = ChatServer::start(Script::Reply { pieces: words, every: Duration::from_millis(20) }).await;
    let api = OpenAi::new(&config(&server.url)).unwrap();
    let cancel = CancellationToken::new();
    let mut rx = api.respond(Request { history: vec![], user: "Count".into(), cancel: cancel.clone() });
    assert!(rx.recv().await.unwrap().is_ok());
    cancel.cancel();
    let deadline = Instant::now() + Duration::from_secs(2);
    while server.abandoned() == 0 {
        assert!(Instant::now() < deadline, "the server still streams after the cancel");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Nothing more reaches the session.
    let mut after = 0;
    while let Ok(Some(_)) = tokio::time::timeout(Duration::from_millis(100), rx.recv()).await {
        after += 1;
    }
    assert!(after <= 1, "{after} pieces after the cancel");
}
