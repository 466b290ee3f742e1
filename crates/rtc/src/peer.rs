//! One WebRTC call, answered: the remote side's Opus audio track comes in
//! decoded to 48 kHz PCM, its data channel's text messages come in as text;
//! 20 ms PCM frames going out are Opus-encoded onto our audio track, text
//! goes out on the data channel. Signalling is one offer and one answer
//! (ICE gathered before answering, no trickle).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Mutex, mpsc};
use tokio_util::sync::CancellationToken;
use webrtc::data_channel::{DataChannel, DataChannelEvent};
use webrtc::media_stream::track_remote::{TrackRemote, TrackRemoteEvent};
use webrtc::peer_connection::{
    MediaEngine, PeerConnection, PeerConnectionBuilder, PeerConnectionEventHandler, RTCConfigurationBuilder,
    RTCIceGatheringState, RTCIceServer, RTCPeerConnectionState, RTCSessionDescription, Registry,
    register_default_interceptors,
};

use crate::opus::OpusDecoder;
use crate::voice::Voice;

/// Decoded audio and messages waiting for the session (a second of 20 ms
/// frames); full = the session is stuck, and audio is dropped rather than queued.
const INBOUND_QUEUE: usize = 50;
/// Frames and messages toward the network; the session paces audio in real
/// time, so a few suffice.
const OUTBOUND_QUEUE: usize = 16;
/// How long messages wait for the caller's data channel to exist.
const CHANNEL_WAIT: Duration = Duration::from_secs(10);
/// How long a local description waits for its ICE candidates.
const GATHER_WAIT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum RtcError {
    #[error("webrtc: {0}")]
    WebRtc(String),
    #[error(transparent)]
    Opus(#[from] crate::opus::OpusError),
}

pub fn rtc_err(e: impl std::fmt::Display) -> RtcError {
    RtcError::WebRtc(e.to_string())
}

#[derive(Debug, Clone)]
pub struct CallConfig {
    /// Where the peer's UDP socket binds (`127.0.0.1:0` on one machine, `0.0.0.0:0` on a LAN).
    pub udp_bind: String,
    /// `stun:`/`turn:` URLs; empty = host candidates only.
    pub ice_servers: Vec<String>,
    pub opus_bitrate_bps: i32,
}

impl Default for CallConfig {
    fn default() -> Self {
        Self { udp_bind: "127.0.0.1:0".into(), ice_servers: Vec::new(), opus_bitrate_bps: 32_000 }
    }
}

/// What the remote side sent.
#[derive(Debug, Clone, PartialEq)]
pub enum Inbound {
    /// Decoded microphone audio, 48 kHz mono.
    Audio(Vec<i16>),
    Text(String),
    /// A binary data channel message.
    Bytes(Vec<u8>),
}

/// What to send to the remote side.
#[derive(Debug, Clone, PartialEq)]
pub enum Outbound {
    /// One 20 ms frame, 48 kHz mono.
    Audio(Vec<i16>),
    Text(String),
}

/// An answered call. Dropping it hangs up.
pub struct Call {
    /// The SDP answer to give the caller.
    pub answer: String,
    pub inbound: mpsc::Receiver<Inbound>,
    pub outbound: mpsc::Sender<Outbound>,
    /// Cancelled when the connection fails or is closed (by either side).
    pub ended: CancellationToken,
    peer: Arc<dyn PeerConnection>,
}

impl std::fmt::Debug for Call {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Call").finish_non_exhaustive()
    }
}

impl Call {
    pub async fn close(&self) {
        let _ = self.peer.close().await;
    }

    /// The answer, the two directions, and what hangs up.
    pub fn into_parts(self) -> (String, mpsc::Receiver<Inbound>, mpsc::Sender<Outbound>, CancellationToken, HangUp) {
        (self.answer, self.inbound, self.outbound, self.ended, HangUp(self.peer))
    }
}

/// Ends a call whose parts were taken apart.
pub struct HangUp(Arc<dyn PeerConnection>);

impl HangUp {
    pub async fn close(&self) {
        let _ = self.0.close().await;
    }
}

/// Whether a peer has gathered its ICE candidates: told by its event
/// handler, asked before an SDP is handed out (our SDP carries the
/// candidates; no trickle). Renegotiations find them gathered already.
#[derive(Clone)]
pub struct Gathered(Arc<tokio::sync::watch::Sender<bool>>);

impl Default for Gathered {
    fn default() -> Self {
        Self(Arc::new(tokio::sync::watch::channel(false).0))
    }
}

impl Gathered {
    /// For `on_ice_gathering_state_change`.
    pub fn on_state(&self, state: RTCIceGatheringState) {
        if state == RTCIceGatheringState::Complete {
            self.0.send_replace(true);
        }
    }

    /// `peer`'s local description once its candidates are gathered (at most 5 s).
    pub async fn local_sdp(&self, peer: &Arc<dyn PeerConnection>) -> Result<String, RtcError> {
        let mut done = self.0.subscribe();
        let _ = tokio::time::timeout(GATHER_WAIT, done.wait_for(|d| *d)).await;
        Ok(peer.local_description().await.ok_or_else(|| rtc_err("no local description"))?.sdp)
    }
}

/// A data channel message as what came in: text, or bytes.
pub fn inbound_message(msg: &webrtc::data_channel::RTCDataChannelMessage) -> Inbound {
    if msg.is_string {
        Inbound::Text(String::from_utf8_lossy(&msg.data).into_owned())
    } else {
        Inbound::Bytes(msg.data.to_vec())
    }
}

#[derive(Clone)]
struct Handler {
    inbound: mpsc::Sender<Inbound>,
    gathered: Gathered,
    channel: Arc<Mutex<Option<Arc<dyn DataChannel>>>>,
    channel_ready: Arc<tokio::sync::Notify>,
    /// Cancelled when the connection fails or closes.
    ended: CancellationToken,
}

