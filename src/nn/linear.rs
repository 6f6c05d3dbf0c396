//! Linear layer loaded from a PyTorch-layout (`[out, in]`) checkpoint weight.

use burn::tensor::{module, Tensor, TensorData};
use rayon::prelude::*;

use std::sync::Arc;

use burn::tensor::FloatDType;

use crate::device::Device;
use crate::error::Result;
use crate::loading::LoraDelta;
use crate::loading::WeightStore;
use crate::nn::quant::QActs;
use crate::nn::{HalfMatrix, QuantMatrix, Quantization};

/// `y = x Wᵀ + b`, with `W` stored transposed (`[in, out]`) so the matmul reads it row-major.
/// A weight larger than the device's [`Device::max_tensor_bytes`] (a big vocabulary's output
/// head on a GPU) is stored as blocks of output columns, multiplied one by one. On CPU devices
/// an f16/bf16 weight stays as stored, memory-mapped, and runs through kiln's own kernels
/// ([`HalfMatrix`]; see [`Device::keeps_half_weights`]).
#[derive(Debug, Clone)]
pub struct Linear {
    weight: Vec<Tensor<2>>,
    host: Option<Arc<HostWeight>>,
    bias: Option<Tensor<1>>,
    /// The bias on the host, kept with a host weight (for [`Linear::forward_host`]).
    host_bias: Option<Vec<f32>>,
    /// Switchable LoRA updates, by adapter slot (empty without switchable adapters); the one
    /// of the slot active on this thread ([`with_adapter_slot`]) is added to the output.
    slots: Vec<Option<SlotUpdate>>,
}

/// A switchable adapter's update of one layer: on the host, and on the device for layers that
/// multiply there.
#[derive(Debug, Clone)]
struct SlotUpdate {
    delta: Arc<LoraDelta>,
    /// `Aᵀ` `[in, r]` and `Bᵀ` `[r, out]` (scaled) as device tensors (tensor-path layers).
    tensors: Option<(Tensor<2>, Tensor<2>)>,
}

thread_local! {
    static ACTIVE_SLOT: std::cell::Cell<Option<usize>> = const { std::cell::Cell::new(None) };
}

/// Runs `f` with switchable adapter `slot` active for every [`Linear`] it runs on this thread
/// (`None`: the base model). Sessions set it around their forward passes.
pub(crate) fn with_adapter_slot<R>(slot: Option<usize>, f: impl FnOnce() -> R) -> R {
    struct Restore(Option<usize>);
    impl Drop for Restore {
        fn drop(&mut self) {
            ACTIVE_SLOT.with(|a| a.set(self.0));
        }
    }
    let _restore = Restore(ACTIVE_SLOT.with(|a| a.replace(slot)));
    f()
}

/// The switchable adapter slot active on this thread.
pub(crate) fn active_adapter_slot() -> Option<usize> {
    ACTIVE_SLOT.with(|a| a.get())
}

/// Buffers a decode step's GEMVs reuse from pass to pass (see
/// [`HostWeight::gemv_many_into`]).
pub(crate) struct GemvScratch {
    /// The activation row quantized for Q8 and for Q4 weights.
    acts: [QActs; 2],
}

impl Default for GemvScratch {
    fn default() -> Self {
        Self {
            acts: [QActs::empty(), QActs::empty()],
        }
    }
}

/// A weight kept on the host and multiplied by kiln's CPU kernels.
#[derive(Debug)]
pub enum HostWeight {
    /// f16/bf16 as stored in the file.
    Half(HalfMatrix),
    /// Quantized at load.
    Quant(QuantMatrix),
    /// A weight with a LoRA update kept apart: `y = W x + B (A x)`.
    Adapted(Box<HostWeight>, Arc<LoraDelta>),
}

impl HostWeight {
    /// `[rows, cols]` of the `[out, in]` matrix.
    pub fn shape(&self) -> [usize; 2] {
        match self {
            HostWeight::Half(m) => [m.rows(), m.cols()],
            HostWeight::Quant(m) => [m.rows(), m.cols()],
            HostWeight::Adapted(w, _) => w.shape(),
        }
    }

