//! Audio shared by every Duplex service: the wire frame (20 ms of 48 kHz s16le
//! mono PCM), a framer that cuts any sample stream into such frames, a
//! streaming band-limited resampler, and WAV output for tools.

mod framer;
mod resample;
mod wav;

pub use framer::Framer;
pub use resample::Resampler;
pub use wav::{WavError, write_wav};

/// Sample rate of every frame on the wire.
pub const SAMPLE_RATE_HZ: u32 = 48_000;
/// Duration of one frame.
pub const FRAME_MS: u32 = 20;
/// Samples in one frame (mono).
pub const FRAME_SAMPLES: usize = (SAMPLE_RATE_HZ * FRAME_MS / 1000) as usize;
/// Bytes in one s16le frame.
pub const FRAME_BYTES: usize = FRAME_SAMPLES * std::mem::size_of::<i16>();
/// One frame as a `Duration`, for pacing.
pub const FRAME_DURATION: std::time::Duration = std::time::Duration::from_millis(FRAME_MS as u64);

/// Encodes samples as little-endian bytes.
pub fn samples_to_bytes(samples: &[i16]) -> Vec<u8> {
    let mut out = Vec::with_capacity(samples.len() * 2);
    for s in samples {
        out.extend_from_slice(&s.to_le_bytes());
    }
    out
}

/// Decodes little-endian s16 bytes; a trailing odd byte is ignored.
pub fn bytes_to_samples(bytes: &[u8]) -> Vec<i16> {
    bytes.chunks_exact(2).map(|b| i16::from_le_bytes([b[0], b[1]])).collect()
}

/// Root-mean-square level of a block of samples, 0.0..=1.0 of full scale.
pub fn rms(samples: &[i16]) -> f64 {
    if samples.is_empty() {
        return 0.0;
    }
    let sum: f64 = samples.iter().map(|&s| (s as f64 / 32768.0).powi(2)).sum();
    (sum / samples.len() as f64).sqrt()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_constants_are_derived() {
        assert_eq!(FRAME_SAMPLES, 960);
        assert_eq!(FRAME_BYTES, 1920);
    }

    #[test]
    fn bytes_round_trip() {
        let s = vec![0i16, 1, -1, i16::MAX, i16::MIN];
        assert_eq!(bytes_to_samples(&samples_to_bytes(&s)), s);
    }

    #[test]
    fn rms_of_silence_and_full_scale() {
        assert_eq!(rms(&[0; 10]), 0.0);
        assert!((rms(&[i16::MIN; 10]) - 1.0).abs() < 1e-9);
    }
}
