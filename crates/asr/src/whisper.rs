//! Whisper on candle (CPU), as a [`Transcriber`]: each recognition thread
//! owns a model and takes turns from a bounded queue; a turn's audio is
//! transcribed greedily, without timestamps, in one 30 s window.
//!
//! Weights come from a CTranslate2 `model.bin` (what `duplex assets`
//! fetches: tiny.en) or a Hugging Face `model.safetensors` + `config.json`;
//! `tokenizer.json` beside them either way.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, mpsc as std_mpsc};

use candle_core::{D, DType, Device, IndexOp, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::whisper::{self as w, audio, model};
use duplex_speech::{AsrError, Transcriber};
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use crate::decoder::Decoder;
use crate::tokens::Tokens;
use crate::{AsrLoadError, ct2, mel};

/// More tokens than this per second of audio is a decoding loop, not speech.
const MAX_TOKENS_PER_SECOND: f64 = 6.0;
/// Turns waiting for a recognition thread; more are answered busy (a turn
/// that waits behind many others would be answered too late to matter).
const QUEUE: usize = 8;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WhisperConfig {
    /// `model.bin` (CTranslate2) or `model.safetensors` + `config.json`
    /// (Hugging Face), with `tokenizer.json`.
    pub model_dir: PathBuf,
    /// Recognition threads, each with its own copy of the model.
    pub threads: usize,
    /// Longest transcript, in tokens.
    pub max_tokens: usize,
    /// Above this probability of "no speech" a turn's transcript is empty: a
    /// cough, not words.
    pub no_speech_threshold: f32,
    /// Language of multilingual models (English-only models ignore it).
    pub language: String,
    /// Encode only the turn's length plus this much silence instead of the
    /// full 30 s window Whisper was trained on: several times faster on a
    /// short turn; 0 = always the full window.
    pub fitted_window_pad_ms: u32,
}

impl Default for WhisperConfig {
    fn default() -> Self {
        Self {
            model_dir: PathBuf::from(".cache/assets/asr/whisper-tiny.en"),
            threads: 1,
            max_tokens: 128,
            no_speech_threshold: 0.6,
            language: "en".into(),
            fitted_window_pad_ms: 4_000,
        }
    }
}

type Job = (Vec<f32>, oneshot::Sender<Result<String, AsrError>>);

/// The recognition threads.
pub struct Whisper {
    jobs: std_mpsc::SyncSender<Job>,
    describe: String,
}

impl std::fmt::Debug for Whisper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe)
    }
}

impl Whisper {
    /// Loads the model on `config.threads` threads. Blocking.
    pub fn start(config: &WhisperConfig) -> Result<Self, AsrLoadError> {
        let (jobs, rx) = std_mpsc::sync_channel::<Job>(QUEUE);
        let rx = Arc::new(Mutex::new(rx));
        let mut describe = String::new();
        for i in 0..config.threads.max(1) {
            let (ready_tx, ready_rx) = std_mpsc::sync_channel(1);
            let (config, rx) = (config.clone(), rx.clone());
            std::thread::Builder::new()
                .name(format!("asr-{i}"))
                .spawn(move || {
                    let mut recognizer = match Recognizer::load(&config) {
                        Ok(r) => {
                            let _ = ready_tx.send(Ok(r.describe()));
                            r
                        }
                        Err(e) => {
                            let _ = ready_tx.send(Err(e));
                            return;
                        }
                    };
                    loop {
                        let job = rx.lock().unwrap_or_else(|p| p.into_inner()).recv();
                        let Ok((audio, reply)) = job else { return };
                        if reply.is_closed() {
                            continue; // nobody waits for it any more
                        }
                        let result = recognizer.transcribe(&audio).map_err(|e| AsrError::Failed(e.to_string()));
                        let _ = reply.send(result);
                    }
                })
                .map_err(|e| AsrLoadError::Model(e.to_string()))?;
            describe = ready_rx.recv().map_err(|_| AsrLoadError::Model("the recognition thread died".into()))??;
        }
        Ok(Self { jobs, describe })
    }
}

impl Transcriber for Whisper {
    fn transcribe(&self, audio: Vec<f32>) -> oneshot::Receiver<Result<String, AsrError>> {
        let (tx, rx) = oneshot::channel();
        if let Err(e) = self.jobs.try_send((audio, tx)) {
            let (_, tx) = match e {
                std_mpsc::TrySendError::Full(job) | std_mpsc::TrySendError::Disconnected(job) => job,
            };
            let _ = tx.send(Err(AsrError::Busy(QUEUE)));
        }
        rx
    }

    fn describe(&self) -> String {
        self.describe.clone()
    }
}

/// Where the last transcription's time went.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Spent {
    /// Mel spectrogram and encoder.
    pub encode: std::time::Duration,
    /// Token by token decoding.
    pub decode: std::time::Duration,
    pub tokens: usize,
}