    /// `x · Wᵀ` for `n` rows of `x`.
    pub fn matmul_t(&self, x: &[f32], n: usize) -> Vec<f32> {
        match self {
            HostWeight::Half(m) => m.matmul_t(x, n),
            HostWeight::Quant(m) => m.matmul_t(x, n),
            HostWeight::Adapted(w, d) => {
                let mut y = w.matmul_t(x, n);
                d.add_product(x, n, &mut y);
                y
            }
        }
    }

    /// `W_i · x` for one activation row `x` and several weights of `x.len()` columns, in one
    /// parallel pass over all their rows (a decode step's q/k/v or gate/up projections: one
    /// round of thread synchronisation instead of one per matrix).
    pub fn gemv_many(weights: &[&HostWeight], x: &[f32]) -> Vec<Vec<f32>> {
        let bases: Vec<(&HostWeight, Option<&Arc<LoraDelta>>)> = weights
            .iter()
            .map(|w| match w {
                HostWeight::Adapted(base, d) => (base.as_ref(), Some(d)),
                other => (*other, None),
            })
            .collect();
        // The activation row quantized once per quantization kind among the weights.
        let mut acts: Vec<QActs> = Vec::new();
        for (base, _) in &bases {
            if let HostWeight::Quant(m) = base {
                if !acts.iter().any(|a| a.kind() == m.kind()) {
                    acts.push(m.quantize_row(x));
                }
            }
        }
        // One segment of rows per weight, plus one per LoRA update for its `A x` rows; the
        // updates' `B (A x)` are added after the pass.
        type RowsDot<'a> = Box<dyn Fn(usize, &mut [f32]) + Sync + 'a>;
        let mut dots: Vec<RowsDot<'_>> = Vec::new();
        let mut ends = Vec::new();
        let mut total = 0;
        let mut deltas = Vec::new();
        for (base, delta) in &bases {
            dots.push(match base {
                HostWeight::Half(m) => Box::new(m.rows_dot(x)),
                HostWeight::Quant(m) => {
                    let a = acts.iter().find(|a| a.kind() == m.kind());
                    Box::new(m.rows_dot(a.expect("quantized above")))
                }
                // Only half-precision weights are adapted (see `adapted`): never nested.
                HostWeight::Adapted(..) => unreachable!("adapters do not nest"),
            });
            total += base.shape()[0];
            ends.push(total);
            if let Some(d) = delta {
                dots.push(Box::new(move |k0, out: &mut [f32]| {
                    for (i, o) in out.iter_mut().enumerate() {
                        *o = crate::nn::host::dot_f32(d.a_row(k0 + i), x);
                    }
                }));
                deltas.push((total, *d));
                total += d.rank();
                ends.push(total);
            }
        }
        let mut y = vec![0f32; total];
        let row_bytes = bases
            .iter()
            .map(|(b, _)| b.byte_len() / b.shape()[0].max(1));
        let row_bytes = row_bytes.max().unwrap_or(0);
        // Few tasks a thread only where every weight's kernel wants them.
        let tasks = bases
            .iter()
            .map(|(b, d)| match b {
                HostWeight::Quant(m) if d.is_none() => m.decode_tasks_per_thread(),
                _ => crate::nn::host::TASKS_PER_THREAD,
            })
            .max()
            .unwrap_or(crate::nn::host::TASKS_PER_THREAD);
        crate::nn::host::for_row_ranges(&mut y, row_bytes, tasks, |r0, out| {
            // The task's rows may span several segments.
            let (mut r, mut out) = (r0, out);
            while !out.is_empty() {
                let i = ends.partition_point(|&e| e <= r);
                let first = if i == 0 { 0 } else { ends[i - 1] };
                let (part, rest) = out.split_at_mut((ends[i] - r).min(out.len()));
                dots[i](r - first, part);
                r += part.len();
                out = rest;
            }
        });
        let mut out = Vec::with_capacity(weights.len());
        let mut at = 0;
        let mut deltas = deltas.into_iter().peekable();
        for w in weights {
            let rows = w.shape()[0];
            let mut v = y[at..at + rows].to_vec();
            at += rows;
            if let Some((_, d)) = deltas.next_if(|(start, _)| *start == at) {
                d.add_update(&y[at..at + d.rank()], 1, &mut v);
                at += d.rank();
            }
            out.push(v);
        }
        out
    }

