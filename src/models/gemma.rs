//! Gemma, Gemma 2 and Gemma 3 (text).
//!
//! What sets them apart from the Llama family:
//! - RMSNorm scales by `1 + w` (weights stored as offsets from 1), computed in f32;
//! - embeddings are multiplied by `sqrt(hidden_size)`; the output head is tied by default;
//! - the MLP is GeGLU with the tanh GELU (`hidden_activation`, or `hidden_act` for Gemma 1);
//! - Gemma 2/3: norms after attention and around the MLP (`post_attention_layernorm`,
//!   `pre_feedforward_layernorm`, `post_feedforward_layernorm`), attention scaled by
//!   `query_pre_attn_scalar^-0.5`, alternating sliding-window and global layers (`layer_types`);
//! - Gemma 2: tanh soft-capping of attention scores and of the final logits;
//! - Gemma 3: per-head q/k norms, and a RoPE base per layer type (`rope_parameters` keyed by
//!   `full_attention` / `sliding_attention`, or `rope_theta` + `rope_local_base_freq`).
//!
//! Checkpoint names are the Llama ones plus the extra norms (and `q_norm`/`k_norm` for Gemma 3).

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
    Activation, Attention, AttentionConfig, Embedding, GatedMlp, Linear, RmsNorm, RotaryEmbedding,
};

/// Which Gemma.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// `gemma`
    V1,
    /// `gemma2`
    V2,
    /// `gemma3_text`
    V3,
}

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
    hidden_activation: Option<String>,
    #[serde(default)]
    max_position_embeddings: Option<usize>,
    #[serde(default)]
    rms_norm_eps: Option<f64>,
    #[serde(default)]
    rope_theta: Option<f64>,
    #[serde(default)]
    rope_local_base_freq: Option<f64>,
    #[serde(default)]
    rope_scaling: Option<serde_json::Value>,
    #[serde(default)]
    rope_parameters: Option<serde_json::Value>,
    #[serde(default)]
    tie_word_embeddings: Option<bool>,
    #[serde(default)]
    attention_bias: Option<bool>,
    #[serde(default)]
    query_pre_attn_scalar: Option<f64>,
    /// Absent: the version's default; `null`: off.
    #[serde(default)]
    attn_logit_softcapping: Option<serde_json::Value>,
    #[serde(default)]
    final_logit_softcapping: Option<serde_json::Value>,
    #[serde(default)]
    sliding_window: Option<usize>,
    #[serde(default)]
    sliding_window_pattern: Option<usize>,
    #[serde(default)]
    layer_types: Option<Vec<String>>,
    #[serde(default)]
    bos_token_id: Option<OneOrMany>,
    #[serde(default)]
    eos_token_id: Option<OneOrMany>,
}

/// The resolved runtime configuration.
#[derive(Debug, Clone)]
pub struct GemmaConfig {
    /// Gemma 1, 2 or 3.
    pub version: Version,
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Model width.
    pub hidden_size: usize,
    /// MLP width.
    pub intermediate_size: usize,
    /// Decoder layers.
    pub num_layers: usize,
    /// Attention options shared by all layers (window per layer below).
    pub attention: AttentionConfig,
    /// Each layer's sliding window.
    pub layer_windows: Vec<Option<usize>>,
    /// MLP activation.
    pub act: Activation,
    /// Context length.
    pub max_position_embeddings: usize,
    /// RMSNorm epsilon.
    pub rms_norm_eps: f64,
    /// RoPE for global layers.
    pub rope_global: RotaryEmbedding,
    /// RoPE for sliding-window layers (Gemma 3's local base; the global one otherwise).
    pub rope_local: RotaryEmbedding,
    /// Final logits become `cap·tanh(logits/cap)`.
    pub final_softcap: Option<f64>,
    /// Output head shares the embedding table.
    pub tie_word_embeddings: bool,
    /// `bos_token_id`.
    pub bos_token_id: Option<u32>,
    /// `eos_token_id`.
    pub eos_token_ids: Vec<u32>,
}

