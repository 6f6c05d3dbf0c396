//! Sentence embeddings: `cargo run --release --example embed -- --model DIR --text "hello"`.

mod common;

use std::process::ExitCode;

use clap::Parser;
use kiln::Encoder;

#[derive(Parser, Debug)]
#[command(about = "Embed texts with a BERT-family sentence-embedding model folder")]
struct Args {
    /// The model folder (config.json, model.safetensors, tokenizer.json, and optionally
    /// modules.json + 1_Pooling/config.json as sentence-transformers writes them).
    #[arg(long)]
    model: std::path::PathBuf,
    /// Backend: cpu, flex, ndarray, wgpu.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// A text to embed (repeatable).
    #[arg(long)]
    text: Vec<String>,
    /// A file with one text per line.
    #[arg(long)]
    file: Option<std::path::PathBuf>,
    /// Print one JSON object on stdout.
    #[arg(long)]
    json: bool,
}

fn main() -> ExitCode {
    common::main(run)
}

fn run(args: Args) -> kiln::Result<()> {
    let device = kiln::Device::from_name(&args.device)?;
    let mut texts = args.text.clone();
    if let Some(f) = &args.file {
        let content = std::fs::read_to_string(f).map_err(|e| kiln::Error::Io {
            path: f.clone(),
            source: e,
        })?;
        texts.extend(content.lines().map(str::to_string));
    }
    if texts.is_empty() {
        return Err(kiln::Error::InvalidArgument {
            name: "--text/--file".into(),
            message: "give at least one text".into(),
        });
    }
    let encoder = Encoder::load(&args.model, &device)?;
    let embeddings = encoder.embed(&texts)?;
    if args.json {
        common::outln(format!(
            "{}",
            serde_json::json!({"dim": encoder.dim(), "embeddings": embeddings})
        ));
    } else {
        for (t, e) in texts.iter().zip(&embeddings) {
            let head: Vec<String> = e.iter().take(4).map(|x| format!("{x:.4}")).collect();
            common::outln(format!(
                "{t:?}: [{}, …] ({} dims)",
                head.join(", "),
                e.len()
            ));
        }
    }
    Ok(())
}
