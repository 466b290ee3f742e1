//! The WebRTC transport: `POST /rtc/offer` with `{"sdp": "<offer>"}` answers
//! a call (`duplex_rtc::peer`) and runs an ordinary session over it —
//! decoded microphone audio goes in as binary microphone frames, data channel
//! text as client messages; the session's audio frames go out on the call's
//! Opus track and its events on the data channel. Barge-in drops queued
//! audio in the session as for a WebSocket: nothing more reaches the track.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::extract::ws::Message;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use duplex_rtc::peer::{CallConfig, Inbound, Outbound};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use tokio_stream::wrappers::ReceiverStream;

use crate::protocol::{AudioFormat, encode_mic_audio, parse_binary_audio};
use crate::server::{AppState, LiveId};

#[derive(Debug, Deserialize)]
pub struct Offer {
    pub sdp: String,
}

#[derive(Debug, Serialize)]
pub struct Answer {
    pub sdp: String,
    pub session_id: String,
}

pub async fn offer(State(state): State<Arc<AppState>>, Json(offer): Json<Offer>) -> Response {
    let rtc = &state.config.transport.webrtc;
    if !rtc.enabled {
        return (StatusCode::NOT_FOUND, "WebRTC is off on this server (transport.webrtc.enabled)").into_response();
    }
    let config = CallConfig {
        udp_bind: rtc.udp_bind.clone(),
        ice_servers: rtc.ice_servers.clone(),
        opus_bitrate_bps: rtc.opus_bitrate_bps,
    };
    let call = match duplex_rtc::peer::answer(&offer.sdp, &config).await {
        Ok(call) => call,
        Err(e) => return (StatusCode::BAD_REQUEST, format!("the offer could not be answered: {e}")).into_response(),
    };
    let Some(id) = LiveId::claim(&state.live, uuid::Uuid::new_v4().to_string()) else {
        return (StatusCode::CONFLICT, "session id in use").into_response();
    };
    let (answer, inbound, outbound, ended, hangup) = call.into_parts();
    let session_id = id.to_string();
    // Microphone PCM (20 ms at 48 kHz) as the binary frames a WebSocket client sends.
    let mut sequence = 0u64;
    let inbound = ReceiverStream::new(inbound).map(move |item| {
        Ok(match item {
            Inbound::Audio(pcm) => {
                sequence += 1;
                Message::Binary(encode_mic_audio(48_000, sequence, &pcm).into())
            }
            Inbound::Text(text) => Message::Text(text.into()),
        })
    });
    // A failed or closed connection ends the session as a closed socket does.
    let inbound = Box::pin(inbound.take_until(ended.cancelled_owned()));
    let outbound = Box::pin(futures_util::sink::unfold(outbound, |tx, msg: Message| async move {
        let item = match msg {
            Message::Binary(frame) => {
                parse_binary_audio(&frame).map(|(_, pcm)| Outbound::Audio(duplex_audio::bytes_to_samples(pcm)))
            }
            Message::Text(text) => Some(Outbound::Text(text.to_string())),
            _ => None,
        };
        if let Some(item) = item {
            tx.send(item).await.map_err(|_| ())?;
        }
        Ok::<_, ()>(tx)
    }));
    let tasks = state.tasks.clone();
    tasks.spawn(async move {
        crate::session::run_over(inbound, outbound, state, AudioFormat::Binary, id).await;
        hangup.close().await;
    });
    Json(Answer { sdp: answer, session_id }).into_response()
}
