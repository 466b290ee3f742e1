//! Any OpenAI-compatible chat server as the responder (llama.cpp's
//! `llama-server`, vLLM, Ollama, OpenAI): `POST {url}/chat/completions` with
//! `"stream": true`, read as server-sent events, each delta's text sent on as
//! a piece. The request runs on a task of its own; a cancelled reply drops
//! the connection, which is how these servers learn to stop generating.

use std::time::Duration;

use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::sync::mpsc;

use crate::{DEFAULT_SYSTEM_PROMPT, Exchange, PIECE_QUEUE, ReplyError, Request, Responder};

/// Longest error body kept for the message (servers sometimes answer with a page).
const ERROR_BODY_CHARS: usize = 300;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OpenAiConfig {
    /// The API base, before `/chat/completions` (e.g. `http://127.0.0.1:8080/v1`).
    pub url: String,
    pub model: String,
    /// Sent as `Authorization: Bearer …`; empty = read `api_key_env`.
    pub api_key: String,
    /// Environment variable holding the key when `api_key` is empty (none set = no header).
    pub api_key_env: String,
    pub system_prompt: String,
    pub max_tokens: u32,
    pub temperature: f32,
    /// Connecting and the response headers must take less than this.
    pub connect_timeout_ms: u64,
    /// Longest wait for the next piece of a streaming answer.
    pub idle_timeout_ms: u64,
}

impl Default for OpenAiConfig {
    fn default() -> Self {
        Self {
            url: "http://127.0.0.1:8080/v1".into(),
            model: "default".into(),
            api_key: String::new(),
            api_key_env: "OPENAI_API_KEY".into(),
            system_prompt: DEFAULT_SYSTEM_PROMPT.into(),
            max_tokens: 128,
            temperature: 0.7,
            connect_timeout_ms: 5_000,
            idle_timeout_ms: 20_000,
        }
    }
}

impl OpenAiConfig {
    pub fn validate(&self) -> Result<(), String> {
        if !(self.url.starts_with("http://") || self.url.starts_with("https://")) {
            return Err(format!("responder url {:?} must start with http:// or https://", self.url));
        }
        if self.model.is_empty() {
            return Err("responder model must not be empty".into());
        }
        if self.connect_timeout_ms == 0 || self.idle_timeout_ms == 0 {
            return Err("responder timeouts must be above 0".into());
        }
        Ok(())
    }
}

/// The server's answers come through this.
#[derive(Clone)]
pub struct OpenAi {
    client: reqwest::Client,
    endpoint: String,
    key: Option<String>,
    config: OpenAiConfig,
}

impl std::fmt::Debug for OpenAi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "openai-compatible {} at {}", self.config.model, self.endpoint)
    }
}

impl OpenAi {
    /// No connection is made here; the first reply finds out whether the server answers.
    pub fn new(config: &OpenAiConfig) -> Result<Self, ReplyError> {
        config.validate().map_err(ReplyError::Server)?;
        // TLS needs a process-wide crypto provider; the first one installed stays.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_millis(config.connect_timeout_ms))
            .build()
            .map_err(|e| ReplyError::Server(format!("HTTP client: {e}")))?;
        let key = match config.api_key.as_str() {
            "" => std::env::var(&config.api_key_env).ok().filter(|k| !k.is_empty()),
            key => Some(key.to_string()),
        };
        let endpoint = format!("{}/chat/completions", config.url.trim_end_matches('/'));
        Ok(Self { client, endpoint, key, config: config.clone() })
    }

    /// The request body: system prompt, the history (exchanges the user
    /// heard nothing of are left out), the new words.
    pub fn body(&self, history: &[Exchange], user: &str) -> Value {
        let mut messages = vec![json!({"role": "system", "content": self.config.system_prompt})];
        for e in history.iter().filter(|e| !e.assistant.trim().is_empty()) {
            messages.push(json!({"role": "user", "content": e.user}));
            messages.push(json!({"role": "assistant", "content": e.assistant}));
        }
        messages.push(json!({"role": "user", "content": user}));
        json!({
            "model": self.config.model,
            "messages": messages,
            "stream": true,
            "max_tokens": self.config.max_tokens,
            "temperature": self.config.temperature,
        })
    }

