//! Multi-head attention with grouped key/value heads (GQA), rotary positions and a KV cache.

use burn::tensor::{activation, Tensor, TensorData};

use crate::device::Device;
use crate::error::Result;
use crate::loading::WeightStore;
use crate::nn::{LayerCache, Linear, RotaryEmbedding};

/// Shape and bias settings of one attention block.
#[derive(Debug, Clone)]
pub struct AttentionConfig {
    /// Model width.
    pub hidden: usize,
    /// Query heads.
    pub heads: usize,
    /// Key/value heads (divides `heads`).
    pub kv_heads: usize,
    /// Width of one head.
    pub head_dim: usize,
    /// Bias on the q, k and v projections.
    pub qkv_bias: bool,
    /// Bias on the output projection.
    pub o_bias: bool,
}

/// Self-attention with projections named `q_proj`, `k_proj`, `v_proj`, `o_proj`.
#[derive(Debug, Clone)]
pub struct Attention {
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    o_proj: Linear,
    cfg: AttentionConfig,
}

/// Positions the current chunk attends to, shared by all layers of one forward pass.
#[derive(Debug, Clone)]
pub struct AttentionContext {
    /// Position of the chunk's first token.
    pub start: usize,
    /// `cos` table, `[1, 1, seq, head_dim]`.
    pub cos: Tensor<4>,
    /// `sin` table, `[1, 1, seq, head_dim]`.
    pub sin: Tensor<4>,
    /// Additive causal mask `[1, 1, group·seq, start + seq]`, `None` for a single token.
    pub mask: Option<Tensor<4>>,
}

impl AttentionContext {
    /// Builds the rotary tables and causal mask for tokens `start..start+seq`.
    pub fn new(
        rope: &RotaryEmbedding,
        start: usize,
        seq: usize,
        group: usize,
        device: &Device,
    ) -> Self {
        let (cos, sin) = rope.tables(start, seq, device);
        let mask = (seq > 1).then(|| causal_mask(start, seq, group, device));
        Self {
            start,
            cos,
            sin,
            mask,
        }
    }
}

/// Additive mask for `group` query heads stacked along the sequence axis: row `g·seq + i` is
/// query position `start + i`, which may see key positions `0..=start + i`.
fn causal_mask(start: usize, seq: usize, group: usize, device: &Device) -> Tensor<4> {
    let total = start + seq;
    let mut m = vec![0f32; group * seq * total];
    for g in 0..group {
        for i in 0..seq {
            let row = &mut m[(g * seq + i) * total..(g * seq + i + 1) * total];
            row[start + i + 1..].fill(f32::NEG_INFINITY);
        }
    }
    Tensor::from_data(
        TensorData::new(m, [1, 1, group * seq, total]),
        device.burn(),
    )
}

impl Attention {
    /// Loads the four projections under `prefix` (e.g. `model.layers.0.self_attn`).
    pub fn load(
        store: &mut WeightStore,
        prefix: &str,
        cfg: AttentionConfig,
        device: &Device,
    ) -> Result<Self> {
        let q = cfg.heads * cfg.head_dim;
        let kv = cfg.kv_heads * cfg.head_dim;
        Ok(Self {
            q_proj: Linear::load(
                store,
                &format!("{prefix}.q_proj"),
                cfg.hidden,
                q,
                cfg.qkv_bias,
                device,
            )?,
            k_proj: Linear::load(
                store,
                &format!("{prefix}.k_proj"),
                cfg.hidden,
                kv,
                cfg.qkv_bias,
                device,
            )?,
            v_proj: Linear::load(
                store,
                &format!("{prefix}.v_proj"),
                cfg.hidden,
                kv,
                cfg.qkv_bias,
                device,
            )?,
            o_proj: Linear::load(
                store,
                &format!("{prefix}.o_proj"),
                q,
                cfg.hidden,
                cfg.o_bias,
                device,
            )?,
            cfg,
        })
    }

    /// # Shapes
    /// `x: [1, seq, hidden]` → `[1, seq, hidden]`; the cache grows by `seq`.
    pub fn forward(
        &self,
        x: Tensor<3>,
        rope: &RotaryEmbedding,
        ctx: &AttentionContext,
        cache: &mut LayerCache,
        max_len: usize,
    ) -> Tensor<3> {
        let [b, seq, _] = x.dims();
        let AttentionConfig {
            heads,
            kv_heads,
            head_dim,
            ..
        } = self.cfg;
        let group = heads / kv_heads;
        let split = |t: Tensor<3>, h: usize| t.reshape([b, seq, h, head_dim]).swap_dims(1, 2);
        let q = split(self.q_proj.forward(x.clone()), heads);
        let k = split(self.k_proj.forward(x.clone()), kv_heads);
        let v = split(self.v_proj.forward(x), kv_heads);
        let q = rope.apply(q, &ctx.cos, &ctx.sin);
        let k = rope.apply(k, &ctx.cos, &ctx.sin);
        let (k, v) = cache.append(k, v, max_len);
        let total = k.dims()[2];

        // Query head h uses kv head h / group: stacking each group's queries along the sequence
        // axis lets every kv head serve its group in one matmul, without copying K or V.
        let q = q.reshape([b, kv_heads, group * seq, head_dim]);
        let scale = 1.0 / (head_dim as f64).sqrt();
        let mut scores = q.matmul(k.swap_dims(2, 3)).mul_scalar(scale);
        if let Some(mask) = &ctx.mask {
            scores = scores + mask.clone();
        }
        debug_assert_eq!(scores.dims(), [b, kv_heads, group * seq, total]);
        let probs = activation::softmax(scores, 3);
        let out = probs
            .matmul(v)
            .reshape([b, heads, seq, head_dim])
            .swap_dims(1, 2)
            .reshape([b, seq, heads * head_dim]);
        self.o_proj.forward(out)
    }
}
