//! The spoken conversation of a session: microphone audio goes to the
//! hearing threads, their VAD events and the results of speech recognition
//! and the responder drive the turn machine (`crate::turn`), and this module
//! carries out what it decides — barge-in, transcription, replies spoken
//! through the same TTS path as text, history.
//!
//! Recognition starts early: when the speech pauses the detector hands over
//! the audio so far and Whisper transcribes it while the end-of-turn silence
//! runs (a *guess*); if the turn ends there, its transcript is already known
//! or nearly, and with `conversation.early_reply` the reply has started too
//! (its pieces wait until the turn is confirmed). Speech that resumes
//! withdraws the guess and cancels its work.
//!
//! Barge-in acts on the VAD decision itself: any bot audio (a reply or text
//! the client asked to hear) stops within the frame, the client is told to
//! clear what it buffered, and the worker to stop synthesizing.

use std::collections::{HashMap, VecDeque};

use duplex_reply::{Exchange, ReplyError, Request};
use duplex_speech::ears::Heard;
use duplex_speech::{Listener, VadEvent};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::{CancellationToken, DropGuard};

use super::{Flow, Session};
use crate::protocol::{EndReason, ErrorCode, ServerMessage};
use crate::turn::{self, Action, Event, Machine, Notice, State, TurnId};

/// Results of recognition and reply tasks waiting for the session loop. They
/// are few per turn; full means the loop is stuck, and the task waits.
const RESULT_QUEUE: usize = 64;

/// What recognition and reply tasks report to the session loop.
#[derive(Debug)]
pub(super) enum Outcome {
    Turn(Event),
    /// The transcript of the guess made at the pause that ended at `ended_ms`.
    Guessed {
        ended_ms: u64,
        text: String,
    },
}

/// Recognition (and maybe a reply) started at a pause, before the turn is
/// known to be over. Dropping it cancels its work.
struct Guess {
    /// Where the speech it heard ended (stream time); the turn's end must match.
    ended_ms: u64,
    cancel: CancellationToken,
    guard: DropGuard,
    /// Its transcript once known.
    text: watch::Receiver<Option<String>>,
    reply: Option<EarlyReply>,
}

/// A reply started on a guess: for which words and history, and its pieces so far.
struct EarlyReply {
    user: String,
    history: Vec<Exchange>,
    pieces: mpsc::Receiver<Result<String, ReplyError>>,
}

/// A turn's trace: its span (a child of the session's) and the phase spans
/// open now. Dropping a span ends it.
#[derive(Debug, Default)]
struct TurnTrace {
    turn: Option<tracing::Span>,
    asr: Option<tracing::Span>,
    reply: Option<tracing::Span>,
    first_audio: Option<tracing::Span>,
    playback: Option<tracing::Span>,
}

impl TurnTrace {
    fn new(turn: tracing::Span) -> Self {
        Self { turn: Some(turn), ..Self::default() }
    }

    fn phase(&self, name: &'static str) -> Option<tracing::Span> {
        let turn = self.turn.as_ref()?;
        Some(match name {
            "asr" => tracing::info_span!(parent: turn, "asr"),
            "reply" => tracing::info_span!(parent: turn, "reply"),
            "tts_first_audio" => tracing::info_span!(parent: turn, "tts_first_audio"),
            _ => tracing::info_span!(parent: turn, "playback"),
        })
    }
}

/// Timestamps of one turn, for its metrics.
#[derive(Debug, Default)]
struct Timing {
    speech_end: Option<Instant>,
    transcript: Option<Instant>,
    reply_asked: Option<Instant>,
    first_text: Option<Instant>,
    first_audio: Option<Instant>,
}

