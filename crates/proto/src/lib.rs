//! The TTS worker contract: generated `tts` types and service stubs, the
//! descriptor set for server reflection, and the frame constants both sides
//! of the wire agree on.

#![allow(clippy::all, missing_docs)]

/// Generated from `proto/tts.proto` (package `tts`).
pub mod tts {
    tonic::include_proto!("tts");
}

/// Encoded `FileDescriptorSet` of `tts.proto`, for `tonic-reflection`.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/tts_descriptor.bin"));

pub use tts::tts_service_client::TtsServiceClient;
pub use tts::tts_service_server::{TtsService, TtsServiceServer};

/// Milliseconds since the Unix epoch, as the contract's `timestamp_ms` fields carry it.
pub fn unix_millis() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}
