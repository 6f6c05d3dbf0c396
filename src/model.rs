//! [`Model`]: weights, config and tokenizer of one model folder; immutable and shareable.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use burn::tensor::{activation, FloatDType, Int, Tensor, TensorData};

use serde::Serialize;

use crate::chat::ChatTemplate;
use crate::device::Device;
use crate::error::{Error, Result};
use crate::generation::{token_text, GenerationConfig, RowLogprobs, ScoredToken};
use crate::loading::{GenerationDefaults, LoraAdapter, WeightStore};
use crate::models::{self, CausalLm, Input, LogitsFor, Taps};
use crate::nn::{Bf16Activations, KvCache, KvPrecision, Quantization};
use crate::session::Session;
use crate::tokenizer::Tokenizer;

/// Tokens run through the model per step when a long input is fed at once.
pub const PREFILL_CHUNK: usize = 512;

/// A loaded model: weights on a [`Device`], its config, tokenizer and generation defaults.
///
/// Cloning is cheap (the weights are shared) and a `Model` is `Send + Sync`: load once, then
/// open a [`Session`] per conversation, from any thread.
#[derive(Debug, Clone)]
pub struct Model {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    lm: Box<dyn CausalLm>,
    tokenizer: Option<Tokenizer>,
    /// The folder's chat template; a template that does not compile is kept as its error
    /// message and reported when chat is used (the model still loads for plain text).
    chat_template: std::result::Result<Option<ChatTemplate>, String>,
    defaults: GenerationDefaults,
    eos: Vec<u32>,
    device: Device,
    dir: PathBuf,
    /// Names of the switchable adapters, by slot.
    adapter_names: Vec<String>,
}

/// How [`Model::load_with`] loads weights.
#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    /// Quantize the projections (and the output head) at load: CPU devices computing in f32.
    pub quantize: Option<Quantization>,
    /// A PEFT LoRA adapter merged into the weights it targets (see [`LoraAdapter`]).
    pub adapter: Option<Arc<LoraAdapter>>,
    /// Named LoRA adapters kept apart from the weights, chosen per session
    /// ([`Session::set_adapter`]).
    pub switchable: Vec<(String, Arc<LoraAdapter>)>,
    /// How activations meet bf16 weights in prefill on CPUs with AVX512-BF16: exactly (the
    /// default: f32 products), as two bf16 values (16 significant bits) or as one.
    pub bf16_activations: Bf16Activations,
    /// Where half-precision weights kept as stored on CPU devices live ([`WeightMemory`]).
    pub weight_memory: WeightMemory,
    /// Called as the weights load ([`LoadOptions::progress`]).
    pub progress: Option<crate::loading::ProgressCallback>,
    /// How KV caches keep keys and values on kiln's CPU path ([`KvPrecision`]); `None`: f16
    /// for quantized models, f32 otherwise.
    pub kv_precision: Option<KvPrecision>,
    /// The output head's quantization when `quantize` is set; `None`: Q8.
    pub head_quantization: Option<Quantization>,
}

/// Where the half-precision weights that CPU devices keep as stored (f16/bf16 projections
/// read by kiln's own kernels) live once loaded.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum WeightMemory {
    /// Read through the memory-mapped safetensors file (the default): ready at once, pages
    /// shared with other processes through the page cache. The mapping asks for huge pages
    /// (Linux), which the kernel uses for file data it reads from disk from then on; data
    /// already cached in small pages stays in them.
    #[default]
    Mapped,
    /// Copied into memory of the process's own at load, which asks the OS for transparent
    /// huge pages (Linux) whatever the page cache holds: every decode step streams all of
    /// them, and they stream faster from huge pages (docs/performance.md, on a 2-core VM:
    /// about 10 % more tokens/s than a file cached in small pages, 0-6 % more than one cached
    /// in huge pages). Loading takes the copy (on that VM about 1 s per GB, most of it the
    /// kernel handing out fresh pages), and each process holds its own copy.
    /// Embedding tables stay mapped (a step reads one row of them).
    Resident,
}

impl WeightMemory {
    /// Parses `resident` or `mapped` (command-line flags).
    pub fn from_name(name: &str) -> Result<Self> {
        match name {
            "resident" => Ok(Self::Resident),
            "mapped" | "mmap" => Ok(Self::Mapped),
            other => Err(Error::invalid_arg(
                "weight_memory",
                format!("{other:?} is not a weight memory (resident or mapped)"),
            )),
        }
    }
}

