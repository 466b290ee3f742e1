//! Real speech for tests: sentences spoken by the Piper voice that `just
//! assets` fetches, at any rate, with silence around them.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use duplex_piper::{PiperConfig, PiperEngine};
use duplex_tts::{Engine, Step, SynthesisParams};

pub const VOICE: &str = "en_US-joe-medium";

/// `.cache/assets`, checked to hold the voice, ONNX Runtime and Silero VAD.
pub fn assets() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.cache/assets");
    assert!(
        dir.join("voices").join(VOICE).exists() && dir.join("onnxruntime").exists() && dir.join("vad").exists(),
        "assets are missing from {}: run `just assets` (or `cargo run -p duplex-cli -- assets`)",
        dir.display()
    );
    dir
}

pub fn init_onnx() {
    duplex_onnx::init_runtime(&assets().join("onnxruntime/libonnxruntime.so.1.31.1")).expect("ONNX Runtime loads");
}

pub fn whisper_dir() -> PathBuf {
    assets().join("asr/whisper-tiny.en")
}

pub fn silero_model() -> PathBuf {
    assets().join("vad/silero_vad.onnx")
}

/// `text` spoken by the Piper voice, mono s16 at `rate_hz`.
pub fn spoken(text: &str, rate_hz: u32) -> Vec<i16> {
    init_onnx();
    let config = PiperConfig {
        model_id: VOICE.into(),
        voice_dir: assets().join("voices").join(VOICE),
        threads: 1,
        intra_op_threads: 1,
        sentence_silence_ms: 0,
        noise_scale: None,
        length_scale: None,
        noise_w: None,
    };
    let mut engine = PiperEngine::load(&config).expect("the voice loads");
    let voice_rate = engine.descriptor().sample_rate_hz;
    let mut synthesis = engine.start(&SynthesisParams::default()).unwrap();
    synthesis.push_text(text);
    synthesis.finish_text();
    let mut audio = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match synthesis.step(Instant::now()).expect("synthesis") {
            Step::Audio(a) => audio.extend(a),
            Step::Done => break,
            Step::NotBefore(_) | Step::Speaking { .. } | Step::NeedText => {}
        }
        assert!(Instant::now() < deadline, "synthesis finished");
    }
    let mut resampler = duplex_audio::Resampler::new(voice_rate, rate_hz);
    let mut out = resampler.push(&audio);
    out.extend(resampler.finish());
    out.iter().map(|s| (s.clamp(-1.0, 1.0) * 32_767.0) as i16).collect()
}

/// `ms` of silence at `rate_hz`.
pub fn silence(ms: u32, rate_hz: u32) -> Vec<i16> {
    vec![0; (rate_hz as u64 * ms as u64 / 1000) as usize]
}

/// Duration of `samples` at `rate_hz`, in ms.
pub fn duration_ms(samples: usize, rate_hz: u32) -> u64 {
    samples as u64 * 1000 / rate_hz as u64
}

/// Points `config`'s conversation at the fetched Silero model and ONNX Runtime.
pub fn with_hearing(config: &mut duplex_orchestrator::Config) {
    let assets = assets();
    config.conversation.onnxruntime_library = assets.join("onnxruntime/libonnxruntime.so.1.31.1");
    config.conversation.vad_model = silero_model();
    config.conversation.asr = duplex_orchestrator::config::AsrConfig::Whisper(duplex_asr::WhisperConfig {
        model_dir: whisper_dir(),
        ..Default::default()
    });
}
