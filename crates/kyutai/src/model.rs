//! The delayed-streams language model, stepped for a batch of slots at once.
//!
//! One step is 80 ms of speech for every slot: the backbone takes each
//! slot's text token, its audio tokens of the previous step and its
//! conditioning, and gives text logits and a hidden state; the depth
//! transformer then generates the step's codebooks one after another from
//! that state. Slots are independent sessions: each has its own position,
//! its own rows of the attention caches and its own voice (attended to by
//! every backbone layer through keys and values computed once per voice).
//!
//! A token of `-1` is "nothing": a zero embedding (streams not started yet).

use std::path::Path;

use moshi::candle::{D, DType, Device, IndexOp, Result, Tensor};
use moshi::candle_nn::{VarBuilder, ops, rotary_emb};

use crate::{Config, Sampler};

const RMS_EPS: f32 = 1e-8;
const LAYER_NORM_EPS: f32 = 1e-5;

struct Layer {
    norm1: Tensor,
    self_in: Tensor,
    self_out: Tensor,
    norm_cross: (Tensor, Tensor),
    cross_q: Tensor,
    cross_kv: Tensor,
    cross_out: Tensor,
    norm2: Tensor,
    mlp_in: Tensor,
    mlp_out: Tensor,
}

struct DepLayer {
    norm1: Tensor,
    norm2: Tensor,
    /// Per weight set.
    attn_in: Vec<Tensor>,
    attn_out: Vec<Tensor>,
    mlp_in: Vec<Tensor>,
    mlp_out: Vec<Tensor>,
}

/// A demuxed text embedding: the first and second stream's tokens looked up
/// in one table and projected apart.
struct TextEmbedding {
    table: Tensor,
    out1: Tensor,
    /// `None` without a second stream.
    out2: Option<Tensor>,
    card: usize,
}

impl TextEmbedding {
    fn forward(&self, tokens: &[i64], device: &Device) -> Result<Tensor> {
        let Some(out2) = &self.out2 else {
            return linear(&embed(&self.table, tokens, device)?, &self.out1);
        };
        let width = self.card as i64 + 1;
        let first: Vec<i64> = tokens.iter().map(|&t| if t < 0 { -1 } else { t % width }).collect();
        let second: Vec<i64> = tokens.iter().map(|&t| if t < 0 { -1 } else { t / width - 1 }).collect();
        let a = linear(&embed(&self.table, &first, device)?, &self.out1)?;
        let b = linear(&embed(&self.table, &second, device)?, out2)?;
        a + b
    }
}

/// The language model and the state of its slots.
pub struct Model {
    config: Config,
    device: Device,
    dtype: DType,
    text_emb: TextEmbedding,
    audio_emb: Vec<Tensor>,
    layers: Vec<Layer>,
    out_norm: Tensor,
    text_linear: Tensor,
    cfg_embed: Tensor,
    cfg_proj: Tensor,
    control: Tensor,
    voice_proj: Tensor,
    dep_in: Vec<Tensor>,
    dep_text_emb: TextEmbedding,
    dep_emb: Vec<(Tensor, Tensor)>,
    dep_layers: Vec<DepLayer>,
    linears: Vec<Tensor>,
    batch: usize,
    /// Per backbone layer: (batch, heads, context, head_dim), a ring per slot.
    self_k: Vec<Tensor>,
    self_v: Vec<Tensor>,
    /// Per backbone layer: (batch, heads, voice_frames, head_dim).
    cross_k: Vec<Tensor>,
    cross_v: Vec<Tensor>,
    /// Steps each slot has taken.
    positions: Vec<usize>,
}

/// `x @ w^T` for `x` of shape (rows, in) and `w` (out, in).
fn linear(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    x.matmul(&w.t()?)
}

/// Rows of `table` for `ids` (`-1`: a zero row).
fn embed(table: &Tensor, ids: &[i64], device: &Device) -> Result<Tensor> {
    let index: Vec<u32> = ids.iter().map(|&i| i.max(0) as u32).collect();
    let keep: Vec<f32> = ids.iter().map(|&i| if i < 0 { 0.0 } else { 1.0 }).collect();
    let rows = table.index_select(&Tensor::new(index, device)?, 0)?;
    rows.broadcast_mul(&Tensor::new(keep, device)?.to_dtype(rows.dtype())?.unsqueeze(1)?)
}

