//! Checks and conversions every architecture's config shares: positive sizes, head shapes,
//! RoPE parameters (old `rope_theta` + `rope_scaling`, or transformers 5's `rope_parameters`),
//! per-layer sliding windows. Each returns a message naming the `config.json` field at fault.

use std::path::Path;

use crate::nn::RopeScaling;

/// `value` (the `config.json` at `path`) as the serde struct `T`.
pub fn parse<T: serde::de::DeserializeOwned>(
    path: &Path,
    value: serde_json::Value,
) -> crate::Result<T> {
    serde_json::from_value(value).map_err(|source| crate::Error::Json {
        path: path.to_path_buf(),
        source,
    })
}

/// A parsed `config.json` and where it was read from (for messages).
pub struct ConfigJson<'a> {
    /// The file.
    pub path: &'a Path,
    /// Its contents.
    pub value: serde_json::Value,
}

impl ConfigJson<'_> {
    /// The contents as the serde struct `T` (the fields a family reads beyond another's).
    pub fn parse<T: serde::de::DeserializeOwned>(&self) -> crate::Result<T> {
        parse(self.path, self.value.clone())
    }

    /// A config error naming the file.
    pub fn error(&self, m: Msg) -> crate::Error {
        crate::Error::config(self.path, m)
    }
}

/// Checks that every size is positive and that the layer count (`layers`, also among the
/// sizes or not) is one kiln reads.
pub fn sizes(sizes: &[(&str, usize)], layers: (&str, usize)) -> Result<(), Msg> {
    for &(name, v) in sizes {
        positive(name, v)?;
    }
    layer_count(layers.0, layers.1).map(|_| ())
}

/// A message about the config, to be wrapped in [`crate::Error::Config`].
pub type Msg = String;

/// `v` if positive.
pub fn positive(name: &str, v: usize) -> Result<usize, Msg> {
    if v == 0 {
        Err(format!("`{name}` must be positive"))
    } else {
        Ok(v)
    }
}

/// The most layers a config may declare. Per-layer settings are allocated from this count
/// before any tensor is read, so an absurd value (found by fuzzing: 888 888 888) must be an
/// error, not an allocation; the deepest published models have about 130.
pub const MAX_LAYERS: usize = 4096;

/// Checks a layer count: positive and at most [`MAX_LAYERS`].
pub fn layer_count(name: &str, v: usize) -> Result<usize, Msg> {
    positive(name, v)?;
    if v > MAX_LAYERS {
        return Err(format!(
            "`{name}` is {v}; kiln reads at most {MAX_LAYERS} layers"
        ));
    }
    Ok(v)
}

/// Resolves `(heads, kv_heads, head_dim)`: kv heads default to heads and must divide them;
/// head_dim defaults to hidden / heads and must be even (for RoPE) when `rotary`.
pub fn head_shape(
    hidden: usize,
    heads: usize,
    kv_heads: Option<usize>,
    head_dim: Option<usize>,
    rotary: bool,
) -> Result<(usize, usize, usize), Msg> {
    let heads = positive("num_attention_heads", heads)?;
    let kv_heads = positive("num_key_value_heads", kv_heads.unwrap_or(heads))?;
    if heads % kv_heads != 0 {
        return Err(format!(
            "num_attention_heads ({heads}) is not a multiple of num_key_value_heads ({kv_heads})"
        ));
    }
    let head_dim = match head_dim {
        Some(d) => positive("head_dim", d)?,
        None if !hidden.is_multiple_of(heads) => {
            return Err(format!(
                "hidden_size ({hidden}) is not divisible by num_attention_heads ({heads}) and no head_dim is given"
            ))
        }
        None => hidden / heads,
    };
    if rotary && head_dim % 2 != 0 {
        return Err(format!(
            "head_dim ({head_dim}) must be even for rotary embeddings"
        ));
    }
    Ok((heads, kv_heads, head_dim))
}

/// A finite, positive epsilon.
pub fn epsilon(name: &str, v: f64) -> Result<f64, Msg> {
    if v.is_finite() && v >= 0.0 {
        Ok(v)
    } else {
        Err(format!(
            "`{name}` ({v}) must be a finite non-negative number"
        ))
    }
}

/// What RoPE scaling needs from the rest of `config.json`.
#[derive(Debug, Clone, Copy, Default)]
pub struct RopeContext {
    /// `max_position_embeddings`.
    pub max_position_embeddings: usize,
    /// Top-level `original_max_position_embeddings` (Phi-3 keeps it there).
    pub original_max_position_embeddings: Option<usize>,
}

/// The RoPE base and scaling from one parameter object (`rope_parameters`, a per-layer-type
/// entry of it, or the older `rope_scaling`), falling back to `top_theta` then `default_theta`.
pub fn rope(
    params: Option<&serde_json::Value>,
    top_theta: Option<f64>,
    default_theta: f64,
    ctx: RopeContext,
) -> Result<(f64, RopeScaling), Msg> {
    let params = params.filter(|p| !p.is_null());
    let theta = params
        .and_then(|p| p.get("rope_theta"))
        .and_then(|v| v.as_f64())
        .or(top_theta)
        .unwrap_or(default_theta);
    if !(theta.is_finite() && theta > 1.0) {
        return Err(format!("rope_theta ({theta}) must be a finite number > 1"));
    }
    Ok((theta, rope_scaling(params, ctx)?))
}

