//! The calling side of a WebRTC call: offers an Opus track and a data
//! channel, sends 20 ms PCM frames and text, and collects what comes back.
//! What a client (the CLI, the tests) needs to talk to Duplex over WebRTC
//! without a browser.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Mutex, mpsc};
use webrtc::data_channel::{DataChannel, DataChannelEvent};
use webrtc::media_stream::track_remote::TrackRemote;
use webrtc::peer_connection::{
    PeerConnection, PeerConnectionEventHandler, RTCIceGatheringState, RTCSessionDescription,
};

use crate::peer::{Gathered, Inbound, RtcError, build_peer, inbound_message, rtc_err};
use crate::voice::Voice;

#[derive(Clone)]
struct Handler {
    heard: mpsc::Sender<Inbound>,
    gathered: Gathered,
}

#[async_trait::async_trait]
impl PeerConnectionEventHandler for Handler {
    async fn on_ice_gathering_state_change(&self, state: RTCIceGatheringState) {
        self.gathered.on_state(state);
    }

    async fn on_track(&self, track: Arc<dyn TrackRemote>) {
        tokio::spawn(crate::peer::hear(track, self.heard.clone()));
    }
}

/// A call being placed: [`Caller::offer`], hand the SDP to the answering
/// side, then [`Caller::connect`] with its answer.
pub struct Caller {
    peer: Arc<dyn PeerConnection>,
    voice: Mutex<Voice>,
    channel: Arc<dyn DataChannel>,
    /// The other side's audio (decoded) and data channel text, in arrival order.
    pub heard: mpsc::Receiver<Inbound>,
    open: Mutex<mpsc::Receiver<()>>,
}

impl Caller {
    /// Creates the peer and its offer (ICE gathered on loopback), with a
    /// data channel called `events`.
    pub async fn offer() -> Result<(Self, String), RtcError> {
        Self::offer_with_channel("events").await
    }

    /// As [`Caller::offer`], the data channel called `label`.
    pub async fn offer_with_channel(label: &str) -> Result<(Self, String), RtcError> {
        let gathered = Gathered::default();
        let (heard_tx, heard) = mpsc::channel(1_024);
        let handler = Arc::new(Handler { heard: heard_tx.clone(), gathered: gathered.clone() });
        let peer = build_peer(handler, "127.0.0.1:0", Vec::new()).await?;
        let voice = Voice::add_to(&peer, "mic", 32_000).await?;
        let channel = peer.create_data_channel(label, None).await.map_err(rtc_err)?;
        let (open_tx, open) = mpsc::channel(1);
        let (dc, texts) = (channel.clone(), heard_tx);
        tokio::spawn(async move {
            while let Some(e) = dc.poll().await {
                match e {
                    DataChannelEvent::OnOpen => {
                        let _ = open_tx.try_send(());
                    }
                    DataChannelEvent::OnMessage(m) if texts.send(inbound_message(&m)).await.is_err() => return,
                    _ => {}
                }
            }
        });
        let offer = peer.create_offer(None).await.map_err(rtc_err)?;
        peer.set_local_description(offer).await.map_err(rtc_err)?;
        let sdp = gathered.local_sdp(&peer).await?;
        let caller = Self { peer, voice: Mutex::new(voice), channel, heard, open: Mutex::new(open) };
        Ok((caller, sdp))
    }

    /// Applies the answer and waits (up to 10 s) for the data channel to open.
    pub async fn connect(&self, answer: &str) -> Result<(), RtcError> {
        let answer = RTCSessionDescription::answer(answer.to_string()).map_err(rtc_err)?;
        self.peer.set_remote_description(answer).await.map_err(rtc_err)?;
        let mut open = self.open.lock().await;
        tokio::time::timeout(Duration::from_secs(10), open.recv())
            .await
            .map_err(|_| rtc_err("the data channel did not open within 10 s"))?;
        Ok(())
    }

    /// Sends one 20 ms frame (48 kHz mono) on the audio track; pacing is the caller's.
    pub async fn send_audio(&self, frame: &[i16]) -> Result<(), RtcError> {
        self.voice.lock().await.send(frame).await
    }

    pub async fn send_text(&self, text: &str) -> Result<(), RtcError> {
        self.channel.send_text(text).await.map_err(rtc_err)
    }

    /// A binary message on the data channel.
    pub async fn send_bytes(&self, bytes: &[u8]) -> Result<(), RtcError> {
        self.channel.send(bytes.into()).await.map_err(rtc_err)
    }

    pub async fn hang_up(&self) {
        let _ = self.peer.close().await;
    }
}
