//! Multi-head attention with grouped key/value heads (GQA), rotary positions, a KV cache,
//! optional per-head q/k normalisation, sliding windows and score soft-capping.

use std::cell::RefCell;
use std::collections::HashMap;

use burn::tensor::{activation, FloatDType, Tensor, TensorData};

use crate::device::Device;
use crate::error::Result;
use crate::loading::WeightStore;
use crate::nn::linear::GemvScratch;
use crate::nn::{HostKvView, LayerCache, Linear, RmsNorm, RotaryEmbedding};
use rayon::prelude::*;

/// Buffers a decode step on the host reuses layer after layer ([`Attention::forward_host_into`],
/// [`GatedMlp::forward_host_into`](crate::nn::GatedMlp)).
#[derive(Default)]
pub(crate) struct DecodeScratch {
    pub(crate) gemv: GemvScratch,
    /// q, k and v of one token.
    qkv: Vec<f32>,
    /// The heads' outputs, before the output projection.
    heads: Vec<f32>,
    /// The attention's parts (one per thread taking part).
    parts: Vec<AttnPart>,
    /// Gate and up projections of one token.
    pub(crate) gate_up: Vec<f32>,
}

/// One part of a token's attention (a range of cached positions, every head): the scores, per
/// head the largest score and the sum of exponentials, and the weighted sum of values.
#[derive(Default)]
pub(crate) struct AttnPart {
    p: Vec<f32>,
    stats: Vec<(f32, f32)>,
    o: Vec<f32>,
}

/// Causal masks cached per (sequence length, sliding window).
type MaskKey = (usize, Option<usize>);

/// Shape and options of one attention block.
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
    /// Multiplier of `q·k` (usually `1/sqrt(head_dim)`).
    pub scale: f64,
    /// Each query sees only the last `window` positions (itself included).
    pub window: Option<usize>,
    /// Scores become `cap·tanh(score/cap)` before the mask (Gemma 2).
    pub softcap: Option<f64>,
}

impl AttentionConfig {
    /// Plain causal attention with the usual `1/sqrt(head_dim)` scale.
    pub fn new(hidden: usize, heads: usize, kv_heads: usize, head_dim: usize) -> Self {
        Self {
            hidden,
            heads,
            kv_heads,
            head_dim,
            qkv_bias: false,
            o_bias: false,
            scale: 1.0 / (head_dim as f64).sqrt(),
            window: None,
            softcap: None,
        }
    }
}

/// Self-attention with projections named `q_proj`, `k_proj`, `v_proj`, `o_proj` (and, when the
/// model has them, `q_norm`/`k_norm` applied to each head before RoPE).
#[derive(Debug, Clone)]
pub struct Attention {
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    o_proj: Linear,
    qk_norm: Option<(RmsNorm, RmsNorm)>,
    /// The q/k norms normalise all heads of a position together (OLMo 2), not each head.
    qk_norm_whole: bool,
    cfg: AttentionConfig,
}

/// What every layer of one forward pass shares: positions, rotary tables, and the masks built
/// so far (layers with the same window and cache start share one).
///
/// A pass runs `rows` sequences of `seq` new tokens each, at cache slots `start..start+seq`.
/// Row `r` is left-padded: its slots below `pads[r]` hold padding, which no real token
/// attends to, and its token at slot `s` has position `s - pads[r]`.
#[derive(Debug)]
pub struct AttentionContext {
    /// Cache slot of the chunk's first token.
    pub start: usize,
    /// Tokens per row in the chunk.
    pub seq: usize,
    pads: Vec<usize>,
    /// The rotary embedding with its `cos` and `sin` tables (`[rows, 1, seq, rotary_dim]`), or
    /// `None` for models with learned positions.
    rope: Option<(RotaryEmbedding, Tensor<4>, Tensor<4>)>,
    group: usize,
    device: Device,
    masks: RefCell<HashMap<MaskKey, Option<Tensor<4>>>>,
}

impl AttentionContext {
    /// One unpadded sequence: builds the rotary tables (if any) for tokens `start..start+seq`;
    /// `group` is heads per kv head.
    pub fn new(
        rope: Option<&RotaryEmbedding>,
        start: usize,
        seq: usize,
        group: usize,
        device: &Device,
    ) -> Self {
        Self::batched(rope, start, seq, &[0], group, device)
    }