    /// [`HostWeight::gemv_many`] into `y` (the outputs one after another, `Σ rows` values),
    /// with the quantized activation rows kept in `scratch`: a decode step's passes allocate
    /// nothing. (Allocation metadata and fresh buffers are cold after a pass that streamed
    /// megabytes of weights through the caches: the allocating version spent microseconds a
    /// pass around each parallel pass of a few tens.) Adapted weights go through
    /// [`HostWeight::gemv_many`].
    pub(crate) fn gemv_many_into(
        weights: &[&HostWeight],
        x: &[f32],
        y: &mut [f32],
        scratch: &mut GemvScratch,
    ) {
        const MAX: usize = 8;
        let total: usize = weights.iter().map(|w| w.shape()[0]).sum();
        assert_eq!(y.len(), total, "gemv_many_into: output length");
        if weights.len() > MAX || weights.iter().any(|w| matches!(w, HostWeight::Adapted(..))) {
            let mut at = 0;
            for v in Self::gemv_many(weights, x) {
                y[at..at + v.len()].copy_from_slice(&v);
                at += v.len();
            }
            return;
        }
        // The activation row quantized once per quantization kind among the weights.
        let mut kinds: [Option<Quantization>; 2] = [None; 2];
        for w in weights {
            if let HostWeight::Quant(m) = w {
                let slot = match m.kind() {
                    Quantization::Q8 => 0,
                    Quantization::Q4 => 1,
                };
                if kinds[slot].is_none() {
                    scratch.acts[slot].fill(m.kind(), x, 1, x.len());
                    kinds[slot] = Some(m.kind());
                }
            }
        }
        let acts = &scratch.acts;
        let mut ends = [0usize; MAX];
        let mut at = 0;
        for (e, w) in ends.iter_mut().zip(weights) {
            at += w.shape()[0];
            *e = at;
        }
        let ends = &ends[..weights.len()];
        let row_bytes = weights
            .iter()
            .map(|w| w.byte_len() / w.shape()[0].max(1))
            .max()
            .unwrap_or(0);
        let tasks = weights
            .iter()
            .map(|w| match w {
                HostWeight::Quant(m) => m.decode_tasks_per_thread(),
                _ => crate::nn::host::TASKS_PER_THREAD,
            })
            .max()
            .unwrap_or(crate::nn::host::TASKS_PER_THREAD);
        crate::nn::host::for_row_ranges(y, row_bytes, tasks, |r0, out| {
            // The task's rows may span several weights.
            let (mut r, mut out) = (r0, out);
            while !out.is_empty() {
                let i = ends.partition_point(|&e| e <= r);
                let first = if i == 0 { 0 } else { ends[i - 1] };
                let (part, rest) = out.split_at_mut((ends[i] - r).min(out.len()));
                match weights[i] {
                    HostWeight::Half(m) => m.rows_dot(x)(r - first, part),
                    HostWeight::Quant(m) => {
                        let a = match m.kind() {
                            Quantization::Q8 => &acts[0],
                            Quantization::Q4 => &acts[1],
                        };
                        m.rows_dot(a)(r - first, part)
                    }
                    HostWeight::Adapted(..) => unreachable!("handled above"),
                }
                r += part.len();
                out = rest;
            }
        });
    }

    /// Bytes of weight data.
    pub fn byte_len(&self) -> usize {
        match self {
            HostWeight::Half(m) => m.byte_len(),
            HostWeight::Quant(m) => m.byte_len(),
            HostWeight::Adapted(w, d) => w.byte_len() + d.byte_len(),
        }
    }
}

