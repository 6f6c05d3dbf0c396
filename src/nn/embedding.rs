//! Token embedding table.

use burn::tensor::{Int, Tensor, TensorData};

use std::sync::Arc;

use crate::device::Device;
use crate::error::Result;
use crate::loading::WeightStore;
use crate::nn::HalfMatrix;

/// A `[vocab, hidden]` lookup table. A table larger than the device's
/// [`Device::max_tensor_bytes`] (a big vocabulary on a GPU) is stored as blocks of rows.
/// On CPU devices an f16/bf16 table stays as stored (memory-mapped) and the rows a pass needs
/// are widened on the host.
#[derive(Debug, Clone)]
pub struct Embedding {
    /// `(first row, block)`, in order.
    parts: Vec<(usize, Tensor<2>)>,
    half: Option<Arc<HalfMatrix>>,
    hidden: usize,
}

impl Embedding {
    /// Loads `{name}` with shape `[vocab, hidden]`.
    pub fn load(
        store: &mut WeightStore,
        name: &str,
        vocab: usize,
        hidden: usize,
        device: &Device,
    ) -> Result<Self> {
        if device.keeps_half_weights() {
            if let Some(m) = store.take_half(name, vocab, hidden)? {
                return Ok(Self {
                    parts: Vec::new(),
                    half: Some(Arc::new(m)),
                    hidden,
                });
            }
        }
        let max_bytes = device.max_tensor_bytes();
        if vocab.saturating_mul(hidden).saturating_mul(4) <= max_bytes {
            return Ok(Self {
                parts: vec![(0, store.take(name, [vocab, hidden], device)?)],
                half: None,
                hidden,
            });
        }
        let data = store.read_f32(name, &[vocab, hidden])?;
        Ok(Self::from_rows_in_parts(
            data, vocab, hidden, device, max_bytes,
        ))
    }

    /// Builds the table from a row-major host `[vocab, hidden]` matrix, in blocks of rows of
    /// at most `max_bytes` each.
    pub fn from_rows_in_parts(
        data: Vec<f32>,
        vocab: usize,
        hidden: usize,
        device: &Device,
        max_bytes: usize,
    ) -> Self {
        let rows_per_part = (max_bytes / (4 * hidden.max(1))).clamp(1, vocab.max(1));
        let parts = (0..vocab)
            .step_by(rows_per_part)
            .map(|r0| {
                let r1 = (r0 + rows_per_part).min(vocab);
                let block = data[r0 * hidden..r1 * hidden].to_vec();
                (
                    r0,
                    Tensor::from_data(TensorData::new(block, [r1 - r0, hidden]), device.floats()),
                )
            })
            .collect();
        Self {
            parts,
            half: None,
            hidden,
        }
    }

    /// How many row blocks the table is stored in.
    pub fn parts(&self) -> usize {
        self.parts.len().max(1)
    }

    /// # Shapes
    /// `ids: [rows·seq]` (row-major) → `[rows, seq, hidden]`
    pub fn forward_rows(&self, ids: &[u32], rows: usize, device: &Device) -> Tensor<3> {
        let hidden = self.hidden;
        let seq = ids.len() / rows.max(1);
        self.forward(ids, device).reshape([rows, seq, hidden])
    }

    /// Row `id` on the host (`[hidden]`).
    pub fn forward_host(&self, id: u32, device: &Device) -> Vec<f32> {
        match &self.half {
            Some(m) => {
                let mut row = vec![0f32; self.hidden];
                m.row_to_f32(id as usize, &mut row);
                row
            }
            None => crate::nn::linear::host_f32(self.forward(&[id], device)),
        }
    }

    /// Whether the table stays on the host (half precision on a CPU device).
    pub fn is_host(&self) -> bool {
        self.half.is_some()
    }

    /// # Shapes
    /// `ids: [seq]` (one sequence) → `[1, seq, hidden]`
    pub fn forward(&self, ids: &[u32], device: &Device) -> Tensor<3> {
        let hidden = self.hidden;
        if let Some(m) = &self.half {
            let mut rows = vec![0f32; ids.len() * hidden];
            for (dst, &id) in rows.chunks_mut(hidden.max(1)).zip(ids) {
                // Ids were checked against the vocabulary by the model.
                m.row_to_f32(id as usize, dst);
            }
            return Tensor::from_data(
                TensorData::new(rows, [1, ids.len(), hidden]),
                device.floats(),
            );
        }
        let index = |v: Vec<i64>| {
            let n = v.len();
            Tensor::<1, Int>::from_data(TensorData::new(v, [n]), device.burn())
        };
        if let [(_, table)] = self.parts.as_slice() {
            let idx = index(ids.iter().map(|&i| i as i64).collect());
            return table.clone().select(0, idx).reshape([1, ids.len(), hidden]);
        }
        // Gather from each block the tokens it holds, then put the rows back in token order.
        let mut gathered = Vec::new();
        let mut order = Vec::with_capacity(ids.len());
        for (i, (first, table)) in self.parts.iter().enumerate() {
            let end = self.parts.get(i + 1).map_or(usize::MAX, |(next, _)| *next);
            let (mut local, mut which) = (Vec::new(), Vec::new());
            for (pos, &id) in ids.iter().enumerate() {
                let id = id as usize;
                if id >= *first && id < end {
                    local.push((id - first) as i64);
                    which.push(pos);
                }
            }
            if !local.is_empty() {
                gathered.push(table.clone().select(0, index(local)));
                order.extend(which);
            }
        }
        // `order[k]` is the token position of gathered row k; invert it.
        let mut back = vec![0i64; ids.len()];
        for (k, &pos) in order.iter().enumerate() {
            back[pos] = k as i64;
        }
        Tensor::cat(gathered, 0)
            .select(0, index(back))
            .reshape([1, ids.len(), hidden])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_table_gives_the_same_rows() {
        let d = Device::cpu();
        let (vocab, hidden) = (11, 4);
        let data: Vec<f32> = (0..vocab * hidden).map(|i| i as f32).collect();
        let whole = Embedding::from_rows_in_parts(data.clone(), vocab, hidden, &d, usize::MAX);
        let split = Embedding::from_rows_in_parts(data, vocab, hidden, &d, 4 * hidden * 3);
        assert_eq!((whole.parts(), split.parts()), (1, 4));
        let ids = [10, 0, 5, 5, 3, 9, 1];
        let a = whole
            .forward(&ids, &d)
            .into_data()
            .try_to_vec::<f32>()
            .unwrap();
        let b = split
            .forward(&ids, &d)
            .into_data()
            .try_to_vec::<f32>()
            .unwrap();
        assert_eq!(a, b);
        assert_eq!(&b[..4], &[40.0, 41.0, 42.0, 43.0]);
    }
}
