//! Backends side by side: every group has one entry per backend compiled in.
//!
//! - `matmul_f32`: `[128 × 576] · [576 × 1536]` (a SmolLM2-135M MLP projection during prefill);
//!   throughput in elements = floating-point operations (2·m·k·n).
//! - `gemv_f32`: `[1 × 2048] · [2048 × 5632]` (a TinyLlama-1.1B MLP projection while decoding);
//!   throughput in bytes of weights read.
//! - `block_decode`: one decoder block's attention (GQA 9/3 heads, RoPE, KV cache at 128
//!   positions) and gated MLP at SmolLM2-135M's width, for one new token.
//! - `prefill_128`, `decode_16`: the whole model through the public API (the tiny shipped
//!   checkpoint, or KILN_BENCH_MODEL=DIR).
//! - `host_prefill`: kiln's CPU GEMMs on a TinyLlama-sized `[2048 × 2048]` weight and 128
//!   activation rows: bf16 as stored with split and rounded activations (`vdpbf16ps` where the
//!   CPU has AVX512-BF16, widened blocks and an f32 GEMM elsewhere), Q8 and Q4 (integer
//!   `vpdpbusd` with AVX-512 VNNI, dequantized blocks elsewhere); throughput in FLOPs.
//! - `host_decode`: kiln's CPU GEMV (one activation row, as a decode step) over a
//!   `[65536 × 2048]` weight, far larger than the caches: bf16 (from a vector: small pages
//!   unless transparent huge pages are `always`; model weights are mapped with huge-page
//!   advice), Q8 and Q4 (in huge-page-advised memory of their own); throughput in bytes of
//!   weights read, to compare with `tools/membw.c`.
//!
//! `cargo bench` (wgpu needs an adapter; lavapipe is software).
//! KILN_BENCH_DEVICES=flex,ndarray picks backends.

use std::path::PathBuf;

use burn::tensor::{Distribution, Tensor};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use kiln::nn::{
    Activation, Attention, AttentionConfig, AttentionContext, Bf16Activations, GatedMlp, HalfKind,
    HalfMatrix, LayerCache, Linear, QuantMatrix, Quantization, RopeScaling, RotaryEmbedding,
};
use kiln::{Device, GenerationConfig, Model};

fn devices() -> Vec<Device> {
    let mut d = vec![Device::cpu()];
    #[cfg(feature = "ndarray")]
    d.push(Device::ndarray());
    #[cfg(feature = "wgpu")]
    match Device::try_wgpu() {
        Ok(w) => d.push(w),
        Err(e) => eprintln!("skipping wgpu: {e}"),
    }
    if let Ok(only) = std::env::var("KILN_BENCH_DEVICES") {
        let want: Vec<&str> = only.split(',').map(str::trim).collect();
        d.retain(|dev| want.contains(&dev.name()));
    }
    d
}

fn model_dir() -> PathBuf {
    std::env::var_os("KILN_BENCH_MODEL")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/llama-f32")
        })
}

fn random<const D: usize>(shape: [usize; D], device: &Device) -> Tensor<D> {
    Tensor::random(shape, Distribution::Normal(0.0, 0.02), device.burn())
}

fn linear(d_in: usize, d_out: usize, device: &Device) -> Linear {
    let w: Vec<f32> = (0..d_in * d_out)
        .map(|i| (((i * 2654435761) % 1000) as f32 / 1000.0 - 0.5) * 0.04)
        .collect();
    Linear::from_pytorch(w, d_in, d_out, device)
}

fn kernels(c: &mut Criterion) {
    for device in devices() {
        let name = device.name();
        let (m, k, n) = (128, 576, 1536);
        let a = random([m, k], &device);
        let b = random([k, n], &device);
        let mut g = c.benchmark_group("matmul_f32");
        g.sample_size(10);
        g.throughput(Throughput::Elements((2 * m * k * n) as u64));
        g.bench_function(BenchmarkId::from_parameter(name), |bench| {
            bench.iter(|| a.clone().matmul(b.clone()).into_data())
        });
        g.finish();

        let (k, n) = (2048, 5632);
        let x = random([1, k], &device);
        let w = random([k, n], &device);
        let mut g = c.benchmark_group("gemv_f32");
        g.sample_size(10);
        g.throughput(Throughput::Bytes((k * n * 4) as u64));
        g.bench_function(BenchmarkId::from_parameter(name), |bench| {
            bench.iter(|| x.clone().matmul(w.clone()).into_data())
        });
        g.finish();
    }
}

