//! WAV output for tools (`duplex talk --out`).

use std::path::Path;

#[derive(Debug, thiserror::Error)]
#[error("cannot write WAV file {path}: {source}")]
pub struct WavError {
    path: String,
    source: hound::Error,
}

/// Writes mono s16 samples at `sample_rate_hz` to `path`.
pub fn write_wav(path: &Path, sample_rate_hz: u32, samples: &[i16]) -> Result<(), WavError> {
    let wrap = |source| WavError { path: path.display().to_string(), source };
    let spec = hound::WavSpec {
        channels: 1,
        sample_rate: sample_rate_hz,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut writer = hound::WavWriter::create(path, spec).map_err(wrap)?;
    for &s in samples {
        writer.write_sample(s).map_err(wrap)?;
    }
    writer.finalize().map_err(wrap)
}