impl Linear {
    /// Loads `{prefix}.weight` (`[out, in]`) and, if `bias`, `{prefix}.bias` (`[out]`).
    pub fn load(
        store: &mut WeightStore,
        prefix: &str,
        d_in: usize,
        d_out: usize,
        bias: bool,
        device: &Device,
    ) -> Result<Self> {
        let name = format!("{prefix}.weight");
        let layer = match Self::load_host(store, &name, d_out, d_in, store.quantization(), device)?
        {
            Some(l) => l,
            None => Self::from_pytorch(store.read_f32(&name, &[d_out, d_in])?, d_in, d_out, device),
        };
        let layer = layer.with_slots(store.slot_updates(&name, &[d_out, d_in])?, device);
        Ok(layer.with_bias(if bias {
            Some(store.take(&format!("{prefix}.bias"), [d_out], device)?)
        } else {
            None
        }))
    }

    /// `name` (`[rows, cols]`) kept on the host when the device does that: quantized with
    /// `quantize` (whole blocks only), else half precision when the file stores it so.
    fn load_host(
        store: &mut WeightStore,
        name: &str,
        rows: usize,
        cols: usize,
        quantize: Option<Quantization>,
        device: &Device,
    ) -> Result<Option<Self>> {
        if !device.keeps_half_weights() {
            return Ok(None);
        }
        if let Some(q) = quantize.filter(|_| QuantMatrix::fits(cols)) {
            let m = store.quantize(name, [rows, cols], 0..rows, q)?;
            return Ok(Some(Self::from_host(HostWeight::Quant(m))));
        }
        Ok(store
            .take_half_adapted(name, rows, cols)?
            .map(|(m, delta)| Self::from_host(adapted(HostWeight::Half(m), delta))))
    }

    /// A layer over a host `[out, in]` matrix (CPU only).
    pub fn from_host(w: HostWeight) -> Self {
        Self {
            weight: Vec::new(),
            host: Some(Arc::new(w)),
            bias: None,
            host_bias: None,
            slots: Vec::new(),
        }
    }

    /// The output head `lm_head` (`[vocab, hidden]`), or, when `tied`, a copy of the embedding
    /// table `embed_name` laid out for the head (a stored `lm_head.weight` is then ignored).
    pub fn load_head(
        store: &mut WeightStore,
        tied: bool,
        embed_name: &str,
        hidden: usize,
        vocab: usize,
        device: &Device,
    ) -> Result<Self> {
        let head_q = store.head_quantization();
        if tied {
            store.skip("lm_head.weight");
            if let Some(l) = Self::load_host(store, embed_name, vocab, hidden, head_q, device)? {
                return Ok(l);
            }
            let w = store.read_f32(embed_name, &[vocab, hidden])?;
            Ok(Self::from_pytorch(w, hidden, vocab, device))
        } else {
            let name = "lm_head.weight";
            match Self::load_host(store, name, vocab, hidden, head_q, device)? {
                Some(l) => Ok(l.with_slots(store.slot_updates(name, &[vocab, hidden])?, device)),
                None => Self::load(store, "lm_head", hidden, vocab, false, device),
            }
        }
    }

    /// Loads a fused `{prefix}.weight` (`[sum(parts), in]`, e.g. Phi-3's `qkv_proj`) as one
    /// layer per block of rows, in order.
    pub fn load_split(
        store: &mut WeightStore,
        prefix: &str,
        d_in: usize,
        parts: &[usize],
        device: &Device,
    ) -> Result<Vec<Self>> {
        let total: usize = parts.iter().sum();
        let updates = store.slot_updates(&format!("{prefix}.weight"), &[total, d_in])?;
        let layers = Self::load_split_parts(store, prefix, d_in, parts, device)?;
        Ok(with_part_slots(layers, parts, &updates, device))
    }

