//! Key/value cache, allocated in blocks and written in place; rolling for sliding-window layers.
//!
//! Each layer keeps one `[batch, kv_heads, capacity, head_dim]` buffer for keys and one for
//! values, holding absolute positions `start..len`. New positions are written into the buffer
//! with `slice_assign`; when it is full it grows by whole blocks (never one token at a time).
//! A sliding-window layer drops the positions no future query can see, a block at a time, so
//! its buffer stays near the window's size however long the sequence grows.
//!
//! CPU decoding on kiln's host path ([`LayerCache::append_host`]) keeps the same positions in
//! plain host vectors instead; a cache moves between the two forms (one copy) only when the
//! kind of pass changes, e.g. from a prompt's prefill to its first decoded token.

use burn::tensor::{FloatDType, Tensor, TensorData};

use crate::nn::host::KvSlice;
use crate::nn::linear::host_f32;

/// Positions added per growth step (and dropped per roll of a sliding-window cache).
pub const BLOCK: usize = 256;

/// How kiln's CPU path keeps cached keys and values ([`LayerCache::append_host`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum KvPrecision {
    /// f32, as computed: decoding through the cache gives the bits of a full recomputation's
    /// attention.
    #[default]
    F32,
    /// f16 (values beyond its range clamped to ±65504): half the bytes to hold and to stream
    /// through at every decoded token, each value rounded to 11 significant bits (llama.cpp's
    /// default cache type).
    F16,
}

impl KvPrecision {
    /// Parses `f32` or `f16` (command-line flags).
    pub fn from_name(name: &str) -> crate::Result<Self> {
        match name {
            "f32" => Ok(Self::F32),
            "f16" => Ok(Self::F16),
            other => Err(crate::Error::invalid_arg(
                "kv_precision",
                format!("unknown KV cache precision {other:?}; expected f32 or f16"),
            )),
        }
    }

    /// `f32` or `f16`.
    pub fn name(self) -> &'static str {
        match self {
            Self::F32 => "f32",
            Self::F16 => "f16",
        }
    }
}

/// One layer's keys and values.
#[derive(Debug, Clone, Default)]
pub struct LayerCache {
    k: Option<Tensor<4>>,
    v: Option<Tensor<4>>,
    /// Absolute position of buffer slot 0.
    start: usize,
    /// Absolute position after the last cached one.
    len: usize,
    /// The sliding window this layer rolls with, if any.
    window: Option<usize>,
    /// The host form (while `k`/`v` are `None`).
    host: Option<HostKv>,
    /// How the host form keeps its values.
    precision: KvPrecision,
}

/// A host cache's keys or values: f32, or f16 bits.
#[derive(Debug, Clone)]
enum KvBuf {
    F32(Vec<f32>),
    F16(Vec<u16>),
}

impl Default for KvBuf {
    fn default() -> Self {
        KvBuf::F32(Vec::new())
    }
}

/// `t`'s values rounded to f16 (clamped to its finite range, as [`f16_bits`] rounds), in `t`'s
/// dtype.
fn round_f16(t: Tensor<4>) -> Tensor<4> {
    let dtype = t.dtype();
    t.clamp(-65504.0, 65504.0).cast(FloatDType::F16).cast(dtype)
}

/// `v` as f16 bits, clamped to f16's finite range.
fn f16_bits(v: f32) -> u16 {
    half::f16::from_f32(v.clamp(-65504.0, 65504.0)).to_bits()
}

impl KvBuf {
    fn zeros(precision: KvPrecision, n: usize) -> Self {
        match precision {
            KvPrecision::F32 => KvBuf::F32(vec![0.0; n]),
            KvPrecision::F16 => KvBuf::F16(vec![0; n]),
        }
    }

    /// Writes `vals` from value `at` on.
    fn write(&mut self, at: usize, vals: &[f32]) {
        match self {
            KvBuf::F32(b) => b[at..at + vals.len()].copy_from_slice(vals),
            KvBuf::F16(b) => {
                // The crate's slice conversion (F16C where the CPU has it), then what overflowed
                // clamped as `f16_bits` clamps (only values beyond ±65504 round to infinity).
                use half::slice::HalfFloatSliceExt;
                let dst: &mut [half::f16] = bytemuck::cast_slice_mut(&mut b[at..at + vals.len()]);
                dst.convert_from_f32_slice(vals);
                for (o, &v) in dst.iter_mut().zip(vals) {
                    if o.is_infinite() {
                        *o = half::f16::from_bits(f16_bits(v));
                    }
                }
            }
        }
    }

