//! Customisation and transparency against transformers + peft (tools/make_custom_fixtures.py):
//! LoRA adapters merged at load, per-token log-probabilities with alternatives, scoring a
//! continuation, hidden states and attention weights.

mod common;

use std::path::Path;

use common::{fixtures_dir, max_abs_diff};
use kiln::{
    Device, Error, GenerationConfig, LoadOptions, LoraAdapter, Model, Quantization, TraceOptions,
};
use serde::Deserialize;

#[derive(Debug, Deserialize)]
struct Top {
    id: u32,
    logprob: f32,
}

#[derive(Debug, Deserialize)]
struct Entry {
    id: u32,
    logprob: f32,
    top: Vec<Top>,
}

#[derive(Debug, Deserialize)]
struct LoraExpected {
    base: String,
    prompt_ids: Vec<u32>,
    greedy_ids: Vec<u32>,
    logprobs: Vec<Entry>,
    nll_ids: Vec<u32>,
    mean_nll: f64,
    base_greedy_ids: Vec<u32>,
}

#[derive(Debug, Deserialize)]
struct TapsExpected {
    ids: Vec<u32>,
    hidden_size: usize,
    heads: usize,
    hidden_states: Vec<Vec<f32>>,
    attentions: Vec<Vec<f32>>,
    prompt_ids: Vec<u32>,
    logprobs: Vec<Entry>,
    continuation: String,
    continuation_ids: Vec<u32>,
    continuation_logprobs: Vec<f32>,
}