    fn load_split_parts(
        store: &mut WeightStore,
        prefix: &str,
        d_in: usize,
        parts: &[usize],
        device: &Device,
    ) -> Result<Vec<Self>> {
        let total: usize = parts.iter().sum();
        let name = format!("{prefix}.weight");
        if device.keeps_half_weights() {
            let q = store.quantization().filter(|_| QuantMatrix::fits(d_in));
            if let Some(q) = q {
                let mut row = 0;
                let mut out = Vec::with_capacity(parts.len());
                for &rows in parts {
                    let m = store.quantize(&name, [total, d_in], row..row + rows, q)?;
                    out.push(Self::from_host(HostWeight::Quant(m)));
                    row += rows;
                }
                return Ok(out);
            }
            if let Some((m, delta)) = store.take_half_adapted(&name, total, d_in)? {
                let mut row = 0;
                return Ok(parts
                    .iter()
                    .map(|&rows| {
                        let part = m.slice_rows(row, row + rows);
                        let d = delta
                            .as_ref()
                            .map(|d| Arc::new(d.slice_out(row, row + rows)));
                        row += rows;
                        Self::from_host(adapted(HostWeight::Half(part), d))
                    })
                    .collect());
            }
        }
        let w = store.read_f32(&name, &[total, d_in])?;
        let mut out = Vec::with_capacity(parts.len());
        let mut row = 0;
        for &rows in parts {
            let block = w[row * d_in..(row + rows) * d_in].to_vec();
            out.push(Self::from_pytorch(block, d_in, rows, device));
            row += rows;
        }
        Ok(out)
    }

    /// Loads a GPT-2 `Conv1D`: `{prefix}.weight` stored `[in, sum(parts)]` (already transposed)
    /// and `{prefix}.bias` (`[sum(parts)]`), as one layer per block of output columns.
    pub fn load_conv1d_split(
        store: &mut WeightStore,
        prefix: &str,
        d_in: usize,
        parts: &[usize],
        device: &Device,
    ) -> Result<Vec<Self>> {
        let total: usize = parts.iter().sum();
        let updates = store.slot_updates(&format!("{prefix}.weight"), &[d_in, total])?;
        let w = store.read_f32(&format!("{prefix}.weight"), &[d_in, total])?;
        let b = store.read_f32(&format!("{prefix}.bias"), &[total])?;
        let mut out = Vec::with_capacity(parts.len());
        let mut col = 0;
        for &cols in parts {
            let block: Vec<f32> = (0..d_in)
                .flat_map(|r| w[r * total + col..r * total + col + cols].iter().copied())
                .collect();
            let bias = b[col..col + cols].to_vec();
            out.push(Self {
                weight: vec![Tensor::from_data(
                    TensorData::new(block, [d_in, cols]),
                    device.floats(),
                )],
                host: None,
                bias: Some(Tensor::from_data(
                    TensorData::new(bias, [cols]),
                    device.floats(),
                )),
                host_bias: None,
                slots: Vec::new(),
            });
            col += cols;
        }
        Ok(with_part_slots(out, parts, &updates, device))
    }

    /// Builds the layer from a row-major `[out, in]` host weight (as PyTorch stores it).
    pub fn from_pytorch(w: Vec<f32>, d_in: usize, d_out: usize, device: &Device) -> Self {
        Self::from_pytorch_in_parts(w, d_in, d_out, device, device.max_tensor_bytes())
    }

    /// [`Linear::from_pytorch`] with the weight split into column blocks of at most
    /// `max_bytes` each.
    pub fn from_pytorch_in_parts(
        w: Vec<f32>,
        d_in: usize,
        d_out: usize,
        device: &Device,
        max_bytes: usize,
    ) -> Self {
        let t = transpose(&w, d_out, d_in);
        drop(w);
        let cols_per_part = (max_bytes / (4 * d_in.max(1))).clamp(1, d_out.max(1));
        let weight = if cols_per_part >= d_out {
            vec![Tensor::from_data(
                TensorData::new(t, [d_in, d_out]),
                device.floats(),
            )]
        } else {
            (0..d_out)
                .step_by(cols_per_part)
                .map(|c0| {
                    let c1 = (c0 + cols_per_part).min(d_out);
                    let part: Vec<f32> = t
                        .chunks(d_out)
                        .flat_map(|row| row[c0..c1].iter().copied())
                        .collect();
                    Tensor::from_data(TensorData::new(part, [d_in, c1 - c0]), device.floats())
                })
                .collect()
        };
        Self {
            weight,
            host: None,
            bias: None,
            host_bias: None,
            slots: Vec::new(),
        }
    }