    /// Copies `len` values from `from` of `src` (of the same precision) to `at`.
    fn copy_from(&mut self, at: usize, src: &KvBuf, from: usize, len: usize) {
        match (self, src) {
            (KvBuf::F32(d), KvBuf::F32(s)) => d[at..at + len].copy_from_slice(&s[from..from + len]),
            (KvBuf::F16(d), KvBuf::F16(s)) => d[at..at + len].copy_from_slice(&s[from..from + len]),
            _ => unreachable!("host caches keep one precision"),
        }
    }

    fn copy_within(&mut self, src: std::ops::Range<usize>, dest: usize) {
        match self {
            KvBuf::F32(b) => b.copy_within(src, dest),
            KvBuf::F16(b) => b.copy_within(src, dest),
        }
    }

    /// Appends `len` values from `at` to `out`, as f32.
    fn read_into(&self, at: usize, len: usize, out: &mut Vec<f32>) {
        match self {
            KvBuf::F32(b) => out.extend_from_slice(&b[at..at + len]),
            KvBuf::F16(b) => out.extend(
                b[at..at + len]
                    .iter()
                    .map(|&v| half::f16::from_bits(v).to_f32()),
            ),
        }
    }

    fn slice(&self) -> KvSlice<'_> {
        match self {
            KvBuf::F32(b) => KvSlice::F32(b),
            KvBuf::F16(b) => KvSlice::F16(b),
        }
    }
}

/// Keys and values on the host: positions `start..len` of each row of a batch, head after head
/// (`[rows, heads, cap, dim]`), so that each row's key/value head's positions are one run of
/// memory, which the attention kernels stream front to back.
#[derive(Debug, Clone, Default)]
struct HostKv {
    k: KvBuf,
    v: KvBuf,
    precision: KvPrecision,
    rows: usize,
    heads: usize,
    dim: usize,
    /// Positions each head has room for.
    cap: usize,
    /// Positions held.
    held: usize,
}

impl HostKv {
    fn with_capacity(precision: KvPrecision, [rows, heads, dim]: [usize; 3], cap: usize) -> Self {
        let n = rows * heads * cap * dim;
        Self {
            k: KvBuf::zeros(precision, n),
            v: KvBuf::zeros(precision, n),
            precision,
            rows,
            heads,
            dim,
            cap,
            held: 0,
        }
    }

    /// Runs of positions: one per (row, head).
    fn lanes(&self) -> usize {
        self.rows * self.heads
    }

    /// Room for `cap` positions, the held ones kept.
    fn regrow(&mut self, cap: usize) {
        let shape = [self.rows, self.heads, self.dim];
        let mut grown = Self::with_capacity(self.precision, shape, cap);
        let run = self.held * self.dim;
        for g in 0..self.lanes() {
            let (from, to) = (g * self.cap * self.dim, g * cap * self.dim);
            grown.k.copy_from(to, &self.k, from, run);
            grown.v.copy_from(to, &self.v, from, run);
        }
        grown.held = self.held;
        *self = grown;
    }

    /// Makes room for `extra` more positions (and [`BLOCK`] beyond) if there is not.
    fn reserve(&mut self, extra: usize) {
        if self.held + extra > self.cap {
            self.regrow(self.held + extra + BLOCK);
        }
    }

    /// Appends position `i` of `n` new ones of every row (`k`, `v`: `[rows, n, heads · dim]`),
    /// growing by doubling.
    fn push(&mut self, k: &[f32], v: &[f32], n: usize, i: usize) {
        if self.held == self.cap {
            self.regrow((2 * self.cap).max(BLOCK));
        }
        let (d, width) = (self.dim, self.heads * self.dim);
        for lane in 0..self.lanes() {
            let (r, g) = (lane / self.heads, lane % self.heads);
            let from = (r * n + i) * width + g * d;
            let at = (lane * self.cap + self.held) * d;
            self.k.write(at, &k[from..from + d]);
            self.v.write(at, &v[from..from + d]);
        }
        self.held += 1;
    }

    /// Drops the first `n` positions held.
    fn drop_front(&mut self, n: usize) {
        let n = n.min(self.held);
        let d = self.dim;
        for g in 0..self.lanes() {
            let base = g * self.cap * d;
            self.k.copy_within(base + n * d..base + self.held * d, base);
            self.v.copy_within(base + n * d..base + self.held * d, base);
        }
        self.held -= n;
    }
}

