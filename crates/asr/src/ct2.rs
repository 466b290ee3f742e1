//! CTranslate2's Whisper `model.bin`, read into candle tensors named as in
//! the Hugging Face checkpoints (what candle's Whisper loads).
//!
//! The file (little-endian): `u32` version, the spec name (`u16` length +
//! bytes), `u32` revision, `u32` variable count; per variable its name, `u8`
//! rank, the dims (`u32` each), `u8` dtype (0 f32, 1 i8, 2 i16, 3 i32, 4
//! f16), `u32` byte count and the raw data; then `u32` alias count and
//! (alias, target) name pairs. Attention projections are stacked: self
//! attention `linear_0` holds Q, K and V; cross attention `linear_0` is Q and
//! `linear_1` holds K and V.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};

use crate::AsrLoadError;

/// A variable as stored.
#[derive(Debug, Clone)]
pub struct Variable {
    pub dims: Vec<usize>,
    pub dtype: u8,
    pub data: Vec<u8>,
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self.at.checked_add(n).filter(|e| *e <= self.bytes.len()).ok_or("the file ends early")?;
        let out = &self.bytes[self.at..end];
        self.at = end;
        Ok(out)
    }
    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, String> {
        Ok(u16::from_le_bytes(self.take(2)?.try_into().expect("2 bytes")))
    }
    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().expect("4 bytes")))
    }
    fn name(&mut self) -> Result<String, String> {
        let n = self.u16()? as usize;
        let raw = self.take(n)?;
        let end = raw.iter().position(|b| *b == 0).unwrap_or(raw.len());
        String::from_utf8(raw[..end].to_vec()).map_err(|_| "a name is not UTF-8".to_string())
    }
}

/// Every variable in `model.bin`, aliases resolved.
pub fn read(path: &Path) -> Result<HashMap<String, Variable>, AsrLoadError> {
    let fail = |message: String| AsrLoadError::File { path: path.display().to_string(), message };
    let bytes = std::fs::read(path).map_err(|e| fail(e.to_string()))?;
    let mut r = Reader { bytes: &bytes, at: 0 };
    let parse = |r: &mut Reader| -> Result<HashMap<String, Variable>, String> {
        let version = r.u32()?;
        if !(5..=6).contains(&version) {
            return Err(format!("CTranslate2 model format {version} is not supported (5 or 6 are)"));
        }
        let spec = r.name()?;
        if spec != "WhisperSpec" {
            return Err(format!("a {spec:?} model, not Whisper"));
        }
        let _revision = r.u32()?;
        let count = r.u32()?;
        let mut vars = HashMap::new();
        for _ in 0..count {
            let name = r.name()?;
            let rank = r.u8()? as usize;
            let dims = (0..rank).map(|_| r.u32().map(|d| d as usize)).collect::<Result<Vec<_>, _>>()?;
            let dtype = r.u8()?;
            let len = r.u32()? as usize;
            let data = r.take(len)?.to_vec();
            vars.insert(name, Variable { dims, dtype, data });
        }
        if r.at < r.bytes.len() {
            let aliases = r.u32()?;
            for _ in 0..aliases {
                let (alias, target) = (r.name()?, r.name()?);
                if let Some(v) = vars.get(&target).cloned() {
                    vars.insert(alias, v);
                }
            }
        }
        Ok(vars)
    };
    parse(&mut r).map_err(fail)
}

impl Variable {
    /// As an f32 tensor (from f32 or f16 data).
    pub fn tensor(&self, name: &str) -> Result<Tensor, AsrLoadError> {
        let dtype = match self.dtype {
            0 => DType::F32,
            4 => DType::F16,
            d => {
                return Err(AsrLoadError::Model(format!(
                    "{name}: dtype {d} is not supported (quantized models are not)"
                )));
            }
        };
        Ok(Tensor::from_raw_buffer(&self.data, dtype, &self.dims, &Device::Cpu)?.to_dtype(DType::F32)?)
    }

    /// A scalar integer (e.g. `num_heads`).
    pub fn int(&self) -> Option<i64> {
        match (self.dtype, self.data.as_slice()) {
            (1, [b]) => Some(*b as i8 as i64),
            (2, [a, b]) => Some(i16::from_le_bytes([*a, *b]) as i64),
            (3, [a, b, c, d]) => Some(i32::from_le_bytes([*a, *b, *c, *d]) as i64),
            _ => None,
        }
    }
}

/// The model's shape, read from the variables.
#[derive(Debug, Clone, PartialEq)]
pub struct Shape {
    pub layers_encoder: usize,
    pub layers_decoder: usize,
    pub heads_encoder: usize,
    pub heads_decoder: usize,
    pub d_model: usize,
    pub vocab: usize,
    pub mel_bins: usize,
    pub audio_ctx: usize,
    pub text_ctx: usize,
}