impl LoadOptions {
    /// Quantizes at load ([`Quantization::Q8`] or [`Quantization::Q4`]; 4-bit models keep the
    /// output head at 8 bits unless [`LoadOptions::head_quantization`] says otherwise).
    pub fn quantize(mut self, q: Quantization) -> Self {
        self.quantize = Some(q);
        self
    }

    /// The output head's quantization in a model quantized with [`LoadOptions::quantize`]:
    /// [`Quantization::Q8`] by default, whatever the projections get (the head decides every
    /// token; llama.cpp keeps its output layer at higher precision too), or
    /// [`Quantization::Q4`] for a model 4-bit throughout (fewer bytes a token, e.g. a quarter
    /// fewer on a 135M model with a 49k vocabulary, for a larger error: docs/performance.md
    /// reports both on the test fixtures). No effect without `quantize`.
    pub fn head_quantization(mut self, q: Quantization) -> Self {
        self.head_quantization = Some(q);
        self
    }

    /// How KV caches keep keys and values on kiln's CPU path (decoding Llama-family models
    /// with half-precision or quantized weights): [`KvPrecision::F16`] halves the cache's
    /// memory and the bytes each decoded token streams through; [`KvPrecision::F32`] keeps
    /// decoding bit-exact with a full recomputation. Default: f16 for quantized models, f32
    /// otherwise.
    pub fn kv_precision(mut self, p: KvPrecision) -> Self {
        self.kv_precision = Some(p);
        self
    }

    /// Merges a LoRA adapter (read with [`LoraAdapter::load`]) into the base weights as they
    /// load. The adapter is read once and can be shared by several loads.
    pub fn adapter(mut self, adapter: LoraAdapter) -> Self {
        self.adapter = Some(Arc::new(adapter));
        self
    }

    /// Adds an adapter under `name` that sessions can switch on and off
    /// ([`Session::set_adapter`]) without reloading the model: its updates are kept beside
    /// the weights they change and applied as `y += B (A x)` while it is active.
    pub fn switchable_adapter(mut self, name: impl Into<String>, adapter: LoraAdapter) -> Self {
        self.switchable.push((name.into(), Arc::new(adapter)));
        self
    }

    /// Chooses where half-precision weights live on CPU devices ([`WeightMemory`]).
    pub fn weight_memory(mut self, memory: WeightMemory) -> Self {
        self.weight_memory = memory;
        self
    }

    /// Calls `report` from the loading thread after each tensor is read (converted, mapped,
    /// copied or quantized) and once at the end with `done_bytes == total_bytes`: for a progress
    /// bar over loads that take seconds (quantization, resident copies, f32 conversion).
    pub fn progress(
        mut self,
        report: impl Fn(crate::loading::LoadProgress) + Send + Sync + 'static,
    ) -> Self {
        self.progress = Some(crate::loading::ProgressCallback(Arc::new(report)));
        self
    }

    /// Chooses how prefill multiplies activations by bf16 weights on CPUs with AVX512-BF16
    /// ([`Bf16Activations`]): [`Bf16Activations::Split`] runs 1.5× as fast as the exact
    /// default with 16 significant bits of each activation; [`Bf16Activations::Rounded`] 3× by
    /// rounding each activation to bf16, as PyTorch's bf16 matmuls and llama.cpp do (on the
    /// test checkpoints, mean NLL moves by up to 9e-3 against 1e-6 for the default). Decode and
    /// other CPUs are unaffected.
    pub fn bf16_activations(mut self, activations: Bf16Activations) -> Self {
        self.bf16_activations = activations;
        self
    }

    /// Reads the PEFT folder `dir` ([`LoraAdapter::load`]) and merges it at load.
    pub fn adapter_dir(self, dir: impl AsRef<Path>) -> Result<Self> {
        Ok(self.adapter(LoraAdapter::load(dir)?))
    }
}

impl Model {
    /// Loads a Hugging Face model folder: `config.json`, `model.safetensors` (or a sharded
    /// index), `tokenizer.json` (optional: without it only token-id APIs work) and
    /// `generation_config.json` (optional).
    pub fn load(dir: impl AsRef<Path>, device: &Device) -> Result<Self> {
        Self::load_with(dir, device, LoadOptions::default())
    }

