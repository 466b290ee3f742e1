//! A stand-in Hugging Face hub (a test double for huggingface.co): serves the
//! files of a local directory as `/{owner}/{name}/resolve/main/{path}`, with
//! the headers the hub's clients read (`ETag`, `X-Repo-Commit`,
//! `Content-Range` for ranged requests), and counts the files it served.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

#[derive(Clone)]
struct Shared {
    /// `root/{owner}/{name}/{path}` is the file.
    root: PathBuf,
    served: Arc<AtomicUsize>,
}

pub struct HubServer {
    /// The endpoint (`http://127.0.0.1:PORT`).
    pub url: String,
    served: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl HubServer {
    pub async fn start(root: PathBuf) -> Self {
        let shared = Shared { root, served: Arc::default() };
        let app =
            axum::Router::new().route("/{owner}/{name}/resolve/main/{*path}", get(resolve)).with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self { url, served: shared.served, task }
    }

    /// Whole-file downloads served so far (not the clients' size probes).
    pub fn served(&self) -> usize {
        self.served.load(Ordering::SeqCst)
    }
}

impl Drop for HubServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn resolve(
    State(shared): State<Shared>,
    Path((owner, name, path)): Path<(String, String, String)>,
    headers: HeaderMap,
) -> Response {
    if path.split('/').any(|part| part == "..") {
        return StatusCode::BAD_REQUEST.into_response();
    }
    let Ok(bytes) = tokio::fs::read(shared.root.join(&owner).join(&name).join(&path)).await else {
        return (StatusCode::NOT_FOUND, "Entry not found").into_response();
    };
    let size = bytes.len();
    // "bytes=START-" or "bytes=START-END"
    let range = headers.get(header::RANGE).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("bytes="));
    let (start, end) = match range.and_then(|r| r.split_once('-')) {
        Some((start, end)) => {
            let start: usize = start.parse().unwrap_or(0);
            let end = end.parse::<usize>().map_or(size.saturating_sub(1), |e| e.min(size.saturating_sub(1)));
            (start.min(size), end)
        }
        None => (0, size.saturating_sub(1)),
    };
    if range.is_some_and(|r| !r.ends_with("-0")) || range.is_none() {
        shared.served.fetch_add(1, Ordering::SeqCst);
    }
    let body = if size == 0 || start > end { Vec::new() } else { bytes[start..=end].to_vec() };
    let etag = format!("\"{:016x}\"", fingerprint(&owner, &name, &path, size));
    let status = if range.is_some() { StatusCode::PARTIAL_CONTENT } else { StatusCode::OK };
    (
        status,
        [
            (header::ETAG, etag),
            (header::HeaderName::from_static("x-repo-commit"), "0123456789abcdef0123456789abcdef01234567".into()),
            (header::CONTENT_RANGE, format!("bytes {start}-{end}/{size}")),
        ],
        body,
    )
        .into_response()
}

/// Distinct per file: the cache stores blobs under their ETag.
fn fingerprint(owner: &str, name: &str, path: &str, size: usize) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (owner, name, path, size).hash(&mut h);
    h.finish()
}
