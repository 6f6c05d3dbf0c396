//! Bad inputs give typed errors that name what is wrong, never a panic.

mod common;

use common::{fixtures, rewrite_weights, TempDir};
use kiln::{Device, Error, GenerationConfig, Model};
use safetensors::tensor::TensorView;

fn llama_dir() -> std::path::PathBuf {
    fixtures()
        .into_iter()
        .find(|f| f.0 == "llama-f32")
        .unwrap()
        .1
}

fn load(dir: &std::path::Path) -> Error {
    Model::load(dir, &Device::cpu()).unwrap_err()
}

#[test]
fn missing_folder() {
    let err = load(std::path::Path::new("/no/such/model"));
    assert!(matches!(err, Error::MissingFile { .. }), "{err}");
    assert!(err.to_string().contains("/no/such/model"));
}

#[test]
fn missing_config() {
    let t = TempDir::copy_of(&llama_dir(), "noconfig");
    std::fs::remove_file(t.path().join("config.json")).unwrap();
    let err = load(t.path());
    assert!(
        matches!(err, Error::MissingFile { .. }) && err.to_string().contains("config.json"),
        "{err}"
    );
}

#[test]
fn malformed_config_json() {
    let t = TempDir::copy_of(&llama_dir(), "badjson");
    std::fs::write(t.path().join("config.json"), "{\"hidden_size\": 64,").unwrap();
    let err = load(t.path());
    assert!(
        matches!(err, Error::Json { .. }) && err.to_string().contains("config.json"),
        "{err}"
    );
}

#[test]
fn config_missing_field_and_bad_values() {
    let t = TempDir::copy_of(&llama_dir(), "badcfg");
    let path = t.path().join("config.json");
    let orig: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();

    let mut v = orig.clone();
    v.as_object_mut().unwrap().remove("hidden_size");
    std::fs::write(&path, v.to_string()).unwrap();
    let err = load(t.path());
    assert!(err.to_string().contains("hidden_size"), "{err}");

    let mut v = orig.clone();
    v["num_key_value_heads"] = 3.into();
    std::fs::write(&path, v.to_string()).unwrap();
    let err = load(t.path());
    assert!(
        matches!(err, Error::Config { .. }) && err.to_string().contains("num_key_value_heads"),
        "{err}"
    );

    let mut v = orig.clone();
    v["rope_parameters"]["rope_type"] = "yarn".into();
    std::fs::write(&path, v.to_string()).unwrap();
    let err = load(t.path());
    assert!(err.to_string().contains("yarn"), "{err}");

    let mut v = orig.clone();
    v["hidden_act"] = "swishglu".into();
    std::fs::write(&path, v.to_string()).unwrap();
    assert!(load(t.path()).to_string().contains("swishglu"));

    let mut v = orig;
    v["model_type"] = "gpt_bigcode".into();
    std::fs::write(&path, v.to_string()).unwrap();
    let err = load(t.path());
    assert!(
        matches!(err, Error::UnsupportedArchitecture { .. })
            && err.to_string().contains("gpt_bigcode"),
        "{err}"
    );
}

#[test]
fn missing_tensor_is_named() {
    let t = TempDir::copy_of(&llama_dir(), "missing");
    rewrite_weights(t.path(), |m| {
        m.remove("model.layers.1.mlp.up_proj.weight");
    });
    let err = load(t.path());
    assert!(matches!(err, Error::MissingTensor { .. }), "{err}");
    assert!(
        err.to_string()
            .contains("model.layers.1.mlp.up_proj.weight"),
        "{err}"
    );
}

#[test]
fn misshaped_tensor_names_both_shapes() {
    let t = TempDir::copy_of(&llama_dir(), "shape");
    let mut hidden = 0;
    rewrite_weights(t.path(), |m| {
        hidden = m["model.norm.weight"].0[0];
        m.insert(
            "model.norm.weight".into(),
            (vec![hidden - 1], vec![1.0; hidden - 1]),
        );
    });
    let err = load(t.path());
    let msg = err.to_string();
    assert!(matches!(err, Error::ShapeMismatch { .. }), "{msg}");
    let (found, expected) = (format!("[{}]", hidden - 1), format!("[{hidden}]"));
    assert!(
        msg.contains("model.norm.weight") && msg.contains(&found) && msg.contains(&expected),
        "{msg}"
    );
}

#[test]
fn unexpected_tensor_is_named() {
    let t = TempDir::copy_of(&llama_dir(), "extra");
    rewrite_weights(t.path(), |m| {
        m.insert(
            "model.layers.9.mystery.weight".into(),
            (vec![2], vec![0.0; 2]),
        );
    });
    let err = load(t.path());
    assert!(matches!(err, Error::UnexpectedTensors { .. }), "{err}");
    assert!(err.to_string().contains("model.layers.9.mystery.weight"));
}