/// Keys and values visible to a decoded token on the host path: row `r`'s key/value head `g`'s
/// values at absolute position `first + t` start at `(r · kv_heads + g) · head_stride + t ·
/// head_dim` of `k` and `v` ([`HostKvView::of_row`] gives one row's view).
#[derive(Debug, Clone, Copy)]
pub struct HostKvView<'a> {
    /// Keys, `[rows, kv_heads, head_stride / head_dim, head_dim]`.
    pub k: KvSlice<'a>,
    /// Values, laid out as `k`.
    pub v: KvSlice<'a>,
    /// Absolute position of the first position held.
    pub first: usize,
    /// Positions held.
    pub held: usize,
    /// Values from one key/value head's positions to the next head's.
    pub head_stride: usize,
    /// Values of one head at one position.
    pub head_dim: usize,
    /// Key/value heads of one row.
    pub kv_heads: usize,
}

impl<'a> HostKvView<'a> {
    /// Row `r`'s keys and values alone.
    pub fn of_row(&self, r: usize) -> HostKvView<'a> {
        let skip = r * self.kv_heads * self.head_stride;
        HostKvView {
            k: self.k.skip(skip),
            v: self.v.skip(skip),
            ..*self
        }
    }

    /// Position `first + t`'s keys of every head (`[kv_heads, head_dim]`).
    pub fn key_row(&self, t: usize) -> Vec<f32> {
        self.row(self.k, t)
    }

    /// Position `first + t`'s values of every head.
    pub fn value_row(&self, t: usize) -> Vec<f32> {
        self.row(self.v, t)
    }

    fn row(&self, from: KvSlice<'_>, t: usize) -> Vec<f32> {
        let d = self.head_dim;
        (0..self.kv_heads)
            .flat_map(|g| (0..d).map(move |i| g * self.head_stride + t * d + i))
            .map(|i| from.get(i))
            .collect()
    }
}

/// Keys and values visible to a chunk of queries.
#[derive(Debug, Clone)]
pub struct CachedKv {
    /// `[batch, kv_heads, total, head_dim]`
    pub k: Tensor<4>,
    /// `[batch, kv_heads, total, head_dim]`
    pub v: Tensor<4>,
    /// Absolute position of `k[.., 0, ..]`.
    pub first: usize,
}

impl LayerCache {
    /// An empty cache whose host form keeps `precision`.
    pub fn with_precision(precision: KvPrecision) -> Self {
        Self {
            precision,
            ..Self::default()
        }
    }

    /// How the host form keeps its values.
    pub fn precision(&self) -> KvPrecision {
        self.precision
    }

    /// Positions seen so far (absolute).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Appends `k`/`v` and returns every position still held. With `window = Some(w)`, positions
    /// that no query from here on can see (more than `w - 1` before the chunk) may be dropped.
    ///
    /// # Shapes
    /// `k, v: [batch, kv_heads, new, head_dim]` → [`CachedKv`] with `total` positions
    pub fn append(
        &mut self,
        k: Tensor<4>,
        v: Tensor<4>,
        max_len: usize,
        window: Option<usize>,
    ) -> CachedKv {
        let [b, h, new, d] = k.dims();
        self.window = window;
        // An f16 cache holds f16 values in both forms: a prefill through tensors attends to
        // what decoding on the host will read.
        let (k, v) = match self.precision {
            KvPrecision::F16 => (round_f16(k), round_f16(v)),
            KvPrecision::F32 => (k, v),
        };
        if let Some(host) = self.host.take() {
            self.host_to_tensors(host, [h, d], &k);
        }
        if let Some(w) = window {
            let keep_from = self.len.saturating_sub(w.saturating_sub(1));
            if keep_from >= self.start + BLOCK {
                self.roll(keep_from, [b, h, d]);
            }
        }
        let held = self.len - self.start;
        let end = held + new;
        let capacity = self.k.as_ref().map_or(0, |t| t.dims()[2]);
        if end > capacity {
            let bound = match window {
                Some(w) => w + BLOCK + new,
                None => max_len,
            };
            let grown = (end.div_ceil(BLOCK) * BLOCK).min(bound.max(end));
            self.reallocate(grown, held, 0, [b, h, d], &k);
        }
        let range = [0..b, 0..h, held..end, 0..d];
        let kc = self
            .k
            .take()
            .expect("allocated above")
            .slice_assign(range.clone(), k);
        let vc = self
            .v
            .take()
            .expect("allocated above")
            .slice_assign(range, v);
        self.len += new;
        let view = [0..b, 0..h, 0..end, 0..d];
        let out = CachedKv {
            k: kc.clone().slice(view.clone()),
            v: vc.clone().slice(view),
            first: self.start,
        };
        self.k = Some(kc);
        self.v = Some(vc);
        out
    }

