//! A conversation over WebRTC: a caller (duplex_rtc::caller, the webrtc
//! crate) posts its offer to `/rtc/offer`, speaks a question on its Opus
//! track and types a turn on the data channel; the orchestrator's ordinary
//! session answers with events on the data channel and the bot's voice on
//! the track.

use std::time::Duration;

use duplex_orchestrator::protocol::ServerMessage;
use duplex_rtc::caller::Caller;
use duplex_rtc::peer::Inbound;
use duplex_tests::speech::{silence, spoken, with_hearing};
use duplex_tests::*;

fn rms(x: &[i16]) -> f64 {
    (x.iter().map(|s| (*s as f64).powi(2)).sum::<f64>() / x.len().max(1) as f64).sqrt()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spoken_and_a_typed_turn_over_webrtc() {
    let stack = Stack::start(realtime_worker_config(), with_hearing).await;
    let (mut caller, offer) = Caller::offer().await.unwrap();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let answer: serde_json::Value = reqwest::Client::new()
        .post(format!("http://{}/rtc/offer", stack.orchestrator.addr))
        .json(&serde_json::json!({ "sdp": offer }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    caller.connect(answer["sdp"].as_str().expect("an answer")).await.unwrap();

    let mut pcm = silence(300, 48_000);
    pcm.extend(spoken("What is the weather like in Paris today?", 48_000));
    pcm.extend(silence(1_200, 48_000));
    for frame in pcm.chunks_exact(960) {
        caller.send_audio(frame).await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (mut messages, mut voice) = (Vec::new(), Vec::new());
    let mut typed = false;
    let until = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let Ok(Some(item)) = tokio::time::timeout_at(until, caller.heard.recv()).await else { break };
        match item {
            Inbound::Audio(pcm) => voice.extend(pcm),
            Inbound::Bytes(_) => {}
            Inbound::Text(text) => {
                let msg: ServerMessage = serde_json::from_str(&text).unwrap();
                let listening = matches!(&msg, ServerMessage::State { state, .. } if state == "listening");
                messages.push(msg);
                if listening && !typed {
                    typed = true;
                    caller.send_text(r#"{"type":"user_text","text":"Thank you."}"#).await.unwrap();
                } else if listening {
                    break;
                }
            }
        }
    }
    let transcripts = transcripts(&messages);
    assert_eq!(transcripts.len(), 2, "{messages:?}");
    assert!(transcripts[0].contains("weather"), "{transcripts:?}");
    assert_eq!(transcripts[1], "thank you.");
    let reply = reply_text(&messages);
    assert!(reply.starts_with("You said"), "{reply:?}");
    assert!(voice.len() > 48_000, "{} samples of the bot's voice", voice.len());
    assert!(rms(&voice) > 500.0, "the bot's voice came over the track");
    caller.hang_up().await;
    // Hanging up ends the session on the server (not only its idle timeout).
    wait_no_sessions(stack.orchestrator.addr, "the call").await;
}
