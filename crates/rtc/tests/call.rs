//! A real WebRTC call on loopback: a caller built from the `webrtc` crate
//! offers an Opus track and a data channel, `duplex_rtc::peer::answer`
//! answers; audio and text go both ways and arrive decoded.

use std::sync::Arc;
use std::time::{Duration, Instant};

use duplex_rtc::peer::{CallConfig, Inbound, Outbound, answer};
use duplex_rtc::{FRAME_SAMPLES, OpusDecoder, OpusEncoder};
use rtc::media::Sample;
use rtc::media_stream::MediaStreamTrack;
use rtc::peer_connection::configuration::media_engine::MIME_TYPE_OPUS;
use rtc::rtp_transceiver::rtp_sender::{RTCRtpCodec, RTCRtpCodingParameters, RTCRtpEncodingParameters, RtpCodecKind};
use tokio::sync::{Mutex, mpsc};
use webrtc::data_channel::DataChannelEvent;
use webrtc::media_stream::track_local::TrackLocal;
use webrtc::media_stream::track_local::static_sample::TrackLocalStaticSample;
use webrtc::media_stream::track_remote::{TrackRemote, TrackRemoteEvent};
use webrtc::peer_connection::{
    MediaEngine, PeerConnection, PeerConnectionBuilder, PeerConnectionEventHandler, RTCConfigurationBuilder,
    RTCIceGatheringState, RTCSessionDescription, Registry, register_default_interceptors,
};

#[derive(Clone)]
struct Caller {
    heard: Arc<Mutex<Vec<i16>>>,
    gathered: mpsc::Sender<()>,
}

#[async_trait::async_trait]
impl PeerConnectionEventHandler for Caller {
    async fn on_ice_gathering_state_change(&self, state: RTCIceGatheringState) {
        if state == RTCIceGatheringState::Complete {
            let _ = self.gathered.try_send(());
        }
    }

    async fn on_track(&self, track: Arc<dyn TrackRemote>) {
        let heard = self.heard.clone();
        tokio::spawn(async move {
            let mut dec = OpusDecoder::new().unwrap();
            while let Some(event) = track.poll().await {
                if let TrackRemoteEvent::OnRtpPacket(p) = event
                    && let Ok(pcm) = dec.decode(&p.payload)
                {
                    heard.lock().await.extend(pcm);
                }
            }
        });
    }
}

fn tone(frame: usize) -> Vec<i16> {
    (0..FRAME_SAMPLES)
        .map(|i| {
            let t = (frame * FRAME_SAMPLES + i) as f64 / 48_000.0;
            (0.4 * (2.0 * std::f64::consts::PI * 300.0 * t).sin() * 32_767.0) as i16
        })
        .collect()
}

fn rms(x: &[i16]) -> f64 {
    (x.iter().map(|s| (*s as f64).powi(2)).sum::<f64>() / x.len().max(1) as f64).sqrt()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audio_and_text_cross_a_loopback_call_both_ways() {
    let mut media = MediaEngine::default();
    media.register_default_codecs().unwrap();
    let registry = register_default_interceptors(Registry::new(), &mut media).unwrap();
    let (gathered_tx, mut gathered) = mpsc::channel(1);
    let heard: Arc<Mutex<Vec<i16>>> = Arc::default();
    let caller = PeerConnectionBuilder::new()
        .with_configuration(RTCConfigurationBuilder::new().build())
        .with_media_engine(media)
        .with_interceptor_registry(registry)
        .with_handler(Arc::new(Caller { heard: heard.clone(), gathered: gathered_tx }))
        .with_udp_addrs(vec!["127.0.0.1:0".to_string()])
        .build()
        .await
        .unwrap();
    let ssrc = 4242;
    let track = Arc::new(
        TrackLocalStaticSample::new(
            Instant::now(),
            MediaStreamTrack::new(
                "mic".into(),
                "mic".into(),
                "mic".into(),
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
            ),
        )
        .unwrap(),
    );
    let sender = caller.add_track(track.clone() as Arc<dyn TrackLocal>).await.unwrap();
    let dc = caller.create_data_channel("events", None).await.unwrap();
    let offer = caller.create_offer(None).await.unwrap();
    caller.set_local_description(offer).await.unwrap();
    let _ = tokio::time::timeout(Duration::from_secs(5), gathered.recv()).await;
    let offer = caller.local_description().await.unwrap().sdp;

    let mut call = answer(&offer, &CallConfig::default()).await.expect("answered");
    caller.set_remote_description(RTCSessionDescription::answer(call.answer.clone()).unwrap()).await.unwrap();

    // The caller's data channel: wait until open, keep what arrives.
    let (texts_tx, mut texts) = mpsc::channel::<String>(8);
    let (open_tx, mut open) = mpsc::channel::<()>(1);
    let dc2 = dc.clone();
    tokio::spawn(async move {
        while let Some(e) = dc2.poll().await {
            match e {
                DataChannelEvent::OnOpen => {
                    let _ = open_tx.try_send(());
                }
                DataChannelEvent::OnMessage(m) => {
                    let _ = texts_tx.send(String::from_utf8_lossy(&m.data).into_owned()).await;
                }
                _ => {}
            }
        }
    });
    tokio::time::timeout(Duration::from_secs(10), open.recv()).await.expect("the data channel opens");

    // A second of audio each way, paced like real time.
    let payload_type = sender.get_parameters().await.unwrap().rtp_parameters.codecs.first().unwrap().payload_type;
    let mut enc = OpusEncoder::new(32_000).unwrap();
    for f in 0..50 {
        let packet = enc.encode(&tone(f)).unwrap();
        let sample = Sample { data: packet.into(), duration: Duration::from_millis(20), ..Sample::new(Instant::now()) };
        track.sample_writer(ssrc, payload_type).write_sample(&sample).await.unwrap();
        call.outbound.send(Outbound::Audio(tone(f))).await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    dc.send_text("hello from the caller").await.unwrap();
    call.outbound.send(Outbound::Text("hello from duplex".into())).await.unwrap();

    // What the answering side got.
    let (mut audio, mut text) = (Vec::new(), None);
    let until = tokio::time::Instant::now() + Duration::from_secs(10);
    while text.is_none() || audio.len() < 20 * FRAME_SAMPLES {
        match tokio::time::timeout_at(until, call.inbound.recv()).await {
            Ok(Some(Inbound::Audio(pcm))) => audio.extend(pcm),
            Ok(Some(Inbound::Text(t))) => text = Some(t),
            Ok(None) | Err(_) => break,
        }
    }
    assert_eq!(text.as_deref(), Some("hello from the caller"));
    assert!(audio.len() >= 20 * FRAME_SAMPLES, "{} samples of the caller's audio", audio.len());
    assert!(rms(&audio[FRAME_SAMPLES * 5..]) > 3_000.0, "the caller's tone, decoded");
    // What the caller got.
    let reply = tokio::time::timeout(Duration::from_secs(10), texts.recv()).await.expect("a message").unwrap();
    assert_eq!(reply, "hello from duplex");
    let heard = heard.lock().await.clone();
    assert!(heard.len() >= 20 * FRAME_SAMPLES, "{} samples of duplex's audio", heard.len());
    assert!(rms(&heard[FRAME_SAMPLES * 5..]) > 3_000.0, "duplex's tone, decoded");
    call.close().await;
    let _ = caller.close().await;
}
