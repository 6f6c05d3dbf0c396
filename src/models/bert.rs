//! BERT-family encoders (BERT, MiniLM, what sentence-transformers' `all-MiniLM-L6-v2` uses):
//! token + absolute position + token-type embeddings, post-LayerNorm blocks, bidirectional
//! attention over a padded batch.
//!
//! | tensor (`bert.` prefix optional) | shape |
//! |---|---|
//! | `embeddings.{word,position,token_type}_embeddings.weight` | `[vocab / max_pos / types, hidden]` |
//! | `embeddings.LayerNorm.{weight,bias}` | `[hidden]` |
//! | `encoder.layer.{i}.attention.self.{query,key,value}.{weight,bias}` | `[hidden, hidden]` |
//! | `encoder.layer.{i}.attention.output.dense`, `.attention.output.LayerNorm` | |
//! | `encoder.layer.{i}.intermediate.dense`, `.output.dense`, `.output.LayerNorm` | |
//!
//! `embeddings.position_ids` (a buffer) and the unused `pooler.dense` are skipped.

use std::path::Path;

use burn::tensor::{Int, Tensor, TensorData};
use serde::Deserialize;

use crate::device::Device;
use crate::error::{Error, Result};
use crate::loading::WeightStore;
use crate::models::config as cfg;
use crate::nn::{Activation, Attention, AttentionConfig, LayerNorm, Linear, Mlp};

#[derive(Debug, Clone, Deserialize)]
struct RawConfig {
    vocab_size: usize,
    hidden_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    intermediate_size: usize,
    #[serde(default)]
    hidden_act: Option<String>,
    #[serde(default)]
    max_position_embeddings: Option<usize>,
    #[serde(default)]
    type_vocab_size: Option<usize>,
    #[serde(default)]
    layer_norm_eps: Option<f64>,
    #[serde(default)]
    pad_token_id: Option<u32>,
    #[serde(default)]
    position_embedding_type: Option<String>,
}

/// The resolved runtime configuration.
#[derive(Debug, Clone)]
pub struct BertConfig {
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Model width.
    pub hidden_size: usize,
    /// Layers.
    pub num_layers: usize,
    /// Heads.
    pub heads: usize,
    /// MLP width.
    pub intermediate_size: usize,
    /// MLP activation.
    pub act: Activation,
    /// Longest input.
    pub max_position_embeddings: usize,
    /// Token types.
    pub type_vocab_size: usize,
    /// LayerNorm epsilon.
    pub eps: f64,
    /// Padding id.
    pub pad_token_id: u32,
}

impl BertConfig {
    /// Resolves `config.json` of a BERT-family model.
    pub fn from_json(path: &Path, value: serde_json::Value) -> Result<Self> {
        let raw: RawConfig = cfg::parse(path, value)?;
        let bad = |m: String| Error::config(path, m);
        cfg::sizes(
            &[
                ("vocab_size", raw.vocab_size),
                ("hidden_size", raw.hidden_size),
                ("num_hidden_layers", raw.num_hidden_layers),
                ("intermediate_size", raw.intermediate_size),
            ],
            ("num_hidden_layers", raw.num_hidden_layers),
        )
        .map_err(bad)?;
        if let Some(p) = raw
            .position_embedding_type
            .as_deref()
            .filter(|p| *p != "absolute")
        {
            return Err(bad(format!(
                "position_embedding_type {p:?} is not supported (supported: absolute)"
            )));
        }
        let (heads, _, _) =
            cfg::head_shape(raw.hidden_size, raw.num_attention_heads, None, None, false)
                .map_err(bad)?;
        Ok(Self {
            vocab_size: raw.vocab_size,
            hidden_size: raw.hidden_size,
            num_layers: raw.num_hidden_layers,
            heads,
            intermediate_size: raw.intermediate_size,
            act: Activation::from_hf(raw.hidden_act.as_deref().unwrap_or("gelu"))
                .map_err(|e| bad(e.to_string()))?,
            max_position_embeddings: cfg::positive(
                "max_position_embeddings",
                raw.max_position_embeddings.unwrap_or(512),
            )
            .map_err(bad)?,
            type_vocab_size: cfg::positive("type_vocab_size", raw.type_vocab_size.unwrap_or(2))
                .map_err(bad)?,
            eps: cfg::epsilon("layer_norm_eps", raw.layer_norm_eps.unwrap_or(1e-12))
                .map_err(bad)?,
            pad_token_id: raw.pad_token_id.unwrap_or(0),
        })
    }
}

#[derive(Debug, Clone)]
struct Layer {
    attention: Attention,
    attention_norm: LayerNorm,
    mlp: Mlp,
    output_norm: LayerNorm,
}

/// A loaded BERT encoder.
#[derive(Debug, Clone)]
pub struct Bert {
    cfg: BertConfig,
    word: Tensor<2>,
    position: Tensor<2>,
    token_type: Tensor<2>,
    embed_norm: LayerNorm,
    layers: Vec<Layer>,
    device: Device,
}

