//! Logits processors: each rewrites the next-token scores in place. The chain runs in a fixed
//! order, transformers' where it has one: logit bias → repetition penalty → presence/frequency
//! penalties → the caller's processors → (sampling only) temperature → top-k → top-p → min-p.
//! Filtered tokens get `-inf`.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::generation::GenerationConfig;

/// One step of the chain.
pub trait LogitsProcessor: Send + Sync {
    /// Rewrites `logits` (one score per vocabulary entry); `history` is every token of the
    /// sequence so far (prompt and generated).
    fn process(&self, logits: &mut [f32], history: &[u32]);
}

impl<F> LogitsProcessor for F
where
    F: Fn(&mut [f32], &[u32]) + Send + Sync,
{
    fn process(&self, logits: &mut [f32], history: &[u32]) {
        self(logits, history)
    }
}

/// Adds a fixed bias to chosen tokens (OpenAI's `logit_bias`; transformers' `sequence_bias`
/// for one-token sequences). Ids outside the vocabulary are ignored here and rejected by
/// `Session::generate`.
#[derive(Debug, Clone)]
pub struct LogitBias(pub BTreeMap<u32, f32>);

impl LogitsProcessor for LogitBias {
    fn process(&self, logits: &mut [f32], _: &[u32]) {
        for (&id, &b) in &self.0 {
            if let Some(l) = logits.get_mut(id as usize) {
                *l += b;
            }
        }
    }
}

/// CTRL repetition penalty: scores of tokens already seen are divided by `penalty` when
/// positive, multiplied when negative.
#[derive(Debug, Clone)]
pub struct RepetitionPenalty(pub f32);

impl LogitsProcessor for RepetitionPenalty {
    fn process(&self, logits: &mut [f32], history: &[u32]) {
        let mut seen = vec![false; logits.len()];
        for &t in history {
            if let Some(s) = seen.get_mut(t as usize) {
                *s = true;
            }
        }
        for (l, s) in logits.iter_mut().zip(seen) {
            if s {
                *l = if *l > 0.0 { *l / self.0 } else { *l * self.0 };
            }
        }
    }
}

/// OpenAI's presence and frequency penalties over the tokens generated in this call (the
/// history from `from` on): `score -= presence * [count > 0] + frequency * count`.
#[derive(Debug, Clone)]
pub struct PresenceFrequencyPenalty {
    /// Subtracted once from every token that was generated.
    pub presence: f32,
    /// Subtracted per occurrence.
    pub frequency: f32,
    /// Where the generated tokens start in the history.
    pub from: usize,
}

impl LogitsProcessor for PresenceFrequencyPenalty {
    fn process(&self, logits: &mut [f32], history: &[u32]) {
        let mut counts: BTreeMap<u32, u32> = BTreeMap::new();
        for &t in history.get(self.from..).unwrap_or_default() {
            *counts.entry(t).or_default() += 1;
        }
        for (t, c) in counts {
            if let Some(l) = logits.get_mut(t as usize) {
                *l -= self.frequency * c as f32 + self.presence;
            }
        }
    }
}

/// Divides every score by the temperature.
#[derive(Debug, Clone)]
pub struct Temperature(pub f32);

impl LogitsProcessor for Temperature {
    fn process(&self, logits: &mut [f32], _: &[u32]) {
        logits.iter_mut().for_each(|l| *l /= self.0);
    }
}

/// Keeps the `k` highest scores (ties at the threshold are kept, as transformers does).
#[derive(Debug, Clone)]
pub struct TopK(pub usize);

impl LogitsProcessor for TopK {
    fn process(&self, logits: &mut [f32], _: &[u32]) {
        if self.0 == 0 || self.0 >= logits.len() {
            return;
        }
        let mut sorted: Vec<f32> = logits.to_vec();
        let (_, kth, _) = sorted.select_nth_unstable_by(self.0 - 1, |a, b| b.total_cmp(a));
        let kth = *kth;
        logits
            .iter_mut()
            .filter(|l| **l < kth)
            .for_each(|l| *l = f32::NEG_INFINITY);
    }
}

/// Nucleus filtering as transformers does it: sorts the scores ascending and drops the
/// tokens whose cumulative probability from the bottom is at most `1 - p` (the most likely
/// token is always kept).
#[derive(Debug, Clone)]
pub struct TopP(pub f32);

impl LogitsProcessor for TopP {
    fn process(&self, logits: &mut [f32], _: &[u32]) {
        if self.0 >= 1.0 || logits.is_empty() {
            return;
        }
        let mut order: Vec<usize> = (0..logits.len()).collect();
        order.sort_by(|&a, &b| logits[a].total_cmp(&logits[b]));
        let sorted: Vec<f32> = order.iter().map(|&i| logits[i]).collect();
        let probs = softmax(&sorted);
        let threshold = 1.0 - self.0;
        let mut cum = 0.0f32;
        for (rank, &i) in order.iter().enumerate().take(order.len() - 1) {
            cum += probs[rank];
            if cum <= threshold {
                logits[i] = f32::NEG_INFINITY;
            } else {
                break;
            }
        }
    }
}

/// Drops tokens whose probability is below `p` times the top token's.
#[derive(Debug, Clone)]
pub struct MinP(pub f32);

