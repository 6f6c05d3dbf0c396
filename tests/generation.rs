//! Generation controls: each logits processor against transformers (and OpenAI's formula for
//! presence/frequency penalties) on fixed logits; seeded sampling; stop strings across token
//! boundaries; stop tokens; logit bias and caller processors on a real model; defaults from
//! generation_config.json; multi-turn chat that reuses the cache.

mod common;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use kiln::generation::ProcessorChain;
use kiln::{Device, Error, FinishReason, GenerationConfig, Message, Model};
use serde_json::Value;

fn llama() -> (PathBuf, common::Expected) {
    let (_, dir, exp) = common::fixtures()
        .into_iter()
        .find(|(n, _, _)| n == "llama-f32")
        .unwrap();
    (dir, exp)
}

fn generate(model: &Model, prompt: &str, cfg: &GenerationConfig) -> Vec<u32> {
    let mut session = model.session();
    session
        .generate(prompt, cfg)
        .unwrap()
        .map(|t| t.unwrap().id)
        .collect()
}

fn decode(v: &Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().map_or(f32::NEG_INFINITY, |f| f as f32))
        .collect()
}

fn config_from(c: &Value) -> GenerationConfig {
    let mut cfg = GenerationConfig::default();
    let f = |k: &str| c.get(k).and_then(|v| v.as_f64()).map(|v| v as f32);
    if let Some(t) = f("temperature") {
        cfg.temperature = t;
    }
    cfg.top_k = c.get("top_k").and_then(|v| v.as_u64()).map(|v| v as usize);
    cfg.top_p = f("top_p");
    cfg.min_p = f("min_p");
    cfg.repetition_penalty = f("repetition_penalty");
    cfg.presence_penalty = f("presence_penalty");
    cfg.frequency_penalty = f("frequency_penalty");
    if let Some(b) = c.get("logit_bias").and_then(|b| b.as_object()) {
        for (k, v) in b {
            cfg.logit_bias
                .insert(k.parse().unwrap(), v.as_f64().unwrap() as f32);
        }
    }
    cfg
}

/// Every processor (and chains of them, in transformers' order) gives transformers' scores.
#[test]
fn processors_match_reference() {
    let path = common::fixtures_dir().join("processors.json");
    let fx: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let logits = decode(&fx["logits"]);
    let history: Vec<u32> = serde_json::from_value(fx["history"].clone()).unwrap();
    let generated = fx["generated"].as_array().unwrap().len();
    let cases = fx["cases"].as_array().unwrap();
    assert!(cases.len() >= 10);
    for case in cases {
        let name = case["name"].as_str().unwrap();
        let cfg = config_from(&case["config"]);
        let chain = ProcessorChain::from_config(&cfg, history.len() - generated);
        let mut got = logits.clone();
        chain.process(&mut got, &history);
        let want = decode(&case["expected"]);
        assert_eq!(got.len(), want.len());
        let mut filtered = 0;
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            if w.is_infinite() {
                filtered += 1;
                assert!(
                    g.is_infinite() && *g < 0.0,
                    "{name}: token {i} should be filtered, got {g}"
                );
            } else {
                assert!(
                    (g - w).abs() <= 1e-5 * w.abs().max(1.0),
                    "{name}: token {i}: got {g}, transformers {w}"
                );
            }
        }
        if name.starts_with("top_") || name == "min_p" {
            assert!(filtered > 0, "{name}: the case should filter something");
        }
    }
}

/// The same seed gives the same tokens; other seeds give other tokens; greedy ignores the seed.
#[test]
fn sampling_is_reproducible_by_seed() {
    let (dir, _) = llama();
    let model = Model::load(&dir, &Device::cpu()).unwrap();
    let run = |cfg: &GenerationConfig| generate(&model, "Once upon a time", cfg);
    let base = GenerationConfig::default()
        .max_new_tokens(16)
        .temperature(1.0)
        .ignore_eos(true);
    let a = run(&base.clone().seed(7));
    let b = run(&base.clone().seed(7));
    assert_eq!(a, b, "same seed, different tokens");
    let others: Vec<Vec<u32>> = (8..11).map(|s| run(&base.clone().seed(s))).collect();
    assert!(
        others.iter().all(|o| *o != a),
        "another seed gave the same 16 tokens"
    );
    let greedy = GenerationConfig::default()
        .max_new_tokens(16)
        .ignore_eos(true);
    assert_eq!(run(&greedy.clone().seed(1)), run(&greedy.seed(2)));
}

