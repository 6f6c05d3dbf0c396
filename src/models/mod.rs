//! One file per architecture family; the dispatch from `config.json` to the right one.

pub mod bert;
pub mod config;
pub mod gemma;
pub mod gpt2;
pub mod granite;
pub mod llama;
pub mod olmo2;
pub mod qwen3_moe;
pub mod smollm3;

use std::path::Path;

use burn::tensor::Tensor;

use crate::device::Device;
use crate::error::{Error, Result};
use crate::loading::WeightStore;
use crate::nn::KvCache;

/// Which positions a forward pass returns logits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogitsFor {
    /// Only the last position (prefill before sampling, decode).
    Last,
    /// Every position (scoring, perplexity).
    All,
}

/// The tokens of one forward pass: `rows` sequences of `seq` new tokens each, row-major, left
/// padded (row `r`'s cache slots below `pads[r]` are padding; see
/// [`AttentionContext`](crate::nn::AttentionContext)).
#[derive(Debug, Clone, Copy)]
pub struct Input<'a> {
    /// `rows·seq` token ids (padding slots hold any valid id).
    pub ids: &'a [u32],
    /// Leading padding slots of each row, counted from the start of the cache.
    pub pads: &'a [usize],
}

impl<'a> Input<'a> {
    /// One unpadded sequence.
    pub fn single(ids: &'a [u32]) -> Self {
        Self { ids, pads: &[0] }
    }

    /// Sequences in the pass.
    pub fn rows(&self) -> usize {
        self.pads.len()
    }

    /// New tokens per row.
    pub fn seq(&self) -> usize {
        self.ids.len() / self.rows().max(1)
    }
}

/// A decoder-only language model: token ids in, next-token logits out.
pub trait CausalLm: Send + Sync + std::fmt::Debug {
    /// Runs `input` (the slots after those already in `cache`) and appends it to `cache`.
    ///
    /// # Shapes
    /// returns `[rows·n, vocab]` with `n = 1` for [`LogitsFor::Last`] and `seq` for
    /// [`LogitsFor::All`]
    fn forward(
        &self,
        input: Input<'_>,
        cache: &mut KvCache,
        which: LogitsFor,
    ) -> Result<Tensor<2>> {
        self.forward_tapped(input, cache, which, None)
    }

    /// [`CausalLm::forward`] that also records what `taps` asks for (each layer's input and
    /// the final normed hidden states, each layer's attention weights). With `None` it is the
    /// plain forward pass: nothing is captured or computed beyond it.
    fn forward_tapped(
        &self,
        input: Input<'_>,
        cache: &mut KvCache,
        which: LogitsFor,
        taps: Option<&mut Taps>,
    ) -> Result<Tensor<2>>;

    /// What the model reports about itself.
    fn info(&self) -> &LmInfo;

    /// An empty cache sized for this model.
    fn new_cache(&self) -> KvCache {
        let info = self.info();
        KvCache::with_precision(info.num_layers, info.max_context, info.kv_precision)
    }
}

/// What a tapped forward pass records ([`CausalLm::forward_tapped`]), in transformers' terms:
/// `output_hidden_states` and `output_attentions`.
#[derive(Debug, Default)]
pub struct Taps {
    /// Record hidden states: the input of every layer (the first is the scaled embeddings),
    /// then the last layer's output after the final norm: `layers + 1` tensors
    /// `[rows, seq, hidden]`.
    pub hidden_states: bool,
    /// Record every layer's attention weights (softmax probabilities, after masking):
    /// `[rows, heads, seq, keys]`, `keys` the positions the pass attends to.
    pub attentions: bool,
    pub(crate) hidden: Vec<Tensor<3>>,
    pub(crate) attn: Vec<Tensor<4>>,
}

impl Taps {
    /// Records `x` as the next hidden state when asked to.
    pub(crate) fn hidden(taps: &mut Option<&mut Taps>, x: &Tensor<3>) {
        if let Some(t) = taps.as_deref_mut().filter(|t| t.hidden_states) {
            t.hidden.push(x.clone());
        }
    }
}

