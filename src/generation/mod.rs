//! Generation: a chain of logits processors, a sampler, stop criteria and the [`Generator`].

mod config;
mod generator;
pub mod processors;
mod sampler;
mod stop;

pub use config::{CancelToken, GenerationConfig};
pub(crate) use generator::Decoding;
pub use generator::{FinishReason, GenerationStats, Generator, Token};
pub use processors::{LogitsProcessor, ProcessorChain};
pub use sampler::Sampler;
pub use stop::StopMatcher;
