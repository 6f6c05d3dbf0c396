//! Normalisation layers.

use burn::tensor::Tensor;

use crate::device::Device;
use crate::error::Result;
use crate::loading::WeightStore;

/// RMSNorm: `x / sqrt(mean(x²) + eps) * weight`, computed in f32 as transformers does.
#[derive(Debug, Clone)]
pub struct RmsNorm {
    weight: Tensor<1>,
    eps: f64,
}

impl RmsNorm {
    /// Loads `{prefix}.weight` (`[dim]`).
    pub fn load(
        store: &mut WeightStore,
        prefix: &str,
        dim: usize,
        eps: f64,
        device: &Device,
    ) -> Result<Self> {
        Ok(Self {
            weight: store.take(&format!("{prefix}.weight"), [dim], device)?,
            eps,
        })
    }

    /// Normalises over the last axis.
    ///
    /// # Shapes
    /// `x: [..., dim]` → same
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        let var = x.clone().square().mean_dim(D - 1);
        let inv = var.add_scalar(self.eps).sqrt().recip();
        x * inv * self.weight.clone().unsqueeze::<D>()
    }
}
