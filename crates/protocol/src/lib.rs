//! The WebSocket protocol: typed client and server messages (the predecessor's
//! JSON protocol plus Duplex extensions), error codes, and the binary audio
//! frame header.
//!
//! Binary server frames (when the session's `audio_format` is `binary`):
//! `[kind u8 = 1][version u8 = 1][flags u16 LE][utterance_id u32 LE][sequence u64 LE]`
//! followed by s16le mono PCM at the session's sample rate. Flag bit 0 marks
//! the last audio frame of an utterance.
//!
//! Binary client frames carry the microphone:
//! `[kind u8 = 2][version u8 = 1][flags u16 LE = 0][sample_rate u32 LE][sequence u64 LE]`
//! followed by s16le mono PCM (10-100 ms of it).

use serde::{Deserialize, Serialize};

/// Binary frame kind: TTS audio, server to client.
pub const KIND_TTS_AUDIO: u8 = 1;
/// Binary frame kind: microphone audio, client to server.
pub const KIND_MIC_AUDIO: u8 = 2;
/// Most microphone audio one message may carry.
pub const MAX_MIC_MS: u32 = 100;
pub const BINARY_VERSION: u8 = 1;
pub const BINARY_HEADER_BYTES: usize = 16;
pub const FLAG_LAST_IN_UTTERANCE: u16 = 1;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AudioFormat {
    /// `{"type":"audio","pcm":<base64>}` text frames (the predecessor's form).
    #[default]
    Json,
    /// Binary frames with the header above.
    Binary,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Command {
    Pause,
    Resume,
    Stop,
}

/// Messages a client sends.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ClientMessage {
    /// Text to speak. `is_final: false` streams more text into the same utterance.
    Text {
        text: String,
        #[serde(default = "default_true")]
        is_final: bool,
    },
    Control {
        command: Command,
    },
    /// Session settings; may be sent at any time (a model change applies
    /// from the next utterance, and not while one is being spoken).
    Config {
        #[serde(default)]
        audio_format: Option<AudioFormat>,
        /// TTS model (voice) for this session; `""` = the server's default.
        #[serde(default)]
        model: Option<String>,
        /// BCP-47 language of the text (`en-US`, `fr`); routes to a worker
        /// whose model speaks it. `""` = any.
        #[serde(default)]
        language: Option<String>,
    },
    Ping {
        #[serde(default)]
        id: Option<u64>,
    },
    /// The user typed instead of speaking: a conversation turn (answered by
    /// the responder, like a transcript).
    UserText {
        text: String,
    },
    /// Microphone audio in JSON: base64 s16le mono PCM at `sample_rate`.
    /// Decoded into [`ClientMessage::Mic`] before a session sees it.
    AudioIn {
        pcm: String,
        sample_rate: u32,
    },
    /// Microphone audio (from a binary frame or a decoded `audio_in`).
    #[serde(skip)]
    Mic {
        pcm: Vec<i16>,
        sample_rate: u32,
    },
}

fn default_true() -> bool {
    true
}

/// The predecessor's five codes plus `BUSY` and `RATE_LIMITED`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ErrorCode {
    InvalidMessage,
    WorkerUnavailable,
    SynthesisFailed,
    ConnectionError,
    InternalError,
    Busy,
    /// Messages sent faster than `session.max_messages_per_s`; that one is dropped.
    RateLimited,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidMessage => "INVALID_MESSAGE",
            ErrorCode::WorkerUnavailable => "WORKER_UNAVAILABLE",
            ErrorCode::SynthesisFailed => "SYNTHESIS_FAILED",
            ErrorCode::ConnectionError => "CONNECTION_ERROR",
            ErrorCode::InternalError => "INTERNAL_ERROR",
            ErrorCode::Busy => "BUSY",
            ErrorCode::RateLimited => "RATE_LIMITED",
        }
    }
}

/// How an utterance ended, as told to the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EndReason {
    Completed,
    Stopped,
    Empty,
    Error,
}

impl EndReason {
    pub fn as_str(self) -> &'static str {
        match self {
            EndReason::Completed => "completed",
            EndReason::Stopped => "stopped",
            EndReason::Empty => "empty",
            EndReason::Error => "error",
        }
    }
}