pub(super) struct Dialogue {
    /// The microphone stream, once the client sends audio (typed turns need none).
    listener: Option<Listener>,
    machine: Machine,
    history: VecDeque<Exchange>,
    results_tx: mpsc::Sender<Outcome>,
    results_rx: mpsc::Receiver<Outcome>,
    guess: Option<Guess>,
    /// Where the speech of the segment that just ended stopped (its guess's key).
    ended_ms: Option<u64>,
    /// The reply being generated, and how to stop it.
    reply: Option<(TurnId, CancellationToken)>,
    /// TTS utterances carrying replies, by utterance id.
    reply_utterances: HashMap<u64, TurnId>,
    /// The reply utterance still receiving text.
    open_reply: Option<(TurnId, u64)>,
    timing: HashMap<TurnId, Timing>,
    /// The user's speech in progress: its turn span and the `vad` span.
    speech: Option<(tracing::Span, tracing::Span)>,
    /// The turn span of speech that ended, until recognition numbers the turn.
    ended_turn: Option<tracing::Span>,
    traces: HashMap<TurnId, TurnTrace>,
    /// When the VAD decided the user speaks (barge-in reaction).
    speech_decided: Option<std::time::Instant>,
    told_no_asr: bool,
}

impl Dialogue {
    fn new() -> Self {
        let (results_tx, results_rx) = mpsc::channel(RESULT_QUEUE);
        Self {
            listener: None,
            machine: Machine::new(),
            history: VecDeque::new(),
            results_tx,
            results_rx,
            guess: None,
            ended_ms: None,
            reply: None,
            reply_utterances: HashMap::new(),
            open_reply: None,
            timing: HashMap::new(),
            speech: None,
            ended_turn: None,
            traces: HashMap::new(),
            speech_decided: None,
            told_no_asr: false,
        }
    }
}

/// What the dialogue has to say next: a VAD event or a task result.
pub(super) enum Next {
    Heard(Option<Heard>),
    Result(Outcome),
}

/// Pending while there is no dialogue. Cancel-safe (channel receives).
pub(super) async fn next(dialogue: &mut Option<Dialogue>) -> Next {
    match dialogue {
        Some(d) => match &mut d.listener {
            Some(listener) => tokio::select! {
                heard = listener.events.recv() => Next::Heard(heard),
                Some(result) = d.results_rx.recv() => Next::Result(result),
            },
            None => match d.results_rx.recv().await {
                Some(result) => Next::Result(result),
                None => std::future::pending().await,
            },
        },
        None => std::future::pending().await,
    }
}

impl Session {
    /// Microphone audio from the client.
    pub(super) fn on_mic(&mut self, pcm: Vec<i16>, sample_rate: u32) -> Flow {
        let d = self.dialogue.get_or_insert_with(Dialogue::new);
        if d.listener.as_ref().is_some_and(|l| l.rate_hz() != sample_rate) {
            d.listener = None; // a new rate: a new stream (the conversation goes on)
        }
        if d.listener.is_none() {
            let ears = match &self.state.conversation.ears {
                Ok(ears) => ears.clone(),
                Err(why) => {
                    return self
                        .error(ErrorCode::InvalidMessage, format!("microphone input is off on this server: {why}"));
                }
            };
            match ears.listen(sample_rate) {
                Ok(listener) => {
                    listener.set_bot_speaking(d.machine.bot_speaking());
                    d.listener = Some(listener);
                }
                Err(e) => return self.error(ErrorCode::InvalidMessage, e.to_string()),
            }
        }
        match d.listener.as_ref().map(|l| l.push(pcm)) {
            Some(Err(e)) => self.error(ErrorCode::InvalidMessage, e.to_string()),
            _ => Flow::Continue,
        }
    }

    /// The user typed instead of speaking: a turn of the conversation.
    pub(super) fn on_user_text(&mut self, text: String) -> Flow {
        let limit = self.state.config.session.max_text_chars;
        if text.trim().is_empty() {
            return self.error(ErrorCode::InvalidMessage, "user_text needs some text");
        }
        if text.chars().count() > limit {
            return self.error(ErrorCode::InvalidMessage, format!("user_text is longer than {limit} characters"));
        }
        self.dialogue.get_or_insert_with(Dialogue::new);
        // Any bot audio stops, as when the user speaks over it.
        if let Flow::End(r) = self.barge_in() {
            return Flow::End(r);
        }
        self.turn(Event::Typed { text })
    }

