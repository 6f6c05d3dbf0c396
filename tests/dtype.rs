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
