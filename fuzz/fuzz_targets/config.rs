//! `config.json` bytes resolved by every architecture's config reader: Ok or a typed error.
#![no_main]

use kiln::models::{bert, gemma, gpt2, llama};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(data) else {
        return;
    };
    let path = std::path::Path::new("config.json");
    for model_type in ["llama", "mistral", "mixtral", "qwen2", "qwen3", "phi3"] {
        let _ = llama::LlamaConfig::from_json(path, value.clone(), model_type);
    }
    for version in [gemma::Version::V1, gemma::Version::V2, gemma::Version::V3] {
        let _ = gemma::GemmaConfig::from_json(path, value.clone(), version);
    }
    let _ = gpt2::Gpt2Config::from_json(path, value.clone());
    let _ = bert::BertConfig::from_json(path, value);
});