fn block(c: &mut Criterion) {
    for device in devices() {
        let (hidden, heads, kv_heads, head_dim, inter) = (576, 9, 3, 64, 1536);
        let attn = Attention::from_parts(
            linear(hidden, heads * head_dim, &device),
            linear(hidden, kv_heads * head_dim, &device),
            linear(hidden, kv_heads * head_dim, &device),
            linear(heads * head_dim, hidden, &device),
            AttentionConfig::new(hidden, heads, kv_heads, head_dim),
        );
        let mlp = GatedMlp::from_parts(
            linear(hidden, inter, &device),
            linear(hidden, inter, &device),
            linear(inter, hidden, &device),
            Activation::Silu,
        );
        let rope = RotaryEmbedding::new(head_dim, 100_000.0, &RopeScaling::Default).unwrap();
        let past = 128;
        let mut cache = LayerCache::default();
        let prompt = random([1, past, hidden], &device);
        let ctx = AttentionContext::new(Some(&rope), 0, past, heads / kv_heads, &device);
        let _ = attn.forward(prompt, &ctx, &mut cache, 4096).into_data();
        let x = random([1, 1, hidden], &device);
        let mut g = c.benchmark_group("block_decode");
        g.sample_size(10);
        g.bench_function(BenchmarkId::from_parameter(device.name()), |bench| {
            bench.iter(|| {
                let mut cache = cache.clone();
                let ctx = AttentionContext::new(Some(&rope), past, 1, heads / kv_heads, &device);
                let h = x.clone() + attn.forward(x.clone(), &ctx, &mut cache, 4096);
                (h.clone() + mlp.forward(h)).into_data()
            })
        });
        g.finish();
    }
}

fn model(c: &mut Criterion) {
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

fn host_prefill(c: &mut Criterion) {
    let (rows, cols, n) = (2048, 2048, 128);
    let w: Vec<f32> = (0..rows * cols)
        .map(|i| (((i * 2654435761) % 1000) as f32 / 1000.0 - 0.5) * 0.04)
        .collect();
    let x: Vec<f32> = (0..n * cols)
        .map(|i| ((i * 7919 % 1013) as f32 / 506.0 - 1.0) * 0.5)
        .collect();
    let bits: Vec<u16> = w
        .iter()
        .map(|&v| half::bf16::from_f32(v).to_bits())
        .collect();
    let half = HalfMatrix::from_bits(HalfKind::Bf16, rows, cols, bits);
    let mut g = c.benchmark_group("host_prefill");
    g.sample_size(10);
    g.throughput(Throughput::Elements(2 * (rows * cols * n) as u64));
    for mode in [
        Bf16Activations::Exact,
        Bf16Activations::Split,
        Bf16Activations::Rounded,
    ] {
        let m = half.clone().with_bf16_activations(mode);
        let id = format!("bf16_{}", mode.name());
        g.bench_function(BenchmarkId::from_parameter(id), |b| {
            b.iter(|| m.matmul_t(&x, n))
        });
    }
    for q in [Quantization::Q8, Quantization::Q4] {
        let m = QuantMatrix::quantize(q, &w, rows, cols);
        g.bench_function(BenchmarkId::from_parameter(q.name()), |b| {
            b.iter(|| m.matmul_t(&x, n))
        });
    }
    g.finish();
}

fn host_decode(c: &mut Criterion) {
    let (rows, cols) = (65536, 2048);
    let value = |i: usize| (((i * 2654435761) % 1000) as f32 / 1000.0 - 0.5) * 0.04;
    let x: Vec<f32> = (0..cols)
        .map(|i| ((i * 7919 % 1013) as f32 / 506.0 - 1.0) * 0.5)
        .collect();
    let bits: Vec<u16> = (0..rows * cols)
        .map(|i| half::bf16::from_f32(value(i)).to_bits())
        .collect();
    let half = HalfMatrix::from_bits(HalfKind::Bf16, rows, cols, bits);
    let mut g = c.benchmark_group("host_decode");
    g.sample_size(20);
    g.throughput(Throughput::Bytes(half.byte_len() as u64));
    g.bench_function(BenchmarkId::from_parameter("bf16"), |b| {
        b.iter(|| half.matmul_t(&x, 1))
    });
    drop(half);
    for q in [Quantization::Q8, Quantization::Q4] {
        let m = QuantMatrix::quantize_rows(q, rows, cols, |r, dst| {
            for (k, d) in dst.iter_mut().enumerate() {
                *d = value(r * cols + k);
            }
        });
        g.throughput(Throughput::Bytes(m.byte_len() as u64));
        g.bench_function(BenchmarkId::from_parameter(q.name()), |b| {
            b.iter(|| m.matmul_t(&x, 1))
        });
    }
    g.finish();
}

criterion_group!(benches, kernels, block, model, host_prefill, host_decode);
criterion_main!(benches);