/// A stop string split across two tokens ends generation right before it: the streamed text
/// is exactly the greedy text up to the stop string, and nothing of the stop string leaks.
#[test]
fn stop_string_across_tokens() {
    let (dir, _) = llama();
    let model = Model::load(&dir, &Device::cpu()).unwrap();
    let cfg = GenerationConfig::default()
        .max_new_tokens(24)
        .ignore_eos(true);
    let mut session = model.session();
    let pieces: Vec<(u32, String)> = session
        .generate("Once upon a time", &cfg)
        .unwrap()
        .map(|t| t.map(|t| (t.id, t.text)).unwrap())
        .collect();
    let full: String = pieces.iter().map(|(_, t)| t.as_str()).collect();
    // Find two neighbouring tokens with text: the stop string is the last character of the
    // first and the first of the second, so it spans the boundary.
    let mut offset = 0;
    let mut chosen = None;
    for w in pieces.windows(2) {
        offset += w[0].1.len();
        if !w[0].1.is_empty() && !w[1].1.is_empty() && offset > 1 {
            let last = w[0].1.chars().last().unwrap();
            let first = w[1].1.chars().next().unwrap();
            let stop = format!("{last}{first}");
            let at = offset - last.len_utf8();
            if full.find(&stop) == Some(at) {
                chosen = Some((stop, at));
                break;
            }
        }
    }
    let (stop, at) = chosen.expect("two tokens with text in the greedy output");
    let mut session = model.session();
    let mut gen = session
        .generate("Once upon a time", &cfg.clone().stop(stop.clone()))
        .unwrap();
    let mut streamed = String::new();
    for t in gen.by_ref() {
        let t = t.unwrap();
        streamed.push_str(&t.text);
        assert!(
            full.starts_with(&streamed),
            "streamed {streamed:?} is not a prefix of {full:?}"
        );
        assert!(
            streamed.len() <= at,
            "text past the stop string was emitted: {streamed:?}"
        );
    }
    assert_eq!(gen.finish_reason(), Some(FinishReason::Stop));
    assert_eq!(streamed, &full[..at], "stop {stop:?}");
}

/// A stop token ends generation with `Stop`, after generating it; logit bias and a caller's
/// closure steer greedy decoding; the closure sees the growing history.
#[test]
fn stop_tokens_bias_and_custom_processors() {
    let (dir, exp) = llama();
    let model = Model::load(&dir, &Device::cpu()).unwrap();
    let greedy = GenerationConfig::default()
        .max_new_tokens(8)
        .ignore_eos(true);
    let ids = generate(&model, &exp.prompt, &greedy);
    assert_eq!(ids.len(), 8);

    let third = ids[2];
    let first_hit = ids.iter().position(|&t| t == third).unwrap();
    let mut session = model.session();
    let mut gen = session
        .generate(&exp.prompt, &greedy.clone().stop_token(third))
        .unwrap();
    let got: Vec<u32> = gen.by_ref().map(|t| t.unwrap().id).collect();
    assert_eq!(got, ids[..=first_hit].to_vec());
    assert_eq!(gen.finish_reason(), Some(FinishReason::Stop));

    // Banning the greedy first token changes it; a large bias forces a token.
    let banned = generate(
        &model,
        &exp.prompt,
        &greedy.clone().logit_bias(ids[0], -100.0),
    );
    assert_ne!(banned[0], ids[0]);
    let forced = generate(&model, &exp.prompt, &greedy.clone().logit_bias(5, 1e4));
    assert!(forced.iter().all(|&t| t == 5), "{forced:?}");

    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    let only_seven = move |logits: &mut [f32], history: &[u32]| {
        log.lock().unwrap().push(history.len());
        for (i, l) in logits.iter_mut().enumerate() {
            if i != 7 {
                *l = f32::NEG_INFINITY;
            }
        }
    };
    let cfg = greedy.clone().processor(only_seven);
    let out = generate(&model, &exp.prompt, &cfg);
    assert_eq!(out, vec![7; 8]);
    let lens = seen.lock().unwrap().clone();
    let p = exp.prompt_ids.len();
    assert_eq!(lens, (p..p + 8).collect::<Vec<_>>());
    // Sampling with the same closure also only ever picks 7.
    let sampled = generate(&model, &exp.prompt, &cfg.temperature(1.0).seed(3));
    assert_eq!(sampled, vec![7; 8]);

    // Out-of-vocabulary ids and bad penalties are typed errors.
    let mut session = model.session();
    let err = session
        .generate("hi", &greedy.clone().logit_bias(1 << 30, 1.0))
        .unwrap_err();
    assert!(matches!(err, Error::TokenOutOfRange { .. }), "{err}");
    let err = session
        .generate("hi", &greedy.clone().presence_penalty(3.0))
        .unwrap_err();
    assert!(err.to_string().contains("presence_penalty"), "{err}");
}