fn read<T: serde::de::DeserializeOwned>(path: &Path) -> T {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap())
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every `lora-*` fixture with its expectations.
fn adapters() -> Vec<(String, std::path::PathBuf, LoraExpected)> {
    let mut out: Vec<_> = std::fs::read_dir(fixtures_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("expected_lora.json").is_file())
        .map(|p| {
            let e = read(&p.join("expected_lora.json"));
            (p.file_name().unwrap().to_string_lossy().into_owned(), p, e)
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    assert!(out.len() >= 4, "expected the lora-* fixtures");
    out
}

/// Every `taps-*.json` fixture, with the base folder it describes.
fn taps() -> Vec<(String, std::path::PathBuf, TapsExpected)> {
    let mut out: Vec<_> = std::fs::read_dir(fixtures_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter_map(|p| {
            let name = p.file_name()?.to_str()?.to_string();
            let base = name
                .strip_prefix("taps-")?
                .strip_suffix(".json")?
                .to_string();
            Some((base.clone(), fixtures_dir().join(&base), read(&p)))
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    assert!(out.len() >= 6, "expected the taps-*.json fixtures");
    out
}

fn mean(v: &[f32]) -> f64 {
    v.iter().map(|&x| x as f64).sum::<f64>() / v.len() as f64
}

fn check_logprobs(what: &str, got: &[kiln::Token], want: &[Entry], tol: f32) {
    assert_eq!(got.len(), want.len(), "{what}: tokens");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert_eq!(g.id, w.id, "{what}: token {i}");
        let lp = g.logprobs.as_ref().expect("logprobs were asked for");
        assert!(
            (lp.logprob - w.logprob).abs() < tol,
            "{what}: token {i} logprob {} vs {}",
            lp.logprob,
            w.logprob
        );
        assert_eq!(lp.top.len(), w.top.len(), "{what}: token {i} alternatives");
        for (a, b) in lp.top.iter().zip(&w.top) {
            assert!(
                (a.logprob - b.logprob).abs() < tol,
                "{what}: token {i} alternative {} logprob {} vs {} ({})",
                a.id,
                a.logprob,
                b.logprob,
                b.id
            );
        }
        // Ids in the same order, unless two alternatives tie within the tolerance.
        let ids: Vec<u32> = lp.top.iter().map(|t| t.id).collect();
        let want_ids: Vec<u32> = w.top.iter().map(|t| t.id).collect();
        if ids != want_ids {
            let gaps = w.top.windows(2).map(|p| p[0].logprob - p[1].logprob);
            assert!(
                gaps.into_iter().any(|g| g < tol),
                "{what}: token {i} alternatives {ids:?} vs {want_ids:?}"
            );
        }
        // The chosen (greedy) token is the most likely one.
        assert_eq!(lp.top[0].id, g.id, "{what}: token {i}");
    }
}

fn generate_with_logprobs(model: &Model, prompt: &[u32], n: usize) -> Vec<kiln::Token> {
    let cfg = GenerationConfig::default()
        .max_new_tokens(n)
        .ignore_eos(true)
        .logprobs(5);
    let mut s = model.session();
    s.generate_ids(prompt, &cfg)
        .unwrap()
        .map(|t| t.unwrap())
        .collect()
}

#[test]
fn lora_adapters_match_peft() {
    for device in common::devices() {
        for (name, dir, exp) in adapters() {
            let base = fixtures_dir().join(&exp.base);
            let what = format!("{name} on {}", device.name());
            let model = Model::load_with(
                &base,
                &device,
                LoadOptions::default().adapter_dir(&dir).unwrap(),
            )
            .unwrap_or_else(|e| panic!("{what}: {e}"));
            let tokens = generate_with_logprobs(&model, &exp.prompt_ids, exp.greedy_ids.len());
            let ids: Vec<u32> = tokens.iter().map(|t| t.id).collect();
            assert_eq!(ids, exp.greedy_ids, "{what}: greedy ids");
            assert_ne!(
                ids, exp.base_greedy_ids,
                "{what}: the adapter changes the model"
            );
            check_logprobs(&what, &tokens, &exp.logprobs, 2e-3);
            if exp.base.ends_with("bf16") && device.name() == Device::cpu().name() {
                // The merged weights stay on kiln's CPU kernels: the decode and prefill paths
                // are unchanged.
                let debug = format!("{model:?}");
                assert!(
                    debug.contains("HostPlan { decode: true, prefill: true"),
                    "{what}"
                );
            }
            let nll = mean(&model.token_nll(&exp.nll_ids).unwrap());
            eprintln!("{what}: mean NLL {nll:.6} vs peft {:.6}", exp.mean_nll);
            assert!((nll - exp.mean_nll).abs() < 1e-3, "{what}: mean NLL");
        }
    }
}

#[test]
fn lora_adapters_merge_into_quantized_weights() {
    // Q8 weights quantized from the merged rows: close to peft's NLL (Q8 itself moves the
    // tiny fixtures' NLL by up to ~0.02).
    for (name, dir, exp) in adapters() {
        let base = fixtures_dir().join(&exp.base);
        let opts = LoadOptions::default()
            .quantize(Quantization::Q8)
            .adapter_dir(&dir)
            .unwrap();
        let model = Model::load_with(&base, &Device::cpu(), opts).unwrap();
        let nll = mean(&model.token_nll(&exp.nll_ids).unwrap());
        eprintln!("{name} Q8: mean NLL {nll:.5} vs peft {:.5}", exp.mean_nll);
        assert!((nll - exp.mean_nll).abs() < 0.05, "{name} Q8: {nll}");
    }
    // Exactly: quantizing at load with the adapter is quantizing the merged checkpoint
    // (W + alpha/r · B A written out with safetensors).
    let root = fixtures_dir();
    let merged = common::TempDir::copy_of(&root.join("llama-f32"), "merged");
    let lora = std::fs::read(root.join("lora-llama/adapter_model.safetensors")).unwrap();
    let lora = safetensors::SafeTensors::deserialize(&lora).unwrap();
    let get = |n: &str| -> (Vec<usize>, Vec<f32>) {
        let v = lora.tensor(n).unwrap();
        let data = v
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        (v.shape().to_vec(), data)
    };
    let scale = 8.0 / 4.0; // lora-llama: lora_alpha 8, r 4
    let mut modules = 0;
    common::rewrite_weights(merged.path(), |w| {
        for name in lora.names() {
            let Some(module) = name.strip_suffix(".lora_A.weight") else {
                continue;
            };
            let (ash, a) = get(name);
            let (bsh, b) = get(&format!("{module}.lora_B.weight"));
            let key = format!("{}.weight", module.trim_start_matches("base_model.model."));
            let (shape, weight) = w.get_mut(&key).unwrap();
            let (r, d_in, d_out) = (ash[0], ash[1], bsh[0]);
            assert_eq!(shape, &vec![d_out, d_in]);
            for o in 0..d_out {
                for i in 0..d_in {
                    let u: f32 = (0..r).map(|k| b[o * r + k] * a[k * d_in + i]).sum();
                    weight[o * d_in + i] += scale * u;
                }
            }
            modules += 1;
        }
    });
    assert_eq!(modules, 14);
    let q8 = || LoadOptions::default().quantize(Quantization::Q8);
    let from_file = Model::load_with(merged.path(), &Device::cpu(), q8()).unwrap();
    let at_load = Model::load_with(
        root.join("llama-f32"),
        &Device::cpu(),
        q8().adapter_dir(root.join("lora-llama")).unwrap(),
    )
    .unwrap();
    let ids = &adapters()
        .into_iter()
        .find(|(n, ..)| n == "lora-llama")
        .unwrap()
        .2
        .prompt_ids;
    let (a, b) = (
        from_file.forward_logits(ids).unwrap(),
        at_load.forward_logits(ids).unwrap(),
    );
    let d = a
        .iter()
        .zip(&b)
        .map(|(x, y)| max_abs_diff(x, y))
        .fold(0f32, f32::max);
    assert!(
        d < 1e-3,
        "Q8 of the merged file vs Q8 with the adapter: {d}"
    );
}

#[test]
fn one_adapter_serves_several_loads_and_the_base_is_unchanged() {
    let (_, dir, exp) = adapters()
        .into_iter()
        .find(|(n, ..)| n == "lora-llama")
        .unwrap();
    let adapter = LoraAdapter::load(&dir).unwrap();
    assert!(adapter
        .targets()
        .contains(&"model.layers.0.self_attn.q_proj.weight"));
    let base = fixtures_dir().join(&exp.base);
    let a = Model::load_with(
        &base,
        &Device::cpu(),
        LoadOptions::default().adapter(adapter.clone()),
    )
    .unwrap();
    let b = Model::load_with(
        &base,
        &Device::cpu(),
        LoadOptions::default().adapter(adapter),
    )
    .unwrap();
    let plain = Model::load(&base, &Device::cpu()).unwrap();
    let cfg = GenerationConfig::default()
        .max_new_tokens(8)
        .ignore_eos(true);
    let run = |m: &Model| common::gen_ids(&mut m.session(), &exp.prompt_ids, &cfg);
    assert_eq!(run(&a), exp.greedy_ids[..8]);
    assert_eq!(run(&b), exp.greedy_ids[..8]);
    assert_eq!(run(&plain), exp.base_greedy_ids[..8]);
}

#[test]
fn bad_adapters_are_typed_errors() {
    let root = fixtures_dir();
    let load = |base: &str, adapter: &Path| {
        LoadOptions::default()
            .adapter_dir(adapter)
            .and_then(|o| Model::load_with(root.join(base), &Device::cpu(), o))
    };
    // An adapter for another model: its module names match nothing.
    let err = load("llama-f32", &root.join("lora-gpt2")).unwrap_err();
    assert!(matches!(err, Error::Adapter { .. }), "{err}");
    assert!(err.to_string().contains("match no weight"), "{err}");
    // Same names, other shapes (mistral-f32's heads are 24 wide: q_proj is [96, 32]).
    let err = load("mistral-f32", &root.join("lora-llama")).unwrap_err();
    assert!(matches!(err, Error::Adapter { .. }), "{err}");
    assert!(err.to_string().contains("base weight is [96, 32]"), "{err}");
    // Missing folder / files.
    let err = load("llama-f32", &root.join("no-such-adapter")).unwrap_err();
    assert!(matches!(err, Error::MissingFile { .. }), "{err}");

    let src = root.join("lora-llama");
    let edit = |tag: &str, f: &dyn Fn(&mut serde_json::Value)| {
        let t = common::TempDir::copy_of(&src, tag);
        let p = t.path().join("adapter_config.json");
        let mut v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
        f(&mut v);
        std::fs::write(&p, v.to_string()).unwrap();
        t
    };
    for (tag, f, needle) in [
        (
            "dora",
            &(|v: &mut serde_json::Value| v["use_dora"] = true.into())
                as &dyn Fn(&mut serde_json::Value),
            "DoRA",
        ),
        (
            "ia3",
            &|v: &mut serde_json::Value| v["peft_type"] = "IA3".into(),
            "IA3",
        ),
        (
            "bias",
            &|v: &mut serde_json::Value| v["bias"] = "all".into(),
            "bias",
        ),
        (
            "rank",
            &|v: &mut serde_json::Value| v["r"] = 8.into(),
            "rank",
        ),
        (
            "noalpha",
            &|v: &mut serde_json::Value| v["lora_alpha"] = serde_json::Value::Null,
            "lora_alpha",
        ),
        (
            "regex",
            &|v: &mut serde_json::Value| v["rank_pattern"] = serde_json::json!({"layers\\.0.*": 2}),
            "regular expression",
        ),
        (
            "save",
            &|v: &mut serde_json::Value| v["modules_to_save"] = serde_json::json!(["lm_head"]),
            "modules_to_save",
        ),
    ] {
        let t = edit(tag, f);
        let err = load("llama-f32", t.path()).unwrap_err();
        assert!(matches!(err, Error::Adapter { .. }), "{tag}: {err}");
        assert!(err.to_string().contains(needle), "{tag}: {err}");
    }
    // Truncated weights.
    let t = common::TempDir::copy_of(&src, "truncated");
    let w = t.path().join("adapter_model.safetensors");
    let bytes = std::fs::read(&w).unwrap();
    std::fs::write(&w, &bytes[..bytes.len() / 2]).unwrap();
    let err = load("llama-f32", t.path()).unwrap_err();
    assert!(matches!(err, Error::Safetensors { .. }), "{err}");
    // Invalid JSON.
    let t = common::TempDir::copy_of(&src, "json");
    std::fs::write(t.path().join("adapter_config.json"), "{\"r\": 4,").unwrap();
    let err = load("llama-f32", t.path()).unwrap_err();
    assert!(matches!(err, Error::Json { .. }), "{err}");
}

#[test]
fn logprobs_match_transformers() {
    for device in common::devices() {
        for (name, dir, exp) in taps() {
            let what = format!("{name} on {}", device.name());
            let model = Model::load(&dir, &device).unwrap();
            let tokens = generate_with_logprobs(&model, &exp.prompt_ids, exp.logprobs.len());
            check_logprobs(&what, &tokens, &exp.logprobs, 2e-3);
            // Not asked for: none.
            let cfg = GenerationConfig::default()
                .max_new_tokens(2)
                .ignore_eos(true);
            let mut s = model.session();
            for t in s.generate_ids(&exp.prompt_ids, &cfg).unwrap() {
                assert!(t.unwrap().logprobs.is_none());
            }
        }
    }
}

#[test]
fn logprobs_come_from_the_distribution_before_sampling_settings() {
    let (_, dir, exp) = taps().into_iter().next().unwrap();
    let model = Model::load(&dir, &Device::cpu()).unwrap();
    // A huge bias on one token makes it the choice; its reported logprob stays the model's.
    let forced = exp.logprobs[0].top[4].id;
    let cfg = GenerationConfig::default()
        .max_new_tokens(1)
        .logit_bias(forced, 100.0)
        .temperature(0.5)
        .seed(3)
        .logprobs(3);
    let mut s = model.session();
    let t: Vec<kiln::Token> = s
        .generate_ids(&exp.prompt_ids, &cfg)
        .unwrap()
        .map(|t| t.unwrap())
        .collect();
    let lp = t[0].logprobs.as_ref().unwrap();
    assert_eq!(t[0].id, forced);
    assert!((lp.logprob - exp.logprobs[0].top[4].logprob).abs() < 2e-3);
    let top: Vec<u32> = lp.top.iter().map(|t| t.id).collect();
    let want: Vec<u32> = exp.logprobs[0].top[..3].iter().map(|t| t.id).collect();
    assert_eq!(top, want);
    assert!(lp.top.iter().all(|t| !t.text.is_empty() || t.id < 3));
}

#[test]
fn scoring_a_continuation_matches_transformers() {
    for (name, dir, exp) in taps() {
        let model = Model::load(&dir, &Device::cpu()).unwrap();
        let mut s = model.session();
        s.append(&exp.prompt_ids).unwrap();
        let before = s.tokens().to_vec();
        let score = s.score(&exp.continuation).unwrap();
        let ids: Vec<u32> = score.tokens.iter().map(|t| t.id).collect();
        assert_eq!(ids, exp.continuation_ids, "{name}");
        let got: Vec<f32> = score.tokens.iter().map(|t| t.logprob).collect();
        let d = max_abs_diff(&got, &exp.continuation_logprobs);
        assert!(d < 1e-3, "{name}: continuation logprobs differ by {d}");
        let want_nll = -mean(&exp.continuation_logprobs);
        assert!((score.mean_nll() - want_nll).abs() < 1e-3, "{name}");
        // The session is left as it was, and generation after it is unchanged.
        assert_eq!(s.tokens(), before.as_slice());
        assert_eq!(s.cached_len(), before.len());
        let cfg = GenerationConfig::default()
            .max_new_tokens(3)
            .ignore_eos(true);
        let next: Vec<u32> = s
            .generate_ids(&[], &cfg)
            .unwrap()
            .map(|t| t.unwrap().id)
            .collect();
        let want: Vec<u32> = exp.logprobs[..3].iter().map(|e| e.id).collect();
        assert_eq!(next, want, "{name}: generation after scoring");
        // Alternatives at each scored position.
        let mut s = model.session();
        s.append(&exp.prompt_ids).unwrap();
        let alt = s.score_with_alternatives(&exp.continuation, 4).unwrap();
        assert!(alt.tokens.iter().all(|t| t.top.len() == 4));
        assert!(alt
            .tokens
            .iter()
            .all(|t| t.top[0].logprob >= t.logprob - 1e-6));
    }
}

#[test]
fn scoring_a_text_from_an_empty_session_is_the_perplexity() {
    for (name, dir, exp) in common::fixtures() {
        let model = Model::load(&dir, &Device::cpu()).unwrap();
        let score = model.session().score(&exp.paragraph).unwrap();
        assert_eq!(score.tokens.len(), exp.nll_ids.len() - 1, "{name}");
        assert!(
            (score.mean_nll() - exp.mean_nll).abs() < 1e-3,
            "{name}: {} vs {}",
            score.mean_nll(),
            exp.mean_nll
        );
        assert!((score.perplexity() - exp.mean_nll.exp()).abs() / exp.mean_nll.exp() < 1e-3);
    }
    let (model, _) = common::first_model();
    let err = model.session().score_ids(&[1], 0).unwrap_err();
    assert!(matches!(err, Error::InvalidArgument { .. }), "{err}");
}

#[test]
fn hidden_states_and_attentions_match_transformers() {
    for device in common::devices() {
        for (name, dir, exp) in taps() {
            let what = format!("{name} on {}", device.name());
            let model = Model::load(&dir, &device).unwrap();
            let trace = model.trace_ids(&exp.ids, TraceOptions::all()).unwrap();
            assert_eq!(trace.hidden_size, exp.hidden_size, "{what}");
            assert_eq!(trace.heads, exp.heads, "{what}");
            assert_eq!(trace.hidden_states.len(), exp.hidden_states.len(), "{what}");
            assert_eq!(trace.attentions.len(), exp.attentions.len(), "{what}");
            for (i, (g, w)) in trace
                .hidden_states
                .iter()
                .zip(&exp.hidden_states)
                .enumerate()
            {
                let scale = w.iter().fold(1f32, |m, v| m.max(v.abs()));
                let d = max_abs_diff(g, w);
                assert!(
                    d < 1e-4 * scale,
                    "{what}: hidden state {i} differs by {d} (scale {scale})"
                );
            }
            for (i, (g, w)) in trace.attentions.iter().zip(&exp.attentions).enumerate() {
                let d = max_abs_diff(g, w);
                assert!(d < 1e-4, "{what}: attention {i} differs by {d}");
            }
            // Rows of attention weights sum to 1; accessors agree with the flat layout.
            let row = trace.attention(1, 0, exp.ids.len() - 1).unwrap();
            assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-4);
            assert_eq!(
                trace.hidden(0, 1).unwrap(),
                &trace.hidden_states[0][exp.hidden_size..2 * exp.hidden_size]
            );
            // Only what is asked for.
            let only = model
                .trace_ids(
                    &exp.ids,
                    TraceOptions {
                        hidden_states: true,
                        attentions: false,
                    },
                )
                .unwrap();
            assert!(
                only.attentions.is_empty() && only.hidden_states.len() == exp.hidden_states.len()
            );
            // The traced pass's logits are the plain pass's.
            let plain = model.forward_logits(&exp.ids).unwrap();
            assert!(
                max_abs_diff(&trace.last_logits, plain.last().unwrap()) < 1e-4,
                "{what}"
            );
        }
    }
}

#[test]
fn switchable_adapters_are_chosen_per_session() {
    let root = fixtures_dir();
    for device in common::devices() {
        // An f32 base (device tensors) and a bf16 base (kiln's host kernels on the CPU).
        for (base, a, b) in [
            ("llama-f32", "lora-llama", "lora-llama-b"),
            ("qwen2-bf16", "lora-qwen2", "lora-qwen2-b"),
        ] {
            let what = format!("{base} on {}", device.name());
            let ea: LoraExpected = read(&root.join(a).join("expected_lora.json"));
            let eb: LoraExpected = read(&root.join(b).join("expected_lora.json"));
            let opts = LoadOptions::default()
                .switchable_adapter("a", LoraAdapter::load(root.join(a)).unwrap())
                .switchable_adapter("b", LoraAdapter::load(root.join(b)).unwrap());
            let model = Model::load_with(root.join(base), &device, opts).unwrap();
            assert_eq!(model.adapter_names(), ["a", "b"]);
            if base.ends_with("bf16") && device.name() == Device::cpu().name() {
                let debug = format!("{model:?}");
                assert!(debug.contains("HostPlan { decode: true"), "{what}");
            }
            let n = ea.greedy_ids.len();
            let cfg = GenerationConfig::default()
                .max_new_tokens(n)
                .ignore_eos(true)
                .logprobs(5);
            // Three sessions of one model, each its own adapter, interleaved.
            let mut sa = model.session();
            sa.set_adapter(Some("a")).unwrap();
            let mut sb = model.session();
            sb.set_adapter(Some("b")).unwrap();
            let mut s0 = model.session();
            let mut ga = sa.generate_ids(&ea.prompt_ids, &cfg).unwrap();
            let mut gb = sb.generate_ids(&eb.prompt_ids, &cfg).unwrap();
            let mut g0 = s0.generate_ids(&ea.prompt_ids, &cfg).unwrap();
            let (mut ta, mut tb, mut t0) = (Vec::new(), Vec::new(), Vec::new());
            for _ in 0..n {
                ta.push(ga.next().unwrap().unwrap());
                tb.push(gb.next().unwrap().unwrap());
                t0.push(g0.next().unwrap().unwrap().id);
            }
            drop((ga, gb, g0));
            check_logprobs(&format!("{what} a"), &ta, &ea.logprobs, 2e-3);
            check_logprobs(&format!("{what} b"), &tb, &eb.logprobs, 2e-3);
            assert_eq!(t0, ea.base_greedy_ids, "{what}: no adapter");
            // Scoring runs under the session's adapter.
            let mut s = model.session();
            s.set_adapter(Some("b")).unwrap();
            let nll = s.score_ids(&eb.nll_ids, 0).unwrap().mean_nll();
            assert!(
                (nll - eb.mean_nll).abs() < 1e-3,
                "{what}: b NLL {nll} vs {}",
                eb.mean_nll
            );
            assert_eq!(s.adapter(), Some("b"));
            // Switching mid-conversation re-runs the history under the new adapter: the same
            // as a fresh session with that adapter and that history.
            let short = GenerationConfig::default()
                .max_new_tokens(4)
                .ignore_eos(true);
            let mut s = model.session();
            s.set_adapter(Some("a")).unwrap();
            let first = common::gen_ids(&mut s, &ea.prompt_ids, &short);
            assert_eq!(first, ea.greedy_ids[..4]);
            s.set_adapter(Some("b")).unwrap();
            assert_eq!(s.cached_len(), 0, "{what}: the cache is dropped");
            let after_switch = common::gen_ids(&mut s, &[], &short);
            let history = s.tokens()[..ea.prompt_ids.len() + 4].to_vec();
            let mut fresh = model.session();
            fresh.set_adapter(Some("b")).unwrap();
            assert_eq!(
                common::gen_ids(&mut fresh, &history, &short),
                after_switch,
                "{what}"
            );
            // Back to the base model; unknown names change nothing.
            s.set_adapter(None).unwrap();
            let err = s.set_adapter(Some("c")).unwrap_err();
            assert!(matches!(err, Error::InvalidArgument { .. }), "{err}");
            assert!(err.to_string().contains("\"a\", \"b\""), "{err}");
            assert_eq!(s.adapter(), None);
        }
    }
}

#[test]
fn switchable_adapters_with_quantized_weights_and_bad_names() {
    let root = fixtures_dir();
    let ea: LoraExpected = read(&root.join("lora-qwen2").join("expected_lora.json"));
    let opts = LoadOptions::default()
        .quantize(Quantization::Q8)
        .switchable_adapter("a", LoraAdapter::load(root.join("lora-qwen2")).unwrap());
    let model = Model::load_with(root.join("qwen2-bf16"), &Device::cpu(), opts).unwrap();
    let mut s = model.session();
    s.set_adapter(Some("a")).unwrap();
    let nll = s.score_ids(&ea.nll_ids, 0).unwrap().mean_nll();
    assert!(
        (nll - ea.mean_nll).abs() < 0.02,
        "Q8 + switchable adapter: {nll} vs {}",
        ea.mean_nll
    );
    // An adapter for another model, duplicate names.
    let bad = LoadOptions::default()
        .switchable_adapter("g", LoraAdapter::load(root.join("lora-gpt2")).unwrap());
    let err = Model::load_with(root.join("llama-f32"), &Device::cpu(), bad).unwrap_err();
    assert!(matches!(err, Error::Adapter { .. }), "{err}");
    let a = LoraAdapter::load(root.join("lora-llama")).unwrap();
    let dup = LoadOptions::default()
        .switchable_adapter("x", a.clone())
        .switchable_adapter("x", a);
    let err = Model::load_with(root.join("llama-f32"), &Device::cpu(), dup).unwrap_err();
    assert!(matches!(err, Error::InvalidArgument { .. }), "{err}");
    // A model without switchable adapters says so.
    let plain = Model::load(root.join("llama-f32"), &Device::cpu()).unwrap();
    let err = plain.session().set_adapter(Some("a")).unwrap_err();
    assert!(err.to_string().contains("none"), "{err}");
}
