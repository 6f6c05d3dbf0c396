//! The `chat` and `generate` examples as scripts use them (../shared/EXAMPLES.md): exact
//! `--render-only` output, `--json` fields, and one-line errors with status 1.
//! `cargo test` builds the examples next to the test binaries (target/<profile>/examples).

mod common;

use std::path::PathBuf;
use std::process::{Command, Output};

use kiln::{Device, GenerationConfig, Message, Model};
use serde_json::Value;

fn example(name: &str) -> Command {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().unwrap().parent().unwrap().join("examples");
    let bin = dir.join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    assert!(
        bin.is_file(),
        "{} not built (cargo test builds examples)",
        bin.display()
    );
    let mut c = Command::new(bin);
    c.env("RUST_LOG", "off");
    c
}

fn shared_template(name: &str) -> String {
    std::fs::read_to_string(
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../shared/chat-templates")
            .join(name),
    )
    .unwrap()
}

fn stderr_line(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).trim().to_string()
}

/// --render-only prints exactly transformers' rendering (no newline added) without weights.
#[test]
fn chat_render_only_is_exact() {
    let cases: Vec<Value> = serde_json::from_str(
        &std::fs::read_to_string(common::fixtures_dir().join("chat_templates.json")).unwrap(),
    )
    .unwrap();
    let case = cases
        .iter()
        .find(|c| {
            c["template"] == "Qwen-Qwen2.5-7B-Instruct.jinja" && c["conversation"] == "multi_turn"
        })
        .unwrap();
    let dir = common::TempDir::new("render-only");
    std::fs::write(
        dir.path().join("chat_template.jinja"),
        shared_template("Qwen-Qwen2.5-7B-Instruct.jinja"),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("tokenizer_config.json"),
        r#"{"bos_token": "<s>", "eos_token": "</s>"}"#,
    )
    .unwrap();
    let messages = dir.path().join("messages.json");
    std::fs::write(&messages, case["messages"].to_string()).unwrap();
    let out = example("chat")
        .arg("--model")
        .arg(dir.path())
        .arg("--messages")
        .arg(&messages)
        .arg("--render-only")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr_line(&out));
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        case["expected"].as_str().unwrap()
    );

    // A template that raises: status 1, its message on stderr.
    std::fs::write(
        dir.path().join("chat_template.jinja"),
        shared_template("google-gemma-2-2b-it.jinja"),
    )
    .unwrap();
    std::fs::write(
        &messages,
        r#"[{"role": "system", "content": "s"}, {"role": "user", "content": "u"}]"#,
    )
    .unwrap();
    let out = example("chat")
        .arg("--model")
        .arg(dir.path())
        .arg("--messages")
        .arg(&messages)
        .arg("--render-only")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
    let err = stderr_line(&out);
    assert!(
        err.contains("System role not supported") && err.lines().count() == 1,
        "{err}"
    );

    // Not a list of messages: a clear error naming the flag.
    std::fs::write(&messages, r#"{"role": "user"}"#).unwrap();
    let out = example("chat")
        .arg("--model")
        .arg(dir.path())
        .arg("--messages")
        .arg(&messages)
        .arg("--render-only")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr_line(&out).contains("--messages"),
        "{}",
        stderr_line(&out)
    );
}

