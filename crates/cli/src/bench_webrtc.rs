//! `duplex bench-webrtc`: what the WebRTC transport's media costs per 20 ms
//! frame — Opus encoding of the bot's voice and decoding of the user's — on
//! real speech (the Piper voice at 48 kHz), at the bitrates a call may use;
//! then what whole calls cost: N loopback calls (our answering peer and our
//! caller, both in this process, ICE + DTLS + SRTP + Opus both ways, paced
//! every 20 ms) and the process's CPU time while they run.

use std::path::Path;
use std::time::{Duration, Instant};

use duplex_rtc::{FRAME_SAMPLES, OpusDecoder, OpusEncoder};

use crate::stats::Summary;
use crate::voice::{VOICE, speak};

const SPEECH: &str = "Hello! This is Duplex, speaking in real time. The weather in Paris is mild today, \
                      with a little rain in the afternoon and clear skies by the evening.";

pub async fn run(assets: &Path) -> anyhow::Result<()> {
    let pcm = speak(assets, SPEECH, 48_000)?;
    codec(&pcm)?;
    calls(&pcm).await
}

fn codec(pcm: &[i16]) -> anyhow::Result<()> {
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

/// How long each level of concurrent calls is measured.
const CALL_WINDOW: Duration = Duration::from_secs(10);

/// The process's CPU time so far (user + system), from /proc.
fn cpu_time() -> anyhow::Result<Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat")?;
    // Fields after the command name (which may hold spaces): state is 3rd, utime 14th, stime 15th.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields.get(11).and_then(|u| u.parse().ok()).unwrap_or(0)
        + fields.get(12).and_then(|s| s.parse().ok()).unwrap_or(0);
    // Linux reports clock ticks of 1/100 s (USER_HZ) on every architecture we build for.
    Ok(Duration::from_millis(ticks * 10))
}

async fn calls(pcm: &[i16]) -> anyhow::Result<()> {
    use duplex_rtc::caller::Caller;
    use duplex_rtc::peer::{CallConfig, Inbound, Outbound, answer};

    println!(
        "\nwhole calls: our caller ↔ our answering peer on loopback, 32 kbit/s speech both ways every 20 ms, {} s per level",
        CALL_WINDOW.as_secs()
    );
    let frames: Vec<Vec<i16>> = pcm.chunks_exact(FRAME_SAMPLES).map(<[i16]>::to_vec).collect();
    for n in [1usize, 10, 25] {
        let mut held = Vec::new();
        for _ in 0..n {
            let (caller, offer) = Caller::offer().await?;
            let call = answer(&offer, &CallConfig::default()).await?;
            caller.connect(&call.answer).await?;
            held.push((std::sync::Arc::new(tokio::sync::Mutex::new(caller)), call));
        }
        let stop = tokio_util::sync::CancellationToken::new();
        let heard = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let mut tasks = tokio::task::JoinSet::new();
        for (caller, call) in &mut held {
            let (caller, outbound, stop_out) = (caller.clone(), call.outbound.clone(), stop.clone());
            let frames = frames.clone();
            tasks.spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_millis(20));
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                for frame in frames.iter().cycle() {
                    tokio::select! {
                        _ = stop_out.cancelled() => return,
                        _ = tick.tick() => {}
                    }
                    let _ = caller.lock().await.send_audio(frame).await;
                    let _ = outbound.send(Outbound::Audio(frame.clone())).await;
                }
            });
            // Both ends' decoded audio is drained (and counted).
            let (mut inbound, heard_in) =
                (std::mem::replace(&mut call.inbound, tokio::sync::mpsc::channel(1).1), heard.clone());
            let stop_in = stop.clone();
            tasks.spawn(async move {
                loop {
                    tokio::select! {
                        _ = stop_in.cancelled() => return,
                        item = inbound.recv() => match item {
                            Some(Inbound::Audio(_)) => { heard_in.fetch_add(1, std::sync::atomic::Ordering::Relaxed); }
                            Some(_) => {}
                            None => return,
                        },
                    }
                }
            });
        }
        // Let the calls settle, then measure.
        tokio::time::sleep(Duration::from_secs(1)).await;
        heard.store(0, std::sync::atomic::Ordering::Relaxed);
        let (cpu0, t0) = (cpu_time()?, Instant::now());
        tokio::time::sleep(CALL_WINDOW).await;
        let (cpu, wall) = (cpu_time()? - cpu0, t0.elapsed());
        let got = heard.load(std::sync::atomic::Ordering::Relaxed);
        stop.cancel();
        while tasks.join_next().await.is_some() {}
        for (caller, call) in held {
            caller.lock().await.hang_up().await;
            call.close().await;
        }
        let share = cpu.as_secs_f64() / wall.as_secs_f64() * 100.0;
        let expected = n as f64 * wall.as_secs_f64() / 0.02;
        println!(
            "{n:3} calls: process CPU {share:5.1} % of a core, {:4.2} % per call (both ends; the server's end ≈ {:4.2} %) | frames arriving at the answering side {:.0} % of sent",
            share / n as f64,
            share / n as f64 / 2.0,
            got as f64 / expected * 100.0
        );
    }
    Ok(())
}
