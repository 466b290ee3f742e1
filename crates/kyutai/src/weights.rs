//! The checkpoint's tensors: every name and shape the model loads, in one
//! list, so the loader and the random-weight writer cannot disagree.
//!
//! Names follow Kyutai's PyTorch module tree for the delayed-streams TTS
//! (backbone `transformer.layers.*`, depth transformer `depformer.layers.*`
//! with one set of projections per weight set, `depformer_in.*`,
//! `depformer_emb.*`, `linears.*`, conditioners under
//! `condition_provider.conditioners.*`). They have not been checked against
//! the published file (not reachable from our machines); the loader names
//! the first missing or misshapen tensor.

use std::collections::HashMap;
use std::path::Path;

use moshi::candle::{DType, Device, Tensor};

use crate::Config;

/// Every tensor of the model: name and shape.
pub fn layout(c: &Config) -> Vec<(String, Vec<usize>)> {
    let (d, dd, lr) = (c.dim, c.depformer_dim, c.depformer_low_rank_embeddings);
    let mut t: Vec<(String, Vec<usize>)> = Vec::new();
    let mut add = |name: String, shape: &[usize]| t.push((name, shape.to_vec()));
    add("text_emb.weight".into(), &[c.text_card + 1, d]);
    if c.demux_second_stream {
        add("text_emb.out1.weight".into(), &[d, d]);
        add("text_emb.out2.weight".into(), &[d, d]);
    }
    for k in 0..c.n_q {
        add(format!("emb.{k}.weight"), &[c.card + 1, d]);
    }
    for l in 0..c.num_layers {
        let p = format!("transformer.layers.{l}");
        add(format!("{p}.norm1.alpha"), &[1, 1, d]);
        add(format!("{p}.self_attn.in_proj_weight"), &[3 * d, d]);
        add(format!("{p}.self_attn.out_proj.weight"), &[d, d]);
        add(format!("{p}.norm_cross.weight"), &[d]);
        add(format!("{p}.norm_cross.bias"), &[d]);
        add(format!("{p}.cross_attention.in_proj_weight"), &[3 * d, d]);
        add(format!("{p}.cross_attention.out_proj.weight"), &[d, d]);
        add(format!("{p}.norm2.alpha"), &[1, 1, d]);
        add(format!("{p}.gating.linear_in.weight"), &[2 * c.hidden(), d]);
        add(format!("{p}.gating.linear_out.weight"), &[d, c.hidden()]);
    }
    add("out_norm.alpha".into(), &[1, 1, d]);
    add("text_linear.weight".into(), &[c.text_card, d]);
    let cond = &c.conditioning;
    let conditioners = "condition_provider.conditioners";
    add(format!("{conditioners}.cfg.embed.weight"), &[cond.cfg_bins + 1, cond.cfg_dim]);
    add(format!("{conditioners}.cfg.output_proj.weight"), &[d, cond.cfg_dim]);
    add(format!("{conditioners}.control.embed.weight"), &[cond.control_bins + 1, cond.control_dim]);
    add(format!("{conditioners}.control.output_proj.weight"), &[d, cond.control_dim]);
    add(format!("{conditioners}.speaker_wavs.output_proj.weight"), &[d, cond.voice_dim]);

    for s in 0..c.depformer_weight_sets() {
        add(format!("depformer_in.{s}.weight"), &[dd, d]);
    }
    add("depformer_text_emb.weight".into(), &[c.text_card + 1, lr]);
    if c.demux_second_stream {
        add("depformer_text_emb.out1.weight".into(), &[dd, lr]);
        add("depformer_text_emb.out2.weight".into(), &[dd, lr]);
    } else {
        add("depformer_text_emb.low_rank.weight".into(), &[dd, lr]);
    }
    for k in 0..c.dep_q.saturating_sub(1) {
        add(format!("depformer_emb.{k}.weight"), &[c.card + 1, lr]);
        add(format!("depformer_emb.{k}.low_rank.weight"), &[dd, lr]);
    }
    for l in 0..c.depformer_num_layers {
        let p = format!("depformer.layers.{l}");
        add(format!("{p}.norm1.alpha"), &[1, 1, dd]);
        add(format!("{p}.norm2.alpha"), &[1, 1, dd]);
        for s in 0..c.depformer_weight_sets() {
            add(format!("{p}.self_attn.in_projs.{s}.weight"), &[3 * dd, dd]);
            add(format!("{p}.self_attn.out_projs.{s}.weight"), &[dd, dd]);
            add(format!("{p}.gating.{s}.linear_in.weight"), &[2 * c.depformer_hidden(), dd]);
            add(format!("{p}.gating.{s}.linear_out.weight"), &[dd, c.depformer_hidden()]);
        }
    }
    for k in 0..c.dep_q {
        add(format!("linears.{k}.weight"), &[c.card, dd]);
    }
    t
}

/// Writes random weights of `config`'s shapes to `dir/model.safetensors`
/// and the config to `dir/config.json`: the real file formats, for tests
/// (tiny) and for the GPU benchmark (full size). Norm scales are 1, the rest
/// normal with a fan-in scale so activations stay in range. F32.
pub fn write_random(config: &Config, dir: &Path, seed: u64) -> moshi::candle::Result<()> {
    write_random_as(config, dir, seed, DType::F32)
}

/// [`write_random`] stored as `dtype` (BF16 halves the full model to 3.6 GB,
/// as the published checkpoint is stored).
pub fn write_random_as(config: &Config, dir: &Path, seed: u64, dtype: DType) -> moshi::candle::Result<()> {
    let device = Device::Cpu;
    let mut rng = crate::rng::Rng::new(seed);
    let mut tensors = HashMap::new();
    for (name, shape) in layout(config) {
        let tensor = if name.ends_with("alpha") || name.ends_with("norm_cross.weight") {
            Tensor::ones(shape.as_slice(), DType::F32, &device)?
        } else if name.ends_with("bias") {
            Tensor::zeros(shape.as_slice(), DType::F32, &device)?
        } else {
            let fan_in = *shape.last().unwrap_or(&1) as f64;
            let std = if name.contains("emb") { 1.0 } else { 1.0 / fan_in.sqrt() };
            let n: usize = shape.iter().product();
            let data: Vec<f32> = (0..n).map(|_| (rng.normal() * std) as f32).collect();
            Tensor::from_vec(data, shape.as_slice(), &device)?
        };
        tensors.insert(name, tensor.to_dtype(dtype)?);
    }
    std::fs::create_dir_all(dir)?;
    moshi::candle::safetensors::save(&tensors, dir.join("model.safetensors"))?;
    let json = serde_json::to_string_pretty(config).map_err(moshi::candle::Error::wrap)?;
    std::fs::write(dir.join("config.json"), json)?;
    Ok(())
}
