//! Prefill and decode speed: `cargo run --release --example bench -- --model DIR --device flex`.
//! Runs P prompt tokens then G greedy tokens (EOS ignored) after one warm-up; needs no tokenizer.

mod common;

use std::process::ExitCode;
use std::time::Instant;

use clap::Parser;
use common::CommonArgs;
use kiln::{GenerationConfig, Model};

#[derive(Parser, Debug)]
#[command(about = "Measure prefill and decode throughput")]
struct Args {
    #[command(flatten)]
    common: CommonArgs,
    /// Prompt tokens.
    #[arg(long, default_value_t = 128)]
    prompt_len: usize,
    /// Generated tokens.
    #[arg(long, default_value_t = 64)]
    gen: usize,
}

fn main() -> ExitCode {
    common::main(run)
}

fn run(args: Args) -> kiln::Result<()> {
    let device = args.common.device()?;
    let dtype = args.common.dtype()?;
    if args.prompt_len == 0 {
        return Err(kiln::Error::InvalidArgument {
            name: "--prompt-len".into(),
            message: "must be at least 1".into(),
        });
    }
    let t0 = Instant::now();
    let model = Model::load(args.common.model_dir()?, &device)?;
    let load_s = t0.elapsed().as_secs_f64();
    // Deterministic token ids spread over the vocabulary.
    let vocab = model.vocab_size() as u64;
    let ids: Vec<u32> = (0..args.prompt_len as u64)
        .map(|i| ((i * 2_654_435_761 + 17) % vocab) as u32)
        .collect();
    let cfg = GenerationConfig::default()
        .max_new_tokens(args.gen)
        .ignore_eos(true);
    // Warm-up: a short run through the same code paths.
    {
        let mut s = model.session();
        let warm = GenerationConfig::default()
            .max_new_tokens(4.min(args.gen))
            .ignore_eos(true);
        for t in s.generate_ids(&ids[..ids.len().min(16)], &warm)? {
            t?;
        }
    }
    let mut session = model.session();
    let mut gen = session.generate_ids(&ids, &cfg)?;
    for t in gen.by_ref() {
        t?;
    }
    let stats = gen.stats();
    let out = serde_json::json!({
        "prefill_tokens_per_s": stats.prefill_tokens_per_s(),
        "decode_tokens_per_s": stats.decode_tokens_per_s(),
        "load_s": load_s,
        "peak_rss_bytes": common::peak_rss_bytes(),
        "device": device.name(),
        "dtype": dtype,
        "prompt_len": args.prompt_len,
        "gen": stats.generated_tokens,
    });
    if args.common.json {
        common::outln(format!("{out}"));
    } else {
        common::outln(format!(
            "{}",
            serde_json::to_string_pretty(&out).unwrap_or_default()
        ));
    }
    Ok(())
}