    /// [`append_host`](Self::append_host) for `n` positions of each of `rows` rows (`[rows, n,
    /// kv_heads · head_dim]` each), the room grown once for all of them. A cache in tensor
    /// form (of `rows` rows) is copied to the host first (once).
    pub(crate) fn append_host_rows(
        &mut self,
        k: &[f32],
        v: &[f32],
        [rows, n]: [usize; 2],
        kv_heads: usize,
        window: Option<usize>,
    ) {
        let head_dim = k.len() / (rows * n * kv_heads).max(1);
        self.window = window;
        if self.host.is_none() {
            let host = self.tensors_to_host([rows, kv_heads, head_dim]);
            self.host = Some(host);
        }
        let shape = [rows, kv_heads, head_dim];
        let held = self.len - self.start;
        let host = self.host.get_or_insert_with(HostKv::default);
        if [host.rows, host.heads, host.dim] != shape {
            // A cache emptied by `truncate` and fed a batch of another shape: fresh room.
            assert_eq!(held, 0, "a host cache holding positions fed another shape");
            *host = HostKv::with_capacity(self.precision, shape, n + BLOCK);
        }
        host.reserve(n);
        for i in 0..n {
            if let Some(w) = window {
                let keep_from = self.len.saturating_sub(w.saturating_sub(1));
                if keep_from >= self.start + BLOCK {
                    host.drop_front(keep_from - self.start);
                    self.start = keep_from;
                }
            }
            host.push(k, v, n, i);
            self.len += 1;
        }
    }

