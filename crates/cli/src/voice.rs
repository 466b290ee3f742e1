//! Real speech on demand: text spoken by a Piper voice from the assets, at
//! any rate — the "user" of benchmarks and tests.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;
use duplex_piper::{PiperConfig, PiperEngine};
use duplex_tts::{Engine, Step, SynthesisParams};

pub const VOICE: &str = "en_US-joe-medium";

/// `text` spoken by the default voice in `assets`, mono s16 at `rate_hz`;
/// deterministic.
pub fn speak(assets: &Path, text: &str, rate_hz: u32) -> anyhow::Result<Vec<i16>> {
    duplex_piper::init_runtime(&assets.join("onnxruntime/libonnxruntime.so.1.31.1"))?;
    let config = PiperConfig {
        model_id: VOICE.into(),
        voice_dir: assets.join("voices").join(VOICE),
        threads: 1,
        intra_op_threads: 1,
        sentence_silence_ms: 0,
        // No sampling noise: the same text gives the same audio, so tests
        // and benchmark runs hear the same user.
        noise_scale: Some(0.0),
        length_scale: None,
        noise_w: Some(0.0),
    };
    let mut engine = PiperEngine::load(&config).context("loading the voice (run `just assets`)")?;
    let voice_rate = engine.descriptor().sample_rate_hz;
    let mut synthesis = engine.start(&SynthesisParams::default())?;
    synthesis.push_text(text);
    synthesis.finish_text();
    let mut audio = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match synthesis.step(Instant::now())? {
            Step::Audio(a) => audio.extend(a),
            Step::Done => break,
            Step::NotBefore(_) | Step::Speaking { .. } | Step::NeedText => {}
        }
        anyhow::ensure!(Instant::now() < deadline, "synthesis did not finish");
    }
    let mut resampler = duplex_audio::Resampler::new(voice_rate, rate_hz);
    let mut out = resampler.push(&audio);
    out.extend(resampler.finish());
    Ok(out.iter().map(|s| (s.clamp(-1.0, 1.0) * 32_767.0) as i16).collect())
}

/// Where speech begins and ends in `pcm` (first and last 10 ms block above
/// a small level), as sample indexes.
pub fn speech_bounds(pcm: &[i16], rate_hz: u32) -> Option<(usize, usize)> {
    let block = rate_hz as usize / 100;
    let loud = |b: &[i16]| duplex_audio::rms(b) > 0.01;
    let blocks: Vec<bool> = pcm.chunks(block).map(loud).collect();
    let first = blocks.iter().position(|l| *l)?;
    let last = blocks.iter().rposition(|l| *l)?;
    Some((first * block, ((last + 1) * block).min(pcm.len())))
}
