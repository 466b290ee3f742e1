//! Voices: Kyutai's precomputed voice files (`<name>.safetensors` with
//! `speaker_wavs`, (1, voice_dim, frames per speaker) — the codec's
//! embedding of a short clip) laid out as the model attends to them: a fixed
//! number of speaker places of equal length, the voice in the first two (as
//! Kyutai's server does) and zeros in the rest.

use std::path::Path;

use moshi::candle::{DType, Device, Result, Tensor};

use crate::Config;

/// Speaker places in the attended source.
pub const SPEAKER_PLACES: usize = 5;
/// How many of them the voice fills.
const VOICE_PLACES: usize = 2;

/// Loads a voice file into the (voice_frames, voice_dim) source `Model::reset_slot` takes.
pub fn load(path: &Path, config: &Config) -> Result<Tensor> {
    let tensors = moshi::candle::safetensors::load(path, &Device::Cpu)?;
    let wavs = tensors
        .get("speaker_wavs")
        .ok_or_else(|| moshi::candle::Error::Msg(format!("{}: no `speaker_wavs` tensor", path.display())))?;
    from_embedding(&wavs.to_dtype(DType::F32)?, config)
}

/// Lays out one speaker embedding (1, voice_dim, frames per speaker).
pub fn from_embedding(wavs: &Tensor, config: &Config) -> Result<Tensor> {
    let cond = &config.conditioning;
    let per_place = cond.voice_frames / SPEAKER_PLACES;
    let (one, dim, frames) = wavs.dims3()?;
    if one != 1 || dim != cond.voice_dim || frames != per_place {
        moshi::candle::bail!("a voice is (1, {}, {per_place}), this one is ({one}, {dim}, {frames})", cond.voice_dim);
    }
    let frames = wavs.squeeze(0)?.t()?.contiguous()?;
    let rest = Tensor::zeros((cond.voice_frames - VOICE_PLACES * per_place, dim), DType::F32, &Device::Cpu)?;
    let mut parts = vec![&frames; VOICE_PLACES];
    parts.push(&rest);
    Tensor::cat(&parts, 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_voice_file_fills_the_first_places_and_leaves_the_rest_silent() {
        let config = Config::tiny();
        let c = &config.conditioning;
        let per_place = c.voice_frames / SPEAKER_PLACES;
        let data: Vec<f32> = (0..c.voice_dim * per_place).map(|i| i as f32 + 1.0).collect();
        let wavs = Tensor::from_vec(data, (1, c.voice_dim, per_place), &Device::Cpu).unwrap();
        let dir = std::env::temp_dir().join(format!("duplex-voice-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("v.safetensors");
        moshi::candle::safetensors::save(&std::collections::HashMap::from([("speaker_wavs".to_string(), wavs)]), &path)
            .unwrap();
        let source = load(&path, &config).unwrap();
        assert_eq!(source.dims(), &[c.voice_frames, c.voice_dim]);
        let rows: Vec<Vec<f32>> = source.to_vec2().unwrap();
        // Frame 0 of the clip, dimension d, is element d * per_place of the file.
        assert_eq!(rows[0][1], (per_place as f32) + 1.0);
        assert_eq!(rows[per_place], rows[0], "the second place holds the same voice");
        assert!(rows[2 * per_place..].iter().all(|r| r.iter().all(|v| *v == 0.0)));
        let wrong = Tensor::zeros((1, c.voice_dim + 1, per_place), DType::F32, &Device::Cpu).unwrap();
        assert!(from_embedding(&wrong, &config).unwrap_err().to_string().contains("a voice is"));
        let _ = std::fs::remove_dir_all(dir);
    }
}