/// generation_config.json supplies the defaults; without do_sample it stays greedy.
#[test]
fn generation_config_json_supplies_defaults() {
    let (dir, _) = llama();
    let tmp = common::TempDir::copy_of(&dir, "genconfig");
    let write = |v: Value| {
        std::fs::write(tmp.path().join("generation_config.json"), v.to_string()).unwrap()
    };
    write(
        serde_json::json!({"eos_token_id": [2, 7], "do_sample": true, "temperature": 0.6,
        "top_p": 0.9, "repetition_penalty": 1.1, "max_new_tokens": 40}),
    );
    let model = Model::load(tmp.path(), &Device::cpu()).unwrap();
    let cfg = model.generation_config();
    assert_eq!(cfg.temperature, 0.6);
    assert_eq!(cfg.top_p, Some(0.9));
    assert_eq!(
        cfg.top_k,
        Some(50),
        "transformers' default top_k when sampling"
    );
    assert_eq!(cfg.repetition_penalty, Some(1.1));
    assert_eq!(cfg.max_new_tokens, 40);
    assert_eq!(model.eos_token_ids(), &[2, 7]);

    write(serde_json::json!({"do_sample": false, "temperature": 0.6, "repetition_penalty": 1.2}));
    let model = Model::load(tmp.path(), &Device::cpu()).unwrap();
    let cfg = model.generation_config();
    assert!(cfg.is_greedy());
    assert_eq!(cfg.repetition_penalty, Some(1.2));
}

fn chat_model(tag: &str) -> (common::TempDir, Model) {
    let (dir, _) = llama();
    let tmp = common::TempDir::copy_of(&dir, tag);
    let template = std::fs::read_to_string(
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../shared/chat-templates/Qwen-Qwen2.5-7B-Instruct.jinja"),
    )
    .unwrap();
    std::fs::write(tmp.path().join("chat_template.jinja"), template).unwrap();
    let model = Model::load(tmp.path(), &Device::cpu()).unwrap();
    (tmp, model)
}

/// A second turn reuses the cache for everything the conversation shares with the first and
/// runs only the rest; its reply equals that of a fresh session given the whole conversation.
#[test]
fn second_chat_turn_prefills_only_new_tokens() {
    let (_tmp, model) = chat_model("chat-turns");
    let cfg = GenerationConfig::default()
        .max_new_tokens(6)
        .ignore_eos(true);
    let mut messages = vec![Message::system("Be brief."), Message::user("Hello there")];
    let first_ids = model.chat_ids(&messages).unwrap();

    let mut session = model.session();
    let mut gen = session.chat(&messages, &cfg).unwrap();
    let reply: String = gen.by_ref().map(|t| t.unwrap().text).collect();
    let stats = gen.stats();
    assert_eq!(stats.cached_tokens, 0);
    assert_eq!(stats.prompt_tokens, first_ids.len());
    drop(gen);
    let held = session.tokens().to_vec();

    messages.push(Message::assistant(reply));
    messages.push(Message::user("And then?"));
    let second_ids = model.chat_ids(&messages).unwrap();
    let shared = held
        .iter()
        .zip(&second_ids)
        .take_while(|(a, b)| a == b)
        .count();
    assert!(
        shared >= first_ids.len(),
        "turn two shares {shared} tokens, turn one had {}",
        first_ids.len()
    );

    let mut gen = session.chat(&messages, &cfg).unwrap();
    let turn2: Vec<u32> = gen.by_ref().map(|t| t.unwrap().id).collect();
    let stats = gen.stats();
    assert_eq!(stats.cached_tokens, shared, "reused positions");
    assert_eq!(
        stats.prompt_tokens,
        second_ids.len() - shared,
        "prefilled only the new tokens"
    );
    drop(gen);

    let mut fresh = model.session();
    let mut gen = fresh.chat(&messages, &cfg).unwrap();
    let want: Vec<u32> = gen.by_ref().map(|t| t.unwrap().id).collect();
    assert_eq!(gen.stats().prompt_tokens, second_ids.len());
    assert_eq!(turn2, want, "cache reuse changed the reply");

    // An edited earlier message re-runs from where the conversation differs.
    messages[1] = Message::user("Hello here");
    let third_ids = model.chat_ids(&messages).unwrap();
    let shared = session
        .tokens()
        .iter()
        .zip(&third_ids)
        .take_while(|(a, b)| a == b)
        .count();
    let mut gen = session.chat(&messages, &cfg).unwrap();
    let edited: Vec<u32> = gen.by_ref().map(|t| t.unwrap().id).collect();
    assert_eq!(gen.stats().cached_tokens, shared);
    drop(gen);
    let mut fresh = model.session();
    let want: Vec<u32> = fresh
        .chat(&messages, &cfg)
        .unwrap()
        .map(|t| t.unwrap().id)
        .collect();
    assert_eq!(edited, want);
}

