//! Shared plumbing of the examples: argument errors, model resolution, device choice.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

/// Flags every example takes.
#[derive(clap::Args, Debug, Clone)]
pub struct CommonArgs {
    /// A Hugging Face model folder (config.json, *.safetensors, tokenizer.json), or a hub id
    /// with the `hub` feature. Default: the tiny random-weight checkpoint shipped in the repo.
    #[arg(long)]
    pub model: Option<String>,
    /// Backend: cpu (default CPU backend), flex, ndarray, wgpu.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Compute dtype: f32 (default), f16 (wgpu with shader-f16, flex) or bf16 (flex).
    #[arg(long)]
    pub dtype: Option<String>,
    /// Quantize weights at load: none (the default), q8 or q4 (CPU devices).
    #[arg(long)]
    pub quantize: Option<String>,
    /// How prefill multiplies activations by bf16 weights on CPUs with AVX512-BF16: exact
    /// (default, as f32), split (16 significant bits, 1.5x as fast) or rounded (bf16
    /// activations, 3x as fast).
    #[arg(long, value_name = "MODE")]
    pub bf16_activations: Option<String>,
    /// Where half-precision weights live on CPU devices: mapped (default: read through the
    /// memory-mapped file; instant load, shared page cache) or resident (copied into memory at
    /// load, on huge pages where the OS offers them: faster decode, slower load).
    #[arg(long, value_name = "WHERE")]
    pub weights: Option<String>,
    /// The output head's quantization with --quantize: q8 (default) or q4.
    #[arg(long, value_name = "Q")]
    pub quantize_head: Option<String>,
    /// How the KV cache keeps keys and values on CPU devices: f32 or f16 (default: f16 for
    /// quantized models, f32 otherwise).
    #[arg(long, value_name = "PRECISION")]
    pub kv: Option<String>,
    /// Which of kiln's CPU paths to use: all (default), host-decode (prefill through burn's
    /// tensors), host-weights (every layer loop through burn's tensors) or tensor (burn alone).
    #[arg(long, value_name = "PATHS")]
    pub cpu_paths: Option<String>,
    /// A PEFT LoRA adapter folder (adapter_config.json + adapter_model.safetensors) merged
    /// into the model at load.
    #[arg(long, value_name = "DIR")]
    pub adapter: Option<PathBuf>,
    /// Print one JSON object on stdout and nothing else.
    #[arg(long)]
    pub json: bool,
}

/// Sampling flags of `generate` and `chat`. Unset flags keep the model's
/// generation_config.json defaults (greedy when it has none). Numbers may be negative on the
/// command line (`--temperature -1`), so that the library's check names the bad value.
#[derive(clap::Args, Debug, Clone)]
pub struct SamplingArgs {
    /// Most tokens to generate (default 128, or the model's max_new_tokens).
    #[arg(long)]
    pub max_new_tokens: Option<usize>,
    /// Sampling temperature (0 = greedy).
    #[arg(long, allow_negative_numbers = true)]
    pub temperature: Option<f32>,
    /// Top-k filtering (0 = off).
    #[arg(long)]
    pub top_k: Option<usize>,
    /// Nucleus (top-p) filtering.
    #[arg(long, allow_negative_numbers = true)]
    pub top_p: Option<f32>,
    /// Min-p filtering.
    #[arg(long, allow_negative_numbers = true)]
    pub min_p: Option<f32>,
    /// Repetition penalty (transformers' semantics; 1 = off).
    #[arg(long, allow_negative_numbers = true)]
    pub repeat_penalty: Option<f32>,
    /// Presence penalty (OpenAI's semantics, over the generated tokens).
    #[arg(long, allow_negative_numbers = true)]
    pub presence_penalty: Option<f32>,
    /// Frequency penalty (OpenAI's semantics, over the generated tokens).
    #[arg(long, allow_negative_numbers = true)]
    pub frequency_penalty: Option<f32>,
    /// Logit bias as ID=BIAS (repeatable), e.g. --logit-bias 13=-100.
    #[arg(long, value_name = "ID=BIAS")]
    pub logit_bias: Vec<String>,
    /// Sampling seed.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Stop string (repeatable); it is not part of the output.
    #[arg(long)]
    pub stop: Vec<String>,
    /// Stop token id (repeatable), besides the model's EOS ids.
    #[arg(long)]
    pub stop_token: Vec<u32>,
    /// Keep going past end-of-sequence.
    #[arg(long)]
    pub ignore_eos: bool,
}

