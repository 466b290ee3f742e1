//! Our participant in a LiveKit room.
//!
//! LiveKit gives each participant two peer connections: the *subscriber*
//! (the server offers, we answer; other participants' tracks and the
//! server's data channels arrive on it) and the *publisher* (we offer our
//! voice track and our `_reliable` data channel after the server has
//! accepted an `AddTrack`). Signalling is LiveKit's signal client. Our SDP
//! carries its ICE candidates (gathered before it is sent); the server's
//! trickled candidates are added as they come.
//!
//! One task owns the signalling and both peers ([`run`]); a second sends our
//! audio and messages. Cancelling [`Joined::ended`] leaves the room; leaving
//! for any other reason (the server's `Leave`, the socket closing, a failed
//! connection, the room empty for `empty_room_grace`) cancels it too.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use duplex_rtc::peer::{Gathered, Inbound, Outbound, build_peer, hear, rtc_err};
use duplex_rtc::voice::Voice;
use livekit_protocol as proto;
use livekit_signaling::{SignalClient, SignalEvent, SignalEvents, SignalOptions};
use proto::signal_request::Message as Request;
use proto::signal_response::Message as Response;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use webrtc::data_channel::{DataChannel, DataChannelEvent};
use webrtc::media_stream::track_remote::TrackRemote;
use webrtc::peer_connection::{
    PeerConnection, PeerConnectionEventHandler, RTCIceCandidateInit, RTCIceGatheringState, RTCIceServer,
    RTCPeerConnectionState, RTCSessionDescription,
};

use crate::{LiveKitError, data};

/// Decoded audio and messages waiting for the session (a second of 20 ms
/// frames); full = the session is behind, and audio is dropped.
const INBOUND_QUEUE: usize = 50;
/// Frames and messages toward the room; the session paces audio in real
/// time, so a few suffice.
const OUTBOUND_QUEUE: usize = 16;
/// How long a message waits for our data channel to open.
const CHANNEL_WAIT: Duration = Duration::from_secs(10);
/// The signal protocol we speak: 16 keeps the data channels in-band
/// (`_reliable` created by each side), which our WebRTC stack negotiates.
const PROTOCOL_VERSION: u32 = 16;
/// Our voice track's id (its `cid` in `AddTrack`) and name.
const VOICE_TRACK: &str = "duplex-voice";

#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub udp_bind: String,
    pub opus_bitrate_bps: i32,
    /// Leave a room that has had no one else in it this long.
    pub empty_room_grace: Duration,
}

/// The agent in a room. Hear through `inbound`, speak through `outbound`;
/// cancel `ended` to leave.
pub struct Joined {
    pub room: String,
    pub inbound: mpsc::Receiver<Inbound>,
    pub outbound: mpsc::Sender<Outbound>,
    /// Cancelled when the agent has left or is leaving, for whatever reason.
    pub ended: CancellationToken,
    /// Finishes once the agent has said goodbye and closed its connections.
    pub gone: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for Joined {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Joined").field("room", &self.room).finish_non_exhaustive()
    }
}

/// Joins the room `token` grants, on the server at `url`. Cancelling `stop`
/// (e.g. the server shutting down) makes the agent leave.
pub async fn join(
    url: &str,
    token: &str,
    config: &AgentConfig,
    stop: &CancellationToken,
) -> Result<Joined, LiveKitError> {
    let mut options = SignalOptions::default();
    options.protocol_version = PROTOCOL_VERSION;
    options.region_failover = false;
    options.auto_subscribe = true;
    let (signal, join, events) = SignalClient::connect(url, token, options, None)
        .await
        .map_err(|e| LiveKitError::Signal(format!("joining {url}: {e}")))?;
    let room = join.room.as_ref().map(|r| r.name.clone()).unwrap_or_default();
    let me = join.participant.as_ref().map(|p| p.sid.clone()).unwrap_or_default();
    tracing::info!(%room, server = %join.server_version, "joined LiveKit room");
    let ice_servers: Vec<RTCIceServer> = join
        .ice_servers
        .iter()
        .map(|s| RTCIceServer { urls: s.urls.clone(), username: s.username.clone(), credential: s.credential.clone() })
        .collect();

    let ended = stop.child_token();
    let (inbound_tx, inbound) = mpsc::channel(INBOUND_QUEUE);
    let sub_gathered = Gathered::default();
    let subscriber = build_peer(
        Arc::new(PeerEvents {
            gathered: sub_gathered.clone(),
            ended: ended.clone(),
            inbound: Some(inbound_tx),
            hearing: Arc::default(),
        }),
        &config.udp_bind,
        ice_servers.clone(),
    )
    .await?;
    let pub_gathered = Gathered::default();
    let publisher = build_peer(
        Arc::new(PeerEvents {
            gathered: pub_gathered.clone(),
            ended: ended.clone(),
            inbound: None,
            hearing: Arc::default(),
        }),
        &config.udp_bind,
        ice_servers,
    )
    .await?;
    let voice = Voice::add_to(&publisher, VOICE_TRACK, config.opus_bitrate_bps).await?;
    let reliable = publisher.create_data_channel("_reliable", None).await.map_err(rtc_err)?;
    let (open_tx, open) = watch::channel(false);
    tokio::spawn(watch_open(reliable.clone(), open_tx));

    signal
        .send(Request::AddTrack(proto::AddTrackRequest {
            cid: VOICE_TRACK.into(),
            name: VOICE_TRACK.into(),
            r#type: proto::TrackType::Audio as i32,
            source: proto::TrackSource::Microphone as i32,
            ..Default::default()
        }))
        .await;

    let (outbound, outbound_rx) = mpsc::channel(OUTBOUND_QUEUE);
    tokio::spawn(speak(outbound_rx, voice, reliable, open, ended.clone()));
    let mut others = Others::new(me, config.empty_room_grace);
    others.update(&join.other_participants);
    let link = Link { signal, subscriber, publisher, sub_gathered, pub_gathered };
    let gone = tokio::spawn(run(link, events, others, ended.clone()));
    Ok(Joined { room, inbound, outbound, ended, gone })
}

