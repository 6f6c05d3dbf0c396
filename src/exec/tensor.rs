//! The tensor executor: burn's tensors on any backend, batches of left-padded rows, taps.

use burn::tensor::Tensor;

use crate::device::Device;
use crate::error::Result;
use crate::exec::{Exec, HiddenNorm, LogitsPost};
use crate::models::{head_logits, Input, LogitsFor, Taps};
use crate::nn::attention::positions;
use crate::nn::{
    Attention, AttentionContext, Embedding, GatedMlp, KvCache, LayerNorm, Linear, Mlp, RmsNorm,
    RotaryEmbedding, SparseMoe,
};

/// One forward pass on burn's tensors (see [`crate::exec`]).
pub(crate) struct TensorExec<'a> {
    input: Input<'a>,
    cache: &'a mut KvCache,
    which: LogitsFor,
    taps: Option<&'a mut Taps>,
    group: usize,
    /// Cache slot of the pass's first token (the cache grows layer by layer during the pass).
    start: usize,
    device: Device,
    /// Positions, rotary tables and masks, one context per rotary embedding the layers use
    /// (keyed by its address; `0` for none), shared by the layers that use it.
    contexts: Vec<(usize, AttentionContext)>,
}

impl<'a> TensorExec<'a> {
    pub(crate) fn new(
        input: Input<'a>,
        cache: &'a mut KvCache,
        which: LogitsFor,
        taps: Option<&'a mut Taps>,
        group: usize,
        device: &Device,
    ) -> Self {
        Self {
            start: cache.len(),
            input,
            cache,
            which,
            taps,
            group,
            device: device.clone(),
            contexts: Vec::new(),
        }
    }

    fn context(&mut self, rope: Option<&RotaryEmbedding>) -> usize {
        let key = rope.map_or(0, |r| r as *const RotaryEmbedding as usize);
        if let Some(i) = self.contexts.iter().position(|(k, _)| *k == key) {
            return i;
        }
        let ctx = AttentionContext::batched(
            rope,
            self.start,
            self.input.seq(),
            self.input.pads,
            self.group,
            &self.device,
        );
        self.contexts.push((key, ctx));
        self.contexts.len() - 1
    }
}

impl Exec for TensorExec<'_> {
    type X = Tensor<3>;

    fn embed(&mut self, table: &Embedding) -> Tensor<3> {
        table.forward_rows(self.input.ids, self.input.rows(), &self.device)
    }

    fn add_positions(&mut self, x: Tensor<3>, table: &Embedding) -> Tensor<3> {
        let (seq, pads) = (self.input.seq(), self.input.pads);
        let ids: Vec<u32> = positions(self.start, seq, pads)
            .into_iter()
            .map(|p| p as u32)
            .collect();
        x + table.forward_rows(&ids, self.input.rows(), &self.device)
    }

    fn layer_norm(&mut self, norm: &LayerNorm, x: &Tensor<3>) -> Tensor<3> {
        norm.forward(x.clone())
    }

    fn mlp(&mut self, mlp: &Mlp, x: Tensor<3>) -> Tensor<3> {
        mlp.forward(x)
    }

    fn copy(&mut self, x: &Tensor<3>) -> Tensor<3> {
        x.clone()
    }

    fn scale(&mut self, x: Tensor<3>, s: f32) -> Tensor<3> {
        x.mul_scalar(s)
    }

    fn add(&mut self, x: Tensor<3>, y: Tensor<3>) -> Tensor<3> {
        x + y
    }

    fn rms_norm(&mut self, norm: &RmsNorm, x: &Tensor<3>) -> Tensor<3> {
        norm.forward(x.clone())
    }

    fn rms_norm_in_place(&mut self, norm: &RmsNorm, x: Tensor<3>) -> Tensor<3> {
        norm.forward(x)
    }

    fn attention(
        &mut self,
        layer: usize,
        attn: &Attention,
        rope: Option<&RotaryEmbedding>,
        x: Tensor<3>,
    ) -> Result<Tensor<3>> {
        let c = self.context(rope);
        let ctx = &self.contexts[c].1;
        let max_len = self.cache.max_len();
        let cache = self.cache.layer_mut(layer);
        Ok(match self.taps.as_deref_mut().filter(|t| t.attentions) {
            Some(t) => {
                let (out, probs) = attn.forward_with_weights(x, ctx, cache, max_len);
                t.attn.push(probs);
                out
            }
            None => attn.forward(x, ctx, cache, max_len),
        })
    }

    fn gated_mlp(&mut self, mlp: &GatedMlp, x: Tensor<3>) -> Tensor<3> {
        mlp.forward(x)
    }

    fn moe(&mut self, moe: &SparseMoe, x: Tensor<3>) -> Result<Tensor<3>> {
        moe.forward(x)
    }

    fn tap_hidden(&mut self, x: &Tensor<3>) {
        Taps::hidden(&mut self.taps, x);
    }

    fn logits<N: HiddenNorm>(
        &mut self,
        x: Tensor<3>,
        norm: &N,
        head: &Linear,
        post: LogitsPost,
    ) -> Result<Tensor<2>> {
        if self.taps.as_ref().is_some_and(|t| t.hidden_states) {
            Taps::hidden(&mut self.taps, &norm.tensor(x.clone()));
        }
        let logits = head_logits(x, self.which, |x| norm.tensor(x), head);
        Ok(post.apply(logits))
    }
}
