//! Shared helpers for the integration tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use serde::Deserialize;

/// What tools/make_fixtures.py recorded with transformers.
#[derive(Debug, Deserialize)]
pub struct Expected {
    pub architecture: String,
    pub stored_dtype: String,
    pub prompt: String,
    pub prompt_ids: Vec<u32>,
    pub greedy_ids: Vec<u32>,
    pub greedy_text: String,
    pub paragraph: String,
    pub nll_ids: Vec<u32>,
    pub mean_nll: f64,
    pub last_logits: Vec<f32>,
    /// Large-logit fixtures only: the reference's top-1 minus top-2 logit at each greedy step.
    #[serde(default)]
    pub greedy_margins: Vec<f32>,
    /// Large-logit fixtures only: the largest |logit| at the prompt's last position.
    #[serde(default)]
    pub max_abs_logit: f32,
}

/// tests/fixtures, or `KILN_FIXTURES_DIR` (tools/check_unseen.sh points it at checkpoints the
/// tests have never seen).
pub fn fixtures_dir() -> PathBuf {
    match std::env::var_os("KILN_FIXTURES_DIR") {
        Some(d) => PathBuf::from(d),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures"),
    }
}

/// Every fixture checkpoint (a folder with expected.json), sorted by name.
pub fn fixtures() -> Vec<(String, PathBuf, Expected)> {
    fixtures_in(&fixtures_dir())
}

/// The large-logit fixtures (tests/fixtures/large: `make_fixtures.py --large`), sorted by name.
pub fn large_fixtures() -> Vec<(String, PathBuf, Expected)> {
    fixtures_in(&fixtures_dir().join("large"))
}

fn fixtures_in(root: &Path) -> Vec<(String, PathBuf, Expected)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(root).expect("the fixtures folder exists") {
        let dir = entry.unwrap().path();
        let exp = dir.join("expected.json");
        if exp.is_file() {
            let e: Expected =
                serde_json::from_str(&std::fs::read_to_string(&exp).unwrap()).unwrap();
            out.push((
                dir.file_name().unwrap().to_string_lossy().into_owned(),
                dir,
                e,
            ));
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    assert!(
        out.len() >= 5,
        "expected the fixture checkpoints under tests/fixtures"
    );
    out
}

/// The devices the tests run on: every backend compiled in. A build with `wgpu` needs an
/// adapter (CI installs lavapipe) and fails without one; KILN_TEST_WGPU=0 leaves it out.
pub fn devices() -> Vec<kiln::Device> {
    let mut d = vec![kiln::Device::cpu()];
    #[cfg(feature = "ndarray")]
    d.push(kiln::Device::ndarray());
    #[cfg(feature = "wgpu")]
    if std::env::var("KILN_TEST_WGPU").as_deref() != Ok("0") {
        d.push(
            kiln::Device::try_wgpu()
                .unwrap_or_else(|e| panic!("{e} (KILN_TEST_WGPU=0 skips the wgpu tests)")),
        );
    }
    d
}

/// The fixtures also run on wgpu: one of each family's distinctive paths (software Vulkan is
/// slow; every fixture runs on the CPU backends).
pub const WGPU_FIXTURES: &[&str] = &[
    "llama-f32",
    "mistral-window-f32",
    "mixtral-f32",
    "gemma2-bf16",
    "phi3-bf16",
    "qwen3-bf16",
    "gpt2-f32",
];

/// Whether `fixture` runs on `device`. On a real GPU, `KILN_TEST_WGPU_ALL=1` runs every
/// fixture on wgpu too.
pub fn runs_on(device: &kiln::Device, fixture: &str) -> bool {
    device.kind() != kiln::BackendKind::Wgpu
        || WGPU_FIXTURES.contains(&fixture)
        || std::env::var("KILN_TEST_WGPU_ALL").as_deref() == Ok("1")
}

pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "length mismatch");
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// A scratch folder, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static N: AtomicUsize = AtomicUsize::new(0);
        let p = std::env::temp_dir().join(format!(
            "kiln-test-{}-{}-{tag}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        Self(p)
    }

    /// A copy of a fixture folder.
    pub fn copy_of(src: &Path, tag: &str) -> Self {
        fn copy(src: &Path, dst: &Path) {
            std::fs::create_dir_all(dst).unwrap();
            for e in std::fs::read_dir(src).unwrap() {
                let e = e.unwrap();
                let to = dst.join(e.file_name());
                if e.path().is_dir() {
                    copy(&e.path(), &to);
                } else {
                    std::fs::copy(e.path(), to).unwrap();
                }
            }
        }
        let t = Self::new(tag);
        copy(src, &t.0);
        t
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The first fixture checkpoint on the default CPU device, with its expectations.
pub fn first_model() -> (kiln::Model, Expected) {
    let (_, dir, exp) = fixtures().into_iter().next().unwrap();
    (kiln::Model::load(&dir, &kiln::Device::cpu()).unwrap(), exp)
}

/// Generates after `ids` and returns the generated ids.
pub fn gen_ids(session: &mut kiln::Session, ids: &[u32], cfg: &kiln::GenerationConfig) -> Vec<u32> {
    session
        .generate_ids(ids, cfg)
        .unwrap()
        .map(|t| t.unwrap().id)
        .collect()
}

/// Rewrites model.safetensors in `dir` through `edit` (name → (shape, f32 values)).
pub fn rewrite_weights(
    dir: &std::path::Path,
    edit: impl FnOnce(&mut std::collections::HashMap<String, (Vec<usize>, Vec<f32>)>),
) {
    let path = dir.join("model.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut tensors: std::collections::HashMap<String, (Vec<usize>, Vec<f32>)> = st
        .tensors()
        .into_iter()
        .map(|(n, v)| {
            let data = v
                .data()
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            (n, (v.shape().to_vec(), data))
        })
        .collect();
    edit(&mut tensors);
    let raw: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
        .into_iter()
        .map(|(n, (s, d))| (n, s, d.iter().flat_map(|x| x.to_le_bytes()).collect()))
        .collect();
    let views: Vec<(String, safetensors::tensor::TensorView)> = raw
        .iter()
        .map(|(n, s, b)| {
            (
                n.clone(),
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), b)
                    .unwrap(),
            )
        })
        .collect();
    safetensors::serialize_to_file(views, None, &path).unwrap();
}