    /// The positions held on the host, if the cache is in host form.
    pub(crate) fn host_view(&self) -> Option<HostKvView<'_>> {
        self.host.as_ref().map(|host| HostKvView {
            k: host.k.slice(),
            v: host.v.slice(),
            first: self.start,
            held: host.held,
            head_stride: host.cap * host.dim,
            head_dim: host.dim,
            kv_heads: host.heads,
        })
    }

    /// Appends one position's keys and values (`[kv_heads · head_dim]` each, `width` values)
    /// on the host and returns every position still held, as [`LayerCache::append`] does for
    /// tensors. A cache in tensor form is copied to the host first (once). Only for caches of
    /// one sequence.
    pub fn append_host(
        &mut self,
        k: &[f32],
        v: &[f32],
        kv_heads: usize,
        window: Option<usize>,
    ) -> HostKvView<'_> {
        self.append_host_rows(k, v, [1, 1], kv_heads, window);
        self.host_view().expect("in host form above")
    }

    /// The tensor form's positions (`[rows, kv_heads, held, head_dim]`) as a host cache; the
    /// tensors are dropped.
    fn tensors_to_host(&mut self, [rows, kv_heads, head_dim]: [usize; 3]) -> HostKv {
        let held = self.len - self.start;
        let (k, v) = (self.k.take(), self.v.take());
        let shape = [rows, kv_heads, head_dim];
        let mut host = HostKv::with_capacity(self.precision, shape, held + BLOCK);
        if let (Some(k), Some(v), true) = (k, v, held > 0) {
            let cap = host.cap;
            let read = |t: Tensor<4>, out: &mut KvBuf| {
                // [rows, heads, held, dim], each (row, head)'s run into the front of its room.
                let vals = host_f32(t.slice([0..rows, 0..kv_heads, 0..held, 0..head_dim]));
                let run = held * head_dim;
                for (g, src) in vals.chunks_exact(run).enumerate() {
                    out.write(g * cap * head_dim, src);
                }
            };
            read(k, &mut host.k);
            read(v, &mut host.v);
            host.held = held;
        } else if held > 0 {
            // No tensors yet hold positions: nothing consistent to keep.
            self.start = 0;
            self.len = 0;
        }
        host
    }

    /// Moves the host form back into tensors laid out as [`LayerCache::append`] keeps them,
    /// on the device and in the dtype of `like`.
    fn host_to_tensors(&mut self, host: HostKv, [h, d]: [usize; 2], like: &Tensor<4>) {
        let held = self.len - self.start;
        debug_assert!(
            held == host.held || host.heads == 0,
            "host form out of step"
        );
        if held == 0 || host.heads != h || host.dim != d || host.rows != like.dims()[0] {
            self.k = None;
            self.v = None;
            return;
        }
        let rows = host.rows;
        let device = like.device();
        let dtype = like.dtype();
        let build = |src: &KvBuf| {
            let run = held * d;
            let mut out = Vec::with_capacity(rows * h * run);
            for g in 0..rows * h {
                src.read_into(g * host.cap * d, run, &mut out);
            }
            Tensor::<4>::from_data(TensorData::new(out, [rows, h, held, d]), (&device, dtype))
        };
        self.k = Some(build(&host.k));
        self.v = Some(build(&host.v));
    }

    /// Moves positions `keep_from..len` to the front of the buffer.
    fn roll(&mut self, keep_from: usize, [b, h, d]: [usize; 3]) {
        let Some(k) = self.k.as_ref() else { return };
        let capacity = k.dims()[2];
        let template = k.clone();
        let kept = self.len - keep_from;
        self.reallocate(capacity, kept, keep_from - self.start, [b, h, d], &template);
        self.start = keep_from;
    }

    /// New buffers of `capacity` slots holding `count` old slots from `from` on.
    fn reallocate(
        &mut self,
        capacity: usize,
        count: usize,
        from: usize,
        [b, h, d]: [usize; 3],
        like: &Tensor<4>,
    ) {
        let device = like.device();
        let dtype = like.dtype();
        let copy = |old: Option<Tensor<4>>| {
            let fresh = Tensor::<4>::zeros([b, h, capacity, d], (&device, dtype));
            match old {
                Some(old) if count > 0 => {
                    let kept = old.slice([0..b, 0..h, from..from + count, 0..d]);
                    fresh.slice_assign([0..b, 0..h, 0..count, 0..d], kept)
                }
                _ => fresh,
            }
        };
        self.k = Some(copy(self.k.take()));
        self.v = Some(copy(self.v.take()));
    }

    /// Whether the cache can go back to `len` positions and still hold every position the
    /// next query needs (a rolling cache may have dropped them).
    pub fn can_truncate(&self, len: usize) -> bool {
        let needed_from = match self.window {
            Some(w) => len.saturating_sub(w.saturating_sub(1)),
            None => 0,
        };
        len >= self.len || needed_from >= self.start || self.len == 0
    }

    /// Forgets positions from `len` on (the buffer is kept). Going back past what a rolling
    /// cache has dropped empties it.
    pub fn truncate(&mut self, len: usize) {
        if !self.can_truncate(len) {
            *self = Self::with_precision(self.precision);
        } else {
            self.len = self.len.min(len);
            if let Some(host) = &mut self.host {
                host.held = host.held.min(self.len.max(self.start) - self.start);
            }
        }
    }
}

/// The caches of every layer of one sequence.
#[derive(Debug, Clone)]
pub struct KvCache {
    layers: Vec<LayerCache>,
    max_len: usize,
}

impl KvCache {
    /// An empty cache for `layers` layers and at most `max_len` positions.
    pub fn new(layers: usize, max_len: usize) -> Self {
        Self::with_precision(layers, max_len, KvPrecision::F32)
    }

    /// [`KvCache::new`] whose layers keep their host form at `precision`.
    pub fn with_precision(layers: usize, max_len: usize, precision: KvPrecision) -> Self {
        Self {
            layers: vec![LayerCache::with_precision(precision); layers],
            max_len,
        }
    }

    /// How the layers keep their host form.
    pub fn precision(&self) -> KvPrecision {
        self.layers
            .first()
            .map_or(KvPrecision::F32, |l| l.precision)
    }

