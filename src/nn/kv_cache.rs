//! Key/value cache, allocated in blocks and written in place.
//!
//! Each layer keeps one `[batch, kv_heads, capacity, head_dim]` buffer for keys and one for
//! values. New positions are written into the buffer with `slice_assign`; when it is full it
//! grows by whole blocks (never one token at a time), so decoding does not reallocate per token.

use burn::tensor::Tensor;

/// Positions added per growth step.
pub const BLOCK: usize = 256;

/// One layer's keys and values.
#[derive(Debug, Clone, Default)]
pub struct LayerCache {
    k: Option<Tensor<4>>,
    v: Option<Tensor<4>>,
    len: usize,
}

impl LayerCache {
    /// Cached positions.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Appends `k`/`v` and returns views of every cached position.
    ///
    /// # Shapes
    /// `k, v: [batch, kv_heads, new, head_dim]` → two `[batch, kv_heads, len + new, head_dim]`
    pub fn append(&mut self, k: Tensor<4>, v: Tensor<4>, max_len: usize) -> (Tensor<4>, Tensor<4>) {
        let [b, h, new, d] = k.dims();
        let end = self.len + new;
        let capacity = self.k.as_ref().map_or(0, |t| t.dims()[2]);
        if end > capacity {
            let grown = end.div_ceil(BLOCK) * BLOCK;
            let grown = grown.min(max_len.max(end));
            let device = k.device();
            let grow = |old: Option<Tensor<4>>| {
                let fresh = Tensor::<4>::zeros([b, h, grown, d], (&device, k.dtype()));
                match old {
                    Some(old) if self.len > 0 => {
                        let kept = old.slice([0..b, 0..h, 0..self.len, 0..d]);
                        fresh.slice_assign([0..b, 0..h, 0..self.len, 0..d], kept)
                    }
                    _ => fresh,
                }
            };
            self.k = Some(grow(self.k.take()));
            self.v = Some(grow(self.v.take()));
        }
        let range = [0..b, 0..h, self.len..end, 0..d];
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
        self.len = end;
        let view = [0..b, 0..h, 0..end, 0..d];
        let out = (kc.clone().slice(view.clone()), vc.clone().slice(view));
        self.k = Some(kc);
        self.v = Some(vc);
        out
    }

    /// Forgets positions from `len` on (the buffer is kept).
    pub fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
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
        Self {
            layers: vec![LayerCache::default(); layers],
            max_len,
        }
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

    /// Forgets positions from `len` on.
    pub fn truncate(&mut self, len: usize) {
        self.layers.iter_mut().for_each(|l| l.truncate(len));
    }

    /// Forgets everything.
    pub fn clear(&mut self) {
        self.truncate(0);
    }
}
