//! The Llama family: Llama 1/2/3/3.1/3.2, Mistral, Mixtral, Qwen2, Qwen3 and Phi-3.
//!
//! Config → decoder layer (attention + gated MLP, pre-RMSNorm, residuals) → model. What differs
//! between them lives in [`LlamaConfig::from_json`]: Qwen2 always has q/k/v biases; Llama and
//! Qwen3 may have `attention_bias`/`mlp_bias`; Qwen3 normalises each q/k head
//! (`q_norm`/`k_norm`); Mistral's `sliding_window` applies to every layer, Qwen2/Qwen3's to the
//! layers `layer_types` (or `use_sliding_window` + `max_window_layers`) marks; Phi-3 fuses
//! q/k/v into `qkv_proj` and gate/up into `gate_up_proj` (split into the Llama layers at load)
//! and uses LongRoPE; Mixtral replaces the MLP by a sparse mixture of experts
//! (`block_sparse_moe.gate`, `block_sparse_moe.experts.{e}.w1/w3/w2`: gate, up, down); each has
//! its own defaults.
//!
//! Checkpoint names (no renaming or permutation needed):
//!
//! | tensor | shape |
//! |---|---|
//! | `model.embed_tokens.weight` | `[vocab, hidden]` |
//! | `model.layers.{i}.input_layernorm.weight` | `[hidden]` |
//! | `model.layers.{i}.self_attn.{q,k,v,o}_proj.weight` (+ `.bias`) | `[out, in]` |
//! | `model.layers.{i}.self_attn.{q,k}_norm.weight` (Qwen3) | `[head_dim]` |
//! | `model.layers.{i}.post_attention_layernorm.weight` | `[hidden]` |
//! | `model.layers.{i}.mlp.{gate,up,down}_proj.weight` | `[out, in]` |
//! | `model.norm.weight` | `[hidden]` |
//! | `lm_head.weight` (absent when tied) | `[vocab, hidden]` |
//! | Phi-3: `model.layers.{i}.self_attn.qkv_proj.weight` | `[(heads + 2·kv_heads)·head_dim, hidden]`, rows q, k, v |
//! | Phi-3: `model.layers.{i}.mlp.gate_up_proj.weight` | `[2·intermediate, hidden]`, rows gate, up |

use std::path::Path;

use burn::tensor::Tensor;
use serde::Deserialize;

use crate::device::Device;
use crate::error::{Error, Result};
use crate::exec::{Exec, Forward, HostPlan, LogitsPost};
use crate::loading::config::OneOrMany;
use crate::loading::WeightStore;
use crate::models::config as cfg;
use crate::models::LmInfo;
use crate::nn::{
    Activation, Attention, AttentionConfig, Embedding, GatedMlp, Linear, MoeShape, RmsNorm,
    RopeScaling, RotaryEmbedding, SparseMoe,
};

/// [`Forward`]'s accessors for a [`Llama`] (`forward_meta!()`) or for a model wrapping one in
/// a field (`forward_meta!(field)`).
macro_rules! forward_meta {
    () => {
        fn host_plan(&self) -> &$crate::exec::HostPlan {
            &self.host
        }

        fn group(&self) -> usize {
            self.cfg.attention.heads / self.cfg.attention.kv_heads
        }

        fn lm_info(&self) -> &$crate::models::LmInfo {
            &self.info
        }

        fn device(&self) -> &$crate::device::Device {
            &self.device
        }
    };
    ($field:ident) => {
        fn host_plan(&self) -> &$crate::exec::HostPlan {
            &self.$field.host
        }

        fn group(&self) -> usize {
            self.$field.cfg.attention.heads / self.$field.cfg.attention.kv_heads
        }

        fn lm_info(&self) -> &$crate::models::LmInfo {
            &self.$field.info
        }

        fn device(&self) -> &$crate::device::Device {
            &self.$field.device
        }
    };
}
pub(crate) use forward_meta;

