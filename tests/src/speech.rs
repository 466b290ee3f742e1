//! Real speech for tests: sentences spoken by the Piper voice that `just
//! assets` fetches, at any rate, with silence around them.

use std::path::PathBuf;

pub use duplex_cli::voice::VOICE;

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

pub fn llm_model() -> PathBuf {
    assets().join("llm/SmolLM2-135M-Instruct.Q4_1.gguf")
}

pub fn silero_model() -> PathBuf {
    assets().join("vad/silero_vad.onnx")
}

/// `text` spoken by the Piper voice, mono s16 at `rate_hz`.
pub fn spoken(text: &str, rate_hz: u32) -> Vec<i16> {
    duplex_cli::voice::speak(&assets(), text, rate_hz).expect("the voice speaks")
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
    config.conversation.responder = duplex_orchestrator::config::ResponderConfig::Echo;
}

/// `with_hearing`, answered by the local language model.
pub fn with_local_llm(config: &mut duplex_orchestrator::Config) {
    with_hearing(config);
    config.conversation.responder = duplex_orchestrator::config::ResponderConfig::Local(duplex_reply::LocalConfig {
        model_path: llm_model(),
        ..Default::default()
    });
}