    pub(super) fn on_dialogue(&mut self, next: Next) -> Flow {
        match next {
            Next::Heard(Some(Heard::Vad { event, at })) => self.on_vad(event, at),
            Next::Heard(Some(Heard::Failed(why))) => {
                if let Some(d) = &mut self.dialogue {
                    d.listener = None;
                }
                self.error(ErrorCode::InternalError, format!("voice activity detection failed: {why}"))
            }
            Next::Heard(None) => {
                if let Some(d) = &mut self.dialogue {
                    d.listener = None;
                }
                Flow::Continue
            }
            Next::Result(Outcome::Turn(event)) => {
                self.note_result(&event);
                self.turn(event)
            }
            Next::Result(Outcome::Guessed { ended_ms, text }) => self.on_guessed(ended_ms, text),
        }
    }

    fn on_vad(&mut self, event: VadEvent, at: std::time::Instant) -> Flow {
        match event {
            VadEvent::SpeechStart { .. } => {
                if let Some(d) = &mut self.dialogue {
                    d.speech_decided = Some(at);
                    d.guess = None;
                    let turn = tracing::info_span!("turn");
                    let vad = tracing::info_span!(parent: &turn, "vad");
                    d.speech = Some((turn, vad));
                }
                // Any bot audio stops now, reply or not.
                if let Flow::End(r) = self.barge_in() {
                    return Flow::End(r);
                }
                self.turn(Event::SpeechStarted)
            }
            VadEvent::SpeechEnd { audio, ended_ms, .. } => {
                if let Some(d) = &mut self.dialogue {
                    d.ended_ms = Some(ended_ms);
                    // The vad span ends here; the turn goes on.
                    d.ended_turn = d.speech.take().map(|(turn, _vad)| turn);
                }
                self.turn(Event::SpeechEnded { audio })
            }
            VadEvent::Pause { audio, ended_ms } => self.guess(audio, ended_ms),
            VadEvent::Resumed => {
                if let Some(d) = &mut self.dialogue
                    && d.guess.take().is_some()
                {
                    self.state.metrics.guesses.with_label_values(&["withdrawn"]).inc();
                }
                Flow::Continue
            }
        }
    }

    /// The speech paused: transcribe what was said so far.
    fn guess(&mut self, audio: Vec<f32>, ended_ms: u64) -> Flow {
        let (Some(d), Ok(asr)) = (&mut self.dialogue, &self.state.conversation.asr) else { return Flow::Continue };
        let cancel = self.state.shutdown.child_token();
        let (text_tx, text) = watch::channel(None);
        d.guess =
            Some(Guess { ended_ms, cancel: cancel.clone(), guard: cancel.clone().drop_guard(), text, reply: None });
        let (asr, metrics, results) = (asr.clone(), self.state.metrics.clone(), d.results_tx.clone());
        self.state.tasks.spawn(async move {
            let started = std::time::Instant::now();
            let text = tokio::select! {
                _ = cancel.cancelled() => return,
                result = asr.transcribe(audio) => recognized(result),
            };
            metrics.asr.observe(started.elapsed().as_secs_f64());
            text_tx.send_replace(Some(text.clone()));
            let _ = results.send(Outcome::Guessed { ended_ms, text }).await;
        });
        Flow::Continue
    }

    /// A guess's transcript arrived while the speech is still paused: with
    /// `early_reply`, start the reply to it.
    fn on_guessed(&mut self, ended_ms: u64, text: String) -> Flow {
        let Some(d) = &mut self.dialogue else { return Flow::Continue };
        let Some(guess) = d.guess.as_mut().filter(|g| g.ended_ms == ended_ms) else { return Flow::Continue };
        // Only a plain turn: with a cut reply or earlier words the machine
        // asks for something else.
        let plain = matches!(d.machine.state(), State::UserSpeaking { cut: None, earlier: None });
        if !self.state.conversation.early_reply || !plain || text.is_empty() || guess.reply.is_some() {
            return Flow::Continue;
        }
        let user = turn::join("", &text);
        let history: Vec<Exchange> = d.history.iter().cloned().collect();
        // One token for the guess's recognition and its reply: both fall with it.
        let request = Request { history: history.clone(), user: user.clone(), cancel: guess.cancel.clone() };
        let pieces = self.state.conversation.responder.respond(request);
        guess.reply = Some(EarlyReply { user, history, pieces });
        Flow::Continue
    }

