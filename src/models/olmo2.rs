//! OLMo 2: Llama's embeddings, rotary embedding, MLP and head; its own layer.
//!
//! - Norms come after each block, not before: `x + post_attention_layernorm(attn(x))`, then
//!   `x + post_feedforward_layernorm(mlp(x))`; a layer has no `input_layernorm`.
//! - `q_norm` and `k_norm` are RMSNorms over each position's whole query (`[heads · head_dim]`)
//!   and key (`[kv_heads · head_dim]`) projections, before RoPE, not per head as Qwen3's.
//! - `rms_norm_eps` defaults to 1e-5.

use burn::tensor::Tensor;
use serde::Deserialize;

use crate::device::Device;
use crate::error::Result;
use crate::exec::{Exec, Forward, LogitsPost};
use crate::loading::WeightStore;
use crate::models::config as cfg;
use crate::models::llama::{forward_meta, Layer, Llama, LlamaConfig};
use crate::nn::{Attention, AttentionConfig, GatedMlp, RmsNorm};

/// An OLMo 2 layer.
#[derive(Debug, Clone)]
pub struct Olmo2Layer {
    self_attn: Attention,
    post_attention_layernorm: RmsNorm,
    mlp: GatedMlp,
    post_feedforward_layernorm: RmsNorm,
}

impl Layer for Olmo2Layer {
    fn is_host(&self) -> bool {
        self.self_attn.is_host() && self.mlp.is_host()
    }
}

impl Olmo2Layer {
    fn load(
        store: &mut WeightStore,
        p: &str,
        _i: usize,
        cfg: &LlamaConfig,
        attn_cfg: AttentionConfig,
        device: &Device,
    ) -> Result<Self> {
        let (h, eps) = (cfg.hidden_size, cfg.rms_norm_eps);
        let attn = format!("{p}.self_attn");
        let norm = |store: &mut WeightStore, name: &str| {
            RmsNorm::load(store, &format!("{p}.{name}"), h, eps, device)
        };
        Ok(Self {
            self_attn: Attention::load(store, &attn, attn_cfg, device)?
                .with_whole_qk_norm(store, &attn, eps, device)?,
            post_attention_layernorm: norm(store, "post_attention_layernorm")?,
            mlp: GatedMlp::load(
                store,
                &format!("{p}.mlp"),
                h,
                cfg.intermediate_size,
                cfg.mlp_bias,
                cfg.act,
                device,
            )?,
            post_feedforward_layernorm: norm(store, "post_feedforward_layernorm")?,
        })
    }
}

/// A loaded OLMo 2 model.
pub type Olmo2 = Llama<Olmo2Layer>;

/// Reads the config (`json`) and loads the weights.
pub fn load(json: cfg::ConfigJson<'_>, store: &mut WeightStore, device: &Device) -> Result<Olmo2> {
    #[derive(Deserialize)]
    struct Eps {
        rms_norm_eps: Option<f64>,
    }
    let eps: Eps = json.parse()?;
    let mut cfg = LlamaConfig::from_json(json.path, json.value, "olmo2")?;
    if eps.rms_norm_eps.is_none() {
        cfg.rms_norm_eps = 1e-5;
    }
    Llama::load_with(cfg, store, device, Olmo2Layer::load)
}

impl Forward for Olmo2 {
    fn forward<E: Exec>(&self, e: &mut E) -> Result<Tensor<2>> {
        let mut x = e.embed(&self.embed_tokens);
        for (i, l) in self.layers.iter().enumerate() {
            e.tap_hidden(&x);
            let h = e.copy(&x);
            let a = e.attention(i, &l.self_attn, Some(&self.rope), h)?;
            let a = e.rms_norm_in_place(&l.post_attention_layernorm, a);
            x = e.add(x, a);
            let h = e.copy(&x);
            let m = e.gated_mlp(&l.mlp, h);
            let m = e.rms_norm_in_place(&l.post_feedforward_layernorm, m);
            x = e.add(x, m);
        }
        e.logits(x, &self.norm, &self.lm_head, LogitsPost::default())
    }

    forward_meta!();
}