impl SamplingArgs {
    /// The model's defaults with every given flag applied.
    pub fn config(&self, model: &kiln::Model) -> kiln::Result<kiln::GenerationConfig> {
        let mut cfg = model.generation_config();
        if let Some(n) = self.max_new_tokens {
            cfg.max_new_tokens = n;
        }
        if let Some(t) = self.temperature {
            cfg.temperature = t;
        }
        if self.top_k.is_some() {
            cfg.top_k = self.top_k;
        }
        if self.top_p.is_some() {
            cfg.top_p = self.top_p;
        }
        if self.min_p.is_some() {
            cfg.min_p = self.min_p;
        }
        if self.repeat_penalty.is_some() {
            cfg.repetition_penalty = self.repeat_penalty;
        }
        cfg.presence_penalty = self.presence_penalty;
        cfg.frequency_penalty = self.frequency_penalty;
        for item in &self.logit_bias {
            let bad = || kiln::Error::InvalidArgument {
                name: "--logit-bias".into(),
                message: format!("expected ID=BIAS (e.g. 13=-100), got {item:?}"),
            };
            let (id, bias) = item.split_once('=').ok_or_else(bad)?;
            let id: u32 = id.trim().parse().map_err(|_| bad())?;
            let bias: f32 = bias.trim().parse().map_err(|_| bad())?;
            cfg.logit_bias.insert(id, bias);
        }
        if let Some(s) = self.seed {
            cfg.seed = s;
        }
        cfg.stop.extend(self.stop.iter().cloned());
        cfg.stop_token_ids.extend(self.stop_token.iter().copied());
        cfg.ignore_eos = self.ignore_eos;
        cfg.validate()?;
        Ok(cfg)
    }
}

/// The text of `--prompt` or `--prompt-file`, else `default`.
pub fn prompt_text(
    prompt: &Option<String>,
    file: &Option<PathBuf>,
    default: &str,
) -> kiln::Result<String> {
    match (prompt, file) {
        (Some(p), _) => Ok(p.clone()),
        (None, Some(f)) => std::fs::read_to_string(f).map_err(|e| kiln::Error::Io {
            path: f.clone(),
            source: e,
        }),
        (None, None) => Ok(default.to_string()),
    }
}

/// The checkpoint used when no --model is given.
pub fn default_model_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/llama-f32")
}

impl CommonArgs {
    /// Resolves --model to a folder.
    pub fn model_dir(&self) -> kiln::Result<PathBuf> {
        match &self.model {
            None => {
                let dir = default_model_dir();
                eprintln!(
                    "note: no --model given; using {} — a tiny checkpoint with RANDOM weights, so its text is gibberish",
                    dir.display()
                );
                Ok(dir)
            }
            Some(m) => {
                let p = PathBuf::from(m);
                if p.exists() {
                    return Ok(p);
                }
                #[cfg(feature = "hub")]
                if m.contains('/') && !m.starts_with('.') && !m.starts_with('/') {
                    eprintln!("fetching {m} from the Hugging Face hub…");
                    return kiln::hub::download(m);
                }
                Err(kiln::Error::MissingFile {
                    path: p,
                    what: if cfg!(feature = "hub") {
                        "the model folder (nor is it a hub id that could be fetched)".into()
                    } else {
                        "the model folder (hub ids need the `hub` feature)".into()
                    },
                })
            }
        }
    }

    /// Parses --device and --dtype (f32 when absent: the reference's answers on every
    /// backend; f16 is faster on GPUs, see docs/backends.md).
    pub fn device(&self) -> kiln::Result<kiln::Device> {
        let mut device = kiln::Device::from_name(&self.device)?;
        if let Some(p) = &self.cpu_paths {
            device = device.with_cpu_paths(kiln::CpuPaths::from_name(p).map_err(|_| {
                kiln::Error::InvalidArgument {
                    name: "--cpu-paths".into(),
                    message: format!(
                        "unknown CPU paths {p:?}; expected all, host-decode, host-weights or tensor"
                    ),
                }
            })?);
        }
        let dtype = self.dtype()?.unwrap_or(kiln::Dtype::F32);
        if dtype == kiln::Dtype::F32 {
            return Ok(device);
        }
        device.with_dtype(dtype)
    }

