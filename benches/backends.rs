//! Backends side by side on the same model: prefill and decode through the public API.
//!
//! `cargo bench --features ndarray,wgpu` compares every backend compiled in.
//! KILN_BENCH_MODEL=DIR benchmarks a real model folder instead of the tiny shipped checkpoint.

use std::path::PathBuf;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use kiln::{Device, GenerationConfig, Model};

fn devices() -> Vec<Device> {
    let mut d = vec![Device::cpu()];
    #[cfg(feature = "ndarray")]
    d.push(Device::ndarray());
    #[cfg(feature = "wgpu")]
    d.push(Device::wgpu());
    d
}

fn model_dir() -> PathBuf {
    std::env::var_os("KILN_BENCH_MODEL")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/llama-f32")
        })
}

fn bench(c: &mut Criterion) {
    let dir = model_dir();
    for device in devices() {
        let model = match Model::load(&dir, &device) {
            Ok(m) => m,
            Err(e) => {
                eprintln!("skipping {}: {e}", device.name());
                continue;
            }
        };
        let vocab = model.vocab_size() as u32;
        let prompt: Vec<u32> = (0..128u32).map(|i| (i * 7919 + 13) % vocab).collect();

        let mut g = c.benchmark_group("prefill_128");
        g.sample_size(10);
        g.throughput(Throughput::Elements(prompt.len() as u64));
        g.bench_function(BenchmarkId::from_parameter(device.name()), |b| {
            b.iter(|| {
                let mut s = model.session();
                s.append(&prompt).unwrap()
            })
        });
        g.finish();

        let mut g = c.benchmark_group("decode_16");
        g.sample_size(10);
        g.throughput(Throughput::Elements(16));
        let cfg = GenerationConfig::default()
            .max_new_tokens(17)
            .ignore_eos(true);
        g.bench_function(BenchmarkId::from_parameter(device.name()), |b| {
            b.iter(|| {
                let mut s = model.session();
                s.generate_ids(&prompt[..8], &cfg)
                    .unwrap()
                    .map(|t| t.unwrap().id)
                    .sum::<u32>()
            })
        });
        g.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
