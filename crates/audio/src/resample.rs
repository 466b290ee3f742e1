//! Streaming band-limited resampling between fixed rates (e.g. a 22.05 kHz
//! voice to the 48 kHz wire rate).
//!
//! A polyphase windowed-sinc filter: the ratio is reduced to L/M, one filter
//! row per output phase is precomputed, and positions are tracked in exact
//! integer arithmetic, so any chunking of the input gives the same output and
//! the total length never drifts: `ceil(input_len * L / M)` samples.

/// Half-width of the filter in input samples (taps = 2 × this per output sample).
const HALF_TAPS: usize = 16;
/// Cutoff as a fraction of the lower Nyquist frequency: a little headroom for
/// the transition band, so nothing above the lower rate's Nyquist aliases.
const CUTOFF: f64 = 0.92;

#[derive(Debug, Clone)]
pub struct Resampler {
    /// Output rate / input rate = up / down, reduced.
    up: u64,
    down: u64,
    /// `up` rows of `2 * HALF_TAPS` coefficients.
    table: Vec<f32>,
    /// Input not yet fully consumed, starting at absolute input index `base`.
    buffer: Vec<f32>,
    base: u64,
    /// Next output sample index (absolute).
    next_out: u64,
    /// Input samples seen in total.
    seen: u64,
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 { a } else { gcd(b, a % b) }
}

fn sinc(x: f64) -> f64 {
    if x.abs() < 1e-12 { 1.0 } else { (std::f64::consts::PI * x).sin() / (std::f64::consts::PI * x) }
}

impl Resampler {
    pub fn new(from_hz: u32, to_hz: u32) -> Self {
        let g = gcd(from_hz as u64, to_hz as u64).max(1);
        let (up, down) = (to_hz as u64 / g, from_hz as u64 / g);
        // Cutoff relative to the input rate: the lower of the two Nyquists.
        let fc = CUTOFF * (up as f64 / down as f64).min(1.0);
        let width = 2 * HALF_TAPS;
        let mut table = vec![0f32; up as usize * width];
        for phase in 0..up as usize {
            let frac = phase as f64 / up as f64;
            let row = &mut table[phase * width..(phase + 1) * width];
            let mut sum = 0.0;
            let mut taps = [0f64; 2 * HALF_TAPS];
            for (k, tap) in taps.iter_mut().enumerate() {
                // Input sample at offset d = k - HALF_TAPS + 1 from floor(t).
                let d = k as f64 - HALF_TAPS as f64 + 1.0;
                let tau = frac - d;
                let x = tau / HALF_TAPS as f64;
                let window = if x.abs() >= 1.0 {
                    0.0
                } else {
                    0.42 + 0.5 * (std::f64::consts::PI * x).cos() + 0.08 * (2.0 * std::f64::consts::PI * x).cos()
                };
                *tap = fc * sinc(fc * tau) * window;
                sum += *tap;
            }
            // Unity gain at DC for every phase.
            for (r, t) in row.iter_mut().zip(taps) {
                *r = (t / sum) as f32;
            }
        }
        Self { up, down, table, buffer: Vec::new(), base: 0, next_out: 0, seen: 0 }
    }

    pub fn is_identity(&self) -> bool {
        self.up == self.down
    }

    /// Feeds input; returns the output samples that can be computed so far.
    pub fn push(&mut self, input: &[f32]) -> Vec<f32> {
        if self.is_identity() {
            return input.to_vec();
        }
        self.buffer.extend_from_slice(input);
        self.seen += input.len() as u64;
        self.drain(self.seen)
    }

    /// Ends the stream: the remaining output, so the total is `ceil(in * L / M)`.
    pub fn finish(&mut self) -> Vec<f32> {
        if self.is_identity() {
            return Vec::new();
        }
        let total_out = (self.seen * self.up).div_ceil(self.down);
        // Zeros after the end let the last outputs see their full window.
        self.buffer.extend(std::iter::repeat_n(0.0, HALF_TAPS + 1));
        let mut out = self.drain(self.seen + HALF_TAPS as u64 + 1);
        out.truncate((total_out - (self.next_out - out.len() as u64)) as usize);
        // Ready for a new stream.
        *self =
            Self { buffer: Vec::new(), base: 0, next_out: 0, seen: 0, table: std::mem::take(&mut self.table), ..*self };
        out
    }