/// `config.json` as written by transformers (field names kept).
#[derive(Debug, Clone, Deserialize)]
struct RawConfig {
    vocab_size: usize,
    hidden_size: usize,
    intermediate_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    #[serde(default)]
    num_key_value_heads: Option<usize>,
    #[serde(default)]
    head_dim: Option<usize>,
    #[serde(default)]
    hidden_act: Option<String>,
    #[serde(default)]
    max_position_embeddings: Option<usize>,
    #[serde(default)]
    rms_norm_eps: Option<f64>,
    #[serde(default)]
    rope_theta: Option<f64>,
    #[serde(default)]
    rope_scaling: Option<serde_json::Value>,
    #[serde(default)]
    rope_parameters: Option<serde_json::Value>,
    #[serde(default)]
    tie_word_embeddings: Option<bool>,
    #[serde(default)]
    attention_bias: Option<bool>,
    #[serde(default)]
    mlp_bias: Option<bool>,
    #[serde(default)]
    bos_token_id: Option<OneOrMany>,
    #[serde(default)]
    eos_token_id: Option<OneOrMany>,
    #[serde(default)]
    sliding_window: Option<usize>,
    #[serde(default)]
    use_sliding_window: Option<bool>,
    #[serde(default)]
    max_window_layers: Option<usize>,
    #[serde(default)]
    layer_types: Option<Vec<String>>,
    #[serde(default)]
    original_max_position_embeddings: Option<usize>,
    #[serde(default)]
    partial_rotary_factor: Option<f64>,
    #[serde(default)]
    num_local_experts: Option<usize>,
    #[serde(default)]
    num_experts_per_tok: Option<usize>,
}

/// The resolved runtime configuration.
#[derive(Debug, Clone)]
pub struct LlamaConfig {
    /// `llama`, `mistral` or `qwen2`.
    pub model_type: String,
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Model width.
    pub hidden_size: usize,
    /// MLP width.
    pub intermediate_size: usize,
    /// Decoder layers.
    pub num_layers: usize,
    /// Attention settings shared by all layers (`window` unset: see `layer_windows`).
    pub attention: AttentionConfig,
    /// Per-head RMSNorm of queries and keys (Qwen3).
    pub qk_norm: bool,
    /// Fused `qkv_proj` / `gate_up_proj` weights (Phi-3).
    pub fused: bool,
    /// Sparse mixtures of experts in place of the MLP (Mixtral; Qwen3-MoE).
    pub moe: Option<MoeSpec>,
    /// Features of each head that rotate (`partial_rotary_factor`).
    pub rotary_dim: usize,
    /// Each layer's sliding window (`None`: full attention).
    pub layer_windows: Vec<Option<usize>>,
    /// MLP activation.
    pub act: Activation,
    /// Bias in the MLP projections.
    pub mlp_bias: bool,
    /// Context length.
    pub max_position_embeddings: usize,
    /// RMSNorm epsilon.
    pub rms_norm_eps: f64,
    /// RoPE base.
    pub rope_theta: f64,
    /// RoPE frequency scaling.
    pub rope_scaling: RopeScaling,
    /// Output projection shares the embedding table.
    pub tie_word_embeddings: bool,
    /// `bos_token_id` from config.json.
    pub bos_token_id: Option<u32>,
    /// `eos_token_id` from config.json.
    pub eos_token_ids: Vec<u32>,
}

