//! Sessions sharing the model thread, on tiny random weights: words in,
//! 80 ms audio chunks out and an end; a full batch answers Busy at once; a
//! cancelled session frees its slot; a listener that stops reading stalls
//! only its own slot.

use std::time::{Duration, Instant};

use duplex_kyutai::codec::{self, Codec, SAMPLES_PER_STEP};
use duplex_kyutai::engine::{Chunk, Engine, EngineConfig, EngineError, Stream};
use duplex_kyutai::machine::MachineConfig;
use duplex_kyutai::moshi_candle::{Device, Tensor};
use duplex_kyutai::{Config, Model, Sampler, weights};

fn engine(batch: usize) -> (tempfile::TempDir, Engine) {
    let dir = tempfile::tempdir().unwrap();
    weights::write_random(&Config::tiny(), dir.path(), 5).unwrap();
    let mimi = dir.path().join("mimi.safetensors");
    codec::write_random(codec::tiny_config(4, 16), &mimi).unwrap();
    let model = Model::load(dir.path(), batch, &Device::Cpu).unwrap();
    let codec = Codec::load_with(codec::tiny_config(4, 16), &mimi, batch, &Device::Cpu).unwrap();
    let config = EngineConfig {
        audio_delay: 3,
        final_padding: 1,
        cfg_bin: 2,
        machine: MachineConfig::default(),
        text_sampler: Sampler::greedy(),
        audio_sampler: Sampler::top_k(8, 1.0, 3),
    };
    (dir, Engine::spawn(model, codec, config).unwrap())
}

fn voice() -> Tensor {
    let c = Config::tiny().conditioning;
    Tensor::zeros((c.voice_frames, c.voice_dim), duplex_kyutai::moshi_candle::DType::F32, &Device::Cpu).unwrap()
}

fn say(stream: &Stream, words: usize) {
    for w in 0..words {
        assert!(stream.push_word(vec![10 + w as u32, 20]));
    }
    stream.close();
}

/// Audio chunks until the end (or `within`).
fn listen(stream: &Stream, within: Duration) -> (usize, bool) {
    let until = Instant::now() + within;
    let mut chunks = 0;
    while let Ok(chunk) = stream.audio.recv_timeout(until.saturating_duration_since(Instant::now())) {
        match chunk {
            Chunk::Audio(pcm) => {
                assert_eq!(pcm.len(), SAMPLES_PER_STEP);
                chunks += 1;
            }
            Chunk::End => return (chunks, true),
            Chunk::Failed(e) => panic!("failed: {e}"),
        }
    }
    (chunks, false)
}

#[test]
fn words_in_audio_out_then_the_end() {
    let (_dir, engine) = engine(2);
    let stream = engine.open(voice()).unwrap();
    say(&stream, 3);
    let (chunks, ended) = listen(&stream, Duration::from_secs(30));
    assert!(ended, "the utterance ends");
    // Three words of two tokens and the speaker token, padded: a few dozen steps.
    assert!((5..200).contains(&chunks), "{chunks} chunks");
    // Its slot is free again.
    let until = Instant::now() + Duration::from_secs(2);
    while engine.free_slots() < 2 {
        assert!(Instant::now() < until, "the slot was not freed");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn a_full_batch_is_busy_at_once_and_a_cancelled_session_frees_its_slot() {
    let (_dir, engine) = engine(2);
    let a = engine.open(voice()).unwrap();
    let b = engine.open(voice()).unwrap();
    assert_eq!(engine.free_slots(), 0);
    let t = Instant::now();
    assert_eq!(engine.open(voice()).err(), Some(EngineError::Busy));
    assert!(t.elapsed() < Duration::from_millis(50), "busy is answered at once");
    say(&a, 50);
    a.cancel();
    let until = Instant::now() + Duration::from_secs(2);
    while engine.free_slots() == 0 {
        assert!(Instant::now() < until, "the cancelled slot was not freed");
        std::thread::sleep(Duration::from_millis(2));
    }
    let c = engine.open(voice()).expect("the freed slot is taken again");
    say(&c, 2);
    assert!(listen(&c, Duration::from_secs(30)).1, "the new session in the reused slot completes");
    drop(b);
}

#[test]
fn a_listener_that_stops_reading_stalls_only_its_own_slot() {
    let (_dir, engine) = engine(2);
    let idle = engine.open(voice()).unwrap();
    say(&idle, 30);
    let busy = engine.open(voice()).unwrap();
    say(&busy, 3);
    assert!(listen(&busy, Duration::from_secs(30)).1, "the other session completes");
    // The idle one was held at its queue's bound; reading now, it completes too.
    let (chunks, ended) = listen(&idle, Duration::from_secs(60));
    assert!(ended && chunks > 8, "{chunks} chunks, ended {ended}");
}
