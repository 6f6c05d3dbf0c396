//! Rotary position embeddings in Hugging Face's rotate-half layout.
//!
//! HF checkpoints expect the two halves of each head to be rotated against each other
//! (`rotate_half`), not interleaved pairs (burn's `RotaryEncoding`), so kiln applies its own:
//! `x·cos + rotate_half(x)·sin`, no weight permutation needed. With a partial rotary factor only
//! the first `rotary_dim` features of each head rotate; the rest pass through.

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
    /// Phi-3's LongRoPE (`longrope`, formerly `su`): per-frequency factors, short ones while the
    /// sequence fits the original context, long ones past it; cos/sin scaled by
    /// `attention_factor`.
    LongRope {
        /// Divisors of each frequency within the original context.
        short_factor: Vec<f64>,
        /// Divisors past it.
        long_factor: Vec<f64>,
        /// The original context.
        original_max_position_embeddings: usize,
        /// Multiplier of cos and sin.
        attention_factor: f64,
    },
}

/// Precomputed inverse frequencies for one head dimension.
#[derive(Debug, Clone)]
pub struct RotaryEmbedding {
    inv_freq: Vec<f64>,
    /// LongRoPE: frequencies used once a forward pass reaches past this many positions.
    long: Option<(Vec<f64>, usize)>,
    /// Multiplier of cos and sin.
    scale: f64,
    rotary_dim: usize,
    head_dim: usize,
}

impl RotaryEmbedding {
    /// Builds the frequencies for `head_dim` with all features rotating.
    pub fn new(head_dim: usize, theta: f64, scaling: &RopeScaling) -> Result<Self> {
        Self::partial(head_dim, head_dim, theta, scaling)
    }

