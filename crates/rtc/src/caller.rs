//! The calling side of a WebRTC call: offers an Opus track and a data
//! channel, sends 20 ms PCM frames and text, and collects what comes back.
//! What a client (the CLI, the tests) needs to talk to Duplex over WebRTC
//! without a browser.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rtc::media::Sample;
use rtc::media_stream::MediaStreamTrack;
use rtc::peer_connection::configuration::media_engine::MIME_TYPE_OPUS;
use rtc::rtp_transceiver::rtp_sender::{RTCRtpCodec, RTCRtpCodingParameters, RTCRtpEncodingParameters, RtpCodecKind};
use tokio::sync::{Mutex, mpsc};
use webrtc::data_channel::{DataChannel, DataChannelEvent};
use webrtc::media_stream::track_local::TrackLocal;
use webrtc::media_stream::track_local::static_sample::TrackLocalStaticSample;
use webrtc::media_stream::track_remote::{TrackRemote, TrackRemoteEvent};
use webrtc::peer_connection::{
    MediaEngine, PeerConnection, PeerConnectionBuilder, PeerConnectionEventHandler, RTCConfigurationBuilder,
    RTCIceGatheringState, RTCSessionDescription, Registry, register_default_interceptors,
};
use webrtc::rtp_transceiver::RtpSender;

use crate::opus::{OpusDecoder, OpusEncoder};
use crate::peer::{Inbound, RtcError, rtc_err};

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
    /// The other side's audio (decoded) and data channel text, in arrival order.
    pub heard: mpsc::Receiver<Inbound>,
    heard_tx: mpsc::Sender<Inbound>,
    open: Mutex<mpsc::Receiver<()>>,
}

impl Caller {
    /// Creates the peer and its offer (ICE gathered on loopback).
    pub async fn offer() -> Result<(Self, String), RtcError> {
        let mut media = MediaEngine::default();
        media.register_default_codecs().map_err(rtc_err)?;
        let registry = register_default_interceptors(Registry::new(), &mut media).map_err(rtc_err)?;
        let (gathered_tx, mut gathered) = mpsc::channel(1);
        let (heard_tx, heard) = mpsc::channel(1_024);
        let peer: Arc<dyn PeerConnection> = Arc::new(
            PeerConnectionBuilder::new()
                .with_configuration(RTCConfigurationBuilder::new().build())
                .with_media_engine(media)
                .with_interceptor_registry(registry)
                .with_handler(Arc::new(Handler { heard: heard_tx.clone(), gathered: gathered_tx }))
                .with_udp_addrs(vec!["127.0.0.1:0".to_string()])
                .build()
                .await
                .map_err(rtc_err)?,
        );
        let track = Arc::new(
            TrackLocalStaticSample::new(
                Instant::now(),
                MediaStreamTrack::new(
                    "caller".into(),
                    "mic".into(),
                    "mic".into(),
                    RtpCodecKind::Audio,
                    vec![RTCRtpEncodingParameters {
                        rtp_coding_parameters: RTCRtpCodingParameters { ssrc: Some(SSRC), ..Default::default() },
                        codec: RTCRtpCodec {
                            mime_type: MIME_TYPE_OPUS.to_owned(),
                            clock_rate: 48_000,
                            channels: 2,
                            sdp_fmtp_line: "minptime=10;useinbandfec=1".to_owned(),
                            rtcp_feedback: vec![],
                        },
                        ..Default::default()
                    }],
                ),
            )
            .map_err(rtc_err)?,
        );
        let sender = peer.add_track(track.clone() as Arc<dyn TrackLocal>).await.map_err(rtc_err)?;
        let channel = peer.create_data_channel("events", None).await.map_err(rtc_err)?;
        let (open_tx, open) = mpsc::channel(1);
        let (dc, texts) = (channel.clone(), heard_tx.clone());
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
            heard,
            heard_tx,
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
        let payload_type = self
            .sender
            .get_parameters()
            .await
            .map_err(rtc_err)?
            .rtp_parameters
            .codecs
            .first()
            .map(|c| c.payload_type)
            .ok_or_else(|| rtc_err("no negotiated codec"))?;
        let sample = Sample { data: packet.into(), duration: Duration::from_millis(20), ..Sample::new(Instant::now()) };
        self.track.sample_writer(SSRC, payload_type).write_sample(&sample).await.map_err(rtc_err)
    }

    pub async fn send_text(&self, text: &str) -> Result<(), RtcError> {
        self.channel.send_text(text).await.map_err(rtc_err)
    }

    pub async fn hang_up(&self) {
        drop(self.heard_tx.clone());
        let _ = self.peer.close().await;
    }
}
