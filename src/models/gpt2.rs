//! GPT-2: learned absolute positions, LayerNorm, fused `c_attn`, `Conv1D` weights stored
//! transposed (`[in, out]`), `gelu_new`, output head tied to the token embeddings.
//!
//! | tensor (`transformer.` prefix optional) | shape |
//! |---|---|
//! | `wte.weight` / `wpe.weight` | `[vocab, n_embd]` / `[n_positions, n_embd]` |
//! | `h.{i}.ln_1`, `h.{i}.ln_2`, `ln_f` (`.weight`, `.bias`) | `[n_embd]` |
//! | `h.{i}.attn.c_attn.weight` / `.bias` | `[n_embd, 3·n_embd]` (columns q, k, v) / `[3·n_embd]` |
//! | `h.{i}.attn.c_proj.weight` / `.bias` | `[n_embd, n_embd]` / `[n_embd]` |
//! | `h.{i}.mlp.c_fc.weight` / `.bias` | `[n_embd, n_inner]` / `[n_inner]` |
//! | `h.{i}.mlp.c_proj.weight` / `.bias` | `[n_inner, n_embd]` / `[n_embd]` |
//!
//! Older checkpoints also store the causal-mask buffers `h.{i}.attn.bias` / `.masked_bias`;
//! they are skipped.

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
use crate::nn::{Activation, Attention, AttentionConfig, Embedding, LayerNorm, Linear, Mlp};

#[derive(Debug, Clone, Deserialize)]
struct RawConfig {
    vocab_size: usize,
    n_embd: usize,
    n_layer: usize,
    n_head: usize,
    #[serde(default)]
    n_positions: Option<usize>,
    #[serde(default)]
    n_inner: Option<usize>,
    #[serde(default)]
    activation_function: Option<String>,
    #[serde(default)]
    layer_norm_epsilon: Option<f64>,
    #[serde(default)]
    scale_attn_weights: Option<bool>,
    #[serde(default)]
    scale_attn_by_inverse_layer_idx: Option<bool>,
    #[serde(default)]
    tie_word_embeddings: Option<bool>,
    #[serde(default)]
    bos_token_id: Option<OneOrMany>,
    #[serde(default)]
    eos_token_id: Option<OneOrMany>,
}

/// The resolved runtime configuration.
#[derive(Debug, Clone)]
pub struct Gpt2Config {
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Model width.
    pub n_embd: usize,
    /// Layers.
    pub n_layer: usize,
    /// Heads.
    pub n_head: usize,
    /// Context length (learned positions).
    pub n_positions: usize,
    /// MLP width.
    pub n_inner: usize,
    /// MLP activation.
    pub act: Activation,
    /// LayerNorm epsilon.
    pub eps: f64,
    /// Attention score scale per layer (`scale_attn_weights`, `scale_attn_by_inverse_layer_idx`).
    pub scales: Vec<f64>,
    /// Output head shares the token embeddings.
    pub tie_word_embeddings: bool,
    /// `bos_token_id`.
    pub bos_token_id: Option<u32>,
    /// `eos_token_id`.
    pub eos_token_ids: Vec<u32>,
}

impl Gpt2Config {
    /// Resolves `config.json` of a GPT-2 model.
    pub fn from_json(path: &Path, value: serde_json::Value) -> Result<Self> {
        let raw: RawConfig = cfg::parse(path, value)?;
        let bad = |m: String| Error::config(path, m);
        cfg::sizes(
            &[
                ("vocab_size", raw.vocab_size),
                ("n_embd", raw.n_embd),
                ("n_layer", raw.n_layer),
            ],
            ("n_layer", raw.n_layer),
        )
        .map_err(bad)?;
        let (n_head, _, head_dim) =
            cfg::head_shape(raw.n_embd, raw.n_head, None, None, false).map_err(bad)?;
        let act = Activation::from_hf(raw.activation_function.as_deref().unwrap_or("gelu_new"))
            .map_err(|e| bad(e.to_string()))?;
        let base = if raw.scale_attn_weights.unwrap_or(true) {
            1.0 / (head_dim as f64).sqrt()
        } else {
            1.0
        };
        let by_layer = raw.scale_attn_by_inverse_layer_idx.unwrap_or(false);
        Ok(Self {
            vocab_size: raw.vocab_size,
            n_embd: raw.n_embd,
            n_layer: raw.n_layer,
            n_head,
            n_positions: cfg::positive("n_positions", raw.n_positions.unwrap_or(1024))
                .map_err(bad)?,
            n_inner: cfg::positive("n_inner", raw.n_inner.unwrap_or(4 * raw.n_embd))
                .map_err(bad)?,
            act,
            eps: cfg::epsilon("layer_norm_epsilon", raw.layer_norm_epsilon.unwrap_or(1e-5))
                .map_err(bad)?,
            scales: (0..raw.n_layer)
                .map(|i| {
                    if by_layer {
                        base / (i + 1) as f64
                    } else {
                        base
                    }
                })
                .collect(),
            tie_word_embeddings: raw.tie_word_embeddings.unwrap_or(true),
            bos_token_id: raw.bos_token_id.and_then(|b| b.to_vec().first().copied()),
            eos_token_ids: raw.eos_token_id.map(|e| e.to_vec()).unwrap_or_default(),
        })
    }
}