    /// [`Model::load`] with options (quantization).
    pub fn load_with(dir: impl AsRef<Path>, device: &Device, options: LoadOptions) -> Result<Self> {
        let dir = dir.as_ref();
        if let Some(q) = options.quantize {
            if !device.keeps_half_weights() {
                return Err(Error::Device {
                    name: device.name().to_string(),
                    message: format!(
                        "{} quantization runs on CPU devices (flex, ndarray) computing in f32{}",
                        q.name(),
                        if device.cpu_paths() == crate::device::CpuPaths::Tensor {
                            " (this device is set to burn's tensors alone: CpuPaths::Tensor)"
                        } else {
                            ""
                        }
                    ),
                });
            }
        }
        if !dir.is_dir() {
            return Err(Error::MissingFile {
                path: dir.to_path_buf(),
                what: "the model folder (config.json, *.safetensors, tokenizer.json)".into(),
            });
        }
        let config_path = dir.join("config.json");
        if !config_path.is_file() {
            return Err(Error::MissingFile {
                path: config_path,
                what: "the model's config (config.json)".into(),
            });
        }
        let mut store = WeightStore::open(dir)?;
        store.set_quantization(options.quantize);
        store.set_kv_precision(options.kv_precision);
        store.set_head_quantization(options.head_quantization);
        store.set_bf16_activations(options.bf16_activations);
        store.set_weight_memory(options.weight_memory);
        store.set_adapter(options.adapter.clone());
        store.set_progress(options.progress.clone());
        let mut adapter_names: Vec<String> = Vec::new();
        for (name, _) in &options.switchable {
            if name.is_empty() || adapter_names.contains(name) {
                return Err(Error::invalid_arg(
                    "switchable_adapter",
                    format!(
                        "adapter names must be unique and not empty, got {name:?} twice or empty"
                    ),
                ));
            }
            adapter_names.push(name.clone());
        }
        store.set_switchable_adapters(options.switchable.iter().map(|(_, a)| a.clone()).collect());
        let lm = models::load(dir, &mut store, device)?;
        store.finish()?;
        let tokenizer_path = dir.join("tokenizer.json");
        let tokenizer = if tokenizer_path.exists() {
            Some(Tokenizer::from_file(&tokenizer_path)?)
        } else {
            tracing::warn!(
                "{} not found: only token-id APIs will work",
                tokenizer_path.display()
            );
            None
        };
        let chat_template = match ChatTemplate::from_dir(dir) {
            Ok(t) => Ok(t),
            Err(Error::ChatTemplate { message }) => {
                tracing::warn!("the chat template does not compile: {message}");
                Err(message)
            }
            Err(e) => return Err(e),
        };
        let defaults = GenerationDefaults::load(dir)?;
        let eos = match &defaults.eos_token_id {
            Some(e) => e.to_vec(),
            None => lm.info().eos_token_ids.clone(),
        };
        let vocab = lm.info().vocab_size;
        if let Some(bad) = eos.iter().find(|&&e| e as usize >= vocab) {
            return Err(Error::config(
                dir.join("generation_config.json"),
                format!("eos_token_id {bad} is outside the vocabulary (size {vocab})"),
            ));
        }
        Ok(Self {
            inner: Arc::new(Inner {
                lm,
                tokenizer,
                chat_template,
                defaults,
                eos,
                device: device.clone(),
                dir: dir.to_path_buf(),
                adapter_names,
            }),
        })
    }

    /// A new conversation with an empty KV cache.
    pub fn session(&self) -> Session {
        Session::new(self.clone())
    }

    /// The tokenizer, or [`Error::MissingFile`] if the folder had no `tokenizer.json`.
    pub fn tokenizer(&self) -> Result<&Tokenizer> {
        self.inner
            .tokenizer
            .as_ref()
            .ok_or_else(|| Error::MissingFile {
                path: self.inner.dir.join("tokenizer.json"),
                what: "the model's tokenizer, needed for text input and output".into(),
            })
    }

    /// Whether a tokenizer was loaded.
    pub fn has_tokenizer(&self) -> bool {
        self.inner.tokenizer.is_some()
    }

