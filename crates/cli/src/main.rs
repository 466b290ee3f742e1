//! `duplex`: demo, talk, bench and check-config.

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::{Parser, Subcommand};
use duplex_orchestrator::protocol::AudioFormat;

#[derive(Debug, Parser)]
#[command(version, about = "Duplex: real-time full-duplex voice chat")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Run the orchestrator and a worker in one process (http://localhost:8080).
    Demo {
        #[arg(long, default_value = "configs/worker.yaml")]
        worker_config: PathBuf,
        #[arg(long, default_value = "configs/orchestrator.yaml")]
        orchestrator_config: PathBuf,
    },
    /// Speak text through a running orchestrator; save or play the reply.
    Talk {
        /// Text to speak; without it, lines are read from stdin (/pause /resume /stop /quit).
        text: Option<String>,
        #[arg(long, default_value = "ws://127.0.0.1:8080/ws")]
        url: String,
        /// Save the reply as a 48 kHz mono WAV file.
        #[arg(long)]
        out: Option<PathBuf>,
        /// Play the reply (needs aplay or paplay).
        #[arg(long)]
        play: bool,
        /// Speak into the conversation: stream this WAV file as microphone audio.
        #[arg(long, conflicts_with_all = ["text", "say"])]
        mic: Option<PathBuf>,
        /// Speak into the conversation: this text, said by the Piper voice, as microphone audio.
        #[arg(long, conflicts_with = "text")]
        say: Option<String>,
        /// Where `--say` finds the voice.
        #[arg(long, default_value = ".cache/assets", env = "DUPLEX_ASSETS")]
        assets: PathBuf,
    },
    /// Measure first audio, control-to-silence and jitter at several concurrencies.
    Bench {
        /// Concurrency levels.
        #[arg(long, value_delimiter = ',', default_value = "1,10,100,500")]
        sessions: Vec<usize>,
        /// Use a running orchestrator instead of starting one.
        #[arg(long)]
        url: Option<String>,
        /// Receive audio as base64 JSON instead of binary frames.
        #[arg(long)]
        json: bool,
    },
    /// Hold a conversation load on the mock stack for minutes; sample memory, descriptors, tasks, latency.
    Soak {
        #[arg(long, default_value_t = 10.0)]
        minutes: f64,
        /// Concurrent conversations (each reconnects every few utterances).
        #[arg(long, default_value_t = 50)]
        sessions: usize,
        /// Seconds between samples.
        #[arg(long, default_value_t = 60)]
        sample_s: u64,
    },
    /// Measure the Piper voice: first audio, concurrent real-time sessions, engine overhead.
    BenchTts {
        #[arg(long, default_value = ".cache/assets", env = "DUPLEX_ASSETS")]
        assets: PathBuf,
        /// Repetitions of each first-audio measurement.
        #[arg(long, default_value_t = 20)]
        reps: usize,
        /// Stop raising concurrency here.
        #[arg(long, default_value_t = 32)]
        max_sessions: usize,
    },
    /// Measure routing: selection cost, registry scan, dead-worker detection.
    /// Measure the spoken conversation: VAD, ASR, turn latency, barge-in.
    BenchDuplex {
        #[arg(long, default_value = ".cache/assets", env = "DUPLEX_ASSETS")]
        assets: PathBuf,
        /// Question-and-interruption rounds.
        #[arg(long, default_value_t = 10)]
        turns: usize,
        /// What to measure: any of vad, asr, llm, conversation (comma-separated).
        #[arg(long, value_delimiter = ',', default_value = "vad,asr,llm,conversation")]
        parts: Vec<String>,
    },
    /// The Kyutai TTS model's step time per batch size (random weights of its shapes).
    BenchGpu(duplex_cli::bench_gpu::GpuBenchArgs),
    /// Opus cost per 20 ms frame and the CPU of whole WebRTC calls.
    BenchWebrtc {
        #[arg(long, default_value = ".cache/assets", env = "DUPLEX_ASSETS")]
        assets: PathBuf,
    },
    BenchRouting {
        #[arg(long, default_value = "redis://127.0.0.1:6379", env = "REDIS_URL")]
        redis: String,
    },
    /// Fetch and verify the ONNX Runtime library and the default Piper voice.
    Assets {
        /// Cache directory.
        #[arg(long, default_value = ".cache/assets", env = "DUPLEX_ASSETS")]
        dir: PathBuf,
        /// Also fetch a named voice from the public Piper repository (needs internet).
        #[arg(long)]
        voice: Option<String>,
    },
    /// Validate config files (unknown keys, bad values) and print the effective config.
    CheckConfig {
        #[arg(long, default_value = "configs/worker.yaml")]
        worker: PathBuf,
        #[arg(long, default_value = "configs/orchestrator.yaml")]
        orchestrator: PathBuf,
        /// Print the effective configs after environment overrides.
        #[arg(long)]
        print: bool,
    },
}

