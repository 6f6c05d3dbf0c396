//! JSON files of a model folder: reading them with errors that name the file, and the
//! generation defaults from `generation_config.json`.

use std::path::Path;

use serde::de::DeserializeOwned;
use serde::Deserialize;

use crate::error::{Error, Result};

/// Reads and parses a JSON file; a missing file is [`Error::MissingFile`], bad JSON is
/// [`Error::Json`] with line and column.
pub fn read_json<T: DeserializeOwned>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            Error::MissingFile {
                path: path.to_path_buf(),
                what: "required file".into(),
            }
        } else {
            Error::io(path, e)
        }
    })?;
    serde_json::from_str(&text).map_err(|source| Error::Json {
        path: path.to_path_buf(),
        source,
    })
}

/// A token id or a list of them (`eos_token_id` may be either in HF files).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum OneOrMany {
    /// A single id.
    One(u32),
    /// Several ids.
    Many(Vec<u32>),
}

impl OneOrMany {
    /// The ids as a list.
    pub fn to_vec(&self) -> Vec<u32> {
        match self {
            OneOrMany::One(x) => vec![*x],
            OneOrMany::Many(v) => v.clone(),
        }
    }
}

/// The fields of `generation_config.json` kiln uses.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct GenerationDefaults {
    /// Beginning-of-sequence id.
    #[serde(default)]
    pub bos_token_id: Option<OneOrMany>,
    /// End-of-sequence id(s); generation stops on any of them.
    #[serde(default)]
    pub eos_token_id: Option<OneOrMany>,
    /// Whether the model's authors recommend sampling.
    #[serde(default)]
    pub do_sample: Option<bool>,
    /// Recommended temperature.
    #[serde(default)]
    pub temperature: Option<f32>,
    /// Recommended top-k.
    #[serde(default)]
    pub top_k: Option<usize>,
    /// Recommended top-p.
    #[serde(default)]
    pub top_p: Option<f32>,
    /// Recommended min-p.
    #[serde(default)]
    pub min_p: Option<f32>,
    /// Recommended repetition penalty.
    #[serde(default)]
    pub repetition_penalty: Option<f32>,
    /// Default number of new tokens.
    #[serde(default)]
    pub max_new_tokens: Option<usize>,
}

impl GenerationDefaults {
    /// Reads `generation_config.json` from `dir`; an absent file gives the empty defaults.
    pub fn load(dir: &Path) -> Result<Self> {
        let path = dir.join("generation_config.json");
        if !path.is_file() {
            return Ok(Self::default());
        }
        read_json(&path)
    }
}