    /// Encodes text as transformers does by default (`add_special_tokens=True`).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        self.tokenizer()?.encode(text, true)
    }

    /// Token ids that end generation.
    pub fn eos_token_ids(&self) -> &[u32] {
        &self.inner.eos
    }

    /// The folder's chat template (`chat_template.jinja`, or `chat_template` in
    /// `tokenizer_config.json`); [`Error::ChatTemplate`] when it has none or it does not compile.
    pub fn chat_template(&self) -> Result<&ChatTemplate> {
        match &self.inner.chat_template {
            Ok(Some(t)) => Ok(t),
            Ok(None) => Err(ChatTemplate::missing(&self.inner.dir)),
            Err(message) => Err(Error::ChatTemplate {
                message: message.clone(),
            }),
        }
    }

    /// Renders `messages` with the model's chat template, as transformers'
    /// `apply_chat_template(messages, tokenize=False, add_generation_prompt=...)`.
    pub fn apply_chat_template<M: Serialize>(
        &self,
        messages: &[M],
        add_generation_prompt: bool,
    ) -> Result<String> {
        self.chat_template()?
            .render(messages, add_generation_prompt, None, None)
    }

    /// The token ids of a rendered conversation (with the generation prompt), encoded as
    /// transformers does for chat: the template writes the special tokens itself, so the
    /// tokenizer adds none.
    pub fn chat_ids<M: Serialize>(&self, messages: &[M]) -> Result<Vec<u32>> {
        self.chat_ids_with_tools(messages, None)
    }

    /// [`Model::chat_ids`] with tool definitions passed to the template.
    pub fn chat_ids_with_tools<M: Serialize>(
        &self,
        messages: &[M],
        tools: Option<&serde_json::Value>,
    ) -> Result<Vec<u32>> {
        let text = self.chat_template()?.render(messages, true, tools, None)?;
        self.tokenizer()?.encode(&text, false)
    }

    /// Generation settings starting from the folder's `generation_config.json`, as transformers
    /// reads it: `do_sample` with its `temperature`, `top_k` (50 when unset), `top_p`, `min_p`;
    /// `repetition_penalty`; `max_new_tokens`. Without the file (or with `do_sample` off) this
    /// is greedy decoding, like [`GenerationConfig::default`]. Override fields as needed.
    pub fn generation_config(&self) -> GenerationConfig {
        let d = &self.inner.defaults;
        let mut cfg = GenerationConfig::default();
        if d.do_sample == Some(true) {
            cfg.temperature = d.temperature.unwrap_or(1.0);
            cfg.top_k = Some(d.top_k.unwrap_or(50));
            cfg.top_p = d.top_p;
            cfg.min_p = d.min_p;
        }
        cfg.repetition_penalty = d.repetition_penalty;
        if let Some(n) = d.max_new_tokens {
            cfg.max_new_tokens = n;
        }
        cfg
    }

    /// `generation_config.json` as found in the folder.
    pub fn generation_defaults(&self) -> &GenerationDefaults {
        &self.inner.defaults
    }

    /// Vocabulary size.
    pub fn vocab_size(&self) -> usize {
        self.inner.lm.info().vocab_size
    }

    /// Context length (`max_position_embeddings`).
    pub fn max_context(&self) -> usize {
        self.inner.lm.info().max_context
    }

    /// How this model's sessions keep keys and values in their KV caches on kiln's CPU path
    /// (see [`LoadOptions::kv_precision`]).
    pub fn kv_precision(&self) -> KvPrecision {
        self.inner.lm.new_cache().precision()
    }

    /// Architecture name (`llama`, `mistral`, `qwen2`).
    pub fn architecture(&self) -> &str {
        &self.inner.lm.info().architecture
    }

    /// The device the weights live on.
    pub fn device(&self) -> &Device {
        &self.inner.device
    }

    /// The names of the switchable adapters ([`LoadOptions::switchable_adapter`]), in slot
    /// order.
    pub fn adapter_names(&self) -> &[String] {
        &self.inner.adapter_names
    }

    /// The folder the model was loaded from.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    pub(crate) fn lm(&self) -> &dyn CausalLm {
        self.inner.lm.as_ref()
    }

    /// Checks ids against the vocabulary and the context length.
    pub(crate) fn check_ids(&self, ids: &[u32], already: usize) -> Result<()> {
        let vocab = self.vocab_size();
        if let Some(&id) = ids.iter().find(|&&i| i as usize >= vocab) {
            return Err(Error::TokenOutOfRange {
                id,
                vocab_size: vocab,
            });
        }
        let needed = already + ids.len();
        if needed > self.max_context() {
            return Err(Error::ContextOverflow {
                needed,
                limit: self.max_context(),
            });
        }
        Ok(())
    }

    /// Token ids a generation config names (logit bias, stop tokens) must be in the vocabulary.
    pub(crate) fn check_config_ids(&self, cfg: &GenerationConfig) -> Result<()> {
        let vocab = self.vocab_size();
        if let Some(&id) = cfg
            .logit_bias
            .keys()
            .chain(&cfg.stop_token_ids)
            .find(|&&id| id as usize >= vocab)
        {
            return Err(Error::TokenOutOfRange {
                id,
                vocab_size: vocab,
            });
        }
        Ok(())
    }

    /// Feeds `ids` after what `cache` holds, in chunks, and returns the last position's logits.
    pub(crate) fn feed(&self, ids: &[u32], cache: &mut KvCache) -> Result<Logits> {
        self.feed_rows(&[ids], &[0], cache)
    }

    /// Feeds equally long rows (left-padded, see [`Input`]) after what `cache` holds, in chunks
    /// of [`PREFILL_CHUNK`] slots; returns each row's last-position logits, row after row.
    pub(crate) fn feed_rows(
        &self,
        rows: &[&[u32]],
        pads: &[usize],
        cache: &mut KvCache,
    ) -> Result<Logits> {
        let len = rows.first().map_or(0, |r| r.len());
        let mut last = None;
        let mut from = 0;
        while from < len {
            let to = (from + PREFILL_CHUNK).min(len);
            let ids: Vec<u32> = rows
                .iter()
                .flat_map(|r| r[from..to].iter().copied())
                .collect();
            last = Some(
                self.lm()
                    .forward(Input { ids: &ids, pads }, cache, LogitsFor::Last)?,
            );
            from = to;
        }
        let last = last.ok_or_else(|| Error::invalid_arg("ids", "nothing to run: no tokens"))?;
        Ok(Logits(last))
    }

    /// Logits at every position of `ids` (a fresh sequence), one row of `vocab_size` per token.
    pub fn forward_logits(&self, ids: &[u32]) -> Result<Vec<Vec<f32>>> {
        if ids.is_empty() {
            return Err(Error::invalid_arg("ids", "no tokens to score"));
        }
        self.check_ids(ids, 0)?;
        let mut cache = self.lm().new_cache();
        let vocab = self.vocab_size();
        let mut rows = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(PREFILL_CHUNK) {
            let flat = to_vec(self.lm().forward(
                Input::single(chunk),
                &mut cache,
                LogitsFor::All,
            )?)?;
            rows.extend(flat.chunks(vocab).map(<[f32]>::to_vec));
        }
        Ok(rows)
    }

    /// Runs `text` (encoded as [`Model::encode`] does) through the model in one pass and
    /// records what `options` asks for; see [`Trace`].
    pub fn trace(&self, text: &str, options: TraceOptions) -> Result<Trace> {
        let ids = self.encode(text)?;
        self.trace_ids(&ids, options)
    }

    /// [`Model::trace`] for token ids (a fresh sequence).
    pub fn trace_ids(&self, ids: &[u32], options: TraceOptions) -> Result<Trace> {
        if ids.is_empty() {
            return Err(Error::invalid_arg("ids", "no tokens to trace"));
        }
        self.check_ids(ids, 0)?;
        let mut cache = self.lm().new_cache();
        let mut taps = Taps {
            hidden_states: options.hidden_states,
            attentions: options.attentions,
            ..Default::default()
        };
        let logits = self.lm().forward_tapped(
            Input::single(ids),
            &mut cache,
            LogitsFor::Last,
            Some(&mut taps),
        )?;
        let seq = ids.len();
        let mut hidden_size = 0;
        let hidden_states = taps
            .hidden
            .into_iter()
            .map(|t| {
                hidden_size = t.dims()[2];
                to_vec(t)
            })
            .collect::<Result<Vec<_>>>()?;
        let mut heads = 0;
        let attentions = taps
            .attn
            .into_iter()
            .map(|t| {
                let [_, h, _, keys] = t.dims();
                heads = h;
                let v = to_vec(t)?;
                if keys == seq {
                    return Ok(v);
                }
                // Keys dropped before the pass (outside every window) carry no weight.
                let mut full = vec![0f32; h * seq * seq];
                for (row, src) in full.chunks_mut(seq).zip(v.chunks(keys)) {
                    row[seq - keys..].copy_from_slice(src);
                }
                Ok(full)
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Trace {
            ids: ids.to_vec(),
            hidden_size,
            heads,
            hidden_states,
            attentions,
            last_logits: to_vec(logits)?,
        })
    }

    /// Negative log-likelihood (natural log, f32) of each token given those before it:
    /// entry `i` is `−log p(ids[i+1] | ids[..=i])`, so there are `ids.len() − 1` entries.
    pub fn token_nll(&self, ids: &[u32]) -> Result<Vec<f32>> {
        if ids.len() < 2 {
            return Err(Error::invalid_arg(
                "ids",
                "scoring needs at least two tokens",
            ));
        }
        self.check_ids(ids, 0)?;
        let mut cache = self.lm().new_cache();
        let device = self.device().burn();
        let mut out = Vec::with_capacity(ids.len() - 1);
        let mut start = 0;
        for chunk in ids.chunks(PREFILL_CHUNK) {
            let logits = self
                .lm()
                .forward(Input::single(chunk), &mut cache, LogitsFor::All)?;
            let n = chunk.len().min(ids.len() - 1 - start);
            if n > 0 {
                let [_, vocab] = logits.dims();
                let logp = activation::log_softmax(
                    logits.slice([0..n, 0..vocab]).cast(FloatDType::F32),
                    1,
                );
                let targets: Vec<i64> = ids[start + 1..start + 1 + n]
                    .iter()
                    .map(|&t| t as i64)
                    .collect();
                let targets = Tensor::<2, Int>::from_data(TensorData::new(targets, [n, 1]), device);
                let picked = to_vec(logp.gather(1, targets))?;
                out.extend(picked.into_iter().map(|x| -x));
            }
            start += chunk.len();
        }
        Ok(out)
    }
}