    async fn stream(&self, request: &Request, tx: &mpsc::Sender<Result<String, ReplyError>>) -> Result<(), ReplyError> {
        let server = |e: String| ReplyError::Server(e);
        let mut call = self.client.post(&self.endpoint).json(&self.body(&request.history, &request.user));
        if let Some(key) = &self.key {
            call = call.bearer_auth(key);
        }
        let wait = Duration::from_millis(self.config.connect_timeout_ms);
        let response = tokio::time::timeout(wait, call.send())
            .await
            .map_err(|_| server(format!("{} did not answer within {} ms", self.endpoint, wait.as_millis())))?
            .map_err(|e| server(format!("{}: {e}", self.endpoint)))?;
        let status = response.status();
        if !status.is_success() {
            let body = response.text().await.unwrap_or_default();
            let body: String = body.chars().take(ERROR_BODY_CHARS).collect();
            return Err(server(format!("{} answered {status}: {}", self.endpoint, body.trim())));
        }
        let idle = Duration::from_millis(self.config.idle_timeout_ms);
        let mut bytes = response.bytes_stream();
        let mut events = SseData::default();
        loop {
            let chunk = match tokio::time::timeout(idle, bytes.next()).await {
                Err(_) => return Err(server(format!("no answer from the server for {} ms", idle.as_millis()))),
                Ok(None) => return Ok(()), // the server closed the stream: done
                Ok(Some(chunk)) => chunk.map_err(|e| server(format!("reading the answer: {e}")))?,
            };
            for data in events.push(&chunk) {
                if data == "[DONE]" {
                    return Ok(());
                }
                let event: Value =
                    serde_json::from_str(&data).map_err(|e| server(format!("an event is not JSON ({e}): {data}")))?;
                if let Some(message) = event.pointer("/error/message").and_then(Value::as_str) {
                    return Err(server(message.to_string()));
                }
                let text = event.pointer("/choices/0/delta/content").and_then(Value::as_str).unwrap_or_default();
                if !text.is_empty() && tx.send(Ok(text.to_string())).await.is_err() {
                    return Ok(()); // nobody listens any more
                }
            }
        }
    }
}

impl Responder for OpenAi {
    fn respond(&self, request: Request) -> mpsc::Receiver<Result<String, ReplyError>> {
        let (tx, rx) = mpsc::channel(PIECE_QUEUE);
        let this = self.clone();
        tokio::spawn(async move {
            let result = tokio::select! {
                // Dropping the request's future closes the connection.
                _ = request.cancel.cancelled() => return,
                result = this.stream(&request, &tx) => result,
            };
            if let Err(e) = result {
                let _ = tx.send(Err(e)).await;
            }
        });
        rx
    }

    fn describe(&self) -> String {
        format!("{self:?}")
    }
}

/// Splits a server-sent event stream into the `data` of each event, however
/// the bytes are chunked.
#[derive(Debug, Default)]
pub struct SseData {
    buffer: Vec<u8>,
    data: Vec<String>,
}

impl SseData {
    /// Feeds bytes; returns the events completed by them.
    pub fn push(&mut self, bytes: &[u8]) -> Vec<String> {
        self.buffer.extend_from_slice(bytes);
        let mut done = Vec::new();
        while let Some(end) = self.buffer.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = self.buffer.drain(..=end).collect();
            let line = String::from_utf8_lossy(&line);
            let line = line.trim_end_matches(['\n', '\r']);
            if line.is_empty() {
                // A blank line ends the event.
                if !self.data.is_empty() {
                    done.push(self.data.join("\n"));
                    self.data.clear();
                }
            } else if let Some(value) = line.strip_prefix("data:") {
                self.data.push(value.strip_prefix(' ').unwrap_or(value).to_string());
            }
            // Other fields (event:, id:, retry:) and comments (":") carry nothing we use.
        }
        done
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_found_however_the_bytes_are_cut() {
        let stream = b": keep-alive\n\ndata: {\"a\":1}\r\n\r\ndata: one\ndata: two\n\nevent: x\ndata: [DONE]\n\n";
        for cut in 1..stream.len() {
            let mut sse = SseData::default();
            let mut events = sse.push(&stream[..cut]);
            events.extend(sse.push(&stream[cut..]));
            assert_eq!(events, ["{\"a\":1}", "one\ntwo", "[DONE]"], "cut at {cut}");
        }
    }

    #[test]
    fn the_body_holds_the_history_heard_and_the_new_words() {
        let config = OpenAiConfig { model: "m".into(), system_prompt: "Be brief.".into(), ..OpenAiConfig::default() };
        let api = OpenAi::new(&config).unwrap();
        let history = [
            Exchange { user: "Hi".into(), assistant: "Hello!".into() },
            Exchange { user: "Tell me a story".into(), assistant: String::new() },
        ];
        let body = api.body(&history, "Why?");
        let roles: Vec<(&str, &str)> = body["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| (m["role"].as_str().unwrap(), m["content"].as_str().unwrap()))
            .collect();
        assert_eq!(
            roles,
            [("system", "Be brief."), ("user", "Hi"), ("assistant", "Hello!"), ("user", "Why?")],
            "the exchange nothing was heard of is left out"
        );
        assert_eq!((body["model"].as_str(), body["stream"].as_bool()), (Some("m"), Some(true)));
    }

    #[test]
    fn the_config_is_checked() {
        assert!(OpenAiConfig::default().validate().is_ok());
        assert!(OpenAiConfig { url: "localhost:8080".into(), ..OpenAiConfig::default() }.validate().is_err());
        assert!(OpenAiConfig { model: String::new(), ..OpenAiConfig::default() }.validate().is_err());
    }
}
