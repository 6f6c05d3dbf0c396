//! Batched generation: prompts of different lengths decoded together (left padding, masks,
//! per-row positions) give exactly what each gives alone, on every architecture.

mod common;

use kiln::{Device, Error, FinishReason, GenerationConfig, Model};

fn alone(model: &Model, ids: &[u32], cfg: &GenerationConfig) -> (Vec<u32>, String, FinishReason) {
    let mut session = model.session();
    let mut gen = session.generate_ids(ids, cfg).unwrap();
    let mut out = Vec::new();
    let mut text = String::new();
    for t in gen.by_ref() {
        let t = t.unwrap();
        out.push(t.id);
        text.push_str(&t.text);
    }
    (out, text, gen.finish_reason().unwrap())
}

/// Every causal fixture (a subset on wgpu): three prompts of 2, 5 and the full prompt's length, greedy.
#[test]
fn batch_equals_one_at_a_time_on_every_architecture() {
    let cfg = GenerationConfig::default()
        .max_new_tokens(6)
        .ignore_eos(true);
    for (name, dir, exp) in common::fixtures() {
        if name.starts_with("bert") {
            continue;
        }
        for device in common::devices() {
            // On wgpu (lavapipe in CI, slow) three families cover RoPE, windows + soft-caps
            // and learned positions.
            let on_wgpu = ["llama-f32", "gemma2-bf16", "gpt2-f32"];
            if device.kind() == kiln::BackendKind::Wgpu && !on_wgpu.contains(&name.as_str()) {
                continue;
            }
            let model = Model::load(&dir, &device).unwrap();
            let p = &exp.prompt_ids;
            let prompts = vec![p[..2].to_vec(), p.clone(), p[..5.min(p.len())].to_vec()];
            let batch = model.generate_batch_ids(&prompts, &cfg).unwrap();
            assert_eq!(batch.len(), 3);
            for (i, (prompt, got)) in prompts.iter().zip(&batch).enumerate() {
                let (ids, text, finish) = alone(&model, prompt, &cfg);
                assert_eq!(got.tokens, ids, "{name} on {}: row {i}", device.name());
                assert_eq!(got.text, text, "{name}: row {i}");
                assert_eq!(got.finish_reason, finish);
                assert_eq!(&got.prompt_tokens, prompt);
            }
            assert_eq!(
                batch[1].tokens,
                exp.greedy_ids[..6].to_vec(),
                "{name}: the reference's greedy ids"
            );
        }
    }
}

/// Rows end on their own (stop token in one row, length in the others); text prompts work;
/// bad input is a typed error.
#[test]
fn rows_finish_independently() {
    let (_, dir, exp) = common::fixtures()
        .into_iter()
        .find(|(n, _, _)| n == "llama-f32")
        .unwrap();
    let model = Model::load(&dir, &Device::cpu()).unwrap();
    let greedy = GenerationConfig::default()
        .max_new_tokens(8)
        .ignore_eos(true);
    let solo = alone(&model, &exp.prompt_ids, &greedy).0;
    let cfg = greedy.clone().stop_token(solo[2]);
    let first = solo.iter().position(|&t| t == solo[2]).unwrap();
    let prompts = [
        "Hello",
        exp.prompt.as_str(),
        "A much longer prompt than the others, to pad",
    ];
    let batch = model.generate_batch(&prompts, &cfg).unwrap();
    assert_eq!(batch[1].tokens, solo[..=first].to_vec());
    assert_eq!(batch[1].finish_reason, FinishReason::Stop);
    for (i, p) in prompts.iter().enumerate() {
        let ids = model.encode(p).unwrap();
        let (want, text, finish) = alone(&model, &ids, &cfg);
        assert_eq!(batch[i].tokens, want, "row {i}");
        assert_eq!(batch[i].text, text);
        assert_eq!(batch[i].finish_reason, finish);
    }

    assert!(model.generate_batch_ids(&[], &cfg).unwrap().is_empty());
    let err = model
        .generate_batch_ids(&[vec![1, 2], vec![]], &cfg)
        .unwrap_err();
    assert!(
        matches!(&err, Error::InvalidArgument { .. }) && err.to_string().contains("prompt 1"),
        "{err}"
    );
    let err = model
        .generate_batch_ids(&[vec![1, 1 << 30]], &cfg)
        .unwrap_err();
    assert!(matches!(err, Error::TokenOutOfRange { .. }), "{err}");
}