/// What [`Model::trace`] records.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TraceOptions {
    /// Every layer's input and the final normed output (transformers' `output_hidden_states`).
    pub hidden_states: bool,
    /// Every layer's attention weights (transformers' `output_attentions`).
    pub attentions: bool,
}

impl TraceOptions {
    /// Hidden states and attention weights.
    pub fn all() -> Self {
        Self {
            hidden_states: true,
            attentions: true,
        }
    }
}

/// Inside one forward pass over a token sequence: what [`Model::trace`] records.
#[derive(Debug, Clone, PartialEq)]
pub struct Trace {
    /// The tokens run.
    pub ids: Vec<u32>,
    /// Width of each hidden state (0 when hidden states were not recorded).
    pub hidden_size: usize,
    /// Attention heads per layer (0 when attention weights were not recorded).
    pub heads: usize,
    /// `layers + 1` hidden states, each `[seq, hidden_size]` row-major, as transformers'
    /// `hidden_states`: the input of every layer (the first is the embedding output, scaled
    /// where the architecture scales it), then the last layer's output after the final norm.
    /// Empty unless asked for.
    pub hidden_states: Vec<Vec<f32>>,
    /// `layers` attention maps, each `[heads, seq, seq]` row-major (query, then key):
    /// softmax weights after the causal mask, sliding window and soft-capping, as transformers'
    /// `attentions` with eager attention. Empty unless asked for.
    pub attentions: Vec<Vec<f32>>,
    /// The logits at the last position (`vocab_size`).
    pub last_logits: Vec<f32>,
}

