//! Prefill and decode speed: `cargo run --release --example bench -- --model DIR --device flex`.
//! Runs P prompt tokens then G greedy tokens (EOS ignored) after one identical warm-up run;
//! needs no tokenizer. `--runs N` repeats the measurement and reports the last.
//!
//! `--interleave none,q8,q4` loads the model once per listed quantization and decodes them a
//! step each in turn, so that their speeds (and ratios) are measured in the same moments: on a
//! machine whose memory bandwidth changes within seconds (a shared VM), runs one after the other
//! compare phases as much as configurations. `--read-bandwidth` times a read of a 256 MiB buffer
//! after every round of steps and reports the mean (`read_gb_per_s`), the roofline's bandwidth
//! in those same moments.

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
    /// Quantizations to load and decode in turn, a step each: none, q8, q4 (comma-separated;
    /// replaces --quantize).
    #[arg(long, value_delimiter = ',', value_name = "LIST")]
    interleave: Vec<String>,
    /// Time a 256 MiB read after every round of decode steps; report the mean as
    /// read_gb_per_s.
    #[arg(long)]
    read_bandwidth: bool,
    /// Also decode N copies of the prompt as one batch (`Model::generate_batch_ids`) and report
    /// their aggregate decode rate as batch_decode_tokens_per_s (N·(G−1) tokens over the time a
    /// G-token batch takes beyond a 1-token one).
    #[arg(long, value_name = "N")]
    batch: Option<usize>,
}

/// One load of the model being measured.
struct Variant {
    quantize: String,
    model: kiln::Model,
    load_s: f64,
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
    if args.batch.is_some_and(|n| n == 0 || args.gen < 2) {
        return Err(kiln::Error::InvalidArgument {
            name: "--batch".into(),
            message: "needs at least 1 row and --gen 2 or more".into(),
        });
    }
    let names = if args.interleave.is_empty() {
        vec![args
            .common
            .quantize
            .clone()
            .unwrap_or_else(|| "none".into())]
    } else if args.common.quantize.is_some() {
        return Err(kiln::Error::InvalidArgument {
            name: "--interleave".into(),
            message: "replaces --quantize; give one of them".into(),
        });
    } else {
        args.interleave.clone()
    };
    let mut variants = Vec::with_capacity(names.len());
    for name in names {
        let mut options = args.common.load_options()?;
        if name != "none" {
            options = options.quantize(kiln::Quantization::from_name(&name).map_err(|_| {
                kiln::Error::InvalidArgument {
                    name: "--interleave".into(),
                    message: format!("unknown quantization {name:?}; expected none, q8 or q4"),
                }
            })?);
        }
        let t0 = Instant::now();
        let model = kiln::Model::load_with(args.common.model_dir()?, &device, options)?;
        let load_s = t0.elapsed().as_secs_f64();
        variants.push(Variant {
            quantize: name,
            model,
            load_s,
        });
    }
    // Deterministic token ids spread over the vocabulary.
    let vocab = variants[0].model.vocab_size() as u64;
    let ids: Vec<u32> = (0..args.prompt_len as u64)
        .map(|i| ((i * 2_654_435_761 + 17) % vocab) as u32)
        .collect();
    let cfg = GenerationConfig::default()
        .max_new_tokens(args.gen)
        .ignore_eos(true);
    // Warm-up: the measured run itself once, so GPU backends have compiled and tuned their
    // kernels for these shapes (and CPU caches and allocators are warm) before timing.
    for v in &variants {
        let mut s = v.model.session();
        for t in s.generate_ids(&ids, &cfg)? {
            t?;
        }
    }
    let mut probe = if args.read_bandwidth {
        Some(ReadProbe::new()?)
    } else {
        None
    };
    let mut stats = Vec::new();
    for _ in 0..args.runs {
        let mut sessions: Vec<_> = variants.iter().map(|v| v.model.session()).collect();
        // Each prefill and its first token (the prefill's time runs to that token) before the
        // next variant's.
        let mut gens = Vec::with_capacity(sessions.len());
        for s in &mut sessions {
            let mut g = s.generate_ids(&ids, &cfg)?;
            if let Some(t) = g.next() {
                t?;
            }
            gens.push(g);
        }
        if let Some(p) = &mut probe {
            p.reset();
        }
        // A step of each in turn until all are done.
        loop {
            let mut any = false;
            for g in &mut gens {
                if let Some(t) = g.next() {
                    t?;
                    any = true;
                }
            }
            if !any {
                break;
            }
            if let Some(p) = &mut probe {
                p.read();
            }
        }
        stats = gens.iter().map(|g| g.stats()).collect();
        for (v, s) in variants.iter().zip(&stats) {
            tracing::info!(
                "run ({}): prefill {:.1} tok/s, decode {:.2} tok/s",
                v.quantize,
                s.prefill_tokens_per_s(),
                s.decode_tokens_per_s()
            );
        }
    }
    let first = &stats[0];
    let mut out = serde_json::json!({
        "prefill_tokens_per_s": first.prefill_tokens_per_s(),
        "decode_tokens_per_s": first.decode_tokens_per_s(),
        "load_s": variants[0].load_s,
        "peak_rss_bytes": common::peak_rss_bytes(),
        "device": device.name(),
        "dtype": device.dtype().name(),
        "quantize": variants[0].quantize,
        "bf16_activations": args.common.bf16_activations.as_deref().unwrap_or(kiln::Bf16Activations::default().name()),
        "weights": args.common.weights.as_deref().unwrap_or("mapped"),
        "kv": variants[0].model.kv_precision().name(),
        "quantize_head": args.common.quantize_head.as_deref().unwrap_or("q8"),
        "prompt_len": args.prompt_len,
        "gen": first.generated_tokens,
    });
    if !args.interleave.is_empty() {
        out["variants"] = variants
            .iter()
            .zip(&stats)
            .map(|(v, s)| {
                serde_json::json!({
                    "quantize": v.quantize,
                    "kv": v.model.kv_precision().name(),
                    "prefill_tokens_per_s": s.prefill_tokens_per_s(),
                    "decode_tokens_per_s": s.decode_tokens_per_s(),
                    "load_s": v.load_s,
                })
            })
            .collect();
    }
    if let Some(p) = &probe {
        out["read_gb_per_s"] = p.gb_per_s().into();
    }
    if let Some(n) = args.batch {
        let prompts = vec![ids.clone(); n];
        let model = &variants[0].model;
        let time = |gen: usize| -> kiln::Result<f64> {
            let cfg = GenerationConfig::default()
                .max_new_tokens(gen)
                .ignore_eos(true);
            let t0 = Instant::now();
            model.generate_batch_ids(&prompts, &cfg)?;
            Ok(t0.elapsed().as_secs_f64())
        };
        time(args.gen)?; // warm-up
        let (mut full, mut first) = (0f64, 0f64);
        for _ in 0..args.runs {
            full = time(args.gen)?;
            first = time(1)?;
        }
        out["batch"] = n.into();
        out["batch_decode_tokens_per_s"] =
            ((n * (args.gen - 1)) as f64 / (full - first).max(1e-9)).into();
    }
    if args.common.json {
        common::outln(format!("{out}"));
    } else {
        common::outln(serde_json::to_string_pretty(&out).unwrap_or_default());
    }
    Ok(())
}

