//! Turn-taking as a pure state machine: `Machine::on_event(event) -> actions`.
//! No I/O and no clock: the session task feeds it VAD, ASR, reply and
//! playback events and carries out the actions it returns, so every
//! transition is unit-tested here.
//!
//! Listening → (speech starts) → UserSpeaking → (speech ends) → Thinking
//! (transcribe, then ask the responder) → Speaking (reply text streams into
//! TTS as it comes) → (its audio has played) → Listening.
//!
//! Speech that starts while the bot speaks is a barge-in: the bot stops at
//! once and the reply is kept aside as `cut`. If the user said something, the
//! reply is abandoned and the history keeps only what was heard of it; if the
//! transcript is empty (a cough, a door, echo), the reply resumes from the
//! sentence it was cut in.

/// Numbers user turns; a reply belongs to the turn that asked for it.
pub type TurnId = u64;

/// A reply as far as it has come.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Reply {
    /// What the user said (the turn's transcript).
    pub user: String,
    /// Reply text received from the responder so far.
    pub text: String,
    /// The responder has finished.
    pub done: bool,
    /// Where the text given to the current TTS utterance starts (characters).
    pub base: usize,
    /// Where the sentence being played starts (characters, absolute): what
    /// was heard ends before it, and a resume starts there.
    pub heard_to: usize,
}

impl Reply {
    /// What the listener heard: the sentences before the one that was cut.
    pub fn heard(&self) -> String {
        self.text.chars().take(self.heard_to).collect::<String>().trim_end().to_string()
    }

    fn rest(&self) -> String {
        self.text.chars().skip(self.heard_to).collect()
    }
}

/// A reply cut off by the user's speech, kept until we know whether the
/// speech was a real interruption.
#[derive(Debug, Clone, PartialEq)]
pub struct Cut {
    pub turn: TurnId,
    pub reply: Reply,
}

#[derive(Debug, Clone, PartialEq)]
pub enum State {
    Listening,
    /// `earlier`: words of turns the user went on talking after (the turn
    /// whose transcript is still awaited, 0 when none, and the words so far);
    /// they are prepended to this turn's.
    UserSpeaking {
        cut: Option<Cut>,
        earlier: Option<(TurnId, String)>,
    },
    /// Transcribing `turn`, then waiting for its reply.
    Thinking {
        turn: TurnId,
        cut: Option<Cut>,
        earlier: Option<(TurnId, String)>,
    },
    Speaking {
        turn: TurnId,
        reply: Reply,
    },
}

