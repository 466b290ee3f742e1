//! The calling side of a WebRTC call: offers an Opus track and a data
//! channel, sends 20 ms PCM frames and text, and collects what comes back.
//! What a client (the CLI, the tests) needs to talk to Duplex over WebRTC
//! without a browser.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rtc::media::Sample;
use rtc::rtp_transceiver::PayloadType;
use tokio::sync::{Mutex, OnceCell, mpsc};
use webrtc::data_channel::{DataChannel, DataChannelEvent};
use webrtc::media_stream::track_local::TrackLocal;
use webrtc::media_stream::track_local::static_sample::TrackLocalStaticSample;
use webrtc::media_stream::track_remote::{TrackRemote, TrackRemoteEvent};
use webrtc::peer_connection::{
    PeerConnection, PeerConnectionEventHandler, RTCIceGatheringState, RTCSessionDescription,
};
use webrtc::rtp_transceiver::RtpSender;

use crate::opus::{OpusDecoder, OpusEncoder};
use crate::peer::{Inbound, RtcError, build_peer, negotiated_payload_type, opus_track, rtc_err};

const SSRC: u32 = 4242;

#[derive(Clone)]
struct Handler {
    heard: mpsc::Sender<Inbound>,
    gathered: mpsc::Sender<()>,
}

#[async_trait::async_trait]
impl PeerConnectionEventHandler for Handler {
    async fn on_ice_gathering_state_change(&self, state: RTCIceGatheringState) {
        if state == RTCIceGatheringState::Complete {
            let _ = self.gathered.try_send(());
        }
    }

    async fn on_track(&self, track: Arc<dyn TrackRemote>) {
        let heard = self.heard.clone();
        tokio::spawn(async move {
            let Ok(mut dec) = OpusDecoder::new() else { return };
            while let Some(event) = track.poll().await {
                if let TrackRemoteEvent::OnRtpPacket(p) = event
                    && let Ok(pcm) = dec.decode(&p.payload)
                    && heard.send(Inbound::Audio(pcm)).await.is_err()
                {
                    return;
                }
            }
        });
    }
}

/// A call being placed: [`Caller::offer`], hand the SDP to the answering
/// side, then [`Caller::connect`] with its answer.
pub struct Caller {
    peer: Arc<dyn PeerConnection>,
    track: Arc<TrackLocalStaticSample>,
    sender: Arc<dyn RtpSender>,
    channel: Arc<dyn DataChannel>,
    encoder: Mutex<OpusEncoder>,
    /// Looked up once the call is negotiated, then reused for every packet.
    payload_type: OnceCell<PayloadType>,
    /// The other side's audio (decoded) and data channel text, in arrival order.
    pub heard: mpsc::Receiver<Inbound>,
    open: Mutex<mpsc::Receiver<()>>,
}

impl Caller {
    /// Creates the peer and its offer (ICE gathered on loopback).
    pub async fn offer() -> Result<(Self, String), RtcError> {
        let (gathered_tx, mut gathered) = mpsc::channel(1);
        let (heard_tx, heard) = mpsc::channel(1_024);
        let handler = Arc::new(Handler { heard: heard_tx.clone(), gathered: gathered_tx });
        let peer = build_peer(handler, "127.0.0.1:0", &[]).await?;
        let track = opus_track(SSRC, "mic")?;
        let sender = peer.add_track(track.clone() as Arc<dyn TrackLocal>).await.map_err(rtc_err)?;
        let channel = peer.create_data_channel("events", None).await.map_err(rtc_err)?;
        let (open_tx, open) = mpsc::channel(1);
        let (dc, texts) = (channel.clone(), heard_tx);
        tokio::spawn(async move {
            while let Some(e) = dc.poll().await {
                match e {
                    DataChannelEvent::OnOpen => {
                        let _ = open_tx.try_send(());
                    }
                    DataChannelEvent::OnMessage(m)
                        if texts.send(Inbound::Text(String::from_utf8_lossy(&m.data).into_owned())).await.is_err() =>
                    {
                        return;
                    }
                    _ => {}
                }
            }
        });
        let offer = peer.create_offer(None).await.map_err(rtc_err)?;
        peer.set_local_description(offer).await.map_err(rtc_err)?;
        let _ = tokio::time::timeout(Duration::from_secs(5), gathered.recv()).await;
        let sdp = peer.local_description().await.ok_or_else(|| rtc_err("no offer"))?.sdp;
        let caller = Self {
            peer,
            track,
            sender,
            channel,
            encoder: Mutex::new(OpusEncoder::new(32_000)?),
            payload_type: OnceCell::new(),
            heard,
            open: Mutex::new(open),
        };
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
        let packet = self.encoder.lock().await.encode(frame)?;
        let payload_type = *self.payload_type.get_or_try_init(|| negotiated_payload_type(&self.sender)).await?;
        let sample = Sample { data: packet.into(), duration: Duration::from_millis(20), ..Sample::new(Instant::now()) };
        self.track.sample_writer(SSRC, payload_type).write_sample(&sample).await.map_err(rtc_err)
    }

    pub async fn send_text(&self, text: &str) -> Result<(), RtcError> {
        self.channel.send_text(text).await.map_err(rtc_err)
    }

    pub async fn hang_up(&self) {
        let _ = self.peer.close().await;
    }
}
