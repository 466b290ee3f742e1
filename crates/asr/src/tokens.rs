//! Whisper's token ids to text. `tokenizer.json` holds the byte-level BPE
//! vocabulary (token → id) and the special tokens; decoding joins the
//! tokens' strings and maps each character back to the byte it stands for
//! (the GPT-2 byte-to-character table).

use std::collections::HashMap;
use std::path::Path;

use crate::AsrLoadError;

#[derive(Debug)]
pub struct Tokens {
    /// id → token string (byte-level characters).
    by_id: HashMap<u32, String>,
    special: HashMap<String, u32>,
    /// byte-level character → byte.
    bytes: HashMap<char, u8>,
}

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

impl Tokens {
    pub fn load(path: &Path) -> Result<Self, AsrLoadError> {
        let fail = |message: String| AsrLoadError::File { path: path.display().to_string(), message };
        let text = std::fs::read_to_string(path).map_err(|e| fail(e.to_string()))?;
        let json: serde_json::Value = serde_json::from_str(&text).map_err(|e| fail(e.to_string()))?;
        let vocab = json["model"]["vocab"].as_object().ok_or_else(|| fail("no model.vocab".into()))?;
        let mut by_id: HashMap<u32, String> =
            vocab.iter().filter_map(|(t, id)| Some((id.as_u64()? as u32, t.clone()))).collect();
        let mut special = HashMap::new();
        for added in json["added_tokens"].as_array().into_iter().flatten() {
            if let (Some(id), Some(content)) = (added["id"].as_u64(), added["content"].as_str()) {
                special.insert(content.to_string(), id as u32);
                by_id.insert(id as u32, content.to_string());
            }
        }
        let bytes = byte_chars().into_iter().map(|(b, c)| (c, b)).collect();
        Ok(Self { by_id, special, bytes })
    }

    /// The id of a special token such as `<|endoftext|>`.
    pub fn special(&self, token: &str) -> Option<u32> {
        self.special.get(token).copied()
    }

    /// Text of `ids`, special tokens left out.
    pub fn decode(&self, ids: &[u32]) -> String {
        let mut bytes = Vec::new();
        for id in ids {
            let Some(token) = self.by_id.get(id) else { continue };
            if self.special.contains_key(token) {
                continue;
            }
            bytes.extend(token.chars().filter_map(|c| self.bytes.get(&c)));
        }
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_byte_table_covers_every_byte_once() {
        let table = byte_chars();
        assert_eq!(table.len(), 256);
        let mut bytes: Vec<u8> = table.iter().map(|(b, _)| *b).collect();
        bytes.sort();
        bytes.dedup();
        assert_eq!(bytes.len(), 256);
        // A blank is written as 'Ġ' (U+0120) in the vocabulary.
        assert!(table.contains(&(b' ', 'Ġ')));
    }
}
