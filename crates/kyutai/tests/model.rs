//! The model on tiny random weights written in the real formats and loaded
//! through the real loading code: shapes, slots that do not leak into each
//! other, resets, voices, and clear errors for broken checkpoints.

use duplex_kyutai::moshi_candle::{Device, Tensor};
use duplex_kyutai::{Config, Model, Sampler, weights};

fn fixture(seed: u64) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    weights::write_random(&Config::tiny(), dir.path(), seed).unwrap();
    dir
}

fn voice(seed: f32) -> Tensor {
    let c = Config::tiny().conditioning;
    let data: Vec<f32> = (0..c.voice_frames * c.voice_dim).map(|i| (i as f32 * 0.37 + seed).sin()).collect();
    Tensor::from_vec(data, (c.voice_frames, c.voice_dim), &Device::Cpu).unwrap()
}

/// Runs `steps` steps of fixed inputs on `slot` (others get other inputs)
/// and returns that slot's text logits and codebooks per step.
fn run(model: &mut Model, slot: usize, steps: usize) -> Vec<(Vec<f32>, Vec<u32>)> {
    let c = model.config().clone();
    let b = model.batch();
    let mut out = Vec::new();
    for step in 0..steps {
        let text: Vec<i64> =
            (0..b).map(|s| if s == slot { (step % 7) as i64 } else { ((s * 13 + step) % 40) as i64 }).collect();
        let other = |s: usize| if s == slot { 0 } else { s + 5 };
        let audio: Vec<Vec<i64>> = (0..b)
            .map(|s| (0..c.n_q).map(|k| if step == 0 { -1 } else { ((other(s) + k + step) % c.card) as i64 }).collect())
            .collect();
        let (logits, hidden) = model.backbone(&text, &audio, &vec![2; b]).unwrap();
        assert_eq!(logits.dims(), &[b, c.text_card]);
        let tokens = model.depformer(&hidden, &text, &mut Sampler::greedy()).unwrap();
        let rows: Vec<Vec<f32>> = logits.to_vec2().unwrap();
        out.push((rows[slot].clone(), tokens[slot].clone()));
    }
    out
}

#[test]
fn a_batch_steps_every_slot_and_gives_codebooks_in_range() {
    let dir = fixture(1);
    let mut model = Model::load(dir.path(), 3, &Device::Cpu).unwrap();
    for slot in 0..3 {
        model.reset_slot(slot, &voice(slot as f32)).unwrap();
    }
    let c = Config::tiny();
    for (text, audio) in run(&mut model, 1, 5) {
        assert!(text.iter().all(|v| v.is_finite()));
        assert_eq!(audio.len(), c.dep_q);
        assert!(audio.iter().all(|&t| (t as usize) < c.card), "{audio:?}");
    }
    assert_eq!(model.position(0), 5);
}

#[test]
fn a_slot_is_not_touched_by_its_neighbours() {
    let dir = fixture(2);
    // Slot 0 alone in a batch of one, and slot 2 of a batch of four whose
    // other slots get other inputs: the same outputs.
    let mut alone = Model::load(dir.path(), 1, &Device::Cpu).unwrap();
    alone.reset_slot(0, &voice(0.5)).unwrap();
    let mut crowd = Model::load(dir.path(), 4, &Device::Cpu).unwrap();
    for slot in 0..4 {
        crowd.reset_slot(slot, &voice(if slot == 2 { 0.5 } else { slot as f32 * 3.0 })).unwrap();
    }
    // Ring wraps (context 16): 20 steps cover it.
    let a = run(&mut alone, 0, 20);
    let b = run(&mut crowd, 2, 20);
    for (step, ((la, ta), (lb, tb))) in a.iter().zip(&b).enumerate() {
        assert_eq!(ta, tb, "codebooks at step {step}");
        let gap = la.iter().zip(lb).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
        assert!(gap < 1e-4, "text logits differ by {gap} at step {step}");
    }
}

#[test]
fn a_reset_slot_starts_afresh_and_the_voice_matters() {
    let dir = fixture(3);
    let mut model = Model::load(dir.path(), 2, &Device::Cpu).unwrap();
    model.reset_slot(0, &voice(1.0)).unwrap();
    model.reset_slot(1, &voice(2.0)).unwrap();
    let first = run(&mut model, 0, 6);
    // Reused by a new session: its old cache rows must not be seen.
    model.reset_slot(0, &voice(1.0)).unwrap();
    assert_eq!(model.position(0), 0);
    let again = run(&mut model, 0, 6);
    for ((la, ta), (lb, tb)) in first.iter().zip(&again) {
        assert_eq!(ta, tb);
        assert!(la.iter().zip(lb).all(|(x, y)| (x - y).abs() < 1e-4));
    }

    let text = vec![3i64, 3];
    let audio = vec![vec![-1i64; Config::tiny().n_q]; 2];
    let mut fresh = Model::load(dir.path(), 2, &Device::Cpu).unwrap();
    fresh.reset_slot(0, &voice(1.0)).unwrap();
    fresh.reset_slot(1, &voice(7.0)).unwrap();
    let (logits, _) = fresh.backbone(&text, &audio, &[2, 2]).unwrap();
    let rows: Vec<Vec<f32>> = logits.to_vec2().unwrap();
    assert_ne!(rows[0], rows[1], "the same tokens in another voice give other logits");
}

#[test]
fn sampling_follows_the_logits() {
    let logits = Tensor::new(&[[0f32, 10.0, 0.0, 0.0], [5.0, 0.0, 0.0, 0.0]], &Device::Cpu).unwrap();
    assert_eq!(Sampler::greedy().sample(&logits).unwrap(), vec![1, 0]);
    let mut s = Sampler::top_k(2, 1.0, 7);
    for _ in 0..50 {
        let picked = s.sample(&logits).unwrap();
        assert!(picked[0] == 1 || picked[0] == 0 || picked[0] == 2 || picked[0] == 3);
        assert_eq!(picked[0], 1, "a 10-logit lead wins almost surely");
    }
}

#[test]
fn a_broken_checkpoint_names_what_is_wrong() {
    let dir = fixture(4);
    let path = dir.path().join("model.safetensors");
    let mut tensors = duplex_kyutai::moshi_candle::safetensors::load(&path, &Device::Cpu).unwrap();
    tensors.remove("linears.2.weight");
    duplex_kyutai::moshi_candle::safetensors::save(&tensors, &path).unwrap();
    let err = Model::load(dir.path(), 1, &Device::Cpu).err().expect("a missing tensor is an error").to_string();
    assert!(err.contains("linears.2.weight"), "{err}");

    std::fs::remove_file(dir.path().join("model.safetensors")).unwrap();
    let err = Model::load(dir.path(), 1, &Device::Cpu).err().unwrap().to_string();
    assert!(err.contains("model.safetensors") && err.contains(&dir.path().display().to_string()), "{err}");

    std::fs::write(dir.path().join("model.safetensors"), b"").unwrap();
    std::fs::write(dir.path().join("config.json"), "{\"dim\": 4}").unwrap();
    let err = Model::load(dir.path(), 1, &Device::Cpu).err().unwrap().to_string();
    assert!(err.contains("model config"), "{err}");
}
