//! Shared layers, written once and used by every architecture.
//!
//! Every `forward` documents its shapes. Tensors are `burn::tensor::Tensor<D>`; the device they
//! live on decides the backend.

pub mod activation;
pub mod attention;
pub mod bf16_gemm;
pub mod embedding;
pub mod host;
pub mod kv_cache;
pub mod linear;
pub mod mlp;
pub mod moe;
pub mod norm;
pub mod quant;
pub mod quant_gemm;
pub mod rope;
pub(crate) mod team;
pub(crate) mod widen_gemm;

pub use activation::Activation;
pub use attention::{Attention, AttentionConfig, AttentionContext};
pub use bf16_gemm::Bf16Activations;
pub use embedding::Embedding;
pub use host::{HalfKind, HalfMatrix, KvSlice};
pub use kv_cache::{CachedKv, HostKvView, KvCache, KvPrecision, LayerCache};
pub use linear::Linear;
pub use mlp::{GatedMlp, Mlp};
pub use moe::{MoeShape, SparseMoe};
pub use norm::{LayerNorm, RmsNorm};
pub use quant::{QuantMatrix, Quantization};
pub use rope::{RopeScaling, RotaryEmbedding};