    /// Attaches switchable adapter updates, by slot (see [`WeightStore::slot_updates`]).
    fn with_slots(mut self, updates: Vec<Option<Arc<LoraDelta>>>, device: &Device) -> Self {
        if updates.iter().all(Option::is_none) {
            return self;
        }
        let on_device = self.host.is_none();
        self.slots = updates
            .into_iter()
            .map(|u| {
                u.map(|delta| SlotUpdate {
                    tensors: on_device.then(|| delta.device_tensors(device)),
                    delta,
                })
            })
            .collect();
        self
    }

    /// The update of the switchable adapter active on this thread, if it changes this layer.
    fn active_slot(&self) -> Option<&SlotUpdate> {
        if self.slots.is_empty() {
            return None;
        }
        active_adapter_slot()
            .and_then(|i| self.slots.get(i))
            .and_then(Option::as_ref)
    }

    fn with_bias(mut self, bias: Option<Tensor<1>>) -> Self {
        if self.host.is_some() {
            self.host_bias = bias.clone().map(host_f32);
        }
        self.bias = bias;
        self
    }

    /// [`Linear::forward_host`] of one row `x` through several layers of the same input
    /// width, in one parallel pass when they all keep host weights.
    pub fn forward_host_many(layers: &[&Linear], x: &[f32]) -> Vec<Vec<f32>> {
        let hosts: Option<Vec<&HostWeight>> = layers.iter().map(|l| l.host()).collect();
        let Some(hosts) = hosts else {
            return layers.iter().map(|l| l.forward_host(x, 1)).collect();
        };
        let mut out = HostWeight::gemv_many(&hosts, x);
        for (y, l) in out.iter_mut().zip(layers) {
            if let Some(b) = &l.host_bias {
                y.iter_mut().zip(b).for_each(|(v, b)| *v += b);
            }
            if let Some(u) = l.active_slot() {
                u.delta.add_product(x, 1, y);
            }
        }
        out
    }

    /// [`Linear::forward_host_many`] into `out` (the layers' outputs one after another),
    /// allocating nothing when every layer keeps a host weight (see
    /// [`HostWeight::gemv_many_into`]).
    pub(crate) fn forward_host_many_into(
        layers: &[&Linear],
        x: &[f32],
        out: &mut [f32],
        scratch: &mut GemvScratch,
    ) {
        const MAX: usize = 8;
        let mut hosts: [Option<&HostWeight>; MAX] = [None; MAX];
        let all_host = layers.len() <= MAX
            && layers.iter().zip(hosts.iter_mut()).all(|(l, h)| {
                *h = l.host();
                h.is_some()
            });
        if !all_host {
            let mut at = 0;
            for y in Self::forward_host_many(layers, x) {
                out[at..at + y.len()].copy_from_slice(&y);
                at += y.len();
            }
            return;
        }
        let mut weights: [&HostWeight; MAX] = [hosts[0].expect("one layer at least"); MAX];
        for (w, h) in weights.iter_mut().zip(&hosts[..layers.len()]) {
            *w = h.expect("checked above");
        }
        HostWeight::gemv_many_into(&weights[..layers.len()], x, out, scratch);
        let mut at = 0;
        for l in layers {
            let y = &mut out[at..at + l.d_out()];
            at += y.len();
            if let Some(b) = &l.host_bias {
                y.iter_mut().zip(b).for_each(|(v, b)| *v += b);
            }
            if let Some(u) = l.active_slot() {
                u.delta.add_product(x, 1, y);
            }
        }
    }

    /// `y = x Wᵀ + b` on the host for `n` rows of `x` (`[n, in]` → `[n, out]`): kiln's CPU
    /// kernels over a host weight, no tensor involved. A layer without one (f32 weights on the
    /// device) runs its tensor path and reads the result back.
    pub fn forward_host(&self, x: &[f32], n: usize) -> Vec<f32> {
        let Some(m) = &self.host else {
            let device = self.weight[0].device();
            let d_in = x.len() / n.max(1);
            let t = Tensor::<3>::from_data(
                TensorData::new(x.to_vec(), [1, n, d_in]),
                (&device, self.weight[0].dtype()),
            );
            return host_f32(self.forward(t));
        };
        let mut y = m.matmul_t(x, n);
        if let Some(u) = self.active_slot() {
            u.delta.add_product(x, n, &mut y);
        }
        if let Some(b) = &self.host_bias {
            for row in y.chunks_mut(b.len().max(1)) {
                row.iter_mut().zip(b).for_each(|(v, b)| *v += b);
            }
        }
        y
    }

