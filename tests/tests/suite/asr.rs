//! Whisper tiny.en (CTranslate2 weights from `just assets`) on candle,
//! transcribing the Piper voice: the words come out, and silence or noise
//! gives an empty transcript.

use std::time::Instant;

use duplex_asr::whisper::Recognizer;
use duplex_asr::{Whisper, WhisperConfig};
use duplex_speech::Transcriber;
use duplex_tests::speech::{silence, spoken, whisper_dir};

fn config() -> WhisperConfig {
    WhisperConfig { model_dir: whisper_dir(), ..WhisperConfig::default() }
}

fn f32s(pcm: &[i16]) -> Vec<f32> {
    pcm.iter().map(|s| *s as f32 / 32_768.0).collect()
}

fn words(text: &str) -> Vec<String> {
    text.to_lowercase().split(|c: char| !c.is_alphanumeric()).filter(|w| !w.is_empty()).map(str::to_string).collect()
}

#[test]
fn spoken_sentences_are_transcribed() {
    let mut r = Recognizer::load(&config()).expect("the model loads");
    for sentence in ["What is the weather like in Paris today?", "Please turn off the kitchen lights."] {
        let mut audio = silence(300, 16_000);
        audio.extend(spoken(sentence, 16_000));
        audio.extend(silence(300, 16_000));
        let started = Instant::now();
        let text = r.transcribe(&f32s(&audio)).unwrap();
        eprintln!("{:?} in {:?}", text, started.elapsed());
        let (want, got) = (words(sentence), words(&text));
        let found = want.iter().filter(|w| got.contains(w)).count();
        assert!(found * 10 >= want.len() * 8, "{text:?} for {sentence:?}");
    }
}

#[test]
fn silence_and_noise_are_not_words() {
    let mut r = Recognizer::load(&config()).unwrap();
    assert_eq!(r.transcribe(&f32s(&silence(1_000, 16_000))).unwrap(), "");
    let mut x: u32 = 7;
    let noise: Vec<f32> = (0..16_000)
        .map(|_| {
            x = x.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            ((x >> 8) as f32 / (1u32 << 24) as f32 - 0.5) * 0.05
        })
        .collect();
    let text = r.transcribe(&noise).unwrap();
    assert_eq!(text, "", "noise read as {text:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_threads_answer_through_the_transcriber_contract() {
    let whisper = Whisper::start(&config()).unwrap();
    let audio = f32s(&spoken("Good morning.", 16_000));
    let text = whisper.transcribe(audio).await.unwrap().unwrap();
    assert!(words(&text).contains(&"morning".to_string()), "{text:?}");
    let missing = Whisper::start(&WhisperConfig { model_dir: "/nonexistent".into(), ..config() });
    let err = missing.expect_err("a clear error").to_string();
    assert!(err.contains("just assets"), "{err}");
}