/// One loaded model and what decoding needs.
pub struct Recognizer {
    /// The last transcription's timing.
    pub spent: Spent,
    /// The text decoder with a self-attention cache (the model's own is not used).
    decoder: Decoder,
    model: model::Whisper,
    config: w::Config,
    filters: Vec<f32>,
    tokens: Tokens,
    /// The prompt: start of transcript (language, task), no timestamps.
    prompt: Vec<u32>,
    eot: u32,
    no_speech: Option<u32>,
    /// 0 or -inf per vocabulary entry: never produced.
    suppress: Tensor,
    /// Not allowed as the first token (a blank, the end).
    suppress_first: Vec<u32>,
    max_tokens: usize,
    no_speech_threshold: f32,
    /// Mel frames of silence after the audio when fitting the window (0 = full window).
    pad_frames: usize,
    source: String,
}

impl std::fmt::Debug for Recognizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.source)
    }
}

fn file(dir: &Path, name: &str) -> PathBuf {
    dir.join(name)
}

impl Recognizer {
    pub fn load(config: &WhisperConfig) -> Result<Self, AsrLoadError> {
        let dir = &config.model_dir;
        let missing = |what: &str| AsrLoadError::File {
            path: dir.display().to_string(),
            message: format!(
                "{what} not found; run `just assets` (or `duplex assets`), or set conversation.asr.model_dir"
            ),
        };
        let (tensors, wc, source, suppress_ids, suppress_begin) = if file(dir, "model.bin").exists() {
            let vars = ct2::read(&file(dir, "model.bin"))?;
            let shape = ct2::shape(&vars)?;
            let wc = w::Config {
                num_mel_bins: shape.mel_bins,
                max_source_positions: shape.audio_ctx,
                d_model: shape.d_model,
                encoder_attention_heads: shape.heads_encoder,
                encoder_layers: shape.layers_encoder,
                vocab_size: shape.vocab,
                max_target_positions: shape.text_ctx,
                decoder_attention_heads: shape.heads_decoder,
                decoder_layers: shape.layers_decoder,
                suppress_tokens: Vec::new(),
            };
            let extra: serde_json::Value = std::fs::read_to_string(file(dir, "config.json"))
                .ok()
                .and_then(|t| serde_json::from_str(&t).ok())
                .unwrap_or_default();
            let ids = |key: &str| -> Vec<u32> {
                extra[key].as_array().into_iter().flatten().filter_map(|v| v.as_u64().map(|v| v as u32)).collect()
            };
            (
                ct2::to_hf(&vars, &shape)?,
                wc,
                format!("whisper (CTranslate2, {} layers, d {})", shape.layers_encoder, shape.d_model),
                ids("suppress_ids"),
                ids("suppress_ids_begin"),
            )
        } else if file(dir, "model.safetensors").exists() {
            let text = std::fs::read_to_string(file(dir, "config.json")).map_err(|_| missing("config.json"))?;
            let wc: w::Config =
                serde_json::from_str(&text).map_err(|e| AsrLoadError::Model(format!("config.json: {e}")))?;
            let tensors = candle_core::safetensors::load(file(dir, "model.safetensors"), &Device::Cpu)?;
            let suppress = wc.suppress_tokens.clone();
            (tensors, wc, "whisper (safetensors)".to_string(), suppress, Vec::new())
        } else {
            return Err(missing("model.bin or model.safetensors"));
        };
        let tokens_path = file(dir, "tokenizer.json");
        if !tokens_path.exists() {
            return Err(missing("tokenizer.json"));
        }
        let tokens = Tokens::load(&tokens_path)?;
        let vb = VarBuilder::from_tensors(tensors, DType::F32, &Device::Cpu);
        let model = model::Whisper::load(&vb, wc.clone())?;
        // Shares the weights (the tensors are reference-counted).
        let decoder = Decoder::load(&vb, &wc)?;
        let special = |t: &str| tokens.special(t).ok_or_else(|| AsrLoadError::Model(format!("tokenizer lacks {t}")));
        let sot = special(w::SOT_TOKEN)?;
        let eot = special(w::EOT_TOKEN)?;
        let no_timestamps = special(w::NO_TIMESTAMPS_TOKEN)?;
        // English-only models have no language or task tokens.
        let multilingual = wc.vocab_size >= 51_865;
        let mut prompt = vec![sot];
        if multilingual {
            prompt.push(special(&format!("<|{}|>", config.language))?);
            prompt.push(special(w::TRANSCRIBE_TOKEN)?);
        }
        prompt.push(no_timestamps);
        let no_speech = w::NO_SPEECH_TOKENS.iter().find_map(|t| tokens.special(t));
        let mut mask = vec![0f32; wc.vocab_size];
        for id in suppress_ids.iter().copied().chain([sot, no_timestamps]).chain(no_speech) {
            if let Some(m) = mask.get_mut(id as usize) {
                *m = f32::NEG_INFINITY;
            }
        }
        // Timestamps are never wanted.
        for m in mask.iter_mut().skip(no_timestamps as usize + 1) {
            *m = f32::NEG_INFINITY;
        }
        let suppress = Tensor::new(mask.as_slice(), &Device::Cpu)?;
        let suppress_first = if suppress_begin.is_empty() { vec![220, eot] } else { suppress_begin };
        Ok(Self {
            spent: Spent::default(),
            decoder,
            filters: mel::filters(w::SAMPLE_RATE as u32, w::N_FFT, wc.num_mel_bins),
            model,
            config: wc,
            tokens,
            prompt,
            eot,
            no_speech,
            suppress,
            suppress_first,
            max_tokens: config.max_tokens.max(1),
            no_speech_threshold: config.no_speech_threshold,
            pad_frames: (config.fitted_window_pad_ms as usize * w::SAMPLE_RATE / 1000) / w::HOP_LENGTH,
            source,
        })
    }

