//! model.safetensors.index.json over two valid shards: the index is the fuzzed input.
#![no_main]
mod common;
use libfuzzer_sys::fuzz_target;
use lipattn::models::TensorStore;

fuzz_target!(|data: &[u8]| {
    let dir = common::scratch().join("sharded");
    if !dir.exists() {
        std::fs::create_dir_all(&dir).unwrap();
        let a = common::safetensors(&[("a.weight", vec![2, 3]), ("a.bias", vec![3])]);
        let b = common::safetensors(&[("b.weight", vec![3, 2])]);
        std::fs::write(dir.join("model-00001-of-00002.safetensors"), a).unwrap();
        std::fs::write(dir.join("model-00002-of-00002.safetensors"), b).unwrap();
    }
    let p = dir.join("model.safetensors.index.json");
    std::fs::write(&p, data).unwrap();
    match TensorStore::open_index(&p) {
        Ok(store) => common::read_all(&store),
        Err(e) => common::message(e),
    }
});