/// `chat --messages --json` and `generate --chat --json` answer as the library does.
#[test]
fn chat_and_generate_chat_json() {
    let (_, src, _) = common::fixtures()
        .into_iter()
        .find(|(n, _, _)| n == "llama-f32")
        .unwrap();
    let dir = common::TempDir::copy_of(&src, "chat-json");
    std::fs::write(
        dir.path().join("chat_template.jinja"),
        shared_template("Qwen-Qwen2.5-7B-Instruct.jinja"),
    )
    .unwrap();
    let model = Model::load(dir.path(), &Device::cpu()).unwrap();
    let cfg = GenerationConfig::default()
        .max_new_tokens(5)
        .ignore_eos(true);
    let msgs = [Message::user("Hi there")];
    let mut session = model.session();
    let want: Vec<u32> = session
        .chat(&msgs, &cfg)
        .unwrap()
        .map(|t| t.unwrap().id)
        .collect();
    let prompt = model.chat_ids(&msgs).unwrap();

    let messages = dir.path().join("messages.json");
    std::fs::write(&messages, serde_json::to_string(&msgs).unwrap()).unwrap();
    let out = example("chat")
        .arg("--model")
        .arg(dir.path())
        .args([
            "--json",
            "--max-new-tokens",
            "5",
            "--ignore-eos",
            "--messages",
        ])
        .arg(&messages)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr_line(&out));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["generated_tokens"], serde_json::json!(want));
    assert_eq!(v["prompt_tokens"], serde_json::json!(prompt));
    assert_eq!(v["finish_reason"], "length");

    let out = example("generate")
        .arg("--model")
        .arg(dir.path())
        .args([
            "--json",
            "--chat",
            "--max-new-tokens",
            "5",
            "--ignore-eos",
            "--prompt",
            "Hi there",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr_line(&out));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["generated_tokens"], serde_json::json!(want));
    assert_eq!(v["prompt_tokens"], serde_json::json!(prompt));

    // Sampling flags reach the sampler: a stop token ends with "stop".
    let out = example("generate")
        .arg("--model")
        .arg(dir.path())
        .args([
            "--json",
            "--chat",
            "--max-new-tokens",
            "5",
            "--ignore-eos",
            "--prompt",
            "Hi there",
        ])
        .args(["--stop-token", &want[1].to_string()])
        .output()
        .unwrap();
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["finish_reason"], "stop");
    let first = want.iter().position(|&t| t == want[1]).unwrap();
    assert_eq!(v["generated_tokens"], serde_json::json!(want[..=first]));

    // Bad flag values are one-line errors with status 1.
    for bad in [
        ["--logit-bias", "7"],
        ["--top-p", "1.5"],
        ["--presence-penalty", "9"],
    ] {
        let out = example("generate")
            .arg("--model")
            .arg(dir.path())
            .args(bad)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{bad:?}");
        let err = stderr_line(&out);
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(
            err.contains(bad[0].trim_start_matches("--").replace('-', "_").as_str())
                || err.contains(bad[0]),
            "{err}"
        );
    }
}

