//! [`Encoder`]: sentence embeddings from a BERT-family model folder, pooled and normalised the
//! way its sentence-transformers files say.

use std::path::{Path, PathBuf};

use burn::tensor::{Tensor, TensorData};
use serde::Deserialize;

use crate::device::Device;
use crate::error::{Error, Result};
use crate::loading::{read_json, WeightStore};
use crate::model::to_vec;
use crate::models::bert::{Bert, BertConfig};
use crate::tokenizer::Tokenizer;

/// How token states become one vector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pooling {
    /// Mean over the tokens (padding excluded).
    Mean,
    /// The first token (`[CLS]`).
    Cls,
    /// Elementwise maximum over the tokens.
    Max,
}

/// Texts encoded per forward pass.
pub const BATCH: usize = 32;

/// A loaded sentence-embedding model.
#[derive(Debug, Clone)]
pub struct Encoder {
    model: Bert,
    tokenizer: Tokenizer,
    pooling: Pooling,
    normalize: bool,
    device: Device,
}

#[derive(Deserialize)]
struct Module {
    #[serde(default)]
    path: String,
    #[serde(rename = "type", default)]
    kind: String,
}

#[derive(Deserialize, Default)]
struct PoolingConfig {
    #[serde(default)]
    pooling_mode_cls_token: bool,
    #[serde(default)]
    pooling_mode_mean_tokens: bool,
    #[serde(default)]
    pooling_mode_max_tokens: bool,
    #[serde(default)]
    pooling_mode_mean_sqrt_len_tokens: bool,
}

#[derive(Deserialize)]
struct SentenceBertConfig {
    #[serde(default)]
    max_seq_length: Option<usize>,
}

impl Encoder {
    /// Loads `config.json` (a BERT-family `model_type`), the weights, `tokenizer.json`, and the
    /// sentence-transformers files when present (`modules.json`, the pooling module's
    /// `config.json`, `sentence_bert_config.json`); without them: mean pooling + L2
    /// normalisation, truncation at the model's context.
    pub fn load(dir: impl AsRef<Path>, device: &Device) -> Result<Self> {
        let dir = dir.as_ref();
        if !dir.is_dir() {
            return Err(Error::MissingFile {
                path: dir.to_path_buf(),
                what: "the encoder's model folder".into(),
            });
        }
        let config_path = dir.join("config.json");
        let value: serde_json::Value = read_json(&config_path)?;
        let model_type = value
            .get("model_type")
            .and_then(|v| v.as_str())
            .unwrap_or("");
        if model_type != "bert" {
            return Err(Error::UnsupportedArchitecture {
                path: config_path,
                name: model_type.to_string(),
                supported: "bert".into(),
            });
        }
        let cfg = BertConfig::from_json(&config_path, value)?;
        let mut store = WeightStore::open(dir)?;
        let model = Bert::load(cfg, &mut store, device)?;
        store.finish()?;

        let (pooling, normalize) = sentence_transformers_head(dir)?;
        let mut max_len = model.config().max_position_embeddings;
        let st = dir.join("sentence_bert_config.json");
        if st.is_file() {
            let c: SentenceBertConfig = read_json(&st)?;
            if let Some(m) = c.max_seq_length {
                max_len = max_len.min(m);
            }
        }
        let tokenizer = Tokenizer::from_file(&dir.join("tokenizer.json"))?.truncating(max_len)?;
        Ok(Self {
            model,
            tokenizer,
            pooling,
            normalize,
            device: device.clone(),
        })
    }

    /// Embedding width.
    pub fn dim(&self) -> usize {
        self.model.config().hidden_size
    }

    /// The pooling in use.
    pub fn pooling(&self) -> Pooling {
        self.pooling
    }

    /// Whether embeddings are L2-normalised.
    pub fn normalizes(&self) -> bool {
        self.normalize
    }

    /// One embedding per text, in order (batched internally).
    pub fn embed<S: AsRef<str>>(&self, texts: &[S]) -> Result<Vec<Vec<f32>>> {
        let mut out = Vec::with_capacity(texts.len());
        for chunk in texts.chunks(BATCH) {
            let ids = chunk
                .iter()
                .map(|t| self.tokenizer.encode(t.as_ref(), true))
                .collect::<Result<Vec<_>>>()?;
            out.extend(self.embed_ids(&ids)?);
        }
        Ok(out)
    }

    /// Embeddings of already tokenized inputs.
    pub fn embed_ids(&self, batch: &[Vec<u32>]) -> Result<Vec<Vec<f32>>> {
        if batch.iter().any(Vec::is_empty) {
            return Err(Error::invalid_arg("texts", "a text encodes to no tokens"));
        }
        let hidden = self.model.forward(batch)?;
        let [b, t, h] = hidden.dims();
        let mut weights = vec![0f32; b * t];
        for (i, seq) in batch.iter().enumerate() {
            weights[i * t..i * t + seq.len()].fill(1.0);
        }
        let mask =
            Tensor::<3>::from_data(TensorData::new(weights, [b, t, 1]), self.device.floats());
        let pooled = match self.pooling {
            Pooling::Cls => hidden.slice([0..b, 0..1, 0..h]).reshape([b, h]),
            Pooling::Mean => {
                let sum = (hidden * mask.clone()).sum_dim(1).reshape([b, h]);
                sum / mask.sum_dim(1).reshape([b, 1]).clamp_min(1e-9)
            }
            Pooling::Max => {
                // Padding rows get a large negative value so they never win.
                let pad = (mask.neg().add_scalar(1.0)).mul_scalar(-1e9);
                (hidden + pad).max_dim(1).reshape([b, h])
            }
        };
        let pooled = if self.normalize {
            let norm = pooled.clone().square().sum_dim(1).sqrt().clamp_min(1e-12);
            pooled / norm
        } else {
            pooled
        };
        let flat = to_vec(pooled)?;
        Ok(flat.chunks(h).map(<[f32]>::to_vec).collect())
    }
}

/// Pooling and normalisation from modules.json (+ the pooling module's config.json).
fn sentence_transformers_head(dir: &Path) -> Result<(Pooling, bool)> {
    let modules_path = dir.join("modules.json");
    if !modules_path.is_file() {
        return Ok((Pooling::Mean, true));
    }
    let modules: Vec<Module> = read_json(&modules_path)?;
    let normalize = modules.iter().any(|m| m.kind.ends_with(".Normalize"));
    let pooling = match modules.iter().find(|m| m.kind.ends_with(".Pooling")) {
        None => Pooling::Mean,
        Some(m) => {
            let path: PathBuf = dir.join(&m.path).join("config.json");
            let c: PoolingConfig = read_json(&path)?;
            let bad = |msg: &str| Error::config(&path, msg);
            match (
                c.pooling_mode_cls_token,
                c.pooling_mode_mean_tokens,
                c.pooling_mode_max_tokens,
                c.pooling_mode_mean_sqrt_len_tokens,
            ) {
                (true, false, false, false) => Pooling::Cls,
                (false, true, false, false) => Pooling::Mean,
                (false, false, true, false) => Pooling::Max,
                (false, false, false, true) => {
                    return Err(bad("pooling_mode_mean_sqrt_len_tokens is not supported"))
                }
                (false, false, false, false) => return Err(bad("no pooling mode is enabled")),
                _ => return Err(bad("several pooling modes at once are not supported")),
            }
        }
    };
    Ok((pooling, normalize))
}