    pub fn describe(&self) -> String {
        self.source.clone()
    }

    /// The text of `audio` (16 kHz mono); empty when it holds no speech.
    pub fn transcribe(&mut self, audio: &[f32]) -> candle_core::Result<String> {
        let started = std::time::Instant::now();
        let n_mels = self.config.num_mel_bins;
        let mel = audio::pcm_to_mel(&self.config, audio, &self.filters);
        let frames = mel.len() / n_mels;
        let window = match self.pad_frames {
            0 => w::N_FRAMES,
            // Even: the second convolution halves it.
            pad => (audio.len() / w::HOP_LENGTH + pad).div_ceil(2) * 2,
        };
        let mel = Tensor::from_vec(mel, (1, n_mels, frames), &Device::Cpu)?.narrow(
            2,
            0,
            frames.min(window).min(w::N_FRAMES),
        )?;
        let features = self.model.encoder.forward(&mel, true)?;
        let encoded = std::time::Instant::now();
        let mut tokens = self.prompt.clone();
        let mut said = Vec::new();
        let mut logprob_sum = 0f64;
        let mut no_speech_prob = 0f32;
        // People say at most ~5 tokens a second; more is the decoder looping.
        let seconds = audio.len() as f64 / w::SAMPLE_RATE as f64;
        let plausible = (seconds * MAX_TOKENS_PER_SECOND).ceil() as usize + 4;
        let limit =
            self.max_tokens.min(plausible).min(self.config.max_target_positions.saturating_sub(tokens.len() + 1));
        self.decoder.reset();
        let mut fed = 0;
        for step in 0..limit {
            // Only the tokens the decoder has not seen: the prompt, then one at a time.
            let ys = self.decoder.forward(&tokens[fed..], &features)?;
            fed = tokens.len();
            if step == 0
                && let Some(ns) = self.no_speech
            {
                // Whisper's "no speech" reading comes from the start-of-transcript position.
                let first = self.decoder.logits(&ys.i((..1, 0..1))?)?.i(0)?.i(0)?;
                let probs = candle_nn::ops::softmax(&first, D::Minus1)?;
                no_speech_prob = probs.i(ns as usize)?.to_scalar::<f32>()?;
            }
            let seq = ys.dim(1)?;
            let logits = self.decoder.logits(&ys.i((..1, seq - 1..))?)?.i(0)?.i(0)?;
            let mut logits: Vec<f32> = logits.broadcast_add(&self.suppress)?.to_vec1()?;
            if step == 0 {
                for id in &self.suppress_first {
                    if let Some(l) = logits.get_mut(*id as usize) {
                        *l = f32::NEG_INFINITY;
                    }
                }
            }
            let (best, best_logit) = logits
                .iter()
                .enumerate()
                .fold((0usize, f32::NEG_INFINITY), |acc, (i, l)| if *l > acc.1 { (i, *l) } else { acc });
            let log_norm = logits.iter().map(|l| ((l - best_logit) as f64).exp()).sum::<f64>().ln();
            let next = best as u32;
            if next == self.eot {
                break;
            }
            logprob_sum -= log_norm;
            tokens.push(next);
            said.push(next);
            if let Some(cut) = repeated_tail(&said) {
                // The decoder went round a loop ("… France? What is the capital of France?"): keep one.
                said.truncate(cut);
                break;
            }
        }
        self.spent = Spent { encode: encoded - started, decode: encoded.elapsed(), tokens: said.len() };
        let avg_logprob = if said.is_empty() { 0.0 } else { logprob_sum / said.len() as f64 };
        tracing::debug!(no_speech_prob, avg_logprob, tokens = said.len(), "transcribed");
        // Whisper itself also wants unlikely tokens (avg < -1) before it calls a
        // window silent; turns here were already cut by the VAD, and on a cough
        // or a breath tiny.en says "you" with some confidence, so the
        // no-speech reading decides alone.
        if no_speech_prob > self.no_speech_threshold {
            return Ok(String::new());
        }
        Ok(clean(&self.tokens.decode(&said)))
    }
}