#[test]
fn truncated_and_garbage_weight_files() {
    let t = TempDir::copy_of(&llama_dir(), "trunc");
    let path = t.path().join("model.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    let err = load(t.path());
    assert!(
        matches!(err, Error::Safetensors { .. }) && err.to_string().contains("model.safetensors"),
        "{err}"
    );
    std::fs::write(&path, b"not a safetensors file").unwrap();
    assert!(matches!(load(t.path()), Error::Safetensors { .. }));
    std::fs::write(&path, b"").unwrap();
    assert!(matches!(load(t.path()), Error::Safetensors { .. }));
}

#[test]
fn sharded_checkpoint_loads_and_missing_shard_is_named() {
    let t = TempDir::copy_of(&llama_dir(), "shards");
    let bytes = std::fs::read(t.path().join("model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut names: Vec<String> = st.names().into_iter().map(String::from).collect();
    names.sort();
    let (a, b) = names.split_at(names.len() / 2);
    let mut weight_map = serde_json::Map::new();
    for (file, part) in [
        ("model-00001-of-00002.safetensors", a),
        ("model-00002-of-00002.safetensors", b),
    ] {
        let views: Vec<(String, TensorView)> = part
            .iter()
            .map(|n| (n.clone(), st.tensor(n).unwrap()))
            .collect();
        safetensors::serialize_to_file(views, None, &t.path().join(file)).unwrap();
        for n in part {
            weight_map.insert(n.clone(), file.into());
        }
    }
    std::fs::remove_file(t.path().join("model.safetensors")).unwrap();
    let index = serde_json::json!({"metadata": {}, "weight_map": weight_map});
    std::fs::write(
        t.path().join("model.safetensors.index.json"),
        index.to_string(),
    )
    .unwrap();
    let sharded = Model::load(t.path(), &Device::cpu()).unwrap();
    let whole = Model::load(llama_dir(), &Device::cpu()).unwrap();
    let ids = [1u32, 5, 9, 300];
    assert_eq!(
        sharded.forward_logits(&ids).unwrap(),
        whole.forward_logits(&ids).unwrap()
    );

    std::fs::remove_file(t.path().join("model-00002-of-00002.safetensors")).unwrap();
    let err = load(t.path());
    assert!(
        matches!(err, Error::MissingFile { .. })
            && err.to_string().contains("model-00002-of-00002"),
        "{err}"
    );
}

#[test]
fn no_weights_at_all() {
    let t = TempDir::copy_of(&llama_dir(), "noweights");
    std::fs::remove_file(t.path().join("model.safetensors")).unwrap();
    let err = load(t.path());
    assert!(
        matches!(err, Error::MissingFile { .. }) && err.to_string().contains("safetensors"),
        "{err}"
    );
}

#[test]
fn broken_tokenizer_is_an_error_and_missing_one_only_blocks_text() {
    let t = TempDir::copy_of(&llama_dir(), "tok");
    std::fs::write(t.path().join("tokenizer.json"), "{ nope").unwrap();
    assert!(matches!(load(t.path()), Error::Tokenizer { .. }));
    std::fs::remove_file(t.path().join("tokenizer.json")).unwrap();
    let model = Model::load(t.path(), &Device::cpu()).unwrap();
    let err = model
        .session()
        .generate("hi", &GenerationConfig::default())
        .unwrap_err();
    assert!(
        matches!(err, Error::MissingFile { .. }) && err.to_string().contains("tokenizer.json"),
        "{err}"
    );
    // Token ids still work.
    let n = model
        .session()
        .generate_ids(
            &[1, 2, 3],
            &GenerationConfig::default()
                .max_new_tokens(3)
                .ignore_eos(true),
        )
        .unwrap()
        .count();
    assert_eq!(n, 3);
}

#[test]
fn context_overflow_and_bad_ids_and_arguments() {
    let model = Model::load(llama_dir(), &Device::cpu()).unwrap();
    let ctx = model.max_context();
    let long = vec![5u32; ctx + 1];
    let err = model
        .session()
        .generate_ids(&long, &GenerationConfig::default())
        .unwrap_err();
    assert!(
        matches!(err, Error::ContextOverflow { needed, limit } if needed == ctx + 1 && limit == ctx),
        "{err}"
    );
    let err = model.token_nll(&long).unwrap_err();
    assert!(matches!(err, Error::ContextOverflow { .. }));

    let err = model
        .session()
        .generate_ids(&[1, 99_999], &GenerationConfig::default())
        .unwrap_err();
    assert!(
        matches!(err, Error::TokenOutOfRange { id: 99_999, .. }),
        "{err}"
    );

    let mut s = model.session();
    for (cfg, name) in [
        (GenerationConfig::default().temperature(-1.0), "temperature"),
        (
            GenerationConfig::default().temperature(f32::NAN),
            "temperature",
        ),
        (GenerationConfig::default().top_p(0.0), "top_p"),
        (GenerationConfig::default().top_p(1.5), "top_p"),
        (GenerationConfig::default().min_p(2.0), "min_p"),
        (
            GenerationConfig::default().repetition_penalty(0.0),
            "repetition_penalty",
        ),
        (GenerationConfig::default().stop(""), "stop"),
    ] {
        let err = s.generate_ids(&[1, 2], &cfg).unwrap_err();
        assert!(
            matches!(err, Error::InvalidArgument { .. }) && err.to_string().contains(name),
            "{err}"
        );
    }
    // A failed call leaves the session usable and empty.
    assert!(s.tokens().is_empty());
    let err = s
        .generate_ids(&[], &GenerationConfig::default())
        .unwrap_err();
    assert!(matches!(err, Error::InvalidArgument { .. }));

    // Generation stops (finish reason length) when the context fills up.
    let near = vec![5u32; ctx - 2];
    let mut s = model.session();
    let mut g = s
        .generate_ids(
            &near,
            &GenerationConfig::default()
                .max_new_tokens(10)
                .ignore_eos(true),
        )
        .unwrap();
    assert_eq!(g.by_ref().count(), 2);
    assert_eq!(g.finish_reason(), Some(kiln::FinishReason::Length));
}

#[test]
fn unknown_device_names() {
    let err = Device::from_name("tpu").unwrap_err();
    assert!(matches!(err, Error::Device { .. }) && err.to_string().contains("tpu"));
    for name in Device::available() {
        assert!(err.to_string().contains(name), "{err}");
        assert_eq!(
            Device::from_name(name).unwrap().name(),
            if name == "cpu" {
                Device::cpu().name()
            } else {
                name
            }
        );
    }
    let err = Device::from_name("cuda").unwrap_err().to_string();
    assert!(
        err.contains("no separate cuda backend") && err.contains("wgpu"),
        "{err}"
    );
}

#[test]
fn weight_memory_names() {
    use kiln::WeightMemory;
    assert_eq!(
        WeightMemory::from_name("resident").unwrap(),
        WeightMemory::Resident
    );
    assert_eq!(
        WeightMemory::from_name("mapped").unwrap(),
        WeightMemory::Mapped
    );
    assert_eq!(WeightMemory::default(), WeightMemory::Mapped);
    let err = WeightMemory::from_name("ram").unwrap_err().to_string();
    assert!(
        err.contains("\"ram\"") && err.contains("resident or mapped"),
        "{err}"
    );
}

#[test]
fn dtype_names_and_support() {
    use kiln::Dtype;
    assert_eq!(Dtype::from_name("float16").unwrap(), Dtype::F16);
    assert_eq!(Dtype::from_name("BF16").unwrap(), Dtype::Bf16);
    let err = Dtype::from_name("f8").unwrap_err().to_string();
    assert!(
        err.contains("f8") && err.contains("f32, f16 or bf16"),
        "{err}"
    );
    let flex = Device::cpu().with_dtype(Dtype::Bf16).unwrap();
    assert_eq!(flex.dtype(), Dtype::Bf16);
    #[cfg(feature = "ndarray")]
    {
        let err = Device::ndarray()
            .with_dtype(Dtype::F16)
            .unwrap_err()
            .to_string();
        assert!(err.contains("ndarray") && err.contains("f32 only"), "{err}");
    }
    #[cfg(feature = "wgpu")]
    if std::env::var("KILN_TEST_WGPU").as_deref() != Ok("0") {
        let err = Device::wgpu()
            .with_dtype(Dtype::Bf16)
            .unwrap_err()
            .to_string();
        assert!(err.contains("no bf16"), "{err}");
    }
}

/// Found by `cargo fuzz run config` (fuzz/): a config declaring 888 888 888 layers (here also
/// in the array form serde accepts for a struct) made kiln allocate per-layer settings before
/// reading any tensor, and run out of memory. Now a typed error naming the field.
#[test]
fn absurd_layer_count_is_an_error_not_an_allocation() {
    let path = std::path::Path::new("config.json");
    let array: serde_json::Value = serde_json::from_str("[8,88,8,888888888,80]").unwrap();
    let err = kiln::models::llama::LlamaConfig::from_json(path, array, "llama").unwrap_err();
    assert!(err.to_string().contains("num_hidden_layers"), "{err}");
    let t = TempDir::copy_of(&llama_dir(), "layers");
    let cfg = std::fs::read_to_string(t.path().join("config.json")).unwrap();
    let mut v: serde_json::Value = serde_json::from_str(&cfg).unwrap();
    v["num_hidden_layers"] = 888_888_888.into();
    std::fs::write(t.path().join("config.json"), v.to_string()).unwrap();
    let err = load(t.path());
    assert!(
        matches!(err, Error::Config { .. }) && err.to_string().contains("888888888"),
        "{err}"
    );
}
