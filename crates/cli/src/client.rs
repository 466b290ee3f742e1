//! A WebSocket client for the orchestrator's protocol, used by `duplex talk`,
//! the benchmark and the integration tests.

use std::time::Instant;

use base64::Engine as _;
use duplex_orchestrator::protocol::{AudioFormat, ClientMessage, Command, ServerMessage, parse_binary_audio};
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// Something the server sent, with its arrival time.
#[derive(Debug, Clone)]
pub enum Event {
    Audio {
        utterance_id: u64,
        sequence: u64,
        pcm: Vec<u8>,
        /// Where the sentence this frame speaks begins in the utterance's
        /// text (JSON audio only; 0 in binary frames).
        text_offset: u64,
        at: Instant,
    },
    Message {
        message: ServerMessage,
        at: Instant,
    },
    /// The server closed the socket (close code, if any).
    Closed(Option<u16>),
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot connect to {url}: {source}")]
    Connect { url: String, source: tokio_tungstenite::tungstenite::Error },
    #[error("websocket: {0}")]
    Socket(#[from] tokio_tungstenite::tungstenite::Error),
    #[error("server sent something unreadable: {0}")]
    Protocol(String),
}

pub struct Client {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Client")
    }
}

impl Client {
    /// Connects; `format` is requested in the URL (`?audio_format=`).
    pub async fn connect(url: &str, format: AudioFormat) -> Result<Self, ClientError> {
        Self::connect_with(url, format, None).await
    }

    /// [`Client::connect`], trusting (and presenting) what `tls` says for
    /// `wss://` URLs instead of the system's roots.
    pub async fn connect_with(
        url: &str,
        format: AudioFormat,
        tls: Option<std::sync::Arc<rustls::ClientConfig>>,
    ) -> Result<Self, ClientError> {
        let sep = if url.contains('?') { '&' } else { '?' };
        let name = match format {
            AudioFormat::Json => "json",
            AudioFormat::Binary => "binary",
        };
        let full = format!("{url}{sep}audio_format={name}");
        // Controls must not wait behind Nagle's algorithm.
        let connector = tls.map(tokio_tungstenite::Connector::Rustls);
        let (ws, _) = tokio_tungstenite::connect_async_tls_with_config(&full, None, true, connector)
            .await
            .map_err(|source| ClientError::Connect { url: full.clone(), source })?;
        Ok(Self { ws })
    }

    pub async fn send(&mut self, msg: &ClientMessage) -> Result<(), ClientError> {
        let text = serde_json::to_string(msg).expect("client messages serialize");
        self.ws.send(Message::Text(text.into())).await?;
        Ok(())
    }

    pub async fn send_text(&mut self, text: &str, is_final: bool) -> Result<(), ClientError> {
        self.send(&ClientMessage::Text { text: text.into(), is_final }).await
    }

    /// Sends microphone audio (s16 mono at `sample_rate`) as one binary frame.
    pub async fn send_mic(&mut self, sample_rate: u32, sequence: u64, pcm: &[i16]) -> Result<(), ClientError> {
        let frame = duplex_orchestrator::protocol::encode_mic_audio(sample_rate, sequence, pcm);
        self.ws.send(Message::Binary(frame.into())).await?;
        Ok(())
    }

    pub async fn control(&mut self, command: Command) -> Result<(), ClientError> {
        self.send(&ClientMessage::Control { command }).await
    }

    /// Sends a raw frame (tests of malformed input).
    pub async fn send_raw(&mut self, msg: Message) -> Result<(), ClientError> {
        self.ws.send(msg).await?;
        Ok(())
    }

    /// The next event; `Closed` once the socket is gone.
    pub async fn next(&mut self) -> Result<Event, ClientError> {
        loop {
            let Some(msg) = self.ws.next().await else { return Ok(Event::Closed(None)) };
            let at = Instant::now();
            match msg? {
                Message::Text(t) => {
                    let message: ServerMessage =
                        serde_json::from_str(t.as_str()).map_err(|e| ClientError::Protocol(format!("{e}: {t}")))?;
                    if let ServerMessage::Audio { pcm, sequence, utterance_id, text_offset, .. } = message {
                        let pcm = base64::engine::general_purpose::STANDARD
                            .decode(pcm)
                            .map_err(|e| ClientError::Protocol(format!("audio is not base64: {e}")))?;
                        return Ok(Event::Audio { utterance_id, sequence, pcm, text_offset, at });
                    }
                    return Ok(Event::Message { message, at });
                }
                Message::Binary(b) => {
                    let (h, pcm) = parse_binary_audio(&b)
                        .ok_or_else(|| ClientError::Protocol(format!("binary frame of {} bytes", b.len())))?;
                    return Ok(Event::Audio {
                        utterance_id: h.utterance_id as u64,
                        sequence: h.sequence,
                        pcm: pcm.to_vec(),
                        text_offset: 0,
                        at,
                    });
                }
                Message::Close(frame) => return Ok(Event::Closed(frame.map(|f| u16::from(f.code)))),
                Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => {}
            }
        }
    }

    /// Reads until `session_start`; returns the session id.
    pub async fn session_start(&mut self) -> Result<String, ClientError> {
        match self.next().await? {
            Event::Message { message: ServerMessage::SessionStart { session_id, .. }, .. } => Ok(session_id),
            other => Err(ClientError::Protocol(format!("expected session_start, got {other:?}"))),
        }
    }

    pub async fn close(mut self) {
        let _ = self.ws.close(None).await;
    }
}