/// Messages the server sends (as JSON text frames).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerMessage {
    SessionStart {
        session_id: String,
        sample_rate: u32,
        frame_ms: u32,
        audio_format: AudioFormat,
        protocol_version: u32,
    },
    Audio {
        pcm: String,
        sample_rate: u32,
        frame_ms: u32,
        sequence: u64,
        utterance_id: u64,
        /// Where the sentence this frame speaks begins in the utterance's
        /// text, in characters (for captions; 0 from workers that do not say).
        #[serde(default)]
        text_offset: u64,
    },
    /// The last audio of an utterance has been sent (or it was stopped or failed).
    UtteranceEnd {
        utterance_id: u64,
        reason: EndReason,
        frames: u64,
    },
    /// A control command took effect; `last_sequence` is the last audio frame sent before it.
    ControlAck {
        command: Command,
        last_sequence: u64,
    },
    Config {
        audio_format: AudioFormat,
        #[serde(skip_serializing_if = "Option::is_none")]
        model: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        language: Option<String>,
    },
    Pong {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
    },
    Error {
        code: ErrorCode,
        message: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        retry_after_ms: Option<u64>,
    },
    SessionEnd {
        session_id: String,
        reason: String,
    },
    /// Flush: the client drops audio it buffered for these utterances (the
    /// user barged in); nothing of them is sent after this.
    Clear {
        utterance_ids: Vec<u64>,
    },
    /// The conversation's turn state: `listening`, `user_speaking`,
    /// `thinking`, `speaking`.
    State {
        state: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        turn: Option<u64>,
    },
    /// What the user said in `turn`.
    Transcript {
        turn: u64,
        text: String,
        #[serde(rename = "final")]
        is_final: bool,
    },
    /// Reply text as it streams.
    Reply {
        turn: u64,
        text: String,
    },
    /// The reply of `turn` was interrupted; `heard` is what was spoken of it.
    Interrupted {
        turn: u64,
        heard: String,
    },
    /// The interruption was not speech; the reply goes on from `from_char`.
    Resumed {
        turn: u64,
        from_char: usize,
    },
    /// Latencies of a turn, in ms from the end of the user's speech.
    TurnMetrics {
        turn: u64,
        #[serde(skip_serializing_if = "Option::is_none")]
        transcript_ms: Option<f64>,
        #[serde(skip_serializing_if = "Option::is_none")]
        first_reply_text_ms: Option<f64>,
        #[serde(skip_serializing_if = "Option::is_none")]
        first_audio_ms: Option<f64>,
    },
}

impl ServerMessage {
    pub fn error(code: ErrorCode, message: impl Into<String>) -> Self {
        ServerMessage::Error { code, message: message.into(), retry_after_ms: None }
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("server messages always serialize")
    }
}

/// Why a client message was rejected (sent back as `INVALID_MESSAGE`).
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum DecodeError {
    #[error("message is not valid UTF-8")]
    Utf8,
    #[error("message of {size} bytes exceeds the limit of {limit}")]
    TooLarge { size: usize, limit: usize },
    #[error("microphone audio: {0}")]
    AudioInput(String),
    #[error("unknown binary frame kind {0}")]
    UnknownBinary(u8),
    #[error("empty binary frame")]
    EmptyBinary,
    #[error("invalid message: {0}")]
    Json(String),
}

/// Parses a text frame's JSON into a client message.
pub fn decode_text(text: &str, limit: usize) -> Result<ClientMessage, DecodeError> {
    if text.len() > limit {
        return Err(DecodeError::TooLarge { size: text.len(), limit });
    }
    let message = serde_json::from_str(text).map_err(|e| DecodeError::Json(json_error(text, e)))?;
    match message {
        ClientMessage::AudioIn { pcm, sample_rate } => {
            use base64::Engine as _;
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(pcm)
                .map_err(|e| DecodeError::AudioInput(format!("pcm is not base64: {e}")))?;
            mic(&bytes, sample_rate)
        }
        other => Ok(other),
    }
}

/// Checks microphone PCM bytes at `sample_rate` and makes them samples.
fn mic(bytes: &[u8], sample_rate: u32) -> Result<ClientMessage, DecodeError> {
    if !(8_000..=48_000).contains(&sample_rate) {
        return Err(DecodeError::AudioInput(format!("sample_rate {sample_rate} is not 8000-48000 Hz")));
    }
    if !bytes.len().is_multiple_of(2) {
        return Err(DecodeError::AudioInput("PCM s16le needs an even number of bytes".into()));
    }
    let samples = bytes.len() / 2;
    let max = (sample_rate * MAX_MIC_MS / 1000) as usize;
    if samples == 0 || samples > max {
        return Err(DecodeError::AudioInput(format!(
            "{samples} samples in one message; send 10-{MAX_MIC_MS} ms (up to {max} samples at {sample_rate} Hz)"
        )));
    }
    Ok(ClientMessage::Mic { pcm: duplex_audio::bytes_to_samples(bytes), sample_rate })
}

