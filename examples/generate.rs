//! Generate text from a prompt: `cargo run --release --example generate -- --prompt "Hello"`.

mod common;

use std::io::Write;
use std::process::ExitCode;

use clap::Parser;
use common::{CommonArgs, SamplingArgs};
use kiln::Message;

#[derive(Parser, Debug)]
#[command(about = "Generate text with a Hugging Face model folder")]
struct Args {
    #[command(flatten)]
    common: CommonArgs,
    #[command(flatten)]
    sampling: SamplingArgs,
    /// The prompt.
    #[arg(long, conflicts_with = "prompt_file")]
    prompt: Option<String>,
    /// Read the prompt from a file.
    #[arg(long)]
    prompt_file: Option<std::path::PathBuf>,
    /// Wrap the prompt as one user message with the model's chat template.
    #[arg(long)]
    chat: bool,
    /// With --json: add each generated token's log-probability and its N most likely
    /// alternatives (from the model's distribution before sampling settings).
    #[arg(long, value_name = "N")]
    logprobs: Option<usize>,
}

fn main() -> ExitCode {
    common::main(run)
}

fn run(args: Args) -> kiln::Result<()> {
    let device = args.common.device()?;
    let prompt = common::prompt_text(&args.prompt, &args.prompt_file, "Once upon a time")?;
    let dir = args.common.model_dir()?;
    let model = args.common.load_model(&dir, &device)?;
    let mut cfg = args.sampling.config(&model)?;
    cfg.logprobs = args.logprobs;

    let mut session = model.session();
    let mut generator = if args.chat {
        session.chat(&[Message::user(prompt)], &cfg)?
    } else {
        session.generate(&prompt, &cfg)?
    };
    let mut ids = Vec::new();
    let mut logprobs = Vec::new();
    let mut text = String::new();
    let stdout = std::io::stdout();
    for token in generator.by_ref() {
        let token = token?;
        ids.push(token.id);
        text.push_str(&token.text);
        if let Some(lp) = &token.logprobs {
            logprobs.push(serde_json::json!({
                "id": token.id,
                "text": token.text,
                "logprob": lp.logprob,
                "top": lp.top,
            }));
        }
        if !args.common.json {
            let mut out = stdout.lock();
            let _ = out.write_all(token.text.as_bytes());
            let _ = out.flush();
        }
    }
    let stats = generator.stats();
    let finish = generator.finish_reason().map_or("length", |f| f.as_str());
    drop(generator);
    let all = session.tokens();
    let prompt_tokens = all[..all.len() - ids.len()].to_vec();
    if args.common.json {
        let mut out = serde_json::json!({
            "prompt_tokens": prompt_tokens,
            "generated_tokens": ids,
            "text": text,
            "finish_reason": finish,
            "prefill_tokens_per_s": stats.prefill_tokens_per_s(),
            "decode_tokens_per_s": stats.decode_tokens_per_s(),
        });
        if args.logprobs.is_some() {
            out["logprobs"] = serde_json::Value::Array(logprobs);
        }
        common::outln(format!("{out}"));
    } else {
        common::outln("");
        eprintln!(
            "[{} prompt tokens, {} generated ({finish}); prefill {:.1} tok/s, decode {:.1} tok/s]",
            prompt_tokens.len(),
            stats.generated_tokens,
            stats.prefill_tokens_per_s(),
            stats.decode_tokens_per_s()
        );
    }
    Ok(())
}
