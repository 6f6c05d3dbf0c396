//! Token embedding table.

use burn::tensor::{Int, Tensor, TensorData};

use crate::device::Device;
use crate::error::Result;
use crate::loading::WeightStore;

/// A `[vocab, hidden]` lookup table.
#[derive(Debug, Clone)]
pub struct Embedding {
    weight: Tensor<2>,
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
        Ok(Self {
            weight: store.take(name, [vocab, hidden], device)?,
        })
    }

    /// The table itself (for tied output projections).
    pub fn weight(&self) -> &Tensor<2> {
        &self.weight
    }

    /// # Shapes
    /// `ids: [rows·seq]` (row-major) → `[rows, seq, hidden]`
    pub fn forward_rows(&self, ids: &[u32], rows: usize, device: &Device) -> Tensor<3> {
        let [_, hidden] = self.weight.dims();
        let seq = ids.len() / rows.max(1);
        self.forward(ids, device).reshape([rows, seq, hidden])
    }

    /// # Shapes
    /// `ids: [seq]` (one sequence) → `[1, seq, hidden]`
    pub fn forward(&self, ids: &[u32], device: &Device) -> Tensor<3> {
        let idx: Vec<i64> = ids.iter().map(|&i| i as i64).collect();
        let idx = Tensor::<1, Int>::from_data(TensorData::new(idx, [ids.len()]), device.burn());
        let [_, hidden] = self.weight.dims();
        self.weight
            .clone()
            .select(0, idx)
            .reshape([1, ids.len(), hidden])
    }
}
