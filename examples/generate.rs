//! Generate text from a prompt: `cargo run --release --example generate -- --prompt "Hello"`.

mod common;

use std::io::Write;
use std::process::ExitCode;

use clap::Parser;
use common::CommonArgs;
use kiln::{GenerationConfig, Model};

#[derive(Parser, Debug)]
#[command(about = "Generate text with a Hugging Face model folder")]
struct Args {
    #[command(flatten)]
    common: CommonArgs,
    /// The prompt.
    #[arg(long, conflicts_with = "prompt_file")]
    prompt: Option<String>,
    /// Read the prompt from a file.
    #[arg(long)]
    prompt_file: Option<std::path::PathBuf>,
    /// Most tokens to generate.
    #[arg(long, default_value_t = 128)]
    max_new_tokens: usize,
    /// Sampling temperature (0 = greedy).
    #[arg(long, default_value_t = 0.0)]
    temperature: f32,
    /// Top-k filtering.
    #[arg(long)]
    top_k: Option<usize>,
    /// Nucleus (top-p) filtering.
    #[arg(long)]
    top_p: Option<f32>,
    /// Min-p filtering.
    #[arg(long)]
    min_p: Option<f32>,
    /// Repetition penalty.
    #[arg(long)]
    repeat_penalty: Option<f32>,
    /// Sampling seed.
    #[arg(long, default_value_t = 299_792_458)]
    seed: u64,
    /// Stop string (repeatable).
    #[arg(long)]
    stop: Vec<String>,
    /// Keep going past end-of-sequence.
    #[arg(long)]
    ignore_eos: bool,
    /// Wrap the prompt as one user message with the model's chat template.
    #[arg(long)]
    chat: bool,
}

fn main() -> ExitCode {
    common::main(run)
}

fn run(args: Args) -> kiln::Result<()> {
    let device = args.common.device()?;
    let dtype = args.common.dtype()?;
    let _ = dtype;
    if args.chat {
        return Err(kiln::Error::InvalidArgument {
            name: "--chat".into(),
            message: "chat templates are not implemented yet".into(),
        });
    }
    let prompt = match (&args.prompt, &args.prompt_file) {
        (Some(p), _) => p.clone(),
        (None, Some(f)) => std::fs::read_to_string(f).map_err(|e| kiln::Error::Io {
            path: f.clone(),
            source: e,
        })?,
        (None, None) => "Once upon a time".to_string(),
    };
    let dir = args.common.model_dir()?;
    let model = Model::load(&dir, &device)?;
    let mut cfg = GenerationConfig::default()
        .max_new_tokens(args.max_new_tokens)
        .temperature(args.temperature)
        .seed(args.seed)
        .ignore_eos(args.ignore_eos);
    cfg.top_k = args.top_k;
    cfg.top_p = args.top_p;
    cfg.min_p = args.min_p;
    cfg.repetition_penalty = args.repeat_penalty;
    cfg.stop = args.stop.clone();

    let mut session = model.session();
    let mut generator = session.generate(&prompt, &cfg)?;
    let mut ids = Vec::new();
    let mut text = String::new();
    let stdout = std::io::stdout();
    for token in generator.by_ref() {
        let token = token?;
        ids.push(token.id);
        text.push_str(&token.text);
        if !args.common.json {
            let mut out = stdout.lock();
            let _ = out.write_all(token.text.as_bytes());
            let _ = out.flush();
        }
    }
    let stats = generator.stats();
    let finish = generator.finish_reason().map_or("length", |f| f.as_str());
    drop(generator);
    let prompt_tokens = session.tokens()[..stats.prompt_tokens].to_vec();
    if args.common.json {
        let out = serde_json::json!({
            "prompt_tokens": prompt_tokens,
            "generated_tokens": ids,
            "text": text,
            "finish_reason": finish,
            "prefill_tokens_per_s": stats.prefill_tokens_per_s(),
            "decode_tokens_per_s": stats.decode_tokens_per_s(),
        });
        common::outln(format!("{out}"));
    } else {
        common::outln("");
        eprintln!(
            "[{} prompt tokens, {} generated ({finish}); prefill {:.1} tok/s, decode {:.1} tok/s]",
            stats.prompt_tokens,
            stats.generated_tokens,
            stats.prefill_tokens_per_s(),
            stats.decode_tokens_per_s()
        );
    }
    Ok(())
}