    /// # Shapes
    /// `x: [batch, seq, in]` → `[batch, seq, out]`
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        if let Some(m) = &self.host {
            let [b, s, d] = x.dims();
            let device = x.device();
            let xs = host_f32(x);
            let mut y = m.matmul_t(&xs, b * s);
            if let Some(u) = self.active_slot() {
                u.delta.add_product(&xs, b * s, &mut y);
            }
            let [rows, cols] = m.shape();
            debug_assert_eq!(d, cols);
            let out = Tensor::<3>::from_data(
                TensorData::new(y, [b, s, rows]),
                (&device, burn::tensor::DType::F32),
            );
            return match &self.bias {
                Some(bias) => out + bias.clone().unsqueeze::<3>(),
                None => out,
            };
        }
        if let Some(u) = self.active_slot() {
            let update = u.apply(x.clone());
            return self.forward_weights(x) + update;
        }
        self.forward_weights(x)
    }

    /// The tensor-path product (device weights).
    fn forward_weights(&self, x: Tensor<3>) -> Tensor<3> {
        match self.weight.as_slice() {
            [w] => module::linear(x, w.clone(), self.bias.clone()),
            parts => {
                let out = Tensor::cat(
                    parts
                        .iter()
                        .map(|w| module::linear(x.clone(), w.clone(), None))
                        .collect(),
                    2,
                );
                match &self.bias {
                    Some(b) => out + b.clone().unsqueeze::<3>(),
                    None => out,
                }
            }
        }
    }

    /// Output features.
    pub fn d_out(&self) -> usize {
        match &self.host {
            Some(m) => m.shape()[0],
            None => self.weight.iter().map(|w| w.dims()[1]).sum(),
        }
    }

    /// The host matrix, when the layer keeps one (CPU: half-precision or quantized).
    pub fn host(&self) -> Option<&HostWeight> {
        self.host.as_deref()
    }

    /// How many column blocks the weight is stored in (1 unless it is larger than the
    /// device's tensor limit, or a half-precision host matrix).
    pub fn parts(&self) -> usize {
        self.weight.len().max(1)
    }
}

impl SlotUpdate {
    /// `B (A x)` on the device. `x: [batch, seq, in]` → `[batch, seq, out]`.
    fn apply(&self, x: Tensor<3>) -> Tensor<3> {
        let (at, bt) = self
            .tensors
            .as_ref()
            .expect("device layers keep their updates as tensors");
        let [b, s, d] = x.dims();
        let out = bt.dims()[1];
        x.reshape([b * s, d])
            .matmul(at.clone())
            .matmul(bt.clone())
            .reshape([b, s, out])
    }
}

/// Gives each part of a fused weight (`parts` output rows each, in order) its share of the
/// switchable updates of the whole.
fn with_part_slots(
    layers: Vec<Linear>,
    parts: &[usize],
    updates: &[Option<Arc<LoraDelta>>],
    device: &Device,
) -> Vec<Linear> {
    if updates.iter().all(Option::is_none) {
        return layers;
    }
    let mut row = 0;
    layers
        .into_iter()
        .zip(parts)
        .map(|(l, &rows)| {
            let part = updates
                .iter()
                .map(|u| u.as_ref().map(|d| Arc::new(d.slice_out(row, row + rows))))
                .collect();
            row += rows;
            l.with_slots(part, device)
        })
        .collect()
}

/// `w`, with its LoRA update kept apart when there is one.
fn adapted(w: HostWeight, delta: Option<Arc<LoraDelta>>) -> HostWeight {
    match delta {
        Some(d) => HostWeight::Adapted(Box::new(w), d),
        None => w,
    }
}

/// A CPU tensor's values as f32 on the host.
pub(crate) fn host_f32<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.cast(FloatDType::F32)
        .into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .expect("f32 data after the conversion")
}

