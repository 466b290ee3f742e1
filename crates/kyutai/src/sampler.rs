//! Token choice from a batch of logits: greedy (tests, reproducible output)
//! or top-k with a temperature (speech; Kyutai's defaults are k 250, t 0.6).

use moshi::candle::{DType, Result, Tensor};

#[derive(Debug, Clone)]
pub struct Sampler {
    /// `None`: greedy.
    top_k: Option<(usize, f32)>,
    rng: crate::rng::Rng,
}

impl Sampler {
    pub fn greedy() -> Self {
        Self { top_k: None, rng: crate::rng::Rng::new(1) }
    }

    pub fn top_k(k: usize, temperature: f32, seed: u64) -> Self {
        Self { top_k: Some((k.max(1), temperature.max(1e-3))), rng: crate::rng::Rng::new(seed) }
    }

    /// One token per row of `logits` (rows × vocab).
    pub fn sample(&mut self, logits: &Tensor) -> Result<Vec<u32>> {
        let Some((k, temperature)) = self.top_k else {
            return logits.argmax(moshi::candle::D::Minus1)?.to_dtype(DType::U32)?.to_vec1();
        };
        let rows: Vec<Vec<f32>> = logits.to_dtype(DType::F32)?.to_vec2()?;
        let mut picked = Vec::with_capacity(rows.len());
        for row in rows {
            let mut order: Vec<usize> = (0..row.len()).collect();
            let k = k.min(row.len());
            order.select_nth_unstable_by(k - 1, |&a, &b| row[b].total_cmp(&row[a]));
            order.truncate(k);
            let top = order.iter().map(|&i| row[i]).fold(f32::NEG_INFINITY, f32::max);
            let weights: Vec<f32> = order.iter().map(|&i| ((row[i] - top) / temperature).exp()).collect();
            let mut target = self.rng.uniform() as f32 * weights.iter().sum::<f32>();
            let mut choice = order[k - 1];
            for (&i, &w) in order.iter().zip(&weights) {
                if target < w {
                    choice = i;
                    break;
                }
                target -= w;
            }
            picked.push(choice as u32);
        }
        Ok(picked)
    }
}
