//! Rotary position embeddings in Hugging Face's rotate-half layout.
//!
//! HF checkpoints expect the two halves of each head to be rotated against each other
//! (`rotate_half`), not interleaved pairs (burn's `RotaryEncoding`), so kiln applies its own:
//! `x·cos + rotate_half(x)·sin`, no weight permutation needed.

use burn::tensor::{Tensor, TensorData};

use crate::device::Device;
use crate::error::{Error, Result};

/// Frequency scaling variants (`rope_scaling.rope_type` / `rope_parameters.rope_type`).
#[derive(Debug, Clone, PartialEq)]
pub enum RopeScaling {
    /// Plain RoPE.
    Default,
    /// Position interpolation: every frequency divided by `factor`.
    Linear {
        /// The divisor.
        factor: f64,
    },
    /// Llama 3.1's band-wise scaling.
    Llama3 {
        /// Scale for low frequencies.
        factor: f64,
        /// Below this (as a wavelength fraction of the original context) frequencies are scaled.
        low_freq_factor: f64,
        /// Above this frequencies are kept.
        high_freq_factor: f64,
        /// The context length the model was pre-trained with.
        original_max_position_embeddings: f64,
    },
}

/// Precomputed inverse frequencies for one head dimension.
#[derive(Debug, Clone)]
pub struct RotaryEmbedding {
    inv_freq: Vec<f64>,
    head_dim: usize,
}

impl RotaryEmbedding {
    /// Builds the frequencies for `rotary_dim` (= head_dim for the Llama family) and `theta`.
    pub fn new(head_dim: usize, theta: f64, scaling: &RopeScaling) -> Result<Self> {
        if head_dim == 0 || head_dim % 2 != 0 {
            return Err(Error::invalid_arg(
                "head_dim",
                format!("rotary embeddings need an even head dimension, got {head_dim}"),
            ));
        }
        // As transformers: computed in f32 from integer exponents.
        let mut inv_freq: Vec<f64> = (0..head_dim)
            .step_by(2)
            .map(|i| {
                let e = (i as f32) / (head_dim as f32);
                (1.0f32 / (theta as f32).powf(e)) as f64
            })
            .collect();
        match *scaling {
            RopeScaling::Default => {}
            RopeScaling::Linear { factor } => inv_freq.iter_mut().for_each(|f| *f /= factor),
            RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings: old,
            } => {
                let low_wavelen = old / low_freq_factor;
                let high_wavelen = old / high_freq_factor;
                for f in inv_freq.iter_mut() {
                    let wavelen = 2.0 * std::f64::consts::PI / *f;
                    if wavelen > low_wavelen {
                        *f /= factor;
                    } else if wavelen >= high_wavelen {
                        let smooth = (old / wavelen - low_freq_factor)
                            / (high_freq_factor - low_freq_factor);
                        *f = (1.0 - smooth) * *f / factor + smooth * *f;
                    }
                }
            }
        }
        Ok(Self { inv_freq, head_dim })
    }

    /// cos and sin tables for positions `start..start+len`.
    ///
    /// # Shapes
    /// both `[1, 1, len, head_dim]`
    pub fn tables(&self, start: usize, len: usize, device: &Device) -> (Tensor<4>, Tensor<4>) {
        let half = self.head_dim / 2;
        let mut cos = Vec::with_capacity(len * self.head_dim);
        let mut sin = Vec::with_capacity(len * self.head_dim);
        for p in start..start + len {
            for _ in 0..2 {
                for f in &self.inv_freq {
                    // transformers multiplies in f32.
                    let angle = (p as f32 * *f as f32) as f64;
                    cos.push(angle.cos() as f32);
                    sin.push(angle.sin() as f32);
                }
            }
        }
        debug_assert_eq!(cos.len(), len * 2 * half);
        let shape = [1, 1, len, self.head_dim];
        (
            Tensor::from_data(TensorData::new(cos, shape), device.burn()),
            Tensor::from_data(TensorData::new(sin, shape), device.burn()),
        )
    }

    /// Rotates `x` by the tables from [`RotaryEmbedding::tables`].
    ///
    /// # Shapes
    /// `x: [batch, heads, seq, head_dim]`, `cos`/`sin: [1, 1, seq, head_dim]` → same as `x`
    pub fn apply(&self, x: Tensor<4>, cos: &Tensor<4>, sin: &Tensor<4>) -> Tensor<4> {
        let [b, h, s, d] = x.dims();
        let half = d / 2;
        let x1 = x.clone().slice([0..b, 0..h, 0..s, 0..half]);
        let x2 = x.clone().slice([0..b, 0..h, 0..s, half..d]);
        let rotated = Tensor::cat(vec![x2.neg(), x1], 3);
        x * cos.clone() + rotated * sin.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn llama3_scaling_matches_formula_bands() {
        let plain = RotaryEmbedding::new(64, 500000.0, &RopeScaling::Default).unwrap();
        let scaled = RotaryEmbedding::new(
            64,
            500000.0,
            &RopeScaling::Llama3 {
                factor: 8.0,
                low_freq_factor: 1.0,
                high_freq_factor: 4.0,
                original_max_position_embeddings: 8192.0,
            },
        )
        .unwrap();
        // Highest frequency (short wavelength) is untouched, lowest is divided by the factor.
        assert_eq!(plain.inv_freq[0], scaled.inv_freq[0]);
        let last = plain.inv_freq.len() - 1;
        assert!((plain.inv_freq[last] / 8.0 - scaled.inv_freq[last]).abs() < 1e-18);
    }

    #[test]
    fn odd_head_dim_is_an_error() {
        assert!(RotaryEmbedding::new(7, 10000.0, &RopeScaling::Default).is_err());
    }
}