impl LogitsProcessor for MinP {
    fn process(&self, logits: &mut [f32], _: &[u32]) {
        let probs = softmax(logits);
        let top = probs.iter().cloned().fold(0.0f32, f32::max);
        let threshold = self.0 * top;
        for (l, p) in logits.iter_mut().zip(probs) {
            if p < threshold {
                *l = f32::NEG_INFINITY;
            }
        }
    }
}

/// The processors a [`GenerationConfig`] asks for, in order.
#[derive(Default)]
pub struct ProcessorChain {
    steps: Vec<Arc<dyn LogitsProcessor>>,
}

impl std::fmt::Debug for ProcessorChain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ProcessorChain({} steps)", self.steps.len())
    }
}

impl ProcessorChain {
    /// Builds the chain for `cfg`; the tokens of the history from `generated_from` on are the
    /// ones this generation produced (for the presence/frequency penalties). Greedy decoding
    /// skips temperature and the filters, which cannot change the argmax.
    pub fn from_config(cfg: &GenerationConfig, generated_from: usize) -> Self {
        let mut steps: Vec<Arc<dyn LogitsProcessor>> = Vec::new();
        if !cfg.logit_bias.is_empty() {
            steps.push(Arc::new(LogitBias(cfg.logit_bias.clone())));
        }
        if let Some(r) = cfg.repetition_penalty.filter(|r| *r != 1.0) {
            steps.push(Arc::new(RepetitionPenalty(r)));
        }
        let presence = cfg.presence_penalty.unwrap_or(0.0);
        let frequency = cfg.frequency_penalty.unwrap_or(0.0);
        if presence != 0.0 || frequency != 0.0 {
            steps.push(Arc::new(PresenceFrequencyPenalty {
                presence,
                frequency,
                from: generated_from,
            }));
        }
        steps.extend(cfg.processors.iter().cloned());
        if !cfg.is_greedy() {
            if cfg.temperature != 1.0 {
                steps.push(Arc::new(Temperature(cfg.temperature)));
            }
            if let Some(k) = cfg.top_k.filter(|k| *k > 0) {
                steps.push(Arc::new(TopK(k)));
            }
            if let Some(p) = cfg.top_p.filter(|p| *p < 1.0) {
                steps.push(Arc::new(TopP(p)));
            }
            if let Some(p) = cfg.min_p.filter(|p| *p > 0.0) {
                steps.push(Arc::new(MinP(p)));
            }
        }
        Self { steps }
    }

    /// Appends a processor.
    pub fn push(&mut self, p: Arc<dyn LogitsProcessor>) {
        self.steps.push(p);
    }

    /// Whether there are no steps.
    pub fn is_empty(&self) -> bool {
        self.steps.is_empty()
    }

    /// Runs every step.
    pub fn process(&self, logits: &mut [f32], history: &[u32]) {
        for s in &self.steps {
            s.process(logits, history);
        }
    }
}

/// Numerically stable softmax of a score vector.
pub fn softmax(logits: &[f32]) -> Vec<f32> {
    let max = logits.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
    let mut p: Vec<f32> = logits.iter().map(|l| (l - max).exp()).collect();
    let sum: f32 = p.iter().sum();
    p.iter_mut().for_each(|x| *x /= sum);
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repetition_penalty_divides_positive_multiplies_negative() {
        let mut l = vec![2.0, -2.0, 1.0];
        RepetitionPenalty(2.0).process(&mut l, &[0, 1, 1]);
        assert_eq!(l, vec![1.0, -4.0, 1.0]);
    }

    #[test]
    fn temperature_scales() {
        let mut l = vec![2.0, -1.0];
        Temperature(0.5).process(&mut l, &[]);
        assert_eq!(l, vec![4.0, -2.0]);
    }

    #[test]
    fn top_k_keeps_k_best() {
        let mut l = vec![1.0, 5.0, 3.0, 4.0];
        TopK(2).process(&mut l, &[]);
        assert_eq!(l, vec![f32::NEG_INFINITY, 5.0, f32::NEG_INFINITY, 4.0]);
    }

    #[test]
    fn top_p_keeps_nucleus() {
        // probabilities 0.5, 0.3, 0.2 (log-space)
        let mut l: Vec<f32> = [0.5f32, 0.3, 0.2].iter().map(|p| p.ln()).collect();
        TopP(0.75).process(&mut l, &[]);
        assert!(l[0].is_finite() && l[1].is_finite());
        assert_eq!(l[2], f32::NEG_INFINITY);
        let mut l: Vec<f32> = [0.5f32, 0.3, 0.2].iter().map(|p| p.ln()).collect();
        TopP(0.4).process(&mut l, &[]);
        assert!(l[0].is_finite());
        assert!(l[1..].iter().all(|x| *x == f32::NEG_INFINITY));
    }

    #[test]
    fn min_p_drops_unlikely() {
        let mut l: Vec<f32> = [0.6f32, 0.3, 0.1].iter().map(|p| p.ln()).collect();
        MinP(0.25).process(&mut l, &[]);
        assert!(l[0].is_finite() && l[1].is_finite());
        assert_eq!(l[2], f32::NEG_INFINITY);
    }
}
