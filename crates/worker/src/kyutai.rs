//! The Kyutai TTS engine (`engine: kyutai`, feature `kyutai`): one model in
//! `duplex_kyutai::engine::Engine`, whose thread steps every session's slot
//! together, behind the worker's ordinary engine contract. Each utterance
//! takes a slot; its words are tokenized and streamed in as the text comes;
//! the host pulls 80 ms chunks of 24 kHz audio (and resamples them to 48 kHz
//! like every engine's). With every slot in use an utterance fails at once
//! with a "busy" error instead of waiting.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use duplex_kyutai::codec::{self, Codec};
use duplex_kyutai::engine::{Chunk, Engine as Batch, EngineConfig as BatchConfig, EngineError as BatchError, Stream};
use duplex_kyutai::files::{self, Hub, Release, Source};
use duplex_kyutai::machine::MachineConfig;
use duplex_kyutai::moshi_candle::{Device, Tensor};
use duplex_kyutai::tokenizer::Tokenizer;
use duplex_kyutai::{Model, Sampler};
use duplex_tts::{Engine, EngineError, ModelDescriptor, Step, Synthesis, SynthesisParams};
use serde::{Deserialize, Serialize};

/// How often the host looks for audio that is not there yet.
const POLL: Duration = Duration::from_millis(5);

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KyutaiConfig {
    pub model_id: String,
    /// Kyutai's release: a directory holding `config.json` and the files it
    /// names, or `hf://owner/name` to fetch it from Hugging Face.
    pub model_dir: String,
    /// The Mimi codec's safetensors, where `config.json` names none.
    #[serde(default)]
    pub codec: Option<PathBuf>,
    /// The SentencePiece `.model` file, where `config.json` names none.
    #[serde(default)]
    pub tokenizer: Option<PathBuf>,
    /// Voice files: a directory (every voice file under it) or
    /// `hf://kyutai/tts-voices` (the voices listed in `voices`).
    pub voices_dir: String,
    /// Voices that must be there (fetched from a hub repo); `default_voice` is one.
    #[serde(default)]
    pub voices: Vec<String>,
    /// What follows a voice's name in its file name.
    #[serde(default = "default_voice_suffix")]
    pub voice_suffix: String,
    /// Hugging Face endpoint and cache (default: `HF_ENDPOINT`, `HF_HOME`, huggingface.co).
    #[serde(default)]
    pub hf_endpoint: Option<String>,
    #[serde(default)]
    pub hf_cache_dir: Option<PathBuf>,
    pub default_voice: String,
    /// Sessions served at once (the batch).
    #[serde(default = "default_slots")]
    pub slots: usize,
    /// `cuda` (GPU 0) or `cpu`.
    #[serde(default = "default_device")]
    pub device: String,
    /// `published` (Mimi as released) or `tiny` (the tests' random codec).
    #[serde(default = "default_codec_shape")]
    pub codec_shape: String,
    #[serde(default = "default_languages")]
    pub languages: Vec<String>,
    /// Audio sampling: temperature and top-k (Kyutai's defaults 0.6 and 250).
    #[serde(default = "default_temperature")]
    pub temperature: f32,
    #[serde(default = "default_top_k")]
    pub top_k: usize,
    /// Steps between a word's text and its audio (16 for tts-1.6b).
    #[serde(default = "default_audio_delay")]
    pub audio_delay_steps: usize,
    /// The `cfg` conditioner's bin (guidance strength; 2 = 2.0).
    #[serde(default = "default_cfg_bin")]
    pub cfg_bin: u32,
}

fn default_voice_suffix() -> String {
    ".1e68beda@240.safetensors".into()
}
fn default_slots() -> usize {
    16
}
fn default_device() -> String {
    "cuda".into()
}
fn default_codec_shape() -> String {
    "published".into()
}
fn default_languages() -> Vec<String> {
    vec!["en".into(), "fr".into()]
}
fn default_temperature() -> f32 {
    0.6
}
fn default_top_k() -> usize {
    250
}
fn default_audio_delay() -> usize {
    16
}
fn default_cfg_bin() -> u32 {
    2
}

fn failed(what: &str, e: impl std::fmt::Display) -> EngineError {
    EngineError::Failed(format!("{what}: {e}"))
}

/// What every host lane shares: the batch and what turns text into its input.
#[derive(Clone)]
pub struct Shared {
    batch: Arc<Batch>,
    tokenizer: Arc<Tokenizer>,
    voices: Arc<HashMap<String, Tensor>>,
    default_voice: String,
    descriptor: ModelDescriptor,
}

