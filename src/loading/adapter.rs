//! PEFT LoRA adapters: `adapter_config.json` + `adapter_model.safetensors`, applied to the base
//! weights as they load.
//!
//! For each adapted weight `W` (`[out, in]`), PEFT computes `W x + s · B (A x)` with
//! `A: [r, in]`, `B: [out, r]` and `s = lora_alpha / r` (`lora_alpha / √r` with `use_rslora`),
//! `r` and `lora_alpha` per module when `rank_pattern` / `alpha_pattern` name it. How kiln
//! applies it depends on how the weight is kept:
//! - f16/bf16 weights on CPU devices (kiln's kernels over the file's bytes): the update is kept
//!   apart and added as `B (A x)` in f32 after the weight's product, so the weight keeps its
//!   size and the model its decode path (`r·(in + out)` extra multiply-adds per token);
//! - weights quantized at load: quantized from the merged rows `W + s·B A`;
//! - f32 tensors (f32 files, GPUs): merged, `W + s·B A`, in f32 as the weight is read.
//!
//! GPT-2's `Conv1D` weights are stored `[in, out]` (`fan_in_fan_out`): the transposed product
//! is merged.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;

use crate::error::{Error, Result};
use crate::loading::WeightStore;

/// A LoRA adapter read from a PEFT folder, ready to merge into a base model's weights.
#[derive(Debug, Clone)]
pub struct LoraAdapter {
    dir: PathBuf,
    /// By the base weight's name (`model.layers.0.self_attn.q_proj.weight`).
    deltas: HashMap<String, Arc<LoraDelta>>,
    fan_in_fan_out: bool,
}

/// One adapted weight's low-rank update `B A` (`[d_out, d_in]`, scale folded into `B`).
#[derive(Debug, Clone)]
pub struct LoraDelta {
    rank: usize,
    d_in: usize,
    d_out: usize,
    /// `[rank, d_in]`.
    a: Vec<f32>,
    /// `Bᵀ`, `[rank, d_out]`, already multiplied by the scale (row `k` is what input
    /// direction `k` adds to the outputs, so updates are vectorised axpys).
    bt: Vec<f32>,
}

#[derive(Debug, Deserialize)]
struct AdapterConfig {
    peft_type: Option<String>,
    r: Option<usize>,
    lora_alpha: Option<f64>,
    #[serde(default)]
    use_rslora: bool,
    #[serde(default)]
    use_dora: bool,
    #[serde(default)]
    fan_in_fan_out: bool,
    bias: Option<String>,
    #[serde(default)]
    lora_bias: bool,
    #[serde(default)]
    rank_pattern: Option<BTreeMap<String, usize>>,
    #[serde(default)]
    alpha_pattern: Option<BTreeMap<String, f64>>,
    #[serde(default)]
    modules_to_save: Option<serde_json::Value>,
    #[serde(default)]
    target_parameters: Option<serde_json::Value>,
    #[serde(default)]
    layer_replication: Option<serde_json::Value>,
}

impl LoraDelta {
    /// Rank.
    pub fn rank(&self) -> usize {
        self.rank
    }

    /// Bytes of its data.
    pub fn byte_len(&self) -> usize {
        4 * (self.a.len() + self.bt.len())
    }

    /// Row `k` of `A` (`d_in` values).
    pub(crate) fn a_row(&self, k: usize) -> &[f32] {
        &self.a[k * self.d_in..(k + 1) * self.d_in]
    }

    /// `A x` for `n` rows of `x` (`[n, d_in]`) → `[n, rank]`.
    pub(crate) fn project(&self, x: &[f32], n: usize) -> Vec<f32> {
        use rayon::prelude::*;
        let (r, d) = (self.rank, self.d_in);
        let mut t = vec![0f32; n * r];
        let row = |(j, tj): (usize, &mut [f32])| {
            let xj = &x[j * d..(j + 1) * d];
            for (k, v) in tj.iter_mut().enumerate() {
                *v = crate::nn::host::dot_f32(self.a_row(k), xj);
            }
        };
        if n >= 4 {
            t.par_chunks_mut(r).enumerate().for_each(row);
        } else {
            t.chunks_mut(r).enumerate().for_each(row);
        }
        t
    }