/// Transposes a row-major `[rows, cols]` matrix, in parallel over output rows.
fn transpose(src: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut out = vec![0f32; src.len()];
    out.par_chunks_mut(rows.max(1))
        .enumerate()
        .for_each(|(c, dst)| {
            for (r, d) in dst.iter_mut().enumerate() {
                *d = src[r * cols + c];
            }
        });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_weight_gives_the_same_output() {
        let d = Device::cpu();
        let (d_in, d_out) = (6, 10);
        let w: Vec<f32> = (0..d_in * d_out).map(|i| (i as f32 * 0.37).sin()).collect();
        let whole = Linear::from_pytorch_in_parts(w.clone(), d_in, d_out, &d, usize::MAX);
        let split = Linear::from_pytorch_in_parts(w, d_in, d_out, &d, 4 * d_in * 3);
        assert_eq!((whole.parts(), split.parts()), (1, 4));
        assert_eq!(split.d_out(), d_out);
        let x: Tensor<3> = Tensor::from_data(
            TensorData::new(
                (0..2 * d_in).map(|i| i as f32 - 3.0).collect::<Vec<_>>(),
                [1, 2, d_in],
            ),
            d.burn(),
        );
        let a = whole
            .forward(x.clone())
            .into_data()
            .try_to_vec::<f32>()
            .unwrap();
        let b = split.forward(x).into_data().try_to_vec::<f32>().unwrap();
        assert_eq!(a, b);
    }

    /// The decode step's allocation-free GEMV gives the allocating one's bits, for every mix
    /// of weight kinds, with one scratch reused across widths and kinds (stale buffers of a
    /// wider or other-kind row would show).
    #[test]
    fn gemv_many_into_matches_gemv_many() {
        use crate::nn::HalfKind;
        let weight = |rows: usize, cols: usize, seed: f32| -> Vec<f32> {
            (0..rows * cols)
                .map(|i| ((i as f32 + seed) * 0.731).sin() * 0.5)
                .collect()
        };
        let half = |kind, rows, cols, seed| {
            let w = weight(rows, cols, seed);
            let bits = w
                .iter()
                .map(|&v| match kind {
                    HalfKind::F16 => half::f16::from_f32(v).to_bits(),
                    HalfKind::Bf16 => half::bf16::from_f32(v).to_bits(),
                })
                .collect();
            HostWeight::Half(HalfMatrix::from_bits(kind, rows, cols, bits))
        };
        let quant = |kind, rows, cols, seed| {
            let w = weight(rows, cols, seed);
            HostWeight::Quant(QuantMatrix::quantize_rows(kind, rows, cols, |r, dst| {
                dst.copy_from_slice(&w[r * cols..(r + 1) * cols])
            }))
        };
        let mut scratch = GemvScratch::default();
        for cols in [576usize, 64, 1536, 96] {
            let x: Vec<f32> = (0..cols).map(|i| (i as f32 * 0.19).cos()).collect();
            let sets = [
                vec![
                    quant(Quantization::Q8, 300, cols, 1.0),
                    quant(Quantization::Q8, 70, cols, 2.0),
                ],
                vec![
                    quant(Quantization::Q4, 130, cols, 3.0),
                    quant(Quantization::Q8, 33, cols, 4.0),
                    half(HalfKind::Bf16, 50, cols, 5.0),
                ],
                vec![half(HalfKind::F16, 257, cols, 6.0)],
            ];
            for set in &sets {
                let refs: Vec<&HostWeight> = set.iter().collect();
                let want: Vec<f32> = HostWeight::gemv_many(&refs, &x).concat();
                let mut got = vec![f32::NAN; want.len()];
                HostWeight::gemv_many_into(&refs, &x, &mut got, &mut scratch);
                let same = want
                    .iter()
                    .zip(&got)
                    .all(|(a, b)| a.to_bits() == b.to_bits());
                assert!(same, "{cols} columns, {} weights", refs.len());
            }
        }
    }

    #[test]
    fn transpose_is_correct() {
        // [[1,2,3],[4,5,6]] -> [[1,4],[2,5],[3,6]]
        let t = super::transpose(&[1., 2., 3., 4., 5., 6.], 2, 3);
        assert_eq!(t, vec![1., 4., 2., 5., 3., 6.]);
    }
}
