//! Tokenization through `tokenizers` (tokenizer.json), and decoding that only ever yields whole
//! UTF-8.

use std::path::Path;

use crate::error::{Error, Result};

/// A model's tokenizer.
#[derive(Clone)]
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    context: String,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("file", &self.context)
            .field("vocab_size", &self.vocab_size())
            .finish()
    }
}

impl Tokenizer {
    /// Loads a `tokenizer.json`.
    pub fn from_file(path: &Path) -> Result<Self> {
        if !path.is_file() {
            return Err(Error::MissingFile {
                path: path.to_path_buf(),
                what: "the model's tokenizer (tokenizer.json)".into(),
            });
        }
        let bad = |message: String| Error::Tokenizer {
            context: path.display().to_string(),
            message,
        };
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        // The tokenizers library panics on some malformed JSON (found by tests/mutations.rs):
        // check the syntax first, and turn any panic left into an error.
        serde_json::from_slice::<serde::de::IgnoredAny>(&bytes)
            .map_err(|e| bad(format!("not valid JSON: {e}")))?;
        let parsed = std::panic::catch_unwind(|| tokenizers::Tokenizer::from_bytes(&bytes))
            .map_err(|_| bad("the tokenizers library could not read this file".into()))?;
        let mut inner = parsed.map_err(|e| bad(e.to_string()))?;
        // transformers ignores the truncation and padding saved in tokenizer.json unless a call
        // asks for them (GPT-2's file truncates at 50 tokens); so does kiln.
        inner
            .with_truncation(None)
            .map_err(|e| Error::Tokenizer {
                context: path.display().to_string(),
                message: e.to_string(),
            })?
            .with_padding(None);
        Ok(Self {
            inner,
            context: path.display().to_string(),
        })
    }

    /// A copy that truncates encodings to `max_length` tokens (special tokens included), as
    /// sentence-transformers does with `max_seq_length`.
    pub fn truncating(&self, max_length: usize) -> Result<Self> {
        let mut inner = self.inner.clone();
        inner
            .with_truncation(Some(tokenizers::TruncationParams {
                max_length,
                ..Default::default()
            }))
            .map_err(|e| Error::Tokenizer {
                context: self.context.clone(),
                message: e.to_string(),
            })?;
        Ok(Self {
            inner,
            context: self.context.clone(),
        })
    }

    /// Encodes `text`; with `add_special_tokens` the post-processor adds what the model expects
    /// (e.g. `<s>` for Llama 2), as transformers does by default.
    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>> {
        self.inner
            .encode(text, add_special_tokens)
            .map(|e| e.get_ids().to_vec())
            .map_err(|e| Error::Tokenizer {
                context: format!("encoding with {}", self.context),
                message: e.to_string(),
            })
    }

    /// Decodes ids to text, skipping special tokens (such as `</s>`) when asked.
    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String> {
        self.inner
            .decode(ids, skip_special_tokens)
            .map_err(|e| Error::Tokenizer {
                context: format!("decoding with {}", self.context),
                message: e.to_string(),
            })
    }

    /// The id of a token string, if in the vocabulary.
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// Vocabulary size, added tokens included.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// The wrapped `tokenizers` tokenizer.
    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }
}

/// Turns a stream of token ids into text deltas that are always whole UTF-8.
///
/// Byte-fallback tokens (`<0xE2>`…) can split one character over several tokens; a delta is
/// only released once the text decoded so far no longer ends in an incomplete character. The
/// decoder keeps a few tokens of context so that tokenizers which strip a leading space at the
/// start of a decode still space words correctly. The concatenated deltas equal decoding the
/// context and new tokens at once, minus the decoded context.
#[derive(Debug, Clone)]
pub struct IncrementalDecoder {
    ids: Vec<u32>,
    /// Start of the window that is decoded each step.
    prefix_index: usize,
    /// Text of `ids[prefix_index..read_index]`.
    prefix_text: String,
    read_index: usize,
    skip_special_tokens: bool,
}

impl IncrementalDecoder {
    /// Starts after `context` (e.g. the last few prompt tokens), which is never emitted.
    pub fn new(tokenizer: &Tokenizer, context: &[u32], skip_special_tokens: bool) -> Result<Self> {
        let prefix_text = tokenizer.decode(context, skip_special_tokens)?;
        Ok(Self {
            ids: context.to_vec(),
            prefix_index: 0,
            prefix_text,
            read_index: context.len(),
            skip_special_tokens,
        })
    }

    /// Adds one token; returns the newly completed text (possibly empty).
    pub fn push(&mut self, tokenizer: &Tokenizer, id: u32) -> Result<String> {
        self.ids.push(id);
        let text = tokenizer.decode(&self.ids[self.prefix_index..], self.skip_special_tokens)?;
        if text.len() > self.prefix_text.len()
            && text.starts_with(&self.prefix_text)
            && !text.ends_with('\u{FFFD}')
        {
            let delta = text[self.prefix_text.len()..].to_string();
            // Slide the window: the next decode starts at the tokens just read.
            self.prefix_index = self.read_index;
            self.read_index = self.ids.len();
            self.prefix_text =
                tokenizer.decode(&self.ids[self.prefix_index..], self.skip_special_tokens)?;
            Ok(delta)
        } else {
            Ok(String::new())
        }
    }

    /// Releases whatever is still held back (an incomplete character at the very end becomes
    /// U+FFFD, as a one-shot decode would show it).
    pub fn flush(&mut self, tokenizer: &Tokenizer) -> Result<String> {
        if self.read_index == self.ids.len() {
            return Ok(String::new());
        }
        let text = tokenizer.decode(&self.ids[self.prefix_index..], self.skip_special_tokens)?;
        self.prefix_index = self.read_index;
        self.read_index = self.ids.len();
        let delta = text
            .strip_prefix(self.prefix_text.as_str())
            .unwrap_or(&text)
            .to_string();
        self.prefix_text =
            tokenizer.decode(&self.ids[self.prefix_index..], self.skip_special_tokens)?;
        Ok(delta)
    }
}