pub fn shape(vars: &HashMap<String, Variable>) -> Result<Shape, AsrLoadError> {
    let get = |n: &str| vars.get(n).ok_or_else(|| AsrLoadError::Model(format!("missing variable {n}")));
    let count = |prefix: &str| {
        (0..).take_while(|i| vars.contains_key(&format!("{prefix}/layer_{i}/ffn/linear_0/weight"))).count()
    };
    let embeddings = &get("decoder/embeddings/weight")?.dims;
    let conv1 = &get("encoder/conv1/weight")?.dims;
    let heads = |n: &str| get(n).ok().and_then(Variable::int).map(|h| h as usize);
    Ok(Shape {
        layers_encoder: count("encoder"),
        layers_decoder: count("decoder"),
        heads_encoder: heads("encoder/num_heads").unwrap_or(embeddings[1] / 64),
        heads_decoder: heads("decoder/num_heads").unwrap_or(embeddings[1] / 64),
        d_model: embeddings[1],
        vocab: embeddings[0],
        mel_bins: conv1[1],
        audio_ctx: get("encoder/position_encodings/encodings")?.dims[0],
        text_ctx: get("decoder/position_encodings/encodings")?.dims[0],
    })
}

/// The tensors under Hugging Face names (`model.encoder.layers.0.self_attn.q_proj.weight`, …).
pub fn to_hf(vars: &HashMap<String, Variable>, shape: &Shape) -> Result<HashMap<String, Tensor>, AsrLoadError> {
    let mut out = HashMap::new();
    let d = shape.d_model;
    let get = |n: &str| -> Result<Tensor, AsrLoadError> {
        vars.get(n).ok_or_else(|| AsrLoadError::Model(format!("missing variable {n}")))?.tensor(n)
    };
    let mut put = |name: String, t: Tensor| {
        out.insert(name, t);
    };
    let norm = |ct: &str| -> Result<(Tensor, Tensor), AsrLoadError> {
        Ok((get(&format!("{ct}/gamma"))?, get(&format!("{ct}/beta"))?))
    };
    let linear = |ct: &str| -> Result<(Tensor, Tensor), AsrLoadError> {
        Ok((get(&format!("{ct}/weight"))?, get(&format!("{ct}/bias"))?))
    };
    for (side, layers) in [("encoder", shape.layers_encoder), ("decoder", shape.layers_decoder)] {
        let hf_side = format!("model.{side}");
        for i in 0..layers {
            let ct = format!("{side}/layer_{i}");
            let hf = format!("{hf_side}.layers.{i}");
            // Self attention: Q, K, V stacked in linear_0.
            let (w, b) = linear(&format!("{ct}/self_attention/linear_0"))?;
            for (j, p) in ["q_proj", "k_proj", "v_proj"].iter().enumerate() {
                put(format!("{hf}.self_attn.{p}.weight"), w.narrow(0, j * d, d)?);
                put(format!("{hf}.self_attn.{p}.bias"), b.narrow(0, j * d, d)?);
            }
            let (w, b) = linear(&format!("{ct}/self_attention/linear_1"))?;
            put(format!("{hf}.self_attn.out_proj.weight"), w);
            put(format!("{hf}.self_attn.out_proj.bias"), b);
            let (g, b) = norm(&format!("{ct}/self_attention/layer_norm"))?;
            put(format!("{hf}.self_attn_layer_norm.weight"), g);
            put(format!("{hf}.self_attn_layer_norm.bias"), b);
            if side == "decoder" {
                // Cross attention: Q in linear_0, K and V stacked in linear_1.
                let (w, b) = linear(&format!("{ct}/attention/linear_0"))?;
                put(format!("{hf}.encoder_attn.q_proj.weight"), w);
                put(format!("{hf}.encoder_attn.q_proj.bias"), b);
                let (w, b) = linear(&format!("{ct}/attention/linear_1"))?;
                for (j, p) in ["k_proj", "v_proj"].iter().enumerate() {
                    put(format!("{hf}.encoder_attn.{p}.weight"), w.narrow(0, j * d, d)?);
                    put(format!("{hf}.encoder_attn.{p}.bias"), b.narrow(0, j * d, d)?);
                }
                let (w, b) = linear(&format!("{ct}/attention/linear_2"))?;
                put(format!("{hf}.encoder_attn.out_proj.weight"), w);
                put(format!("{hf}.encoder_attn.out_proj.bias"), b);
                let (g, b) = norm(&format!("{ct}/attention/layer_norm"))?;
                put(format!("{hf}.encoder_attn_layer_norm.weight"), g);
                put(format!("{hf}.encoder_attn_layer_norm.bias"), b);
            }
            for (j, p) in ["fc1", "fc2"].iter().enumerate() {
                let (w, b) = linear(&format!("{ct}/ffn/linear_{j}"))?;
                put(format!("{hf}.{p}.weight"), w);
                put(format!("{hf}.{p}.bias"), b);
            }
            let (g, b) = norm(&format!("{ct}/ffn/layer_norm"))?;
            put(format!("{hf}.final_layer_norm.weight"), g);
            put(format!("{hf}.final_layer_norm.bias"), b);
        }
        let (g, b) = norm(&format!("{side}/layer_norm"))?;
        put(format!("{hf_side}.layer_norm.weight"), g);
        put(format!("{hf_side}.layer_norm.bias"), b);
    }
    for conv in ["conv1", "conv2"] {
        let (w, b) = linear(&format!("encoder/{conv}"))?;
        put(format!("model.encoder.{conv}.weight"), w);
        put(format!("model.encoder.{conv}.bias"), b);
    }
    put("model.encoder.embed_positions.weight".into(), get("encoder/position_encodings/encodings")?);
    put("model.decoder.embed_tokens.weight".into(), get("decoder/embeddings/weight")?);
    put("model.decoder.embed_positions.weight".into(), get("decoder/position_encodings/encodings")?);
    Ok(out)
}