    /// Computes outputs whose window lies within the first `available` input samples.
    fn drain(&mut self, available: u64) -> Vec<f32> {
        let width = 2 * HALF_TAPS;
        let mut out = Vec::new();
        loop {
            let pos = self.next_out * self.down; // output time, in units of 1/up input samples
            let floor = pos / self.up;
            let phase = (pos % self.up) as usize;
            // Needs input indices floor-HALF_TAPS+1 ..= floor+HALF_TAPS.
            if floor + HALF_TAPS as u64 >= available {
                break;
            }
            let row = &self.table[phase * width..(phase + 1) * width];
            let first = floor as i64 - HALF_TAPS as i64 + 1;
            let acc = if first >= self.base as i64 {
                let at = (first - self.base as i64) as usize;
                dot(row, &self.buffer[at..at + width])
            } else {
                // The window reaches before the stream start, where the signal is zero.
                let mut acc = 0f32;
                for (k, c) in row.iter().enumerate() {
                    let idx = first + k as i64;
                    if idx >= self.base as i64 {
                        acc += c * self.buffer[(idx - self.base as i64) as usize];
                    }
                }
                acc
            };
            out.push(acc);
            self.next_out += 1;
        }
        // Drop input no future output needs.
        let keep_from = ((self.next_out * self.down) / self.up).saturating_sub(HALF_TAPS as u64);
        if keep_from > self.base {
            let drop = ((keep_from - self.base) as usize).min(self.buffer.len());
            self.buffer.drain(..drop);
            self.base += drop as u64;
        }
        out
    }
}

/// Dot product with eight independent sums, which the compiler vectorizes.
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut sums = [0f32; 8];
    for (ca, cb) in a.chunks_exact(8).zip(b.chunks_exact(8)) {
        for i in 0..8 {
            sums[i] += ca[i] * cb[i];
        }
    }
    let tail: f32 = a.chunks_exact(8).remainder().iter().zip(b.chunks_exact(8).remainder()).map(|(x, y)| x * y).sum();
    sums.iter().sum::<f32>() + tail
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sine(freq: f64, rate: u32, n: usize) -> Vec<f32> {
        (0..n).map(|i| (2.0 * std::f64::consts::PI * freq * i as f64 / rate as f64).sin() as f32 * 0.5).collect()
    }

    fn run(r: &mut Resampler, input: &[f32], chunk: usize) -> Vec<f32> {
        let mut out = Vec::new();
        for c in input.chunks(chunk) {
            out.extend(r.push(c));
        }
        out.extend(r.finish());
        out
    }

    #[test]
    fn length_is_exact_and_chunking_does_not_matter() {
        let input = sine(440.0, 22_050, 22_050 + 17);
        let whole = run(&mut Resampler::new(22_050, 48_000), &input, input.len());
        assert_eq!(whole.len() as u64, ((22_050u64 + 17) * 320).div_ceil(147));
        for chunk in [1, 7, 256, 1000] {
            let parts = run(&mut Resampler::new(22_050, 48_000), &input, chunk);
            assert_eq!(parts.len(), whole.len());
            let max_diff = parts.iter().zip(&whole).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
            assert!(max_diff < 1e-6, "chunk {chunk}: {max_diff}");
        }
    }

    #[test]
    fn a_tone_keeps_its_frequency_and_level() {
        let out = run(&mut Resampler::new(22_050, 48_000), &sine(1000.0, 22_050, 22_050), 512);
        // Steady-state part: count rising zero crossings over one second of output.
        let mid = &out[4800..43_200]; // 0.8 s
        let crossings = mid.windows(2).filter(|w| w[0] < 0.0 && w[1] >= 0.0).count();
        assert!((799..=801).contains(&crossings), "{crossings} cycles in 0.8 s");
        let peak = mid.iter().fold(0f32, |m, s| m.max(s.abs()));
        assert!((peak - 0.5).abs() < 0.01, "peak {peak}");
    }

    #[test]
    fn content_above_the_lower_nyquist_is_removed_when_downsampling() {
        // 20 kHz at 48 kHz cannot exist at 22.05 kHz: it must vanish, not alias.
        let out = run(&mut Resampler::new(48_000, 22_050), &sine(20_000.0, 48_000, 48_000), 480);
        let mid = &out[2000..20_000];
        let rms = (mid.iter().map(|s| s * s).sum::<f32>() / mid.len() as f32).sqrt();
        assert!(rms < 0.01, "residual {rms}");
    }

    #[test]
    fn identity_passes_through() {
        let input = sine(300.0, 48_000, 1000);
        let mut r = Resampler::new(48_000, 48_000);
        assert!(r.is_identity());
        let out = run(&mut r, &input, 100);
        let max_diff = out.iter().zip(&input).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        assert_eq!(out.len(), input.len());
        assert_eq!(max_diff, 0.0);
    }
}
