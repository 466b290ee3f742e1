//! Cuts a stream of samples into fixed-size wire frames.

use crate::{FRAME_SAMPLES, samples_to_bytes};

/// Accumulates samples and hands out complete frames as soon as they exist.
#[derive(Debug, Default)]
pub struct Framer {
    pending: Vec<i16>,
}

impl Framer {
    pub fn new() -> Self {
        Self { pending: Vec::with_capacity(FRAME_SAMPLES * 2) }
    }

    /// Adds samples; returns every frame (as s16le bytes) completed by them.
    pub fn push(&mut self, samples: &[i16]) -> Vec<Vec<u8>> {
        self.pending.extend_from_slice(samples);
        let complete = self.pending.len() / FRAME_SAMPLES;
        let mut frames = Vec::with_capacity(complete);
        for chunk in self.pending.chunks_exact(FRAME_SAMPLES) {
            frames.push(samples_to_bytes(chunk));
        }
        self.pending.drain(..complete * FRAME_SAMPLES);
        frames
    }

    /// Ends the stream: the remaining samples zero-padded to a full frame, or
    /// `None` when nothing is pending.
    pub fn finish(&mut self) -> Option<Vec<u8>> {
        if self.pending.is_empty() {
            return None;
        }
        self.pending.resize(FRAME_SAMPLES, 0);
        let frame = samples_to_bytes(&self.pending);
        self.pending.clear();
        Some(frame)
    }

    /// Drops pending samples (cancellation).
    pub fn clear(&mut self) {
        self.pending.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::FRAME_BYTES;

    #[test]
    fn emits_frames_as_soon_as_complete() {
        let mut f = Framer::new();
        assert!(f.push(&[1; FRAME_SAMPLES - 1]).is_empty());
        let out = f.push(&[1; 3]);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].len(), FRAME_BYTES);
        let last = f.finish().expect("two samples pending");
        assert_eq!(last.len(), FRAME_BYTES);
        assert_eq!(&last[..4], &[1, 0, 1, 0]);
        assert_eq!(&last[4..6], &[0, 0]);
        assert!(f.finish().is_none());
    }
}
