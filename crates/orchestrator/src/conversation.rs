//! The parts of spoken conversation shared by all sessions, built at start:
//! the hearing threads (Silero VAD), the speech recogniser and the responder.
//! Each may be missing (no model installed, none configured); a session that
//! needs one is then told why instead of failing silently.

use std::sync::Arc;

use duplex_reply::Responder;
use duplex_speech::{Ears, Transcriber};

use crate::config::{AsrConfig, Conversation as Config, ResponderConfig};
use crate::metrics::Metrics;

/// Shared by every session (in `AppState`).
#[derive(Debug)]
pub struct Parts {
    /// `Err`: why microphone audio is refused.
    pub ears: Result<Arc<Ears>, String>,
    /// `Err`: why user turns are not transcribed.
    pub asr: Result<Arc<dyn Transcriber>, String>,
    pub responder: Arc<dyn Responder>,
    pub history_turns: usize,
    /// Replies may start at a pause (`conversation.early_reply`).
    pub early_reply: bool,
}

impl Parts {
    /// Loads the models (blocking: call from a blocking context).
    pub fn load(config: &Config, metrics: &Metrics) -> Self {
        let ears = load_ears(config, metrics);
        if let Err(why) = &ears {
            tracing::warn!(why, "microphone input is off");
        }
        let responder: Arc<dyn Responder> = match &config.responder {
            ResponderConfig::Echo => Arc::new(duplex_reply::Echo),
            // Without a microphone nobody asks it anything: not loaded.
            ResponderConfig::Local(_) if ears.is_err() => Arc::new(duplex_reply::Echo),
            ResponderConfig::Local(local) => match duplex_reply::LocalLlm::start(local) {
                Ok(llm) => Arc::new(llm),
                Err(e) => {
                    tracing::warn!(error = %e, "the local language model did not load; replies echo instead");
                    Arc::new(duplex_reply::Echo)
                }
            },
            // Validated with the config; the server is found out at the first reply.
            ResponderConfig::Openai(openai) => match duplex_reply::OpenAi::new(openai) {
                Ok(api) => Arc::new(api),
                Err(e) => {
                    tracing::warn!(error = %e, "the reply server client did not start; replies echo instead");
                    Arc::new(duplex_reply::Echo)
                }
            },
        };
        let asr: Result<Arc<dyn Transcriber>, String> = match &config.asr {
            _ if ears.is_err() => Err("microphone input is off".into()),
            AsrConfig::None => Err("no speech recogniser is configured (conversation.asr.engine: none)".into()),
            AsrConfig::Whisper(w) => duplex_asr::Whisper::start(w)
                .map(|w| Arc::new(w) as Arc<dyn Transcriber>)
                .map_err(|e| format!("Whisper did not load: {e}")),
        };
        if let Err(why) = &asr {
            tracing::warn!(why, "user turns are not transcribed");
        }
        tracing::info!(
            vad = ears.is_ok(),
            asr = %asr.as_ref().map(|a| a.describe()).unwrap_or_else(|_| "off".into()),
            responder = %responder.describe(),
            "conversation parts ready"
        );
        Self { ears, asr, responder, history_turns: config.history_turns, early_reply: config.early_reply }
    }

    /// No microphone, no recogniser, the echo responder (text-only servers, tests).
    pub fn none(why: &str) -> Self {
        Self {
            ears: Err(why.to_string()),
            asr: Err(why.to_string()),
            responder: Arc::new(duplex_reply::Echo),
            history_turns: 0,
            early_reply: false,
        }
    }
}

fn load_ears(config: &Config, metrics: &Metrics) -> Result<Arc<Ears>, String> {
    if config.vad_model.as_os_str().is_empty() {
        return Err("conversation.vad_model is empty".into());
    }
    if !config.vad_model.exists() {
        return Err(format!(
            "the VAD model {} is missing (run `just assets`, or set conversation.vad_model)",
            config.vad_model.display()
        ));
    }
    duplex_onnx::init_runtime(&config.onnxruntime_library).map_err(|e| e.to_string())?;
    let window = metrics.vad_window.clone();
    let observe = Arc::new(move |d: std::time::Duration| window.observe(d.as_secs_f64()));
    Ears::start(&config.vad_model, config.vad_threads, config.vad.clone(), observe)
        .map(Arc::new)
        .map_err(|e| e.to_string())
}