impl State {
    pub fn name(&self) -> &'static str {
        match self {
            State::Listening => "listening",
            State::UserSpeaking { .. } => "user_speaking",
            State::Thinking { .. } => "thinking",
            State::Speaking { .. } => "speaking",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// The VAD confirmed speech.
    SpeechStarted,
    /// The VAD saw the speech end; its audio (16 kHz) is the turn's.
    SpeechEnded {
        audio: Vec<f32>,
    },
    /// ASR result for `turn` (empty = nothing intelligible).
    Transcript {
        turn: TurnId,
        text: String,
    },
    /// More reply text for `turn`.
    ReplyText {
        turn: TurnId,
        text: String,
    },
    ReplyDone {
        turn: TurnId,
    },
    ReplyFailed {
        turn: TurnId,
        message: String,
    },
    /// A frame of `turn`'s reply was played; `text_offset` is relative to
    /// the text of the utterance it came from.
    Played {
        turn: TurnId,
        text_offset: usize,
    },
    /// All of `turn`'s reply audio has been played.
    PlaybackDone {
        turn: TurnId,
    },
    /// The client stopped the bot (STOP): the reply ends where it was.
    Silenced,
    /// The user typed instead of speaking: a turn whose words are known.
    Typed {
        text: String,
    },
}

/// Told to the client.
#[derive(Debug, Clone, PartialEq)]
pub enum Notice {
    State {
        state: &'static str,
        turn: Option<TurnId>,
    },
    Transcript {
        turn: TurnId,
        text: String,
    },
    /// A piece of reply text (as it streams).
    Reply {
        turn: TurnId,
        text: String,
    },
    /// The reply was interrupted; `heard` is what the user heard of it.
    Interrupted {
        turn: TurnId,
        heard: String,
    },
    /// The interruption was not speech: the reply goes on from `from_char`.
    Resumed {
        turn: TurnId,
        from_char: usize,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Silence the bot at once: stop its TTS, drop queued audio, tell the client to clear.
    StopSpeaking {
        turn: TurnId,
    },
    /// Stop generating `turn`'s reply.
    CancelReply {
        turn: TurnId,
    },
    Transcribe {
        turn: TurnId,
        audio: Vec<f32>,
    },
    /// Ask the responder to answer `user` (history is the session's).
    Respond {
        turn: TurnId,
        user: String,
    },
    /// Send reply text to TTS; the first `Speak` of a turn (or after a
    /// resume, `fresh`) opens a new utterance.
    Speak {
        turn: TurnId,
        text: String,
        fresh: bool,
        is_final: bool,
    },
    /// Record an exchange in the history: what the user said and what of the
    /// reply they heard.
    Remember {
        user: String,
        assistant: String,
    },
    Notify(Notice),
}

#[derive(Debug)]
pub struct Machine {
    state: State,
    last_turn: TurnId,
}

impl Default for Machine {
    fn default() -> Self {
        Self::new()
    }
}

impl Machine {
    pub fn new() -> Self {
        Self { state: State::Listening, last_turn: 0 }
    }

    pub fn state(&self) -> &State {
        &self.state
    }

    /// The bot is (or should be) audible: stricter barge-in detection applies.
    pub fn bot_speaking(&self) -> bool {
        matches!(self.state, State::Speaking { .. })
    }

    pub fn on_event(&mut self, event: Event) -> Vec<Action> {
        let mut actions = Vec::new();
        let before = self.state.name();
        let state = std::mem::replace(&mut self.state, State::Listening);
        self.state = self.step(state, event, &mut actions);
        if self.state.name() != before {
            let turn = match &self.state {
                State::Thinking { turn, .. } | State::Speaking { turn, .. } => Some(*turn),
                _ => None,
            };
            actions.push(Action::Notify(Notice::State { state: self.state.name(), turn }));
        }
        actions
    }