/// Parses a binary frame: JSON sent as binary is accepted (and checked for UTF-8).
pub fn decode_binary(bytes: &[u8], limit: usize) -> Result<ClientMessage, DecodeError> {
    if bytes.len() > limit {
        return Err(DecodeError::TooLarge { size: bytes.len(), limit });
    }
    match bytes.first() {
        None => Err(DecodeError::EmptyBinary),
        Some(b'{') => decode_text(std::str::from_utf8(bytes).map_err(|_| DecodeError::Utf8)?, limit),
        Some(&KIND_MIC_AUDIO) => {
            if bytes.len() < BINARY_HEADER_BYTES || bytes[1] != BINARY_VERSION {
                return Err(DecodeError::AudioInput(format!(
                    "binary microphone frames start with a {BINARY_HEADER_BYTES}-byte header, version {BINARY_VERSION}"
                )));
            }
            let rate = u32::from_le_bytes(bytes[4..8].try_into().expect("4 bytes"));
            mic(&bytes[BINARY_HEADER_BYTES..], rate)
        }
        Some(&kind) => Err(DecodeError::UnknownBinary(kind)),
    }
}

/// A serde error in words a client developer can act on, without echoing input.
fn json_error(text: &str, e: serde_json::Error) -> String {
    if let Ok(value) = serde_json::from_str::<serde_json::Value>(text) {
        match value.get("type").and_then(|t| t.as_str()) {
            None => return "missing \"type\" (one of text, control, config, ping, audio_in)".into(),
            Some(t) if !["text", "control", "config", "ping", "audio_in"].contains(&t) => {
                return format!("unknown message type {t:?} (expected text, control, config, ping or audio_in)");
            }
            Some(_) => {}
        }
    }
    let msg = e.to_string();
    // serde_json appends " at line L column C"; keep it, it helps.
    msg
}

/// Builds a binary audio frame.
pub fn encode_binary_audio(utterance_id: u64, sequence: u64, last_in_utterance: bool, pcm: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(BINARY_HEADER_BYTES + pcm.len());
    out.push(KIND_TTS_AUDIO);
    out.push(BINARY_VERSION);
    let flags = if last_in_utterance { FLAG_LAST_IN_UTTERANCE } else { 0 };
    out.extend_from_slice(&flags.to_le_bytes());
    out.extend_from_slice(&(utterance_id as u32).to_le_bytes());
    out.extend_from_slice(&sequence.to_le_bytes());
    out.extend_from_slice(pcm);
    out
}

/// Builds a binary microphone frame (clients and tests).
pub fn encode_mic_audio(sample_rate: u32, sequence: u64, pcm: &[i16]) -> Vec<u8> {
    let mut out = Vec::with_capacity(BINARY_HEADER_BYTES + pcm.len() * 2);
    out.push(KIND_MIC_AUDIO);
    out.push(BINARY_VERSION);
    out.extend_from_slice(&0u16.to_le_bytes());
    out.extend_from_slice(&sample_rate.to_le_bytes());
    out.extend_from_slice(&sequence.to_le_bytes());
    out.extend_from_slice(&duplex_audio::samples_to_bytes(pcm));
    out
}

/// A parsed binary audio frame header (clients and tests).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BinaryAudioHeader {
    pub utterance_id: u32,
    pub sequence: u64,
    pub last_in_utterance: bool,
}