/// `None` when absent (use `default`), `Some(None)` when `null`.
fn optional_number(
    v: &Option<serde_json::Value>,
    default: Option<f64>,
) -> std::result::Result<Option<f64>, String> {
    match v {
        None => Ok(default),
        Some(serde_json::Value::Null) => Ok(None),
        Some(x) => x
            .as_f64()
            .filter(|c| c.is_finite() && *c > 0.0)
            .map(Some)
            .ok_or_else(|| format!("soft-capping value {x} must be a positive number or null")),
    }
}

impl GemmaConfig {
    /// Resolves `config.json` of a Gemma model.
    pub fn from_json(path: &Path, value: serde_json::Value, version: Version) -> Result<Self> {
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
        let n = raw.num_hidden_layers;
        let (heads, kv_heads, head_dim) = cfg::head_shape(
            raw.hidden_size,
            raw.num_attention_heads,
            raw.num_key_value_heads,
            Some(raw.head_dim.unwrap_or(256)),
            true,
        )
        .map_err(bad)?;
        let act_name = match version {
            // Gemma 1's published configs say "gelu" but mean the tanh approximation.
            Version::V1 => match raw.hidden_act.as_deref() {
                None | Some("gelu") => "gelu_pytorch_tanh",
                Some(a) => a,
            },
            _ => raw
                .hidden_activation
                .as_deref()
                .or(raw.hidden_act.as_deref())
                .unwrap_or("gelu_pytorch_tanh"),
        };
        let act = Activation::from_hf(act_name).map_err(|e| bad(e.to_string()))?;
        let layer_windows = match version {
            Version::V1 => vec![None; n],
            _ => {
                let window = Some(raw.sliding_window.unwrap_or(4096));
                let types = match &raw.layer_types {
                    Some(t) => t.clone(),
                    None => {
                        let every = match version {
                            Version::V2 => 2,
                            _ => raw.sliding_window_pattern.unwrap_or(6),
                        };
                        (0..n)
                            .map(|i| {
                                if (i + 1) % every.max(1) != 0 {
                                    "sliding_attention"
                                } else {
                                    "full_attention"
                                }
                                .to_string()
                            })
                            .collect()
                    }
                };
                cfg::windows_from_layer_types(&types, window, n).map_err(bad)?
            }
        };
        let max_position_embeddings = cfg::positive(
            "max_position_embeddings",
            raw.max_position_embeddings.unwrap_or(8192),
        )
        .map_err(bad)?;
        let rope_ctx = cfg::RopeContext {
            max_position_embeddings,
            original_max_position_embeddings: None,
        };
        // RoPE: one parameter set, or (Gemma 3) one per layer type.
        let params = raw.rope_parameters.as_ref().or(raw.rope_scaling.as_ref());
        let per_type = params.is_some_and(|p| {
            p.get("full_attention").is_some() || p.get("sliding_attention").is_some()
        });
        let (global_default, local_default) = match version {
            Version::V3 => (1_000_000.0, 10_000.0),
            _ => (10_000.0, 10_000.0),
        };
        let ((g_theta, g_scaling), (l_theta, l_scaling)) = if per_type {
            let p = params.expect("checked above");
            (
                cfg::rope(
                    p.get("full_attention"),
                    raw.rope_theta,
                    global_default,
                    rope_ctx,
                )
                .map_err(bad)?,
                cfg::rope(
                    p.get("sliding_attention"),
                    raw.rope_local_base_freq,
                    local_default,
                    rope_ctx,
                )
                .map_err(bad)?,
            )
        } else {
            let global =
                cfg::rope(params, raw.rope_theta, global_default, rope_ctx).map_err(bad)?;
            let local = match version {
                Version::V3 => (
                    raw.rope_local_base_freq.unwrap_or(local_default),
                    crate::nn::RopeScaling::Default,
                ),
                _ => global.clone(),
            };
            (global, local)
        };
        let scale = match (version, raw.query_pre_attn_scalar) {
            (Version::V1, _) => 1.0 / (head_dim as f64).sqrt(),
            (_, Some(q)) if q > 0.0 => q.powf(-0.5),
            (_, Some(q)) => {
                return Err(bad(format!("query_pre_attn_scalar ({q}) must be positive")))
            }
            (_, None) => 256f64.powf(-0.5),
        };
        let v2 = version == Version::V2;
        let attn_softcap =
            optional_number(&raw.attn_logit_softcapping, v2.then_some(50.0)).map_err(bad)?;
        let final_softcap =
            optional_number(&raw.final_logit_softcapping, v2.then_some(30.0)).map_err(bad)?;
        let attention_bias = raw.attention_bias.unwrap_or(false);
        Ok(Self {
            version,
            vocab_size: raw.vocab_size,
            hidden_size: raw.hidden_size,
            intermediate_size: raw.intermediate_size,
            num_layers: n,
            attention: AttentionConfig {
                qkv_bias: attention_bias,
                o_bias: attention_bias,
                scale,
                softcap: attn_softcap,
                ..AttentionConfig::new(raw.hidden_size, heads, kv_heads, head_dim)
            },
            layer_windows,
            act,
            max_position_embeddings,
            rms_norm_eps: cfg::epsilon("rms_norm_eps", raw.rms_norm_eps.unwrap_or(1e-6))
                .map_err(bad)?,
            rope_global: RotaryEmbedding::new(head_dim, g_theta, &g_scaling)?,
            rope_local: RotaryEmbedding::new(head_dim, l_theta, &l_scaling)?,
            final_softcap,
            tie_word_embeddings: raw.tie_word_embeddings.unwrap_or(true),
            bos_token_id: raw.bos_token_id.and_then(|b| b.to_vec().first().copied()),
            eos_token_ids: raw.eos_token_id.map(|e| e.to_vec()).unwrap_or_default(),
        })
    }
}

