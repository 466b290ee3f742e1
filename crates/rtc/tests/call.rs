//! A real WebRTC call on loopback: `duplex_rtc::caller::Caller` offers an
//! Opus track and a data channel, `duplex_rtc::peer::answer` answers; audio
//! and text go both ways and arrive decoded.

use std::time::Duration;

use duplex_rtc::FRAME_SAMPLES;
use duplex_rtc::caller::Caller;
use duplex_rtc::peer::{CallConfig, Inbound, Outbound, answer};

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

/// Audio and the first text message from `rx` until both have come (or 10 s passed).
async fn gather(rx: &mut tokio::sync::mpsc::Receiver<Inbound>) -> (Vec<i16>, Option<String>) {
    let (mut audio, mut text) = (Vec::new(), None);
    let until = tokio::time::Instant::now() + Duration::from_secs(10);
    while text.is_none() || audio.len() < 20 * FRAME_SAMPLES {
        match tokio::time::timeout_at(until, rx.recv()).await {
            Ok(Some(Inbound::Audio(pcm))) => audio.extend(pcm),
            Ok(Some(Inbound::Text(t))) => text = text.or(Some(t)),
            Ok(Some(Inbound::Bytes(_))) => {}
            Ok(None) | Err(_) => break,
        }
    }
    (audio, text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audio_and_text_cross_a_loopback_call_both_ways() {
    let (mut caller, offer) = Caller::offer().await.unwrap();
    let mut call = answer(&offer, &CallConfig::default()).await.expect("answered");
    caller.connect(&call.answer).await.expect("the data channel opens");

    // A second of audio each way, paced like real time.
    for f in 0..50 {
        caller.send_audio(&tone(f)).await.unwrap();
        call.outbound.send(Outbound::Audio(tone(f))).await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    caller.send_text("hello from the caller").await.unwrap();
    call.outbound.send(Outbound::Text("hello from duplex".into())).await.unwrap();

    // What the answering side got.
    let (audio, text) = gather(&mut call.inbound).await;
    assert_eq!(text.as_deref(), Some("hello from the caller"));
    assert!(audio.len() >= 20 * FRAME_SAMPLES, "{} samples of the caller's audio", audio.len());
    assert!(rms(&audio[FRAME_SAMPLES * 5..]) > 3_000.0, "the caller's tone, decoded");
    // What the caller got.
    let (heard, reply) = gather(&mut caller.heard).await;
    assert_eq!(reply.as_deref(), Some("hello from duplex"));
    assert!(heard.len() >= 20 * FRAME_SAMPLES, "{} samples of duplex's audio", heard.len());
    assert!(rms(&heard[FRAME_SAMPLES * 5..]) > 3_000.0, "duplex's tone, decoded");
    call.close().await;
    caller.hang_up().await;
}
