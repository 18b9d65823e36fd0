//! tokenizer.json: loaded, then used on a few texts with and without a token limit.
#![no_main]
mod common;
use libfuzzer_sys::fuzz_target;
use lipattn::models::TextTokenizer;

fuzz_target!(|data: &[u8]| {
    let p = common::file("tokenizer.json", data);
    let tok = match TextTokenizer::from_file(&p) {
        Ok(t) => t,
        Err(e) => return common::message(e),
    };
    for text in [
        "Hello world, the words. 3.1!",
        "[MASK] <|endoftext|> é\u{301} 日本",
    ] {
        let _ = tok.encode(text, None).map_err(common::message);
        for m in [1, 3, 8] {
            if let Ok(ids) = tok.encode(text, Some(m)) {
                assert!(ids.len() <= m);
            }
        }
        let _ = tok.windows(text, 4, 2).map_err(common::message);
    }
});