/// The facts every causal LM reports, resolved from its config.
#[derive(Debug, Clone, PartialEq)]
pub struct LmInfo {
    /// The architecture's name, e.g. `llama`.
    pub architecture: String,
    /// Vocabulary size (rows of the output projection).
    pub vocab_size: usize,
    /// Longest sequence the model supports (`max_position_embeddings`).
    pub max_context: usize,
    /// Layers (one KV cache each).
    pub num_layers: usize,
    /// `bos_token_id` from config.json.
    pub bos_token_id: Option<u32>,
    /// `eos_token_id` from config.json.
    pub eos_token_ids: Vec<u32>,
    /// How its caches keep keys and values on the host executor.
    pub kv_precision: crate::nn::KvPrecision,
}

/// The common tail of a decoder: keep the last position if asked, final norm, output head.
///
/// # Shapes
/// `x: [rows, seq, hidden]` → `[rows·n, vocab]`
pub(crate) fn head_logits(
    x: Tensor<3>,
    which: LogitsFor,
    norm: impl FnOnce(Tensor<3>) -> Tensor<3>,
    head: &crate::nn::Linear,
) -> Tensor<2> {
    let [rows, seq, hidden] = x.dims();
    let x = if which == LogitsFor::Last && seq > 1 {
        x.slice([0..rows, seq - 1..seq, 0..hidden])
    } else {
        x
    };
    let n = rows * x.dims()[1];
    let vocab = head.d_out();
    head.forward(norm(x)).reshape([n, vocab])
}

/// The `model_type` values kiln implements.
pub const SUPPORTED: &[&str] = &[
    "llama",
    "mistral",
    "mixtral",
    "qwen2",
    "qwen3",
    "phi3",
    "gemma",
    "gemma2",
    "gemma3_text",
    "gpt2",
    "granite",
    "smollm3",
    "qwen3_moe",
    "olmo2",
];

/// Reads `config.json` in `dir`, picks the architecture and loads its weights.
pub fn load(dir: &Path, store: &mut WeightStore, device: &Device) -> Result<Box<dyn CausalLm>> {
    let path = dir.join("config.json");
    let value: serde_json::Value = crate::loading::read_json(&path)?;
    let model_type = value
        .get("model_type")
        .and_then(|v| v.as_str())
        .map(str::to_string)
        .or_else(|| {
            value
                .get("architectures")
                .and_then(|a| a.get(0))
                .and_then(|a| a.as_str())
                .map(|a| a.trim_end_matches("ForCausalLM").to_ascii_lowercase())
        })
        .ok_or_else(|| Error::config(&path, "neither `model_type` nor `architectures` is set"))?;
    let json = || config::ConfigJson {
        path: &path,
        value: value.clone(),
    };
    match model_type.as_str() {
        "llama" | "mistral" | "mixtral" | "qwen2" | "qwen3" | "phi3" => {
            let cfg = llama::LlamaConfig::from_json(&path, value, &model_type)?;
            Ok(Box::new(llama::Llama::load(cfg, store, device)?))
        }
        "gemma" | "gemma2" | "gemma3_text" => {
            let version = match model_type.as_str() {
                "gemma" => gemma::Version::V1,
                "gemma2" => gemma::Version::V2,
                _ => gemma::Version::V3,
            };
            let cfg = gemma::GemmaConfig::from_json(&path, value, version)?;
            Ok(Box::new(gemma::Gemma::load(cfg, store, device)?))
        }
        "olmo2" => Ok(Box::new(olmo2::load(json(), store, device)?)),
        "qwen3_moe" => Ok(Box::new(qwen3_moe::load(json(), store, device)?)),
        "granite" => Ok(Box::new(granite::Granite::load(json(), store, device)?)),
        "smollm3" => Ok(Box::new(smollm3::SmolLm3::load(json(), store, device)?)),
        "gpt2" => {
            let cfg = gpt2::Gpt2Config::from_json(&path, value)?;
            Ok(Box::new(gpt2::Gpt2::load(cfg, store, device)?))
        }
        other => Err(Error::UnsupportedArchitecture {
            path,
            name: other.to_string(),
            supported: format!(
                "{}; BERT-family encoders load with kiln::Encoder",
                SUPPORTED.join(", ")
            ),
        }),
    }
}