impl LlamaConfig {
    /// Resolves a parsed `config.json` (at `path`, for messages) of a Llama-family model.
    pub fn from_json(path: &Path, value: serde_json::Value, model_type: &str) -> Result<Self> {
        let raw: RawConfig = cfg::parse(path, value)?;
        let bad = |m: String| Error::config(path, m);
        cfg::sizes(
            &[
                ("vocab_size", raw.vocab_size),
                ("hidden_size", raw.hidden_size),
                ("intermediate_size", raw.intermediate_size),
                ("num_hidden_layers", raw.num_hidden_layers),
            ],
            ("num_hidden_layers", raw.num_hidden_layers),
        )
        .map_err(bad)?;
        let (heads, kv_heads, head_dim) = cfg::head_shape(
            raw.hidden_size,
            raw.num_attention_heads,
            raw.num_key_value_heads,
            raw.head_dim,
            true,
        )
        .map_err(bad)?;
        let act = Activation::from_hf(raw.hidden_act.as_deref().unwrap_or("silu"))
            .map_err(|e| bad(e.to_string()))?;
        let (default_ctx, qkv_bias_forced) = match model_type {
            "mistral" => (131072, false),
            "qwen2" => (32768, true),
            "qwen3" => (32768, false),
            "phi3" => (4096, false),
            "mixtral" => (131072, false),
            _ => (2048, false),
        };
        let layer_windows = layer_windows(&raw, model_type).map_err(bad)?;
        let attention_bias = raw.attention_bias.unwrap_or(false);
        let rope_params = raw.rope_parameters.as_ref().or(raw.rope_scaling.as_ref());
        let max_position_embeddings = cfg::positive(
            "max_position_embeddings",
            raw.max_position_embeddings.unwrap_or(default_ctx),
        )
        .map_err(bad)?;
        let rope_ctx = cfg::RopeContext {
            max_position_embeddings,
            original_max_position_embeddings: raw.original_max_position_embeddings,
        };
        let (rope_theta, rope_scaling) =
            cfg::rope(rope_params, raw.rope_theta, 10000.0, rope_ctx).map_err(bad)?;
        let rotary_dim =
            cfg::rotary_dim(head_dim, rope_params, raw.partial_rotary_factor).map_err(bad)?;
        let default_eps = match model_type {
            "phi3" | "mixtral" => 1e-5,
            _ => 1e-6,
        };
        let moe = match model_type {
            "mixtral" => {
                let experts =
                    cfg::positive("num_local_experts", raw.num_local_experts.unwrap_or(8))
                        .map_err(bad)?;
                let top_k =
                    cfg::positive("num_experts_per_tok", raw.num_experts_per_tok.unwrap_or(2))
                        .map_err(bad)?;
                if top_k > experts {
                    return Err(bad(format!(
                        "num_experts_per_tok ({top_k}) exceeds num_local_experts ({experts})"
                    )));
                }
                Some(MoeSpec {
                    experts,
                    top_k,
                    intermediate: raw.intermediate_size,
                    names: ["w1", "w3", "w2"],
                    block: "block_sparse_moe",
                    renormalize: true,
                    sparse: vec![true; raw.num_hidden_layers],
                })
            }
            _ => None,
        };
        let rms_norm_eps =
            cfg::epsilon("rms_norm_eps", raw.rms_norm_eps.unwrap_or(default_eps)).map_err(bad)?;
        Ok(Self {
            model_type: model_type.to_string(),
            vocab_size: raw.vocab_size,
            hidden_size: raw.hidden_size,
            intermediate_size: raw.intermediate_size,
            num_layers: raw.num_hidden_layers,
            attention: AttentionConfig {
                qkv_bias: qkv_bias_forced || attention_bias,
                o_bias: attention_bias && !qkv_bias_forced,
                ..AttentionConfig::new(raw.hidden_size, heads, kv_heads, head_dim)
            },
            qk_norm: model_type == "qwen3",
            fused: model_type == "phi3",
            moe,
            rotary_dim,
            layer_windows,
            act,
            mlp_bias: raw.mlp_bias.unwrap_or(false),
            max_position_embeddings,
            rms_norm_eps,
            rope_theta,
            rope_scaling,
            tie_word_embeddings: raw.tie_word_embeddings.unwrap_or(false),
            bos_token_id: raw.bos_token_id.and_then(|b| b.to_vec().first().copied()),
            eos_token_ids: raw.eos_token_id.map(|e| e.to_vec()).unwrap_or_default(),
        })
    }
}