pub fn parse_binary_audio(frame: &[u8]) -> Option<(BinaryAudioHeader, &[u8])> {
    if frame.len() < BINARY_HEADER_BYTES || frame[0] != KIND_TTS_AUDIO || frame[1] != BINARY_VERSION {
        return None;
    }
    let flags = u16::from_le_bytes([frame[2], frame[3]]);
    let utterance_id = u32::from_le_bytes(frame[4..8].try_into().ok()?);
    let sequence = u64::from_le_bytes(frame[8..16].try_into().ok()?);
    let header = BinaryAudioHeader { utterance_id, sequence, last_in_utterance: flags & FLAG_LAST_IN_UTTERANCE != 0 };
    Some((header, &frame[BINARY_HEADER_BYTES..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn predecessor_messages_parse() {
        assert_eq!(
            decode_text(r#"{"type":"text","text":"hi","is_final":true}"#, 1000).unwrap(),
            ClientMessage::Text { text: "hi".into(), is_final: true }
        );
        assert_eq!(
            decode_text(r#"{"type":"text","text":"hi"}"#, 1000).unwrap(),
            ClientMessage::Text { text: "hi".into(), is_final: true }
        );
        assert_eq!(
            decode_text(r#"{"type":"control","command":"PAUSE"}"#, 1000).unwrap(),
            ClientMessage::Control { command: Command::Pause }
        );
    }

    #[test]
    fn bad_messages_say_what_is_wrong() {
        let e = decode_text(r#"{"type":"dance"}"#, 1000).unwrap_err().to_string();
        assert!(e.contains("unknown message type \"dance\""), "{e}");
        let e = decode_text(r#"{"text":"x"}"#, 1000).unwrap_err().to_string();
        assert!(e.contains("missing \"type\""), "{e}");
        let e = decode_text("{not json", 1000).unwrap_err().to_string();
        assert!(e.contains("invalid message"), "{e}");
        let e = decode_text(r#"{"type":"control","command":"JUMP"}"#, 1000).unwrap_err().to_string();
        assert!(e.contains("JUMP"), "{e}");
        assert!(matches!(decode_text(&"x".repeat(11), 10), Err(DecodeError::TooLarge { size: 11, limit: 10 })));
        assert_eq!(decode_binary(b"{\"type\":\xff}", 100), Err(DecodeError::Utf8));
        assert!(matches!(decode_binary(&[KIND_MIC_AUDIO, 0, 0], 100), Err(DecodeError::AudioInput(_))));
        assert_eq!(decode_binary(&[9], 100), Err(DecodeError::UnknownBinary(9)));
    }

    #[test]
    fn server_messages_have_the_predecessor_shape() {
        let v: serde_json::Value = serde_json::from_str(
            &ServerMessage::Audio {
                pcm: "AA==".into(),
                sample_rate: 48000,
                frame_ms: 20,
                sequence: 3,
                utterance_id: 1,
                text_offset: 0,
            }
            .to_json(),
        )
        .unwrap();
        assert_eq!(v["type"], "audio");
        assert_eq!(v["sample_rate"], 48000);
        assert_eq!(v["frame_ms"], 20);
        assert_eq!(v["sequence"], 3);
        let e: serde_json::Value =
            serde_json::from_str(&ServerMessage::error(ErrorCode::WorkerUnavailable, "down").to_json()).unwrap();
        assert_eq!(e["type"], "error");
        assert_eq!(e["code"], "WORKER_UNAVAILABLE");
        assert!(e.get("retry_after_ms").is_none());
    }

    #[test]
    fn microphone_audio_comes_binary_or_as_json_and_is_checked() {
        let pcm: Vec<i16> = (0..320).map(|i| i as i16).collect();
        let want = ClientMessage::Mic { pcm: pcm.clone(), sample_rate: 16_000 };
        assert_eq!(decode_binary(&encode_mic_audio(16_000, 1, &pcm), 10_000), Ok(want.clone()));
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::STANDARD.encode(duplex_audio::samples_to_bytes(&pcm));
        let json = format!(r#"{{"type":"audio_in","pcm":"{b64}","sample_rate":16000}}"#);
        assert_eq!(decode_text(&json, 10_000), Ok(want));
        let too_long = vec![0i16; 1_700]; // > 100 ms at 16 kHz
        assert!(matches!(
            decode_binary(&encode_mic_audio(16_000, 1, &too_long), 10_000),
            Err(DecodeError::AudioInput(_))
        ));
        assert!(matches!(decode_binary(&encode_mic_audio(4_000, 1, &pcm), 10_000), Err(DecodeError::AudioInput(_))));
        let odd = r#"{"type":"audio_in","pcm":"AA==","sample_rate":16000}"#; // one byte
        assert!(matches!(decode_text(odd, 10_000), Err(DecodeError::AudioInput(_))));
    }

    #[test]
    fn binary_header_round_trips() {
        let pcm = vec![7u8; 1920];
        let f = encode_binary_audio(5, 42, true, &pcm);
        assert_eq!(f.len(), BINARY_HEADER_BYTES + 1920);
        let (h, body) = parse_binary_audio(&f).unwrap();
        assert_eq!(h, BinaryAudioHeader { utterance_id: 5, sequence: 42, last_in_utterance: true });
        assert_eq!(body, &pcm[..]);
    }
}
