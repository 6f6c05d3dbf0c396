//! Resolving a Hugging Face hub id to a local folder (feature `hub`, needs network).

use std::path::PathBuf;

use crate::error::{Error, Result};

/// Downloads (or finds in the local hub cache) the files kiln reads for `repo_id` and returns
/// the folder that holds them.
pub fn download(repo_id: &str) -> Result<PathBuf> {
    let err = |m: String| Error::Hub {
        repo: repo_id.to_string(),
        message: m,
    };
    let api = hf_hub::api::sync::Api::new().map_err(|e| err(e.to_string()))?;
    let repo = api.model(repo_id.to_string());
    let config = repo.get("config.json").map_err(|e| err(e.to_string()))?;
    for optional in [
        "tokenizer.json",
        "generation_config.json",
        "tokenizer_config.json",
    ] {
        let _ = repo.get(optional);
    }
    match repo.get("model.safetensors") {
        Ok(_) => {}
        Err(_) => {
            let index = repo
                .get("model.safetensors.index.json")
                .map_err(|e| err(format!("no model.safetensors nor index: {e}")))?;
            let text = std::fs::read_to_string(&index).map_err(|e| Error::io(&index, e))?;
            let v: serde_json::Value =
                serde_json::from_str(&text).map_err(|source| Error::Json {
                    path: index.clone(),
                    source,
                })?;
            let mut shards: Vec<String> = v["weight_map"]
                .as_object()
                .map(|m| {
                    m.values()
                        .filter_map(|s| s.as_str().map(String::from))
                        .collect()
                })
                .unwrap_or_default();
            shards.sort();
            shards.dedup();
            for s in shards {
                repo.get(&s).map_err(|e| err(e.to_string()))?;
            }
        }
    }
    Ok(config.parent().map(PathBuf::from).unwrap_or_default())
}
