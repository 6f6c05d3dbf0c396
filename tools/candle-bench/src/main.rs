//! Prefill and greedy decode speed of candle-transformers' llama on the CPU, for comparison with
//! kiln's `bench` example: `candle-bench DIR f32|f16|bf16 [PROMPT_LEN] [GEN]`. The same prompt
//! ids as `bench` (`(i · 2654435761 + 17) mod vocab`), the KV cache on, one warm-up run, then
//! one measured run printed as JSON (`prefill_tokens_per_s`, `decode_tokens_per_s`).
use std::time::Instant;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::llama::{Cache, Llama, LlamaConfig};

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let Some(dir) = args.get(1).map(std::path::Path::new) else {
        bail!("usage: candle-bench DIR f32|f16|bf16 [PROMPT_LEN] [GEN]");
    };
    let dtype = match args.get(2).map(String::as_str) {
        Some("f32") => DType::F32,
        Some("f16") => DType::F16,
        Some("bf16") | None => DType::BF16,
        Some(other) => bail!("unknown dtype {other:?} (f32, f16 or bf16)"),
    };
    let prompt_len: usize = args.get(3).map_or(Ok(128), |s| s.parse())?;
    let gen: usize = args.get(4).map_or(Ok(32), |s| s.parse())?;
    let device = Device::Cpu;
    let config: LlamaConfig = serde_json::from_slice(
        &std::fs::read(dir.join("config.json")).context("reading config.json")?,
    )?;
    let config = config.into_config(false);
    // SAFETY: the file is not modified while mapped.
    let vb = unsafe {
        VarBuilder::from_mmaped_safetensors(&[dir.join("model.safetensors")], dtype, &device)?
    };
    let model = Llama::load(vb, &config)?;
    let vocab = config.vocab_size as u64;
    let prompt: Vec<u32> = (0..prompt_len as u64)
        .map(|i| ((i * 2_654_435_761 + 17) % vocab) as u32)
        .collect();
    let mut result = (0.0, 0.0);
    for _ in 0..2 {
        let mut cache = Cache::new(true, dtype, &config, &device)?;
        let start = Instant::now();
        let input = Tensor::new(&prompt[..], &device)?.unsqueeze(0)?;
        let logits = model.forward(&input, 0, &mut cache)?;
        let mut next = logits.squeeze(0)?.argmax(0)?.to_scalar::<u32>()?;
        let prefill = start.elapsed().as_secs_f64();
        let start = Instant::now();
        for i in 0..gen {
            let input = Tensor::new(&[next], &device)?.unsqueeze(0)?;
            let logits = model.forward(&input, prompt_len + i, &mut cache)?;
            next = logits.squeeze(0)?.argmax(0)?.to_scalar::<u32>()?;
        }
        let decode = start.elapsed().as_secs_f64();
        result = (prompt_len as f64 / prefill, gen as f64 / decode);
    }
    println!(
        "{{\"prefill_tokens_per_s\":{},\"decode_tokens_per_s\":{}}}",
        result.0, result.1
    );
    Ok(())
}