    /// Silences the bot: every utterance ends (stopped), the worker stops,
    /// and the client is told to drop what it buffered.
    fn barge_in(&mut self) -> Flow {
        if self.active.is_empty() {
            return Flow::Continue;
        }
        let ids: Vec<u64> = self.active.keys().copied().collect();
        if let Flow::End(r) = self.stop_all() {
            return Flow::End(r);
        }
        self.stop_worker();
        if let Some(d) = &mut self.dialogue {
            d.open_reply = None;
            if let Some(at) = d.speech_decided {
                self.state.metrics.barge_in.observe(at.elapsed().as_secs_f64());
            }
        }
        tracing::debug!(utterances = ?ids, "barge-in");
        self.send(ServerMessage::Clear { utterance_ids: ids })
    }

    /// The client sent STOP: a reply being spoken ends there.
    pub(super) fn on_stopped_by_client(&mut self) -> Flow {
        if self.dialogue.as_ref().is_some_and(|d| d.machine.bot_speaking()) {
            return self.turn(Event::Silenced);
        }
        Flow::Continue
    }

    /// Feeds the turn machine and carries out what it decides.
    fn turn(&mut self, event: Event) -> Flow {
        let Some(d) = &mut self.dialogue else { return Flow::Continue };
        let actions = d.machine.on_event(event);
        for action in actions {
            if let Flow::End(r) = self.act(action) {
                return Flow::End(r);
            }
        }
        if let Some(d) = &self.dialogue
            && let Some(listener) = &d.listener
        {
            listener.set_bot_speaking(d.machine.bot_speaking());
        }
        Flow::Continue
    }

    fn act(&mut self, action: Action) -> Flow {
        match action {
            Action::StopSpeaking { .. } => self.barge_in(),
            Action::CancelReply { turn } => {
                if let Some(d) = &mut self.dialogue
                    && let Some((t, cancel)) = &d.reply
                    && *t == turn
                {
                    cancel.cancel();
                    d.reply = None;
                }
                Flow::Continue
            }
            Action::Transcribe { turn, audio } => self.transcribe(turn, audio),
            Action::Respond { turn, user } => self.respond(turn, user),
            Action::Speak { turn, text, fresh, is_final } => self.speak(turn, text, fresh, is_final),
            Action::Remember { user, assistant } => {
                if let Some(d) = &mut self.dialogue {
                    d.history.push_back(Exchange { user, assistant });
                    while d.history.len() > self.state.conversation.history_turns {
                        d.history.pop_front();
                    }
                }
                Flow::Continue
            }
            Action::Notify(notice) => self.notify(notice),
        }
    }

    fn transcribe(&mut self, turn: TurnId, audio: Vec<f32>) -> Flow {
        let Some(d) = &mut self.dialogue else { return Flow::Continue };
        d.timing.insert(turn, Timing { speech_end: Some(Instant::now()), ..Timing::default() });
        let span = d.ended_turn.take().unwrap_or_else(|| tracing::info_span!("turn"));
        let mut trace = TurnTrace::new(span);
        trace.asr = trace.phase("asr");
        d.traces.insert(turn, trace);
        let results = d.results_tx.clone();
        // The turn ended where a guess stopped listening: its transcript is the turn's.
        let ended_ms = d.ended_ms.take();
        if let Some(guess) = d.guess.take_if(|g| Some(g.ended_ms) == ended_ms) {
            self.state.metrics.guesses.with_label_values(&["used"]).inc();
            let known = guess.text.borrow().clone();
            if let Some(text) = known {
                if results.try_send(Outcome::Turn(Event::Transcript { turn, text })).is_ok() {
                    d.guess = Some(guess); // its early reply, if any, is wanted next
                    return Flow::Continue;
                }
            } else {
                let mut text = guess.text.clone();
                let _token = guess.guard.disarm(); // recognition goes on for this turn
                self.state.tasks.spawn(async move {
                    let known = text.wait_for(Option::is_some).await.map(|t| t.clone().unwrap_or_default());
                    if let Ok(text) = known {
                        let _ = results.send(Outcome::Turn(Event::Transcript { turn, text })).await;
                    }
                });
                return Flow::Continue;
            }
        } else if d.guess.take().is_some() {
            self.state.metrics.guesses.with_label_values(&["withdrawn"]).inc();
        }
        match &self.state.conversation.asr {
            Ok(asr) => {
                let (asr, metrics) = (asr.clone(), self.state.metrics.clone());
                self.state.tasks.spawn(async move {
                    let started = std::time::Instant::now();
                    let text = recognized(asr.transcribe(audio).await);
                    metrics.asr.observe(started.elapsed().as_secs_f64());
                    let _ = results.send(Outcome::Turn(Event::Transcript { turn, text })).await;
                });
                Flow::Continue
            }
            Err(why) => {
                // Without recognition the turn has no words; say so once.
                let _ = results.try_send(Outcome::Turn(Event::Transcript { turn, text: String::new() }));
                if d.told_no_asr {
                    return Flow::Continue;
                }
                d.told_no_asr = true;
                let why = why.clone();
                self.error(ErrorCode::InternalError, format!("speech was heard but cannot be understood: {why}"))
            }
        }
    }

