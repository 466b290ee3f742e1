//! The model's text tokenizer: a SentencePiece unigram model
//! (`tokenizer_spm_8k_en_fr_audio.model`), read from its protobuf file and
//! applied one word at a time, as the TTS feeds words. Our own reader and
//! Viterbi segmentation (the C++ library would need cmake and a C++ build).
//!
//! A word becomes `▁word` (SentencePiece marks a word start with U+2581) and
//! is cut into the pieces that maximise the summed scores; characters no
//! piece covers fall back to their UTF-8 bytes (`<0xNN>` pieces) when the
//! model has them, else to the unknown piece.

use std::collections::HashMap;
use std::path::Path;

use prost::Message;

const WORD_START: char = '\u{2581}';

/// The parts of SentencePiece's `ModelProto` we read.
#[derive(Clone, PartialEq, Message)]
pub struct ModelProto {
    #[prost(message, repeated, tag = "1")]
    pub pieces: Vec<Piece>,
}

#[derive(Clone, PartialEq, Message)]
pub struct Piece {
    #[prost(string, optional, tag = "1")]
    pub piece: Option<String>,
    #[prost(float, optional, tag = "2")]
    pub score: Option<f32>,
    /// 1 normal, 2 unknown, 3 control, 4 user defined, 5 unused, 6 byte.
    #[prost(int32, optional, tag = "3")]
    pub kind: Option<i32>,
}

const UNKNOWN: i32 = 2;
const CONTROL: i32 = 3;
const BYTE: i32 = 6;

#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    #[error("reading the tokenizer: {0}")]
    Io(#[from] std::io::Error),
    #[error("not a SentencePiece model: {0}")]
    Format(#[from] prost::DecodeError),
    #[error("the SentencePiece model has no unknown piece")]
    NoUnknown,
}

#[derive(Debug, Clone)]
pub struct Tokenizer {
    /// Normal and user-defined pieces: text → (id, score).
    pieces: HashMap<String, (u32, f32)>,
    bytes: HashMap<u8, u32>,
    unknown: u32,
    longest: usize,
}

impl Tokenizer {
    pub fn load(path: &Path) -> Result<Self, TokenizerError> {
        Self::from_proto(&ModelProto::decode(std::fs::read(path)?.as_slice())?)
    }

    pub fn from_proto(model: &ModelProto) -> Result<Self, TokenizerError> {
        let (mut pieces, mut bytes, mut unknown, mut longest) = (HashMap::new(), HashMap::new(), None, 1);
        for (id, p) in model.pieces.iter().enumerate() {
            let text = p.piece.clone().unwrap_or_default();
            match p.kind.unwrap_or(1) {
                UNKNOWN => unknown = Some(id as u32),
                CONTROL => {}
                BYTE => {
                    if let Some(b) =
                        text.strip_prefix("<0x").and_then(|h| u8::from_str_radix(h.trim_end_matches('>'), 16).ok())
                    {
                        bytes.insert(b, id as u32);
                    }
                }
                _ => {
                    longest = longest.max(text.chars().count());
                    pieces.insert(text, (id as u32, p.score.unwrap_or(0.0)));
                }
            }
        }
        Ok(Self { pieces, bytes, unknown: unknown.ok_or(TokenizerError::NoUnknown)?, longest })
    }

    /// The ids of one word (no spaces inside).
    pub fn encode_word(&self, word: &str) -> Vec<u32> {
        let text: Vec<char> = std::iter::once(WORD_START).chain(word.chars()).collect();
        let n = text.len();
        // best[i]: the best score of text[..i] and the last piece's start and id(s).
        let mut best: Vec<Option<(f32, usize, Vec<u32>)>> = vec![None; n + 1];
        best[0] = Some((0.0, 0, Vec::new()));
        for end in 1..=n {
            for start in end.saturating_sub(self.longest)..end {
                let Some((score, _, _)) = &best[start] else { continue };
                let piece: String = text[start..end].iter().collect();
                if let Some(&(id, s)) = self.pieces.get(&piece) {
                    let total = score + s;
                    if best[end].as_ref().is_none_or(|(b, _, _)| total > *b) {
                        best[end] = Some((total, start, vec![id]));
                    }
                }
            }
            // No piece ends here with a path: one character by its bytes (or unknown), heavily penalised.
            if best[end].is_none()
                && let Some((score, _, _)) = &best[end - 1]
            {
                let mut utf8 = [0u8; 4];
                let encoded = text[end - 1].encode_utf8(&mut utf8).as_bytes();
                let ids: Option<Vec<u32>> = encoded.iter().map(|b| self.bytes.get(b).copied()).collect();
                best[end] = Some((score - 100.0, end - 1, ids.unwrap_or_else(|| vec![self.unknown])));
            }
        }
        let mut ids = Vec::new();
        let mut end = n;
        while end > 0 {
            let (_, start, piece_ids) = best[end].clone().expect("every prefix has a path");
            ids.splice(0..0, piece_ids);
            end = start;
        }
        ids
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn piece(text: &str, score: f32, kind: i32) -> Piece {
        Piece { piece: Some(text.into()), score: Some(score), kind: Some(kind) }
    }

    fn model() -> Tokenizer {
        let mut pieces = vec![piece("<unk>", 0.0, 2), piece("<s>", 0.0, 3), piece("</s>", 0.0, 3)];
        for (text, score) in [
            ("▁", -2.0),
            ("▁hel", -3.0),
            ("lo", -2.5),
            ("▁hello", -4.0),
            ("h", -5.0),
            ("e", -5.0),
            ("l", -5.0),
            ("o", -5.0),
            ("▁the", -1.0),
            ("re", -2.0),
            ("▁there", -6.0),
        ] {
            pieces.push(piece(text, score, 1));
        }
        pieces.push(piece("<0xC3>", 0.0, 6));
        pieces.push(piece("<0xA9>", 0.0, 6));
        // Through the real protobuf encoding, as the file holds it.
        let bytes = ModelProto { pieces }.encode_to_vec();
        Tokenizer::from_proto(&ModelProto::decode(bytes.as_slice()).unwrap()).unwrap()
    }

    #[test]
    fn a_word_is_cut_into_the_best_scoring_pieces() {
        let t = model();
        // "▁hello" (-4) beats "▁hel" + "lo" (-5.5).
        assert_eq!(t.encode_word("hello"), vec![6]);
        // "▁the" + "re" (-3) beats "▁there" (-6).
        assert_eq!(t.encode_word("there"), vec![11, 12]);
    }

    #[test]
    fn uncovered_characters_fall_back_to_bytes_then_unknown() {
        let t = model();
        // é = C3 A9, both byte pieces exist.
        assert_eq!(t.encode_word("é"), vec![3, 14, 15]);
        assert_eq!(t.encode_word("z"), vec![3, 0]);
    }
}
