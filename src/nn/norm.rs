//! Normalisation layers.

use burn::tensor::{FloatDType, Tensor, TensorData};

use crate::device::Device;
use crate::error::Result;
use crate::loading::WeightStore;

/// RMSNorm: `x / sqrt(mean(x²) + eps) * weight`, computed in f32 as transformers does.
#[derive(Debug, Clone)]
pub struct RmsNorm {
    weight: Tensor<1>,
    /// The same weights on the host, for kiln's CPU decode path.
    host: Vec<f32>,
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
        Self::load_with_offset(store, prefix, dim, eps, 0.0, device)
    }

    /// Loads `{prefix}.weight` and scales by `offset + weight` (Gemma stores `w` and
    /// multiplies by `1 + w`).
    pub fn load_with_offset(
        store: &mut WeightStore,
        prefix: &str,
        dim: usize,
        eps: f64,
        offset: f32,
        device: &Device,
    ) -> Result<Self> {
        let mut w = store.read_f32(&format!("{prefix}.weight"), &[dim])?;
        w.iter_mut().for_each(|x| *x += offset);
        Ok(Self {
            weight: Tensor::from_data(TensorData::new(w.clone(), [dim]), device.floats()),
            host: w,
            eps,
        })
    }

    /// Normalises each `dim`-long row of `x` in place, on the host (f32).
    pub fn forward_host(&self, x: &mut [f32]) {
        let dim = self.host.len().max(1);
        for row in x.chunks_mut(dim) {
            // Vectorized (a plain running sum is one dependent add per value).
            let mean = crate::nn::host::dot_f32(row, row) / dim as f32;
            let inv = 1.0 / (mean + self.eps as f32).sqrt();
            for (v, w) in row.iter_mut().zip(&self.host) {
                *v = (*v * inv) * w;
            }
        }
    }

    /// Normalises over the last axis.
    ///
    /// # Shapes
    /// `x: [..., dim]` → same
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        // In f32 whatever the compute dtype (a half-precision square overflows), as transformers.
        let dtype = x.dtype();
        let x = x.cast(FloatDType::F32);
        let var = x.clone().square().mean_dim(D - 1);
        let inv = var.add_scalar(self.eps).sqrt().recip();
        (x * inv).cast(dtype) * self.weight.clone().unsqueeze::<D>()
    }
}

/// LayerNorm: `(x - mean) / sqrt(var + eps) * weight + bias` (biased variance), in f32.
#[derive(Debug, Clone)]
pub struct LayerNorm {
    weight: Tensor<1>,
    bias: Tensor<1>,
    /// `weight` and `bias` on the host.
    host: (Vec<f32>, Vec<f32>),
    eps: f64,
}

impl LayerNorm {
    /// Loads `{prefix}.weight` and `{prefix}.bias` (`[dim]`).
    pub fn load(
        store: &mut WeightStore,
        prefix: &str,
        dim: usize,
        eps: f64,
        device: &Device,
    ) -> Result<Self> {
        let w = store.read_f32(&format!("{prefix}.weight"), &[dim])?;
        let b = store.read_f32(&format!("{prefix}.bias"), &[dim])?;
        let tensor =
            |v: &[f32]| Tensor::from_data(TensorData::new(v.to_vec(), [dim]), device.floats());
        Ok(Self {
            weight: tensor(&w),
            bias: tensor(&b),
            host: (w, b),
            eps,
        })
    }

    /// [`LayerNorm::forward`] in place over each row of `x` on the host (rows of the norm's
    /// width), in f32.
    pub fn forward_host(&self, x: &mut [f32]) {
        let (w, b) = &self.host;
        let dim = w.len().max(1);
        for row in x.chunks_mut(dim) {
            let mean = row.iter().sum::<f32>() / dim as f32;
            row.iter_mut().for_each(|v| *v -= mean);
            let var = crate::nn::host::dot_f32(row, row) / dim as f32;
            let inv = 1.0 / (var + self.eps as f32).sqrt();
            for ((v, w), b) in row.iter_mut().zip(w).zip(b) {
                *v = (*v * inv) * w + b;
            }
        }
    }

    /// Normalises over the last axis.
    ///
    /// # Shapes
    /// `x: [..., dim]` → same
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        let dtype = x.dtype();
        let x = x.cast(FloatDType::F32);
        let mean = x.clone().mean_dim(D - 1);
        let centered = x - mean;
        let var = centered.clone().square().mean_dim(D - 1);
        let inv = var.add_scalar(self.eps).sqrt().recip();
        (centered * inv).cast(dtype) * self.weight.clone().unsqueeze::<D>()
            + self.bias.clone().unsqueeze::<D>()
    }
}
