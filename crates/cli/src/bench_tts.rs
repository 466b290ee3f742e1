//! `duplex bench-tts`: the Piper voice on this machine. Starts the worker
//! (with the voice, one engine thread per core) and the orchestrator as child
//! processes and measures, in one run:
//!
//! - first audio at the worker (chunk sent → first frame) for a short first
//!   clause and for a 110-character sentence without a break;
//! - first audio through the orchestrator (WebSocket text → first frame);
//! - concurrent sessions: N sessions each synthesize a paragraph at once; a
//!   session has a playback gap if any frame arrives after it would have been
//!   played (playback starting at its first frame plus a 150 ms buffer); the
//!   real-time factor per session is synthesis wall time / audio duration;
//! - engine overhead: the full engine path (segmenting, phonemizing, inference,
//!   fades, resampling, framing on an engine thread) against bare ONNX Runtime
//!   inference of the same phoneme ids, in this process.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use duplex_orchestrator::protocol::{AudioFormat, ServerMessage};
use duplex_proto::TtsServiceClient;
use duplex_proto::tts::{AudioFrame, StartSessionRequest, TextChunk};
use duplex_tts::{Engine, EngineHost, JobEvent, SynthesisParams};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

use crate::bench::{num_cpus, start_stack};
use crate::client::{Client, Event};
use crate::stats::Summary;

const VOICE: &str = "en_US-joe-medium";
const SHORT: &str = "Sure, I can help with that right away.";
/// 110 characters, no clause break: one chunk.
const LONG: &str =
    "The committee reviewed every single proposal very carefully before announcing the final decision to the crowd.";
/// About 12 s of speech.
const PARAGRAPH: &str = "Good morning and welcome back. Today we will look at how streaming speech works, \
why the first words matter most, and what happens when someone interrupts. Each sentence is synthesized \
as soon as its text is complete, so the listener hears the answer while the rest is still being written.";
/// Playback buffer assumed by the gap check.
const PLAYBACK_BUFFER: Duration = Duration::from_millis(150);

#[derive(Debug, Clone)]
pub struct TtsBenchArgs {
    pub assets: PathBuf,
    pub reps: usize,
    pub max_sessions: usize,
}

fn worker_yaml(assets: &std::path::Path) -> String {
    format!(
        "default_model: {VOICE}\npreload: [{VOICE}]\nonnxruntime_library: {lib}\nmodels:\n  - engine: piper\n    model_id: {VOICE}\n    voice_dir: {voice}\n    threads: 0\n",
        lib = assets.join("onnxruntime/libonnxruntime.so.1.31.1").display(),
        voice = assets.join("voices").join(VOICE).display(),
    )
}

struct Stream {
    tx: mpsc::Sender<TextChunk>,
    frames: tonic::Streaming<AudioFrame>,
    id: String,
}

async fn open_session(client: &mut TtsServiceClient<Channel>, id: &str, first: &str) -> anyhow::Result<Stream> {
    client.start_session(StartSessionRequest { session_id: id.into(), ..Default::default() }).await?;
    let (tx, rx) = mpsc::channel(8);
    tx.send(chunk(id, first)).await?;
    let frames = client.synthesize(ReceiverStream::new(rx)).await?.into_inner();
    Ok(Stream { tx, frames, id: id.into() })
}

fn chunk(id: &str, text: &str) -> TextChunk {
    TextChunk { session_id: id.into(), text: text.into(), is_final: true, ..Default::default() }
}

/// Arrival times of every frame of one utterance (final included) and its audio length.
async fn read_utterance(s: &mut Stream) -> anyhow::Result<(Vec<Instant>, Duration)> {
    let mut times = Vec::new();
    let mut samples = 0;
    loop {
        let f = s.frames.message().await?.context("stream ended early")?;
        times.push(Instant::now());
        samples += f.audio_data.len() / 2;
        if f.is_final {
            return Ok((times, Duration::from_secs_f64(samples as f64 / 48_000.0)));
        }
    }
}

