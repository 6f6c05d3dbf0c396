//! IBM Granite (3.x dense): Llama's tensors and layers with four multipliers.
//!
//! - `embedding_multiplier`: the embeddings are scaled by it (the first hidden state is scaled);
//! - `attention_multiplier`: the attention's `q·k` scale, in place of `1/sqrt(head_dim)`;
//! - `residual_multiplier`: each layer adds `m · attn(…)` and `m · mlp(…)` to the residual;
//! - `logits_scaling`: the head's output is divided by it.
//!
//! Everything else (names, norms, RoPE, GQA, tied or separate head) is Llama's.

use burn::tensor::Tensor;
use serde::Deserialize;

use crate::device::Device;
use crate::error::Result;
use crate::exec::{Exec, Forward, LogitsPost};
use crate::loading::WeightStore;
use crate::models::config as cfg;
use crate::models::llama::{forward_meta, Llama, LlamaConfig};

/// Granite's fields beyond Llama's.
#[derive(Debug, Deserialize)]
struct Multipliers {
    #[serde(default = "one")]
    embedding_multiplier: f64,
    #[serde(default = "one")]
    attention_multiplier: f64,
    #[serde(default = "one")]
    residual_multiplier: f64,
    #[serde(default = "one")]
    logits_scaling: f64,
}

fn one() -> f64 {
    1.0
}

/// A loaded Granite model.
#[derive(Debug, Clone)]
pub struct Granite {
    llama: Llama,
    embedding: f32,
    residual: f32,
    logits_scaling: f64,
}

impl Granite {
    /// Reads the config (`json`) and loads the weights.
    pub fn load(
        json: cfg::ConfigJson<'_>,
        store: &mut WeightStore,
        device: &Device,
    ) -> Result<Self> {
        let m: Multipliers = json.parse()?;
        for (name, v) in [
            ("embedding_multiplier", m.embedding_multiplier),
            ("attention_multiplier", m.attention_multiplier),
            ("residual_multiplier", m.residual_multiplier),
            ("logits_scaling", m.logits_scaling),
        ] {
            if !(v.is_finite() && v > 0.0) {
                return Err(json.error(format!("`{name}` must be positive, got {v}")));
            }
        }
        let mut cfg = LlamaConfig::from_json(json.path, json.value, "granite")?;
        cfg.attention.scale = m.attention_multiplier;
        Ok(Self {
            llama: Llama::load(cfg, store, device)?,
            embedding: m.embedding_multiplier as f32,
            residual: m.residual_multiplier as f32,
            logits_scaling: m.logits_scaling,
        })
    }
}

impl Forward for Granite {
    fn forward<E: Exec>(&self, e: &mut E) -> Result<Tensor<2>> {
        let m = &self.llama;
        let x = e.embed(&m.embed_tokens);
        let mut x = e.scale(x, self.embedding);
        for (i, layer) in m.layers.iter().enumerate() {
            e.tap_hidden(&x);
            x = layer.forward(e, i, Some(&m.rope), Some(self.residual), x)?;
        }
        let post = LogitsPost {
            divisor: Some(self.logits_scaling),
            softcap: None,
        };
        e.logits(x, &m.norm, &m.lm_head, post)
    }

    forward_meta!(llama);
}
