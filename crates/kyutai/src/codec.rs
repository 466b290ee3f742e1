//! The Mimi codec's decoder: one step's codebooks of a slot become 80 ms of
//! 24 kHz audio. moshi's Mimi, loaded from the checkpoint's codec file.
//!
//! Each slot has its own decoder state: a clone of the loaded codec (clones
//! share the weights). moshi's batched Mimi would decode all slots in one
//! call, but its per-slot reset leaves the decoder transformer's cache in
//! place (0.6.4 resets the encoder's twice), so a reused slot would hear the
//! previous session; per-slot state is correct, and batching it is a GPU
//! optimisation for later.

use std::path::Path;

use moshi::candle::{DType, Device, Result, Tensor};
use moshi::candle_nn::{VarBuilder, VarMap};
pub use moshi::mimi::Config as MimiConfig;
use moshi::mimi::Mimi;

/// 24 kHz samples per step (80 ms).
pub const SAMPLES_PER_STEP: usize = 1920;

pub struct Codec {
    fresh: Mimi,
    slots: Vec<Mimi>,
    device: Device,
}

impl Codec {
    /// The published codec (`tokenizer-e351c8d8-checkpoint125.safetensors`)
    /// decoding `n_q` codebooks, for `batch` slots.
    pub fn load(path: &Path, n_q: usize, batch: usize, device: &Device) -> Result<Self> {
        Self::load_with(MimiConfig::v0_1(Some(n_q)), path, batch, device)
    }

    pub fn load_with(config: MimiConfig, path: &Path, batch: usize, device: &Device) -> Result<Self> {
        let vb = VarBuilder::from_buffered_safetensors(std::fs::read(path)?, DType::F32, device)?;
        let fresh = Mimi::new(config, vb)?;
        Ok(Self { slots: vec![fresh.clone(); batch], fresh, device: device.clone() })
    }

    /// Forgets `slot`'s audio so far (a new session).
    pub fn reset_slot(&mut self, slot: usize) {
        self.slots[slot] = self.fresh.clone();
    }

    /// One step's codebooks (n_q tokens) of `slot` → its 80 ms of audio.
    pub fn decode(&mut self, slot: usize, codes: &[u32]) -> Result<Vec<f32>> {
        let codes = Tensor::new(codes, &self.device)?.reshape((1, codes.len(), 1))?;
        let pcm = self.slots[slot].decode_step(&codes.into(), &().into())?;
        match pcm.as_option() {
            Some(pcm) => pcm.flatten_all()?.to_dtype(DType::F32)?.to_vec1(),
            // The decoder's first steps may hold their output back.
            None => Ok(Vec::new()),
        }
    }
}

/// Mimi as published, decoding `n_q` codebooks.
pub fn published_config(n_q: usize) -> MimiConfig {
    MimiConfig::v0_1(Some(n_q))
}

/// Mimi with the published strides (24 kHz, 80 ms per step) and tiny
/// widths: for tests.
pub fn tiny_config(n_q: usize, bins: usize) -> MimiConfig {
    let mut config = MimiConfig::v0_1(Some(n_q));
    config.seanet.dimension = 8;
    config.seanet.n_filters = 2;
    config.transformer.d_model = 8;
    config.transformer.num_heads = 2;
    config.transformer.num_layers = 1;
    config.transformer.dim_feedforward = 16;
    config.quantizer_bins = bins;
    config.quantizer_dim = 4;
    config
}

/// Random codec weights for `config`, written as safetensors at `path`
/// (the tensors moshi's Mimi asks for, all of them random; codebook usage
/// counts are 1 as the codebook divides by them).
pub fn write_random(config: MimiConfig, path: &Path) -> Result<()> {
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
    Mimi::new(config, vb)?;
    let mut rng = crate::rng::Rng::new(0x5eed);
    for (name, var) in varmap.data().lock().expect("varmap lock").iter() {
        let shape = var.as_tensor().dims().to_vec();
        let n: usize = shape.iter().product();
        let data: Vec<f32> = if name.contains("cluster_usage") || name.contains("_initialized") {
            vec![1.0; n]
        } else {
            (0..n).map(|_| ((rng.uniform() - 0.5) * 0.2) as f32).collect()
        };
        var.set(&Tensor::from_vec(data, shape.as_slice(), &Device::Cpu)?)?;
    }
    varmap.save(path)
}
