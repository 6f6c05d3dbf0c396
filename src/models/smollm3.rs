//! SmolLM3: Llama's tensors and layers, with rotary positions only on some layers (NoPE).
//!
//! - `no_rope_layers[i]` is 1 where layer `i` rotates its queries and keys and 0 where it uses no
//!   positions at all; absent, every `no_rope_layer_interval`-th layer (default 4) is a NoPE
//!   layer.
//! - A sliding window (`use_sliding_window` and `sliding_window`) applies to the layers
//!   `layer_types` marks `sliding_attention` (absent: the NoPE layers), to none otherwise.
//! - The head is tied to the embeddings unless the config says otherwise; the context defaults
//!   to 32768.

use burn::tensor::Tensor;
use serde::Deserialize;

use crate::device::Device;
use crate::error::Result;
use crate::exec::{Exec, Forward, LogitsPost};
use crate::loading::WeightStore;
use crate::models::config as cfg;
use crate::models::llama::{forward_meta, Llama, LlamaConfig};

/// SmolLM3's fields beyond Llama's (and the defaults that differ).
#[derive(Debug, Deserialize)]
struct Extra {
    num_hidden_layers: usize,
    #[serde(default)]
    no_rope_layers: Option<Vec<u8>>,
    #[serde(default)]
    no_rope_layer_interval: Option<usize>,
    #[serde(default)]
    use_sliding_window: Option<bool>,
    #[serde(default)]
    sliding_window: Option<usize>,
    #[serde(default)]
    layer_types: Option<Vec<String>>,
    #[serde(default)]
    tie_word_embeddings: Option<bool>,
    #[serde(default)]
    max_position_embeddings: Option<usize>,
}

/// A loaded SmolLM3 model.
#[derive(Debug, Clone)]
pub struct SmolLm3 {
    llama: Llama,
    /// Whether each layer rotates (RoPE) or not (NoPE).
    rope_layers: Vec<bool>,
}

impl SmolLm3 {
    /// Reads the config (`json`) and loads the weights.
    pub fn load(
        json: cfg::ConfigJson<'_>,
        store: &mut WeightStore,
        device: &Device,
    ) -> Result<Self> {
        let extra: Extra = json.parse()?;
        let bad = |m: String| json.error(m);
        let n = extra.num_hidden_layers;
        let rope_layers: Vec<bool> = match &extra.no_rope_layers {
            Some(flags) if flags.len() != n => {
                return Err(bad(format!(
                    "`no_rope_layers` has {} entries for {n} layers",
                    flags.len()
                )))
            }
            Some(flags) => flags.iter().map(|&f| f != 0).collect(),
            None => {
                let every = cfg::positive(
                    "no_rope_layer_interval",
                    extra.no_rope_layer_interval.unwrap_or(4),
                )
                .map_err(bad)?;
                (0..n).map(|i| (i + 1) % every != 0).collect()
            }
        };
        let window = match (extra.use_sliding_window, extra.sliding_window) {
            (Some(true), Some(0)) => return Err(bad("`sliding_window` must be positive".into())),
            (Some(true), Some(w)) => Some(w),
            _ => None,
        };
        let windows = match (&extra.layer_types, window) {
            (Some(types), Some(_)) => {
                cfg::windows_from_layer_types(types, window, n).map_err(bad)?
            }
            (None, Some(w)) => rope_layers.iter().map(|&r| (!r).then_some(w)).collect(),
            (_, None) => vec![None; n],
        };
        let mut config = LlamaConfig::from_json(json.path, json.value, "smollm3")?;
        config.layer_windows = windows;
        config.tie_word_embeddings = extra.tie_word_embeddings.unwrap_or(true);
        if extra.max_position_embeddings.is_none() {
            config.max_position_embeddings = 32768;
        }
        Ok(Self {
            llama: Llama::load(config, store, device)?,
            rope_layers,
        })
    }
}

impl Forward for SmolLm3 {
    fn forward<E: Exec>(&self, e: &mut E) -> Result<Tensor<2>> {
        let m = &self.llama;
        let mut x = e.embed(&m.embed_tokens);
        for (i, layer) in m.layers.iter().enumerate() {
            e.tap_hidden(&x);
            let rope = self.rope_layers[i].then_some(&m.rope);
            x = layer.forward(e, i, rope, None, x)?;
        }
        e.logits(x, &m.norm, &m.lm_head, LogitsPost::default())
    }

    forward_meta!(llama);
}