/// The experts of a model whose MLPs are sparse mixtures.
#[derive(Debug, Clone)]
pub struct MoeSpec {
    /// Experts per layer.
    pub experts: usize,
    /// Experts each token is routed to.
    pub top_k: usize,
    /// Each expert's MLP width.
    pub intermediate: usize,
    /// The layer's block under `model.layers.{i}` (`block_sparse_moe`, `mlp`).
    pub block: &'static str,
    /// Each expert's gate, up and down projections under `{block}.experts.{e}`.
    pub names: [&'static str; 3],
    /// Whether the chosen experts' weights are renormalised to sum to one.
    pub renormalize: bool,
    /// Which layers are mixtures (the others: a dense MLP of `intermediate_size`).
    pub sparse: Vec<bool>,
}

/// Which layers use a sliding window, and how wide.
fn layer_windows(
    raw: &RawConfig,
    model_type: &str,
) -> std::result::Result<Vec<Option<usize>>, String> {
    let n = raw.num_hidden_layers;
    let qwen = matches!(model_type, "qwen2" | "qwen3");
    let window = match raw.sliding_window {
        Some(0) => return Err("`sliding_window` must be positive".into()),
        // Qwen configs carry a window even when `use_sliding_window` is off.
        _ if qwen && raw.use_sliding_window != Some(true) => None,
        w => w,
    };
    let Some(w) = window else {
        return Ok(vec![None; n]);
    };
    if let Some(types) = &raw.layer_types {
        return cfg::windows_from_layer_types(types, Some(w), n);
    }
    Ok(if qwen {
        let from = raw.max_window_layers.unwrap_or(28);
        (0..n).map(|i| (i >= from).then_some(w)).collect()
    } else {
        vec![Some(w); n]
    })
}

/// The feed-forward part of a layer (one per layer, built once and never moved about: the
/// variants' size difference costs nothing).
#[derive(Debug, Clone)]
#[allow(clippy::large_enum_variant)]
enum Ffn {
    Dense(GatedMlp),
    Moe(SparseMoe),
}

/// One Llama layer (other families built from the same tensors reuse it: Granite, SmolLM3).
#[derive(Debug, Clone)]
pub struct DecoderLayer {
    input_layernorm: RmsNorm,
    self_attn: Attention,
    post_attention_layernorm: RmsNorm,
    mlp: Ffn,
}

impl DecoderLayer {
    /// `x + s·attn(norm(x))`, then `x + s·mlp(norm(x))`, with `s` = `branch_scale` (1 when
    /// `None`) and `rope` the rotary embedding of layer `i` (`None`: no positions, NoPE).
    pub(crate) fn forward<E: Exec>(
        &self,
        e: &mut E,
        i: usize,
        rope: Option<&RotaryEmbedding>,
        branch_scale: Option<f32>,
        x: E::X,
    ) -> Result<E::X> {
        let scaled = |e: &mut E, y| match branch_scale {
            Some(s) => e.scale(y, s),
            None => y,
        };
        let h = e.rms_norm(&self.input_layernorm, &x);
        let a = e.attention(i, &self.self_attn, rope, h)?;
        let a = scaled(e, a);
        let x = e.add(x, a);
        let h = e.rms_norm(&self.post_attention_layernorm, &x);
        let m = match &self.mlp {
            Ffn::Dense(m) => e.gated_mlp(m, h),
            Ffn::Moe(m) => e.moe(m, h)?,
        };
        let m = scaled(e, m);
        Ok(e.add(x, m))
    }
}

/// A loaded Llama-family model; with other layers `L`, a family that shares its embeddings,
/// rotary embedding, final norm and head (OLMo 2).
#[derive(Debug, Clone)]
pub struct Llama<L = DecoderLayer> {
    pub(crate) info: LmInfo,
    pub(crate) cfg: LlamaConfig,
    pub(crate) embed_tokens: Embedding,
    pub(crate) layers: Vec<L>,
    pub(crate) norm: RmsNorm,
    pub(crate) lm_head: Linear,
    pub(crate) rope: RotaryEmbedding,
    pub(crate) device: Device,
    /// When the host executor runs it.
    pub(crate) host: HostPlan,
}

impl DecoderLayer {
    /// Loads layer `p` (`model.layers.{i}`) of a Llama-family model.
    fn load(
        store: &mut WeightStore,
        p: &str,
        i: usize,
        cfg: &LlamaConfig,
        attn_cfg: AttentionConfig,
        device: &Device,
    ) -> Result<Self> {
        let (h, eps) = (cfg.hidden_size, cfg.rms_norm_eps);
        let (inter, bias) = (cfg.intermediate_size, cfg.mlp_bias);
        let (self_attn, mlp) = if cfg.fused {
            let (a, m) = load_fused(store, p, cfg, attn_cfg, device)?;
            (a, Ffn::Dense(m))
        } else {
            let attn = Attention::load(store, &format!("{p}.self_attn"), attn_cfg, device)?;
            let mlp = match cfg.moe.as_ref().filter(|m| m.sparse[i]) {
                Some(spec) => Ffn::Moe(SparseMoe::load(
                    store,
                    &format!("{p}.{}", spec.block),
                    spec.names,
                    MoeShape {
                        hidden: h,
                        intermediate: spec.intermediate,
                        experts: spec.experts,
                        top_k: spec.top_k,
                    },
                    spec.renormalize,
                    cfg.act,
                    device,
                )?),
                None => Ffn::Dense(GatedMlp::load(
                    store,
                    &format!("{p}.mlp"),
                    h,
                    inter,
                    bias,
                    cfg.act,
                    device,
                )?),
            };
            (attn, mlp)
        };
        let self_attn = if cfg.qk_norm {
            self_attn.with_qk_norm(store, &format!("{p}.self_attn"), eps, 0.0, device)?
        } else {
            self_attn
        };
        let norm = |store: &mut WeightStore, name: &str| {
            RmsNorm::load(store, &format!("{p}.{name}"), h, eps, device)
        };
        Ok(Self {
            input_layernorm: norm(store, "input_layernorm")?,
            self_attn,
            post_attention_layernorm: norm(store, "post_attention_layernorm")?,
            mlp,
        })
    }
}

impl Layer for DecoderLayer {
    fn is_host(&self) -> bool {
        self.self_attn.is_host()
            && match &self.mlp {
                Ffn::Dense(m) => m.is_host(),
                Ffn::Moe(m) => m.is_host(),
            }
    }
}

/// A layer of a model built on [`Llama`]'s embeddings, rotary embedding and head (kiln's own
/// layers implement it).
pub trait Layer {
    /// Whether every weight it reads is a host weight.
    fn is_host(&self) -> bool;
}

impl Llama {
    /// Loads every tensor of the model from `store` (strictly: see [`WeightStore::finish`]).
    pub fn load(cfg: LlamaConfig, store: &mut WeightStore, device: &Device) -> Result<Self> {
        Self::load_with(cfg, store, device, DecoderLayer::load)
    }
}

impl<L: Layer> Llama<L> {
    /// Loads the embeddings, final norm, head and rotary embedding of a model configured as
    /// `cfg`, and each layer through `layer(store, "model.layers.{i}", i, cfg, attention)`.
    pub(crate) fn load_with(
        cfg: LlamaConfig,
        store: &mut WeightStore,
        device: &Device,
        mut layer: impl FnMut(
            &mut WeightStore,
            &str,
            usize,
            &LlamaConfig,
            AttentionConfig,
            &Device,
        ) -> Result<L>,
    ) -> Result<Self> {
        let h = cfg.hidden_size;
        let embed_tokens = Embedding::load(
            store,
            "model.embed_tokens.weight",
            cfg.vocab_size,
            h,
            device,
        )?;
        let mut layers = Vec::with_capacity(cfg.num_layers);
        for i in 0..cfg.num_layers {
            let attn_cfg = AttentionConfig {
                window: cfg.layer_windows[i],
                ..cfg.attention.clone()
            };
            layers.push(layer(
                store,
                &format!("model.layers.{i}"),
                i,
                &cfg,
                attn_cfg,
                device,
            )?);
        }
        let norm = RmsNorm::load(store, "model.norm", h, cfg.rms_norm_eps, device)?;
        let lm_head = Linear::load_head(
            store,
            cfg.tie_word_embeddings,
            "model.embed_tokens.weight",
            h,
            cfg.vocab_size,
            device,
        )?;
        let rope = RotaryEmbedding::partial(
            cfg.attention.head_dim,
            cfg.rotary_dim,
            cfg.rope_theta,
            &cfg.rope_scaling,
        )?;
        let info = LmInfo {
            architecture: cfg.model_type.clone(),
            vocab_size: cfg.vocab_size,
            max_context: cfg.max_position_embeddings,
            num_layers: cfg.num_layers,
            bos_token_id: cfg.bos_token_id,
            eos_token_ids: cfg.eos_token_ids.clone(),
            kv_precision: store.kv_precision(),
        };
        let all_host =
            embed_tokens.is_host() && lm_head.host().is_some() && layers.iter().all(Layer::is_host);
        Ok(Self {
            host: HostPlan::new(device, all_host, cfg.layer_windows.clone()),
            cfg,
            info,
            embed_tokens,
            layers,
            norm,
            lm_head,
            rope,
            device: device.clone(),
        })
    }

