//! Perplexity of a text file: `cargo run --release --example perplexity -- --file F`.

mod common;

use std::process::ExitCode;

use clap::Parser;
use common::CommonArgs;

#[derive(Parser, Debug)]
#[command(about = "Mean negative log-likelihood and perplexity of a text")]
struct Args {
    #[command(flatten)]
    common: CommonArgs,
    /// The text file to score.
    #[arg(long)]
    file: std::path::PathBuf,
}

fn main() -> ExitCode {
    common::main(run)
}

fn run(args: Args) -> kiln::Result<()> {
    let device = args.common.device()?;
    let text = std::fs::read_to_string(&args.file).map_err(|e| kiln::Error::Io {
        path: args.file.clone(),
        source: e,
    })?;
    let model = args.common.load_model(args.common.model_dir()?, &device)?;
    let mut ids = model.encode(&text)?;
    if ids.len() > model.max_context() {
        eprintln!(
            "note: {} tokens truncated to the model's context of {}",
            ids.len(),
            model.max_context()
        );
        ids.truncate(model.max_context());
    }
    let nll = model.token_nll(&ids)?;
    let mean = nll.iter().map(|&x| x as f64).sum::<f64>() / nll.len() as f64;
    if args.common.json {
        common::outln(format!(
            "{}",
            serde_json::json!({"tokens": ids.len(), "mean_nll": mean, "perplexity": mean.exp()})
        ));
    } else {
        common::outln(format!(
            "tokens: {}\nmean NLL: {mean:.6}\nperplexity: {:.4}",
            ids.len(),
            mean.exp()
        ));
    }
    Ok(())
}
