//! # kiln
//!
//! Run open models (Llama, Mistral, Qwen2, …) straight from a Hugging Face model folder, on
//! [burn](https://burn.dev), on CPU (burn-flex, burn-ndarray) or GPU (burn-wgpu), behind one
//! small typed API.
//!
//! ```no_run
//! use kiln::{Device, GenerationConfig, Model};
//!
//! # fn main() -> kiln::Result<()> {
//! let model = Model::load("path/to/model-folder", &Device::cpu())?;
//! let mut session = model.session();
//! for token in session.generate("Once upon a time", &GenerationConfig::default().max_new_tokens(64))? {
//!     print!("{}", token?.text);
//! }
//! # Ok(())
//! # }
//! ```
//!
//! - [`Model`]: weights + config + tokenizer; immutable, `Send + Sync`, cheap to clone.
//! - [`Session`]: one conversation's token history and KV cache.
//! - [`Generator`]: an iterator of [`Token`]s, each with its id and whole-UTF-8 text delta.
//! - [`Device`]: picks the backend at run time.
//!
//! Every failure is an [`Error`]; nothing a caller supplies makes kiln panic.

#![warn(missing_docs)]

pub mod batch;
pub mod chat;
pub mod device;
pub mod encoder;
pub mod error;
pub(crate) mod exec;
pub mod generation;
#[cfg(feature = "hub")]
pub mod hub;
pub mod loading;
pub mod model;
pub mod models;
pub mod nn;
pub mod session;
pub mod tokenizer;

pub use batch::BatchOutput;
pub use chat::{ChatTemplate, Message};
pub use device::{BackendKind, CpuPaths, Device, Dtype};
pub use encoder::{Encoder, Pooling};
pub use error::{Error, Result};
pub use generation::{
    CancelToken, FinishReason, GenerationConfig, GenerationStats, Generator, Score, ScoredToken,
    Token, TokenLogprobs, TopLogprob,
};
pub use loading::{LoadProgress, LoraAdapter};
pub use model::{LoadOptions, Model, Trace, TraceOptions, WeightMemory};
pub use nn::{Bf16Activations, KvPrecision, Quantization};
pub use session::Session;
pub use tokenizer::{IncrementalDecoder, Tokenizer};