/// Where a repetition at the end of `said` starts: its last `k` tokens
/// (k ≥ 3) equal the `k` before them.
fn repeated_tail(said: &[u32]) -> Option<usize> {
    let n = said.len();
    (3..=n / 2).find(|&k| said[n - k..] == said[n - 2 * k..n - k]).map(|k| n - k)
}

/// The transcript without sound annotations (`(coughs)`, `[BLANK_AUDIO]`,
/// `*sigh*`); empty when nothing but those (or punctuation) is left.
pub fn clean(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut depth: HashMap<char, i32> = HashMap::new();
    for c in text.chars() {
        match c {
            '(' | '[' => *depth.entry(c).or_default() += 1,
            ')' => *depth.entry('(').or_default() -= 1,
            ']' => *depth.entry('[').or_default() -= 1,
            '*' => *depth.entry('*').or_default() ^= 1,
            _ if depth.values().all(|d| *d <= 0) => out.push(c),
            _ => {}
        }
    }
    let out = out.split_whitespace().collect::<Vec<_>>().join(" ");
    if out.chars().any(char::is_alphanumeric) { out } else { String::new() }
}

#[cfg(test)]
mod tests {
    use super::clean;

    #[test]
    fn a_decoding_loop_is_cut_to_one_pass() {
        use super::repeated_tail;
        assert_eq!(repeated_tail(&[1, 2, 3, 4, 2, 3, 4]), Some(4));
        assert_eq!(repeated_tail(&[1, 2, 3, 4, 5, 6]), None);
        assert_eq!(repeated_tail(&[7, 7]), None, "short repeats are words (\"no, no\")");
    }

    #[test]
    fn annotations_are_not_words() {
        assert_eq!(clean(" Hello there."), "Hello there.");
        assert_eq!(clean(" (coughs)"), "");
        assert_eq!(clean("[BLANK_AUDIO]"), "");
        assert_eq!(clean(" *sigh* okay then"), "okay then");
        assert_eq!(clean(" ..."), "");
    }

    /// The cached decoder computes what candle-transformers' decoder does,
    /// token by token instead of all tokens at every step (needs `just assets`).
    #[test]
    fn the_cached_decoder_matches_the_full_recomputation() {
        use super::{Recognizer, WhisperConfig};
        use candle_core::{Device, IndexOp, Tensor};
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.cache/assets/asr/whisper-tiny.en");
        assert!(dir.join("model.bin").exists(), "run `just assets` first");
        let mut r = Recognizer::load(&WhisperConfig { model_dir: dir, ..WhisperConfig::default() }).unwrap();
        // Features of a second of a tone (any audio will do).
        let audio: Vec<f32> = (0..16_000).map(|i| (i as f32 * 0.05).sin() * 0.3).collect();
        let n_mels = r.config.num_mel_bins;
        let mel = candle_transformers::models::whisper::audio::pcm_to_mel(&r.config, &audio, &r.filters);
        let frames = mel.len() / n_mels;
        let mel = Tensor::from_vec(mel, (1, n_mels, frames), &Device::Cpu).unwrap().narrow(2, 0, 300).unwrap();
        let features = r.model.encoder.forward(&mel, true).unwrap();
        let mut tokens = r.prompt.clone();
        tokens.extend([2061, 318, 262, 6193]);
        let full = {
            let input = Tensor::new(tokens.as_slice(), &Device::Cpu).unwrap().unsqueeze(0).unwrap();
            r.model.decoder.forward(&input, &features, true).unwrap()
        };
        r.decoder.reset();
        let prompt = r.prompt.len();
        let mut cached = vec![r.decoder.forward(&tokens[..prompt], &features).unwrap()];
        for t in &tokens[prompt..] {
            cached.push(r.decoder.forward(&[*t], &features).unwrap());
        }
        let cached = Tensor::cat(&cached, 1).unwrap();
        let diff = (full - &cached).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap();
        let diff: f32 = diff.to_scalar().unwrap();
        assert!(diff < 1e-3, "largest difference {diff}");
        // And the scores of the last position agree.
        let last = cached.i((.., tokens.len() - 1..)).unwrap();
        assert_eq!(r.decoder.logits(&last).unwrap().dims(), &[1, 1, r.config.vocab_size]);
    }
}