    /// Cached positions (the position of the next token).
    pub fn len(&self) -> usize {
        self.layers.first().map_or(0, |l| l.len())
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The most positions this cache may hold (the model's context).
    pub fn max_len(&self) -> usize {
        self.max_len
    }

    /// Layer `i`'s cache.
    pub fn layer_mut(&mut self, i: usize) -> &mut LayerCache {
        &mut self.layers[i]
    }

    /// Forgets positions from `len` on. When a rolling (sliding-window) layer has already
    /// dropped positions that queries from `len` on would need, the whole cache is emptied
    /// (every layer must hold the same positions), and the caller re-runs the sequence.
    pub fn truncate(&mut self, len: usize) {
        if self.layers.iter().all(|l| l.can_truncate(len)) {
            self.layers.iter_mut().for_each(|l| l.truncate(len));
        } else {
            self.clear();
        }
    }

    /// Forgets everything.
    pub fn clear(&mut self) {
        self.layers
            .iter_mut()
            .for_each(|l| *l = LayerCache::with_precision(l.precision));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::Device;

    /// Keys of position `p` (2 kv heads × 3 features): distinct, recognisable values.
    fn key(p: usize) -> Vec<f32> {
        (0..6).map(|i| (p * 10 + i) as f32).collect()
    }

    /// `[1, heads, positions, dim]` tensor of positions `from..to`.
    fn keys_tensor(from: usize, to: usize, d: &Device) -> Tensor<4> {
        let mut data = Vec::new();
        for h in 0..2 {
            for p in from..to {
                data.extend_from_slice(&key(p)[h * 3..h * 3 + 3]);
            }
        }
        Tensor::from_data(TensorData::new(data, [1, 2, to - from, 3]), d.floats())
    }

    /// A tensor-form view as `[position][head·dim]` rows.
    fn rows(t: Tensor<4>) -> Vec<Vec<f32>> {
        let [_, h, n, d] = t.dims();
        let v = host_f32(t);
        (0..n)
            .map(|p| {
                (0..h)
                    .flat_map(|hd| v[(hd * n + p) * d..(hd * n + p + 1) * d].to_vec())
                    .collect()
            })
            .collect()
    }

    #[test]
    fn host_form_rolls_truncates_and_converts_back() {
        let d = Device::cpu();
        let w = Some(8);
        let mut c = LayerCache::default();
        // Prefill 5 positions as tensors, then decode on the host far past a roll.
        let t = keys_tensor(0, 5, &d);
        c.append(t.clone(), t, 4096, w);
        let total = 5 + BLOCK + 40;
        for p in 5..total {
            let view = c.append_host(&key(p), &key(p), 2, w);
            let held = view.held;
            assert_eq!(view.first + held, p + 1, "position {p}");
            assert_eq!(view.key_row(held - 1), key(p));
            assert_eq!(view.value_row(held - 1), key(p));
            // The window's positions are always held.
            assert!(view.first + 7 <= p || view.first == 0);
            if view.first > 0 {
                assert_eq!(view.value_row(0), key(view.first));
                assert_eq!(view.key_row(0), key(view.first));
            }
        }
        let first = c.append_host(&key(total), &key(total), 2, w).first;
        assert!(first > 0 && first <= total - 7, "rolled once: {first}");
        // Back to the tensor form for a 2-position chunk after truncating one position.
        c.truncate(total);
        let t = keys_tensor(total, total + 2, &d);
        let kv = c.append(t.clone(), t, 4096, w);
        let got = rows(kv.k);
        assert_eq!(kv.first, first);
        assert_eq!(got.len(), total + 2 - first);
        for (i, row) in got.iter().enumerate() {
            assert_eq!(row, &key(first + i), "slot {i}");
        }
    }

    /// An f16 host form holds each value rounded to f16 (and clamped to its range) through
    /// growth, rolls and the way back to tensors, and keeps its precision when emptied.
    #[test]
    fn f16_host_form_rounds_and_keeps_its_precision() {
        let d = Device::cpu();
        let rounded = |v: &[f32]| -> Vec<f32> {
            v.iter()
                .map(|&x| half::f16::from_f32(x.clamp(-65504.0, 65504.0)).to_f32())
                .collect()
        };
        // Values that f16 does not hold exactly, and one beyond its range.
        let key = |p: usize| -> Vec<f32> {
            (0..6)
                .map(|i| match (p, i) {
                    (3, 0) => 1e6,
                    _ => (p * 6 + i) as f32 * 0.1234567 + 1.0 / 3.0,
                })
                .collect()
        };
        let mut caches = KvCache::with_precision(1, 4096, KvPrecision::F16);
        let c = caches.layer_mut(0);
        assert_eq!(c.precision(), KvPrecision::F16);
        let w = Some(8);
        let total = BLOCK + 40;
        for p in 0..total {
            let view = c.append_host(&key(p), &key(p), 2, w);
            assert!(matches!(view.k, KvSlice::F16(_)));
            let held = view.held;
            assert_eq!(view.key_row(held - 1), rounded(&key(p)), "position {p}");
            assert_eq!(view.value_row(0), rounded(&key(view.first)));
        }
        let first = c.host_view().unwrap().first;
        assert!(first > 0, "rolled");
        // Back to tensors: the rounded values.
        let t = Tensor::from_data(TensorData::new(key(total), [1, 2, 1, 3]), d.floats());
        let kv = c.append(t.clone(), t, 4096, w);
        let got = rows(kv.k);
        for (i, row) in got.iter().take(total - first).enumerate() {
            assert_eq!(row, &rounded(&key(first + i)), "slot {i}");
        }
        // Emptied, then in host form again: still f16.
        caches.clear();
        let c = caches.layer_mut(0);
        assert_eq!(c.precision(), KvPrecision::F16);
        assert!(matches!(
            c.append_host(&key(0), &key(0), 2, w).k,
            KvSlice::F16(_)
        ));
        c.truncate(0);
        assert_eq!(c.precision(), KvPrecision::F16);
        // The tensor form of an f16 cache rounds as the host form does.
        let mut c = LayerCache::with_precision(KvPrecision::F16);
        let t = Tensor::from_data(TensorData::new(key(3), [1, 2, 1, 3]), d.floats());
        let kv = c.append(t.clone(), t, 4096, None);
        assert_eq!(rows(kv.v), vec![rounded(&key(3))]);
        assert_eq!(
            c.append_host(&key(4), &key(4), 2, None).key_row(0),
            rounded(&key(3))
        );
        // f32 by default, exact.
        let mut c = LayerCache::default();
        assert_eq!(c.append_host(&key(1), &key(1), 2, w).key_row(0), key(1));
    }

    /// Far past a sliding window, both forms hold at most window + two blocks of positions,
    /// however long the sequence grows (the memory of a long chat stays bounded).
    /// Several rows in host form, each row's positions its own; emptied by `truncate(0)`, the
    /// cache takes a batch of another size.
    #[test]
    fn host_rows_are_kept_apart_and_reshaped_when_empty() {
        let mut c = LayerCache::default();
        // 2 rows × 3 positions, 2 kv heads × 3 features: row r's position p holds key(10r + p).
        let rows_of = |rows: usize, n: usize| -> Vec<f32> {
            (0..rows)
                .flat_map(|r| (0..n).flat_map(move |p| key(10 * r + p)))
                .collect()
        };
        let k = rows_of(2, 3);
        c.append_host_rows(&k, &k, [2, 3], 2, None);
        let view = c.host_view().unwrap();
        for r in 0..2 {
            for p in 0..3 {
                assert_eq!(
                    view.of_row(r).key_row(p),
                    key(10 * r + p),
                    "row {r} pos {p}"
                );
            }
        }
        c.truncate(0);
        let k = rows_of(3, 1);
        c.append_host_rows(&k, &k, [3, 1], 2, None);
        let view = c.host_view().unwrap();
        assert_eq!((view.held, c.len()), (1, 1));
        assert_eq!(view.of_row(2).value_row(0), key(20));
    }

    #[test]
    fn rolling_caches_stay_bounded() {
        let d = Device::cpu();
        let w = 8;
        let (mut tensors, mut host) = (LayerCache::default(), LayerCache::default());
        for p in 0..6 * BLOCK {
            let t = keys_tensor(p, p + 1, &d);
            let kv = tensors.append(t.clone(), t, 1 << 20, Some(w));
            let capacity = tensors.k.as_ref().unwrap().dims()[2];
            assert!(
                capacity <= w + 2 * BLOCK,
                "tensor buffer of {capacity} at {p}"
            );
            assert!(kv.first + w <= p + 1 || kv.first == 0);
            let view = host.append_host(&key(p), &key(p), 2, Some(w));
            let (held, room) = (view.held, view.head_stride / view.head_dim);
            assert!(held <= w + BLOCK, "host form holds {held} at {p}");
            assert!(
                room <= 2 * (w + BLOCK),
                "host form has room for {room} at {p}"
            );
        }
        assert_eq!((tensors.len(), host.len()), (6 * BLOCK, 6 * BLOCK));
    }
}
