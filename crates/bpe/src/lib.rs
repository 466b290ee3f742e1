//! Byte-level BPE (the GPT-2 scheme of Whisper and SmolLM2): a vocabulary
//! indexed by id and its merges (from a GGUF file's metadata or a
//! `tokenizer.json`) give text → ids and ids → bytes.

use std::collections::HashMap;

/// GPT-2's table: printable bytes stand for themselves, the others for
/// characters from U+0100 on.
fn byte_chars() -> Vec<(u8, char)> {
    let mut printable: Vec<u32> = (b'!' as u32..=b'~' as u32).collect();
    printable.extend(0xA1..=0xAC);
    printable.extend(0xAE..=0xFF);
    let mut out: Vec<(u8, char)> = printable.iter().map(|b| (*b as u8, char::from_u32(*b).expect("latin-1"))).collect();
    let mut n = 0;
    for b in 0..=255u32 {
        if !printable.contains(&b) {
            out.push((b as u8, char::from_u32(256 + n).expect("valid")));
            n += 1;
        }
    }
    out
}

#[derive(Debug)]
pub struct Bpe {
    ids: HashMap<String, u32>,
    tokens: Vec<String>,
    ranks: HashMap<(String, String), usize>,
    /// Tokens matched whole before BPE (`<|im_start|>`, …).
    special: Vec<(String, u32)>,
    byte_char: [char; 256],
    char_byte: HashMap<char, u8>,
}

/// What a piece of text is, for pre-tokenization.
#[derive(PartialEq, Clone, Copy)]
enum Class {
    Letter,
    Digit,
    Space,
    Other,
}

fn class(c: char) -> Class {
    if c.is_alphabetic() {
        Class::Letter
    } else if c.is_numeric() {
        Class::Digit
    } else if c.is_whitespace() {
        Class::Space
    } else {
        Class::Other
    }
}

/// GPT-2-like pieces: a word with its leading blank, single digits,
/// punctuation runs with their leading blank, blank runs.
fn pieces(text: &str) -> Vec<String> {
    let chars: Vec<char> = text.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let start = i;
        let lead_space =
            chars[i] == ' ' && i + 1 < chars.len() && matches!(class(chars[i + 1]), Class::Letter | Class::Other);
        if lead_space {
            i += 1;
        }
        let c = class(chars[i]);
        i += 1;
        match c {
            Class::Digit => {}
            Class::Space => {
                // A blank run; its last blank goes with a following word.
                while i < chars.len() && class(chars[i]) == Class::Space {
                    i += 1;
                }
                if i < chars.len() && i - start > 1 && chars[i - 1] == ' ' && class(chars[i]) != Class::Space {
                    i -= 1;
                }
            }
            c => {
                while i < chars.len() && class(chars[i]) == c {
                    i += 1;
                }
            }
        }
        out.push(chars[start..i].iter().collect());
    }
    out
}

impl Bpe {
    pub fn new(tokens: Vec<String>, merges: &[String], special: &[&str]) -> Self {
        let ids: HashMap<String, u32> = tokens.iter().enumerate().map(|(i, t)| (t.clone(), i as u32)).collect();
        let ranks = merges
            .iter()
            .enumerate()
            .filter_map(|(r, m)| m.split_once(' ').map(|(a, b)| ((a.to_string(), b.to_string()), r)))
            .collect();
        let special = special.iter().filter_map(|s| ids.get(*s).map(|id| (s.to_string(), *id))).collect();
        let table = byte_chars();
        let mut byte_char = [' '; 256];
        for (b, c) in &table {
            byte_char[*b as usize] = *c;
        }
        let char_byte = table.into_iter().map(|(b, c)| (c, b)).collect();
        Self { ids, tokens, ranks, special, byte_char, char_byte }
    }

    pub fn id(&self, token: &str) -> Option<u32> {
        self.ids.get(token).copied()
    }

