//! What to generate and how to pick tokens.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::generation::LogitsProcessor;

/// Settings for one `generate` call. Builder-style: `GenerationConfig::default().max_new_tokens(64)`.
///
/// The default is greedy decoding of up to 128 tokens that stops at the model's EOS.
/// [`Model::generation_config`](crate::Model::generation_config) starts instead from the
/// defaults the model folder's `generation_config.json` recommends.
#[derive(Clone)]
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
    /// OpenAI's presence penalty: subtracted once from every token already generated in
    /// this call (`None` or 0: off).
    pub presence_penalty: Option<f32>,
    /// OpenAI's frequency penalty: subtracted per occurrence in this call's output.
    pub frequency_penalty: Option<f32>,
    /// Added to the scores of these token ids before anything else (OpenAI's `logit_bias`;
    /// -100 or less effectively bans a token).
    pub logit_bias: BTreeMap<u32, f32>,
    /// The caller's own processors, run after the penalties and before temperature and the
    /// filters (also under greedy decoding).
    pub processors: Vec<Arc<dyn LogitsProcessor>>,
    /// Random seed for sampling (fixed seed: reproducible output).
    pub seed: u64,
    /// Stop when any of these strings appears in the generated text (not included in it).
    pub stop: Vec<String>,
    /// Stop after any of these token ids too (besides the model's EOS ids); the token is
    /// generated but its text is not emitted, and the finish reason is `Stop`.
    pub stop_token_ids: Vec<u32>,
    /// Keep generating past the end-of-sequence token.
    pub ignore_eos: bool,
    /// Ends the generation, from any thread, before its next token.
    pub cancel: Option<CancelToken>,
    /// Report each generated token's log-probability and this many most likely alternatives
    /// ([`Token::logprobs`](crate::Token::logprobs); `Some(0)`: the token's own only), from
    /// the model's distribution before any processor. Reads each step's scores back to the
    /// host.
    pub logprobs: Option<usize>,
}

/// Stops a running generation from another thread (or from the loop consuming it): once
/// [`CancelToken::cancel`] is called, the [`Generator`](crate::Generator) yields no further
/// token and reports [`FinishReason::Cancelled`](crate::FinishReason::Cancelled); the
/// session keeps every token generated so far and stays usable. Clones share the flag.
#[derive(Debug, Clone, Default)]
pub struct CancelToken(Arc<AtomicBool>);

impl CancelToken {
    /// A token not yet cancelled.
    pub fn new() -> Self {
        Self::default()
    }

    /// Asks every generation holding this token (or a clone) to stop.
    pub fn cancel(&self) {
        self.0.store(true, Ordering::Relaxed);
    }

    /// Whether [`CancelToken::cancel`] was called.
    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

impl std::fmt::Debug for GenerationConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GenerationConfig")
            .field("max_new_tokens", &self.max_new_tokens)
            .field("temperature", &self.temperature)
            .field("top_k", &self.top_k)
            .field("top_p", &self.top_p)
            .field("min_p", &self.min_p)
            .field("repetition_penalty", &self.repetition_penalty)
            .field("presence_penalty", &self.presence_penalty)
            .field("frequency_penalty", &self.frequency_penalty)
            .field("logit_bias", &self.logit_bias)
            .field("processors", &self.processors.len())
            .field("seed", &self.seed)
            .field("stop", &self.stop)
            .field("stop_token_ids", &self.stop_token_ids)
            .field("ignore_eos", &self.ignore_eos)
            .field("cancel", &self.cancel)
            .field("logprobs", &self.logprobs)
            .finish()
    }
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
            presence_penalty: None,
            frequency_penalty: None,
            logit_bias: BTreeMap::new(),
            processors: Vec::new(),
            seed: 299_792_458,
            stop: Vec::new(),
            stop_token_ids: Vec::new(),
            ignore_eos: false,
            cancel: None,
            logprobs: None,
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

    /// Sets the presence penalty.
    pub fn presence_penalty(mut self, p: f32) -> Self {
        self.presence_penalty = Some(p);
        self
    }

    /// Sets the frequency penalty.
    pub fn frequency_penalty(mut self, p: f32) -> Self {
        self.frequency_penalty = Some(p);
        self
    }

    /// Adds `bias` to token `id`'s score.
    pub fn logit_bias(mut self, id: u32, bias: f32) -> Self {
        self.logit_bias.insert(id, bias);
        self
    }

    /// Adds a processor of the caller's: any `Fn(&mut [f32], &[u32])` (scores, history) or
    /// [`LogitsProcessor`].
    pub fn processor(mut self, p: impl LogitsProcessor + 'static) -> Self {
        self.processors.push(Arc::new(p));
        self
    }

    /// Adds a stop token id.
    pub fn stop_token(mut self, id: u32) -> Self {
        self.stop_token_ids.push(id);
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

    /// Lets `token` end the generation (see [`CancelToken`]).
    pub fn cancel_token(mut self, token: CancelToken) -> Self {
        self.cancel = Some(token);
        self
    }

    /// Reports log-probabilities with `top` alternatives per token (see
    /// [`GenerationConfig::logprobs`](GenerationConfig#structfield.logprobs)).
    pub fn logprobs(mut self, top: usize) -> Self {
        self.logprobs = Some(top);
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
        for (name, v) in [
            ("presence_penalty", self.presence_penalty),
            ("frequency_penalty", self.frequency_penalty),
        ] {
            if let Some(v) = v {
                if !(v.is_finite() && (-2.0..=2.0).contains(&v)) {
                    return Err(Error::invalid_arg(
                        name,
                        format!("must be in [-2, 2] as in the OpenAI API, got {v}"),
                    ));
                }
            }
        }
        if let Some((id, b)) = self.logit_bias.iter().find(|(_, b)| !b.is_finite()) {
            return Err(Error::invalid_arg(
                "logit_bias",
                format!("bias for token {id} must be finite, got {b}"),
            ));
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