#[derive(Debug, Clone)]
struct Block {
    ln_1: LayerNorm,
    attn: Attention,
    ln_2: LayerNorm,
    mlp: Mlp,
}

/// A loaded GPT-2.
#[derive(Debug, Clone)]
pub struct Gpt2 {
    info: LmInfo,
    cfg: Gpt2Config,
    wte: Embedding,
    wpe: Embedding,
    h: Vec<Block>,
    ln_f: LayerNorm,
    lm_head: Linear,
    device: Device,
    /// When the host executor runs it.
    host: HostPlan,
}

impl Gpt2 {
    /// Loads every tensor of the model from `store`.
    pub fn load(cfg: Gpt2Config, store: &mut WeightStore, device: &Device) -> Result<Self> {
        let pre = if store.contains("transformer.wte.weight") {
            "transformer."
        } else {
            ""
        };
        let (d, inner) = (cfg.n_embd, cfg.n_inner);
        let wte = Embedding::load(
            store,
            &format!("{pre}wte.weight"),
            cfg.vocab_size,
            d,
            device,
        )?;
        let wpe = Embedding::load(
            store,
            &format!("{pre}wpe.weight"),
            cfg.n_positions,
            d,
            device,
        )?;
        let mut h = Vec::with_capacity(cfg.n_layer);
        for i in 0..cfg.n_layer {
            let p = format!("{pre}h.{i}");
            for buffer in ["attn.bias", "attn.masked_bias"] {
                store.skip(&format!("{p}.{buffer}"));
            }
            let mut qkv = Linear::load_conv1d_split(
                store,
                &format!("{p}.attn.c_attn"),
                d,
                &[d, d, d],
                device,
            )?
            .into_iter();
            let proj = conv1d(store, &format!("{p}.attn.c_proj"), d, d, device)?;
            let (Some(q), Some(k), Some(v)) = (qkv.next(), qkv.next(), qkv.next()) else {
                unreachable!("three parts requested");
            };
            let attn_cfg = AttentionConfig {
                qkv_bias: true,
                o_bias: true,
                scale: cfg.scales[i],
                ..AttentionConfig::new(d, cfg.n_head, cfg.n_head, d / cfg.n_head)
            };
            h.push(Block {
                ln_1: LayerNorm::load(store, &format!("{p}.ln_1"), d, cfg.eps, device)?,
                attn: Attention::from_parts(q, k, v, proj, attn_cfg),
                ln_2: LayerNorm::load(store, &format!("{p}.ln_2"), d, cfg.eps, device)?,
                mlp: Mlp::from_parts(
                    conv1d(store, &format!("{p}.mlp.c_fc"), d, inner, device)?,
                    conv1d(store, &format!("{p}.mlp.c_proj"), inner, d, device)?,
                    cfg.act,
                ),
            });
        }
        let ln_f = LayerNorm::load(store, &format!("{pre}ln_f"), d, cfg.eps, device)?;
        let lm_head = Linear::load_head(
            store,
            cfg.tie_word_embeddings,
            &format!("{pre}wte.weight"),
            d,
            cfg.vocab_size,
            device,
        )?;
        let info = LmInfo {
            architecture: "gpt2".to_string(),
            vocab_size: cfg.vocab_size,
            max_context: cfg.n_positions,
            num_layers: cfg.n_layer,
            bos_token_id: cfg.bos_token_id,
            eos_token_ids: cfg.eos_token_ids.clone(),
            kv_precision: store.kv_precision(),
        };
        let all_host = wte.is_host()
            && wpe.is_host()
            && lm_head.host().is_some()
            && h.iter().all(|b| b.attn.is_host() && b.mlp.is_host());
        Ok(Self {
            host: HostPlan::new(device, all_host, vec![None; cfg.n_layer]),
            cfg,
            info,
            wte,
            wpe,
            h,
            ln_f,
            lm_head,
            device: device.clone(),
        })
    }
}

fn conv1d(
    store: &mut WeightStore,
    prefix: &str,
    d_in: usize,
    d_out: usize,
    device: &Device,
) -> Result<Linear> {
    let mut parts = Linear::load_conv1d_split(store, prefix, d_in, &[d_out], device)?;
    Ok(parts.remove(0))
}

impl Gpt2 {
    /// The resolved configuration.
    pub fn config(&self) -> &Gpt2Config {
        &self.cfg
    }
}

impl Forward for Gpt2 {
    fn forward<E: Exec>(&self, e: &mut E) -> Result<Tensor<2>> {
        let x = e.embed(&self.wte);
        let mut x = e.add_positions(x, &self.wpe);
        for (i, block) in self.h.iter().enumerate() {
            e.tap_hidden(&x);
            let h = e.layer_norm(&block.ln_1, &x);
            let a = e.attention(i, &block.attn, None, h)?;
            x = e.add(x, a);
            let h = e.layer_norm(&block.ln_2, &x);
            let m = e.mlp(&block.mlp, h);
            x = e.add(x, m);
        }
        e.logits(x, &self.ln_f, &self.lm_head, LogitsPost::default())
    }

    fn host_plan(&self) -> &HostPlan {
        &self.host
    }

    fn group(&self) -> usize {
        1
    }

    fn lm_info(&self) -> &LmInfo {
        &self.info
    }

    fn device(&self) -> &Device {
        &self.device
    }
}
