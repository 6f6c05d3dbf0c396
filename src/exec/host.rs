//! The host executor: kiln's CPU kernels on plain host vectors, for one sequence or a
//! left-padded batch.

use burn::tensor::Tensor;

use crate::device::Device;
use crate::error::{Error, Result};
use crate::exec::{logits_tensor, Exec, HiddenNorm, LogitsPost};
use crate::models::{Input, LogitsFor};
use crate::nn::attention::{positions, DecodeScratch};
use crate::nn::{
    Attention, Embedding, GatedMlp, KvCache, LayerNorm, Linear, Mlp, RmsNorm, RotaryEmbedding,
    SparseMoe,
};

/// One forward pass of `input` (from cache slot `cache.len()`) on the host (see
/// [`crate::exec`]). Hidden states are `[rows · seq, hidden]` row-major vectors.
pub(crate) struct HostExec<'a> {
    input: Input<'a>,
    cache: &'a mut KvCache,
    which: LogitsFor,
    device: Device,
    start: usize,
    /// cos and sin of the pass's positions (row by row), one pair per rotary embedding the
    /// layers use (keyed by its address).
    tables: Vec<(usize, Vec<f32>, Vec<f32>)>,
    /// A decode step's buffers, reused layer after layer.
    scratch: DecodeScratch,
    /// Hidden-state buffers given back by one operation for the next: a decode step allocates
    /// none after its first layer.
    free: Vec<Vec<f32>>,
}

impl<'a> HostExec<'a> {
    pub(crate) fn new(
        input: Input<'a>,
        cache: &'a mut KvCache,
        which: LogitsFor,
        device: &Device,
    ) -> Self {
        let start = cache.len();
        Self {
            input,
            cache,
            which,
            device: device.clone(),
            start,
            tables: Vec::new(),
            scratch: DecodeScratch::default(),
            free: Vec::new(),
        }
    }

    /// Token rows of the pass (every row's new tokens).
    fn n(&self) -> usize {
        self.input.ids.len()
    }

    /// One token of one unpadded sequence: a decode step's kernels.
    fn one_token(&self) -> bool {
        self.n() == 1 && self.input.pads == [0]
    }

    /// A buffer of `len` values (contents unspecified).
    fn buffer(&mut self, len: usize) -> Vec<f32> {
        let mut b = self.free.pop().unwrap_or_default();
        b.resize(len, 0.0);
        b
    }

    fn give_back(&mut self, b: Vec<f32>) {
        self.free.push(b);
    }

    fn table(&mut self, rope: &RotaryEmbedding) -> usize {
        let key = rope as *const RotaryEmbedding as usize;
        if let Some(i) = self.tables.iter().position(|t| t.0 == key) {
            return i;
        }
        let (seq, pads) = (self.input.seq(), self.input.pads);
        let (cos, sin) = rope.host_tables(&positions(self.start, seq, pads));
        self.tables.push((key, cos, sin));
        self.tables.len() - 1
    }
}

