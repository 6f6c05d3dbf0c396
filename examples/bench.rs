//! Prefill and decode speed: `cargo run --release --example bench -- --model DIR --device flex`.
//! Runs P prompt tokens then G greedy tokens (EOS ignored) after one identical warm-up run;
//! needs no tokenizer. `--runs N` repeats the measurement and reports the last.

mod common;

use std::process::ExitCode;
use std::time::Instant;

use clap::Parser;
use common::CommonArgs;
use kiln::GenerationConfig;

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
    /// Measured runs after the warm-up; the last one is reported (GPU backends compile and
    /// tune kernels for new shapes during the first).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    runs: u32,
}

fn main() -> ExitCode {
    common::main(run)
}

fn run(args: Args) -> kiln::Result<()> {
    let device = args.common.device()?;
    if args.prompt_len == 0 {
        return Err(kiln::Error::InvalidArgument {
            name: "--prompt-len".into(),
            message: "must be at least 1".into(),
        });
    }
    let t0 = Instant::now();
    let model = args.common.load_model(args.common.model_dir()?, &device)?;
    let load_s = t0.elapsed().as_secs_f64();
    // Deterministic token ids spread over the vocabulary.
    let vocab = model.vocab_size() as u64;
    let ids: Vec<u32> = (0..args.prompt_len as u64)
        .map(|i| ((i * 2_654_435_761 + 17) % vocab) as u32)
        .collect();
    let cfg = GenerationConfig::default()
        .max_new_tokens(args.gen)
        .ignore_eos(true);
    // Warm-up: the measured run itself once, so GPU backends have compiled and tuned their
    // kernels for these shapes (and CPU caches and allocators are warm) before timing.
    {
        let mut s = model.session();
        for t in s.generate_ids(&ids, &cfg)? {
            t?;
        }
    }
    let mut stats = None;
    for _ in 0..args.runs {
        let mut session = model.session();
        let mut gen = session.generate_ids(&ids, &cfg)?;
        for t in gen.by_ref() {
            t?;
        }
        let s = gen.stats();
        tracing::info!(
            "run: prefill {:.1} tok/s, decode {:.2} tok/s",
            s.prefill_tokens_per_s(),
            s.decode_tokens_per_s()
        );
        stats = Some(s);
    }
    let stats = stats.expect("--runs is at least 1");
    let out = serde_json::json!({
        "prefill_tokens_per_s": stats.prefill_tokens_per_s(),
        "decode_tokens_per_s": stats.decode_tokens_per_s(),
        "load_s": load_s,
        "peak_rss_bytes": common::peak_rss_bytes(),
        "device": device.name(),
        "dtype": device.dtype().name(),
        "quantize": args.common.quantize.as_deref().unwrap_or("none"),
        "bf16_activations": args.common.bf16_activations.as_deref().unwrap_or("split"),
        "weights": args.common.weights.as_deref().unwrap_or("mapped"),
        "prompt_len": args.prompt_len,
        "gen": stats.generated_tokens,
    });
    if args.common.json {
        common::outln(format!("{out}"));
    } else {
        common::outln(serde_json::to_string_pretty(&out).unwrap_or_default());
    }
    Ok(())
}
