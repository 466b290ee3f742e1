//! LiveKit rooms (`transport.livekit`): tokens for browsers, and our agent
//! sent into rooms — on request or when LiveKit's webhook says a user
//! joined. In a room the agent runs an ordinary session (the same one a
//! WebSocket or WebRTC client gets) over its LiveKit media; it leaves when
//! the session ends or the room empties.
//!
//! - `GET /livekit/token?room=R&identity=I` → `{token, url, room, identity, ttl_s}`
//! - `POST /livekit/join` `{"room": R}` → 202 `{room, session_id}` (409 if already there)
//! - `POST /livekit/webhook` (LiveKit's signed webhook) → joins on `participant_joined`

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use axum::Json;
use axum::Router;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use duplex_livekit::agent::{AgentConfig, join};
use duplex_livekit::token::{TokenError, Tokens};
use serde::{Deserialize, Serialize};

use crate::protocol::AudioFormat;
use crate::server::{AppState, LiveId};

/// The rooms our agent is in (or joining).
#[derive(Debug)]
pub struct Rooms {
    tokens: Option<Tokens>,
    joined: Mutex<HashSet<String>>,
}

impl Rooms {
    pub fn new(config: &duplex_livekit::LiveKitConfig) -> Self {
        Self { tokens: Tokens::new(config).ok(), joined: Mutex::default() }
    }

    /// The rooms the agent is in now.
    pub fn joined(&self) -> Vec<String> {
        let mut rooms: Vec<String> = self.joined.lock().expect("rooms lock").iter().cloned().collect();
        rooms.sort();
        rooms
    }
}

pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/livekit/token", get(token))
        .route("/livekit/join", post(join_request))
        .route("/livekit/webhook", post(webhook))
}

/// Why a request was turned down; each is one status and a sentence.
#[derive(Debug, thiserror::Error)]
enum Refused {
    #[error(transparent)]
    Token(#[from] TokenError),
    #[error("the agent is already in room {0:?}")]
    AlreadyIn(String),
    #[error("could not join room {room:?}: {error}")]
    JoinFailed { room: String, error: String },
    #[error("{}", .0.message)]
    Access(crate::access::Denied),
}

impl IntoResponse for Refused {
    fn into_response(self) -> Response {
        let status = match &self {
            Refused::Token(TokenError::BadName { .. }) => StatusCode::BAD_REQUEST,
            Refused::Token(TokenError::RoomNotAllowed(_)) => StatusCode::FORBIDDEN,
            Refused::Token(TokenError::NotConfigured) => StatusCode::NOT_FOUND,
            Refused::Token(TokenError::Webhook(_)) => StatusCode::UNAUTHORIZED,
            Refused::Token(TokenError::Sign(_)) => StatusCode::INTERNAL_SERVER_ERROR,
            Refused::AlreadyIn(_) => StatusCode::CONFLICT,
            Refused::JoinFailed { .. } => StatusCode::BAD_GATEWAY,
            Refused::Access(denied) => denied.status,
        };
        (status, self.to_string()).into_response()
    }
}

fn tokens(state: &AppState) -> Result<&Tokens, Refused> {
    state.livekit.tokens.as_ref().ok_or(Refused::Token(TokenError::NotConfigured))
}

#[derive(Debug, Deserialize)]
struct TokenParams {
    room: String,
    identity: String,
    /// Our own access credential (browsers), when not in `Authorization`.
    #[serde(default)]
    token: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
struct AccessParams {
    #[serde(default)]
    token: Option<String>,
}

fn allowed(state: &AppState, headers: &HeaderMap, token: Option<&str>) -> Result<(), Refused> {
    state.config.access.check(headers, token).map(|_| ()).map_err(Refused::Access)
}

#[derive(Debug, Serialize)]
struct Minted {
    token: String,
    url: String,
    room: String,
    identity: String,
    ttl_s: u64,
}

async fn token(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Query(params): Query<TokenParams>,
) -> Result<Json<Minted>, Refused> {
    allowed(&state, &headers, params.token.as_deref())?;
    let tokens = tokens(&state)?;
    let token = tokens.for_user(&params.room, &params.identity)?;
    Ok(Json(Minted {
        token,
        url: state.config.transport.livekit.browser_url().to_string(),
        room: params.room,
        identity: params.identity,
        ttl_s: tokens.ttl().as_secs(),
    }))
}

#[derive(Debug, Deserialize)]
struct JoinParams {
    room: String,
}

#[derive(Debug, Serialize)]
struct Sent {
    room: String,
    session_id: String,
}

async fn join_request(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Query(access): Query<AccessParams>,
    Json(params): Json<JoinParams>,
) -> Result<Response, Refused> {
    allowed(&state, &headers, access.token.as_deref())?;
    let session_id = send_agent(state, params.room.clone()).await?;
    Ok((StatusCode::ACCEPTED, Json(Sent { room: params.room, session_id })).into_response())
}

/// LiveKit's webhook: a user joining a room we are not in sends the agent.
async fn webhook(State(state): State<Arc<AppState>>, headers: HeaderMap, body: String) -> Result<StatusCode, Refused> {
    let auth = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).unwrap_or_default();
    let event = tokens(&state)?.webhook(&body, auth)?;
    let agent_identity = &state.config.transport.livekit.agent_identity;
    let joined_by_user = event.event == "participant_joined"
        && event.participant.as_ref().is_some_and(|p| &p.identity != agent_identity);
    if let (true, Some(room)) = (joined_by_user, event.room.map(|r| r.name))
        && !state.livekit.joined().contains(&room)
    {
        send_agent(state, room).await?;
    }
    Ok(StatusCode::OK)
}

/// Sends our agent into `room` and runs a session there; returns its id.
async fn send_agent(state: Arc<AppState>, room: String) -> Result<String, Refused> {
    let token = tokens(&state)?.for_agent(&room)?;
    if !state.livekit.joined.lock().expect("rooms lock").insert(room.clone()) {
        return Err(Refused::AlreadyIn(room));
    }
    let forget = |state: &AppState, room: &str| {
        state.livekit.joined.lock().expect("rooms lock").remove(room);
    };
    let config = &state.config.transport.livekit;
    let agent = AgentConfig {
        udp_bind: config.udp_bind.clone(),
        opus_bitrate_bps: config.opus_bitrate_bps,
        empty_room_grace: std::time::Duration::from_millis(config.empty_room_grace_ms),
    };
    // The server's shutdown makes the agent leave.
    let joined = match join(&config.url, &token, &agent, &state.shutdown).await {
        Ok(joined) => joined,
        Err(e) => {
            forget(&state, &room);
            tracing::warn!(%room, error = %e, "the agent could not join");
            return Err(Refused::JoinFailed { room, error: e.to_string() });
        }
    };
    let id = LiveId::claim(&state.live, uuid::Uuid::new_v4().to_string()).expect("a fresh UUID is not in use");
    let session_id = id.to_string();
    let ended = joined.ended.clone();
    let (inbound, outbound) = crate::webrtc::session_io(joined.inbound, joined.outbound, ended.clone());
    let tasks = state.tasks.clone();
    tracing::info!(%room, session = %session_id, "agent in room");
    tasks.spawn(async move {
        crate::session::run_over(inbound, outbound, state.clone(), AudioFormat::Binary, id, Default::default()).await;
        ended.cancel();
        let _ = joined.gone.await;
        forget(&state, &room);
    });
    Ok(session_id)
}
