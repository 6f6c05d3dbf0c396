//! Sharing a model between threads, stopping generations early, and scores that are not
//! numbers: what an application embedding kiln relies on (docs/reliability.md).

mod common;

use std::sync::mpsc;

use common::{fixtures, gen_ids, rewrite_weights, Expected, TempDir};
use kiln::{CancelToken, Device, Error, FinishReason, GenerationConfig, Model};

fn fixture(name: &str) -> (std::path::PathBuf, Expected) {
    let (_, dir, exp) = fixtures().into_iter().find(|f| f.0 == name).unwrap();
    (dir, exp)
}

/// Four requests with different prompts and settings: greedy, and seeded sampling with filters.
fn requests(exp: &Expected) -> Vec<(Vec<u32>, GenerationConfig)> {
    let base = GenerationConfig::default()
        .max_new_tokens(12)
        .ignore_eos(true);
    let ids = &exp.prompt_ids;
    vec![
        (ids.clone(), base.clone()),
        (ids[..ids.len() / 2].to_vec(), base.clone()),
        (ids.clone(), base.clone().temperature(0.9).top_k(20).seed(1)),
        (
            ids[3..].to_vec(),
            base.temperature(1.1)
                .top_p(0.8)
                .repetition_penalty(1.2)
                .seed(2),
        ),
    ]
}

/// `Model` is `Send + Sync`; four threads, each with its own session on one shared model,
/// produce exactly the tokens of the same requests run one after the other. Run on a bf16
/// checkpoint (CPU kernels and the host decode path, which runs on the shared thread pool) and
/// an f32 one (burn tensors).
#[test]
fn four_threads_on_one_model_match_serial_runs() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Model>();
    for name in ["llama-bf16", "qwen2-f32"] {
        let (dir, exp) = fixture(name);
        let model = Model::load(&dir, &Device::cpu()).unwrap();
        let reqs = requests(&exp);
        let serial: Vec<Vec<u32>> = reqs
            .iter()
            .map(|(ids, cfg)| gen_ids(&mut model.session(), ids, cfg))
            .collect();
        assert_eq!(serial[0], exp.greedy_ids[..12], "{name}: greedy");
        let threads: Vec<_> = reqs
            .into_iter()
            .map(|(ids, cfg)| {
                let model = model.clone();
                std::thread::spawn(move || gen_ids(&mut model.session(), &ids, &cfg))
            })
            .collect();
        for (i, (t, want)) in threads.into_iter().zip(&serial).enumerate() {
            assert_eq!(&t.join().unwrap(), want, "{name}: request {i}");
        }
    }
}

/// A generator dropped after a few tokens leaves the session holding exactly those tokens;
/// generating again continues the sequence as if it had never stopped.
#[test]
fn dropping_a_generator_mid_stream_leaves_the_session_usable() {
    for name in ["llama-bf16", "llama-f32"] {
        let (dir, exp) = fixture(name);
        let model = Model::load(&dir, &Device::cpu()).unwrap();
        let cfg = GenerationConfig::default()
            .max_new_tokens(16)
            .ignore_eos(true);
        let mut s = model.session();
        let first: Vec<u32> = s
            .generate_ids(&exp.prompt_ids, &cfg)
            .unwrap()
            .take(5)
            .map(|t| t.unwrap().id)
            .collect();
        assert_eq!(first, exp.greedy_ids[..5], "{name}");
        assert_eq!(s.tokens().len(), exp.prompt_ids.len() + 5, "{name}");
        let rest = gen_ids(&mut s, &[], &cfg.clone().max_new_tokens(11));
        assert_eq!(rest, exp.greedy_ids[5..16], "{name}: continued");
    }
}

