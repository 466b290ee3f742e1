//! The GPU benchmark (`duplex bench-gpu`, or the lean `kyutai-bench` binary
//! for machines without the rest of Duplex's libraries): the Kyutai TTS model's step time at growing
//! batch sizes, against the 80 ms a step may take to stay real time, on
//! random weights of the published model's shapes (written once into a
//! directory; same shapes, same compute as the real checkpoint).
//!
//! Per batch: step time p50/p95 (backbone + depth transformer with top-k
//! sampling, every slot active, then the Mimi decode of one frame per slot),
//! the real-time factor, and the first-audio time it implies: audio starts
//! `audio_delay + acoustic delay` steps after the text (18 for tts-1.6b), so a
//! session joining a batch waits that many steps.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use moshi::candle::{DType, Device, Tensor};

use crate::codec::{self, Codec};
use crate::{Config, Model, Sampler, weights};

/// 80 ms of audio per step.
const STEP_BUDGET: Duration = Duration::from_millis(80);
/// Steps before a session's first audio: 16 (1.28 s text-to-audio delay) + 2 (acoustic delay).
const STEPS_TO_FIRST_AUDIO: usize = 18;

#[derive(Debug, Clone)]
pub struct BenchArgs {
    /// Where the random weights are written (once) and read.
    pub weights: PathBuf,
    /// `full` (tts-1.6b-en_fr shapes) or `tiny`.
    pub size: String,
    pub batches: Vec<usize>,
    /// Timed steps per batch (after 3 warm-up steps).
    pub steps: usize,
    /// `cuda` (GPU 0) or `cpu`.
    pub device: String,
}

impl Default for BenchArgs {
    fn default() -> Self {
        Self {
            weights: PathBuf::from(".cache/bench-gpu"),
            size: "full".into(),
            batches: vec![1, 8, 16, 32, 64, 128],
            steps: 20,
            device: "cuda".into(),
        }
    }
}

/// p50 and p95 (nearest rank) of milliseconds.
fn percentiles(samples: &mut [f64]) -> (f64, f64) {
    samples.sort_by(|a, b| a.total_cmp(b));
    let at = |p: f64| samples[((p * samples.len() as f64).ceil() as usize).clamp(1, samples.len()) - 1];
    (at(0.50), at(0.95))
}

fn gpu_memory() -> Option<String> {
    let out = std::process::Command::new("nvidia-smi")
        .args(["--query-gpu=name,memory.used,memory.total", "--format=csv,noheader"])
        .output()
        .ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

pub fn run(args: BenchArgs) -> Result<(), Box<dyn std::error::Error>> {
    let device = match args.device.as_str() {
        "cpu" => Device::Cpu,
        "cuda" => Device::new_cuda(0)
            .map_err(|e| format!("no CUDA device ({e}); build with `just build-cuda`, or pass --device cpu"))?,
        other => return Err(format!("--device is cuda or cpu, not {other:?}").into()),
    };
    let (config, codec_config) = match args.size.as_str() {
        "full" => (Config::tts_1_6b_en_fr(), codec::published_config(32)),
        "tiny" => (Config::tiny(), codec::tiny_config(4, 16)),
        other => return Err(format!("--size is full or tiny, not {other:?}").into()),
    };
    let dir = args.weights.join(&args.size);
    let current = std::fs::read_to_string(dir.join("config.json")).ok();
    if current.as_deref() != Some(serde_json::to_string_pretty(&config)?.as_str()) {
        println!("bench-gpu: writing random {} weights to {} (once)", args.size, dir.display());
        let t = Instant::now();
        weights::write_random_as(&config, &dir, 7, DType::BF16)?;
        codec::write_random(codec_config.clone(), &dir.join("mimi.safetensors"))?;
        println!("bench-gpu: written in {:.1} s", t.elapsed().as_secs_f64());
    }
    println!(
        "bench-gpu: {} model, {} layers × {} + depth {} layers × {} over {} codebooks, device {:?}, {} timed steps per batch",
        args.size,
        config.num_layers,
        config.dim,
        config.depformer_num_layers,
        config.depformer_dim,
        config.dep_q,
        args.device,
        args.steps
    );
    let voice_data: Vec<f32> = (0..config.conditioning.voice_frames * config.conditioning.voice_dim)
        .map(|i| (i as f32 * 0.013).sin())
        .collect();
    let voice =
        Tensor::from_vec(voice_data, (config.conditioning.voice_frames, config.conditioning.voice_dim), &Device::Cpu)?;
    let mut largest_real_time = None;
    for &batch in &args.batches {
        let t = Instant::now();
        let mut model = match Model::load(&dir, batch, &device) {
            Ok(m) => m,
            Err(e) => {
                println!("batch {batch:4}: could not load ({e})");
                break;
            }
        };
        let mut codec = Codec::load_with(codec_config.clone(), &dir.join("mimi.safetensors"), batch, &device)?;
        let load_s = t.elapsed().as_secs_f64();
        for slot in 0..batch {
            model.reset_slot(slot, &voice)?;
        }
        let mut sampler = Sampler::top_k(250, 0.6, 11);
        let mut times = Vec::new();
        for step in 0..args.steps + 3 {
            let text: Vec<i64> = (0..batch).map(|s| ((s * 7 + step) % config.text_card) as i64).collect();
            let audio: Vec<Vec<i64>> =
                (0..batch).map(|s| (0..config.n_q).map(|k| ((s + k + step) % config.card) as i64).collect()).collect();
            let t = Instant::now();
            let (logits, hidden) = model.backbone(&text, &audio, &vec![2; batch])?;
            let _text = sampler.sample(&logits)?;
            let codes = model.depformer(&hidden, &text, &mut sampler)?;
            for (slot, frame) in codes.iter().enumerate() {
                codec.decode(slot, frame)?;
            }
            if step >= 3 {
                times.push(t.elapsed().as_secs_f64() * 1e3);
            }
        }
        let (p50, p95) = percentiles(&mut times);
        let real_time = p95 <= STEP_BUDGET.as_secs_f64() * 1e3;
        if real_time {
            largest_real_time = Some((batch, p50, p95));
        }
        println!(
            "batch {batch:4}: step p50 {:7.1} ms p95 {:7.1} ms | {:5.2}× real time | first audio ≈ {:6.0} / {:6.0} ms (p50/p95) | load {load_s:.1} s | {}",
            p50,
            p95,
            STEP_BUDGET.as_secs_f64() * 1e3 / p50,
            p50 * STEPS_TO_FIRST_AUDIO as f64,
            p95 * STEPS_TO_FIRST_AUDIO as f64,
            if real_time { "real time" } else { "too slow" }
        );
        if let Some(memory) = gpu_memory().filter(|_| device.is_cuda()) {
            println!("            GPU: {memory}");
        }
        if !real_time {
            break;
        }
    }
    match largest_real_time {
        Some((batch, p50, p95)) => println!(
            "largest real-time batch: {batch} (step p95 {p95:.1} ms ≤ 80 ms); first audio there ≈ {:.0} / {:.0} ms p50/p95",
            p50 * STEPS_TO_FIRST_AUDIO as f64,
            p95 * STEPS_TO_FIRST_AUDIO as f64
        ),
        None => println!("no batch size kept up with real time on this device"),
    }
    Ok(())
}