fn env(k: &str) -> Option<String> {
    std::env::var(k).ok()
}

fn existing(p: &Path) -> Option<&Path> {
    p.exists().then_some(p)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Cmd::Demo { worker_config, orchestrator_config } => {
            let worker = duplex_worker::Config::load(existing(&worker_config), env)?;
            let mut orch = duplex_orchestrator::Config::load(existing(&orchestrator_config), env)?;
            let _telemetry = duplex_telemetry::init(&orch.log, &orch.traces, "duplex")?;
            let shutdown = duplex_telemetry::shutdown_on_signals();
            let w = duplex_worker::spawn(worker).await?;
            orch.routing.static_worker_addr = format!("grpc://127.0.0.1:{}", w.addr.port());
            let o = duplex_orchestrator::spawn(orch).await?;
            let port = o.addr.port();
            eprintln!("\nDuplex demo running:");
            eprintln!("  page / WebSocket  http://localhost:{port}/  (ws://localhost:{port}/ws)");
            eprintln!("  try               cargo run -q -p duplex-cli -- talk \"Hello from Duplex\" --out hello.wav");
            eprintln!("  probes            http://localhost:{port}/ready  /metrics");
            eprintln!("  worker (gRPC)     {}", w.addr);
            eprintln!("Ctrl-C to stop.\n");
            shutdown.cancelled().await;
            o.shutdown.cancel();
            let _ = o.join.await;
            w.shutdown.cancel();
            let _ = w.join.await;
            Ok(())
        }
        Cmd::Talk { text, url, out, play, mic, say, assets } => {
            let (mic, mic_rate_hz) = match (mic, say) {
                (Some(path), _) => {
                    let (pcm, rate) = duplex_cli::talk::read_wav(&path)?;
                    (Some(pcm), rate)
                }
                (None, Some(text)) => (Some(duplex_cli::voice::speak(&assets, &text, 16_000)?), 16_000),
                (None, None) => (None, 16_000),
            };
            duplex_cli::talk::run(duplex_cli::talk::TalkArgs { url, text, out, play, mic, mic_rate_hz }).await
        }
        Cmd::Bench { sessions, url, json } => {
            let lookahead = duplex_orchestrator::Config::default().playout.lookahead_frames as usize;
            let audio_format = if json { AudioFormat::Json } else { AudioFormat::Binary };
            let args =
                duplex_cli::bench::BenchArgs { levels: sessions, url, audio_format, lookahead_frames: lookahead };
            let reports = duplex_cli::bench::run(args).await?;
            let failed: usize = reports.iter().map(|r| r.failed).sum();
            anyhow::ensure!(failed == 0, "{failed} benchmark sessions failed");
            Ok(())
        }
        Cmd::Soak { minutes, sessions, sample_s } => {
            let every = std::time::Duration::from_secs(sample_s.max(1));
            duplex_cli::soak::run(duplex_cli::soak::SoakArgs { minutes, sessions, sample_every: every }).await
        }
        Cmd::BenchTts { assets, reps, max_sessions } => {
            duplex_cli::bench_tts::run(duplex_cli::bench_tts::TtsBenchArgs { assets, reps, max_sessions }).await
        }
        Cmd::BenchDuplex { assets, turns, parts } => {
            duplex_cli::bench_duplex::run(duplex_cli::bench_duplex::DuplexBenchArgs { assets, turns, parts }).await
        }
        Cmd::BenchRouting { redis } => duplex_cli::bench_routing::run(&redis).await,
        Cmd::BenchGpu(args) => duplex_cli::bench_gpu::run(args),
        Cmd::BenchWebrtc { assets } => duplex_cli::bench_webrtc::run(&assets).await,
        Cmd::Assets { dir, voice } => {
            duplex_cli::assets::fetch_all(&dir)?;
            if let Some(name) = voice {
                duplex_cli::assets::fetch_voice(&dir, &name)?;
            }
            Ok(())
        }
        Cmd::CheckConfig { worker, orchestrator, print } => {
            let w = duplex_worker::Config::load(Some(&worker), env).with_context(|| format!("{}", worker.display()))?;
            println!("{}: ok", worker.display());
            let o = duplex_orchestrator::Config::load(Some(&orchestrator), env)
                .with_context(|| format!("{}", orchestrator.display()))?;
            println!("{}: ok", orchestrator.display());
            if print {
                println!("--- {}\n{}", worker.display(), serde_yaml::to_string(&w)?);
                println!("--- {}\n{}", orchestrator.display(), serde_yaml::to_string(&o)?);
            }
            Ok(())
        }
    }
}
