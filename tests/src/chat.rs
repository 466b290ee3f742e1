//! A stand-in OpenAI-compatible chat server (a test double for llama.cpp's
//! server, vLLM or OpenAI): answers `POST /v1/chat/completions` with a reply
//! streamed as server-sent events, records what it was asked, and counts
//! clients that went away in the middle of a stream.

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::{Value, json};
use tokio::sync::mpsc;

/// How the server answers.
#[derive(Debug, Clone)]
pub enum Script {
    /// These pieces, one every `every`, then `[DONE]`.
    Reply { pieces: Vec<String>, every: Duration },
    /// This status with an OpenAI-style error body.
    Fail { status: u16, message: String },
}

/// One request as received.
#[derive(Debug, Clone)]
pub struct Asked {
    pub body: Value,
    pub authorization: Option<String>,
}

#[derive(Clone)]
struct Shared {
    script: Script,
    asked: Arc<Mutex<Vec<Asked>>>,
    left: Arc<AtomicUsize>,
}

pub struct ChatServer {
    /// The API base (`http://127.0.0.1:PORT/v1`).
    pub url: String,
    shared: Shared,
    task: tokio::task::JoinHandle<()>,
}

impl ChatServer {
    pub async fn start(script: Script) -> Self {
        let shared = Shared { script, asked: Arc::default(), left: Arc::default() };
        let app = axum::Router::new().route("/v1/chat/completions", post(complete)).with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}/v1", listener.local_addr().expect("addr"));
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self { url, shared, task }
    }

    pub fn asked(&self) -> Vec<Asked> {
        self.shared.asked.lock().unwrap().clone()
    }

    /// Streams whose client went away before the end.
    pub fn abandoned(&self) -> usize {
        self.shared.left.load(Ordering::SeqCst)
    }
}

impl Drop for ChatServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn complete(State(shared): State<Shared>, headers: HeaderMap, body: String) -> Response {
    let body: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
    let authorization = headers.get("authorization").and_then(|v| v.to_str().ok()).map(str::to_string);
    shared.asked.lock().unwrap().push(Asked { body, authorization });
    let (pieces, every) = match shared.script {
        Script::Fail { status, message } => {
            let status = StatusCode::from_u16(status).expect("status");
            return (status, json!({"error": {"message": message}}).to_string()).into_response();
        }
        Script::Reply { pieces, every } => (pieces, every),
    };
    // One event at a time: a client that leaves makes the next send fail.
    let (tx, rx) = mpsc::channel::<Result<String, Infallible>>(1);
    tokio::spawn(async move {
        let events = pieces
            .iter()
            .map(|p| json!({"choices": [{"index": 0, "delta": {"content": p}}]}).to_string())
            .chain(["[DONE]".to_string()]);
        for data in events {
            tokio::time::sleep(every).await;
            if tx.send(Ok(format!("data: {data}\n\n"))).await.is_err() {
                shared.left.fetch_add(1, Ordering::SeqCst);
                return;
            }
        }
    });
    Response::builder()
        .header("content-type", "text/event-stream")
        .body(Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(rx)))
        .expect("response")
}