/// A model without a chat template says so; a template that raises is the template's error.
#[test]
fn chat_errors_are_typed() {
    let (dir, _) = llama();
    let model = Model::load(&dir, &Device::cpu()).unwrap();
    let err = model
        .session()
        .chat(&[Message::user("hi")], &GenerationConfig::default())
        .unwrap_err();
    assert!(
        matches!(&err, Error::ChatTemplate { message } if message.contains("no chat template")),
        "{err}"
    );

    let tmp = common::TempDir::copy_of(&dir, "chat-raise");
    std::fs::write(
        tmp.path().join("chat_template.jinja"),
        "{% if messages[0].role == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}x",
    )
    .unwrap();
    let model = Model::load(tmp.path(), &Device::cpu()).unwrap();
    let err = model
        .session()
        .chat(
            &[Message::system("s"), Message::user("u")],
            &GenerationConfig::default(),
        )
        .unwrap_err();
    assert!(
        matches!(&err, Error::ChatTemplate { message } if message == "System role not supported"),
        "{err}"
    );
}

/// Rewinding a session whose sliding-window cache has rolled past the rewind point re-runs
/// what it must; either way the logits after the rewind match a fresh pass.
#[test]
fn rewind_through_a_rolled_window_cache() {
    let (_, dir, _) = common::fixtures()
        .into_iter()
        .find(|(n, _, _)| n == "mistral-window-f32")
        .unwrap();
    let model = Model::load(&dir, &Device::cpu()).unwrap();
    let vocab = model.vocab_size() as u32;
    let ids: Vec<u32> = (0..320u32).map(|i| (i * 37 + 11) % vocab).collect();
    let last_row = |n: usize| model.forward_logits(&ids[..n]).unwrap().pop().unwrap();
    for back_to in [312, 290, 100] {
        let mut session = model.session();
        session.append(&ids[..300]).unwrap();
        session.append(&ids[300..316]).unwrap();
        session.rewind(back_to);
        assert_eq!(session.tokens().len(), back_to);
        assert!(session.cached_len() <= back_to);
        let got = session.append(&ids[back_to..back_to + 4]).unwrap();
        let want = last_row(back_to + 4);
        let diff = common::max_abs_diff(&got, &want);
        assert!(diff < 1e-4, "rewind to {back_to}: max diff {diff}");
    }
}

/// Tools reach the template through `chat_with_tools`.
#[test]
fn chat_with_tools_renders_them() {
    let (_tmp, model) = chat_model("chat-tools");
    let tools = serde_json::json!([{"type": "function", "function": {"name": "get_weather",
        "description": "Weather.", "parameters": {"type": "object", "properties": {}}}}]);
    let cfg = GenerationConfig::default()
        .max_new_tokens(2)
        .ignore_eos(true);
    let msgs = [Message::user("Weather?")];
    let mut session = model.session();
    let n: usize = session
        .chat_with_tools(&msgs, &tools, &cfg)
        .unwrap()
        .count();
    assert_eq!(n, 2);
    let text = model
        .chat_template()
        .unwrap()
        .render(&msgs, true, Some(&tools), None)
        .unwrap();
    assert!(
        text.contains("get_weather") && text.contains("<tools>"),
        "{text}"
    );
    let ids = model.tokenizer().unwrap().encode(&text, false).unwrap();
    assert_eq!(&session.tokens()[..ids.len()], &ids[..]);
    assert_ne!(ids, model.chat_ids(&msgs).unwrap());
}