#[derive(Debug, Clone)]
struct DecoderLayer {
    input_layernorm: RmsNorm,
    self_attn: Attention,
    /// Gemma 1: the norm before the MLP; Gemma 2/3: the norm of the attention output.
    post_attention_layernorm: RmsNorm,
    /// Gemma 2/3 only.
    ffw_norms: Option<(RmsNorm, RmsNorm)>,
    mlp: GatedMlp,
    sliding: bool,
}

/// A loaded Gemma model.
#[derive(Debug, Clone)]
pub struct Gemma {
    info: LmInfo,
    cfg: GemmaConfig,
    embed_tokens: Embedding,
    layers: Vec<DecoderLayer>,
    norm: RmsNorm,
    lm_head: Linear,
    device: Device,
    /// When the host executor runs it.
    host: HostPlan,
}

impl Gemma {
    /// Loads every tensor of the model from `store`.
    pub fn load(cfg: GemmaConfig, store: &mut WeightStore, device: &Device) -> Result<Self> {
        let (h, eps) = (cfg.hidden_size, cfg.rms_norm_eps);
        let norm = |store: &mut WeightStore, name: &str| {
            RmsNorm::load_with_offset(store, name, h, eps, 1.0, device)
        };
        let embed_tokens = Embedding::load(
            store,
            "model.embed_tokens.weight",
            cfg.vocab_size,
            h,
            device,
        )?;
        let mut layers = Vec::with_capacity(cfg.num_layers);
        for i in 0..cfg.num_layers {
            let p = format!("model.layers.{i}");
            let attn_cfg = AttentionConfig {
                window: cfg.layer_windows[i],
                ..cfg.attention.clone()
            };
            let mut self_attn =
                Attention::load(store, &format!("{p}.self_attn"), attn_cfg, device)?;
            if cfg.version == Version::V3 {
                self_attn =
                    self_attn.with_qk_norm(store, &format!("{p}.self_attn"), eps, 1.0, device)?;
            }
            let ffw_norms = match cfg.version {
                Version::V1 => None,
                _ => Some((
                    norm(store, &format!("{p}.pre_feedforward_layernorm"))?,
                    norm(store, &format!("{p}.post_feedforward_layernorm"))?,
                )),
            };
            layers.push(DecoderLayer {
                input_layernorm: norm(store, &format!("{p}.input_layernorm"))?,
                self_attn,
                post_attention_layernorm: norm(store, &format!("{p}.post_attention_layernorm"))?,
                ffw_norms,
                mlp: GatedMlp::load(
                    store,
                    &format!("{p}.mlp"),
                    h,
                    cfg.intermediate_size,
                    false,
                    cfg.act,
                    device,
                )?,
                sliding: cfg.layer_windows[i].is_some(),
            });
        }
        let final_norm = norm(store, "model.norm")?;
        let lm_head = Linear::load_head(
            store,
            cfg.tie_word_embeddings,
            "model.embed_tokens.weight",
            h,
            cfg.vocab_size,
            device,
        )?;
        let info = LmInfo {
            architecture: match cfg.version {
                Version::V1 => "gemma",
                Version::V2 => "gemma2",
                Version::V3 => "gemma3_text",
            }
            .to_string(),
            vocab_size: cfg.vocab_size,
            max_context: cfg.max_position_embeddings,
            num_layers: cfg.num_layers,
            bos_token_id: cfg.bos_token_id,
            eos_token_ids: cfg.eos_token_ids.clone(),
            kv_precision: store.kv_precision(),
        };
        let all_host = embed_tokens.is_host()
            && lm_head.host().is_some()
            && layers
                .iter()
                .all(|l| l.self_attn.is_host() && l.mlp.is_host());
        Ok(Self {
            host: HostPlan::new(device, all_host, cfg.layer_windows.clone()),
            cfg,
            info,
            embed_tokens,
            layers,
            norm: final_norm,
            lm_head,
            device: device.clone(),
        })
    }
}