impl Trace {
    /// Sequence length.
    pub fn seq(&self) -> usize {
        self.ids.len()
    }

    /// Hidden state `index` (0 = embeddings) at position `pos`: `hidden_size` values.
    pub fn hidden(&self, index: usize, pos: usize) -> Option<&[f32]> {
        let h = self.hidden_size;
        self.hidden_states
            .get(index)
            .and_then(|s| s.get(pos * h..(pos + 1) * h))
    }

    /// Layer `layer`'s attention weights of head `head` for query position `query`: one weight
    /// per key position `0..seq`.
    pub fn attention(&self, layer: usize, head: usize, query: usize) -> Option<&[f32]> {
        let n = self.seq();
        let at = (head * n + query) * n;
        (head < self.heads && query < n)
            .then_some(())
            .and_then(|_| self.attentions.get(layer))
            .and_then(|a| a.get(at..at + n))
    }
}

/// Rows of scores read back to the host at a time when scoring text.
const SCORE_ROWS: usize = 64;

impl Model {
    /// Runs `ids` after what `cache` holds and scores each token: `first_row` holds the scores
    /// for `ids[0]` (the last history position's) and that position's token, or `None` when
    /// there is no history (then `ids[0]` is not scored). Leaves `ids` in the cache.
    pub(crate) fn score_after(
        &self,
        ids: &[u32],
        cache: &mut KvCache,
        first_row: Option<(Vec<f32>, u32)>,
        top: usize,
    ) -> Result<Vec<ScoredToken>> {
        let tokenizer = self.tokenizer().ok();
        let score = |row: &[f32], id: u32, prev: u32| {
            let lp = RowLogprobs::new(row);
            ScoredToken {
                id,
                text: token_text(tokenizer, Some(prev), id),
                logprob: lp.of(row[id as usize]),
                top: lp.top(row, top, tokenizer, Some(prev)),
            }
        };
        let mut out = Vec::with_capacity(ids.len());
        if let Some((row, prev)) = first_row {
            out.push(score(&row, ids[0], prev));
        }
        let vocab = self.vocab_size();
        let mut pos = 0;
        // Passes as long as the other paths' (positions-dependent RoPE variants such as
        // LongRoPE see the same lengths); scores come back a block of rows at a time.
        for chunk in ids.chunks(PREFILL_CHUNK) {
            let logits = self
                .lm()
                .forward(Input::single(chunk), cache, LogitsFor::All)?;
            let n = chunk.len();
            let mut from = 0;
            while from < n {
                let to = (from + SCORE_ROWS).min(n);
                let rows = to_vec(logits.clone().slice([from..to, 0..vocab]))?;
                for (i, row) in rows.chunks(vocab).enumerate() {
                    let at = pos + from + i;
                    if let Some(&next) = ids.get(at + 1) {
                        out.push(score(row, next, ids[at]));
                    }
                }
                from = to;
            }
            pos += n;
        }
        Ok(out)
    }
}

