//! Batched generation: several prompts decoded together, one forward pass per step for all of
//! them. Prompts of different lengths are left-padded; the attention masks hide the padding and
//! each row's positions start at its first real token, so every row generates what it would
//! alone.

use crate::error::{Error, Result};
use crate::generation::{Decoding, FinishReason, GenerationConfig};
use crate::model::{Logits, Model};
use crate::models::{Input, LogitsFor};

/// What one prompt of a batch produced.
#[derive(Debug, Clone, PartialEq)]
pub struct BatchOutput {
    /// The prompt's token ids.
    pub prompt_tokens: Vec<u32>,
    /// The generated token ids (including a final EOS or stop token, as [`Session`] does).
    ///
    /// [`Session`]: crate::Session
    pub tokens: Vec<u32>,
    /// The generated text (stop strings and EOS not included).
    pub text: String,
    /// Why this row ended.
    pub finish_reason: FinishReason,
}

impl Model {
    /// Generates a continuation of every prompt at once (each encoded as
    /// [`Model::encode`] does). Rows finish independently; the result is in prompt order.
    pub fn generate_batch(
        &self,
        prompts: &[&str],
        cfg: &GenerationConfig,
    ) -> Result<Vec<BatchOutput>> {
        let ids = prompts
            .iter()
            .map(|p| self.encode(p))
            .collect::<Result<Vec<_>>>()?;
        self.generate_batch_ids(&ids, cfg)
    }

