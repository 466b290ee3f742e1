//! The Piper engine and one utterance's synthesis.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use duplex_tts::text::{Segmenter, normalize};
use duplex_tts::{Engine, EngineError, Interrupt, ModelDescriptor, Step, Synthesis, SynthesisParams};
use ort::session::{RunOptions, Session};
use ort::value::Tensor;
use serde::{Deserialize, Serialize};

use crate::voice::{VoiceConfig, VoiceFiles};
use crate::{PiperError, espeak};

/// Fade at both ends of every chunk, so joins never click.
const FADE_MS: u32 = 5;
/// Under time pressure a chunk is cut at a word boundary to what can be
/// synthesized within this share of the listener's slack...
const SLACK_SHARE: f64 = 0.6;
/// ...but never below this many characters (tiny pieces sound choppy).
const MIN_PRESSED_CHARS: usize = 24;
/// Clause punctuation kept in the phoneme string (the voices know these).
const CLAUSE_MARKS: [char; 6] = [',', '.', ';', ':', '!', '?'];

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PiperConfig {
    pub model_id: String,
    /// Directory with one `*.onnx` voice and its `*.onnx.json`.
    pub voice_dir: PathBuf,
    /// Engine threads (lanes), each with its own ONNX session; 0 = one per core.
    #[serde(default)]
    pub threads: usize,
    /// ONNX Runtime intra-op threads per inference (1 scales best across sessions).
    #[serde(default = "one")]
    pub intra_op_threads: usize,
    /// Silence between sentences.
    #[serde(default = "sentence_silence")]
    pub sentence_silence_ms: u32,
    /// Overrides of the voice's `inference` settings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub noise_scale: Option<f32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub length_scale: Option<f32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub noise_w: Option<f32>,
}

fn one() -> usize {
    1
}

fn sentence_silence() -> u32 {
    200
}

impl PiperConfig {
    pub fn lanes(&self) -> usize {
        if self.threads > 0 { self.threads } else { std::thread::available_parallelism().map_or(1, |n| n.get()) }
    }

    /// The voice's config (for reporting before the model is loaded).
    pub fn voice(&self) -> Result<VoiceConfig, PiperError> {
        VoiceConfig::load(&VoiceFiles::find(&self.voice_dir)?.config)
    }
}

/// A loaded voice: one ONNX session, used by the syntheses of its lane.
pub struct PiperEngine {
    /// Measured inference cost per character of text, in µs (shared by the
    /// lane's syntheses), for cutting chunks under time pressure.
    cost_per_char_us: Arc<std::sync::atomic::AtomicU64>,
    descriptor: ModelDescriptor,
    voice: Arc<VoiceConfig>,
    session: Arc<Mutex<Session>>,
    has_sid: bool,
    defaults: [f32; 3],
    silence: usize,
}

impl std::fmt::Debug for PiperEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PiperEngine").field("model", &self.descriptor.model_id).finish()
    }
}

impl PiperEngine {
    /// Loads the voice (the runtime must be initialised first). Blocking.
    pub fn load(config: &PiperConfig) -> Result<Self, PiperError> {
        let started = Instant::now();
        let files = VoiceFiles::find(&config.voice_dir)?;
        let voice = VoiceConfig::load(&files.config)?;
        let env = duplex_onnx::environment()?;
        let fail = |e: String| PiperError::Voice(format!("{}: {e}", files.model.display()));
        let mut builder = Session::builder(&env)
            .map_err(|e| fail(e.to_string()))?
            .with_intra_threads(config.intra_op_threads.max(1))
            .map_err(|e| fail(e.to_string()))?;
        let session = builder.commit_from_file(&files.model).map_err(|e| fail(e.to_string()))?;
        let has_sid = session.inputs().iter().any(|i| i.name() == "sid");
        let inf = voice.inference;
        let defaults = [
            config.noise_scale.unwrap_or(inf.noise_scale),
            config.length_scale.unwrap_or(inf.length_scale),
            config.noise_w.unwrap_or(inf.noise_w),
        ];
        let mut metadata = BTreeMap::from([
            ("sample_rate_hz".to_string(), voice.audio.sample_rate.to_string()),
            ("espeak_voice".to_string(), voice.espeak.voice.clone()),
            ("num_speakers".to_string(), voice.num_speakers.to_string()),
            ("model_path".to_string(), files.model.display().to_string()),
            ("load_ms".to_string(), started.elapsed().as_millis().to_string()),
        ]);
        for (key, value) in [
            ("quality", voice.audio.quality.clone()),
            ("dataset", voice.dataset.clone()),
            ("piper_version", voice.piper_version.clone()),
            ("language_name", voice.language.as_ref().and_then(|l| l.name_english.clone())),
        ] {
            if let Some(v) = value {
                metadata.insert(key.to_string(), v);
            }
        }
        if !voice.speaker_id_map.is_empty() {
            let names: Vec<&str> = voice.speaker_id_map.keys().map(String::as_str).collect();
            metadata.insert("speakers".into(), names.join(","));
        }
        let descriptor = ModelDescriptor {
            model_id: config.model_id.clone(),
            family: "piper".into(),
            languages: voice.languages(),
            sample_rate_hz: voice.audio.sample_rate,
            metadata,
        };
        let silence = (voice.audio.sample_rate as u64 * config.sentence_silence_ms as u64 / 1000) as usize;
        Ok(Self {
            cost_per_char_us: Arc::default(),
            descriptor,
            voice: Arc::new(voice),
            session: Arc::new(Mutex::new(session)),
            has_sid,
            defaults,
            silence,
        })
    }
}