    fn step(&mut self, state: State, event: Event, out: &mut Vec<Action>) -> State {
        use Event as E;
        use State as S;
        match (state, event) {
            // --- the user starts speaking ---
            (S::Listening, E::SpeechStarted) => S::UserSpeaking { cut: None, earlier: None },
            (S::Speaking { turn, reply }, E::SpeechStarted) => {
                out.push(Action::StopSpeaking { turn });
                S::UserSpeaking { cut: Some(Cut { turn, reply }), earlier: None }
            }
            (S::Thinking { turn, cut, earlier }, E::SpeechStarted) => {
                // They went on talking: this turn's words join the next one's.
                let words = earlier.map(|(_, w)| w).unwrap_or_default();
                S::UserSpeaking { cut, earlier: Some((turn, words)) }
            }

            // --- the user stops ---
            (S::UserSpeaking { cut, earlier }, E::SpeechEnded { audio }) => {
                self.last_turn += 1;
                let turn = self.last_turn;
                out.push(Action::Transcribe { turn, audio });
                S::Thinking { turn, cut, earlier }
            }

            // --- transcripts ---
            (S::UserSpeaking { cut, earlier: Some((t, words)) }, E::Transcript { turn, text }) if t == turn => {
                S::UserSpeaking { cut, earlier: Some((0, join(&words, &text))) }
            }
            (S::Thinking { turn, cut, earlier: Some((t, words)) }, E::Transcript { turn: e, text }) if t == e => {
                S::Thinking { turn, cut, earlier: Some((0, join(&words, &text))) }
            }
            (S::Thinking { turn, cut, earlier }, E::Transcript { turn: t, text }) if t == turn => {
                let user = join(&earlier.map(|(_, w)| w).unwrap_or_default(), &text);
                self.answer(turn, cut, user, out)
            }

            // --- typed words ---
            (S::Listening, E::Typed { text }) => {
                self.last_turn += 1;
                self.answer(self.last_turn, None, text.trim().to_string(), out)
            }
            (S::Speaking { turn, reply }, E::Typed { text }) => {
                // Typing over the bot interrupts it like speaking does.
                out.push(Action::StopSpeaking { turn });
                self.last_turn += 1;
                self.answer(self.last_turn, Some(Cut { turn, reply }), text.trim().to_string(), out)
            }
            // Typed while speaking or being understood: the words join that turn.
            (S::UserSpeaking { cut, earlier }, E::Typed { text }) => {
                let (t, words) = earlier.unwrap_or_default();
                S::UserSpeaking { cut, earlier: Some((t, join(&words, &text))) }
            }
            (S::Thinking { turn, cut, earlier }, E::Typed { text }) => {
                let (t, words) = earlier.unwrap_or_default();
                S::Thinking { turn, cut, earlier: Some((t, join(&words, &text))) }
            }

            // --- the reply streams in ---
            (S::Speaking { turn, mut reply }, E::ReplyText { turn: t, text }) if t == turn => {
                let fresh = reply.text.is_empty();
                reply.text.push_str(&text);
                out.push(Action::Notify(Notice::Reply { turn, text: text.clone() }));
                out.push(Action::Speak { turn, text, fresh, is_final: false });
                S::Speaking { turn, reply }
            }
            (S::Speaking { turn, mut reply }, E::ReplyDone { turn: t }) if t == turn => {
                reply.done = true;
                if reply.text.trim().is_empty() {
                    // Nothing to say: the turn ends here.
                    out.push(Action::Remember { user: reply.user.clone(), assistant: String::new() });
                    return S::Listening;
                }
                out.push(Action::Speak { turn, text: String::new(), fresh: false, is_final: true });
                S::Speaking { turn, reply }
            }
            (S::Speaking { turn, reply }, E::ReplyFailed { turn: t, .. }) if t == turn => {
                if reply.text.trim().is_empty() {
                    return S::Listening;
                }
                // Say what came; the history keeps it.
                out.push(Action::Speak { turn, text: String::new(), fresh: false, is_final: true });
                S::Speaking { turn, reply: Reply { done: true, ..reply } }
            }
            // A cut reply keeps growing while we find out whether the interruption was real.
            (S::UserSpeaking { cut: Some(mut cut), earlier }, E::ReplyText { turn, text }) if cut.turn == turn => {
                cut.reply.text.push_str(&text);
                S::UserSpeaking { cut: Some(cut), earlier }
            }
            (S::Thinking { turn: now, cut: Some(mut cut), earlier }, E::ReplyText { turn, text })
                if cut.turn == turn =>
            {
                cut.reply.text.push_str(&text);
                S::Thinking { turn: now, cut: Some(cut), earlier }
            }
            (S::UserSpeaking { cut: Some(mut cut), earlier }, E::ReplyDone { turn }) if cut.turn == turn => {
                cut.reply.done = true;
                S::UserSpeaking { cut: Some(cut), earlier }
            }
            (S::Thinking { turn: now, cut: Some(mut cut), earlier }, E::ReplyDone { turn }) if cut.turn == turn => {
                cut.reply.done = true;
                S::Thinking { turn: now, cut: Some(cut), earlier }
            }

            // --- playback ---
            (S::Speaking { turn, mut reply }, E::Played { turn: t, text_offset }) if t == turn => {
                reply.heard_to = reply.heard_to.max(reply.base + text_offset);
                S::Speaking { turn, reply }
            }
            (S::Speaking { turn, reply }, E::PlaybackDone { turn: t }) if t == turn && reply.done => {
                out.push(Action::Remember { user: reply.user.clone(), assistant: reply.text.trim().to_string() });
                S::Listening
            }

            (S::Speaking { turn, reply }, E::Silenced) => {
                out.push(Action::CancelReply { turn });
                let heard = reply.heard();
                out.push(Action::Notify(Notice::Interrupted { turn, heard: heard.clone() }));
                out.push(Action::Remember { user: reply.user, assistant: with_cut_mark(heard) });
                S::Listening
            }

            // Anything else is stale (an old turn's late result) or has no effect here.
            (state, _) => state,
        }
    }