/// With no adapter at all (Vulkan and EGL drivers hidden), `--device wgpu` is a one-line typed
/// error with status 1 that says what to install, not a panic inside burn.
#[cfg(all(feature = "wgpu", target_os = "linux"))]
#[test]
fn wgpu_without_adapter_is_an_error() {
    let out = example("generate")
        .env("VK_ICD_FILENAMES", "/nonexistent")
        .env("VK_DRIVER_FILES", "/nonexistent")
        .env("__EGL_VENDOR_LIBRARY_FILENAMES", "/nonexistent")
        .args(["--model"])
        .arg(common::fixtures_dir().join("llama-f32"))
        .args([
            "--device",
            "wgpu",
            "--prompt",
            "Hi",
            "--max-new-tokens",
            "2",
        ])
        .output()
        .unwrap();
    let err = stderr_line(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.starts_with("error: device \"wgpu\": wgpu found no adapter"),
        "{err}"
    );
    assert!(
        err.contains("mesa-vulkan-drivers") && !err.contains("panicked"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "{err}");
}

/// Every bad input of issue 7, tried as a new user would through `generate`: exit status 1,
/// one line on stderr that names what is wrong, no panic (docs/reliability.md).
#[test]
fn every_bad_input_is_one_line_and_status_1() {
    use std::path::Path;
    let src = common::fixtures_dir().join("llama-f32");
    let edit = |tag: &str, f: &dyn Fn(&Path)| {
        let d = common::TempDir::copy_of(&src, tag);
        f(d.path());
        d
    };
    let write = |name: &'static str, text: Vec<u8>| {
        move |p: &Path| std::fs::write(p.join(name), &text).unwrap()
    };
    let config = std::fs::read_to_string(src.join("config.json")).unwrap();
    let weights = std::fs::read(src.join("model.safetensors")).unwrap();
    let with_config = |from: &str, to: &str| {
        assert!(config.contains(from), "{from}");
        write("config.json", config.replacen(from, to, 1).into_bytes())
    };
    // An int32 tensor where kiln needs floats.
    let int_tensor = |p: &Path| {
        let st = safetensors::SafeTensors::deserialize(&weights).unwrap();
        let views: Vec<(String, safetensors::tensor::TensorView)> = st
            .tensors()
            .into_iter()
            .map(|(n, v)| {
                let dtype = if n == "model.norm.weight" {
                    safetensors::Dtype::I32
                } else {
                    v.dtype()
                };
                let view =
                    safetensors::tensor::TensorView::new(dtype, v.shape().to_vec(), v.data())
                        .unwrap();
                (n, view)
            })
            .collect();
        safetensors::serialize_to_file(views, None, &p.join("model.safetensors")).unwrap();
    };
    let mut absurd = (u64::MAX / 2).to_le_bytes().to_vec();
    absurd.extend_from_slice(b"{}");
    let long_prompt = "hello ".repeat(600);
    let gpt2_adapter = common::fixtures_dir()
        .join("lora-gpt2")
        .to_string_lossy()
        .into_owned();
    let hidden = config
        .lines()
        .find(|l| l.contains("\"intermediate_size\""))
        .unwrap()
        .trim()
        .trim_end_matches(',')
        .to_string();
    type Case<'a> = (&'a str, Option<common::TempDir>, Vec<&'a str>, Vec<&'a str>);
    let cases: Vec<Case> = vec![
        (
            "missing folder",
            None,
            vec!["--model", "/no/such/model"],
            vec!["/no/such/model"],
        ),
        (
            "missing config",
            Some(edit("no-config", &|p| {
                std::fs::remove_file(p.join("config.json")).unwrap()
            })),
            vec![],
            vec!["config.json"],
        ),
        (
            "invalid JSON",
            Some(edit(
                "bad-json",
                &write("config.json", b"{\"model_type\": ".to_vec()),
            )),
            vec![],
            vec!["config.json"],
        ),
        (
            "wrong-typed field",
            Some(edit(
                "typed",
                &with_config(
                    "\"num_hidden_layers\"",
                    "\"num_hidden_layers\": \"two\", \"x\"",
                ),
            )),
            vec![],
            vec!["config.json"],
        ),
        (
            "unknown model_type",
            Some(edit(
                "mamba",
                &with_config("\"model_type\": \"llama\"", "\"model_type\": \"mamba\""),
            )),
            vec![],
            vec!["mamba", "llama, mistral"],
        ),
        (
            "dimensions that disagree with the tensors",
            Some(edit(
                "dims",
                &with_config(&hidden, "\"intermediate_size\": 1000"),
            )),
            vec![],
            vec!["mlp", "1000"],
        ),
        (
            "truncated weights",
            Some(edit(
                "trunc",
                &write("model.safetensors", weights[..weights.len() / 3].to_vec()),
            )),
            vec![],
            vec!["model.safetensors"],
        ),
        (
            "absurd header length",
            Some(edit("absurd", &write("model.safetensors", absurd.clone()))),
            vec![],
            vec!["model.safetensors"],
        ),
        (
            "garbage weights",
            Some(edit(
                "garbage",
                &write("model.safetensors", vec![0xAB; 4096]),
            )),
            vec![],
            vec!["model.safetensors"],
        ),
        (
            "unsupported dtype",
            Some(edit("i32", &int_tensor)),
            vec![],
            vec!["model.norm.weight", "I32"],
        ),
        (
            "malformed tokenizer",
            Some(edit(
                "tok",
                &write("tokenizer.json", b"{\"version\": 1".to_vec()),
            )),
            vec![],
            vec!["tokenizer.json"],
        ),
        (
            "invalid chat template",
            Some(edit(
                "tpl",
                &write("chat_template.jinja", b"{% for %}".to_vec()),
            )),
            vec!["--chat"],
            vec!["template"],
        ),
        (
            // (A tokenizer that adds BOS turns "" into one token: generation from BOS, as
            // transformers does; GPT-2's adds nothing.)
            "empty prompt",
            Some(common::TempDir::copy_of(
                &common::fixtures_dir().join("gpt2-f32"),
                "gpt2-empty",
            )),
            vec!["--prompt", ""],
            vec!["prompt"],
        ),
        (
            "prompt past the context",
            None,
            vec!["--prompt", &long_prompt],
            vec!["context"],
        ),
        (
            "negative temperature",
            None,
            vec!["--temperature", "-1"],
            vec!["temperature"],
        ),
        ("top_p of 0", None, vec!["--top-p", "0"], vec!["top_p"]),
        ("unknown device", None, vec!["--device", "tpu"], vec!["tpu"]),
        ("unknown dtype", None, vec!["--dtype", "f8"], vec!["f8"]),
        (
            "unknown quantization",
            None,
            vec!["--quantize", "q3"],
            vec!["q3"],
        ),
        (
            "adapter folder missing",
            None,
            vec!["--adapter", "/no/such/adapter"],
            vec!["/no/such/adapter", "adapter_config.json"],
        ),
        (
            "adapter for another model",
            None,
            vec!["--adapter", &gpt2_adapter],
            vec!["lora-gpt2", "match no weight"],
        ),
    ];
    for (what, dir, args, needles) in &cases {
        let mut cmd = example("generate");
        if !args.contains(&"--model") {
            let model = dir.as_ref().map_or(src.as_path(), |d| d.path());
            cmd.arg("--model").arg(model);
        }
        if !args.contains(&"--prompt") {
            cmd.args(["--prompt", "Hello there"]);
        }
        let out = cmd
            .args(args)
            .args(["--max-new-tokens", "2"])
            .output()
            .unwrap();
        let err = stderr_line(&out);
        assert_eq!(out.status.code(), Some(1), "{what}: {err}");
        assert_eq!(err.lines().count(), 1, "{what}: {err}");
        assert!(!err.contains("panicked"), "{what}: {err}");
        for n in needles {
            assert!(err.contains(n), "{what}: {err:?} lacks {n:?}");
        }
    }
}

