//! Executors: how a model's layers run.
//!
//! A model states its forward pass once, as calls on an [`Exec`] (embed, norm, attention, MLP,
//! residual adds, the head), and never learns which executor runs it; an executor never learns
//! which model it runs. Two exist:
//!
//! - [`TensorExec`]: burn's tensors, on any backend (GPU, and the reference on CPU): batches of
//!   left-padded rows, taps (hidden states, attention weights), rolling windows in a prompt.
//! - [`HostExec`]: kiln's CPU kernels on plain host vectors: one sequence's decode step is one
//!   parallel pass per projection; a prefill, or a decode step of a left-padded batch, runs the
//!   projections as GEMMs over every row (each weight read once for all of them) and each
//!   token's attention over its row's prefix of the host KV cache. No tensor operation per
//!   layer.
//!
//! [`run`] picks one per pass: the host executor where every weight the pass reads is a host
//! weight ([`HostPlan`]) and the pass has no taps and no prompt that rolls a sliding window;
//! the tensor executor otherwise.

mod host;
mod tensor;

pub(crate) use host::HostExec;
pub(crate) use tensor::TensorExec;

use burn::tensor::{Tensor, TensorData};

use crate::device::Device;
use crate::error::Result;
use crate::models::{CausalLm, Input, LmInfo, LogitsFor, Taps};
use crate::nn::{
    Attention, Embedding, GatedMlp, KvCache, LayerNorm, Linear, Mlp, RmsNorm, RotaryEmbedding,
    SparseMoe,
};

/// The operations a decoder's forward pass is written in. `X` is the pass's hidden states,
/// `[rows, seq, hidden]`, in whatever form the executor keeps them.
pub(crate) trait Exec {
    /// Hidden states.
    type X;

    /// The pass's token embeddings.
    fn embed(&mut self, table: &Embedding) -> Self::X;

    /// `x` plus the rows of `table` at each token's position (learned absolute positions;
    /// padding counts from the row's first token, see [`Input`]).
    fn add_positions(&mut self, x: Self::X, table: &Embedding) -> Self::X;

    /// LayerNorm of `x` (`x` is kept for the residual).
    fn layer_norm(&mut self, norm: &LayerNorm, x: &Self::X) -> Self::X;

    /// A plain (ungated) MLP.
    fn mlp(&mut self, mlp: &Mlp, x: Self::X) -> Self::X;

    /// A copy of `x` (a block whose input is also its residual, without a norm between).
    fn copy(&mut self, x: &Self::X) -> Self::X;

    /// `x · s`.
    fn scale(&mut self, x: Self::X, s: f32) -> Self::X;

    /// `x + y` (a residual connection).
    fn add(&mut self, x: Self::X, y: Self::X) -> Self::X;

    /// RMSNorm of `x` (`x` is kept for the residual).
    fn rms_norm(&mut self, norm: &RmsNorm, x: &Self::X) -> Self::X;

    /// RMSNorm of `x`, which is not needed any more.
    fn rms_norm_in_place(&mut self, norm: &RmsNorm, x: Self::X) -> Self::X;

    /// Self-attention of layer `layer` over its KV cache (which grows by the pass's tokens),
    /// with `rope` (`None`: the model has no rotary positions).
    fn attention(
        &mut self,
        layer: usize,
        attn: &Attention,
        rope: Option<&RotaryEmbedding>,
        x: Self::X,
    ) -> Result<Self::X>;

    /// A gated MLP.
    fn gated_mlp(&mut self, mlp: &GatedMlp, x: Self::X) -> Self::X;

    /// A sparse mixture of experts.
    fn moe(&mut self, moe: &SparseMoe, x: Self::X) -> Result<Self::X>;

    /// Records `x` as the input of the next layer when the pass is tapped.
    fn tap_hidden(&mut self, x: &Self::X);

    /// The final norm and the output head over the positions the pass asks for, then `post`.
    ///
    /// # Shapes
    /// `[rows · n, vocab]`, `n = 1` for [`LogitsFor::Last`], `seq` for [`LogitsFor::All`]
    fn logits<N: HiddenNorm>(
        &mut self,
        x: Self::X,
        norm: &N,
        head: &Linear,
        post: LogitsPost,
    ) -> Result<Tensor<2>>;
}

/// A final norm: RMSNorm or LayerNorm.
pub(crate) trait HiddenNorm {
    /// Over the last axis of `x`.
    fn tensor(&self, x: Tensor<3>) -> Tensor<3>;
    /// In place over each row of `x`.
    fn host(&self, x: &mut [f32]);
}

impl HiddenNorm for RmsNorm {
    fn tensor(&self, x: Tensor<3>) -> Tensor<3> {
        self.forward(x)
    }

    fn host(&self, x: &mut [f32]) {
        self.forward_host(x)
    }
}

impl HiddenNorm for LayerNorm {
    fn tensor(&self, x: Tensor<3>) -> Tensor<3> {
        self.forward(x)
    }