async fn worker_first_audio(
    client: &mut TtsServiceClient<Channel>,
    text: &str,
    reps: usize,
) -> anyhow::Result<Summary> {
    let mut s = open_session(client, &format!("fa-{}", text.len()), text).await?;
    let mut sent = Instant::now();
    let mut ms = Vec::new();
    for rep in 0..reps {
        let (times, _) = read_utterance(&mut s).await?;
        ms.push((times[0] - sent).as_secs_f64() * 1e3);
        if rep + 1 < reps {
            sent = Instant::now();
            s.tx.send(chunk(&s.id, text)).await?;
        }
    }
    client.end_session(duplex_proto::tts::EndSessionRequest { session_id: s.id.clone() }).await?;
    Ok(Summary::of(&mut ms))
}

async fn orchestrator_first_audio(url: &str, reps: usize) -> anyhow::Result<Summary> {
    let mut c = Client::connect(url, AudioFormat::Binary).await?;
    c.session_start().await?;
    let mut ms = Vec::new();
    for _ in 0..reps {
        let sent = Instant::now();
        c.send_text(SHORT, true).await?;
        loop {
            match c.next().await? {
                Event::Audio { at, .. } => {
                    ms.push((at - sent).as_secs_f64() * 1e3);
                    break;
                }
                Event::Message { message: ServerMessage::Error { message, .. }, .. } => anyhow::bail!("{message}"),
                Event::Closed(_) => anyhow::bail!("closed"),
                _ => {}
            }
        }
        // Let the turn finish (real-time playback) so the next one starts idle.
        loop {
            if let Event::Message { message: ServerMessage::UtteranceEnd { .. }, .. } = c.next().await? {
                break;
            }
        }
    }
    Ok(Summary::of(&mut ms))
}

/// One concurrency level: sessions with a playback gap, per-session RTF, first audio.
async fn concurrent(grpc: &str, n: usize, round: usize) -> anyhow::Result<(usize, Summary, Summary)> {
    let mut set = tokio::task::JoinSet::new();
    for i in 0..n {
        let grpc = grpc.to_string();
        set.spawn(async move {
            tokio::time::sleep(Duration::from_millis((i * 250 / n.max(1)) as u64)).await;
            let mut client = TtsServiceClient::connect(format!("http://{grpc}")).await?;
            let sent = Instant::now();
            let mut s = open_session(&mut client, &format!("c{round}-{i}"), PARAGRAPH).await?;
            let (times, audio) = read_utterance(&mut s).await?;
            drop(s.tx);
            client.end_session(duplex_proto::tts::EndSessionRequest { session_id: s.id.clone() }).await?;
            let start = times[0] + PLAYBACK_BUFFER;
            let late = times.iter().enumerate().find(|(k, t)| **t > start + duplex_audio::FRAME_DURATION * *k as u32);
            if let Some((k, t)) = late
                && std::env::var_os("DUPLEX_BENCH_DUMP").is_some()
            {
                let by = *t - (start + duplex_audio::FRAME_DURATION * k as u32);
                eprintln!("session {i}: frame {k} of {} late by {:.0} ms", times.len(), by.as_secs_f64() * 1e3);
            }
            let gap = late.is_some();
            let rtf = (*times.last().expect("frames") - sent).as_secs_f64() / audio.as_secs_f64();
            let first = (times[0] - sent).as_secs_f64() * 1e3;
            anyhow::Ok((gap, rtf, first))
        });
    }
    let (mut gaps, mut rtf, mut first) = (0, Vec::new(), Vec::new());
    while let Some(r) = set.join_next().await {
        let (gap, r, f) = r??;
        gaps += gap as usize;
        rtf.push(r);
        first.push(f);
    }
    Ok((gaps, Summary::of(&mut rtf), Summary::of(&mut first)))
}

