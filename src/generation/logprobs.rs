//! Log-probabilities: of a chosen token and of its most likely alternatives, from the model's
//! own distribution (the raw scores, before any processor or sampling setting), as the OpenAI
//! API reports them (`logprobs` / `top_logprobs`).

use serde::Serialize;

use crate::tokenizer::Tokenizer;

/// One alternative token and its log-probability.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TopLogprob {
    /// Its id.
    pub id: u32,
    /// Its text as it would read at this position (may be part of a character, shown as
    /// U+FFFD; empty without a tokenizer).
    pub text: String,
    /// Natural-log probability.
    pub logprob: f32,
}

/// A token's log-probability and the most likely tokens at its position.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TokenLogprobs {
    /// Natural-log probability of the token that was chosen (or scored).
    pub logprob: f32,
    /// The most likely tokens at this position, most likely first (as many as asked for).
    pub top: Vec<TopLogprob>,
}

/// Natural-log softmax statistics of one row of scores: computed in f64.
pub(crate) struct RowLogprobs {
    log_z: f64,
}

impl RowLogprobs {
    /// `log Σ exp(s)` of the row.
    pub(crate) fn new(row: &[f32]) -> Self {
        let max = row
            .iter()
            .copied()
            .filter(|v| !v.is_nan())
            .fold(f32::NEG_INFINITY, f32::max) as f64;
        if !max.is_finite() {
            return Self { log_z: max };
        }
        let sum: f64 = row.iter().map(|&v| ((v as f64) - max).exp()).sum();
        Self {
            log_z: max + sum.ln(),
        }
    }

    /// The log-probability of a score.
    pub(crate) fn of(&self, score: f32) -> f32 {
        (score as f64 - self.log_z) as f32
    }

    /// The `n` highest-scoring ids of `row` with their log-probabilities, most likely first
    /// (ties by the lower id).
    pub(crate) fn top(
        &self,
        row: &[f32],
        n: usize,
        tokenizer: Option<&Tokenizer>,
        prev: Option<u32>,
    ) -> Vec<TopLogprob> {
        let n = n.min(row.len());
        if n == 0 {
            return Vec::new();
        }
        let mut idx: Vec<u32> = (0..row.len() as u32).collect();
        let key = |&i: &u32| std::cmp::Reverse(OrdF32(row[i as usize]));
        if n < idx.len() {
            idx.select_nth_unstable_by_key(n - 1, key);
            idx.truncate(n);
        }
        idx.sort_by_key(|&i| (key(&i), i));
        idx.into_iter()
            .map(|id| TopLogprob {
                id,
                text: token_text(tokenizer, prev, id),
                logprob: self.of(row[id as usize]),
            })
            .collect()
    }

    /// The chosen token's entry.
    pub(crate) fn entry(
        &self,
        row: &[f32],
        id: u32,
        n: usize,
        tokenizer: Option<&Tokenizer>,
        prev: Option<u32>,
    ) -> TokenLogprobs {
        TokenLogprobs {
            logprob: self.of(row[id as usize]),
            top: self.top(row, n, tokenizer, prev),
        }
    }
}

/// A token's text as it reads after the token `prev` (so that a word-initial space, which
/// SentencePiece decoders drop at the start of a text, is kept), special tokens included;
/// on its own when there is no `prev` or the two do not decode apart.
pub(crate) fn token_text(tokenizer: Option<&Tokenizer>, prev: Option<u32>, id: u32) -> String {
    let Some(t) = tokenizer else {
        return String::new();
    };
    if let Some(prev) = prev {
        if let (Ok(before), Ok(both)) = (t.decode(&[prev], false), t.decode(&[prev, id], false)) {
            if let Some(rest) = both.strip_prefix(&before) {
                return rest.to_string();
            }
        }
    }
    t.decode(&[id], false).unwrap_or_default()
}

/// Total order on f32 for sorting scores (NaN lowest).
#[derive(Clone, Copy, PartialEq)]
struct OrdF32(f32);

impl Eq for OrdF32 {}

impl PartialOrd for OrdF32 {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for OrdF32 {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        match (self.0.is_nan(), other.0.is_nan()) {
            (true, true) => std::cmp::Ordering::Equal,
            (true, false) => std::cmp::Ordering::Less,
            (false, true) => std::cmp::Ordering::Greater,
            _ => self
                .0
                .partial_cmp(&other.0)
                .unwrap_or(std::cmp::Ordering::Equal),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_softmax_and_top() {
        let row = [1.0f32, 3.0, 2.0, 3.0];
        let lp = RowLogprobs::new(&row);
        let z = (1f64.exp() + 2.0 * 3f64.exp() + 2f64.exp()).ln();
        assert!((lp.of(2.0) as f64 - (2.0 - z)).abs() < 1e-6);
        let top = lp.top(&row, 3, None, None);
        let ids: Vec<u32> = top.iter().map(|t| t.id).collect();
        assert_eq!(ids, vec![1, 3, 2]);
        let total: f64 = row.iter().map(|&s| (lp.of(s) as f64).exp()).sum();
        assert!((total - 1.0).abs() < 1e-6);
        assert_eq!(lp.top(&row, 10, None, None).len(), 4);
        assert!(lp.top(&row, 0, None, None).is_empty());
    }
}

/// One token of a scored text.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ScoredToken {
    /// Its id.
    pub id: u32,
    /// Its text as it reads after the token before it (may be part of a character, shown as
    /// U+FFFD).
    pub text: String,
    /// Natural-log probability of this token given everything before it.
    pub logprob: f32,
    /// The most likely tokens at its position, most likely first (as many as asked for).
    pub top: Vec<TopLogprob>,
}

/// The result of [`Session::score`](crate::Session::score): each token's log-probability given
/// everything before it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Score {
    /// The scored tokens in order. A text scored at the start of an empty session leaves out
    /// its first token (BOS, or the first word), which has nothing before it.
    pub tokens: Vec<ScoredToken>,
}

impl Score {
    /// Sum of the tokens' log-probabilities (the log-likelihood of the text).
    pub fn total_logprob(&self) -> f64 {
        self.tokens.iter().map(|t| t.logprob as f64).sum()
    }

    /// Mean negative log-likelihood per scored token (0 when none was scored).
    pub fn mean_nll(&self) -> f64 {
        if self.tokens.is_empty() {
            0.0
        } else {
            -self.total_logprob() / self.tokens.len() as f64
        }
    }

    /// `exp(mean_nll)`.
    pub fn perplexity(&self) -> f64 {
        self.mean_nll().exp()
    }
}