    /// Builds the frequencies for the first `rotary_dim` features of `head_dim`.
    pub fn partial(
        head_dim: usize,
        rotary_dim: usize,
        theta: f64,
        scaling: &RopeScaling,
    ) -> Result<Self> {
        if rotary_dim == 0 || !rotary_dim.is_multiple_of(2) || rotary_dim > head_dim {
            return Err(Error::invalid_arg(
                "head_dim",
                format!("rotary embeddings need an even rotary dimension <= head_dim ({head_dim}), got {rotary_dim}"),
            ));
        }
        // As transformers: computed in f32 from integer exponents.
        let base: Vec<f64> = (0..rotary_dim)
            .step_by(2)
            .map(|i| {
                let e = (i as f32) / (rotary_dim as f32);
                (theta as f32).powf(e) as f64
            })
            .collect();
        let mut inv_freq: Vec<f64> = base.iter().map(|b| (1.0f32 / *b as f32) as f64).collect();
        let mut long = None;
        let mut scale = 1.0;
        match scaling {
            RopeScaling::Default => {}
            RopeScaling::Linear { factor } => inv_freq.iter_mut().for_each(|f| *f /= factor),
            &RopeScaling::Llama3 {
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
            RopeScaling::LongRope {
                short_factor,
                long_factor,
                original_max_position_embeddings,
                attention_factor,
            } => {
                let half = rotary_dim / 2;
                if short_factor.len() != half || long_factor.len() != half {
                    return Err(Error::invalid_arg(
                        "rope_scaling",
                        format!(
                            "longrope short_factor and long_factor need {half} entries, got {} and {}",
                            short_factor.len(),
                            long_factor.len()
                        ),
                    ));
                }
                let with = |factors: &[f64]| -> Vec<f64> {
                    factors
                        .iter()
                        .zip(&base)
                        .map(|(f, b)| (1.0f32 / (*f as f32 * *b as f32)) as f64)
                        .collect()
                };
                inv_freq = with(short_factor);
                long = Some((with(long_factor), *original_max_position_embeddings));
                scale = *attention_factor;
            }
        }
        Ok(Self {
            inv_freq,
            long,
            scale,
            rotary_dim,
            head_dim,
        })
    }

    /// cos and sin tables for positions `start..start+len`.
    ///
    /// # Shapes
    /// both `[1, 1, len, rotary_dim]`
    pub fn tables(&self, start: usize, len: usize, device: &Device) -> (Tensor<4>, Tensor<4>) {
        let positions: Vec<usize> = (start..start + len).collect();
        self.tables_at(&positions, 1, len, device)
    }

    /// cos and sin tables for `rows` rows of `len` positions each (row-major in `positions`).
    /// LongRoPE uses its long factors when the furthest position lies past the original context.
    ///
    /// # Shapes
    /// both `[rows, 1, len, rotary_dim]`
    pub fn tables_at(
        &self,
        positions: &[usize],
        rows: usize,
        len: usize,
        device: &Device,
    ) -> (Tensor<4>, Tensor<4>) {
        let (cos, sin) = self.host_tables(positions);
        let shape = [rows, 1, len, self.rotary_dim];
        (
            Tensor::from_data(TensorData::new(cos, shape), device.floats()),
            Tensor::from_data(TensorData::new(sin, shape), device.floats()),
        )
    }

    /// cos and sin for `positions` on the host, `rotary_dim` values per position each.
    /// LongRoPE uses its long factors when the furthest position lies past the original context.
    pub fn host_tables(&self, positions: &[usize]) -> (Vec<f32>, Vec<f32>) {
        let furthest = positions.iter().max().map_or(0, |p| p + 1);
        let inv_freq = match &self.long {
            Some((long, original)) if furthest > *original => long,
            _ => &self.inv_freq,
        };
        let mut cos = Vec::with_capacity(positions.len() * self.rotary_dim);
        let mut sin = Vec::with_capacity(positions.len() * self.rotary_dim);
        for &p in positions {
            for _ in 0..2 {
                for f in inv_freq {
                    // transformers multiplies in f32.
                    let angle = (p as f32 * *f as f32) as f64;
                    cos.push((angle.cos() * self.scale) as f32);
                    sin.push((angle.sin() * self.scale) as f32);
                }
            }
        }
        (cos, sin)
    }

    /// Rotates every head of `x` (`[heads · head_dim]`, one position) in place on the host by
    /// that position's `cos`/`sin` from [`RotaryEmbedding::host_tables`] (rotate-half, as
    /// [`RotaryEmbedding::apply`]).
    pub fn apply_host(&self, x: &mut [f32], cos: &[f32], sin: &[f32]) {
        let half = self.rotary_dim / 2;
        for head in x.chunks_mut(self.head_dim) {
            for i in 0..half {
                let (a, b) = (head[i], head[i + half]);
                head[i] = a * cos[i] - b * sin[i];
                head[i + half] = b * cos[i + half] + a * sin[i + half];
            }
        }
    }

    /// Rotates `x` by the tables from [`RotaryEmbedding::tables`].
    ///
    /// # Shapes
    /// `x: [batch, heads, seq, head_dim]`, `cos`/`sin: [1 or batch, 1, seq, rotary_dim]` → same as `x`
    pub fn apply(&self, x: Tensor<4>, cos: &Tensor<4>, sin: &Tensor<4>) -> Tensor<4> {
        let [b, h, s, d] = x.dims();
        let r = self.rotary_dim;
        let (rot, pass) = if r < d {
            (
                x.clone().slice([0..b, 0..h, 0..s, 0..r]),
                Some(x.slice([0..b, 0..h, 0..s, r..d])),
            )
        } else {
            (x, None)
        };
        let half = r / 2;
        let x1 = rot.clone().slice([0..b, 0..h, 0..s, 0..half]);
        let x2 = rot.clone().slice([0..b, 0..h, 0..s, half..r]);
        let rotated = Tensor::cat(vec![x2.neg(), x1], 3);
        let out = rot * cos.clone() + rotated * sin.clone();
        match pass {
            Some(p) => Tensor::cat(vec![out, p], 3),
            None => out,
        }
    }

    /// Features per head.
    pub fn head_dim(&self) -> usize {
        self.head_dim
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
        assert!(RotaryEmbedding::partial(8, 10, 10000.0, &RopeScaling::Default).is_err());
    }

    #[test]
    fn longrope_switches_past_the_original_context() {
        let r = RotaryEmbedding::new(
            4,
            10000.0,
            &RopeScaling::LongRope {
                short_factor: vec![1.0, 1.0],
                long_factor: vec![2.0, 4.0],
                original_max_position_embeddings: 8,
                attention_factor: 1.5,
            },
        )
        .unwrap();
        let d = Device::cpu();
        let read = |t: Tensor<4>| t.into_data().convert::<f32>().try_to_vec::<f32>().unwrap();
        // Position 1 within the original context: plain frequencies, scaled by 1.5.
        let (cos, _) = r.tables(1, 1, &d);
        assert!((read(cos)[0] - 1.5 * 1f32.cos()).abs() < 1e-6);
        // A pass that reaches position 9 uses the long factors for every position.
        let (cos, _) = r.tables(1, 9, &d);
        assert!((read(cos)[0] - 1.5 * 0.5f32.cos()).abs() < 1e-6);
    }
}
