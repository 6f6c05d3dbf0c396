//! Seeded mutation runs over the files a user hands kiln (config.json, the safetensors header,
//! tokenizer.json, a chat template): whatever the bytes, loading and a short generation end in
//! `Ok` or a typed `Err`, never a panic. A deterministic complement to the coverage-guided
//! fuzzing listed in docs/reliability.md; every input that once panicked stays here as a case.

mod common;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;

use common::{fixtures_dir, TempDir};
use kiln::{Device, GenerationConfig, Message, Model};

/// xorshift64*: a tiny seeded generator, so that every run mutates the same way.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// One random edit of `bytes` within `range`: overwrite, insert, delete, truncate, or swap in a
/// token that parsers care about.
fn mutate(rng: &mut Rng, bytes: &mut Vec<u8>, range: std::ops::Range<usize>) {
    const TOKENS: &[&[u8]] = &[
        b"-1",
        b"0",
        b"1e308",
        b"null",
        b"\"\"",
        b"[]",
        b"{}",
        b"18446744073709551615",
        b"\"F8\"",
        b"\"I64\"",
        b"true",
        b"\xff",
        b"{%",
        b"}}",
        b"{{",
        b"%}",
    ];
    let end = range.end.min(bytes.len());
    let start = range.start.min(end);
    let at = start + rng.below(end - start + 1);
    match rng.below(5) {
        0 if at < bytes.len() => bytes[at] = rng.next() as u8,
        1 => {
            let t = TOKENS[rng.below(TOKENS.len())];
            bytes.splice(at..at, t.iter().copied());
        }
        2 if at < bytes.len() => {
            let n = rng.below(8).min(bytes.len() - at);
            bytes.drain(at..at + n);
        }
        3 => bytes.truncate(at),
        _ => {
            let t = TOKENS[rng.below(TOKENS.len())];
            let n = rng.below(6).min(bytes.len().saturating_sub(at));
            bytes.splice(at..at + n, t.iter().copied());
        }
    }
}

/// Loads `dir` and, if that works, generates two tokens and renders a chat; panics are the
/// failure this looks for.
fn exercise(dir: &Path) -> Result<(), String> {
    catch_unwind(AssertUnwindSafe(|| {
        let Ok(model) = Model::load(dir, &Device::cpu()) else {
            return;
        };
        let cfg = GenerationConfig::default().max_new_tokens(2);
        if let Ok(g) = model.session().generate("Hello", &cfg) {
            g.for_each(drop);
        }
        let _ = model.apply_chat_template(&[Message::user("Hi")], true);
    }))
    .map_err(|e| {
        e.downcast_ref::<String>()
            .cloned()
            .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default()
    })
}

#[test]
fn mutated_inputs_never_panic() {
    let src = fixtures_dir().join("llama-f32");
    let weights = std::fs::read(src.join("model.safetensors")).unwrap();
    let header_end = 8 + u64::from_le_bytes(weights[..8].try_into().unwrap()) as usize;
    let config = std::fs::read(src.join("config.json")).unwrap();
    let tokenizer = std::fs::read(src.join("tokenizer.json")).unwrap();
    let template = b"{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}\
        {% if add_generation_prompt %}<|assistant|>{% endif %}"
        .to_vec();
    let dir = TempDir::copy_of(&src, "mutations");
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let mut failures = Vec::new();
    // KILN_MUTATION_ROUNDS runs longer (docs/reliability.md records such runs).
    let rounds: usize = std::env::var("KILN_MUTATION_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(600);
    for round in 0..rounds {
        // Restore everything, then damage one file with one to three edits.
        std::fs::write(dir.path().join("config.json"), &config).unwrap();
        std::fs::write(dir.path().join("model.safetensors"), &weights).unwrap();
        std::fs::write(dir.path().join("tokenizer.json"), &tokenizer).unwrap();
        std::fs::write(dir.path().join("chat_template.jinja"), &template).unwrap();
        let (name, mut bytes, range) = match round % 4 {
            0 => ("config.json", config.clone(), 0..config.len()),
            // The header: its length prefix and JSON (data bytes only change values).
            1 => ("model.safetensors", weights.clone(), 0..header_end),
            2 => ("tokenizer.json", tokenizer.clone(), 0..tokenizer.len()),
            _ => ("chat_template.jinja", template.clone(), 0..template.len()),
        };
        for _ in 0..1 + rng.below(3) {
            let end = range.end.min(bytes.len());
            mutate(&mut rng, &mut bytes, range.start..end);
        }
        std::fs::write(dir.path().join(name), &bytes).unwrap();
        if let Err(msg) = exercise(dir.path()) {
            let keep = dir.path().join(format!("panic-{round}-{name}"));
            std::fs::write(&keep, &bytes).unwrap();
            failures.push(format!("round {round}, {name}: {msg}"));
        }
    }
    assert!(failures.is_empty(), "panics:\n{}", failures.join("\n"));
}
