//! Half-precision compute (`Device::with_dtype`): every causal fixture in f16 (flex, and wgpu
//! where the adapter has shader-f16) and bf16 (flex) stays close to transformers' f32 answers.
//! Tolerances and why: docs/backends.md.

mod common;

use common::{devices, fixtures, max_abs_diff};
use kiln::{Dtype, Model};

/// (dtype, largest last-logit difference, largest mean-NLL difference) allowed: about 1.7×
/// the largest measured over the fixtures (f16: 3.0e-2 and 5.2e-3, bf16: 1.2e-1 and 8.7e-3;
/// the logits are of order 3 to 5, so these are 1 % and 3 % of their scale).
const TOLERANCES: &[(Dtype, f32, f64)] = &[(Dtype::F16, 5e-2, 1e-2), (Dtype::Bf16, 2e-1, 2e-2)];

#[test]
fn half_precision_stays_close_to_transformers() {
    let mut checked = 0;
    let mut failures = Vec::new();
    for base in devices() {
        for &(dtype, logit_tol, nll_tol) in TOLERANCES {
            let Ok(device) = base.clone().with_dtype(dtype) else {
                continue;
            };
            for (name, dir, exp) in fixtures() {
                if exp.architecture == "bert" || !common::runs_on(&device, &name) {
                    continue;
                }
                let what = format!("{name} on {} in {}", device.name(), dtype.name());
                let model = Model::load(&dir, &device).unwrap_or_else(|e| panic!("{what}: {e}"));
                let rows = model.forward_logits(&exp.prompt_ids).unwrap();
                let diff = max_abs_diff(rows.last().unwrap(), &exp.last_logits);
                let nll = model.token_nll(&exp.nll_ids).unwrap();
                let mean = nll.iter().map(|&x| x as f64).sum::<f64>() / nll.len() as f64;
                let nll_diff = (mean - exp.mean_nll).abs();
                eprintln!("{what}: logits {diff:.2e}, mean NLL {nll_diff:.2e}");
                if diff >= logit_tol || nll_diff >= nll_tol {
                    failures.push(format!(
                        "{what}: logits differ by {diff}, mean NLL by {nll_diff}"
                    ));
                }
                checked += 1;
            }
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
    assert!(checked >= 17 * 2, "only {checked} model/dtype pairs ran");
}

/// bf16 weights in prefill (`LoadOptions::bf16_activations`): the default writes each
/// activation as three bf16 values (exact) and `Split` as two (16 significant bits); both match
/// transformers' f32 answers on these fixtures as closely as f32 does (measured for `Split`:
/// last logits within 3.7e-5, mean NLL within 1.2e-6; tests/large_logits.rs is where `Split`
/// falls short and `Exact` does not); `Rounded` rounds them to
/// one bf16 value, which on CPUs with AVX512-BF16 moves the answers measurably but within the
/// bf16 tolerances above (measured: logits up to 4.7e-2, mean NLL up to 8.5e-3). Decode (f32
/// activations) continues a rounded prefill's cache consistently.
#[test]
fn bf16_activation_modes_stay_close_to_transformers() {
    use kiln::{Bf16Activations, LoadOptions};
    #[cfg(target_arch = "x86_64")]
    let fast = std::arch::is_x86_feature_detected!("avx512bf16")
        && std::arch::is_x86_feature_detected!("avx512f");
    #[cfg(not(target_arch = "x86_64"))]
    let fast = false;
    if !fast {
        eprintln!("this CPU has no AVX512-BF16: both modes run the f32 path (checked equal)");
    }
    let device = kiln::Device::cpu();
    let mut checked = 0;
    for (name, dir, exp) in fixtures() {
        if !name.ends_with("-bf16") {
            continue;
        }
        let mut results = Vec::new();
        for mode in [
            Bf16Activations::Exact,
            Bf16Activations::Split,
            Bf16Activations::Rounded,
        ] {
            let options = LoadOptions::default().bf16_activations(mode);
            let model = Model::load_with(&dir, &device, options).unwrap();
            let rows = model.forward_logits(&exp.prompt_ids).unwrap();
            let last = rows.last().unwrap().clone();
            let nll = model.token_nll(&exp.nll_ids).unwrap();
            let mean = nll.iter().map(|&x| x as f64).sum::<f64>() / nll.len() as f64;
            let (diff, nll_diff) = (
                max_abs_diff(&last, &exp.last_logits),
                (mean - exp.mean_nll).abs(),
            );
            eprintln!(
                "{name} {}: logits {diff:.2e}, mean NLL {nll_diff:.2e}",
                mode.name()
            );
            let (logit_tol, nll_tol) = match mode {
                Bf16Activations::Exact | Bf16Activations::Split => (1e-3, 1e-4),
                Bf16Activations::Rounded => (2e-1, 2e-2),
            };
            assert!(
                diff < logit_tol && nll_diff < nll_tol,
                "{name} {}: logits {diff}, NLL {nll_diff}",
                mode.name()
            );
            // A prefill of all but the last token, then one decode step, agrees with the
            // full prefill's last row.
            let ids = &exp.prompt_ids;
            let mut s = model.session();
            s.append(&ids[..ids.len() - 1]).unwrap();
            let step = s.append(&ids[ids.len() - 1..]).unwrap();
            let step_diff = max_abs_diff(&step, &last);
            assert!(
                step_diff < logit_tol,
                "{name} {}: decode after prefill differs by {step_diff}",
                mode.name()
            );
            results.push(last);
        }
        let moved = max_abs_diff(&results[0], &results[2]);
        if fast {
            assert!(
                moved > 1e-3,
                "{name}: rounded activations change nothing ({moved})"
            );
        } else {
            assert_eq!(moved, 0.0, "{name}: the modes differ without AVX512-BF16");
        }
        checked += 1;
    }
    assert!(checked >= 6, "only {checked} bf16 fixtures");
}

/// `WeightMemory::Resident` copies the half-precision projections into memory of kiln's own
/// at load: the same bits through the same kernels, so prefill logits, decode logits and
/// greedy continuations equal those of the memory-mapped weights exactly, and the
/// continuations still match transformers'.
#[test]
fn resident_weights_answer_as_mapped_ones() {
    use kiln::{GenerationConfig, LoadOptions, WeightMemory};
    let cfg = GenerationConfig::default()
        .max_new_tokens(8)
        .ignore_eos(true);
    let mut checked = 0;
    for (name, dir, exp) in fixtures() {
        if exp.architecture == "bert" || exp.stored_dtype == "float32" {
            continue;
        }
        let load = |memory| {
            let opts = LoadOptions::default().weight_memory(memory);
            Model::load_with(&dir, &kiln::Device::cpu(), opts)
                .unwrap_or_else(|e| panic!("{name}: {e}"))
        };
        let (mapped, resident) = (load(WeightMemory::Mapped), load(WeightMemory::Resident));
        let prefill = |m: &Model| m.forward_logits(&exp.prompt_ids).unwrap();
        assert_eq!(
            prefill(&mapped),
            prefill(&resident),
            "{name}: prefill logits"
        );
        // One decode step after the prompt.
        let step = |m: &Model| {
            let mut s = m.session();
            s.append(&exp.prompt_ids).unwrap();
            s.append(&exp.greedy_ids[..1]).unwrap()
        };
        assert_eq!(step(&mapped), step(&resident), "{name}: decode logits");
        let ids = common::gen_ids(&mut resident.session(), &exp.prompt_ids, &cfg);
        assert_eq!(ids, exp.greedy_ids[..8], "{name}: greedy ids");
        checked += 1;
    }
    assert!(checked >= 5, "only {checked} half-precision fixtures ran");
}