fn gated_mlp(x: &Tensor, w_in: &Tensor, w_out: &Tensor) -> Result<Tensor> {
    let h = linear(x, w_in)?;
    let half = h.dim(D::Minus1)? / 2;
    let gate = ops::silu(&h.narrow(D::Minus1, 0, half)?)?;
    linear(&(gate * h.narrow(D::Minus1, half, half)?)?, w_out)
}

/// Attention of one query per row over `k`/`v` (batch, heads, keys, head_dim).
fn attend(q: &Tensor, k: &Tensor, v: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
    let head_dim = q.dim(D::Minus1)?;
    let scores = (q.matmul(&k.t()?)? / (head_dim as f64).sqrt())?;
    let scores = match mask {
        Some(m) => scores.broadcast_add(m)?,
        None => scores,
    };
    ops::softmax_last_dim(&scores.to_dtype(DType::F32)?)?.to_dtype(v.dtype())?.matmul(v)
}

impl Model {
    /// Loads the release in `dir` (`config.json` and the checkpoint it
    /// names) for `batch` slots.
    pub fn load(dir: &Path, batch: usize, device: &Device) -> std::result::Result<Self, crate::KyutaiError> {
        Self::load_release(&crate::files::Release::local(dir)?, batch, device)
    }

    /// Loads `release`'s config and checkpoint for `batch` slots.
    pub fn load_release(
        release: &crate::files::Release,
        batch: usize,
        device: &Device,
    ) -> std::result::Result<Self, crate::KyutaiError> {
        let read =
            |path: &Path| std::fs::read(path).map_err(|source| crate::KyutaiError::Io { path: path.into(), source });
        let config: Config =
            serde_json::from_slice(&read(&release.config)?).map_err(|e| crate::KyutaiError::Config(e.to_string()))?;
        config.check().map_err(crate::KyutaiError::Config)?;
        let dtype = if device.is_cuda() { DType::BF16 } else { DType::F32 };
        // Read whole (no mmap: this workspace has no unsafe code); 3.7 GB at full size.
        let bytes = read(&release.weights)?;
        let vb = VarBuilder::from_buffered_safetensors(bytes, dtype, device)?;
        Ok(Self::new(config, vb, batch, device)?)
    }