    /// The resolved configuration.
    pub fn config(&self) -> &LlamaConfig {
        &self.cfg
    }
}

/// Phi-3's fused projections, split into the Llama layers.
fn load_fused(
    store: &mut WeightStore,
    p: &str,
    cfg: &LlamaConfig,
    attn_cfg: AttentionConfig,
    device: &Device,
) -> Result<(Attention, GatedMlp)> {
    let h = cfg.hidden_size;
    let (q, kv) = (
        attn_cfg.heads * attn_cfg.head_dim,
        attn_cfg.kv_heads * attn_cfg.head_dim,
    );
    let mut qkv = Linear::load_split(
        store,
        &format!("{p}.self_attn.qkv_proj"),
        h,
        &[q, kv, kv],
        device,
    )?
    .into_iter();
    let o = Linear::load(store, &format!("{p}.self_attn.o_proj"), q, h, false, device)?;
    let (Some(q_proj), Some(k_proj), Some(v_proj)) = (qkv.next(), qkv.next(), qkv.next()) else {
        unreachable!("three parts requested");
    };
    let inter = cfg.intermediate_size;
    let mut gate_up = Linear::load_split(
        store,
        &format!("{p}.mlp.gate_up_proj"),
        h,
        &[inter, inter],
        device,
    )?
    .into_iter();
    let down = Linear::load(
        store,
        &format!("{p}.mlp.down_proj"),
        inter,
        h,
        false,
        device,
    )?;
    let (Some(gate), Some(up)) = (gate_up.next(), gate_up.next()) else {
        unreachable!("two parts requested");
    };
    Ok((
        Attention::from_parts(q_proj, k_proj, v_proj, o, attn_cfg),
        GatedMlp::from_parts(gate, up, down, cfg.act),
    ))
}

impl Forward for Llama {
    fn forward<E: Exec>(&self, e: &mut E) -> Result<Tensor<2>> {
        let mut x = e.embed(&self.embed_tokens);
        for (i, layer) in self.layers.iter().enumerate() {
            e.tap_hidden(&x);
            x = layer.forward(e, i, Some(&self.rope), None, x)?;
        }
        e.logits(x, &self.norm, &self.lm_head, LogitsPost::default())
    }

    forward_meta!();
}
