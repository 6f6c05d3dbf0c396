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
    /// Compute dtype: f32 (f16/bf16 weights are widened to f32 on CPU).
    #[arg(long)]
    pub dtype: Option<String>,
    /// Print one JSON object on stdout and nothing else.
    #[arg(long)]
    pub json: bool,
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

    /// Parses --device.
    pub fn device(&self) -> kiln::Result<kiln::Device> {
        kiln::Device::from_name(&self.device)
    }

    /// Checks --dtype; returns its name.
    pub fn dtype(&self) -> kiln::Result<&'static str> {
        match self.dtype.as_deref() {
            None | Some("f32") => Ok("f32"),
            Some(d @ ("f16" | "bf16")) => Err(kiln::Error::InvalidArgument {
                name: "--dtype".into(),
                message: format!("{d} compute is not implemented yet; f16/bf16 weights run in f32 (use --dtype f32)"),
            }),
            Some(other) => Err(kiln::Error::InvalidArgument {
                name: "--dtype".into(),
                message: format!("unknown dtype {other:?}; expected f32, f16 or bf16"),
            }),
        }
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