    fn host(&self, x: &mut [f32]) {
        self.forward_host(x)
    }
}

/// What a model does to its head's output: `logits / divisor` (Granite's `logits_scaling`),
/// then `cap · tanh(logits / cap)` (Gemma 2's final soft-cap).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct LogitsPost {
    pub divisor: Option<f64>,
    pub softcap: Option<f64>,
}

impl LogitsPost {
    /// Soft-capping only.
    pub fn softcap(cap: Option<f64>) -> Self {
        Self {
            softcap: cap,
            ..Self::default()
        }
    }

    /// Applies it to host logits.
    pub fn apply_host(self, logits: &mut [f32]) {
        if let Some(d) = self.divisor {
            let d = d as f32;
            logits.iter_mut().for_each(|l| *l /= d);
        }
        if let Some(cap) = self.softcap {
            let cap = cap as f32;
            logits.iter_mut().for_each(|l| *l = (*l / cap).tanh() * cap);
        }
    }

    /// Applies it to logits on the device.
    pub fn apply<const D: usize>(self, mut logits: Tensor<D>) -> Tensor<D> {
        if let Some(d) = self.divisor {
            logits = logits.div_scalar(d);
        }
        match self.softcap {
            Some(cap) => logits.div_scalar(cap).tanh().mul_scalar(cap),
            None => logits,
        }
    }
}

/// A model whose forward pass is written once over [`Exec`].
pub(crate) trait Forward {
    /// Runs the pass on `e`.
    fn forward<E: Exec>(&self, e: &mut E) -> Result<Tensor<2>>;

    /// When the host executor may run this model.
    fn host_plan(&self) -> &HostPlan;

    /// Query heads per key/value head (the tensor executor's masks stack a group's queries).
    fn group(&self) -> usize;

    /// What the model reports about itself.
    fn lm_info(&self) -> &LmInfo;

    /// The device its weights live on.
    fn device(&self) -> &Device;
}

/// Every model written over [`Exec`] is a [`CausalLm`]: each pass goes through [`run`].
impl<M: Forward + Send + Sync + std::fmt::Debug> CausalLm for M {
    fn forward_tapped(
        &self,
        input: Input<'_>,
        cache: &mut KvCache,
        which: LogitsFor,
        taps: Option<&mut Taps>,
    ) -> Result<Tensor<2>> {
        run(self, input, cache, which, taps, self.device())
    }

    fn info(&self) -> &LmInfo {
        self.lm_info()
    }
}

/// When a model runs on the host executor, decided once at load.
#[derive(Debug, Clone)]
pub(crate) struct HostPlan {
    /// Decode steps (one token of each row).
    pub decode: bool,
    /// Prefills (several tokens of each row).
    pub prefill: bool,
    /// Each layer's sliding window: a prompt that would roll one takes the tensor executor
    /// (the host one appends a prompt's positions before attending to them).
    pub windows: Vec<Option<usize>>,
}

impl HostPlan {
    /// The plan on `device` for a model whose weights are all host weights (`all_host`).
    pub fn new(device: &Device, all_host: bool, windows: Vec<Option<usize>>) -> Self {
        let decode = all_host && device.decodes_on_host();
        Self {
            decode,
            prefill: decode && device.prefills_on_host(),
            windows,
        }
    }

    fn applies(&self, input: &Input<'_>, start: usize, taps: bool) -> bool {
        let n = input.seq();
        if taps || n == 0 {
            return false;
        }
        if n == 1 {
            return self.decode;
        }
        let rolls = |w: &Option<usize>| w.is_some_and(|w| start + n > w);
        self.prefill && !self.windows.iter().any(rolls)
    }
}

/// Runs one forward pass of `model` on the executor that fits it (see the module's docs).
///
/// # Shapes
/// returns `[rows · n, vocab]` (see [`Exec::logits`])
pub(crate) fn run<M: Forward>(
    model: &M,
    input: Input<'_>,
    cache: &mut KvCache,
    which: LogitsFor,
    taps: Option<&mut Taps>,
    device: &Device,
) -> Result<Tensor<2>> {
    if model
        .host_plan()
        .applies(&input, cache.len(), taps.is_some())
    {
        // On this thread: its passes run on kiln's team (`nn::team`), which it joins, and the
        // switchable adapter chosen on it applies.
        let mut e = HostExec::new(input, cache, which, device);
        return model.forward(&mut e);
    }
    let mut e = TensorExec::new(input, cache, which, taps, model.group(), device);
    model.forward(&mut e)
}

/// Host logits `[n, vocab]` as a tensor on `device`.
pub(crate) fn logits_tensor(logits: Vec<f32>, vocab: usize, device: &Device) -> Tensor<2> {
    let n = logits.len() / vocab.max(1);
    Tensor::from_data(TensorData::new(logits, [n, vocab]), device.floats())
}