    /// `y += B t` for `n` projected rows `t` (`[n, rank]`, from [`LoraDelta::project`]);
    /// `y: [n, d_out]`.
    pub(crate) fn add_update(&self, t: &[f32], n: usize, y: &mut [f32]) {
        use rayon::prelude::*;
        let (r, out) = (self.rank, self.d_out);
        let row = |(j, yj): (usize, &mut [f32])| {
            for (k, &c) in t[j * r..(j + 1) * r].iter().enumerate() {
                let bk = &self.bt[k * out..(k + 1) * out];
                yj.iter_mut().zip(bk).for_each(|(v, &b)| *v += c * b);
            }
        };
        if n >= 4 {
            y.par_chunks_mut(out).enumerate().for_each(row);
        } else {
            y.chunks_mut(out).enumerate().for_each(row);
        }
    }

    /// `y += B (A x)` for `n` rows (`y: [n, d_out]`).
    pub(crate) fn add_product(&self, x: &[f32], n: usize, y: &mut [f32]) {
        let t = self.project(x, n);
        self.add_update(&t, n, y);
    }

    /// `Aᵀ` (`[d_in, rank]`) and `Bᵀ` (`[rank, d_out]`, scaled) as tensors on `device`, for
    /// layers that multiply there.
    pub(crate) fn device_tensors(
        &self,
        device: &crate::device::Device,
    ) -> (burn::tensor::Tensor<2>, burn::tensor::Tensor<2>) {
        use burn::tensor::{Tensor, TensorData};
        let (r, d) = (self.rank, self.d_in);
        let mut at = vec![0f32; d * r];
        for k in 0..r {
            for i in 0..d {
                at[i * r + k] = self.a[k * d + i];
            }
        }
        (
            Tensor::from_data(TensorData::new(at, [d, r]), device.floats()),
            Tensor::from_data(
                TensorData::new(self.bt.clone(), [r, self.d_out]),
                device.floats(),
            ),
        )
    }

    /// The update of output rows `o0..o1` (a fused weight's part).
    pub(crate) fn slice_out(&self, o0: usize, o1: usize) -> Self {
        Self {
            rank: self.rank,
            d_in: self.d_in,
            d_out: o1 - o0,
            a: self.a.clone(),
            bt: self
                .bt
                .chunks(self.d_out)
                .flat_map(|row| row[o0..o1].iter().copied())
                .collect(),
        }
    }
}

/// The adapter tensor name's parts: `base_model.model.{module}.lora_{A|B}[.{adapter}].weight`.
fn split_name(name: &str) -> Option<(&str, char)> {
    let rest = name.strip_prefix("base_model.model.").unwrap_or(name);
    for (marker, which) in [(".lora_A", 'A'), (".lora_B", 'B')] {
        if let Some(at) = rest.rfind(marker) {
            let tail = &rest[at + marker.len()..];
            // `.weight`, or `.{adapter_name}.weight` as some trainers save it.
            let ok = tail == ".weight"
                || (tail.ends_with(".weight") && !tail[1..tail.len() - 7].contains('.'));
            if ok {
                return Some((&rest[..at], which));
            }
        }
    }
    None
}

/// PEFT's pattern keys name a module by a dotted suffix of its full name.
fn pattern_value<T: Copy>(patterns: &Option<BTreeMap<String, T>>, module: &str) -> Option<T> {
    let patterns = patterns.as_ref()?;
    // The longest (most specific) matching key wins.
    patterns
        .iter()
        .filter(|(k, _)| module == k.as_str() || module.ends_with(&format!(".{k}")))
        .max_by_key(|(k, _)| k.len())
        .map(|(_, &v)| v)
}

