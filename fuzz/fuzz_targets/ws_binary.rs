//! A WebSocket binary frame from a client (microphone audio or JSON) and a
//! server audio frame: parsing never panics, and a parsed server frame
//! re-encoded parses to the same header and audio.
#![no_main]

use duplex_protocol::{decode_binary, encode_binary_audio, parse_binary_audio};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    let _ = decode_binary(bytes, 64 * 1024);
    if let Some((header, pcm)) = parse_binary_audio(bytes) {
        let again = encode_binary_audio(header.utterance_id.into(), header.sequence, header.last_in_utterance, pcm);
        assert_eq!(parse_binary_audio(&again), Some((header, pcm)));
    }
});