/// The fraction of each head that rotates (`partial_rotary_factor`, in the RoPE parameters or
/// at the top level), as a feature count.
pub fn rotary_dim(
    head_dim: usize,
    params: Option<&serde_json::Value>,
    top: Option<f64>,
) -> Result<usize, Msg> {
    let factor = params
        .and_then(|p| p.get("partial_rotary_factor"))
        .and_then(|v| v.as_f64())
        .or(top)
        .unwrap_or(1.0);
    if !(factor > 0.0 && factor <= 1.0) {
        return Err(format!(
            "partial_rotary_factor ({factor}) must be in (0, 1]"
        ));
    }
    let dim = (head_dim as f64 * factor) as usize;
    if dim == 0 || !dim.is_multiple_of(2) {
        return Err(format!(
            "partial_rotary_factor {factor} of head_dim {head_dim} gives {dim} rotary features; it must be even and positive"
        ));
    }
    Ok(dim)
}

fn rope_scaling(params: Option<&serde_json::Value>, ctx: RopeContext) -> Result<RopeScaling, Msg> {
    let Some(p) = params else {
        return Ok(RopeScaling::Default);
    };
    let kind = p
        .get("rope_type")
        .or_else(|| p.get("type"))
        .and_then(|v| v.as_str())
        .unwrap_or("default");
    let num = |key: &str| -> Result<f64, Msg> {
        p.get(key)
            .and_then(|v| v.as_f64())
            .ok_or_else(|| format!("rope scaling `{kind}` needs a numeric `{key}`"))
    };
    match kind {
        "default" => Ok(RopeScaling::Default),
        "linear" => {
            let factor = num("factor")?;
            if factor <= 0.0 {
                return Err(format!("rope scaling factor ({factor}) must be positive"));
            }
            Ok(RopeScaling::Linear { factor })
        }
        "llama3" => {
            let (factor, low, high) = (
                num("factor")?,
                num("low_freq_factor")?,
                num("high_freq_factor")?,
            );
            if factor <= 0.0 || low <= 0.0 || high <= low {
                return Err(
                    "llama3 rope scaling needs factor > 0 and high_freq_factor > low_freq_factor > 0".into(),
                );
            }
            Ok(RopeScaling::Llama3 {
                factor,
                low_freq_factor: low,
                high_freq_factor: high,
                original_max_position_embeddings: num("original_max_position_embeddings")?,
            })
        }
        "longrope" | "su" => {
            let list = |key: &str| -> Result<Vec<f64>, Msg> {
                p.get(key)
                    .and_then(|v| v.as_array())
                    .and_then(|a| a.iter().map(|x| x.as_f64()).collect::<Option<Vec<f64>>>())
                    .ok_or_else(|| format!("rope scaling `{kind}` needs a list of numbers `{key}`"))
            };
            let original = p
                .get("original_max_position_embeddings")
                .and_then(|v| v.as_u64())
                .map(|v| v as usize)
                .or(ctx.original_max_position_embeddings)
                .ok_or("longrope needs `original_max_position_embeddings`")?;
            let original = positive("original_max_position_embeddings", original)?;
            let factor = p
                .get("factor")
                .and_then(|v| v.as_f64())
                .unwrap_or(ctx.max_position_embeddings as f64 / original as f64);
            let attention_factor = match p.get("attention_factor").and_then(|v| v.as_f64()) {
                Some(a) => a,
                None if factor <= 1.0 => 1.0,
                None => (1.0 + factor.ln() / (original as f64).ln()).sqrt(),
            };
            Ok(RopeScaling::LongRope {
                short_factor: list("short_factor")?,
                long_factor: list("long_factor")?,
                original_max_position_embeddings: original,
                attention_factor,
            })
        }
        other => Err(format!(
            "rope scaling type {other:?} is not supported (supported: default, linear, llama3, longrope)"
        )),
    }
}

/// Per-layer windows from `layer_types` (`full_attention` / `sliding_attention`).
pub fn windows_from_layer_types(
    types: &[String],
    window: Option<usize>,
    layers: usize,
) -> Result<Vec<Option<usize>>, Msg> {
    if types.len() != layers {
        return Err(format!(
            "`layer_types` has {} entries for {layers} layers",
            types.len()
        ));
    }
    types
        .iter()
        .map(|t| match (t.as_str(), window) {
            ("full_attention", _) => Ok(None),
            ("sliding_attention", Some(w)) => Ok(Some(positive("sliding_window", w)?)),
            ("sliding_attention", None) => {
                Err("`layer_types` has sliding layers but `sliding_window` is not set".into())
            }
            (other, _) => Err(format!("unknown layer type {other:?} in `layer_types`")),
        })
        .collect()
}