    /// The user said (or typed) `user` in `turn`: answer it, abandoning a cut
    /// reply; nothing intelligible (or a backchannel over the bot) resumes the
    /// cut reply instead.
    fn answer(&mut self, turn: TurnId, cut: Option<Cut>, user: String, out: &mut Vec<Action>) -> State {
        if user.is_empty() || (cut.is_some() && is_backchannel(&user)) {
            // Not speech after all, or "mm-hm" while the bot talks: go on.
            return match cut {
                Some(cut) => self.resume(cut, out),
                None => State::Listening,
            };
        }
        out.push(Action::Notify(Notice::Transcript { turn, text: user.clone() }));
        if let Some(cut) = cut {
            out.push(Action::CancelReply { turn: cut.turn });
            let heard = cut.reply.heard();
            out.push(Action::Notify(Notice::Interrupted { turn: cut.turn, heard: heard.clone() }));
            out.push(Action::Remember { user: cut.reply.user.clone(), assistant: with_cut_mark(heard) });
        }
        out.push(Action::Respond { turn, user: user.clone() });
        State::Speaking { turn, reply: Reply { user, ..Reply::default() } }
    }

    /// The interruption was not speech: speak the cut reply again from the
    /// sentence it was cut in.
    fn resume(&mut self, cut: Cut, out: &mut Vec<Action>) -> State {
        let Cut { turn, mut reply } = cut;
        let rest = reply.rest();
        if rest.trim().is_empty() && reply.done {
            out.push(Action::Remember { user: reply.user.clone(), assistant: reply.text.trim().to_string() });
            return State::Listening;
        }
        out.push(Action::Notify(Notice::Resumed { turn, from_char: reply.heard_to }));
        out.push(Action::Speak { turn, text: rest, fresh: true, is_final: reply.done });
        reply.base = reply.heard_to;
        State::Speaking { turn, reply }
    }
}

/// Sounds a listener makes while someone else talks ("mm-hmm", "uh-huh",
/// "okay"): said over a reply they do not interrupt it.
const BACKCHANNELS: &[&str] =
    &["uh", "um", "umm", "hm", "hmm", "hmmm", "mm", "mmm", "mhm", "mm-hmm", "uh-huh", "ah", "oh", "er", "okay"];

/// Whether `text` is nothing but backchannel sounds.
pub fn is_backchannel(text: &str) -> bool {
    let words: Vec<String> = text
        .split(|c: char| c.is_whitespace() || c == ',')
        .map(|w| w.trim_matches(|c: char| !c.is_alphanumeric() && c != '-').to_lowercase())
        .filter(|w| !w.is_empty())
        .collect();
    // A hum however it is spelled ("mmm", "nmmm", "mhmm"): only m, h and n.
    let hum = |w: &str| w.len() >= 2 && w.chars().all(|c| matches!(c, 'm' | 'h' | 'n'));
    !words.is_empty() && words.iter().all(|w| BACKCHANNELS.contains(&w.as_str()) || hum(w))
}

/// `a` then `b`, trimmed, one blank between.
pub(crate) fn join(a: &str, b: &str) -> String {
    format!("{} {}", a.trim(), b.trim()).trim().to_string()
}

fn with_cut_mark(heard: String) -> String {
    if heard.is_empty() { heard } else { format!("{heard} —") }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn speak_actions(actions: &[Action]) -> Vec<(String, bool, bool)> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Speak { text, fresh, is_final, .. } => Some((text.clone(), *fresh, *is_final)),
                _ => None,
            })
            .collect()
    }

    /// Drives a machine to Speaking turn 1 with `reply` fully received.
    fn speaking(reply: &str) -> Machine {
        let mut m = Machine::new();
        m.on_event(Event::SpeechStarted);
        m.on_event(Event::SpeechEnded { audio: vec![0.0; 16] });
        m.on_event(Event::Transcript { turn: 1, text: "What time is it?".into() });
        m.on_event(Event::ReplyText { turn: 1, text: reply.into() });
        m.on_event(Event::ReplyDone { turn: 1 });
        m
    }

    #[test]
    fn a_turn_goes_round_and_is_remembered() {
        let mut m = Machine::new();
        assert_eq!(
            m.on_event(Event::SpeechStarted),
            vec![Action::Notify(Notice::State { state: "user_speaking", turn: None })]
        );
        let a = m.on_event(Event::SpeechEnded { audio: vec![0.5; 4] });
        assert_eq!(a[0], Action::Transcribe { turn: 1, audio: vec![0.5; 4] });
        let a = m.on_event(Event::Transcript { turn: 1, text: " Hello there. ".into() });
        assert!(a.contains(&Action::Notify(Notice::Transcript { turn: 1, text: "Hello there.".into() })));
        assert!(a.contains(&Action::Respond { turn: 1, user: "Hello there.".into() }));
        assert_eq!(m.state().name(), "speaking");
        let a = m.on_event(Event::ReplyText { turn: 1, text: "Hi, ".into() });
        assert_eq!(speak_actions(&a), vec![("Hi, ".into(), true, false)]);
        let a = m.on_event(Event::ReplyText { turn: 1, text: "how are you?".into() });
        assert_eq!(speak_actions(&a), vec![("how are you?".into(), false, false)]);
        let a = m.on_event(Event::ReplyDone { turn: 1 });
        assert_eq!(speak_actions(&a), vec![(String::new(), false, true)]);
        // Audio plays; the turn ends when it has all been heard.
        assert!(m.on_event(Event::Played { turn: 1, text_offset: 4 }).is_empty());
        let a = m.on_event(Event::PlaybackDone { turn: 1 });
        assert!(a.contains(&Action::Remember { user: "Hello there.".into(), assistant: "Hi, how are you?".into() }));
        assert_eq!(m.state(), &State::Listening);
    }

    #[test]
    fn speech_over_the_reply_stops_it_and_a_real_interruption_keeps_what_was_heard() {
        let mut m = speaking("It is noon. The sun is high. Enjoy your lunch.");
        m.on_event(Event::Played { turn: 1, text_offset: 0 });
        m.on_event(Event::Played { turn: 1, text_offset: 12 }); // "The sun is high." is playing
        let a = m.on_event(Event::SpeechStarted);
        assert_eq!(a[0], Action::StopSpeaking { turn: 1 });
        assert!(!m.bot_speaking());
        m.on_event(Event::SpeechEnded { audio: vec![] });
        let a = m.on_event(Event::Transcript { turn: 2, text: "Thanks, bye".into() });
        assert!(a.contains(&Action::CancelReply { turn: 1 }));
        assert!(a.contains(&Action::Notify(Notice::Interrupted { turn: 1, heard: "It is noon.".into() })));
        assert!(a.contains(&Action::Remember { user: "What time is it?".into(), assistant: "It is noon. —".into() }));
        assert!(a.contains(&Action::Respond { turn: 2, user: "Thanks, bye".into() }));
    }

    #[test]
    fn a_cough_during_the_reply_resumes_it_from_the_cut_sentence() {
        let mut m = speaking("It is noon. The sun is high.");
        m.on_event(Event::Played { turn: 1, text_offset: 12 });
        m.on_event(Event::SpeechStarted);
        m.on_event(Event::SpeechEnded { audio: vec![] });
        let a = m.on_event(Event::Transcript { turn: 2, text: "  ".into() });
        assert!(a.contains(&Action::Notify(Notice::Resumed { turn: 1, from_char: 12 })));
        assert_eq!(speak_actions(&a), vec![("The sun is high.".into(), true, true)]);
        assert!(m.bot_speaking());
        // Offsets of the resumed utterance are relative to its own text.
        m.on_event(Event::Played { turn: 1, text_offset: 0 });
        let a = m.on_event(Event::PlaybackDone { turn: 1 });
        assert!(a.contains(&Action::Remember {
            user: "What time is it?".into(),
            assistant: "It is noon. The sun is high.".into()
        }));
    }

    #[test]
    fn a_backchannel_over_the_reply_resumes_it_but_is_a_turn_when_alone() {
        assert!(is_backchannel("Mm-hmm.") && is_backchannel("Uh, okay") && is_backchannel(" Hmm? "));
        assert!(is_backchannel("NMMM.") && !is_backchannel("Man."));
        assert!(!is_backchannel("Hmm, stop.") && !is_backchannel(""));
        let mut m = speaking("It is noon. The sun is high.");
        m.on_event(Event::SpeechStarted);
        m.on_event(Event::SpeechEnded { audio: vec![] });
        let a = m.on_event(Event::Transcript { turn: 2, text: "Mm-hmm.".into() });
        assert!(a.contains(&Action::Notify(Notice::Resumed { turn: 1, from_char: 0 })));
        let mut idle = Machine::new();
        idle.on_event(Event::SpeechStarted);
        idle.on_event(Event::SpeechEnded { audio: vec![] });
        let a = idle.on_event(Event::Transcript { turn: 1, text: "Hmm?".into() });
        assert!(a.contains(&Action::Respond { turn: 1, user: "Hmm?".into() }));
    }

    #[test]
    fn a_reply_still_streaming_when_cut_keeps_growing_and_resumes_whole() {
        let mut m = Machine::new();
        m.on_event(Event::SpeechStarted);
        m.on_event(Event::SpeechEnded { audio: vec![] });
        m.on_event(Event::Transcript { turn: 1, text: "Tell me a story".into() });
        m.on_event(Event::ReplyText { turn: 1, text: "Once upon a time, ".into() });
        m.on_event(Event::SpeechStarted);
        m.on_event(Event::ReplyText { turn: 1, text: "there was a fox.".into() });
        m.on_event(Event::SpeechEnded { audio: vec![] });
        m.on_event(Event::ReplyDone { turn: 1 });
        let a = m.on_event(Event::Transcript { turn: 2, text: String::new() });
        assert_eq!(speak_actions(&a), vec![("Once upon a time, there was a fox.".into(), true, true)]);
    }

    #[test]
    fn a_client_stop_ends_the_reply_where_it_was() {
        let mut m = speaking("First. Second.");
        m.on_event(Event::Played { turn: 1, text_offset: 7 });
        let a = m.on_event(Event::Silenced);
        assert!(a.contains(&Action::CancelReply { turn: 1 }));
        assert!(a.contains(&Action::Remember { user: "What time is it?".into(), assistant: "First. —".into() }));
        assert_eq!(m.state(), &State::Listening);
    }

    #[test]
    fn late_and_stale_events_change_nothing() {
        let mut m = speaking("Hi.");
        let before = m.state().clone();
        assert!(m.on_event(Event::ReplyText { turn: 7, text: "old".into() }).is_empty());
        assert!(m.on_event(Event::Transcript { turn: 1, text: "again".into() }).is_empty());
        assert!(m.on_event(Event::SpeechEnded { audio: vec![] }).is_empty());
        assert_eq!(m.state(), &before);
        let mut idle = Machine::new();
        assert!(idle.on_event(Event::PlaybackDone { turn: 1 }).is_empty());
        assert_eq!(idle.state(), &State::Listening);
    }

    #[test]
    fn speaking_again_before_the_reply_joins_the_two_utterances() {
        let mut m = Machine::new();
        m.on_event(Event::SpeechStarted);
        m.on_event(Event::SpeechEnded { audio: vec![] });
        // They pause long enough for an end of turn, then go on.
        m.on_event(Event::SpeechStarted);
        m.on_event(Event::Transcript { turn: 1, text: "I would like".into() });
        m.on_event(Event::SpeechEnded { audio: vec![] });
        let a = m.on_event(Event::Transcript { turn: 2, text: "a coffee.".into() });
        assert!(a.contains(&Action::Respond { turn: 2, user: "I would like a coffee.".into() }));
        // The same when the first transcript comes only after the second pause.
        let mut m = Machine::new();
        m.on_event(Event::SpeechStarted);
        m.on_event(Event::SpeechEnded { audio: vec![] });
        m.on_event(Event::SpeechStarted);
        m.on_event(Event::SpeechEnded { audio: vec![] });
        assert!(m.on_event(Event::Transcript { turn: 1, text: "Two".into() }).is_empty());
        let a = m.on_event(Event::Transcript { turn: 2, text: "teas.".into() });
        assert!(a.contains(&Action::Respond { turn: 2, user: "Two teas.".into() }));
    }

    #[test]
    fn an_empty_reply_or_silence_returns_to_listening() {
        let mut m = Machine::new();
        m.on_event(Event::SpeechStarted);
        m.on_event(Event::SpeechEnded { audio: vec![] });
        m.on_event(Event::Transcript { turn: 1, text: String::new() });
        assert_eq!(m.state(), &State::Listening, "nothing intelligible: no reply");
        m.on_event(Event::SpeechStarted);
        m.on_event(Event::SpeechEnded { audio: vec![] });
        m.on_event(Event::Transcript { turn: 2, text: "Hm?".into() });
        let a = m.on_event(Event::ReplyDone { turn: 2 });
        assert!(a.contains(&Action::Remember { user: "Hm?".into(), assistant: String::new() }));
        assert_eq!(m.state(), &State::Listening);
    }

    #[test]
    fn typed_words_are_a_turn_and_interrupt_like_speech() {
        let mut m = Machine::new();
        let a = m.on_event(Event::Typed { text: " Hello there ".into() });
        assert!(a.contains(&Action::Notify(Notice::Transcript { turn: 1, text: "Hello there".into() })));
        assert!(a.contains(&Action::Respond { turn: 1, user: "Hello there".into() }));
        assert!(m.bot_speaking());
        // Typing over the reply stops it, and what was heard is remembered.
        m.on_event(Event::ReplyText { turn: 1, text: "Hi! How are you?".into() });
        m.on_event(Event::Played { turn: 1, text_offset: 4 });
        let a = m.on_event(Event::Typed { text: "Stop.".into() });
        assert_eq!(a[0], Action::StopSpeaking { turn: 1 });
        assert!(a.contains(&Action::CancelReply { turn: 1 }));
        assert!(a.contains(&Action::Remember { user: "Hello there".into(), assistant: "Hi! —".into() }));
        assert!(a.contains(&Action::Respond { turn: 2, user: "Stop.".into() }));
        // Typed while speaking: the words join the spoken turn.
        let mut m = Machine::new();
        m.on_event(Event::SpeechStarted);
        m.on_event(Event::Typed { text: "Please,".into() });
        m.on_event(Event::SpeechEnded { audio: vec![] });
        let a = m.on_event(Event::Transcript { turn: 1, text: "two teas.".into() });
        assert!(a.contains(&Action::Respond { turn: 1, user: "Please, two teas.".into() }), "{a:?}");
        // Nothing typed, nothing done.
        let mut m = Machine::new();
        m.on_event(Event::Typed { text: "  ".into() });
        assert_eq!(m.state(), &State::Listening);
    }
}
