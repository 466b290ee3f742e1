//! A WebSocket text frame from a client: decoding never panics, and a
//! decoded message re-encoded decodes to the same message.
#![no_main]

use duplex_protocol::{ClientMessage, decode_text};
use libfuzzer_sys::fuzz_target;

const LIMIT: usize = 64 * 1024;

fuzz_target!(|text: &str| {
    if let Ok(message) = decode_text(text, LIMIT) {
        // Mic audio decodes into samples, not back into the JSON it came as.
        if !matches!(message, ClientMessage::Mic { .. }) {
            let again = serde_json::to_string(&message).expect("client messages serialize");
            assert_eq!(decode_text(&again, usize::MAX).ok(), Some(message));
        }
    }
});
