//! Weights larger than a device's tensor limit are stored in parts (row blocks of the
//! embedding, column blocks of projections and the output head). Here the limit is forced down
//! to 4 KiB on the CPU, so every table and projection of the fixtures is split, and the models
//! must still give transformers' answers. Half-precision files would otherwise stay as stored
//! on the CPU (kiln's own kernels), so the CPU devices here use burn's tensors alone.

mod common;

use kiln::{Device, Model};

#[test]
fn split_weights_give_the_reference_answers() {
    let small = |d: Device| {
        d.with_max_tensor_bytes(4096)
            .with_cpu_paths(kiln::CpuPaths::Tensor)
    };
    assert_eq!(small(Device::cpu()).max_tensor_bytes(), 4096);
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
        for device in common::devices().into_iter().map(small) {
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
}
