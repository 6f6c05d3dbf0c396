//! The [`Generator`]: an iterator over generated tokens and their text.

use std::time::Instant;

use crate::error::{Error, Result};
use crate::generation::{
    GenerationConfig, ProcessorChain, RowLogprobs, Sampler, StopMatcher, TokenLogprobs,
};
use crate::model::{Logits, Model};
use crate::session::Session;
use crate::tokenizer::IncrementalDecoder;

/// One generated token.
#[derive(Debug, Clone, PartialEq)]
pub struct Token {
    /// Its id.
    pub id: u32,
    /// The text it completes: whole UTF-8 only, possibly empty (part of a character, a special
    /// token, or text held back while it might start a stop string).
    pub text: String,
    /// Its log-probability and the most likely alternatives, when
    /// [`GenerationConfig::logprobs`](crate::GenerationConfig#structfield.logprobs) asks.
    pub logprobs: Option<TokenLogprobs>,
}

/// Why generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// `max_new_tokens` reached, or the model's context is full.
    Length,
    /// The model produced an end-of-sequence token.
    Eos,
    /// A stop string appeared.
    Stop,
    /// The [`CancelToken`](crate::CancelToken) of the generation's config was cancelled.
    Cancelled,
}

impl FinishReason {
    /// `length`, `eos`, `stop` or `cancelled`.
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Length => "length",
            FinishReason::Eos => "eos",
            FinishReason::Stop => "stop",
            FinishReason::Cancelled => "cancelled",
        }
    }
}

/// Timings of one generation.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct GenerationStats {
    /// Prompt tokens run before the first sample (those not already in the cache).
    pub prompt_tokens: usize,
    /// Positions already in the session's cache that this generation reused.
    pub cached_tokens: usize,
    /// Seconds spent on them.
    pub prefill_s: f64,
    /// Tokens generated so far.
    pub generated_tokens: usize,
    /// Decode steps (forward passes after the prefill).
    pub decode_steps: usize,
    /// Seconds spent in decode steps.
    pub decode_s: f64,
}

impl GenerationStats {
    /// Prompt tokens per second.
    pub fn prefill_tokens_per_s(&self) -> f64 {
        rate(self.prompt_tokens, self.prefill_s)
    }

    /// Decoded tokens per second.
    pub fn decode_tokens_per_s(&self) -> f64 {
        rate(self.decode_steps, self.decode_s)
    }
}

fn rate(n: usize, s: f64) -> f64 {
    if n == 0 || s <= 0.0 {
        0.0
    } else {
        n as f64 / s
    }
}

/// The per-sequence part of decoding: processors, sampler, stop strings and tokens, text
/// decoding, and when to finish. A [`Generator`] drives one; batched generation one per row.
pub(crate) struct Decoding {
    cfg: GenerationConfig,
    chain: ProcessorChain,
    sampler: Sampler,
    stop: StopMatcher,
    decoder: Option<IncrementalDecoder>,
    pub(crate) finish: Option<FinishReason>,
    pub(crate) generated: usize,
    /// The last picked token's log-probabilities, until [`Decoding::accept`] takes them.
    pending_logprobs: Option<TokenLogprobs>,
    /// The model (a shared handle), for the alternatives' text, when log-probabilities are
    /// asked for.
    model: Option<Model>,
}

impl Decoding {
    /// `decoder_context`: the last few tokens before the first generated one (for text
    /// decoding); `generated_from`: where the generated tokens will start in the history.
    pub(crate) fn new(
        model: &Model,
        cfg: &GenerationConfig,
        decoder_context: &[u32],
        generated_from: usize,
    ) -> Result<Self> {
        let decoder = match model.tokenizer() {
            Ok(tok) => Some(IncrementalDecoder::new(tok, decoder_context, true)?),
            Err(_) => None,
        };
        Ok(Self {
            chain: ProcessorChain::from_config(cfg, generated_from),
            sampler: if cfg.is_greedy() {
                Sampler::greedy()
            } else {
                Sampler::seeded(cfg.seed)
            },
            stop: StopMatcher::new(cfg.stop.clone()),
            cfg: cfg.clone(),
            decoder,
            finish: (cfg.max_new_tokens == 0).then_some(FinishReason::Length),
            generated: 0,
            pending_logprobs: None,
            model: cfg.logprobs.map(|_| model.clone()),
        })
    }

    /// Whether the next id is the plain argmax of the scores (greedy, no processors), which the
    /// device can compute so that only the id is read back.
    pub(crate) fn picks_argmax(&self) -> bool {
        self.sampler.is_greedy() && self.chain.is_empty() && self.cfg.logprobs.is_none()
    }

    /// Picks the next id from a row of scores for the sequence `history`: processors, then
    /// the sampler. NaN scores (from the model or a processor) are an error.
    pub(crate) fn pick(&mut self, logits: &mut [f32], history: &[u32]) -> Result<u32> {
        let raw = self.cfg.logprobs.map(|_| logits.to_vec());
        self.chain.process(logits, history);
        if logits.iter().any(|v| v.is_nan()) {
            return Err(Error::NonFiniteScores {
                position: history.len(),
            });
        }
        let id = self.sampler.sample(logits);
        if let (Some(raw), Some(n)) = (raw, self.cfg.logprobs) {
            let lp = RowLogprobs::new(&raw);
            self.pending_logprobs = Some(lp.entry(
                &raw,
                id,
                n,
                self.model.as_ref().and_then(|m| m.tokenizer().ok()),
                history.last().copied(),
            ));
        }
        Ok(id)
    }