/// The signal client and the two peers, owned by [`run`].
struct Link {
    signal: SignalClient,
    subscriber: Arc<dyn PeerConnection>,
    publisher: Arc<dyn PeerConnection>,
    sub_gathered: Gathered,
    pub_gathered: Gathered,
}

/// Who else is in the room (not us, not other agents), and since when it
/// has been empty.
struct Others {
    me: String,
    present: HashSet<String>,
    grace: Duration,
    empty_since: Option<tokio::time::Instant>,
}

impl Others {
    fn new(me: String, grace: Duration) -> Self {
        Self { me, present: HashSet::new(), grace, empty_since: Some(tokio::time::Instant::now()) }
    }

    fn update(&mut self, participants: &[proto::ParticipantInfo]) {
        use proto::participant_info::{Kind, State};
        for p in participants.iter().filter(|p| p.sid != self.me && p.kind != Kind::Agent as i32) {
            if p.state == State::Disconnected as i32 {
                self.present.remove(&p.sid);
            } else {
                self.present.insert(p.sid.clone());
            }
        }
        self.empty_since = match (self.present.is_empty(), self.empty_since) {
            (true, None) => Some(tokio::time::Instant::now()),
            (true, since) => since,
            (false, _) => None,
        };
    }

    /// When to leave, if the room stays as it is.
    fn leave_at(&self) -> Option<tokio::time::Instant> {
        self.empty_since.map(|since| since + self.grace)
    }
}

/// Signalling until the agent leaves; then says goodbye and closes everything.
/// (The signal client keeps the connection alive with pings itself.)
async fn run(mut link: Link, mut events: SignalEvents, mut others: Others, ended: CancellationToken) {
    let why = loop {
        let leave_at = others.leave_at();
        tokio::select! {
            _ = ended.cancelled() => break "the session ended",
            _ = sleep_until(leave_at) => break "the room is empty",
            event = events.recv() => match event {
                None => break "the signal connection closed",
                Some(SignalEvent::Close(reason)) => {
                    tracing::info!(%reason, "LiveKit signal connection closed");
                    break "the signal connection closed";
                }
                Some(SignalEvent::Message(message)) => {
                    if let Response::Leave(_) = *message {
                        break "the server asked us to leave";
                    }
                    if let Err(e) = on_message(&mut link, &mut others, *message).await {
                        tracing::warn!(error = %e, "LiveKit signalling");
                    }
                }
            },
        }
    };
    tracing::info!(reason = why, "leaving LiveKit room");
    ended.cancel();
    link.signal
        .send(Request::Leave(proto::LeaveRequest {
            can_reconnect: false,
            reason: proto::DisconnectReason::ClientInitiated as i32,
            ..Default::default()
        }))
        .await;
    link.signal.close().await;
    let _ = link.publisher.close().await;
    let _ = link.subscriber.close().await;
}

async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

