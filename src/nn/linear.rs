//! Linear layer loaded from a PyTorch-layout (`[out, in]`) checkpoint weight.

use burn::tensor::{module, Tensor, TensorData};
use rayon::prelude::*;

use crate::device::Device;
use crate::error::Result;
use crate::loading::WeightStore;

/// `y = x Wᵀ + b`, with `W` stored transposed (`[in, out]`) so the matmul reads it row-major.
#[derive(Debug, Clone)]
pub struct Linear {
    weight: Tensor<2>,
    bias: Option<Tensor<1>>,
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
        let w = store.read_f32(&format!("{prefix}.weight"), &[d_out, d_in])?;
        Ok(
            Self::from_pytorch(w, d_in, d_out, device).with_bias(if bias {
                Some(store.take(&format!("{prefix}.bias"), [d_out], device)?)
            } else {
                None
            }),
        )
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
        if tied {
            store.skip("lm_head.weight");
            let w = store.read_f32(embed_name, &[vocab, hidden])?;
            Ok(Self::from_pytorch(w, hidden, vocab, device))
        } else {
            Self::load(store, "lm_head", hidden, vocab, false, device)
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
        let w = store.read_f32(&format!("{prefix}.weight"), &[total, d_in])?;
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
                weight: Tensor::from_data(TensorData::new(block, [d_in, cols]), device.burn()),
                bias: Some(Tensor::from_data(
                    TensorData::new(bias, [cols]),
                    device.burn(),
                )),
            });
            col += cols;
        }
        Ok(out)
    }

    /// Builds the layer from a row-major `[out, in]` host weight (as PyTorch stores it).
    pub fn from_pytorch(w: Vec<f32>, d_in: usize, d_out: usize, device: &Device) -> Self {
        let t = transpose(&w, d_out, d_in);
        drop(w);
        Self {
            weight: Tensor::from_data(TensorData::new(t, [d_in, d_out]), device.burn()),
            bias: None,
        }
    }

    fn with_bias(mut self, bias: Option<Tensor<1>>) -> Self {
        self.bias = bias;
        self
    }

    /// # Shapes
    /// `x: [batch, seq, in]` → `[batch, seq, out]`
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        module::linear(x, self.weight.clone(), self.bias.clone())
    }

    /// Output features.
    pub fn d_out(&self) -> usize {
        self.weight.dims()[1]
    }
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
    #[test]
    fn transpose_is_correct() {
        // [[1,2,3],[4,5,6]] -> [[1,4],[2,5],[3,6]]
        let t = super::transpose(&[1., 2., 3., 4., 5., 6.], 2, 3);
        assert_eq!(t, vec![1., 4., 2., 5., 3., 6.]);
    }
}