    /// Picks the next id from one row of `logits` (see [`Decoding::pick`]).
    pub(crate) fn pick_from(&mut self, logits: Logits, history: &[u32]) -> Result<u32> {
        if self.picks_argmax() {
            if logits.has_nan()? {
                return Err(Error::NonFiniteScores {
                    position: history.len(),
                });
            }
            return Ok(logits.argmax()?[0]);
        }
        let mut row = logits.into_vec()?;
        self.pick(&mut row, history)
    }

    /// Whether the config's cancel token was cancelled.
    pub(crate) fn cancelled(&self) -> bool {
        self.cfg.cancel.as_ref().is_some_and(|c| c.is_cancelled())
    }

    /// Takes `id` as the next token: decides whether it ends the generation, and returns it
    /// with the text it releases. `context_used` counts the cache slots the sequence fills
    /// before this token.
    pub(crate) fn accept(&mut self, model: &Model, id: u32, context_used: usize) -> Result<Token> {
        let is_eos = model.eos_token_ids().contains(&id);
        let full = context_used + 1 >= model.max_context();
        let tokenizer = model.tokenizer().ok();
        self.generated += 1;

        let mut delta = String::new();
        if is_eos && !self.cfg.ignore_eos {
            self.finish = Some(FinishReason::Eos);
        } else if self.cfg.stop_token_ids.contains(&id) {
            self.finish = Some(FinishReason::Stop);
        } else if let (Some(dec), Some(tok)) = (self.decoder.as_mut(), tokenizer) {
            delta = dec.push(tok, id)?;
        }
        if self.finish.is_none() && (self.generated >= self.cfg.max_new_tokens || full) {
            self.finish = Some(FinishReason::Length);
        }
        let (mut text, matched) = self.stop.push(&delta);
        if matched {
            self.finish = Some(FinishReason::Stop);
        } else if self.finish.is_some() {
            // Text held back as a possible stop-string prefix is released at the end; a stop
            // token ends the stream like EOS (its own text is not emitted).
            let mut tail_matched = false;
            if let (Some(dec), Some(tok)) = (self.decoder.as_mut(), tokenizer) {
                let tail = dec.flush(tok)?;
                let (more, matched) = self.stop.push(&tail);
                text.push_str(&more);
                if matched {
                    self.finish = Some(FinishReason::Stop);
                    tail_matched = true;
                }
            }
            if !tail_matched {
                text.push_str(&self.stop.flush());
            }
        }
        Ok(Token {
            id,
            text,
            logprobs: self.pending_logprobs.take(),
        })
    }
}

/// Streams tokens from a [`Session`]. Each item is one token with its text delta; iteration
/// ends at EOS (unless ignored), a stop string or token, `max_new_tokens` or a full context.
pub struct Generator<'a> {
    session: &'a mut Session,
    decoding: Decoding,
    /// The prompt's scores and when its pass began, until the first token is taken.
    prefill: Option<(Logits, Instant)>,
    stats: GenerationStats,
}

impl<'a> Generator<'a> {
    pub(crate) fn new(
        session: &'a mut Session,
        cfg: &GenerationConfig,
        logits: Logits,
        decoder_context: Vec<u32>,
        prompt_tokens: usize,
        cached_tokens: usize,
        prefill_started: Instant,
    ) -> Result<Self> {
        let generated_from = session.tokens().len();
        let decoding = Decoding::new(session.model(), cfg, &decoder_context, generated_from)?;
        Ok(Self {
            decoding,
            prefill: Some((logits, prefill_started)),
            stats: GenerationStats {
                prompt_tokens,
                cached_tokens,
                ..Default::default()
            },
            session,
        })
    }

    /// Why generation ended (`None` while it goes on).
    pub fn finish_reason(&self) -> Option<FinishReason> {
        self.decoding.finish
    }

    /// Timings so far.
    pub fn stats(&self) -> GenerationStats {
        self.stats
    }

    /// Picks the next id. The prompt pass is timed up to its first id, each decode step from
    /// its forward pass to its id (the read-back waits for the device).
    fn next_id(&mut self) -> Result<u32> {
        if let Some((logits, t0)) = self.prefill.take() {
            let id = self.decoding.pick_from(logits, self.session.tokens())?;
            self.stats.prefill_s = t0.elapsed().as_secs_f64();
            return Ok(id);
        }
        let t0 = Instant::now();
        let logits = self.session.run_pending()?;
        let id = self.decoding.pick_from(logits, self.session.tokens())?;
        self.stats.decode_s += t0.elapsed().as_secs_f64();
        self.stats.decode_steps += 1;
        Ok(id)
    }

    fn step(&mut self) -> Result<Token> {
        let id = self.next_id()?;
        let model = self.session.model().clone();
        let used = self.session.tokens().len();
        let token = self.decoding.accept(&model, id, used)?;
        self.session.push_token(token.id);
        self.stats.generated_tokens += 1;
        Ok(token)
    }
}

impl Iterator for Generator<'_> {
    type Item = Result<Token>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.decoding.finish.is_some() {
            return None;
        }
        if self.decoding.cancelled() {
            self.decoding.finish = Some(FinishReason::Cancelled);
            return None;
        }
        let out = self.step();
        if out.is_err() {
            self.decoding.finish = Some(FinishReason::Length);
        }
        Some(out)
    }
}

impl std::fmt::Debug for Generator<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Generator")
            .field("cfg", &self.decoding.cfg)
            .field("finish", &self.decoding.finish)
            .field("stats", &self.stats)
            .finish()
    }
}
