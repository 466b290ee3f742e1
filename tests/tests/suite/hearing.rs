//! Silero VAD on real speech (the Piper voice), through the hearing threads:
//! where speech starts and ends, what is kept for ASR, and that silence and
//! noise never start a turn.

use std::sync::Arc;
use std::time::Duration;

use duplex_speech::ears::Heard;
use duplex_speech::{Ears, EarsError, Listener, VadConfig, VadEvent};
use duplex_tests::speech::{duration_ms, init_onnx, silence, silero_model, spoken};

fn ears() -> Ears {
    init_onnx();
    Ears::start(&silero_model(), 1, VadConfig::default(), Arc::new(|_| {})).expect("Silero loads")
}

/// Feeds `pcm` in 20 ms chunks (faster than real time, waiting when the
/// queue is full) and collects the events until `quiet` passes without one.
async fn hear(listener: &mut Listener, pcm: &[i16]) -> Vec<VadEvent> {
    let chunk = listener.rate_hz() as usize / 50;
    for piece in pcm.chunks(chunk) {
        loop {
            match listener.push(piece.to_vec()) {
                Ok(()) => break,
                Err(EarsError::TooFast) => tokio::time::sleep(Duration::from_millis(2)).await,
                Err(e) => panic!("{e}"),
            }
        }
    }
    let mut events = Vec::new();
    while let Ok(Some(heard)) = tokio::time::timeout(Duration::from_millis(500), listener.events.recv()).await {
        match heard {
            Heard::Vad { event, .. } => events.push(event),
            Heard::Failed(e) => panic!("{e}"),
        }
    }
    events
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn speech_in_silence_is_one_segment_at_the_right_place() {
    let ears = ears();
    for rate in [16_000, 48_000] {
        let speech = spoken("Hello there. What is the weather like in Paris today?", rate);
        let mut input = silence(1_000, rate);
        input.extend(&speech);
        input.extend(silence(1_500, rate));
        let mut listener = ears.listen(rate).unwrap();
        let mut events = hear(&mut listener, &input).await;
        // Pauses between the sentences may be reported (recognition starts early).
        let pauses: Vec<u64> = events
            .iter()
            .filter_map(|e| match e {
                VadEvent::Pause { ended_ms, .. } => Some(*ended_ms),
                _ => None,
            })
            .collect();
        events.retain(|e| matches!(e, VadEvent::SpeechStart { .. } | VadEvent::SpeechEnd { .. }));
        let [VadEvent::SpeechStart { onset_ms, decided_ms }, VadEvent::SpeechEnd { ref audio, speech_ms, ended_ms }] =
            events[..]
        else {
            panic!("{rate} Hz: {} segment events, not one start and one end", events.len())
        };
        assert_eq!(pauses.last(), Some(&ended_ms), "{rate} Hz: the last pause is where the speech ended");
        let spoken_ms = duration_ms(speech.len(), rate);
        // Piper's output starts and ends with a little silence of its own.
        assert!((950..=1_250).contains(&onset_ms), "{rate} Hz: onset at {onset_ms} ms");
        assert!(decided_ms - onset_ms <= 160, "{rate} Hz: confirmed {} ms after the onset", decided_ms - onset_ms);
        assert!(speech_ms + 400 >= spoken_ms && speech_ms <= spoken_ms + 200, "{speech_ms} ms of {spoken_ms}");
        assert!(ended_ms <= 1_000 + spoken_ms + 100, "{rate} Hz: ended at {ended_ms}");
        // The segment holds the speech plus pre-roll and a little trailing silence.
        let segment_ms = duration_ms(audio.len(), 16_000);
        assert!(segment_ms >= speech_ms + 200 && segment_ms <= speech_ms + 800, "{segment_ms} ms segment");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silence_and_noise_never_start_speech() {
    let ears = ears();
    let mut listener = ears.listen(16_000).unwrap();
    assert!(hear(&mut listener, &silence(3_000, 16_000)).await.is_empty());
    // Low white noise (deterministic), and a 40 ms click.
    let mut x: u32 = 12_345;
    let mut noise: Vec<i16> = (0..48_000)
        .map(|_| {
            x = x.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            ((x >> 16) as i16) / 40
        })
        .collect();
    for s in &mut noise[16_000..16_640] {
        *s = 20_000;
    }
    let events = hear(&mut listener, &noise).await;
    assert!(events.is_empty(), "{events:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsupported_rates_and_floods_are_refused() {
    let ears = ears();
    assert!(matches!(ears.listen(11_025), Err(EarsError::Rate(11_025))));
    let listener = ears.listen(16_000).unwrap();
    // Far more than a second queued at once: refused, not buffered.
    let mut refused = false;
    for _ in 0..10_000 {
        if let Err(e) = listener.push(vec![0; 320]) {
            assert!(matches!(e, EarsError::TooFast));
            refused = true;
            break;
        }
    }
    assert!(refused);
}
