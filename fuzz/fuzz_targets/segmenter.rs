//! Streamed text cut at arbitrary points: the segmenter never panics, every
//! chunk is found in the text at its `start_char`, and once the text is
//! finished no letter or digit is lost or repeated. The normalizer never
//! panics on any chunk.
#![no_main]

use duplex_tts::text::{Segmenter, normalize};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: (Vec<u8>, &str)| {
    let (cuts, text) = input;
    let mut segmenter = Segmenter::new();
    let mut chunks = Vec::new();
    let mut rest = text;
    for cut in cuts {
        if rest.is_empty() {
            break;
        }
        let mut at = (cut as usize % (rest.len() + 1)).min(rest.len());
        while !rest.is_char_boundary(at) {
            at -= 1;
        }
        let (piece, tail) = rest.split_at(at);
        segmenter.push(piece);
        rest = tail;
        while let Some(chunk) = segmenter.next_chunk(false) {
            chunks.push(chunk);
        }
    }
    segmenter.push(rest);
    while let Some(chunk) = segmenter.next_chunk(true) {
        chunks.push(chunk);
    }
    let chars: Vec<char> = text.chars().collect();
    for chunk in &chunks {
        let at: String = chars.iter().skip(chunk.start_char).take(chunk.text.chars().count()).collect();
        assert_eq!(at, chunk.text, "chunk at char {}", chunk.start_char);
        let _ = normalize(&chunk.text);
    }
    let said: String = chunks.iter().flat_map(|c| c.text.chars()).filter(|c| c.is_alphanumeric()).collect();
    let written: String = text.chars().filter(|c| c.is_alphanumeric()).collect();
    assert_eq!(said, written);
});