/// A cancel token set from another thread ends the generation before its next token, with
/// `FinishReason::Cancelled`; the session keeps the tokens so far and carries on.
#[test]
fn cancel_token_stops_a_generation_from_another_thread() {
    let (dir, exp) = fixture("llama-bf16");
    let model = Model::load(&dir, &Device::cpu()).unwrap();
    let token = CancelToken::new();
    let cfg = GenerationConfig::default()
        .max_new_tokens(400)
        .ignore_eos(true)
        .cancel_token(token.clone());
    let (got_one, cancel_now) = (mpsc::channel::<()>(), mpsc::channel::<()>());
    let canceller = std::thread::spawn(move || {
        got_one.1.recv().unwrap();
        token.cancel();
        cancel_now.0.send(()).unwrap();
    });
    let mut s = model.session();
    let mut g = s.generate_ids(&exp.prompt_ids, &cfg).unwrap();
    let mut ids = Vec::new();
    for (i, t) in g.by_ref().enumerate() {
        ids.push(t.unwrap().id);
        if i == 2 {
            // Let the other thread cancel, and wait until it has.
            got_one.0.send(()).unwrap();
            cancel_now.1.recv().unwrap();
        }
    }
    canceller.join().unwrap();
    assert_eq!(g.finish_reason(), Some(FinishReason::Cancelled));
    drop(g);
    assert_eq!(ids, exp.greedy_ids[..3]);
    let rest = gen_ids(
        &mut s,
        &[],
        &GenerationConfig::default()
            .max_new_tokens(4)
            .ignore_eos(true),
    );
    assert_eq!(rest, exp.greedy_ids[3..7]);
}

/// NaN scores, from the model's own weights or from a caller's processor, are a typed error
/// naming the position, not a silently chosen token.
#[test]
fn nan_scores_are_an_error() {
    let (dir, exp) = fixture("llama-f32");
    let t = TempDir::copy_of(&dir, "nan-weights");
    rewrite_weights(t.path(), |w| {
        let norm = w.get_mut("model.norm.weight").unwrap();
        norm.1[0] = f32::NAN;
    });
    let model = Model::load(t.path(), &Device::cpu()).unwrap();
    let cfg = GenerationConfig::default().max_new_tokens(3);
    let n = exp.prompt_ids.len();
    for cfg in [cfg.clone(), cfg.temperature(0.7)] {
        let err = model
            .session()
            .generate_ids(&exp.prompt_ids, &cfg)
            .unwrap()
            .next()
            .unwrap()
            .unwrap_err();
        assert!(
            matches!(err, Error::NonFiniteScores { position } if position == n),
            "{err}"
        );
        assert!(err.to_string().contains("NaN"), "{err}");
    }
    let (dir, _) = fixture("llama-bf16");
    let model = Model::load(&dir, &Device::cpu()).unwrap();
    let poison = |logits: &mut [f32], _: &[u32]| logits[7] = f32::NAN;
    let cfg = GenerationConfig::default().processor(poison);
    let mut s = model.session();
    let mut g = s.generate_ids(&exp.prompt_ids[..4], &cfg).unwrap();
    assert!(matches!(
        g.next().unwrap(),
        Err(Error::NonFiniteScores { position: 4 })
    ));
    assert!(g.next().is_none(), "an error ends the stream");
}

/// A batch checks the cancel token before each step: a token cancelled by a processor (as a
/// caller's thread would, mid-generation) ends every unfinished row with `Cancelled`, keeping
/// the tokens already taken.
#[test]
fn cancel_token_ends_a_batch() {
    let (dir, exp) = fixture("llama-bf16");
    let model = Model::load(&dir, &Device::cpu()).unwrap();
    let token = CancelToken::new();
    let t = token.clone();
    // Runs once per row and step, before the pick: cancels during the third step.
    let calls = std::sync::atomic::AtomicUsize::new(0);
    let cancel_on_third_step = move |_: &mut [f32], _: &[u32]| {
        if calls.fetch_add(1, std::sync::atomic::Ordering::Relaxed) == 4 {
            t.cancel();
        }
    };
    let cfg = GenerationConfig::default()
        .max_new_tokens(10)
        .ignore_eos(true)
        .processor(cancel_on_third_step)
        .cancel_token(token);
    let prompts = [exp.prompt_ids.clone(), exp.prompt_ids[..5].to_vec()];
    let out = model.generate_batch_ids(&prompts, &cfg).unwrap();
    for row in &out {
        assert_eq!(row.finish_reason, FinishReason::Cancelled);
        assert_eq!(row.tokens.len(), 3);
    }
    assert_eq!(out[0].tokens, exp.greedy_ids[..3]);
}
