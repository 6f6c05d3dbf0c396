//! Weights larger than a device's tensor limit are stored in parts (row blocks of the
//! embedding, column blocks of projections and the output head). Here the limit is forced down
//! to 4 KiB on the CPU, so every table and projection of the fixtures is split, and the models
//! must still give transformers' answers. (Its own test binary: the limit is an environment
//! variable read at load; so is `KILN_HOST_KERNELS=0`, which makes bf16 files f32 tensors here.)

mod common;

use kiln::{Device, Model};

#[test]
fn split_weights_give_the_reference_answers() {
    // This binary has one test: no other thread reads the environment meanwhile.
    std::env::set_var("KILN_MAX_TENSOR_BYTES", "4096");
    // Half-precision files would otherwise stay as stored on the CPU (kiln's own kernels).
    std::env::set_var("KILN_HOST_KERNELS", "0");
    assert_eq!(Device::cpu().max_tensor_bytes(), 4096);
    for (name, dir, exp) in common::fixtures() {
        if ![
            "llama-f32",
            "gemma2-bf16",
            "gpt2-f32",
            "qwen2-f32",
            "phi3-f32",
        ]
        .contains(&name.as_str())
        {
            continue;
        }
        for device in common::devices() {
            if device.kind() == kiln::BackendKind::Wgpu
                && !["llama-f32", "gpt2-f32"].contains(&name.as_str())
            {
                continue;
            }
            let model = Model::load(&dir, &device).unwrap();
            let logits = model.forward_logits(&exp.prompt_ids).unwrap();
            let diff = common::max_abs_diff(logits.last().unwrap(), &exp.last_logits);
            assert!(
                diff < 1e-3,
                "{name} on {}: logits differ by {diff}",
                device.name()
            );
            let mut session = model.session();
            let cfg = kiln::GenerationConfig::default()
                .max_new_tokens(exp.greedy_ids.len())
                .ignore_eos(true);
            let ids = common::gen_ids(&mut session, &exp.prompt_ids, &cfg);
            assert_eq!(ids, exp.greedy_ids, "{name} on {}", device.name());
        }
    }
    std::env::remove_var("KILN_MAX_TENSOR_BYTES");
}
