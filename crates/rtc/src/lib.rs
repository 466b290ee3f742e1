//! Media for the WebRTC and LiveKit transports (issue 9), kept out of the
//! other crates so their builds stay light.
//!
//! - [`opus`]: Opus encoding and decoding of 20 ms, 48 kHz mono frames (the
//!   orchestrator's audio frame), with in-band FEC and loss concealment.
//! - [`peer`]: one answered WebRTC call — the caller's Opus track in as PCM,
//!   our PCM frames out as Opus, text both ways on its data channel.
//! - [`caller`]: the calling side (tests, command-line clients, a stand-in SFU).
//! - [`voice`]: our Opus track on a peer, fed 20 ms PCM frames.

pub mod caller;
pub mod opus;
pub mod peer;
pub mod voice;

pub use opus::{FRAME_SAMPLES, OpusDecoder, OpusEncoder, OpusError};