/// `generate --adapter DIR --logprobs N --json` reproduces peft's greedy ids and
/// log-probabilities (tools/make_custom_fixtures.py), in the documented JSON shape.
#[test]
fn generate_with_an_adapter_and_logprobs() {
    let dir = common::fixtures_dir().join("lora-llama");
    let exp: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("expected_lora.json")).unwrap())
            .unwrap();
    let prompt = exp["prompt_ids"].clone();
    let out = example("generate")
        .arg("--model")
        .arg(common::fixtures_dir().join("llama-f32"))
        .arg("--adapter")
        .arg(&dir)
        .args([
            "--max-new-tokens",
            "16",
            "--ignore-eos",
            "--logprobs",
            "5",
            "--json",
        ])
        .arg("--prompt")
        .arg(exp_prompt(&exp))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr_line(&out));
    let got: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(got["prompt_tokens"], prompt);
    assert_eq!(got["generated_tokens"], exp["greedy_ids"]);
    let (got_lp, want_lp) = (
        got["logprobs"].as_array().unwrap(),
        exp["logprobs"].as_array().unwrap(),
    );
    assert_eq!(got_lp.len(), 16);
    for (g, w) in got_lp.iter().zip(want_lp) {
        assert_eq!(g["id"], w["id"]);
        let d = (g["logprob"].as_f64().unwrap() - w["logprob"].as_f64().unwrap()).abs();
        assert!(d < 2e-3, "{g} vs {w}");
        let top = g["top"].as_array().unwrap();
        assert_eq!(top.len(), 5);
        assert!(top
            .iter()
            .all(|t| t["id"].is_u64() && t["logprob"].is_f64() && t["text"].is_string()));
        assert_eq!(top[0]["id"], w["top"][0]["id"]);
    }
    // perplexity takes --adapter too: peft's mean NLL.
    let base = common::fixtures_dir().join("llama-f32");
    let out = example("perplexity")
        .arg("--model")
        .arg(&base)
        .arg("--adapter")
        .arg(&dir)
        .arg("--file")
        .arg(base.join("paragraph.txt"))
        .arg("--json")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr_line(&out));
    let got: Value = serde_json::from_slice(&out.stdout).unwrap();
    let d = (got["mean_nll"].as_f64().unwrap() - exp["mean_nll"].as_f64().unwrap()).abs();
    assert!(
        d < 1e-3,
        "perplexity --adapter: {} vs {}",
        got["mean_nll"],
        exp["mean_nll"]
    );
    // Without --logprobs the field is absent.
    let out = example("generate")
        .arg("--model")
        .arg(common::fixtures_dir().join("llama-f32"))
        .args(["--max-new-tokens", "2", "--json", "--prompt", "Hi"])
        .output()
        .unwrap();
    let got: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(got.get("logprobs").is_none());
}

fn exp_prompt(exp: &Value) -> String {
    exp["prompt"].as_str().unwrap().to_string()
}

