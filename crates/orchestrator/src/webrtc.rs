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

#[derive(Debug, Default, Deserialize)]
pub struct OfferParams {
    #[serde(default)]
    token: Option<String>,
}

pub async fn offer(
    State(state): State<Arc<AppState>>,
    axum::extract::Query(params): axum::extract::Query<OfferParams>,
    headers: axum::http::HeaderMap,
    Json(offer): Json<Offer>,
) -> Response {
    let who = match state.config.access.check(&headers, params.token.as_deref()) {
        Ok(who) => who,
        Err(denied) => return denied.into_response(),
    };
    let key_slot = match crate::server::claim_for_credential(&state, who) {
        Ok(slot) => slot,
        Err(refused) => return refused.into_response(),
    };
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
    let (inbound, outbound) = session_io(inbound, outbound, ended);
    let tasks = state.tasks.clone();
    tasks.spawn(async move {
        let watch = crate::session::Watch {
            keepalive: None,
            client_rates: key_slot.as_ref().map(crate::server::Held::rate).into_iter().collect(),
        };
        crate::session::run_over(inbound, outbound, state, AudioFormat::Binary, id, watch).await;
        hangup.close().await;
        drop(key_slot);
    });
    Json(Answer { sdp: answer, session_id }).into_response()
}

/// What a session reads from a media connection: client messages.
pub(crate) type MediaInbound = std::pin::Pin<Box<dyn futures_util::Stream<Item = Result<Message, axum::Error>> + Send>>;
/// What a session writes to a media connection: frames and events.
pub(crate) type MediaOutbound = std::pin::Pin<Box<dyn futures_util::Sink<Message, Error = ()> + Send>>;

/// The client side of a session over a media connection: decoded microphone
/// PCM (20 ms at 48 kHz) becomes the binary frames a WebSocket client sends,
/// text messages become client messages; the session's audio frames and
/// events go back out. The stream ends when `ended` is cancelled (the
/// connection failed or was closed), as a closed socket ends a session.
pub(crate) fn session_io(
    inbound: tokio::sync::mpsc::Receiver<Inbound>,
    outbound: tokio::sync::mpsc::Sender<Outbound>,
    ended: tokio_util::sync::CancellationToken,
) -> (MediaInbound, MediaOutbound) {
    let mut sequence = 0u64;
    let inbound = ReceiverStream::new(inbound).filter_map(move |item| {
        let msg = match item {
            Inbound::Audio(pcm) => {
                sequence += 1;
                Some(Ok::<_, axum::Error>(Message::Binary(encode_mic_audio(48_000, sequence, &pcm).into())))
            }
            Inbound::Text(text) => Some(Ok(Message::Text(text.into()))),
            // Binary data messages mean nothing to a session.
            Inbound::Bytes(_) => None,
        };
        std::future::ready(msg)
    });
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
    (inbound, outbound)
}