    /// Parses --quantize.
    pub fn load_options(&self) -> kiln::Result<kiln::LoadOptions> {
        let mut o = kiln::LoadOptions::default();
        // "none" is the default spelled out (what `bench --json` reports and `--interleave`
        // takes), so that scripts can loop over none, q8 and q4.
        if let Some(q) = self.quantize.as_deref().filter(|q| *q != "none") {
            o = o.quantize(kiln::Quantization::from_name(q).map_err(|_| {
                kiln::Error::InvalidArgument {
                    name: "--quantize".into(),
                    message: format!("unknown quantization {q:?}; expected none, q8 or q4"),
                }
            })?);
        }
        if let Some(m) = &self.bf16_activations {
            o = o.bf16_activations(kiln::Bf16Activations::from_name(m).map_err(|_| {
                kiln::Error::InvalidArgument {
                    name: "--bf16-activations".into(),
                    message: format!("unknown mode {m:?}; expected exact, split or rounded"),
                }
            })?);
        }
        if let Some(q) = &self.quantize_head {
            o = o.head_quantization(kiln::Quantization::from_name(q).map_err(|_| {
                kiln::Error::InvalidArgument {
                    name: "--quantize-head".into(),
                    message: format!("unknown quantization {q:?}; expected q8 or q4"),
                }
            })?);
        }
        if let Some(p) = &self.kv {
            o = o.kv_precision(kiln::KvPrecision::from_name(p).map_err(|_| {
                kiln::Error::InvalidArgument {
                    name: "--kv".into(),
                    message: format!("unknown KV cache precision {p:?}; expected f32 or f16"),
                }
            })?);
        }
        if let Some(w) = &self.weights {
            o = o.weight_memory(kiln::WeightMemory::from_name(w).map_err(|_| {
                kiln::Error::InvalidArgument {
                    name: "--weights".into(),
                    message: format!("unknown weight memory {w:?}; expected resident or mapped"),
                }
            })?);
        }
        if let Some(dir) = &self.adapter {
            o = o.adapter_dir(dir)?;
        }
        Ok(o.progress(load_progress_bar()))
    }

    /// Loads --model on `device` with --quantize.
    pub fn load_model(
        &self,
        dir: impl AsRef<std::path::Path>,
        device: &kiln::Device,
    ) -> kiln::Result<kiln::Model> {
        kiln::Model::load_with(dir, device, self.load_options()?)
    }

    /// Parses --dtype.
    pub fn dtype(&self) -> kiln::Result<Option<kiln::Dtype>> {
        self.dtype
            .as_deref()
            .map(|d| {
                kiln::Dtype::from_name(d).map_err(|_| kiln::Error::InvalidArgument {
                    name: "--dtype".into(),
                    message: format!("unknown dtype {d:?}; expected f32, f16 or bf16"),
                })
            })
            .transpose()
    }
}

/// A load-progress callback that draws a bar on stderr once a load has taken a second (a
/// mapped half-precision model is ready sooner and never shows one; quantization and f32
/// conversion of a large model do). indicatif draws nothing when stderr is not a terminal.
pub fn load_progress_bar() -> impl Fn(kiln::LoadProgress) + Send + Sync + 'static {
    let start = std::time::Instant::now();
    let bar: std::sync::OnceLock<indicatif::ProgressBar> = std::sync::OnceLock::new();
    move |p: kiln::LoadProgress| {
        if p.done_bytes >= p.total_bytes {
            if let Some(b) = bar.get() {
                b.finish_and_clear();
            }
            return;
        }
        if bar.get().is_none() && start.elapsed() < std::time::Duration::from_secs(1) {
            return;
        }
        let b = bar.get_or_init(|| {
            let b = indicatif::ProgressBar::with_draw_target(
                Some(p.total_bytes),
                indicatif::ProgressDrawTarget::stderr(),
            );
            if let Ok(style) = indicatif::ProgressStyle::with_template(
                "loading {bar:40} {bytes}/{total_bytes} ({eta})",
            ) {
                b.set_style(style);
            }
            b
        });
        b.set_position(p.done_bytes);
    }
}

/// Parses arguments; a bad command line prints one error line and exits with status 1.
pub fn parse<T: Parser>() -> Result<T, ExitCode> {
    match T::try_parse() {
        Ok(t) => Ok(t),
        Err(e) => {
            use clap::error::ErrorKind;
            if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
                let _ = e.print();
                return Err(ExitCode::SUCCESS);
            }
            let msg = e.to_string();
            let first = msg.lines().next().unwrap_or("invalid arguments");
            eprintln!("{first}");
            Err(ExitCode::from(1))
        }
    }
}

/// An example's `main`: logging to stderr, arguments parsed (a bad command line is one error
/// line and status 1), then `run`; its error is printed as one line with status 1.
pub fn main<T: Parser>(run: impl FnOnce(T) -> kiln::Result<()>) -> ExitCode {
    init_logging();
    match parse::<T>() {
        Ok(args) => match run(args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => fail(e),
        },
        Err(code) => code,
    }
}

/// Prints an error as one line and returns status 1.
pub fn fail(e: impl std::fmt::Display) -> ExitCode {
    eprintln!("error: {e}");
    ExitCode::from(1)
}

/// Sets up logging to stderr (RUST_LOG controls the level).
pub fn init_logging() {
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .try_init();
}

/// Peak resident memory of this process in bytes (Linux), 0 elsewhere.
pub fn peak_rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

/// Writes a line to stdout; a closed pipe (`| head`) ends output quietly instead of panicking.
pub fn outln(line: impl std::fmt::Display) {
    use std::io::Write;
    let _ = writeln!(std::io::stdout().lock(), "{line}");
}