/// Each row's next-token scores, `[rows, vocab]`, still on the device: greedy decoding reads
/// back only the chosen ids ([`Logits::argmax`]), everything else the whole rows.
pub(crate) struct Logits(pub(crate) Tensor<2>);

impl Logits {
    /// The scores on the host, row after row.
    pub(crate) fn into_vec(self) -> Result<Vec<f32>> {
        to_vec(self.0)
    }

    /// Whether any score is NaN (checked on the device; one flag comes back).
    pub(crate) fn has_nan(&self) -> Result<bool> {
        let flag = self
            .0
            .clone()
            .is_nan()
            .any()
            .try_into_data()
            .map_err(|e| Error::Backend(format!("reading a result back: {e:?}")))?;
        let any = flag.iter::<bool>().any(|b| b);
        Ok(any)
    }

    /// Each row's highest-scoring id, computed on the device.
    pub(crate) fn argmax(self) -> Result<Vec<u32>> {
        let ids = self
            .0
            .argmax(1)
            .try_into_data()
            .map_err(|e| Error::Backend(format!("reading a result back: {e:?}")))?
            .convert::<i64>()
            .try_into_vec::<i64>()
            .map_err(|e| Error::Backend(format!("reading a result back: {e:?}")))?;
        Ok(ids.into_iter().map(|i| i as u32).collect())
    }
}

/// Reads a tensor back to the host as f32.
pub(crate) fn to_vec<const D: usize>(t: Tensor<D>) -> Result<Vec<f32>> {
    t.try_into_data()
        .map_err(|e| Error::Backend(format!("reading a result back: {e:?}")))?
        .convert::<f32>()
        .try_into_vec::<f32>()
        .map_err(|e| Error::Backend(format!("reading a result back: {e:?}")))
}