#[async_trait::async_trait]
impl PeerConnectionEventHandler for Handler {
    async fn on_ice_gathering_state_change(&self, state: RTCIceGatheringState) {
        self.gathered.on_state(state);
    }

    async fn on_connection_state_change(&self, state: RTCPeerConnectionState) {
        tracing::debug!(?state, "webrtc connection");
        if matches!(state, RTCPeerConnectionState::Failed | RTCPeerConnectionState::Closed) {
            self.ended.cancel();
        }
    }

    async fn on_track(&self, track: Arc<dyn TrackRemote>) {
        tokio::spawn(hear(track, self.inbound.clone()));
    }

    async fn on_data_channel(&self, channel: Arc<dyn DataChannel>) {
        *self.channel.lock().await = Some(channel.clone());
        self.channel_ready.notify_waiters();
        let (inbound, ended) = (self.inbound.clone(), self.ended.clone());
        tokio::spawn(async move {
            while let Some(event) = channel.poll().await {
                match event {
                    DataChannelEvent::OnMessage(msg) if inbound.send(inbound_message(&msg)).await.is_err() => return,
                    // The caller closed its channel: it hung up.
                    DataChannelEvent::OnClose => break,
                    _ => {}
                }
            }
            ended.cancel();
        });
    }
}

/// Answers `offer` (SDP): returns once ICE candidates are gathered.
pub async fn answer(offer: &str, config: &CallConfig) -> Result<Call, RtcError> {
    let (inbound_tx, inbound) = mpsc::channel(INBOUND_QUEUE);
    let gathered = Gathered::default();
    let channel: Arc<Mutex<Option<Arc<dyn DataChannel>>>> = Arc::default();
    let channel_ready = Arc::new(tokio::sync::Notify::new());
    let ended = CancellationToken::new();
    let handler = Arc::new(Handler {
        inbound: inbound_tx,
        gathered: gathered.clone(),
        channel: channel.clone(),
        channel_ready: channel_ready.clone(),
        ended: ended.clone(),
    });
    let peer = build_peer(handler, &config.udp_bind, ice_servers(&config.ice_servers)).await?;
    let mut voice = Voice::add_to(&peer, "duplex-voice", config.opus_bitrate_bps).await?;
    peer.set_remote_description(RTCSessionDescription::offer(offer.to_string()).map_err(rtc_err)?)
        .await
        .map_err(rtc_err)?;
    let answer = peer.create_answer(None).await.map_err(rtc_err)?;
    peer.set_local_description(answer).await.map_err(rtc_err)?;
    let answer = gathered.local_sdp(&peer).await?;

    let (outbound, mut outbound_rx) = mpsc::channel::<Outbound>(OUTBOUND_QUEUE);
    tokio::spawn(async move {
        while let Some(item) = outbound_rx.recv().await {
            match item {
                Outbound::Audio(frame) => {
                    if let Err(e) = voice.send(&frame).await {
                        tracing::debug!(error = %e, "writing audio to the call");
                    }
                }
                Outbound::Text(text) => {
                    // Messages sent before the caller's channel is up wait for it (10 s at most).
                    let deadline = tokio::time::Instant::now() + CHANNEL_WAIT;
                    loop {
                        let ready = channel_ready.notified();
                        if let Some(dc) = channel.lock().await.clone() {
                            let _ = dc.send_text(&text).await;
                            break;
                        }
                        if tokio::time::timeout_at(deadline, ready).await.is_err() {
                            tracing::debug!("no data channel: a message to the caller was dropped");
                            break;
                        }
                    }
                }
            }
        }
    });
    Ok(Call { answer, inbound, outbound, ended, peer })
}

/// Decodes a remote Opus track into `inbound` until the track or the
/// receiver goes away. A full `inbound` means the session is behind: that
/// frame is dropped rather than queued.
pub async fn hear(track: Arc<dyn TrackRemote>, inbound: mpsc::Sender<Inbound>) {
    let Ok(mut decoder) = OpusDecoder::new() else { return };
    while let Some(event) = track.poll().await {
        if let TrackRemoteEvent::OnRtpPacket(packet) = event {
            match decoder.decode(&packet.payload) {
                Ok(pcm) => {
                    if inbound.try_send(Inbound::Audio(pcm)).is_err() && inbound.is_closed() {
                        return;
                    }
                }
                Err(e) => tracing::debug!(error = %e, "undecodable Opus packet"),
            }
        }
    }
}

/// `stun:`/`turn:` URLs without credentials as ICE servers.
pub fn ice_servers(urls: &[String]) -> Vec<RTCIceServer> {
    if urls.is_empty() { Vec::new() } else { vec![RTCIceServer { urls: urls.to_vec(), ..Default::default() }] }
}

/// A peer with the default codecs and interceptors, its UDP socket on `udp_bind`.
pub async fn build_peer(
    handler: Arc<dyn PeerConnectionEventHandler>,
    udp_bind: &str,
    ice_servers: Vec<RTCIceServer>,
) -> Result<Arc<dyn PeerConnection>, RtcError> {
    let mut media = MediaEngine::default();
    media.register_default_codecs().map_err(rtc_err)?;
    let registry = register_default_interceptors(Registry::new(), &mut media).map_err(rtc_err)?;
    let peer = PeerConnectionBuilder::new()
        .with_configuration(RTCConfigurationBuilder::new().with_ice_servers(ice_servers).build())
        .with_media_engine(media)
        .with_interceptor_registry(registry)
        .with_handler(handler)
        .with_udp_addrs(vec![udp_bind.to_string()])
        .build()
        .await
        .map_err(rtc_err)?;
    Ok(Arc::new(peer))
}
