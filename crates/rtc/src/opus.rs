//! Opus for WebRTC audio tracks: 48 kHz mono, one 20 ms frame (960 samples)
//! per packet — the same frame the orchestrator plays out, so one frame of
//! TTS audio is one RTP packet. libopus (Debian `libopus-dev`) through
//! `audiopus`. The encoder is tuned for speech (VoIP mode) with in-band FEC,
//! so a receiver can rebuild a lost packet from the next one.

use audiopus::coder::{Decoder, Encoder};
use audiopus::{Application, Bitrate, Channels, SampleRate};

/// Samples in one 20 ms frame at 48 kHz.
pub const FRAME_SAMPLES: usize = 960;
/// The most a packet can decode to (Opus allows up to 120 ms per packet).
const MAX_DECODED: usize = FRAME_SAMPLES * 6;
/// Opus never needs more than this per 20 ms frame.
const MAX_PACKET: usize = 1275;
/// Loss the encoder plans its FEC for, in percent.
const EXPECTED_LOSS_PERCENT: u8 = 5;

#[derive(Debug, thiserror::Error)]
pub enum OpusError {
    #[error("an Opus frame is {FRAME_SAMPLES} samples (20 ms at 48 kHz), got {0}")]
    FrameSize(usize),
    #[error("opus: {0}")]
    Codec(#[from] audiopus::Error),
}

/// Encodes 20 ms frames into Opus packets.
pub struct OpusEncoder {
    inner: Encoder,
    packet: Vec<u8>,
}

impl std::fmt::Debug for OpusEncoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("OpusEncoder")
    }
}

impl OpusEncoder {
    /// `bitrate_bps`: 16–64 kbit/s suits speech (WebRTC's default is 32).
    pub fn new(bitrate_bps: i32) -> Result<Self, OpusError> {
        let mut inner = Encoder::new(SampleRate::Hz48000, Channels::Mono, Application::Voip)?;
        inner.set_bitrate(Bitrate::BitsPerSecond(bitrate_bps))?;
        inner.set_inband_fec(true)?;
        inner.set_packet_loss_perc(EXPECTED_LOSS_PERCENT)?;
        Ok(Self { inner, packet: vec![0; MAX_PACKET] })
    }

    /// One packet for one 20 ms frame.
    pub fn encode(&mut self, frame: &[i16]) -> Result<Vec<u8>, OpusError> {
        if frame.len() != FRAME_SAMPLES {
            return Err(OpusError::FrameSize(frame.len()));
        }
        let n = self.inner.encode(frame, &mut self.packet)?;
        Ok(self.packet[..n].to_vec())
    }
}

/// Decodes Opus packets to 48 kHz mono PCM.
pub struct OpusDecoder {
    inner: Decoder,
    pcm: Vec<i16>,
}

impl std::fmt::Debug for OpusDecoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("OpusDecoder")
    }
}

impl OpusDecoder {
    pub fn new() -> Result<Self, OpusError> {
        Ok(Self { inner: Decoder::new(SampleRate::Hz48000, Channels::Mono)?, pcm: vec![0; MAX_DECODED] })
    }

    /// The samples of one packet (20 ms from a browser; up to 120 ms).
    pub fn decode(&mut self, packet: &[u8]) -> Result<Vec<i16>, OpusError> {
        let n = self.inner.decode(Some(packet), &mut self.pcm[..], false)?;
        Ok(self.pcm[..n].to_vec())
    }

    /// A lost packet: 20 ms rebuilt from `next` (its FEC data) when the
    /// following packet is at hand, else concealed from what came before.
    pub fn recover(&mut self, next: Option<&[u8]>) -> Result<Vec<i16>, OpusError> {
        let out = &mut self.pcm[..FRAME_SAMPLES];
        let n = match next {
            Some(packet) => self.inner.decode(Some(packet), out, true)?,
            None => self.inner.decode(None::<&[u8]>, out, false)?,
        };
        Ok(self.pcm[..n].to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 20 ms frame of a 300 Hz tone with a slow 4 Hz swell (speech-like level changes).
    fn tone(frame: usize) -> Vec<i16> {
        (0..FRAME_SAMPLES)
            .map(|i| {
                let t = (frame * FRAME_SAMPLES + i) as f64 / 48_000.0;
                let level = 0.3 + 0.2 * (2.0 * std::f64::consts::PI * 4.0 * t).sin();
                (level * (2.0 * std::f64::consts::PI * 300.0 * t).sin() * 32_767.0) as i16
            })
            .collect()
    }

    fn rms(x: &[i16]) -> f64 {
        (x.iter().map(|s| (*s as f64).powi(2)).sum::<f64>() / x.len().max(1) as f64).sqrt()
    }

    #[test]
    fn speech_band_audio_survives_the_round_trip() {
        let mut enc = OpusEncoder::new(32_000).unwrap();
        let mut dec = OpusDecoder::new().unwrap();
        let (mut sent, mut got, mut bytes) = (Vec::new(), Vec::new(), 0);
        for f in 0..50 {
            let frame = tone(f);
            let packet = enc.encode(&frame).unwrap();
            bytes += packet.len();
            let pcm = dec.decode(&packet).unwrap();
            assert_eq!(pcm.len(), FRAME_SAMPLES, "20 ms in, 20 ms out");
            sent.extend(frame);
            got.extend(pcm);
        }
        // About 32 kbit/s: 80 bytes per 20 ms packet, give or take.
        let per_packet = bytes / 50;
        assert!((40..=120).contains(&per_packet), "{per_packet} bytes per packet");
        // The level comes through (after the codec's few ms of delay).
        let ratio = rms(&got[4_800..]) / rms(&sent[4_800..]);
        assert!((0.8..1.25).contains(&ratio), "level ratio {ratio:.2}");
    }

    #[test]
    fn a_lost_packet_is_rebuilt_from_the_next_or_concealed() {
        let mut enc = OpusEncoder::new(32_000).unwrap();
        let packets: Vec<Vec<u8>> = (0..20).map(|f| enc.encode(&tone(f)).unwrap()).collect();
        let mut dec = OpusDecoder::new().unwrap();
        for p in &packets[..10] {
            dec.decode(p).unwrap();
        }
        // Packet 10 is lost; 11 carries FEC for it.
        let rebuilt = dec.recover(Some(&packets[11])).unwrap();
        assert_eq!(rebuilt.len(), FRAME_SAMPLES);
        assert!(rms(&rebuilt) > 1_000.0, "FEC brings back sound, not silence");
        let concealed = dec.recover(None).unwrap();
        assert_eq!(concealed.len(), FRAME_SAMPLES);
    }

    #[test]
    fn bad_input_is_an_error_not_a_crash() {
        let mut enc = OpusEncoder::new(32_000).unwrap();
        assert!(matches!(enc.encode(&[0; 480]), Err(OpusError::FrameSize(480))));
        let mut dec = OpusDecoder::new().unwrap();
        // A TOC byte announcing a code-3 packet with a frame count of 0 is invalid.
        assert!(dec.decode(&[0x03, 0x00]).is_err());
    }
}