    fn encode_piece(&self, piece: &str, out: &mut Vec<u32>) {
        let mut symbols: Vec<String> = piece.bytes().map(|b| self.byte_char[b as usize].to_string()).collect();
        loop {
            let best = symbols
                .windows(2)
                .enumerate()
                .filter_map(|(i, w)| self.ranks.get(&(w[0].clone(), w[1].clone())).map(|r| (*r, i)))
                .min();
            let Some((_, i)) = best else { break };
            let merged = format!("{}{}", symbols[i], symbols[i + 1]);
            symbols.splice(i..i + 2, [merged]);
        }
        for s in symbols {
            match self.ids.get(&s) {
                Some(id) => out.push(*id),
                // Not in the vocabulary as a whole: its bytes are.
                None => out.extend(s.chars().filter_map(|c| self.ids.get(&c.to_string()).copied())),
            }
        }
    }

    /// Token ids of `text`; special tokens in it are matched whole.
    pub fn encode(&self, text: &str) -> Vec<u32> {
        let mut out = Vec::new();
        let mut rest = text;
        while !rest.is_empty() {
            let next = self.special.iter().filter_map(|(s, id)| rest.find(s.as_str()).map(|at| (at, s, *id))).min();
            let (plain, special) = match next {
                Some((at, s, id)) => (&rest[..at], Some((s.len(), id))),
                None => (rest, None),
            };
            for p in pieces(plain) {
                self.encode_piece(&p, &mut out);
            }
            match special {
                Some((len, id)) => {
                    out.push(id);
                    rest = &rest[plain.len() + len..];
                }
                None => break,
            }
        }
        out
    }

    /// The bytes a token stands for (special tokens: none).
    pub fn bytes(&self, id: u32) -> Vec<u8> {
        let Some(t) = self.tokens.get(id as usize) else { return Vec::new() };
        if self.special.iter().any(|(_, s)| *s == id) {
            return Vec::new();
        }
        t.chars().filter_map(|c| self.char_byte.get(&c).copied()).collect()
    }

    pub fn decode(&self, ids: &[u32]) -> String {
        String::from_utf8_lossy(&ids.iter().flat_map(|i| self.bytes(*i)).collect::<Vec<u8>>()).into_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny() -> Bpe {
        // A vocabulary where "Ġhello" and "lo" merge, bytes as fallbacks.
        let mut tokens: Vec<String> = byte_chars().iter().map(|(_, c)| c.to_string()).collect();
        tokens.extend(["he", "ll", "hell", "hello", "Ġ", "Ġhello", "<|im_end|>"].map(String::from));
        let merges: Vec<String> = ["h e", "l l", "he ll", "hell o", "Ġ hello"].iter().map(|s| s.to_string()).collect();
        Bpe::new(tokens, &merges, &["<|im_end|>"])
    }

    #[test]
    fn the_byte_table_covers_every_byte_once() {
        let table = byte_chars();
        assert_eq!(table.len(), 256);
        let mut bytes: Vec<u8> = table.iter().map(|(b, _)| *b).collect();
        bytes.sort();
        bytes.dedup();
        assert_eq!(bytes.len(), 256);
        // A blank is written as 'Ġ' (U+0120) in the vocabularies.
        assert!(table.contains(&(b' ', 'Ġ')));
    }

    #[test]
    fn pieces_follow_words_digits_and_blanks() {
        assert_eq!(pieces("Hi there, 42!"), ["Hi", " there", ",", " ", "4", "2", "!"]);
        assert_eq!(pieces("a  b\n"), ["a", " ", " b", "\n"]);
    }

    #[test]
    fn merges_apply_by_rank_and_round_trip() {
        let bpe = tiny();
        let ids = bpe.encode("hello hello<|im_end|>x");
        let hello = bpe.id("hello").unwrap();
        let space_hello = bpe.id("Ġhello").unwrap();
        let end = bpe.id("<|im_end|>").unwrap();
        assert_eq!(ids[..3], [hello, space_hello, end]);
        assert_eq!(bpe.decode(&ids), "hello hellox", "special tokens say nothing");
        assert_eq!(bpe.decode(&bpe.encode("héllo ✓")), "héllo ✓");
    }
}
