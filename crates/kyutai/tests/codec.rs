//! The Mimi decoder on tiny random weights written as safetensors and loaded
//! through moshi's codec: 80 ms of 24 kHz audio per step, per-slot state.

use duplex_kyutai::codec::{Codec, SAMPLES_PER_STEP, tiny_config, write_random};
use duplex_kyutai::moshi_candle::Device;

fn codec(batch: usize) -> (tempfile::TempDir, Codec) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mimi.safetensors");
    write_random(tiny_config(4, 16), &path).unwrap();
    let codec = Codec::load_with(tiny_config(4, 16), &path, batch, &Device::Cpu).unwrap();
    (dir, codec)
}

fn decode(codec: &mut Codec, slot: usize, steps: usize) -> Vec<f32> {
    (0..steps).flat_map(|s| codec.decode(slot, &[(s % 16) as u32, 3, 5, ((s * 7) % 16) as u32]).unwrap()).collect()
}

#[test]
fn each_step_is_80_ms_of_24_khz_audio() {
    let (_dir, mut codec) = codec(1);
    let pcm = decode(&mut codec, 0, 6);
    assert_eq!(pcm.len(), 6 * SAMPLES_PER_STEP);
    assert!(pcm.iter().all(|s| s.is_finite()));
    assert!(pcm.iter().any(|s| s.abs() > 1e-6), "random weights make some sound");
}

#[test]
fn a_reset_slot_decodes_like_a_fresh_one_and_slots_are_apart() {
    let (_dir, mut codec) = codec(2);
    let first = decode(&mut codec, 0, 4);
    // Slot 1 decodes other codes meanwhile; slot 0, reset, gives the same audio again.
    let _ = (0..3).map(|_| codec.decode(1, &[1, 1, 1, 1]).unwrap()).count();
    codec.reset_slot(0);
    assert_eq!(decode(&mut codec, 0, 4), first);
    // Without the reset, the decoder carries the past: other samples.
    assert_ne!(decode(&mut codec, 0, 4), first);
}
