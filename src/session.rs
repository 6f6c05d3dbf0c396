//! [`Session`]: one conversation's token history and KV cache.

use std::time::Instant;

use serde::Serialize;

use crate::error::{Error, Result};
use crate::generation::{GenerationConfig, Generator, Score};
use crate::model::{Logits, Model};
use crate::nn::KvCache;

/// One sequence's state. Positions come from the cache; a second `generate` continues from
/// what the first left behind without re-running it.
#[derive(Debug)]
pub struct Session {
    model: Model,
    cache: KvCache,
    /// Every token of the sequence; those past `cache.len()` are not yet run through the model.
    tokens: Vec<u32>,
    /// The switchable adapter this session runs with (its slot), if any.
    adapter: Option<usize>,
}

impl Session {
    pub(crate) fn new(model: Model) -> Self {
        let cache = model.lm().new_cache();
        Self {
            model,
            cache,
            tokens: Vec::new(),
            adapter: None,
        }
    }

    /// Runs this session with the switchable adapter `name` (see
    /// [`LoadOptions::switchable_adapter`](crate::LoadOptions::switchable_adapter)), or with
    /// none (`None`: the base model, plus any adapter merged at load). The conversation is
    /// kept; if the choice changes, the cache is dropped and the next call re-runs the history
    /// under the new adapter. An unknown name is an error and changes nothing.
    pub fn set_adapter(&mut self, name: Option<&str>) -> Result<()> {
        let slot = match name {
            None => None,
            Some(n) => {
                let names = self.model.adapter_names();
                Some(names.iter().position(|a| a == n).ok_or_else(|| {
                    Error::invalid_arg(
                        "adapter",
                        format!(
                            "no switchable adapter {n:?}; the model has {}",
                            if names.is_empty() {
                                "none (LoadOptions::switchable_adapter adds them)".to_string()
                            } else {
                                format!("{names:?}")
                            }
                        ),
                    )
                })?)
            }
        };
        if slot != self.adapter {
            self.adapter = slot;
            self.cache.clear();
        }
        Ok(())
    }

    /// The switchable adapter this session runs with.
    pub fn adapter(&self) -> Option<&str> {
        self.adapter.map(|i| self.model.adapter_names()[i].as_str())
    }

    /// The model this session runs.
    pub fn model(&self) -> &Model {
        &self.model
    }

    /// Every token so far (prompts and generated tokens).
    pub fn tokens(&self) -> &[u32] {
        &self.tokens
    }

    /// Positions held in the KV cache.
    pub fn cached_len(&self) -> usize {
        self.cache.len()
    }

    /// Forgets the whole conversation.
    pub fn reset(&mut self) {
        self.cache.clear();
        self.tokens.clear();
    }