    /// [`Model::generate_batch`] from token ids.
    pub fn generate_batch_ids(
        &self,
        prompts: &[Vec<u32>],
        cfg: &GenerationConfig,
    ) -> Result<Vec<BatchOutput>> {
        cfg.validate()?;
        self.check_config_ids(cfg)?;
        if prompts.is_empty() {
            return Ok(Vec::new());
        }
        if let Some(i) = prompts.iter().position(Vec::is_empty) {
            return Err(Error::invalid_arg(
                "prompts",
                format!("prompt {i} has no tokens"),
            ));
        }
        for p in prompts {
            self.check_ids(p, 0)?;
        }
        let rows = prompts.len();
        let longest = prompts.iter().map(Vec::len).max().unwrap_or(0);
        let pads: Vec<usize> = prompts.iter().map(|p| longest - p.len()).collect();
        // Padding slots hold the row's first token: any valid id does, the mask hides it.
        let padded: Vec<Vec<u32>> = prompts
            .iter()
            .zip(&pads)
            .map(|(p, &pad)| {
                std::iter::repeat_n(p[0], pad)
                    .chain(p.iter().copied())
                    .collect()
            })
            .collect();

        let mut cache = self.lm().new_cache();
        let rows_ids: Vec<&[u32]> = padded.iter().map(Vec::as_slice).collect();
        let vocab = self.vocab_size();
        let mut logits = self.feed_rows(&rows_ids, &pads, &mut cache)?;

        let mut histories: Vec<Vec<u32>> = prompts.to_vec();
        let mut decodings = histories
            .iter()
            .map(|h| Decoding::new(self, cfg, &h[h.len().saturating_sub(4)..], h.len()))
            .collect::<Result<Vec<_>>>()?;
        let mut texts = vec![String::new(); rows];
        loop {
            if decodings.first().is_some_and(Decoding::cancelled) {
                for d in decodings.iter_mut().filter(|d| d.finish.is_none()) {
                    d.finish = Some(FinishReason::Cancelled);
                }
                break;
            }
            // Greedy rows without processors take the device's argmax: only ids come back.
            let (picked, scores) = if decodings.iter().all(Decoding::picks_argmax) {
                if logits.has_nan()? {
                    let position = histories.iter().map(Vec::len).max().unwrap_or(0);
                    return Err(crate::Error::NonFiniteScores { position });
                }
                (Some(logits.argmax()?), Vec::new())
            } else {
                (None, logits.into_vec()?)
            };
            for (r, d) in decodings.iter_mut().enumerate() {
                if d.finish.is_some() {
                    continue;
                }
                let id = match &picked {
                    Some(ids) => ids[r],
                    None => {
                        let mut row = scores[r * vocab..(r + 1) * vocab].to_vec();
                        d.pick(&mut row, &histories[r])?
                    }
                };
                let used = pads[r] + histories[r].len();
                let token = d.accept(self, id, used)?;
                histories[r].push(token.id);
                texts[r].push_str(&token.text);
            }
            if decodings.iter().all(|d| d.finish.is_some()) {
                break;
            }
            // Every row takes a step (finished rows repeat their last token, unused).
            let ids: Vec<u32> = histories.iter().map(|h| h[h.len() - 1]).collect();
            logits = Logits(self.lm().forward(
                Input {
                    ids: &ids,
                    pads: &pads,
                },
                &mut cache,
                LogitsFor::Last,
            )?);
        }
        Ok(histories
            .into_iter()
            .zip(prompts)
            .zip(texts)
            .zip(decodings)
            .map(|(((h, p), text), d)| BatchOutput {
                prompt_tokens: p.clone(),
                tokens: h[p.len()..].to_vec(),
                text,
                finish_reason: d.finish.unwrap_or(FinishReason::Length),
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use crate::model::Logits;
    use crate::{CpuPaths, Device, Model};

    fn max_diff(a: &[f32], b: &[f32]) -> f32 {
        a.iter()
            .zip(b)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max)
    }

    /// A left-padded batch on kiln's host executor against the same batch through burn's
    /// tensors (the reference path): every row's logits, after the prompts and after each of
    /// three decode steps, within the large-logit suite's tolerance.
    #[test]
    fn host_batches_match_the_tensor_executor() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/large");
        for name in [
            "llama-bf16",
            "mistral-bf16",
            "mixtral-bf16",
            "qwen3-bf16",
            "gemma2-bf16",
        ] {
            let dir = root.join(name);
            let host = Model::load(&dir, &Device::cpu()).unwrap();
            let tensor =
                Model::load(&dir, &Device::cpu().with_cpu_paths(CpuPaths::Tensor)).unwrap();
            let prompt = host
                .encode("The quick brown fox jumps over the lazy dog")
                .unwrap();
            let lens = [2, prompt.len(), 5];
            let longest = prompt.len();
            let pads: Vec<usize> = lens.iter().map(|l| longest - l).collect();
            let rows: Vec<Vec<u32>> = lens
                .iter()
                .zip(&pads)
                .map(|(&l, &pad)| {
                    std::iter::repeat_n(prompt[0], pad)
                        .chain(prompt[..l].iter().copied())
                        .collect()
                })
                .collect();
            let rows: Vec<&[u32]> = rows.iter().map(Vec::as_slice).collect();
            let run = |m: &Model| -> Vec<Vec<f32>> {
                let mut cache = m.lm().new_cache();
                let mut steps = vec![m.feed_rows(&rows, &pads, &mut cache).unwrap()];
                for step in 0..3u32 {
                    let ids: Vec<u32> = (0..3).map(|r| 10 + 7 * r + step).collect();
                    let out = m.feed_rows(&[&ids[..1], &ids[1..2], &ids[2..]], &pads, &mut cache);
                    steps.push(out.unwrap());
                }
                steps
                    .into_iter()
                    .map(|l: Logits| l.into_vec().unwrap())
                    .collect()
            };
            let (h, t) = (run(&host), run(&tensor));
            for (step, (h, t)) in h.iter().zip(&t).enumerate() {
                assert_eq!(h.len(), 3 * host.vocab_size(), "{name} step {step}");
                let scale = t.iter().fold(0f32, |m, v| m.max(v.abs()));
                let tol = (2e-5 * scale).max(1e-4);
                let d = max_diff(h, t);
                assert!(d <= tol, "{name} step {step}: {d} > {tol}");
            }
        }
    }
}
