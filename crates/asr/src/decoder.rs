//! Whisper's text decoder with a self-attention cache: each step computes
//! only the new token, where candle-transformers' decoder (which caches the
//! cross-attention alone) recomputes every earlier token at every step.
//! Same weights (the Hugging Face names under `model.decoder`), same
//! arithmetic (LayerNorm ε 1e-5, tanh GELU, causal mask within a step).

use candle_core::{D, Module, Result, Tensor};
use candle_nn::{Embedding, LayerNorm, Linear, VarBuilder, embedding, linear, linear_no_bias};
use candle_transformers::models::whisper as w;

fn layer_norm(size: usize, vb: VarBuilder) -> Result<LayerNorm> {
    Ok(LayerNorm::new(vb.get(size, "weight")?, vb.get(size, "bias")?, 1e-5))
}

struct Attention {
    query: Linear,
    key: Linear,
    value: Linear,
    out: Linear,
    n_head: usize,
}

impl Attention {
    fn load(n_state: usize, n_head: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            query: linear(n_state, n_state, vb.pp("q_proj"))?,
            key: linear_no_bias(n_state, n_state, vb.pp("k_proj"))?,
            value: linear(n_state, n_state, vb.pp("v_proj"))?,
            out: linear(n_state, n_state, vb.pp("out_proj"))?,
            n_head,
        })
    }

    /// (batch, ctx, state) → (batch, head, ctx, state / head).
    fn heads(&self, x: &Tensor) -> Result<Tensor> {
        let (b, t, s) = x.dims3()?;
        x.reshape((b, t, self.n_head, s / self.n_head))?.transpose(1, 2)
    }

    /// Attention of `q` (the new positions) over `k`/`v` (all positions, heads
    /// split), with `mask` added to the scores when given.
    fn attend(&self, q: &Tensor, k: &Tensor, v: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
        let d_head = (q.dim(D::Minus1)? / self.n_head) as f64;
        let q = (self.heads(q)? * d_head.powf(-0.25))?;
        let k = (k.transpose(2, 3)? * d_head.powf(-0.25))?;
        let mut scores = q.matmul(&k)?;
        if let Some(mask) = mask {
            scores = scores.broadcast_add(mask)?;
        }
        let weights = candle_nn::ops::softmax_last_dim(&scores)?;
        let out = weights.matmul(&v.contiguous()?)?.transpose(1, 2)?.flatten_from(2)?;
        self.out.forward(&out)
    }
}

struct Block {
    attn: Attention,
    attn_ln: LayerNorm,
    cross: Attention,
    cross_ln: LayerNorm,
    fc1: Linear,
    fc2: Linear,
    mlp_ln: LayerNorm,
    /// Keys and values of every position so far (heads split).
    cache: Option<(Tensor, Tensor)>,
    /// Keys and values of the audio features (heads split).
    audio: Option<(Tensor, Tensor)>,
}

impl Block {
    fn load(n_state: usize, n_head: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            attn: Attention::load(n_state, n_head, vb.pp("self_attn"))?,
            attn_ln: layer_norm(n_state, vb.pp("self_attn_layer_norm"))?,
            cross: Attention::load(n_state, n_head, vb.pp("encoder_attn"))?,
            cross_ln: layer_norm(n_state, vb.pp("encoder_attn_layer_norm"))?,
            fc1: linear(n_state, n_state * 4, vb.pp("fc1"))?,
            fc2: linear(n_state * 4, n_state, vb.pp("fc2"))?,
            mlp_ln: layer_norm(n_state, vb.pp("final_layer_norm"))?,
            cache: None,
            audio: None,
        })
    }

    fn forward(&mut self, x: &Tensor, features: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
        let a = self.attn_ln.forward(x)?;
        let q = self.attn.query.forward(&a)?;
        let k = self.attn.heads(&self.attn.key.forward(&a)?)?;
        let v = self.attn.heads(&self.attn.value.forward(&a)?)?;
        let (k, v) = match self.cache.take() {
            Some((pk, pv)) => (Tensor::cat(&[&pk, &k], 2)?, Tensor::cat(&[&pv, &v], 2)?),
            None => (k, v),
        };
        let attn = self.attn.attend(&q, &k, &v, mask)?;
        self.cache = Some((k, v));
        let x = (x + attn)?;
        if self.audio.is_none() {
            let k = self.cross.heads(&self.cross.key.forward(features)?)?;
            let v = self.cross.heads(&self.cross.value.forward(features)?)?;
            self.audio = Some((k, v));
        }
        let (ak, av) = self.audio.as_ref().expect("set above");
        let q = self.cross.query.forward(&self.cross_ln.forward(&x)?)?;
        let x = (&x + self.cross.attend(&q, ak, av, None)?)?;
        let mlp = self.fc2.forward(&self.fc1.forward(&self.mlp_ln.forward(&x)?)?.gelu()?)?;
        x + mlp
    }
}

/// The decoder of one loaded model; [`Decoder::reset`] before each transcription.
pub struct Decoder {
    embedding: Embedding,
    positions: Tensor,
    blocks: Vec<Block>,
    ln: LayerNorm,
    /// Positions already in the caches.
    done: usize,
}

impl Decoder {
    /// `vb` at the model's root (the weights under `model.decoder`).
    pub fn load(vb: &VarBuilder, cfg: &w::Config) -> Result<Self> {
        let vb = vb.pp("model.decoder");
        let (n_state, n_head) = (cfg.d_model, cfg.decoder_attention_heads);
        let blocks = (0..cfg.decoder_layers)
            .map(|i| Block::load(n_state, n_head, vb.pp(format!("layers.{i}"))))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            embedding: embedding(cfg.vocab_size, n_state, vb.pp("embed_tokens"))?,
            positions: vb.get((cfg.max_target_positions, n_state), "embed_positions.weight")?,
            blocks,
            ln: layer_norm(n_state, vb.pp("layer_norm"))?,
            done: 0,
        })
    }

    /// Forgets the tokens and the audio of the last transcription.
    pub fn reset(&mut self) {
        self.done = 0;
        for b in &mut self.blocks {
            b.cache = None;
            b.audio = None;
        }
    }

    /// Runs `tokens` (the positions after those already seen) over the audio
    /// `features`; returns their hidden states after the final LayerNorm,
    /// (1, tokens, state).
    pub fn forward(&mut self, tokens: &[u32], features: &Tensor) -> Result<Tensor> {
        let device = features.device();
        let t = tokens.len();
        let input = Tensor::new(tokens, device)?.unsqueeze(0)?;
        let mut x = self.embedding.forward(&input)?.broadcast_add(&self.positions.narrow(0, self.done, t)?)?;
        // New positions see all earlier ones and themselves, not later ones.
        let done = self.done;
        let mask = (t > 1)
            .then(|| {
                let all = done + t;
                let m: Vec<f32> = (0..t)
                    .flat_map(|i| (0..all).map(move |j| if j > done + i { f32::NEG_INFINITY } else { 0.0 }))
                    .collect();
                Tensor::from_vec(m, (t, all), device)
            })
            .transpose()?;
        for b in &mut self.blocks {
            x = b.forward(&x, features, mask.as_ref())?;
        }
        self.done += t;
        self.ln.forward(&x)
    }

    /// Scores over the vocabulary for hidden states `x` (tied embedding).
    pub fn logits(&self, x: &Tensor) -> Result<Tensor> {
        x.broadcast_matmul(&self.embedding.embeddings().t()?)
    }
}