/// `inspect --json`: each prompt token's log-probability (as `perplexity` scores them), the
/// alternatives, a greedy continuation marked as generated; `--html` writes a page.
#[test]
fn inspect_reports_token_probabilities() {
    let model_dir = common::fixtures_dir().join("qwen2-f32");
    let exp: Value =
        serde_json::from_str(&std::fs::read_to_string(model_dir.join("expected.json")).unwrap())
            .unwrap();
    let scratch = common::TempDir::new("inspect");
    let html = scratch.path().join("page.html");
    let out = example("inspect")
        .arg("--model")
        .arg(&model_dir)
        .arg("--prompt")
        .arg(exp["paragraph"].as_str().unwrap())
        .args(["--top", "2", "--generate", "3", "--json", "--html"])
        .arg(&html)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr_line(&out));
    let got: Value = serde_json::from_slice(&out.stdout).unwrap();
    let d = (got["mean_nll"].as_f64().unwrap() - exp["mean_nll"].as_f64().unwrap()).abs();
    assert!(
        d < 1e-3,
        "mean NLL {} vs {}",
        got["mean_nll"],
        exp["mean_nll"]
    );
    let rows = got["tokens"].as_array().unwrap();
    let n = exp["nll_ids"].as_array().unwrap().len();
    assert_eq!(rows.len(), n - 1 + 3);
    assert_eq!(rows.iter().filter(|r| r["generated"] == true).count(), 3);
    assert!(rows.iter().all(|r| r["top"].as_array().unwrap().len() == 2));
    let page = std::fs::read_to_string(&html).unwrap();
    assert!(page.contains("<table>") && page.contains("Attention, layer 1"));
    assert!(page.contains("Hidden states"));
    // A layer the model lacks is an error naming the flag.
    let out = example("inspect")
        .arg("--model")
        .arg(&model_dir)
        .args(["--prompt", "Hi there", "--html"])
        .arg(&html)
        .args(["--layer", "7"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr_line(&out).contains("--layer"));
}

/// bench --interleave decodes each listed load in turn and reports each; --read-bandwidth adds
/// the read probe's mean; the flags' misuse is a one-line error.
#[test]
fn bench_interleaves_quantizations() {
    let (_, src, _) = common::fixtures()
        .into_iter()
        .find(|(n, _, _)| n == "llama-bf16")
        .unwrap();
    let out = example("bench")
        .arg("--model")
        .arg(&src)
        .args([
            "--interleave",
            "none,q8,q4",
            "--read-bandwidth",
            "--batch",
            "2",
            "--prompt-len",
            "5",
            "--gen",
            "3",
            "--json",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr_line(&out));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let variants = v["variants"].as_array().unwrap();
    let names: Vec<&str> = variants
        .iter()
        .map(|x| x["quantize"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["none", "q8", "q4"]);
    // Quantized loads keep their KV cache in f16 by default, the unquantized one in f32.
    let kv: Vec<&str> = variants.iter().map(|x| x["kv"].as_str().unwrap()).collect();
    assert_eq!(kv, ["f32", "f16", "f16"]);
    for x in variants {
        for k in ["prefill_tokens_per_s", "decode_tokens_per_s"] {
            assert!(x[k].as_f64().unwrap() > 0.0, "{k} of {x}");
        }
    }
    // The top-level fields are the first load's.
    assert_eq!(v["quantize"], "none");
    assert_eq!(v["decode_tokens_per_s"], variants[0]["decode_tokens_per_s"]);
    assert_eq!(v["gen"], 3);
    assert!(v["read_gb_per_s"].as_f64().unwrap() > 0.0, "{v}");
    assert_eq!(v["batch"], 2);
    assert!(
        v["batch_decode_tokens_per_s"].as_f64().unwrap() > 0.0,
        "{v}"
    );
    assert_eq!(v["bf16_activations"], "exact");

    for (args, needle) in [
        (&["--interleave", "none,q3"][..], "q3"),
        (
            &["--interleave", "none", "--quantize", "q8"][..],
            "--interleave",
        ),
        (&["--kv", "f8"][..], "--kv"),
        (&["--batch", "0"][..], "--batch"),
        (&["--cpu-paths", "gpu"][..], "--cpu-paths"),
        (&["--bf16-activations", "half"][..], "--bf16-activations"),
        (
            &["--quantize", "q4", "--quantize-head", "q2"][..],
            "--quantize-head",
        ),
    ] {
        let out = example("bench")
            .arg("--model")
            .arg(&src)
            .args(args)
            .args(["--prompt-len", "2", "--gen", "1"])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let err = stderr_line(&out);
        assert!(err.contains(needle) && err.lines().count() == 1, "{err}");
    }

    // `--quantize none` is the default spelled out, as the JSON reports it.
    let out = example("bench")
        .arg("--model")
        .arg(&src)
        .args([
            "--quantize",
            "none",
            "--prompt-len",
            "2",
            "--gen",
            "1",
            "--json",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr_line(&out));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (v["quantize"].as_str(), v["kv"].as_str()),
        (Some("none"), Some("f32"))
    );
}
