//! The browser page: its files are compiled into the binary (no web server
//! or build step needed) and `/api/voices` lists what the workers can speak
//! with, for its voice selector. The one file that is not ours, the LiveKit
//! client library for the page's LiveKit mode, is served from the asset
//! cache (`duplex assets` fetches it from npm).

use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use serde::Serialize;

use crate::server::AppState;
use crate::worker::Voice;

const INDEX: &str = include_str!("../static/index.html");
const APP: &str = include_str!("../static/app.js");
const WORKLETS: &str = include_str!("../static/worklets.js");
const STYLE: &str = include_str!("../static/style.css");
const LIVEKIT: &str = include_str!("../static/livekit.js");

/// The page itself (served at `/` to plain GETs; `/` also takes WebSockets).
pub fn index() -> Response {
    Html(INDEX).into_response()
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    // Served from the binary: a new build is a new page, so browsers revalidate.
    ([(header::CONTENT_TYPE, content_type), (header::CACHE_CONTROL, "no-cache")], body).into_response()
}

#[derive(Debug, Serialize)]
struct Voices {
    /// `routing.default_model` ("" = each worker's own default).
    default: String,
    voices: Vec<Voice>,
}

async fn voices(State(state): State<Arc<AppState>>) -> Response {
    match state.pool.voices().await {
        Ok(voices) => Json(Voices { default: state.config.routing.default_model.clone(), voices }).into_response(),
        Err(e) => {
            (StatusCode::SERVICE_UNAVAILABLE, Json(serde_json::json!({ "error": e.to_string() }))).into_response()
        }
    }
}

pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/static/app.js", get(|| async { asset("text/javascript; charset=utf-8", APP) }))
        .route("/static/worklets.js", get(|| async { asset("text/javascript; charset=utf-8", WORKLETS) }))
        .route("/static/style.css", get(|| async { asset("text/css; charset=utf-8", STYLE) }))
        .route("/static/livekit.js", get(|| async { asset("text/javascript; charset=utf-8", LIVEKIT) }))
        .route("/static/livekit-client.js", get(livekit_client))
        .route("/api/voices", get(voices))
}

async fn livekit_client(State(state): State<Arc<AppState>>) -> Response {
    let path = &state.config.transport.livekit.client_library;
    match tokio::fs::read(path).await {
        Ok(body) => ([(header::CONTENT_TYPE, "text/javascript; charset=utf-8")], body).into_response(),
        Err(e) => (
            StatusCode::NOT_FOUND,
            format!("the LiveKit client library is not at {} ({e}); `duplex assets` fetches it", path.display()),
        )
            .into_response(),
    }
}