impl Shared {
    /// Loads model, codec, tokenizer and voices and starts the model thread. Blocking.
    pub fn load(c: &KyutaiConfig) -> Result<Self, EngineError> {
        let device = match c.device.as_str() {
            "cpu" => Device::Cpu,
            "cuda" => Device::new_cuda(0).map_err(|e| failed("no CUDA device (a `cuda` build on a GPU)", e))?,
            other => {
                return Err(EngineError::InvalidOption { name: "device", reason: format!("{other:?}: cuda or cpu") });
            }
        };
        let hub =
            Hub::new(c.hf_endpoint.as_deref(), c.hf_cache_dir.as_deref()).map_err(|e| failed("Hugging Face", e))?;
        let release = Release::resolve(&Source::parse(&c.model_dir), &hub).map_err(|e| failed("the model", e))?;
        let model = Model::load_release(&release, c.slots, &device).map_err(|e| failed("loading the model", e))?;
        let config = model.config().clone();
        let codec_config = match c.codec_shape.as_str() {
            "published" => codec::published_config(config.dep_q),
            "tiny" => codec::tiny_config(config.dep_q, config.card),
            other => {
                return Err(EngineError::InvalidOption {
                    name: "codec_shape",
                    reason: format!("{other:?}: published or tiny"),
                });
            }
        };
        let named = |given: &Option<PathBuf>, named: &Option<PathBuf>, what: &str| {
            given
                .clone()
                .or_else(|| named.clone())
                .ok_or_else(|| failed(what, format!("{}'s config.json names none; set `{what}`", c.model_dir)))
        };
        let codec_path = named(&c.codec, &release.codec, "codec")?;
        let tokenizer_path = named(&c.tokenizer, &release.tokenizer, "tokenizer")?;
        let codec = Codec::load_with(codec_config, &codec_path, c.slots, &device)
            .map_err(|e| failed("loading the codec", e))?;
        let tokenizer = Tokenizer::load(&tokenizer_path).map_err(|e| failed("loading the tokenizer", e))?;
        let mut wanted = c.voices.clone();
        if !wanted.contains(&c.default_voice) {
            wanted.push(c.default_voice.clone());
        }
        let files = files::voices(&Source::parse(&c.voices_dir), &hub, &wanted, &c.voice_suffix)
            .map_err(|e| failed("voices", e))?;
        let mut voices = HashMap::new();
        for (name, path) in files {
            let voice = duplex_kyutai::voice::load(&path, &config).map_err(|e| failed(&format!("voice {name}"), e))?;
            voices.insert(name, voice);
        }
        if !voices.contains_key(&c.default_voice) {
            return Err(EngineError::VoiceNotFound(c.default_voice.clone()));
        }
        let batch = Batch::spawn(
            model,
            codec,
            BatchConfig {
                audio_delay: c.audio_delay_steps,
                final_padding: 4,
                cfg_bin: c.cfg_bin,
                machine: MachineConfig::default(),
                text_sampler: Sampler::top_k(50, c.temperature, 0x7e47),
                audio_sampler: Sampler::top_k(c.top_k, c.temperature, 0xa0d1),
            },
        )
        .map_err(|e| failed("starting the model thread", e))?;
        let mut metadata = std::collections::BTreeMap::new();
        metadata.insert("slots".to_string(), c.slots.to_string());
        metadata.insert("device".to_string(), c.device.clone());
        Ok(Self {
            batch: Arc::new(batch),
            tokenizer: Arc::new(tokenizer),
            voices: Arc::new(voices),
            default_voice: c.default_voice.clone(),
            descriptor: ModelDescriptor {
                model_id: c.model_id.clone(),
                family: "kyutai".into(),
                languages: c.languages.clone(),
                sample_rate_hz: 24_000,
                metadata,
            },
        })
    }

    /// Slots free now.
    pub fn free_slots(&self) -> usize {
        self.batch.free_slots()
    }
}

/// One host lane's handle on the shared model.
pub struct KyutaiEngine(pub Shared);

impl Engine for KyutaiEngine {
    fn descriptor(&self) -> &ModelDescriptor {
        &self.0.descriptor
    }

    fn start(&mut self, params: &SynthesisParams) -> Result<Box<dyn Synthesis>, EngineError> {
        let name = params.voice.as_deref().unwrap_or(&self.0.default_voice);
        let voice = self.0.voices.get(name).ok_or_else(|| EngineError::VoiceNotFound(name.to_string()))?;
        let stream = self.0.batch.open(voice.clone()).map_err(|e| match e {
            BatchError::Busy => EngineError::Failed(format!(
                "busy: all {} slots of {} are in use; try another worker",
                self.0.batch.batch(),
                self.0.descriptor.model_id
            )),
            BatchError::Stopped => failed("the model thread", e),
        })?;
        Ok(Box::new(KyutaiSynthesis {
            stream,
            tokenizer: self.0.tokenizer.clone(),
            partial: String::new(),
            started: false,
        }))
    }
}

struct KyutaiSynthesis {
    stream: Stream,
    tokenizer: Arc<Tokenizer>,
    /// The end of the text pushed so far when it stops inside a word.
    partial: String,
    started: bool,
}

impl KyutaiSynthesis {
    fn word(&mut self, word: &str) {
        if !word.is_empty() {
            self.stream.push_word(self.tokenizer.encode_word(word));
        }
    }
}

impl Synthesis for KyutaiSynthesis {
    fn push_text(&mut self, text: &str) {
        self.partial.push_str(text);
        // Whole words go now; a trailing fragment waits for its end.
        let cut = if self.partial.ends_with(char::is_whitespace) {
            self.partial.len()
        } else {
            self.partial.rfind(char::is_whitespace).map_or(0, |i| i + 1)
        };
        let whole: String = self.partial.drain(..cut).collect();
        for word in whole.split_whitespace() {
            self.word(word);
        }
    }

    fn finish_text(&mut self) {
        let rest = std::mem::take(&mut self.partial);
        for word in rest.split_whitespace() {
            self.word(word);
        }
        self.stream.close();
    }

    fn step(&mut self, now: Instant) -> Result<Step, EngineError> {
        if !self.started {
            // Word-level model: a resumed utterance starts over (offset 0).
            self.started = true;
            return Ok(Step::Speaking { text_offset: 0 });
        }
        match self.stream.audio.try_recv() {
            Ok(Chunk::Audio(pcm)) => Ok(Step::Audio(pcm)),
            Ok(Chunk::End) => Ok(Step::Done),
            Ok(Chunk::Failed(e)) => Err(EngineError::Failed(e)),
            Err(std::sync::mpsc::TryRecvError::Empty) => Ok(Step::NotBefore(now + POLL)),
            Err(std::sync::mpsc::TryRecvError::Disconnected) => {
                Err(EngineError::Failed("the model thread stopped".into()))
            }
        }
    }
}