/// A 256 MiB buffer read by every thread of the pool in turn with the decode steps: the mean
/// read bandwidth over a run (in the buffer's huge pages where the OS gives them, like kiln's
/// weights; far larger than any cache).
struct ReadProbe {
    buf: memmap2::MmapMut,
    bytes: f64,
    secs: f64,
}

impl ReadProbe {
    const LEN: usize = 256 << 20;

    fn new() -> kiln::Result<Self> {
        let mut buf = memmap2::MmapMut::map_anon(Self::LEN).map_err(|e| kiln::Error::Io {
            path: "anonymous 256 MiB buffer".into(),
            source: e,
        })?;
        #[cfg(target_os = "linux")]
        let _ = buf.advise(memmap2::Advice::HugePage);
        buf.fill(1);
        Ok(Self {
            buf,
            bytes: 0.0,
            secs: 0.0,
        })
    }

    fn reset(&mut self) {
        (self.bytes, self.secs) = (0.0, 0.0);
    }

    fn read(&mut self) {
        use rayon::prelude::*;
        // kiln's decode threads spin for 2 ms after a step before they park: let them, so that
        // the read has the cores to itself.
        std::thread::sleep(std::time::Duration::from_millis(3));
        let t0 = Instant::now();
        // SAFETY: any bit pattern is a valid u64; align_to puts the unaligned ends aside.
        let (_, words, _) = unsafe { self.buf.align_to::<u64>() };
        let sum: u64 = words
            .par_chunks(1 << 17)
            .map(|c| c.iter().fold(0u64, |a, &w| a.wrapping_add(w)))
            .reduce(|| 0, u64::wrapping_add);
        std::hint::black_box(sum);
        self.secs += t0.elapsed().as_secs_f64();
        self.bytes += Self::LEN as f64;
    }

    fn gb_per_s(&self) -> f64 {
        if self.secs > 0.0 {
            self.bytes / self.secs / 1e9
        } else {
            0.0
        }
    }
}
