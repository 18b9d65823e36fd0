//! config.json: parsed alone, then as the config of a valid one-layer BERT checkpoint, whose
//! every layer, embedding and hidden state is then loaded.
#![no_main]
mod common;
use libfuzzer_sys::fuzz_target;
use lipattn::models::{Model, ModelConfig};

fuzz_target!(|data: &[u8]| {
    let dir = common::scratch().join("model");
    let weights = dir.join("model.safetensors");
    if !weights.exists() {
        std::fs::create_dir_all(&dir).unwrap();
        let t = common::tiny_bert();
        let refs: Vec<(&str, Vec<usize>)> =
            t.iter().map(|(n, s)| (n.as_str(), s.clone())).collect();
        std::fs::write(&weights, common::safetensors(&refs)).unwrap();
    }
    let p = dir.join("config.json");
    std::fs::write(&p, data).unwrap();
    if let Err(e) = ModelConfig::from_file(&p) {
        common::message(e);
    }
    let m = match Model::open(&dir) {
        Ok(m) => m,
        Err(e) => return common::message(e),
    };
    for l in 0..m.num_layers().min(2) {
        let _ = m.layer(l).map_err(common::message);
    }
    let _ = m
        .hidden_states_upto(&[2, 5, 3], m.num_layers().min(1))
        .map_err(common::message);
});
