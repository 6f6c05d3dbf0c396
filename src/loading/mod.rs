//! From a Hugging Face model folder to typed config and weights.
//!
//! - [`weights`]: safetensors files (single or sharded through `model.safetensors.index.json`),
//!   memory-mapped, converted tensor by tensor (f32, f16, bf16), loaded strictly.
//! - [`adapter`]: PEFT LoRA adapters, merged into the weights they target as those load.
//! - [`config`]: helpers for reading `config.json` and `generation_config.json`.

pub mod adapter;
pub mod config;
pub mod weights;

pub use adapter::{LoraAdapter, LoraDelta};
pub use config::{read_json, GenerationDefaults};
pub use weights::{LoadProgress, ProgressCallback, WeightStore};