    /// A left-padded batch: one entry of `pads` per row (see the type's docs).
    pub fn batched(
        rope: Option<&RotaryEmbedding>,
        start: usize,
        seq: usize,
        pads: &[usize],
        group: usize,
        device: &Device,
    ) -> Self {
        let positions = positions(start, seq, pads);
        let rope = rope.map(|r| {
            let (cos, sin) = r.tables_at(&positions, pads.len(), seq, device);
            (r.clone(), cos, sin)
        });
        Self {
            start,
            seq,
            pads: pads.to_vec(),
            rope,
            group,
            device: device.clone(),
            masks: RefCell::new(HashMap::new()),
        }
    }

    /// Sequences in the pass.
    pub fn rows(&self) -> usize {
        self.pads.len()
    }

    /// The position of every token of the pass, row by row (`rows·seq`; 0 for padding).
    pub fn positions(&self) -> Vec<usize> {
        positions(self.start, self.seq, &self.pads)
    }

    /// The additive mask for keys at cache slots `first..start+seq`, or `None` when every
    /// query sees every key.
    ///
    /// # Shapes
    /// `[rows, 1, group·seq, total]`: row `g·seq + i` is the query at slot `start + i`
    pub fn mask(&self, first: usize, window: Option<usize>) -> Option<Tensor<4>> {
        self.masks
            .borrow_mut()
            .entry((first, window))
            .or_insert_with(|| {
                build_mask(
                    self.start,
                    self.seq,
                    first,
                    window,
                    self.group,
                    &self.pads,
                    &self.device,
                )
            })
            .clone()
    }
}

/// The position of each token of `seq` at slots `start..` of each row padded by `pads` (0 for
/// padding), row by row.
pub(crate) fn positions(start: usize, seq: usize, pads: &[usize]) -> Vec<usize> {
    pads.iter()
        .flat_map(|&pad| (start..start + seq).map(move |s| s.saturating_sub(pad)))
        .collect()
}

