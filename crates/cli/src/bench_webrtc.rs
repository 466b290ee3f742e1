//! `duplex bench-webrtc`: what the WebRTC transport's media costs per 20 ms
//! frame — Opus encoding of the bot's voice and decoding of the user's — on
//! real speech (the Piper voice at 48 kHz), at the bitrates a call may use.

use std::path::Path;
use std::time::Instant;

use duplex_rtc::{FRAME_SAMPLES, OpusDecoder, OpusEncoder};

use crate::stats::Summary;
use crate::voice::{VOICE, speak};

const SPEECH: &str = "Hello! This is Duplex, speaking in real time. The weather in Paris is mild today, \
                      with a little rain in the afternoon and clear skies by the evening.";

pub fn run(assets: &Path) -> anyhow::Result<()> {
    let pcm = speak(assets, SPEECH, 48_000)?;
    let frames: Vec<&[i16]> = pcm.chunks_exact(FRAME_SAMPLES).collect();
    println!(
        "duplex bench-webrtc: Opus, 48 kHz mono, 20 ms frames of {VOICE} speech ({} frames, {:.1} s), one thread",
        frames.len(),
        frames.len() as f64 * 0.02
    );
    for bitrate in [16_000, 32_000, 64_000] {
        let mut enc = OpusEncoder::new(bitrate)?;
        let mut dec = OpusDecoder::new()?;
        let (mut encode_us, mut decode_us, mut bytes) = (Vec::new(), Vec::new(), 0usize);
        // Three passes; the first warms caches and is not counted.
        for pass in 0..3 {
            for frame in &frames {
                let t = Instant::now();
                let packet = enc.encode(frame)?;
                let e = t.elapsed();
                let t = Instant::now();
                let out = dec.decode(&packet)?;
                let d = t.elapsed();
                anyhow::ensure!(out.len() == FRAME_SAMPLES, "decoded {} samples", out.len());
                if pass > 0 {
                    encode_us.push(e.as_secs_f64() * 1e6);
                    decode_us.push(d.as_secs_f64() * 1e6);
                    bytes += packet.len();
                }
            }
        }
        let n = encode_us.len();
        let (enc_s, dec_s) = (Summary::of(&mut encode_us), Summary::of(&mut decode_us));
        // Both directions of one call: one encode and one decode per 20 ms.
        let cpu_share = (enc_s.p50 + dec_s.p50) / 20_000.0 * 100.0;
        println!(
            "{:2} kbit/s: encode p50 {:5.1} µs p99 {:5.1} µs | decode p50 {:5.1} µs p99 {:5.1} µs | {:3} bytes/packet | one call's media {:.2} % of a core",
            bitrate / 1000,
            enc_s.p50,
            enc_s.p99,
            dec_s.p50,
            dec_s.p99,
            bytes / n,
            cpu_share
        );
    }
    Ok(())
}
