//! The mel filter bank of Whisper's front end: 16 kHz, a 400-point FFT (201
//! bins), 80 triangular filters on the Slaney mel scale (linear below 1 kHz,
//! logarithmic above) with Slaney area normalisation — the filters librosa
//! makes with `htk=False, norm="slaney"`.

/// Mel of a frequency on the Slaney scale.
fn hz_to_mel(hz: f64) -> f64 {
    let (f_sp, min_log_hz) = (200.0 / 3.0, 1000.0);
    let min_log_mel = min_log_hz / f_sp;
    let logstep = 6.4f64.ln() / 27.0;
    if hz >= min_log_hz { min_log_mel + (hz / min_log_hz).ln() / logstep } else { hz / f_sp }
}

fn mel_to_hz(mel: f64) -> f64 {
    let (f_sp, min_log_hz) = (200.0 / 3.0, 1000.0);
    let min_log_mel = min_log_hz / f_sp;
    let logstep = 6.4f64.ln() / 27.0;
    if mel >= min_log_mel { min_log_hz * ((mel - min_log_mel) * logstep).exp() } else { mel * f_sp }
}

/// `n_mels` × (`n_fft`/2 + 1) weights, row-major.
pub fn filters(sample_rate_hz: u32, n_fft: usize, n_mels: usize) -> Vec<f32> {
    let bins = n_fft / 2 + 1;
    let nyquist = sample_rate_hz as f64 / 2.0;
    let fft_freqs: Vec<f64> = (0..bins).map(|i| i as f64 * nyquist / (bins - 1) as f64).collect();
    let (lo, hi) = (hz_to_mel(0.0), hz_to_mel(nyquist));
    let mel_f: Vec<f64> = (0..n_mels + 2).map(|i| mel_to_hz(lo + (hi - lo) * i as f64 / (n_mels + 1) as f64)).collect();
    let mut weights = vec![0f32; n_mels * bins];
    for m in 0..n_mels {
        let (left, center, right) = (mel_f[m], mel_f[m + 1], mel_f[m + 2]);
        let norm = 2.0 / (right - left);
        for (k, f) in fft_freqs.iter().enumerate() {
            let lower = (f - left) / (center - left);
            let upper = (right - f) / (right - center);
            weights[m * bins + k] = (lower.min(upper).max(0.0) * norm) as f32;
        }
    }
    weights
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_scale_is_linear_then_logarithmic() {
        assert!((hz_to_mel(1000.0) - 15.0).abs() < 1e-9);
        assert!((hz_to_mel(500.0) - 7.5).abs() < 1e-9);
        for hz in [0.0, 300.0, 1000.0, 4321.0, 8000.0] {
            assert!((mel_to_hz(hz_to_mel(hz)) - hz).abs() < 1e-6);
        }
    }

    #[test]
    fn whisper_filters_have_the_known_shape() {
        let f = filters(16_000, 400, 80);
        assert_eq!(f.len(), 80 * 201);
        // Every filter is non-negative and covers some bins; the low filters are
        // narrow and tall, the high ones wide and low (area normalisation).
        for m in 0..80 {
            let row = &f[m * 201..(m + 1) * 201];
            assert!(row.iter().all(|w| *w >= 0.0));
            assert!(row.iter().any(|w| *w > 0.0), "filter {m} is empty");
        }
        let peak = |m: usize| f[m * 201..(m + 1) * 201].iter().cloned().fold(0.0, f32::max);
        assert!(peak(1) > peak(79) * 5.0);
        // librosa's value for the first filter's peak (bin 1): 0.02486.
        assert!((f[1] - 0.024_86).abs() < 1e-4, "{}", f[1]);
    }
}
