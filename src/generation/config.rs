//! What to generate and how to pick tokens.

use crate::error::{Error, Result};

/// Settings for one `generate` call. Builder-style: `GenerationConfig::default().max_new_tokens(64)`.
///
/// The default is greedy decoding of up to 128 tokens that stops at the model's EOS.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerationConfig {
    /// Most tokens to generate.
    pub max_new_tokens: usize,
    /// Softmax temperature; `0` means greedy (argmax).
    pub temperature: f32,
    /// Keep only the `k` most likely tokens (`None` or 0: off).
    pub top_k: Option<usize>,
    /// Keep the smallest set of tokens whose probability reaches `p` (`None` or 1: off).
    pub top_p: Option<f32>,
    /// Drop tokens less likely than `min_p` times the most likely one (`None`: off).
    pub min_p: Option<f32>,
    /// CTRL-style repetition penalty on tokens already in the sequence (`None` or 1: off).
    pub repetition_penalty: Option<f32>,
    /// Random seed for sampling (fixed seed: reproducible output).
    pub seed: u64,
    /// Stop when any of these strings appears in the generated text (not included in it).
    pub stop: Vec<String>,
    /// Keep generating past the end-of-sequence token.
    pub ignore_eos: bool,
}

impl Default for GenerationConfig {
    fn default() -> Self {
        Self {
            max_new_tokens: 128,
            temperature: 0.0,
            top_k: None,
            top_p: None,
            min_p: None,
            repetition_penalty: None,
            seed: 299_792_458,
            stop: Vec::new(),
            ignore_eos: false,
        }
    }
}

impl GenerationConfig {
    /// Greedy decoding (the default).
    pub fn greedy() -> Self {
        Self::default()
    }

    /// Sets `max_new_tokens`.
    pub fn max_new_tokens(mut self, n: usize) -> Self {
        self.max_new_tokens = n;
        self
    }

    /// Sets the temperature (0 = greedy).
    pub fn temperature(mut self, t: f32) -> Self {
        self.temperature = t;
        self
    }

    /// Sets top-k.
    pub fn top_k(mut self, k: usize) -> Self {
        self.top_k = Some(k);
        self
    }

    /// Sets top-p (nucleus).
    pub fn top_p(mut self, p: f32) -> Self {
        self.top_p = Some(p);
        self
    }

    /// Sets min-p.
    pub fn min_p(mut self, p: f32) -> Self {
        self.min_p = Some(p);
        self
    }

    /// Sets the repetition penalty.
    pub fn repetition_penalty(mut self, r: f32) -> Self {
        self.repetition_penalty = Some(r);
        self
    }

    /// Sets the sampling seed.
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// Adds a stop string.
    pub fn stop(mut self, s: impl Into<String>) -> Self {
        self.stop.push(s.into());
        self
    }

    /// Sets whether to ignore EOS.
    pub fn ignore_eos(mut self, yes: bool) -> Self {
        self.ignore_eos = yes;
        self
    }

    /// Checks every value, naming the first one out of range.
    pub fn validate(&self) -> Result<()> {
        if !(self.temperature.is_finite() && self.temperature >= 0.0) {
            return Err(Error::invalid_arg(
                "temperature",
                format!("must be a finite number >= 0, got {}", self.temperature),
            ));
        }
        if let Some(p) = self.top_p {
            if !(p > 0.0 && p <= 1.0) {
                return Err(Error::invalid_arg(
                    "top_p",
                    format!("must be in (0, 1], got {p}"),
                ));
            }
        }
        if let Some(p) = self.min_p {
            if !(0.0..=1.0).contains(&p) {
                return Err(Error::invalid_arg(
                    "min_p",
                    format!("must be in [0, 1], got {p}"),
                ));
            }
        }
        if let Some(r) = self.repetition_penalty {
            if !(r.is_finite() && r > 0.0) {
                return Err(Error::invalid_arg(
                    "repetition_penalty",
                    format!("must be a finite number > 0, got {r}"),
                ));
            }
        }
        if self.stop.iter().any(|s| s.is_empty()) {
            return Err(Error::invalid_arg("stop", "stop strings must not be empty"));
        }
        Ok(())
    }

    /// Whether tokens are chosen by argmax.
    pub fn is_greedy(&self) -> bool {
        self.temperature == 0.0
    }
}
