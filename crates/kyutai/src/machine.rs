//! The text side of one session: which text token the model is fed each
//! step. The model does not get padded, time-aligned text; it says itself
//! when the next word should start (its `new_word` token), and the word's
//! tokens are then fed over the following steps while the audio, 16 steps
//! behind, speaks it. A second text stream shows the tokens of the word two
//! ahead, so the model knows what is coming.
//!
//! Words arrive while the reply is still being written: with no word queued
//! and more to come, the machine pads and waits; with the text closed, the
//! next `new_word` ends the utterance.
//!
//! Pure logic, no tensors: unit-tested here.

use std::collections::VecDeque;

/// Special text tokens of the model's vocabulary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TextTokens {
    /// Text vocabulary size + 1 (the initial token): the muxing base.
    pub card: i64,
    pub new_word: i64,
    pub pad: i64,
    /// Starts a turn of the main speaker.
    pub main: i64,
}

impl TextTokens {
    pub fn for_text_card(text_card: usize) -> Self {
        Self { card: text_card as i64 + 1, new_word: 0, pad: 3, main: 1 }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MachineConfig {
    /// Which word ahead the second stream shows (0: no second stream).
    pub lookahead: usize,
    /// Pads the model may choose in a row before a word is forced.
    pub max_padding: usize,
    /// Pads forced at the start so the first word is not cut.
    pub initial_padding: usize,
    /// Extra pads after a word of n tokens: `padding_between + n - 1` (0: none).
    pub padding_between: usize,
}

impl Default for MachineConfig {
    fn default() -> Self {
        Self { lookahead: 2, max_padding: 8, initial_padding: 2, padding_between: 1 }
    }
}

#[derive(Debug, Clone)]
struct Word {
    tokens: Vec<i64>,
    padding: usize,
}

/// One session's text state.
#[derive(Debug, Clone)]
pub struct Machine {
    ids: TextTokens,
    config: MachineConfig,
    words: VecDeque<Word>,
    queued: VecDeque<i64>,
    lookahead_queued: VecDeque<i64>,
    remaining_padding: usize,
    forced_padding: usize,
    /// No more words will come.
    closed: bool,
    first_word: bool,
    /// Set at the step the model asked for a word past the last one.
    end_step: Option<usize>,
    /// Words started so far.
    pub words_started: usize,
}

impl Machine {
    pub fn new(ids: TextTokens, config: MachineConfig) -> Self {
        Self {
            ids,
            config,
            words: VecDeque::new(),
            queued: VecDeque::new(),
            lookahead_queued: VecDeque::new(),
            remaining_padding: config.initial_padding,
            forced_padding: config.initial_padding,
            closed: false,
            first_word: true,
            end_step: None,
            words_started: 0,
        }
    }

    /// Queues a word's tokens (the first word of the utterance gets the main
    /// speaker's turn token in front).
    pub fn push_word(&mut self, tokens: &[u32]) {
        let mut tokens: Vec<i64> = tokens.iter().map(|&t| t as i64).collect();
        if self.first_word {
            tokens.insert(0, self.ids.main);
            self.first_word = false;
        }
        let padding = match self.config.padding_between {
            0 => 0,
            between => between + tokens.len().saturating_sub(1),
        };
        self.words.push_back(Word { tokens, padding });
    }

    /// No more words: the utterance ends after the queued ones.
    pub fn close(&mut self) {
        self.closed = true;
    }

    /// The step at which the last word was done with, if it was.
    pub fn end_step(&self) -> Option<usize> {
        self.end_step
    }

    fn word_ahead(&self) -> &[i64] {
        let mut ahead = self.config.lookahead;
        for word in &self.words {
            if !word.tokens.is_empty() {
                ahead -= 1;
                if ahead == 0 {
                    return &word.tokens;
                }
            }
        }
        &[]
    }

    /// Takes the model's text token of `step` and returns the (muxed) text
    /// token to feed at the next step.
    pub fn next(&mut self, step: usize, predicted: i64) -> i64 {
        let ids = self.ids;
        let mut token = if predicted == ids.new_word { ids.new_word } else { ids.pad };
        if !self.queued.is_empty() || self.forced_padding > 0 {
            token = ids.pad;
        } else if self.remaining_padding == 0 {
            token = ids.new_word;
        }
        if token == ids.new_word {
            if let Some(word) = self.words.pop_front() {
                self.words_started += 1;
                self.queued.extend(word.tokens.iter().copied());
                if self.config.lookahead > 0 {
                    let ahead = self.word_ahead().to_vec();
                    self.lookahead_queued.extend(ahead);
                }
                self.remaining_padding = self.config.max_padding;
                self.forced_padding = word.padding;
            } else if !self.closed {
                // The reply is still being written: wait for its next word.
                token = ids.pad;
            } else {
                token = if self.config.lookahead > 0 && self.end_step.is_none() { ids.new_word } else { ids.pad };
                self.end_step.get_or_insert(step);
            }
        }
        let mut output = if token == ids.pad {
            self.remaining_padding = self.remaining_padding.saturating_sub(1);
            self.forced_padding = self.forced_padding.saturating_sub(1);
            self.queued.pop_front().unwrap_or(ids.pad)
        } else {
            ids.new_word
        };
        if self.config.lookahead == 0 {
            return output;
        }
        let mut second = -1;
        if output == ids.new_word && token == ids.new_word {
            // The word marker goes on the second stream; the main one moves on.
            second = ids.new_word;
            output = self.queued.pop_front().unwrap_or(ids.pad);
        } else if let Some(t) = self.lookahead_queued.pop_front() {
            second = t;
        }
        (second + 1) * ids.card + output
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const IDS: TextTokens = TextTokens { card: 101, new_word: 0, pad: 3, main: 1 };

    fn demux(t: i64) -> (i64, i64) {
        (t % IDS.card, t / IDS.card - 1)
    }

    /// Feeds the machine a model that always asks for a new word, and
    /// returns (main, second) per step.
    fn run(m: &mut Machine, steps: usize) -> Vec<(i64, i64)> {
        (0..steps).map(|s| demux(m.next(s, IDS.new_word))).collect()
    }

    #[test]
    fn words_are_fed_token_by_token_after_the_initial_pads() {
        let config = MachineConfig { lookahead: 0, padding_between: 0, ..Default::default() };
        let mut m = Machine::new(IDS, config);
        m.push_word(&[10, 11]);
        m.push_word(&[20]);
        m.close();
        let fed: Vec<i64> = (0..8).map(|s| m.next(s, IDS.new_word)).collect();
        // 2 forced pads, then the word marker, the first word (main speaker first), the marker, the second word.
        assert_eq!(fed, vec![3, 3, 0, 1, 10, 11, 0, 20]);
        assert_eq!(m.words_started, 2);
        assert_eq!(m.end_step(), None);
        m.next(8, IDS.new_word);
        assert_eq!(m.end_step(), Some(8), "a word asked for past the last one ends it");
    }

    #[test]
    fn the_second_stream_shows_the_word_two_ahead_and_carries_the_marker() {
        let mut m = Machine::new(IDS, MachineConfig { padding_between: 0, ..Default::default() });
        m.push_word(&[10]);
        m.push_word(&[20]);
        m.push_word(&[30, 31]);
        m.close();
        let steps = run(&mut m, 6);
        assert_eq!(steps[0], (3, -1));
        assert_eq!(steps[1], (3, -1));
        // The marker is on the second stream; the main stream already has the first token.
        assert_eq!(steps[2], (1, 0));
        // The first word's last token; the second stream shows the word two
        // ahead of the one being spoken: the third (30, 31).
        assert_eq!(steps[3], (10, 30));
        // The next marker, with the second word on the main stream at once.
        assert_eq!(steps[4], (20, 0));
    }

    #[test]
    fn with_the_text_still_open_it_pads_and_waits_for_the_next_word() {
        let config = MachineConfig { lookahead: 0, padding_between: 0, ..Default::default() };
        let mut m = Machine::new(IDS, config);
        m.push_word(&[10]);
        let fed: Vec<i64> = (0..6).map(|s| m.next(s, IDS.new_word)).collect();
        assert_eq!(fed, vec![3, 3, 0, 1, 10, 3]);
        assert_eq!(m.end_step(), None, "not closed: no end");
        m.push_word(&[20]);
        assert_eq!(m.next(6, IDS.new_word), 0);
        assert_eq!(m.next(7, IDS.pad), 20);
    }

    #[test]
    fn the_model_may_pad_but_not_forever() {
        let config = MachineConfig { lookahead: 0, padding_between: 0, max_padding: 3, initial_padding: 0 };
        let mut m = Machine::new(IDS, config);
        m.push_word(&[10]);
        m.push_word(&[20]);
        // The model never asks for a word (anything but the marker counts as
        // a pad): 3 steps after a word started, the next one is forced.
        let fed: Vec<i64> = (0..5).map(|s| m.next(s, 57)).collect();
        assert_eq!(fed, vec![0, 1, 10, 3, 0]);
    }

    #[test]
    fn padding_between_words_holds_the_next_word_back() {
        let config = MachineConfig { lookahead: 0, padding_between: 1, initial_padding: 0, ..Default::default() };
        let mut m = Machine::new(IDS, config);
        m.push_word(&[10, 11]);
        m.push_word(&[20]);
        // Word 1 is [1, 10, 11] (3 tokens): 1 + 2 forced pads after its marker.
        let fed: Vec<i64> = (0..7).map(|s| m.next(s, IDS.new_word)).collect();
        assert_eq!(fed, vec![0, 1, 10, 11, 0, 20, 3]);
    }
}