    fn respond(&mut self, turn: TurnId, user: String) -> Flow {
        let Some(d) = &mut self.dialogue else { return Flow::Continue };
        if let Some((_, old)) = d.reply.take() {
            old.cancel();
        }
        d.timing.entry(turn).or_default().reply_asked = Some(Instant::now());
        // A typed turn starts here.
        let trace = d.traces.entry(turn).or_insert_with(|| TurnTrace::new(tracing::info_span!("turn")));
        trace.reply = trace.phase("reply");
        let history: Vec<Exchange> = d.history.iter().cloned().collect();
        // A reply started early on these very words and history is this turn's.
        let early = d.guess.take().and_then(|g| match g.reply {
            Some(r) if r.user == user && r.history == history => Some((g.guard.disarm(), r.pieces)),
            _ => None,
        });
        let (cancel, mut pieces) = match early {
            Some(early) => early,
            None => {
                let cancel = self.state.shutdown.child_token();
                let request = Request { history, user, cancel: cancel.clone() };
                (cancel, self.state.conversation.responder.respond(request))
            }
        };
        d.reply = Some((turn, cancel.clone()));
        let results = d.results_tx.clone();
        self.state.tasks.spawn(async move {
            loop {
                let piece = tokio::select! {
                    _ = cancel.cancelled() => return,
                    piece = pieces.recv() => piece,
                };
                let event = match piece {
                    Some(Ok(text)) => Event::ReplyText { turn, text },
                    Some(Err(e)) => {
                        tracing::warn!(error = %e, "the responder failed");
                        let _ = results.send(Outcome::Turn(Event::ReplyFailed { turn, message: e.to_string() })).await;
                        return;
                    }
                    None => {
                        let _ = results.send(Outcome::Turn(Event::ReplyDone { turn })).await;
                        return;
                    }
                };
                if results.send(Outcome::Turn(event)).await.is_err() {
                    return;
                }
            }
        });
        Flow::Continue
    }

    fn speak(&mut self, turn: TurnId, text: String, fresh: bool, is_final: bool) -> Flow {
        let Some(d) = &mut self.dialogue else { return Flow::Continue };
        let into = match d.open_reply {
            Some((t, id)) if t == turn && !fresh => Some(id),
            _ => None,
        };
        if into.is_none() && text.is_empty() && is_final {
            return Flow::Continue; // nothing open to finish
        }
        let trace = d.traces.entry(turn).or_default();
        if trace.first_audio.is_none() && trace.playback.is_none() {
            trace.first_audio = trace.phase("tts_first_audio");
        }
        let parent = trace.turn.clone();
        let (id, flow) = self.add_text(into, text, is_final, parent.as_ref());
        if let Some(d) = &mut self.dialogue {
            d.reply_utterances.insert(id, turn);
            d.open_reply = if is_final { None } else { Some((turn, id)) };
        }
        flow
    }