    fn new(config: Config, vb: VarBuilder, batch: usize, device: &Device) -> Result<Self> {
        let c = &config;
        let shapes: std::collections::HashMap<String, Vec<usize>> = crate::weights::layout(c).into_iter().collect();
        let get = |name: &str| -> Result<Tensor> { vb.get(shapes[name].as_slice(), name) };
        let (d, heads) = (c.dim, c.num_heads);
        let head_dim = d / heads;
        let text_emb = TextEmbedding {
            table: get("text_emb.weight")?,
            out1: if c.demux_second_stream {
                get("text_emb.out1.weight")?
            } else {
                Tensor::eye(d, vb.dtype(), device)?
            },
            out2: if c.demux_second_stream { Some(get("text_emb.out2.weight")?) } else { None },
            card: c.text_card,
        };
        let audio_emb = (0..c.n_q).map(|k| get(&format!("emb.{k}.weight"))).collect::<Result<Vec<_>>>()?;
        let mut layers = Vec::new();
        for l in 0..c.num_layers {
            let p = format!("transformer.layers.{l}");
            let cross_in = get(&format!("{p}.cross_attention.in_proj_weight"))?;
            layers.push(Layer {
                norm1: get(&format!("{p}.norm1.alpha"))?.flatten_all()?,
                self_in: get(&format!("{p}.self_attn.in_proj_weight"))?,
                self_out: get(&format!("{p}.self_attn.out_proj.weight"))?,
                norm_cross: (get(&format!("{p}.norm_cross.weight"))?, get(&format!("{p}.norm_cross.bias"))?),
                cross_q: cross_in.narrow(0, 0, d)?,
                cross_kv: cross_in.narrow(0, d, 2 * d)?,
                cross_out: get(&format!("{p}.cross_attention.out_proj.weight"))?,
                norm2: get(&format!("{p}.norm2.alpha"))?.flatten_all()?,
                mlp_in: get(&format!("{p}.gating.linear_in.weight"))?,
                mlp_out: get(&format!("{p}.gating.linear_out.weight"))?,
            });
        }
        let conditioners = "condition_provider.conditioners";
        // `control` has one value in use: its row, projected once.
        let control = linear(
            &get(&format!("{conditioners}.control.embed.weight"))?.i(0..1)?,
            &get(&format!("{conditioners}.control.output_proj.weight"))?,
        )?;
        let dep_text_emb = TextEmbedding {
            table: get("depformer_text_emb.weight")?,
            out1: if c.demux_second_stream {
                get("depformer_text_emb.out1.weight")?
            } else {
                get("depformer_text_emb.low_rank.weight")?
            },
            out2: if c.demux_second_stream { Some(get("depformer_text_emb.out2.weight")?) } else { None },
            card: c.text_card,
        };
        let dep_emb = (0..c.dep_q.saturating_sub(1))
            .map(|k| {
                Ok((get(&format!("depformer_emb.{k}.weight"))?, get(&format!("depformer_emb.{k}.low_rank.weight"))?))
            })
            .collect::<Result<Vec<_>>>()?;
        let sets = c.depformer_weight_sets();
        let mut dep_layers = Vec::new();
        for l in 0..c.depformer_num_layers {
            let p = format!("depformer.layers.{l}");
            let per_set = |what: &str| {
                (0..sets)
                    .map(|s| get(&format!("{p}.{}", what.replace("{s}", &s.to_string()))))
                    .collect::<Result<Vec<_>>>()
            };
            dep_layers.push(DepLayer {
                norm1: get(&format!("{p}.norm1.alpha"))?.flatten_all()?,
                norm2: get(&format!("{p}.norm2.alpha"))?.flatten_all()?,
                attn_in: per_set("self_attn.in_projs.{s}.weight")?,
                attn_out: per_set("self_attn.out_projs.{s}.weight")?,
                mlp_in: per_set("gating.{s}.linear_in.weight")?,
                mlp_out: per_set("gating.{s}.linear_out.weight")?,
            });
        }
        let dtype = vb.dtype();
        let cache = |frames: usize| Tensor::zeros((batch, heads, frames, head_dim), dtype, device);
        let voice_frames = c.conditioning.voice_frames;
        Ok(Self {
            text_emb,
            audio_emb,
            out_norm: get("out_norm.alpha")?.flatten_all()?,
            text_linear: get("text_linear.weight")?,
            cfg_embed: get(&format!("{conditioners}.cfg.embed.weight"))?,
            cfg_proj: get(&format!("{conditioners}.cfg.output_proj.weight"))?,
            control,
            voice_proj: get(&format!("{conditioners}.speaker_wavs.output_proj.weight"))?,
            dep_in: (0..sets).map(|s| get(&format!("depformer_in.{s}.weight"))).collect::<Result<Vec<_>>>()?,
            dep_text_emb,
            dep_emb,
            dep_layers,
            linears: (0..c.dep_q).map(|k| get(&format!("linears.{k}.weight"))).collect::<Result<Vec<_>>>()?,
            self_k: (0..c.num_layers).map(|_| cache(c.context)).collect::<Result<Vec<_>>>()?,
            self_v: (0..c.num_layers).map(|_| cache(c.context)).collect::<Result<Vec<_>>>()?,
            cross_k: (0..c.num_layers).map(|_| cache(voice_frames)).collect::<Result<Vec<_>>>()?,
            cross_v: (0..c.num_layers).map(|_| cache(voice_frames)).collect::<Result<Vec<_>>>()?,
            positions: vec![0; batch],
            layers,
            batch,
            dtype,
            device: device.clone(),
            config,
        })
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn batch(&self) -> usize {
        self.batch
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Steps `slot` has taken since it was last reset.
    pub fn position(&self, slot: usize) -> usize {
        self.positions[slot]
    }

    /// Starts `slot` afresh with `voice` (frames × voice_dim, the voice
    /// file's embedding): its keys and values for every layer are computed
    /// here, once. Earlier cache rows of the slot are masked from then on.
    pub fn reset_slot(&mut self, slot: usize, voice: &Tensor) -> Result<()> {
        let c = &self.config;
        let (d, heads) = (c.dim, c.num_heads);
        let (frames, head_dim) = (c.conditioning.voice_frames, d / heads);
        let source = linear(&voice.to_dtype(self.dtype)?.to_device(&self.device)?, &self.voice_proj)?;
        let source = (source + sin_embedding(frames, d, &self.device)?.to_dtype(self.dtype)?)?;
        for (l, layer) in self.layers.iter().enumerate() {
            let kv = linear(&source, &layer.cross_kv)?.reshape((frames, 2, heads, head_dim))?;
            let k = kv.i((.., 0))?.transpose(0, 1)?.unsqueeze(0)?.contiguous()?;
            let v = kv.i((.., 1))?.transpose(0, 1)?.unsqueeze(0)?.contiguous()?;
            self.cross_k[l] = self.cross_k[l].slice_assign(&[slot..slot + 1, 0..heads, 0..frames, 0..head_dim], &k)?;
            self.cross_v[l] = self.cross_v[l].slice_assign(&[slot..slot + 1, 0..heads, 0..frames, 0..head_dim], &v)?;
        }
        self.positions[slot] = 0;
        Ok(())
    }

    /// One backbone step for every slot: `text[b]` (muxed, or -1), `audio[b]`
    /// (n_q tokens, -1 = nothing), `cfg[b]` (the guidance bin). Returns the
    /// text logits (batch, text_card) and the hidden state for the depth
    /// transformer (batch, dim). Every slot advances one position.
    pub fn backbone(&mut self, text: &[i64], audio: &[Vec<i64>], cfg: &[u32]) -> Result<(Tensor, Tensor)> {
        let active = vec![true; self.batch];
        self.backbone_masked(text, audio, cfg, &active)
    }

    /// [`Model::backbone`] where only `active` slots advance: an inactive
    /// slot's outputs are to be ignored, and the cache row it writes is
    /// written again at its next active step (its position did not move).
    pub fn backbone_masked(
        &mut self,
        text: &[i64],
        audio: &[Vec<i64>],
        cfg: &[u32],
        active: &[bool],
    ) -> Result<(Tensor, Tensor)> {
        let (b, dev) = (self.batch, self.device.clone());
        let c = &self.config;
        let (d, heads, ctx) = (c.dim, c.num_heads, c.context);
        let head_dim = d / heads;
        let mut x = self.text_emb.forward(text, &dev)?;
        for (k, table) in self.audio_emb.iter().enumerate() {
            let ids: Vec<i64> = audio.iter().map(|row| row[k]).collect();
            x = (x + embed(table, &ids, &dev)?)?;
        }
        let cfg_rows = self.cfg_embed.index_select(&Tensor::new(cfg, &dev)?, 0)?;
        x = (x + linear(&cfg_rows, &self.cfg_proj)?)?.broadcast_add(&self.control)?;

        // Per slot: rotary angles at its position, where its key goes in the
        // ring, and which ring entries it may attend to.
        let half = head_dim / 2;
        let (mut cos, mut sin) = (Vec::with_capacity(b * half), Vec::with_capacity(b * half));
        let (mut ring, mut mask) = (Vec::with_capacity(b * heads * head_dim), Vec::with_capacity(b * ctx));
        for &pos in &self.positions {
            for i in 0..half {
                let angle = pos as f64 / c.max_period.powf(2.0 * i as f64 / head_dim as f64);
                cos.push(angle.cos() as f32);
                sin.push(angle.sin() as f32);
            }
            ring.extend(std::iter::repeat_n((pos % ctx) as u32, heads * head_dim));
            mask.extend((0..ctx).map(|j| if j <= pos { 0f32 } else { f32::NEG_INFINITY }));
        }
        let cos = Tensor::from_vec(cos, (b, 1, half), &dev)?.to_dtype(self.dtype)?;
        let sin = Tensor::from_vec(sin, (b, 1, half), &dev)?.to_dtype(self.dtype)?;
        let ring = Tensor::from_vec(ring, (b, heads, 1, head_dim), &dev)?;
        let mask = Tensor::from_vec(mask, (b, 1, 1, ctx), &dev)?.to_dtype(self.dtype)?;

        for (l, layer) in self.layers.iter().enumerate() {
            let h = ops::rms_norm(&x, &layer.norm1, RMS_EPS)?;
            let qkv = linear(&h, &layer.self_in)?.reshape((b, 3, heads, 1, head_dim))?;
            let q = rotary_emb::rope_i(&qkv.i((.., 0))?.contiguous()?, &cos, &sin)?;
            let k = rotary_emb::rope_i(&qkv.i((.., 1))?.contiguous()?, &cos, &sin)?;
            let v = qkv.i((.., 2))?.contiguous()?;
            self.self_k[l].scatter_set(&ring, &k, 2)?;
            self.self_v[l].scatter_set(&ring, &v, 2)?;
            let att = attend(&q, &self.self_k[l], &self.self_v[l], Some(&mask))?;
            x = (x + linear(&att.reshape((b, d))?, &layer.self_out)?)?;

            let h = ops::layer_norm(&x, &layer.norm_cross.0, &layer.norm_cross.1, LAYER_NORM_EPS)?;
            let q = linear(&h, &layer.cross_q)?.reshape((b, heads, 1, head_dim))?;
            let att = attend(&q, &self.cross_k[l], &self.cross_v[l], None)?;
            x = (x + linear(&att.reshape((b, d))?, &layer.cross_out)?)?;

            let h = ops::rms_norm(&x, &layer.norm2, RMS_EPS)?;
            x = (x + gated_mlp(&h, &layer.mlp_in, &layer.mlp_out)?)?;
        }
        for (p, _) in self.positions.iter_mut().zip(active).filter(|(_, a)| **a) {
            *p += 1;
        }
        let hidden = ops::rms_norm(&x, &self.out_norm, RMS_EPS)?;
        Ok((linear(&hidden, &self.text_linear)?, hidden))
    }

    /// The step's codebooks for every slot, from the backbone's `hidden`
    /// state and the step's (muxed) `text` tokens, one codebook after
    /// another; each is sampled by `sampler`. Returns (batch, dep_q) tokens.
    pub fn depformer(&self, hidden: &Tensor, text: &[i64], sampler: &mut Sampler) -> Result<Vec<Vec<u32>>> {
        let (b, dev) = (self.batch, &self.device);
        let c = &self.config;
        let (dd, heads) = (c.depformer_dim, c.depformer_num_heads);
        let head_dim = dd / heads;
        let mut tokens = vec![Vec::with_capacity(c.dep_q); b];
        // Per layer: the keys and values of this step's codebooks so far.
        let mut keys: Vec<Option<(Tensor, Tensor)>> = vec![None; self.dep_layers.len()];
        let mut previous: Vec<i64> = Vec::new();
        for k in 0..c.dep_q {
            let set = c.depformer_weights_per_step_schedule[k];
            let input = if k == 0 {
                self.dep_text_emb.forward(text, dev)?
            } else {
                let (table, low_rank) = &self.dep_emb[k - 1];
                linear(&embed(table, &previous, dev)?, low_rank)?
            };
            let mut x = (linear(hidden, &self.dep_in[set])? + input)?;
            for (l, layer) in self.dep_layers.iter().enumerate() {
                let h = ops::rms_norm(&x, &layer.norm1, RMS_EPS)?;
                let qkv = linear(&h, &layer.attn_in[set])?.reshape((b, 3, heads, 1, head_dim))?;
                let q = qkv.i((.., 0))?.contiguous()?;
                let (new_k, new_v) = (qkv.i((.., 1))?.contiguous()?, qkv.i((.., 2))?.contiguous()?);
                let (all_k, all_v) = match keys[l].take() {
                    Some((pk, pv)) => (Tensor::cat(&[&pk, &new_k], 2)?, Tensor::cat(&[&pv, &new_v], 2)?),
                    None => (new_k, new_v),
                };
                let att = attend(&q, &all_k, &all_v, None)?;
                keys[l] = Some((all_k, all_v));
                x = (x + linear(&att.reshape((b, dd))?, &layer.attn_out[set])?)?;
                let h = ops::rms_norm(&x, &layer.norm2, RMS_EPS)?;
                x = (x + gated_mlp(&h, &layer.mlp_in[set], &layer.mlp_out[set])?)?;
            }
            let logits = linear(&x, &self.linears[k])?;
            let picked = sampler.sample(&logits)?;
            for (row, &t) in tokens.iter_mut().zip(&picked) {
                row.push(t);
            }
            previous = picked.iter().map(|&t| t as i64).collect();
        }
        Ok(tokens)
    }
}

/// Sinusoidal positions for the voice frames: cos then sin halves.
fn sin_embedding(frames: usize, dim: usize, device: &Device) -> Result<Tensor> {
    let half = dim / 2;
    let mut data = Vec::with_capacity(frames * dim);
    for pos in 0..frames {
        let angles: Vec<f64> =
            (0..half).map(|i| pos as f64 / 10_000f64.powf(i as f64 / (half.max(2) - 1) as f64)).collect();
        data.extend(angles.iter().map(|a| a.cos() as f32));
        data.extend(angles.iter().map(|a| a.sin() as f32));
    }
    Tensor::from_vec(data, (frames, dim), device)
}
