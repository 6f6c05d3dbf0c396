//! A weights folder whose `model.safetensors` (first byte even) or
//! `model.safetensors.index.json` plus one shard (first byte odd) is the input: opening it and
//! reading every tensor it names must end in Ok or a typed error.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let dir = std::env::temp_dir().join(format!("kiln-fuzz-st-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    if mode % 2 == 0 {
        std::fs::write(dir.join("model.safetensors"), rest).unwrap();
    } else {
        std::fs::write(dir.join("model.safetensors.index.json"), rest).unwrap();
        std::fs::write(
            dir.join("model-00001-of-00001.safetensors"),
            b"\x02\0\0\0\0\0\0\0{}",
        )
        .unwrap();
    }
    if let Ok(mut store) = kiln::loading::WeightStore::open(&dir) {
        for name in ["a", "model.embed_tokens.weight", "lm_head.weight"] {
            if let Some(shape) = store.shape(name).map(<[usize]>::to_vec) {
                let _ = store.read_f32(name, &shape);
            }
        }
        let _ = store.finish();
    }
});