impl PiperEngine {
    /// For benchmarks: the phoneme ids of each chunk `text` is cut into.
    pub fn chunk_ids(&self, text: &str) -> Result<Vec<Vec<i64>>, EngineError> {
        let mut s = self.synthesis(&SynthesisParams::default())?;
        s.segmenter.push(text);
        let mut out = Vec::new();
        while let Some(chunk) = s.segmenter.next_chunk(true) {
            out.push(s.voice.phoneme_ids(&s.phonemes(&normalize(&chunk.text))?).0);
        }
        Ok(out)
    }

    /// For benchmarks: one bare ONNX Runtime inference of `ids`; returns the samples.
    pub fn infer_ids(&self, ids: Vec<i64>) -> Result<Vec<f32>, EngineError> {
        Ok(self.synthesis(&SynthesisParams::default())?.infer(ids)?)
    }

    fn synthesis(&self, params: &SynthesisParams) -> Result<PiperSynthesis, EngineError> {
        if !(params.speed > 0.0 && params.speed.is_finite()) {
            return Err(EngineError::InvalidOption {
                name: "speed",
                reason: format!("must be > 0, got {}", params.speed),
            });
        }
        let sid = match params.voice.as_deref() {
            None | Some("default") | Some("") => (self.voice.num_speakers > 1).then_some(0),
            Some(name) => match self.voice.speaker_id_map.get(name) {
                Some(&id) => Some(id),
                None => return Err(EngineError::VoiceNotFound(name.to_string())),
            },
        };
        let [noise, length, noise_w] = self.defaults;
        let run_options = RunOptions::new().map_err(|e| PiperError::Runtime(e.to_string()))?;
        Ok(PiperSynthesis {
            cost_per_char_us: self.cost_per_char_us.clone(),
            pending: None,
            run_options: Arc::new(run_options),
            voice: self.voice.clone(),
            session: self.session.clone(),
            sid: if self.has_sid { sid } else { None },
            scales: [noise, length / params.speed, noise_w],
            segmenter: Segmenter::new(),
            announced: None,
            text_done: false,
            silence: self.silence,
            gap_before_next: 0,
        })
    }
}

impl Engine for PiperEngine {
    fn descriptor(&self) -> &ModelDescriptor {
        &self.descriptor
    }

    fn start(&mut self, params: &SynthesisParams) -> Result<Box<dyn Synthesis>, EngineError> {
        Ok(Box::new(self.synthesis(params)?))
    }
}

struct PiperSynthesis {
    cost_per_char_us: Arc<std::sync::atomic::AtomicU64>,
    /// The rest of a chunk cut short under time pressure.
    pending: Option<duplex_tts::text::Chunk>,
    /// Per utterance, so a cancel can terminate the inference in flight.
    run_options: Arc<RunOptions>,
    voice: Arc<VoiceConfig>,
    session: Arc<Mutex<Session>>,
    sid: Option<i64>,
    scales: [f32; 3],
    segmenter: Segmenter,
    /// Start of the last chunk announced with `Step::Speaking`.
    announced: Option<usize>,
    text_done: bool,
    silence: usize,
    /// Silence owed before the next chunk (after a sentence end).
    gap_before_next: usize,
}

impl PiperSynthesis {
    /// Phonemes of a normalized chunk, with its clause punctuation kept.
    fn phonemes(&self, text: &str) -> Result<String, PiperError> {
        let mut out = String::new();
        let mut piece = String::new();
        let mut flush = |piece: &mut String, mark: Option<char>| -> Result<(), PiperError> {
            if piece.chars().any(char::is_alphanumeric) {
                out.push_str(&espeak::phonemize(piece, &self.voice.espeak.voice)?.join(" "));
                if let Some(m) = mark {
                    out.push(m);
                }
                out.push(' ');
            }
            piece.clear();
            Ok(())
        };
        for c in text.chars() {
            if CLAUSE_MARKS.contains(&c) {
                flush(&mut piece, Some(c))?;
            } else {
                piece.push(c);
            }
        }
        flush(&mut piece, None)?;
        Ok(out.trim_end().to_string())
    }