impl Exec for HostExec<'_> {
    type X = Vec<f32>;

    fn embed(&mut self, table: &Embedding) -> Vec<f32> {
        let mut x = Vec::new();
        for &id in self.input.ids {
            x.extend(table.forward_host(id, &self.device));
        }
        x
    }

    fn add_positions(&mut self, mut x: Vec<f32>, table: &Embedding) -> Vec<f32> {
        let (seq, pads) = (self.input.seq(), self.input.pads);
        let hidden = x.len() / self.n().max(1);
        for (row, p) in x.chunks_mut(hidden).zip(positions(self.start, seq, pads)) {
            let pos = table.forward_host(p as u32, &self.device);
            row.iter_mut().zip(&pos).for_each(|(v, p)| *v += p);
        }
        x
    }

    fn layer_norm(&mut self, norm: &LayerNorm, x: &Vec<f32>) -> Vec<f32> {
        let mut h = self.copy(x);
        norm.forward_host(&mut h);
        h
    }

    fn mlp(&mut self, mlp: &Mlp, x: Vec<f32>) -> Vec<f32> {
        let out = mlp.forward_host_rows(&x, self.n());
        self.give_back(x);
        out
    }

    fn copy(&mut self, x: &Vec<f32>) -> Vec<f32> {
        let mut y = self.buffer(x.len());
        y.copy_from_slice(x);
        y
    }

    fn scale(&mut self, mut x: Vec<f32>, s: f32) -> Vec<f32> {
        x.iter_mut().for_each(|v| *v *= s);
        x
    }

    fn add(&mut self, mut x: Vec<f32>, y: Vec<f32>) -> Vec<f32> {
        x.iter_mut().zip(&y).for_each(|(x, y)| *x += y);
        self.give_back(y);
        x
    }

    fn rms_norm(&mut self, norm: &RmsNorm, x: &Vec<f32>) -> Vec<f32> {
        let mut h = self.copy(x);
        norm.forward_host(&mut h);
        h
    }

    fn rms_norm_in_place(&mut self, norm: &RmsNorm, mut x: Vec<f32>) -> Vec<f32> {
        norm.forward_host(&mut x);
        x
    }

    fn attention(
        &mut self,
        layer: usize,
        attn: &Attention,
        rope: Option<&RotaryEmbedding>,
        x: Vec<f32>,
    ) -> Result<Vec<f32>> {
        let t = rope.map(|r| self.table(r));
        let start = self.start;
        if self.one_token() {
            let mut out = self.buffer(x.len());
            let rope = rope.zip(t).map(|(r, t)| {
                let (_, cos, sin) = &self.tables[t];
                (r, cos.as_slice(), sin.as_slice())
            });
            let cache = self.cache.layer_mut(layer);
            attn.forward_host_into(&x, start, rope, cache, &mut out, &mut self.scratch);
            self.give_back(x);
            return Ok(out);
        }
        let rope = rope.zip(t).map(|(r, t)| {
            let (_, cos, sin) = &self.tables[t];
            (r, cos.as_slice(), sin.as_slice())
        });
        let (rows, n, pads) = (self.input.rows(), self.input.seq(), self.input.pads);
        let cache = self.cache.layer_mut(layer);
        let out = attn
            .forward_host_batch(&x, [rows, n], start, pads, rope, cache)
            .ok_or_else(|| {
                Error::Backend(format!(
                    "layer {layer}: a prompt of {n} tokens from position {start} rolls its \
                     sliding window on the host executor"
                ))
            })?;
        self.give_back(x);
        Ok(out)
    }

    fn gated_mlp(&mut self, mlp: &GatedMlp, x: Vec<f32>) -> Vec<f32> {
        let out = if self.one_token() {
            let mut out = self.buffer(x.len());
            mlp.forward_host_into(&x, &mut out, &mut self.scratch);
            out
        } else {
            mlp.forward_host_rows(&x, self.n())
        };
        self.give_back(x);
        out
    }

    fn moe(&mut self, moe: &SparseMoe, x: Vec<f32>) -> Result<Vec<f32>> {
        let out = moe.forward_host_rows(&x, self.n());
        self.give_back(x);
        Ok(out)
    }

    fn tap_hidden(&mut self, _x: &Vec<f32>) {}

    fn logits<N: HiddenNorm>(
        &mut self,
        mut x: Vec<f32>,
        norm: &N,
        head: &Linear,
        post: LogitsPost,
    ) -> Result<Tensor<2>> {
        let (rows, n) = (self.input.rows(), self.input.seq());
        let hidden = x.len() / (rows * n).max(1);
        if self.which == LogitsFor::Last && n > 1 {
            // Each row's last token.
            x = (0..rows)
                .flat_map(|r| &x[((r + 1) * n - 1) * hidden..(r + 1) * n * hidden])
                .copied()
                .collect();
        }
        norm.host(&mut x);
        let mut logits = head.forward_host(&x, x.len() / hidden.max(1));
        post.apply_host(&mut logits);
        Ok(logits_tensor(logits, head.d_out(), &self.device))
    }
}
