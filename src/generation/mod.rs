//! Generation: a chain of logits processors, a sampler, stop criteria and the [`Generator`].

mod config;
mod generator;
mod logprobs;
pub mod processors;
mod sampler;
mod stop;

pub use config::{CancelToken, GenerationConfig};
pub(crate) use generator::Decoding;
pub use generator::{FinishReason, GenerationStats, Generator, Token};
pub(crate) use logprobs::{token_text, RowLogprobs};
pub use logprobs::{Score, ScoredToken, TokenLogprobs, TopLogprob};
pub use processors::{LogitsProcessor, ProcessorChain};
pub use sampler::Sampler;
pub use stop::StopMatcher;