impl Forward for Gemma {
    fn forward<E: Exec>(&self, e: &mut E) -> Result<Tensor<2>> {
        let x = e.embed(&self.embed_tokens);
        let mut x = e.scale(x, (self.cfg.hidden_size as f32).sqrt());
        for (i, layer) in self.layers.iter().enumerate() {
            let rope = if layer.sliding {
                &self.cfg.rope_local
            } else {
                &self.cfg.rope_global
            };
            e.tap_hidden(&x);
            let h = e.rms_norm(&layer.input_layernorm, &x);
            let a = e.attention(i, &layer.self_attn, Some(rope), h)?;
            match &layer.ffw_norms {
                None => {
                    x = e.add(x, a);
                    let h = e.rms_norm(&layer.post_attention_layernorm, &x);
                    let m = e.gated_mlp(&layer.mlp, h);
                    x = e.add(x, m);
                }
                Some((pre, post)) => {
                    let a = e.rms_norm_in_place(&layer.post_attention_layernorm, a);
                    x = e.add(x, a);
                    let h = e.rms_norm(pre, &x);
                    let m = e.gated_mlp(&layer.mlp, h);
                    let m = e.rms_norm_in_place(post, m);
                    x = e.add(x, m);
                }
            }
        }
        e.logits(
            x,
            &self.norm,
            &self.lm_head,
            LogitsPost::softcap(self.cfg.final_softcap),
        )
    }

    fn host_plan(&self) -> &HostPlan {
        &self.host
    }

    fn group(&self) -> usize {
        self.cfg.attention.heads / self.cfg.attention.kv_heads
    }

    fn lm_info(&self) -> &LmInfo {
        &self.info
    }

    fn device(&self) -> &Device {
        &self.device
    }
}
