//! Whisper's token ids to text: `tokenizer.json` holds the byte-level BPE
//! vocabulary (token → id) and the special tokens; decoding is
//! [`duplex_bpe::Bpe`]'s, with the special tokens saying nothing.

use std::path::Path;

use duplex_bpe::Bpe;

use crate::AsrLoadError;

#[derive(Debug)]
pub struct Tokens {
    bpe: Bpe,
}

impl Tokens {
    pub fn load(path: &Path) -> Result<Self, AsrLoadError> {
        let fail = |message: String| AsrLoadError::File { path: path.display().to_string(), message };
        let text = std::fs::read_to_string(path).map_err(|e| fail(e.to_string()))?;
        let json: serde_json::Value = serde_json::from_str(&text).map_err(|e| fail(e.to_string()))?;
        let vocab = json["model"]["vocab"].as_object().ok_or_else(|| fail("no model.vocab".into()))?;
        let mut by_id: Vec<(usize, String)> =
            vocab.iter().filter_map(|(t, id)| Some((id.as_u64()? as usize, t.clone()))).collect();
        let mut special = Vec::new();
        for added in json["added_tokens"].as_array().into_iter().flatten() {
            if let (Some(id), Some(content)) = (added["id"].as_u64(), added["content"].as_str()) {
                by_id.push((id as usize, content.to_string()));
                special.push(content.to_string());
            }
        }
        let size = by_id.iter().map(|(id, _)| id + 1).max().unwrap_or(0);
        let mut tokens = vec![String::new(); size];
        for (id, token) in by_id {
            tokens[id] = token;
        }
        // Decoding needs no merges.
        let special: Vec<&str> = special.iter().map(String::as_str).collect();
        Ok(Self { bpe: Bpe::new(tokens, &[], &special) })
    }

    /// The id of a special token such as `<|endoftext|>`.
    pub fn special(&self, token: &str) -> Option<u32> {
        self.bpe.id(token)
    }

    /// Text of `ids`, special tokens left out.
    pub fn decode(&self, ids: &[u32]) -> String {
        self.bpe.decode(ids)
    }
}