impl Bert {
    /// Loads every tensor of the model from `store`.
    pub fn load(cfg: BertConfig, store: &mut WeightStore, device: &Device) -> Result<Self> {
        let pre = if store.contains("bert.embeddings.word_embeddings.weight") {
            "bert."
        } else {
            ""
        };
        let (h, eps) = (cfg.hidden_size, cfg.eps);
        for unused in [
            "embeddings.position_ids",
            "pooler.dense.weight",
            "pooler.dense.bias",
        ] {
            store.skip(&format!("{pre}{unused}"));
        }
        let e = format!("{pre}embeddings");
        let word = store.take(
            &format!("{e}.word_embeddings.weight"),
            [cfg.vocab_size, h],
            device,
        )?;
        let position = store.take(
            &format!("{e}.position_embeddings.weight"),
            [cfg.max_position_embeddings, h],
            device,
        )?;
        let token_type = store.take(
            &format!("{e}.token_type_embeddings.weight"),
            [cfg.type_vocab_size, h],
            device,
        )?;
        let embed_norm = LayerNorm::load(store, &format!("{e}.LayerNorm"), h, eps, device)?;
        let mut layers = Vec::with_capacity(cfg.num_layers);
        for i in 0..cfg.num_layers {
            let p = format!("{pre}encoder.layer.{i}");
            let lin = |store: &mut WeightStore, name: &str, d_in, d_out| {
                Linear::load(store, &format!("{p}.{name}"), d_in, d_out, true, device)
            };
            let attention = Attention::from_parts(
                lin(store, "attention.self.query", h, h)?,
                lin(store, "attention.self.key", h, h)?,
                lin(store, "attention.self.value", h, h)?,
                lin(store, "attention.output.dense", h, h)?,
                AttentionConfig {
                    qkv_bias: true,
                    o_bias: true,
                    ..AttentionConfig::new(h, cfg.heads, cfg.heads, h / cfg.heads)
                },
            );
            let inter = cfg.intermediate_size;
            layers.push(Layer {
                attention,
                attention_norm: LayerNorm::load(
                    store,
                    &format!("{p}.attention.output.LayerNorm"),
                    h,
                    eps,
                    device,
                )?,
                mlp: Mlp::from_parts(
                    lin(store, "intermediate.dense", h, inter)?,
                    lin(store, "output.dense", inter, h)?,
                    cfg.act,
                ),
                output_norm: LayerNorm::load(
                    store,
                    &format!("{p}.output.LayerNorm"),
                    h,
                    eps,
                    device,
                )?,
            });
        }
        Ok(Self {
            cfg,
            word,
            position,
            token_type,
            embed_norm,
            layers,
            device: device.clone(),
        })
    }

    /// The resolved configuration.
    pub fn config(&self) -> &BertConfig {
        &self.cfg
    }

    /// Encodes a batch (each sequence at most `max_position_embeddings` long; token type 0).
    /// Shorter sequences are padded; padding is masked out of attention.
    ///
    /// # Shapes
    /// returns `[batch, longest, hidden]` (rows past a sequence's length are padding)
    pub fn forward(&self, batch: &[Vec<u32>]) -> Result<Tensor<3>> {
        let b = batch.len();
        let t = batch.iter().map(Vec::len).max().unwrap_or(0);
        if b == 0 || t == 0 {
            return Err(Error::invalid_arg("texts", "nothing to encode"));
        }
        if t > self.cfg.max_position_embeddings {
            return Err(Error::ContextOverflow {
                needed: t,
                limit: self.cfg.max_position_embeddings,
            });
        }
        let vocab = self.cfg.vocab_size;
        let mut ids = Vec::with_capacity(b * t);
        let mut bias = Vec::with_capacity(b * t);
        for seq in batch {
            for j in 0..t {
                match seq.get(j) {
                    Some(&id) if (id as usize) < vocab => {
                        ids.push(id as i64);
                        bias.push(0f32);
                    }
                    Some(&id) => {
                        return Err(Error::TokenOutOfRange {
                            id,
                            vocab_size: vocab,
                        })
                    }
                    None => {
                        ids.push(self.cfg.pad_token_id as i64);
                        bias.push(f32::NEG_INFINITY);
                    }
                }
            }
        }
        let dev = self.device.burn();
        let h = self.cfg.hidden_size;
        let ids = Tensor::<1, Int>::from_data(TensorData::new(ids, [b * t]), dev);
        let positions: Vec<i64> = (0..t as i64).collect();
        let positions = Tensor::<1, Int>::from_data(TensorData::new(positions, [t]), dev);
        let words = self.word.clone().select(0, ids).reshape([b, t, h]);
        let pos = self
            .position
            .clone()
            .select(0, positions)
            .reshape([1, t, h]);
        let types = self
            .token_type
            .clone()
            .slice([0..1, 0..h])
            .reshape([1, 1, h]);
        let mut x = self.embed_norm.forward(words + pos + types);
        let key_bias =
            Tensor::<4>::from_data(TensorData::new(bias, [b, 1, 1, t]), self.device.floats());
        for layer in &self.layers {
            let a = layer
                .attention
                .forward_encoder(x.clone(), Some(key_bias.clone()));
            x = layer.attention_norm.forward(x + a);
            let m = layer.mlp.forward(x.clone());
            x = layer.output_norm.forward(x + m);
        }
        Ok(x)
    }
}