    fn notify(&mut self, notice: Notice) -> Flow {
        let msg = match notice {
            Notice::State { state, turn } => ServerMessage::State { state: state.into(), turn },
            Notice::Transcript { turn, text } => ServerMessage::Transcript { turn, text, is_final: true },
            Notice::Reply { turn, text } => ServerMessage::Reply { turn, text },
            Notice::Interrupted { turn, heard } => ServerMessage::Interrupted { turn, heard },
            Notice::Resumed { turn, from_char } => {
                self.state.metrics.false_barge_ins.inc();
                ServerMessage::Resumed { turn, from_char }
            }
        };
        self.send(msg)
    }

    /// Timestamps for the turn's metrics.
    fn note_result(&mut self, event: &Event) {
        let Some(d) = &mut self.dialogue else { return };
        let now = Instant::now();
        match event {
            Event::Transcript { turn, text } => {
                d.timing.entry(*turn).or_default().transcript = Some(now);
                if text.is_empty() {
                    d.traces.remove(turn); // nothing was said: the turn ends here
                } else if let Some(trace) = d.traces.get_mut(turn) {
                    trace.asr = None;
                }
            }
            Event::ReplyDone { turn } | Event::ReplyFailed { turn, .. } => {
                if let Some(trace) = d.traces.get_mut(turn) {
                    trace.reply = None;
                }
            }
            Event::ReplyText { turn, .. } => {
                let t = d.timing.entry(*turn).or_default();
                if t.first_text.is_none() {
                    t.first_text = Some(now);
                    if let Some(asked) = t.reply_asked {
                        self.state.metrics.reply_first_text.observe((now - asked).as_secs_f64());
                    }
                }
            }
            _ => {}
        }
    }

    /// A frame of utterance `id` was sent to the client.
    pub(super) fn on_frame_sent(&mut self, id: u64, text_offset: usize) -> Flow {
        let Some(d) = &mut self.dialogue else { return Flow::Continue };
        let Some(&turn) = d.reply_utterances.get(&id) else { return Flow::Continue };
        let now = Instant::now();
        let t = d.timing.entry(turn).or_default();
        let first = t.first_audio.is_none();
        if first {
            t.first_audio = Some(now);
            if let Some(trace) = d.traces.get_mut(&turn) {
                trace.first_audio = None;
                trace.playback = trace.phase("playback");
            }
        }
        // A typed turn has no end of speech to measure from.
        let report = (first && t.speech_end.is_some()).then(|| {
            let since = |at: Option<Instant>| at.and_then(|a| t.speech_end.map(|end| (a - end).as_secs_f64() * 1e3));
            if let Some(end) = t.speech_end {
                self.state.metrics.turn_latency.observe((now - end).as_secs_f64());
            }
            ServerMessage::TurnMetrics {
                turn,
                transcript_ms: since(t.transcript),
                first_reply_text_ms: since(t.first_text),
                first_audio_ms: since(t.first_audio),
            }
        });
        if let Some(msg) = report
            && let Flow::End(r) = self.send(msg)
        {
            return Flow::End(r);
        }
        self.turn(Event::Played { turn, text_offset })
    }

    /// Utterance `id` ended for the client.
    pub(super) fn on_utterance_ended(&mut self, id: u64, reason: EndReason) -> Flow {
        let Some(d) = &mut self.dialogue else { return Flow::Continue };
        let Some(turn) = d.reply_utterances.remove(&id) else { return Flow::Continue };
        let still_open = d.open_reply.is_some_and(|(t, _)| t == turn);
        if !still_open {
            d.traces.remove(&turn); // playback over (or cut): the turn's trace ends
        }
        if reason == EndReason::Completed && !still_open {
            d.timing.remove(&turn);
            return self.turn(Event::PlaybackDone { turn });
        }
        Flow::Continue
    }
}

/// A recogniser's answer as the turn's text: a failure is logged and heard as nothing.
fn recognized(
    result: Result<Result<String, duplex_speech::AsrError>, tokio::sync::oneshot::error::RecvError>,
) -> String {
    match result {
        Ok(Ok(text)) => text,
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "speech recognition failed");
            String::new()
        }
        Err(_) => String::new(),
    }
}