/// Full engine path vs bare inference, in this process, one thread each.
fn engine_overhead(args: &TtsBenchArgs) -> anyhow::Result<(f64, f64)> {
    duplex_piper::init_runtime(&args.assets.join("onnxruntime/libonnxruntime.so.1.31.1"))?;
    let config: duplex_piper::PiperConfig = serde_yaml::from_str(&format!(
        "model_id: {VOICE}\nvoice_dir: {}\nthreads: 1\n",
        args.assets.join("voices").join(VOICE).display()
    ))?;
    let engine = duplex_piper::PiperEngine::load(&config)?;
    let ids = engine.chunk_ids(PARAGRAPH)?;
    let cfg = config.clone();
    let host =
        EngineHost::start(VOICE, 1, move || Ok(Box::new(duplex_piper::PiperEngine::load(&cfg)?) as Box<dyn Engine>))?;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let (mut bare, mut full) = (f64::MAX, f64::MAX);
    for _ in 0..5 {
        let t = Instant::now();
        for chunk in &ids {
            engine.infer_ids(chunk.clone())?;
        }
        bare = bare.min(t.elapsed().as_secs_f64());
        let t = Instant::now();
        rt.block_on(async {
            let mut job = host.start_job(SynthesisParams::default()).await?;
            job.handle().push_text(PARAGRAPH.into()).await?;
            job.handle().finish().await?;
            while let Some(ev) = job.next().await {
                if let JobEvent::End { .. } = ev {
                    break;
                }
            }
            anyhow::Ok(())
        })?;
        full = full.min(t.elapsed().as_secs_f64());
    }
    Ok((bare * 1e3, full * 1e3))
}

pub async fn run(args: TtsBenchArgs) -> anyhow::Result<()> {
    let config = std::env::temp_dir().join(format!("duplex-bench-tts-{}.yaml", std::process::id()));
    std::fs::write(&config, worker_yaml(&args.assets))?;
    let stack = start_stack(args.max_sessions + 10, Some(&config)).await?;
    let mut client = TtsServiceClient::connect(format!("http://{}", stack.grpc_addr)).await?;
    println!("duplex bench-tts: Piper {VOICE}, {} cores, engine threads = cores, 1 ONNX thread each", num_cpus());
    println!("all times in ms\n");

    let short = worker_first_audio(&mut client, SHORT, args.reps).await?;
    println!("worker first audio, short first clause ({:?}):  {short}", SHORT.split(',').next().unwrap_or(SHORT));
    let long = worker_first_audio(&mut client, LONG, args.reps).await?;
    println!("worker first audio, {}-char sentence:          {long}", LONG.len());
    let through = orchestrator_first_audio(&stack.url, args.reps.div_ceil(2)).await?;
    println!("orchestrator first audio, short clause:         {through}");

    println!("\nconcurrent sessions (paragraph of ~12 s each, playback buffer {} ms):", PLAYBACK_BUFFER.as_millis());
    println!("| sessions | with gaps | RTF p50 / max | first audio p50 / p95 |");
    println!("|---:|---:|---|---|");
    let mut realtime = 0;
    let mut n = 1;
    let mut round = 0;
    while n <= args.max_sessions {
        let (gaps, rtf, first) = concurrent(&stack.grpc_addr, n, round).await?;
        println!("| {n} | {gaps} | {:.3} / {:.3} | {:.0} / {:.0} |", rtf.p50, rtf.max, first.p50, first.p95);
        if gaps > 0 {
            break;
        }
        realtime = n;
        round += 1;
        n = if n < 4 { n * 2 } else { n + 4 };
    }
    println!("most concurrent sessions with no playback gap: {realtime}");
    drop(stack);

    let assets = args.clone();
    let (bare, full) = tokio::task::spawn_blocking(move || engine_overhead(&assets)).await??;
    println!(
        "\nengine path {full:.0} ms vs bare ONNX Runtime inference {bare:.0} ms for the paragraph: overhead {:+.1}%",
        (full / bare - 1.0) * 100.0
    );
    let _ = std::fs::remove_file(&config);
    Ok(())
}