impl LoraAdapter {
    /// Reads a PEFT LoRA folder: `adapter_config.json` and `adapter_model.safetensors`.
    pub fn load(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref();
        let config_path = dir.join("adapter_config.json");
        if !config_path.is_file() {
            return Err(Error::MissingFile {
                path: config_path,
                what: "the adapter's config (a PEFT LoRA folder has adapter_config.json and adapter_model.safetensors)".into(),
            });
        }
        let bad = |message: String| Error::Adapter {
            path: config_path.clone(),
            message,
        };
        let cfg: AdapterConfig = crate::loading::read_json(&config_path)?;
        match cfg.peft_type.as_deref() {
            Some("LORA") | Some("lora") | None => {}
            Some(other) => {
                return Err(bad(format!(
                    "peft_type is {other:?}; kiln applies LoRA adapters (\"LORA\")"
                )))
            }
        }
        if cfg.use_dora {
            return Err(bad(
                "use_dora is true: DoRA adapters are not supported".into()
            ));
        }
        if cfg.bias.as_deref().is_some_and(|b| b != "none") || cfg.lora_bias {
            return Err(bad(format!(
                "bias is {:?}: adapters that train biases are not supported (only \"none\")",
                cfg.bias.as_deref().unwrap_or("lora_bias")
            )));
        }
        for (field, value) in [
            ("modules_to_save", &cfg.modules_to_save),
            ("target_parameters", &cfg.target_parameters),
            ("layer_replication", &cfg.layer_replication),
        ] {
            let set = match value {
                None | Some(serde_json::Value::Null) => false,
                Some(serde_json::Value::Array(a)) => !a.is_empty(),
                Some(_) => true,
            };
            if set {
                return Err(bad(format!("{field} is set: not supported")));
            }
        }
        for key in cfg
            .rank_pattern
            .iter()
            .flat_map(|p| p.keys())
            .chain(cfg.alpha_pattern.iter().flat_map(|p| p.keys()))
        {
            if key.contains(|c: char| "*[]()\\^$|+?{}".contains(c)) {
                return Err(bad(format!(
                    "pattern key {key:?} is a regular expression; kiln matches module names and dotted suffixes only"
                )));
            }
        }
        let r = cfg
            .r
            .filter(|&r| r > 0)
            .ok_or_else(|| bad("`r` is missing or 0".into()))?;
        let alpha = cfg
            .lora_alpha
            .filter(|a| a.is_finite())
            .ok_or_else(|| bad("`lora_alpha` is missing or not a number".into()))?;

        let weights_path = dir.join("adapter_model.safetensors");
        if !weights_path.is_file() {
            return Err(Error::MissingFile {
                path: weights_path,
                what: "the adapter's weights (adapter_model.safetensors; .bin files are not read)"
                    .into(),
            });
        }
        let mut store = WeightStore::open_file(&weights_path)?;
        let bad_tensor = |message: String| Error::Adapter {
            path: weights_path.clone(),
            message,
        };
        // Pair up lora_A and lora_B by module.
        let mut parts: BTreeMap<String, [Option<String>; 2]> = BTreeMap::new();
        for name in store.names() {
            if name.contains("lora_embedding_") || name.contains("lora_magnitude_vector") {
                return Err(bad_tensor(format!(
                    "tensor {name:?}: embedding LoRA and DoRA tensors are not supported"
                )));
            }
            let (module, which) = split_name(&name).ok_or_else(|| {
                bad_tensor(format!(
                    "tensor {name:?} is neither a lora_A nor a lora_B weight"
                ))
            })?;
            let slot = &mut parts.entry(module.to_string()).or_default()[(which == 'B') as usize];
            *slot = Some(name.clone());
        }
        if parts.is_empty() {
            return Err(bad_tensor("the file holds no LoRA tensors".into()));
        }
        let mut deltas = HashMap::new();
        for (module, [a_name, b_name]) in parts {
            let (Some(a_name), Some(b_name)) = (a_name, b_name) else {
                return Err(bad_tensor(format!(
                    "module {module:?} has only one of lora_A and lora_B"
                )));
            };
            let (a_shape, b_shape) = match (store.shape(&a_name), store.shape(&b_name)) {
                (Some(a), Some(b)) if a.len() == 2 && b.len() == 2 => ([a[0], a[1]], [b[0], b[1]]),
                _ => {
                    return Err(bad_tensor(format!(
                        "{a_name:?} and {b_name:?} must be matrices"
                    )))
                }
            };
            let rank = a_shape[0];
            if b_shape[1] != rank || rank == 0 {
                return Err(bad_tensor(format!(
                    "{a_name:?} is {a_shape:?} and {b_name:?} is {b_shape:?}: their rank (A's rows, B's columns) must agree"
                )));
            }
            let expected_rank = pattern_value(&cfg.rank_pattern, &module).unwrap_or(r);
            if rank != expected_rank {
                return Err(bad_tensor(format!(
                    "{a_name:?} has rank {rank} but adapter_config.json gives {module} rank {expected_rank}"
                )));
            }
            let alpha = pattern_value(&cfg.alpha_pattern, &module).unwrap_or(alpha);
            let scale = if cfg.use_rslora {
                alpha / (rank as f64).sqrt()
            } else {
                alpha / rank as f64
            } as f32;
            let a = store.read_f32(&a_name, &a_shape)?;
            let b = store.read_f32(&b_name, &b_shape)?;
            let (d_out, rank) = (b_shape[0], b_shape[1]);
            let mut bt = vec![0f32; b.len()];
            for o in 0..d_out {
                for k in 0..rank {
                    bt[k * d_out + o] = b[o * rank + k] * scale;
                }
            }
            if a.iter().chain(&bt).any(|v| !v.is_finite()) {
                return Err(bad_tensor(format!(
                    "module {module:?} has non-finite values"
                )));
            }
            deltas.insert(
                format!("{module}.weight"),
                Arc::new(LoraDelta {
                    rank,
                    d_in: a_shape[1],
                    d_out: b_shape[0],
                    a,
                    bt,
                }),
            );
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            deltas,
            fan_in_fan_out: cfg.fan_in_fan_out,
        })
    }

    /// The folder it was read from.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The base weights it changes, sorted.
    pub fn targets(&self) -> Vec<&str> {
        let mut t: Vec<&str> = self.deltas.keys().map(String::as_str).collect();
        t.sort();
        t
    }

    pub(crate) fn adapts(&self, name: &str) -> bool {
        self.deltas.contains_key(name)
    }

    /// The update of `name` as `y += B (A x)` whatever the weight's layout (switchable
    /// adapters, which are never merged).
    pub(crate) fn update(&self, name: &str) -> Option<Arc<LoraDelta>> {
        self.deltas.get(name).cloned()
    }

    /// The update of `name` kept apart from the weight (an `[out, in]` weight only: not
    /// `fan_in_fan_out`).
    pub(crate) fn delta(&self, name: &str) -> Option<Arc<LoraDelta>> {
        (!self.fan_in_fan_out)
            .then(|| self.deltas.get(name).cloned())
            .flatten()
    }

    /// Checks that the update fits the base weight `name` stored as `[rows, cols]`.
    pub(crate) fn check_shape(&self, name: &str, shape: &[usize]) -> Result<()> {
        let Some(d) = self.deltas.get(name) else {
            return Ok(());
        };
        let want = if self.fan_in_fan_out {
            [d.d_in, d.d_out]
        } else {
            [d.d_out, d.d_in]
        };
        if shape != want {
            return Err(Error::Adapter {
                path: self.dir.join("adapter_model.safetensors"),
                message: format!(
                    "the update of {name:?} is {want:?} (rank {}) but the base weight is {shape:?}{}",
                    d.rank,
                    if self.fan_in_fan_out { ", fan_in_fan_out" } else { "" }
                ),
            });
        }
        Ok(())
    }

    /// Adds the update's row `row` of the stored `[rows, cols]` layout to `dst` (`cols` long).
    pub(crate) fn add_row(&self, name: &str, row: usize, dst: &mut [f32]) {
        let Some(d) = self.deltas.get(name) else {
            return;
        };
        for k in 0..d.rank {
            if self.fan_in_fan_out {
                // Stored [in, out]: dst += Σ_k A[k,row]·Bᵀ[k,:].
                let coef = d.a[k * d.d_in + row];
                let bk = &d.bt[k * d.d_out..(k + 1) * d.d_out];
                dst.iter_mut().zip(bk).for_each(|(o, &b)| *o += coef * b);
            } else {
                // Stored [out, in]: dst += Σ_k Bᵀ[k,row]·A[k,:].
                let coef = d.bt[k * d.d_out + row];
                dst.iter_mut()
                    .zip(d.a_row(k))
                    .for_each(|(o, &a)| *o += coef * a);
            }
        }
    }

    /// Adds the update to a whole weight read as `[rows, cols]`, rows in parallel.
    pub(crate) fn add_to(&self, name: &str, data: &mut [f32], cols: usize) {
        use rayon::prelude::*;
        if !self.adapts(name) || cols == 0 {
            return;
        }
        data.par_chunks_mut(cols)
            .enumerate()
            .for_each(|(r, row)| self.add_row(name, r, row));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tensor_names() {
        assert_eq!(
            split_name("base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"),
            Some(("model.layers.0.self_attn.q_proj", 'A'))
        );
        assert_eq!(
            split_name("base_model.model.transformer.h.1.attn.c_attn.lora_B.default.weight"),
            Some(("transformer.h.1.attn.c_attn", 'B'))
        );
        assert_eq!(split_name("base_model.model.lm_head.weight"), None);
    }

    #[test]
    fn patterns_match_dotted_suffixes() {
        let p = Some(BTreeMap::from([
            ("down_proj".to_string(), 2usize),
            ("layers.1.mlp.down_proj".to_string(), 3),
        ]));
        assert_eq!(pattern_value(&p, "model.layers.0.mlp.down_proj"), Some(2));
        assert_eq!(pattern_value(&p, "model.layers.1.mlp.down_proj"), Some(3));
        assert_eq!(pattern_value(&p, "model.layers.0.mlp.xdown_proj"), None);
    }

    #[test]
    fn update_rows_in_both_layouts() {
        // A = [[1, 2, 3]] (r=1, in=3), B = [[2], [-1]] (out=2), scale folded into B.
        let d = LoraDelta {
            rank: 1,
            d_in: 3,
            d_out: 2,
            a: vec![1.0, 2.0, 3.0],
            bt: vec![2.0, -1.0],
        };
        let x = [1.0f32, 0.0, -1.0];
        let mut y = vec![10.0f32, 20.0];
        d.add_product(&x, 1, &mut y);
        assert_eq!(y, vec![10.0 - 4.0, 20.0 + 2.0]);
        let ax = d.project(&x, 1);
        assert_eq!(ax, vec![-2.0]);
        // Four rows take the parallel path.
        let x4: Vec<f32> = (0..12).map(|i| i as f32).collect();
        let mut y4 = vec![0f32; 8];
        d.add_product(&x4, 4, &mut y4);
        let want: Vec<f32> = (0..4)
            .flat_map(|j| {
                let ax = (0..3).map(|i| (i + 1) as f32 * x4[j * 3 + i]).sum::<f32>();
                [2.0 * ax, -ax]
            })
            .collect();
        assert_eq!(y4, want);
        let part = d.slice_out(1, 2);
        let mut y = vec![0.0f32];
        part.add_product(&x, 1, &mut y);
        assert_eq!(y, vec![2.0]);
        let mut ad = LoraAdapter {
            dir: PathBuf::new(),
            deltas: HashMap::from([("w".to_string(), Arc::new(d))]),
            fan_in_fan_out: false,
        };
        let mut w = vec![0.0; 6];
        ad.add_to("w", &mut w, 3);
        assert_eq!(w, vec![2.0, 4.0, 6.0, -1.0, -2.0, -3.0]);
        ad.fan_in_fan_out = true;
        let mut w = vec![0.0; 6];
        ad.add_to("w", &mut w, 2);
        assert_eq!(w, vec![2.0, -1.0, 4.0, -2.0, 6.0, -3.0]);
        assert!(ad.check_shape("w", &[3, 2]).is_ok());
        assert!(ad.check_shape("w", &[2, 3]).is_err());
    }
}