    /// Encodes `prompt` (with the tokenizer's special tokens, such as BOS, only at the start of
    /// the session) and starts generating after it.
    pub fn generate(&mut self, prompt: &str, cfg: &GenerationConfig) -> Result<Generator<'_>> {
        let add_special = self.tokens.is_empty();
        let ids = self.model.tokenizer()?.encode(prompt, add_special)?;
        self.generate_ids(&ids, cfg)
    }

    /// Continues a conversation: renders `messages` with the model's chat template (with the
    /// generation prompt) and generates the assistant's reply. The cache is reused for the
    /// longest prefix the new rendering shares with what the session already holds, so a
    /// second turn (earlier messages, the reply, a new user message) runs only its new tokens;
    /// a conversation that changed earlier on is re-run from where it differs.
    ///
    /// `messages` are [`Message`](crate::Message)s or any serializable JSON objects the
    /// template understands (e.g. `serde_json::Value` with tool calls).
    pub fn chat<M: Serialize>(
        &mut self,
        messages: &[M],
        cfg: &GenerationConfig,
    ) -> Result<Generator<'_>> {
        let ids = self.model.chat_ids(messages)?;
        self.continue_chat(ids, cfg)
    }

    /// [`Session::chat`] with tool definitions for the template (`tools`: a JSON list of
    /// function schemas, as transformers' `apply_chat_template(tools=...)` takes them).
    pub fn chat_with_tools<M: Serialize>(
        &mut self,
        messages: &[M],
        tools: &serde_json::Value,
        cfg: &GenerationConfig,
    ) -> Result<Generator<'_>> {
        let ids = self.model.chat_ids_with_tools(messages, Some(tools))?;
        self.continue_chat(ids, cfg)
    }

    fn continue_chat(&mut self, ids: Vec<u32>, cfg: &GenerationConfig) -> Result<Generator<'_>> {
        if ids.is_empty() {
            return Err(Error::invalid_arg(
                "messages",
                "the chat template rendered them as no tokens",
            ));
        }
        let shared = self
            .tokens
            .iter()
            .zip(&ids)
            .take_while(|(a, b)| a == b)
            .count();
        self.rewind(shared);
        self.generate_ids(&ids[shared..], cfg)
    }

    /// Forgets every token from position `len` on (prompt or generated), keeping the cache for
    /// the positions before it.
    pub fn rewind(&mut self, len: usize) {
        self.tokens.truncate(len);
        self.cache.truncate(len);
    }

    /// Appends `ids` to the sequence and starts generating after them.
    pub fn generate_ids(&mut self, ids: &[u32], cfg: &GenerationConfig) -> Result<Generator<'_>> {
        cfg.validate()?;
        self.model.check_config_ids(cfg)?;
        if ids.is_empty() && self.tokens.is_empty() {
            return Err(Error::invalid_arg(
                "prompt",
                "the prompt encodes to no tokens and the session is empty: nothing to continue",
            ));
        }
        self.model.check_ids(ids, self.tokens.len())?;
        let before = self.tokens.len();
        self.tokens.extend_from_slice(ids);
        // The text decoder starts after a few tokens of context (see IncrementalDecoder).
        let context_start = self.tokens.len().saturating_sub(4);
        let cached = self.cache.len().min(before);
        let t0 = Instant::now();
        let logits = self
            .run_pending()
            .inspect_err(|_| self.tokens.truncate(before))?;
        let prompt_tokens = self.tokens.len() - cached;
        let decoder_context = self.tokens[context_start..].to_vec();
        Generator::new(
            self,
            cfg,
            logits,
            decoder_context,
            prompt_tokens,
            cached,
            t0,
        )
    }

    /// Appends `ids` to the sequence, runs them through the model (reusing the cache) and
    /// returns the logits at the last position (`vocab_size` scores).
    pub fn append(&mut self, ids: &[u32]) -> Result<Vec<f32>> {
        if ids.is_empty() {
            return Err(Error::invalid_arg("ids", "no tokens to append"));
        }
        self.model.check_ids(ids, self.tokens.len())?;
        let before = self.tokens.len();
        self.tokens.extend_from_slice(ids);
        self.run_pending()
            .and_then(Logits::into_vec)
            .inspect_err(|_| self.tokens.truncate(before))
    }

    /// Runs the tokens not yet in the cache; returns the last position's logits.
    pub(crate) fn run_pending(&mut self) -> Result<Logits> {
        let done = self.cache.len();
        if done == self.tokens.len() {
            if done == 0 {
                return Err(Error::invalid_arg(
                    "ids",
                    "nothing to run: the session is empty",
                ));
            }
            // Everything is cached: re-run the last token to get its logits again.
            self.cache.truncate(done - 1);
        }
        let start = self.cache.len();
        let pending = self.tokens[start..].to_vec();
        crate::nn::linear::with_adapter_slot(self.adapter, || {
            self.model.feed(&pending, &mut self.cache)
        })
        .inspect_err(|_| {
            self.cache.truncate(start);
        })
    }

    /// Scores `text` as a continuation of the session: each of its tokens' log-probability
    /// given the conversation so far and the text before it (see [`Score`]). The session is
    /// left as it was. Text is encoded as [`Session::generate`] encodes a prompt (special
    /// tokens such as BOS only at the start of an empty session, whose first token is then
    /// not scored).
    pub fn score(&mut self, text: &str) -> Result<Score> {
        self.score_with_alternatives(text, 0)
    }

    /// [`Session::score`] with the `top` most likely tokens at each position.
    pub fn score_with_alternatives(&mut self, text: &str, top: usize) -> Result<Score> {
        let add_special = self.tokens.is_empty();
        let ids = self.model.tokenizer()?.encode(text, add_special)?;
        self.score_ids(&ids, top)
    }

    /// [`Session::score_with_alternatives`] for token ids.
    pub fn score_ids(&mut self, ids: &[u32], top: usize) -> Result<Score> {
        let before = self.tokens.len();
        if ids.is_empty() || (before == 0 && ids.len() < 2) {
            return Err(Error::invalid_arg(
                "text",
                "nothing to score: an empty session needs at least two tokens (the first has nothing before it)",
            ));
        }
        self.model.check_ids(ids, before)?;
        let first_row = if before > 0 {
            Some((self.run_pending()?.into_vec()?, self.tokens[before - 1]))
        } else {
            None
        };
        let start = self.cache.len();
        let scored = crate::nn::linear::with_adapter_slot(self.adapter, || {
            self.model.score_after(ids, &mut self.cache, first_row, top)
        });
        self.cache.truncate(start);
        Ok(Score { tokens: scored? })
    }

    pub(crate) fn push_token(&mut self, id: u32) {
        self.tokens.push(id);
    }
}
