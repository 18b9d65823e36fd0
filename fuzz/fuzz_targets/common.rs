//! What the targets share: a scratch directory per process (the parsers read files), a memory
//! budget so that sizes the library checks are refused rather than allocated, and the small
//! valid files some targets need beside the fuzzed one.
#![allow(dead_code)]

use lipattn::models::TensorStore;
use std::path::PathBuf;
use std::sync::Once;

/// This process's scratch directory, with the budget set on first use.
pub fn scratch() -> PathBuf {
    static ONCE: Once = Once::new();
    let dir = std::env::temp_dir().join(format!("lipattn-fuzz-{}", std::process::id()));
    ONCE.call_once(|| {
        std::fs::create_dir_all(&dir).expect("scratch directory");
        lipattn::budget::set_max_memory(Some(256 << 20));
    });
    dir
}

/// Writes `bytes` as `name` in the scratch directory and returns its path.
pub fn file(name: &str, bytes: &[u8]) -> PathBuf {
    let p = scratch().join(name);
    std::fs::write(&p, bytes).expect("scratch file");
    p
}

/// A safetensors file of F32 tensors (name, shape), values 0.1 i.
pub fn safetensors(tensors: &[(&str, Vec<usize>)]) -> Vec<u8> {
    let mut header = serde_json::Map::new();
    let mut data = vec![];
    for (name, shape) in tensors {
        let n: usize = shape.iter().product();
        let start = data.len();
        for i in 0..n {
            data.extend_from_slice(&(0.1 * i as f32).to_le_bytes());
        }
        header.insert(
            name.to_string(),
            serde_json::json!({"dtype": "F32", "shape": shape, "data_offsets": [start, data.len()]}),
        );
    }
    let header = serde_json::to_vec(&header).expect("header");
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&header);
    out.extend_from_slice(&data);
    out
}

/// A one-layer BERT-layout checkpoint of width 4 with 2 heads (tensors only).
pub fn tiny_bert() -> Vec<(String, Vec<usize>)> {
    let (d, f) = (4, 8);
    let mut t: Vec<(String, Vec<usize>)> = vec![
        ("embeddings.word_embeddings.weight".into(), vec![10, d]),
        ("embeddings.position_embeddings.weight".into(), vec![8, d]),
        ("embeddings.token_type_embeddings.weight".into(), vec![2, d]),
        ("embeddings.LayerNorm.weight".into(), vec![d]),
        ("embeddings.LayerNorm.bias".into(), vec![d]),
    ];
    let p = "encoder.layer.0.";
    for m in [
        "attention.self.query",
        "attention.self.key",
        "attention.self.value",
        "attention.output.dense",
    ] {
        t.push((format!("{p}{m}.weight"), vec![d, d]));
        t.push((format!("{p}{m}.bias"), vec![d]));
    }
    for ln in ["attention.output.LayerNorm", "output.LayerNorm"] {
        t.push((format!("{p}{ln}.weight"), vec![d]));
        t.push((format!("{p}{ln}.bias"), vec![d]));
    }
    t.push((format!("{p}intermediate.dense.weight"), vec![f, d]));
    t.push((format!("{p}intermediate.dense.bias"), vec![f]));
    t.push((format!("{p}output.dense.weight"), vec![d, f]));
    t.push((format!("{p}output.dense.bias"), vec![d]));
    t
}

/// Reads every tensor of a store as its header says (what a model load does, in any order).
pub fn read_all(store: &TensorStore) {
    for name in store.names() {
        if let Ok(shape) = store.shape(name) {
            if let Ok(v) = store.read_f64(name, &shape) {
                assert_eq!(
                    Some(v.len()),
                    shape.iter().try_fold(1usize, |a, &s| a.checked_mul(s))
                );
            }
            let _ = match shape.as_slice() {
                [a, b] => store.matrix(name, *a, *b).map(drop),
                [a] => store.vector(name, *a).map(drop),
                _ => Ok(()),
            };
        }
    }
}

/// An error's message is never empty (what the CLI prints after `lipattn: error:`).
pub fn message(e: lipattn::Error) {
    assert!(
        !e.to_string().trim().is_empty(),
        "an error without a message: {e:?}"
    );
}