fn build_mask(
    start: usize,
    seq: usize,
    first: usize,
    window: Option<usize>,
    group: usize,
    pads: &[usize],
    device: &Device,
) -> Option<Tensor<4>> {
    let total = start + seq - first;
    // A padding query sees only itself, so that its (unused) output stays finite.
    let visible = |pad: usize, q: usize, k: usize| {
        if q < pad {
            k == q
        } else {
            k <= q && k >= pad && window.is_none_or(|w| q - k < w)
        }
    };
    let all_visible = seq == 1
        && pads
            .iter()
            .all(|&pad| (first..=start).all(|k| visible(pad, start, k)));
    if all_visible {
        return None;
    }
    let mut m = Vec::with_capacity(pads.len() * group * seq * total);
    for &pad in pads {
        let mut row = vec![0f32; seq * total];
        for i in 0..seq {
            for j in 0..total {
                if !visible(pad, start + i, first + j) {
                    row[i * total + j] = f32::NEG_INFINITY;
                }
            }
        }
        for _ in 0..group {
            m.extend_from_slice(&row);
        }
    }
    Some(Tensor::from_data(
        TensorData::new(m, [pads.len(), 1, group * seq, total]),
        device.floats(),
    ))
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
        let (h, qb) = (cfg.hidden, cfg.qkv_bias);
        Ok(Self {
            q_proj: Linear::load(store, &format!("{prefix}.q_proj"), h, q, qb, device)?,
            k_proj: Linear::load(store, &format!("{prefix}.k_proj"), h, kv, qb, device)?,
            v_proj: Linear::load(store, &format!("{prefix}.v_proj"), h, kv, qb, device)?,
            o_proj: Linear::load(store, &format!("{prefix}.o_proj"), q, h, cfg.o_bias, device)?,
            qk_norm: None,
            qk_norm_whole: false,
            cfg,
        })
    }

    /// Builds the block from loaded projections (e.g. split from a fused `qkv_proj`).
    pub fn from_parts(
        q_proj: Linear,
        k_proj: Linear,
        v_proj: Linear,
        o_proj: Linear,
        cfg: AttentionConfig,
    ) -> Self {
        Self {
            q_proj,
            k_proj,
            v_proj,
            o_proj,
            qk_norm: None,
            qk_norm_whole: false,
            cfg,
        }
    }

    /// Adds per-head RMSNorms `{prefix}.q_norm` and `{prefix}.k_norm` (`[head_dim]`), scaling
    /// by `offset + weight` (see [`RmsNorm::load_with_offset`]).
    pub fn with_qk_norm(
        mut self,
        store: &mut WeightStore,
        prefix: &str,
        eps: f64,
        offset: f32,
        device: &Device,
    ) -> Result<Self> {
        let d = self.cfg.head_dim;
        let norm = |store: &mut WeightStore, name: &str| {
            RmsNorm::load_with_offset(store, &format!("{prefix}.{name}"), d, eps, offset, device)
        };
        self.qk_norm = Some((norm(store, "q_norm")?, norm(store, "k_norm")?));
        Ok(self)
    }

    /// Adds RMSNorms `{prefix}.q_norm` (`[heads · head_dim]`) and `{prefix}.k_norm`
    /// (`[kv_heads · head_dim]`) over each position's whole query and key projections (OLMo 2).
    pub fn with_whole_qk_norm(
        mut self,
        store: &mut WeightStore,
        prefix: &str,
        eps: f64,
        device: &Device,
    ) -> Result<Self> {
        let AttentionConfig {
            heads,
            kv_heads,
            head_dim,
            ..
        } = self.cfg;
        let norm = |store: &mut WeightStore, name: &str, dim| {
            RmsNorm::load(store, &format!("{prefix}.{name}"), dim, eps, device)
        };
        self.qk_norm = Some((
            norm(store, "q_norm", heads * head_dim)?,
            norm(store, "k_norm", kv_heads * head_dim)?,
        ));
        self.qk_norm_whole = true;
        Ok(self)
    }

    /// This block's options.
    pub fn config(&self) -> &AttentionConfig {
        &self.cfg
    }

    /// # Shapes
    /// `x: [rows, seq, hidden]` → `[rows, seq, hidden]`; the cache grows by `seq`.
    pub fn forward(
        &self,
        x: Tensor<3>,
        ctx: &AttentionContext,
        cache: &mut LayerCache,
        max_len: usize,
    ) -> Tensor<3> {
        self.forward_inner(x, ctx, cache, max_len, false).0
    }

    /// [`Attention::forward`] that also returns the attention weights (softmax probabilities
    /// after masking), `[rows, heads, seq, keys]` over the keys the pass attends to.
    pub fn forward_with_weights(
        &self,
        x: Tensor<3>,
        ctx: &AttentionContext,
        cache: &mut LayerCache,
        max_len: usize,
    ) -> (Tensor<3>, Tensor<4>) {
        let (out, probs) = self.forward_inner(x, ctx, cache, max_len, true);
        (out, probs.expect("weights were asked for"))
    }

    fn forward_inner(
        &self,
        x: Tensor<3>,
        ctx: &AttentionContext,
        cache: &mut LayerCache,
        max_len: usize,
        weights: bool,
    ) -> (Tensor<3>, Option<Tensor<4>>) {
        let [b, seq, _] = x.dims();
        let AttentionConfig {
            heads,
            kv_heads,
            head_dim,
            ..
        } = self.cfg;
        let split = |t: Tensor<3>, h: usize| t.reshape([b, seq, h, head_dim]);
        let (mut q, mut k) = (
            self.q_proj.forward(x.clone()),
            self.k_proj.forward(x.clone()),
        );
        let v = split(self.v_proj.forward(x), kv_heads).swap_dims(1, 2);
        let whole = self.qk_norm.as_ref().filter(|_| self.qk_norm_whole);
        if let Some((qn, kn)) = whole {
            q = qn.forward(q);
            k = kn.forward(k);
        }
        let (mut q, mut k) = (split(q, heads), split(k, kv_heads));
        let per_head = self.qk_norm.as_ref().filter(|_| !self.qk_norm_whole);
        if let Some((qn, kn)) = per_head {
            q = qn.forward(q);
            k = kn.forward(k);
        }
        let (mut q, mut k) = (q.swap_dims(1, 2), k.swap_dims(1, 2));
        if let Some((rope, cos, sin)) = &ctx.rope {
            q = rope.apply(q, cos, sin);
            k = rope.apply(k, cos, sin);
        }
        let kv = cache.append(k, v, max_len, self.cfg.window);
        let mask = ctx.mask(kv.first, self.cfg.window);
        self.attend_inner(q, kv.k, kv.v, mask, weights)
    }

    /// [`Attention::forward`] for one token of one sequence at position `pos` on the host
    /// (kiln's CPU decode path): `x: [hidden]` → `[hidden]`; `rope` carries the rotary
    /// embedding with this position's tables ([`RotaryEmbedding::host_tables`]). The cache
    /// grows by one position, in host form.
    pub fn forward_host(
        &self,
        x: &[f32],
        pos: usize,
        rope: Option<(&RotaryEmbedding, &[f32], &[f32])>,
        cache: &mut LayerCache,
    ) -> Vec<f32> {
        let mut out = vec![0f32; self.o_proj.d_out()];
        let mut scratch = DecodeScratch::default();
        self.forward_host_into(x, pos, rope, cache, &mut out, &mut scratch);
        out
    }

    /// [`Attention::forward_host`] into `out` (`[hidden]`), with the step's buffers in
    /// `scratch`: nothing allocated once they have grown (a decode step runs this layer after
    /// layer).
    pub(crate) fn forward_host_into(
        &self,
        x: &[f32],
        pos: usize,
        rope: Option<(&RotaryEmbedding, &[f32], &[f32])>,
        cache: &mut LayerCache,
        out: &mut [f32],
        scratch: &mut DecodeScratch,
    ) {
        let AttentionConfig {
            kv_heads, window, ..
        } = self.cfg;
        let DecodeScratch {
            gemv,
            qkv,
            heads,
            parts,
            ..
        } = scratch;
        let (qw, kw) = (self.q_proj.d_out(), self.k_proj.d_out());
        qkv.resize(qw + kw + self.v_proj.d_out(), 0.0);
        Linear::forward_host_many_into(&[&self.q_proj, &self.k_proj, &self.v_proj], x, qkv, gemv);
        let (q, rest) = qkv.split_at_mut(qw);
        let (k, v) = rest.split_at_mut(kw);
        if let Some((qn, kn)) = &self.qk_norm {
            qn.forward_host(q);
            kn.forward_host(k);
        }
        if let Some((rope, cos, sin)) = rope {
            rope.apply_host(q, cos, sin);
            rope.apply_host(k, cos, sin);
        }
        let kv = cache.append_host(k, v, kv_heads, window);
        heads.resize(qw, 0.0);
        self.attend_host_into(q, &kv, [pos, 0], true, heads, parts);
        Linear::forward_host_many_into(&[&self.o_proj], heads, out, gemv);
    }

    /// [`Attention::forward_host`] for `n` consecutive tokens of one sequence from position
    /// `start` (a prefill on kiln's CPU path): `x: [n, hidden]` → `[n, hidden]`; `rope` carries
    /// the tables of positions `start..start + n`, `rotary_dim` values per position each. The
    /// projections run as GEMMs, then the tokens attend in parallel, each over its own causal
    /// prefix of the cache; one token is [`Attention::forward_host`]. Returns `None` (and
    /// leaves the cache alone) where this path does not apply: a sliding window that two or
    /// more new positions would roll.
    pub fn forward_host_rows(
        &self,
        x: &[f32],
        n: usize,
        start: usize,
        rope: Option<(&RotaryEmbedding, &[f32], &[f32])>,
        cache: &mut LayerCache,
    ) -> Option<Vec<f32>> {
        if n == 1 {
            return Some(self.forward_host(x, start, rope, cache));
        }
        self.forward_host_batch(x, [1, n], start, &[0], rope, cache)
    }

    /// [`Attention::forward_host_rows`] for a left-padded batch (as [`AttentionContext`] lays
    /// one out): `n` tokens of each of `pads.len()` rows at cache slots `start..start + n`,
    /// `x: [rows, n, hidden]` → `[rows, n, hidden]`, `rope` the tables of each row's positions
    /// in the same order. The projections run as GEMMs over every row (each weight read once
    /// for the whole batch), then every (row, token) attends in parallel over its row's cache.
    pub(crate) fn forward_host_batch(
        &self,
        x: &[f32],
        [rows, n]: [usize; 2],
        start: usize,
        pads: &[usize],
        rope: Option<(&RotaryEmbedding, &[f32], &[f32])>,
        cache: &mut LayerCache,
    ) -> Option<Vec<f32>> {
        let AttentionConfig {
            heads,
            kv_heads,
            head_dim,
            window,
            ..
        } = self.cfg;
        // Positions are appended first and then attended to: a window must keep them all.
        if n > 1 && window.is_some_and(|w| start + n > w) {
            return None;
        }
        let m = rows * n;
        let mut q = self.q_proj.forward_host(x, m);
        let mut k = self.k_proj.forward_host(x, m);
        let v = self.v_proj.forward_host(x, m);
        if let Some((qn, kn)) = &self.qk_norm {
            qn.forward_host(&mut q);
            kn.forward_host(&mut k);
        }
        let (qw, kw) = (heads * head_dim, kv_heads * head_dim);
        if let Some((rope, cos, sin)) = rope {
            let r = cos.len() / m.max(1);
            for i in 0..m {
                let (c, s) = (&cos[i * r..(i + 1) * r], &sin[i * r..(i + 1) * r]);
                rope.apply_host(&mut q[i * qw..(i + 1) * qw], c, s);
                rope.apply_host(&mut k[i * kw..(i + 1) * kw], c, s);
            }
        }
        cache.append_host_rows(&k, &v, [rows, n], kv_heads, window);
        let kv = cache.host_view()?;
        let mut out = vec![0f32; m * qw];
        // Short rows of work (one token's attention over a few hundred positions): rayon's
        // tasks, a few tokens each.
        out.par_chunks_mut(qw).enumerate().for_each(|(i, o)| {
            let (r, t) = (i / n, i % n);
            let mut parts = Vec::new();
            self.attend_host_into(
                &q[i * qw..(i + 1) * qw],
                &kv.of_row(r),
                [start + t, pads[r]],
                false,
                o,
                &mut parts,
            );
        });
        Some(self.o_proj.forward_host(&out, m))
    }

    /// One token's attention at cache slot `pos` on the host: its query `q` (`[heads ·
    /// head_dim]`, rotated) over the slots of `kv` it sees (the window's, itself included, or
    /// all up to `pos`; none below `pad`, the row's padding, which itself sees only itself),
    /// `[heads · head_dim]` out. With `split`, a cache of more than a few dozen kilobytes is
    /// split between threads by positions.
    fn attend_host_into(
        &self,
        q: &[f32],
        kv: &HostKvView<'_>,
        [pos, pad]: [usize; 2],
        split: bool,
        out: &mut [f32],
        scratch: &mut Vec<AttnPart>,
    ) {
        let AttentionConfig {
            heads,
            kv_heads,
            head_dim,
            window,
            ..
        } = self.cfg;
        // Keys this query sees: the window's (itself included), or everything cached; none of
        // the padding.
        let floor = if pos < pad { pos } else { pad };
        let lo = window.map_or(kv.first, |w| (pos + 1).saturating_sub(w).max(kv.first));
        let lo = lo.max(floor).min(pos);
        let width = kv_heads * head_dim;
        // Each key/value head's positions are a run of memory, `head_stride` values apart.
        let (skip, head_stride) = ((lo - kv.first) * head_dim, kv.head_stride);
        let keys = kv.k.skip(skip);
        let values = kv.v.skip(skip);
        let total = pos + 1 - lo;
        let group = heads / kv_heads;
        let (scale, softcap) = (self.cfg.scale as f32, self.cfg.softcap.map(|c| c as f32));
        // Rows `t0..t1` of the cache for every head: each head's largest score, the sum of
        // its exponentials, and its weighted sum of values not yet divided by that sum.
        let part = |t0: usize, t1: usize, slot: &mut AttnPart| {
            let n = t1 - t0;
            let AttnPart { p, stats, o } = slot;
            p.resize(heads * n, 0.0);
            let (k, v) = (keys.skip(t0 * head_dim), values.skip(t0 * head_dim));
            crate::nn::host::head_scores(q, head_dim, group, k, head_stride, p);
            stats.clear();
            for ph in p.chunks_exact_mut(n) {
                if scale != 1.0 || softcap.is_some() {
                    for s in ph.iter_mut() {
                        *s *= scale;
                        if let Some(cap) = softcap {
                            *s = (*s / cap).tanh() * cap;
                        }
                    }
                }
                let max = crate::nn::host::max_f32(ph);
                let sum = crate::nn::host::exp_shifted(ph, max);
                stats.push((max, sum));
            }
            o.resize(heads * head_dim, 0.0);
            crate::nn::host::head_weighted(p, head_dim, group, v, head_stride, o);
        };
        // A cache of more than a few dozen kilobytes is split between threads by positions,
        // each streaming its own rows (one core alone reads a cache that the weights' streaming
        // has evicted at a fraction of the memory's rate: on the SmolLM2-135M shape at 130-190
        // positions, about 20 % of a decode step on one thread, 10-12 % on two), and the parts are
        // combined by rescaling to the overall maximum.
        const ROWS_BYTES: usize = 32 << 10;
        let parts = if split {
            (total * width * 4 / ROWS_BYTES)
                .min(rayon::current_num_threads())
                .min(total)
                .max(1)
        } else {
            1
        };
        if scratch.len() < parts {
            scratch.resize_with(parts, AttnPart::default);
        }
        if parts == 1 {
            let slot = &mut scratch[0];
            part(0, total, slot);
            for (((_, sum), o), po) in slot
                .stats
                .iter()
                .zip(out.chunks_exact_mut(head_dim))
                .zip(slot.o.chunks_exact(head_dim))
            {
                let inv = 1.0 / sum;
                o.iter_mut().zip(po).for_each(|(v, p)| *v = p * inv);
            }
            return;
        }
        let slots = &mut scratch[..parts];
        crate::nn::team::for_ranges(slots, 1, |i, slot| {
            part(i * total / parts, (i + 1) * total / parts, &mut slot[0]);
        });
        for (h, o) in out.chunks_exact_mut(head_dim).enumerate() {
            let max = slots
                .iter()
                .map(|s| s.stats[h].0)
                .fold(f32::NEG_INFINITY, f32::max);
            let mut sum = 0f32;
            o.fill(0.0);
            for s in slots.iter() {
                let w = (s.stats[h].0 - max).exp();
                sum += s.stats[h].1 * w;
                crate::nn::host::axpy(o, w, &s.o[h * head_dim..(h + 1) * head_dim]);
            }
            let inv = 1.0 / sum;
            o.iter_mut().for_each(|v| *v *= inv);
        }
    }

    /// Whether every projection keeps its weight on the host (see [`Linear::host`]).
    pub fn is_host(&self) -> bool {
        [&self.q_proj, &self.k_proj, &self.v_proj, &self.o_proj]
            .iter()
            .all(|l| l.host().is_some())
    }

    /// Bidirectional self-attention over a padded batch (encoders): no cache, no RoPE.
    ///
    /// # Shapes
    /// `x: [batch, seq, hidden]`, `key_bias: [batch, 1, 1, seq]` (0 for tokens, −∞ for padding)
    /// → `[batch, seq, hidden]`
    pub fn forward_encoder(&self, x: Tensor<3>, key_bias: Option<Tensor<4>>) -> Tensor<3> {
        let [b, seq, _] = x.dims();
        let AttentionConfig {
            heads,
            kv_heads,
            head_dim,
            ..
        } = self.cfg;
        let split = |t: Tensor<3>, h: usize| t.reshape([b, seq, h, head_dim]).swap_dims(1, 2);
        let q = split(self.q_proj.forward(x.clone()), heads);
        let k = split(self.k_proj.forward(x.clone()), kv_heads);
        let v = split(self.v_proj.forward(x), kv_heads);
        self.attend_inner(q, k, v, key_bias, false).0
    }

    /// softmax(scale·q·kᵀ [soft-capped] + bias)·v, then the output projection.
    ///
    /// # Shapes
    /// `q: [batch, heads, seq, head_dim]`, `k, v: [batch, kv_heads, total, head_dim]`, `bias`
    /// broadcastable to `[batch, kv_heads, group·seq, total]` → `[batch, seq, hidden]`
    fn attend_inner(
        &self,
        q: Tensor<4>,
        k: Tensor<4>,
        v: Tensor<4>,
        bias: Option<Tensor<4>>,
        weights: bool,
    ) -> (Tensor<3>, Option<Tensor<4>>) {
        let [b, heads, seq, head_dim] = q.dims();
        let kv_heads = k.dims()[1];
        let group = heads / kv_heads;
        // Query head h uses kv head h / group: stacking each group's queries along the sequence
        // axis lets every kv head serve its group in one matmul, without copying K or V.
        let q = q.reshape([b, kv_heads, group * seq, head_dim]);
        let mut scores = q.matmul(k.swap_dims(2, 3)).mul_scalar(self.cfg.scale);
        if let Some(cap) = self.cfg.softcap {
            scores = scores.div_scalar(cap).tanh().mul_scalar(cap);
        }
        if let Some(bias) = bias {
            scores = scores + bias;
        }
        // Softmax in f32 whatever the compute dtype, as transformers' eager attention.
        let dtype = scores.dtype();
        let probs = activation::softmax(scores.cast(FloatDType::F32), 3).cast(dtype);
        let total = probs.dims()[3];
        let kept = weights.then(|| probs.clone().reshape([b, heads, seq, total]));
        let out = probs
            .matmul(v)
            .reshape([b, heads, seq, head_dim])
            .swap_dims(1, 2)
            .reshape([b, seq, heads * head_dim]);
        (self.o_proj.forward(out), kept)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(m: Option<Tensor<4>>) -> Vec<Vec<bool>> {
        let m = m.expect("a mask");
        let [b, _, r, c] = m.dims();
        let v = m.into_data().convert::<f32>().try_to_vec::<f32>().unwrap();
        (0..b * r)
            .map(|i| (0..c).map(|j| v[i * c + j] == 0.0).collect())
            .collect()
    }

    #[test]
    fn causal_mask_at_an_offset() {
        let d = Device::cpu();
        // Queries at 2,3 over keys 0..4.
        let m = rows(build_mask(2, 2, 0, None, 1, &[0], &d));
        assert_eq!(
            m,
            vec![vec![true, true, true, false], vec![true, true, true, true]]
        );
        assert!(build_mask(5, 1, 0, None, 2, &[0], &d).is_none());
    }

    #[test]
    fn sliding_window_mask() {
        let d = Device::cpu();
        // Window 2: query 3 sees keys 2 and 3 only; keys start at absolute 1.
        let m = rows(build_mask(2, 2, 1, Some(2), 1, &[0], &d));
        assert_eq!(m, vec![vec![true, true, false], vec![false, true, true]]);
        // A single query whose window covers the cache needs no mask.
        assert!(build_mask(3, 1, 2, Some(2), 1, &[0], &d).is_none());
        assert!(build_mask(3, 1, 1, Some(2), 1, &[0], &d).is_some());
    }

    #[test]
    fn left_padded_rows() {
        let d = Device::cpu();
        // Two rows of 3 slots; row 1 has 2 pads: its pad queries see only themselves, its
        // real query sees only itself among the keys.
        let m = rows(build_mask(0, 3, 0, None, 1, &[0, 2], &d));
        assert_eq!(m.len(), 6);
        assert_eq!(m[2], vec![true, true, true]);
        assert_eq!(m[3], vec![true, false, false]);
        assert_eq!(m[4], vec![false, true, false]);
        assert_eq!(m[5], vec![false, false, true]);
        // Decoding past the pads still needs the mask to hide them.
        assert!(build_mask(3, 1, 0, None, 1, &[0, 2], &d).is_some());
        assert!(build_mask(3, 1, 0, None, 1, &[0, 0], &d).is_none());
        assert_eq!(positions(3, 2, &[0, 2]), vec![3, 4, 1, 2]);
    }
}
