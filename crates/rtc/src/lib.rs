//! Media for the WebRTC and LiveKit transports (issue 9), kept out of the
//! other crates so their builds stay light.
//!
//! - [`opus`]: Opus encoding and decoding of 20 ms, 48 kHz mono frames (the
//!   orchestrator's audio frame), with in-band FEC and loss concealment.

pub mod opus;

pub use opus::{FRAME_SAMPLES, OpusDecoder, OpusEncoder, OpusError};
