//! Activation functions named as in `config.json` (`hidden_act`).

use burn::tensor::{activation, Tensor};

use crate::error::{Error, Result};

/// An activation function.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// `silu` / `swish`: x * sigmoid(x).
    Silu,
    /// `gelu`: the exact erf form.
    Gelu,
    /// `gelu_pytorch_tanh` / `gelu_new`: the tanh approximation.
    GeluTanh,
    /// `relu`.
    Relu,
}

impl Activation {
    /// Parses HF's `hidden_act` string.
    pub fn from_hf(name: &str) -> Result<Self> {
        match name {
            "silu" | "swish" => Ok(Activation::Silu),
            "gelu" => Ok(Activation::Gelu),
            "gelu_pytorch_tanh" | "gelu_new" | "gelu_fast" => Ok(Activation::GeluTanh),
            "relu" => Ok(Activation::Relu),
            other => Err(Error::invalid_arg(
                "hidden_act",
                format!("unsupported activation {other:?} (supported: silu, gelu, gelu_pytorch_tanh, relu)"),
            )),
        }
    }

    /// Applies the activation elementwise on the host, in place (f32).
    pub fn forward_host(self, x: &mut [f32]) {
        match self {
            Activation::Silu => crate::nn::host::silu(x),
            Activation::Gelu => x.iter_mut().for_each(|v| {
                *v = 0.5 * *v * (1.0 + libm::erff(*v * std::f32::consts::FRAC_1_SQRT_2))
            }),
            Activation::GeluTanh => crate::nn::host::gelu_tanh(x),
            Activation::Relu => x.iter_mut().for_each(|v| *v = v.max(0.0)),
        }
    }

    /// Applies the activation elementwise.
    pub fn forward<const D: usize>(self, x: Tensor<D>) -> Tensor<D> {
        match self {
            Activation::Silu => activation::silu(x),
            Activation::Gelu => activation::gelu(x),
            Activation::GeluTanh => activation::gelu_approximate(x),
            Activation::Relu => activation::relu(x),
        }
    }
}
