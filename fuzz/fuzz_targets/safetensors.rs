//! One safetensors file: opened, and every tensor read as its header says.
#![no_main]
mod common;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let p = common::file("x.safetensors", data);
    match lipattn::models::TensorStore::open_file(&p) {
        Ok(store) => common::read_all(&store),
        Err(e) => common::message(e),
    }
});
