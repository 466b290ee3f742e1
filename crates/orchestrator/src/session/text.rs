//! The client's text on its way to the worker: the session's route (model
//! and language), the text limits, utterances and their chunks, and the
//! worker stream they go out on (opened on demand, with a backlog while it
//! opens).

use duplex_proto::tts::TextChunk;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::{Flow, MAX_ROUTE_FIELD_BYTES, Session, TEXT_BACKLOG, Utterance};
use crate::link::Link;
use crate::protocol::ErrorCode;
use crate::worker::{Route, WorkerError, WorkerStream};

impl Session {
    /// Chooses the session's model and language (a field left out keeps
    /// its value, `""` clears it); the next stream is opened with them.
    pub(super) fn set_route(&mut self, model: Option<String>, language: Option<String>) -> Flow {
        let printable = |v: &Option<String>| {
            v.as_ref().is_none_or(|v| v.len() <= MAX_ROUTE_FIELD_BYTES && !v.chars().any(char::is_control))
        };
        if !printable(&model) || !printable(&language) {
            return self.error(ErrorCode::InvalidMessage, "model and language must be short printable ids");
        }
        let clear = |v: Option<String>, old: &Option<String>| match v {
            Some(v) => (!v.is_empty()).then_some(v),
            None => old.clone(),
        };
        let route = Route { model: clear(model, &self.route.model), language: clear(language, &self.route.language) };
        if route == self.route {
            return Flow::Continue;
        }
        if !self.active.is_empty() {
            return self.error(
                ErrorCode::InvalidMessage,
                "cannot change the model or language while speaking; send STOP first",
            );
        }
        self.route = route;
        // The worker session was started with the old route: end it.
        self.end_worker_session();
        Flow::Continue
    }

    pub(super) fn on_text(&mut self, text: String, is_final: bool) -> Flow {
        let max = self.state.config.session.max_text_chars;
        let chars = text.chars().count();
        if chars > max {
            return self
                .error(ErrorCode::InvalidMessage, format!("text of {chars} characters exceeds the limit of {max}"));
        }
        let max_utterance = self.state.config.session.max_utterance_chars;
        let so_far = self.open_utterance.and_then(|id| self.active.get(&id)).map_or(0, |u| u.chars);
        if so_far + chars > max_utterance {
            return self.error(
                ErrorCode::InvalidMessage,
                format!("utterance would reach {} characters, over the limit of {max_utterance}", so_far + chars),
            );
        }
        let (utterance_id, flow) = self.add_text(self.open_utterance, text, is_final, None);
        self.open_utterance = if is_final { None } else { Some(utterance_id) };
        flow
    }

    /// Appends `text` to utterance `into` (`None`: a new one, traced under
    /// `parent` or else the session) and sends it to the worker; returns the
    /// utterance's id.
    pub(super) fn add_text(
        &mut self,
        into: Option<u64>,
        text: String,
        is_final: bool,
        parent: Option<&tracing::Span>,
    ) -> (u64, Flow) {
        let chars = text.chars().count();
        let now = Instant::now();
        let mut traceparent = String::new();
        let utterance_id = match into {
            Some(id) => id,
            None => {
                if self.active.is_empty() {
                    // The stall clock runs only while audio is owed.
                    self.last_worker_frame = now;
                }
                self.last_utterance += 1;
                let id = self.last_utterance;
                let span = match parent {
                    Some(p) => tracing::info_span!(parent: p, "utterance", utterance_id = id),
                    None => tracing::info_span!("utterance", utterance_id = id),
                };
                span.in_scope(|| tracing::debug!(chars, "utterance started"));
                // The worker's synthesis span is a child of this one.
                traceparent = duplex_telemetry::propagation::traceparent(&span);
                self.active.insert(id, Utterance::new(now, span));
                id
            }
        };
        if let Some(u) = self.active.get_mut(&utterance_id) {
            u.text.push_str(&text);
            u.chars += chars;
            u.text_final = is_final;
        }
        self.chunk_sequence += 1;
        let chunk = TextChunk {
            session_id: self.id.clone(),
            text,
            is_final,
            sequence_number: self.chunk_sequence,
            utterance_id,
            traceparent,
        };
        let flow = match &mut self.link {
            Link::Up(stream) => match stream.text_tx.try_send(chunk) {
                Ok(()) => Flow::Continue,
                Err(mpsc::error::TrySendError::Full(_)) => self.worker_failed("worker is not accepting text"),
                Err(mpsc::error::TrySendError::Closed(_)) => self.worker_failed("worker stream closed"),
            },
            // A reply streams in many small pieces: while the stream opens,
            // pieces of the same utterance join its last chunk.
            Link::Opening { backlog, .. }
                if backlog.last().is_some_and(|last| last.utterance_id == chunk.utterance_id && !last.is_final) =>
            {
                let last = backlog.last_mut().expect("checked above");
                last.text.push_str(&chunk.text);
                last.is_final = chunk.is_final;
                last.sequence_number = chunk.sequence_number;
                Flow::Continue
            }
            Link::Opening { backlog, .. } if backlog.len() < TEXT_BACKLOG => {
                backlog.push(chunk);
                Flow::Continue
            }
            Link::Opening { .. } => self.worker_failed("worker is not accepting text"),
            Link::Down => {
                self.open_link(chunk, Vec::new());
                Flow::Continue
            }
        };
        (utterance_id, flow)
    }

    pub(super) fn on_opened(&mut self, result: Result<WorkerStream, WorkerError>) -> Flow {
        let backlog = match std::mem::replace(&mut self.link, Link::Down) {
            Link::Opening { backlog, .. } => backlog,
            _ => Vec::new(),
        };
        match result {
            Ok(stream) => {
                self.last_worker_frame = Instant::now();
                for chunk in backlog {
                    // The stream's queue is larger than the backlog: this cannot be full.
                    if stream.text_tx.try_send(chunk).is_err() {
                        return self.worker_failed("worker stream closed");
                    }
                }
                self.link = Link::Up(stream);
                Flow::Continue
            }
            Err(e) => {
                let code = match e {
                    // Marked down by the pool: the text goes to another worker.
                    WorkerError::Unreachable { .. } | WorkerError::Timeout { .. } => {
                        tracing::warn!(error = %e, "worker failed to open the stream");
                        return self.fail_over(&e.to_string());
                    }
                    WorkerError::Busy(_) => ErrorCode::Busy,
                    WorkerError::Refused(_) => ErrorCode::SynthesisFailed,
                    WorkerError::NoWorker(_) => ErrorCode::WorkerUnavailable,
                };
                self.fail_owed(code, &e.to_string())
            }
        }
    }
}
