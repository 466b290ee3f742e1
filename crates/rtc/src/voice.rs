//! Our outgoing voice on a peer connection: an Opus track added to the peer,
//! 20 ms PCM frames in, one RTP packet each out. Every transport that speaks
//! (the answered call, the caller, the LiveKit participant) sends through one.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rtc::media::Sample;
use rtc::media_stream::MediaStreamTrack;
use rtc::peer_connection::configuration::media_engine::MIME_TYPE_OPUS;
use rtc::rtp_transceiver::PayloadType;
use rtc::rtp_transceiver::rtp_sender::{RTCRtpCodec, RTCRtpCodingParameters, RTCRtpEncodingParameters, RtpCodecKind};
use webrtc::media_stream::track_local::TrackLocal;
use webrtc::media_stream::track_local::static_sample::TrackLocalStaticSample;
use webrtc::peer_connection::PeerConnection;
use webrtc::rtp_transceiver::RtpSender;

use crate::opus::OpusEncoder;
use crate::peer::{RtcError, rtc_err};

const FRAME: Duration = Duration::from_millis(20);

/// An Opus track on a peer and the encoder that feeds it.
pub struct Voice {
    track: Arc<TrackLocalStaticSample>,
    track_id: String,
    ssrc: u32,
    sender: Arc<dyn RtpSender>,
    encoder: OpusEncoder,
    /// Known once the call is negotiated; looked up at the first frame.
    payload_type: Option<PayloadType>,
}

impl std::fmt::Debug for Voice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Voice").field("track_id", &self.track_id).field("ssrc", &self.ssrc).finish()
    }
}

impl Voice {
    /// Adds an Opus track called `track_id` (48 kHz, in-band FEC) to `peer`.
    pub async fn add_to(peer: &Arc<dyn PeerConnection>, track_id: &str, bitrate_bps: i32) -> Result<Self, RtcError> {
        let ssrc = random_ssrc();
        let track = MediaStreamTrack::new(
            "duplex".to_string(),
            track_id.to_string(),
            track_id.to_string(),
            RtpCodecKind::Audio,
            vec![RTCRtpEncodingParameters {
                rtp_coding_parameters: RTCRtpCodingParameters { ssrc: Some(ssrc), ..Default::default() },
                codec: RTCRtpCodec {
                    mime_type: MIME_TYPE_OPUS.to_owned(),
                    clock_rate: 48_000,
                    channels: 2,
                    sdp_fmtp_line: "minptime=10;useinbandfec=1".to_owned(),
                    rtcp_feedback: vec![],
                },
                ..Default::default()
            }],
        );
        let track = Arc::new(TrackLocalStaticSample::new(Instant::now(), track).map_err(rtc_err)?);
        let sender = peer.add_track(track.clone() as Arc<dyn TrackLocal>).await.map_err(rtc_err)?;
        Ok(Self {
            track,
            track_id: track_id.to_string(),
            ssrc,
            sender,
            encoder: OpusEncoder::new(bitrate_bps)?,
            payload_type: None,
        })
    }

    /// The track's id as it appears in the SDP (`msid`).
    pub fn track_id(&self) -> &str {
        &self.track_id
    }

    /// Encodes and sends one 20 ms frame (48 kHz mono); pacing is the caller's.
    pub async fn send(&mut self, frame: &[i16]) -> Result<(), RtcError> {
        let packet = self.encoder.encode(frame)?;
        let payload_type = match self.payload_type {
            Some(pt) => pt,
            None => {
                let pt = negotiated_payload_type(&self.sender).await?;
                *self.payload_type.insert(pt)
            }
        };
        let sample = Sample { data: packet.into(), duration: FRAME, ..Sample::new(Instant::now()) };
        self.track.sample_writer(self.ssrc, payload_type).write_sample(&sample).await.map_err(rtc_err)
    }
}

/// The payload type negotiated for `sender`'s codec (what its packets must carry).
async fn negotiated_payload_type(sender: &Arc<dyn RtpSender>) -> Result<PayloadType, RtcError> {
    let parameters = sender.get_parameters().await.map_err(rtc_err)?;
    parameters.rtp_parameters.codecs.first().map(|c| c.payload_type).ok_or_else(|| rtc_err("no negotiated codec"))
}

/// A random SSRC (the clock's nanoseconds mixed; no rand crate needed).
fn random_ssrc() -> u32 {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(7);
    (nanos as u32).wrapping_mul(2_654_435_761) | 1
}
