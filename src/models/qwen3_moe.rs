//! Qwen3-MoE: Qwen3's attention (per-head q/k RMSNorm) with sparse mixtures of experts in place
//! of the MLPs.
//!
//! - Each mixture: a router `mlp.gate` (`[num_experts, hidden]`) and experts
//!   `mlp.experts.{e}.{gate,up,down}_proj` of width `moe_intermediate_size`; a token's weights
//!   are the softmax over all experts of its `num_experts_per_tok` best, renormalised to sum to
//!   one only when `norm_topk_prob`.
//! - Layer `i` is a mixture when `(i + 1)` is a multiple of `decoder_sparse_step` and `i` is not
//!   in `mlp_only_layers`; the others have a dense `mlp.{gate,up,down}_proj` of
//!   `intermediate_size`.
//! - `sliding_window` applies to every layer when `use_sliding_window`, to none otherwise.
//!
//! Everything else is Qwen3's, loaded by the Llama family's code.

use serde::Deserialize;

use crate::device::Device;
use crate::error::Result;
use crate::loading::WeightStore;
use crate::models::config as cfg;
use crate::models::llama::{Llama, LlamaConfig, MoeSpec};

/// Qwen3-MoE's fields beyond Qwen3's.
#[derive(Debug, Deserialize)]
struct Extra {
    num_hidden_layers: usize,
    /// transformers 5 writes it as `num_local_experts`.
    #[serde(default, alias = "num_local_experts")]
    num_experts: Option<usize>,
    #[serde(default)]
    num_experts_per_tok: Option<usize>,
    #[serde(default)]
    moe_intermediate_size: Option<usize>,
    #[serde(default)]
    norm_topk_prob: Option<bool>,
    #[serde(default)]
    decoder_sparse_step: Option<usize>,
    #[serde(default)]
    mlp_only_layers: Option<Vec<usize>>,
    #[serde(default)]
    use_sliding_window: Option<bool>,
    #[serde(default)]
    sliding_window: Option<usize>,
}

/// Reads the config (`json`) and loads the weights: a Llama-family model.
pub fn load(json: cfg::ConfigJson<'_>, store: &mut WeightStore, device: &Device) -> Result<Llama> {
    let extra: Extra = json.parse()?;
    let bad = |m: String| json.error(m);
    let n = extra.num_hidden_layers;
    let experts = cfg::positive("num_experts", extra.num_experts.unwrap_or(128)).map_err(bad)?;
    let top_k = cfg::positive(
        "num_experts_per_tok",
        extra.num_experts_per_tok.unwrap_or(8),
    )
    .map_err(bad)?;
    if top_k > experts {
        return Err(bad(format!(
            "num_experts_per_tok ({top_k}) exceeds num_experts ({experts})"
        )));
    }
    let intermediate = cfg::positive(
        "moe_intermediate_size",
        extra.moe_intermediate_size.unwrap_or(768),
    )
    .map_err(bad)?;
    let step = cfg::positive(
        "decoder_sparse_step",
        extra.decoder_sparse_step.unwrap_or(1),
    )
    .map_err(bad)?;
    let dense = extra.mlp_only_layers.unwrap_or_default();
    let window = match (extra.use_sliding_window, extra.sliding_window) {
        (Some(true), Some(0)) => return Err(bad("`sliding_window` must be positive".into())),
        // transformers' default window when the config omits it.
        (Some(true), w) => Some(w.unwrap_or(4096)),
        _ => None,
    };
    // Qwen3's parsing (q/k norms, defaults), then the mixtures and windows.
    let mut config = LlamaConfig::from_json(json.path, json.value, "qwen3")?;
    config.model_type = "qwen3_moe".into();
    config.layer_windows = vec![window; n];
    config.moe = Some(MoeSpec {
        experts,
        top_k,
        intermediate,
        block: "mlp",
        names: ["gate_proj", "up_proj", "down_proj"],
        renormalize: extra.norm_topk_prob.unwrap_or(false),
        sparse: (0..n)
            .map(|i| !dense.contains(&i) && (i + 1) % step == 0)
            .collect(),
    });
    Llama::load(config, store, device)
}