async fn on_message(link: &mut Link, others: &mut Others, message: Response) -> Result<(), LiveKitError> {
    match message {
        // The server (re)negotiates what we receive.
        Response::Offer(offer) => {
            let peer = &link.subscriber;
            peer.set_remote_description(RTCSessionDescription::offer(offer.sdp).map_err(rtc_err)?)
                .await
                .map_err(rtc_err)?;
            let answer = peer.create_answer(None).await.map_err(rtc_err)?;
            peer.set_local_description(answer).await.map_err(rtc_err)?;
            let sdp = link.sub_gathered.local_sdp(peer).await?;
            link.signal
                .send(Request::Answer(proto::SessionDescription {
                    r#type: "answer".into(),
                    sdp,
                    id: offer.id,
                    ..Default::default()
                }))
                .await;
        }
        // The server accepted our track: offer it.
        Response::TrackPublished(published) if published.cid == VOICE_TRACK => {
            let peer = &link.publisher;
            let offer = peer.create_offer(None).await.map_err(rtc_err)?;
            peer.set_local_description(offer).await.map_err(rtc_err)?;
            let sdp = link.pub_gathered.local_sdp(peer).await?;
            link.signal
                .send(Request::Offer(proto::SessionDescription { r#type: "offer".into(), sdp, ..Default::default() }))
                .await;
        }
        Response::Answer(answer) => {
            let answer = RTCSessionDescription::answer(answer.sdp).map_err(rtc_err)?;
            link.publisher.set_remote_description(answer).await.map_err(rtc_err)?;
        }
        Response::Trickle(trickle) => {
            let candidate: RTCIceCandidateInit = serde_json::from_str(&trickle.candidate_init)
                .map_err(|e| LiveKitError::Protocol(format!("trickle candidate: {e}")))?;
            let peer = if trickle.target == proto::SignalTarget::Publisher as i32 {
                &link.publisher
            } else {
                &link.subscriber
            };
            peer.add_ice_candidate(candidate).await.map_err(rtc_err)?;
        }
        Response::Update(update) => others.update(&update.participants),
        _ => {}
    }
    Ok(())
}

/// Sends our audio on the voice track and our messages on `_reliable`.
async fn speak(
    mut outbound: mpsc::Receiver<Outbound>,
    mut voice: Voice,
    reliable: Arc<dyn DataChannel>,
    mut open: watch::Receiver<bool>,
    ended: CancellationToken,
) {
    loop {
        let item = tokio::select! {
            _ = ended.cancelled() => return,
            item = outbound.recv() => match item { Some(item) => item, None => return },
        };
        match item {
            Outbound::Audio(frame) => {
                // Before the publisher is negotiated a frame has nowhere to go.
                if let Err(e) = voice.send(&frame).await {
                    tracing::debug!(error = %e, "audio to the room dropped");
                }
            }
            Outbound::Text(text) => {
                if tokio::time::timeout(CHANNEL_WAIT, open.wait_for(|o| *o)).await.is_err() {
                    tracing::debug!("data channel not open: a message to the room was dropped");
                    continue;
                }
                if let Err(e) = reliable.send(data::encode(&text).as_slice().into()).await {
                    tracing::debug!(error = %e, "message to the room dropped");
                }
            }
        }
    }
}

async fn watch_open(channel: Arc<dyn DataChannel>, open: watch::Sender<bool>) {
    while let Some(event) = channel.poll().await {
        match event {
            DataChannelEvent::OnOpen => {
                let _ = open.send(true);
            }
            DataChannelEvent::OnClose => {
                let _ = open.send(false);
                return;
            }
            _ => {}
        }
    }
}

/// Events of one of our two peers.
struct PeerEvents {
    gathered: Gathered,
    ended: CancellationToken,
    /// The subscriber's: where what we hear goes.
    inbound: Option<mpsc::Sender<Inbound>>,
    /// One audio track is heard at a time (one user per room).
    hearing: Arc<AtomicBool>,
}

#[async_trait::async_trait]
impl PeerConnectionEventHandler for PeerEvents {
    async fn on_ice_gathering_state_change(&self, state: RTCIceGatheringState) {
        self.gathered.on_state(state);
    }

    async fn on_connection_state_change(&self, state: RTCPeerConnectionState) {
        tracing::debug!(?state, "LiveKit peer connection");
        if state == RTCPeerConnectionState::Failed {
            self.ended.cancel();
        }
    }

    async fn on_track(&self, track: Arc<dyn TrackRemote>) {
        let Some(inbound) = self.inbound.clone() else { return };
        if track.kind().await != rtc::rtp_transceiver::rtp_sender::RtpCodecKind::Audio {
            return;
        }
        if self.hearing.swap(true, Ordering::SeqCst) {
            tracing::info!("a second audio track in the room is not heard (one user per room)");
            return;
        }
        let hearing = self.hearing.clone();
        tokio::spawn(async move {
            hear(track, inbound).await;
            hearing.store(false, Ordering::SeqCst);
        });
    }

    /// The server's data channels: user packets on our topic are messages.
    async fn on_data_channel(&self, channel: Arc<dyn DataChannel>) {
        let Some(inbound) = self.inbound.clone() else { return };
        tokio::spawn(async move {
            while let Some(event) = channel.poll().await {
                if let DataChannelEvent::OnMessage(msg) = event
                    && let Some(text) = data::decode(&msg.data)
                    && inbound.send(Inbound::Text(text)).await.is_err()
                {
                    return;
                }
            }
        });
    }
}