    fn infer(&self, ids: Vec<i64>) -> Result<Vec<f32>, PiperError> {
        let n = ids.len() as i64;
        let err = |e: ort::Error| PiperError::Runtime(e.to_string());
        let mut inputs = ort::inputs![
            "input" => Tensor::from_array((vec![1i64, n], ids)).map_err(err)?,
            "input_lengths" => Tensor::from_array((vec![1i64], vec![n])).map_err(err)?,
            "scales" => Tensor::from_array((vec![3i64], self.scales.to_vec())).map_err(err)?,
        ];
        if let Some(sid) = self.sid {
            inputs.push(("sid".into(), Tensor::from_array((vec![1i64], vec![sid])).map_err(err)?.into()));
        }
        let mut session = self.session.lock().unwrap_or_else(|p| p.into_inner());
        let outputs = session.run_with_options(inputs, &self.run_options).map_err(err)?;
        let (_, audio) = outputs[0].try_extract_tensor::<f32>().map_err(err)?;
        Ok(audio.to_vec())
    }

    fn synthesize(&mut self, text: &str) -> Result<Vec<f32>, PiperError> {
        let phonemes = self.phonemes(&normalize(text))?;
        let (ids, missing) = self.voice.phoneme_ids(&phonemes);
        if missing > 0 {
            tracing::debug!(missing, "phonemes unknown to the voice were skipped");
        }
        let mut audio = self.infer(ids)?;
        fade(&mut audio, (self.voice.audio.sample_rate * FADE_MS / 1000) as usize);
        Ok(audio)
    }
}

/// Linear fade-in and fade-out of `len` samples at the ends.
fn fade(audio: &mut [f32], len: usize) {
    let len = len.min(audio.len() / 2);
    let n = audio.len();
    for i in 0..len {
        let g = i as f32 / len as f32;
        audio[i] *= g;
        audio[n - 1 - i] *= g;
    }
}

impl Synthesis for PiperSynthesis {
    fn push_text(&mut self, text: &str) {
        self.segmenter.push(text);
    }

    fn finish_text(&mut self) {
        self.text_done = true;
    }

    fn interrupter(&self) -> Option<Interrupt> {
        let options = self.run_options.clone();
        Some(Arc::new(move || {
            if let Err(e) = options.terminate() {
                tracing::debug!(error = %e, "could not interrupt the inference");
            }
        }))
    }

    fn step(&mut self, now: Instant) -> Result<Step, EngineError> {
        self.step_within(now, std::time::Duration::MAX)
    }

    fn step_within(&mut self, _now: Instant, slack: std::time::Duration) -> Result<Step, EngineError> {
        let next = self.pending.take().or_else(|| self.segmenter.next_chunk(self.text_done));
        let Some(mut chunk) = next else {
            return Ok(if self.text_done { Step::Done } else { Step::NeedText });
        };
        if self.announced != Some(chunk.start_char) {
            // Say where this chunk starts before its audio (a step of its own).
            self.announced = Some(chunk.start_char);
            let text_offset = chunk.start_char;
            self.pending = Some(chunk);
            return Ok(Step::Speaking { text_offset });
        }
        // Under time pressure, say less now and the rest next step.
        let cost = self.cost_per_char_us.load(std::sync::atomic::Ordering::Relaxed);
        if cost > 0 && slack != std::time::Duration::MAX {
            let mut affordable =
                ((slack.as_secs_f64() * 1e6 * SLACK_SHARE / cost as f64) as usize).max(MIN_PRESSED_CHARS);
            while affordable < chunk.text.len() && !chunk.text.is_char_boundary(affordable) {
                affordable -= 1;
            }
            if chunk.text.len() > affordable
                && let Some(cut) = chunk.text[..affordable].rfind(' ')
                && cut > 0
            {
                let rest = chunk.text[cut + 1..].to_string();
                let start_char = chunk.start_char + chunk.text[..=cut].chars().count();
                self.pending =
                    Some(duplex_tts::text::Chunk { text: rest, ends_sentence: chunk.ends_sentence, start_char });
                chunk = duplex_tts::text::Chunk {
                    text: chunk.text[..cut].to_string(),
                    ends_sentence: false,
                    start_char: chunk.start_char,
                };
            }
        }
        let started = Instant::now();
        let speech = self.synthesize(&chunk.text)?;
        let per_char = started.elapsed().as_micros() as u64 / chunk.text.len().max(1) as u64;
        // Moving average, so the estimate follows load.
        let old = self.cost_per_char_us.load(std::sync::atomic::Ordering::Relaxed);
        let new = if old == 0 { per_char } else { (old * 3 + per_char) / 4 };
        self.cost_per_char_us.store(new, std::sync::atomic::Ordering::Relaxed);
        let mut audio = vec![0.0; std::mem::take(&mut self.gap_before_next)];
        audio.extend(speech);
        if chunk.ends_sentence {
            self.gap_before_next = self.silence;
        }
        Ok(Step::Audio(audio))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fades_reach_zero_at_the_edges() {
        let mut a = vec![1.0; 100];
        fade(&mut a, 10);
        assert_eq!(a[0], 0.0);
        assert_eq!(a[99], 0.0);
        assert_eq!(a[50], 1.0);
        let mut short = vec![1.0; 3];
        fade(&mut short, 10);
        assert_eq!(short[0], 0.0);
    }
}
