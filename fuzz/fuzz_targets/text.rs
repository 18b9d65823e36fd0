//! Text, in memory and as a file (any bytes: invalid UTF-8 too), through a WordPiece tokenizer
//! in BERT's format: the token limit gives the whole text's tokens truncated, and the file
//! reader agrees with the in-memory one.
#![no_main]
mod common;
use libfuzzer_sys::fuzz_target;
use lipattn::models::TextTokenizer;
use std::sync::OnceLock;

fn tokenizer() -> &'static TextTokenizer {
    static TOK: OnceLock<TextTokenizer> = OnceLock::new();
    TOK.get_or_init(|| {
        let words = [
            "[PAD]", "[UNK]", "[CLS]", "[SEP]", "the", "a", "##s", "word", ",", ".", "日",
        ];
        let vocab: serde_json::Map<String, serde_json::Value> = words
            .iter()
            .enumerate()
            .map(|(i, w)| (w.to_string(), i.into()))
            .collect();
        let json = serde_json::json!({
            "version": "1.0", "truncation": null, "padding": null, "added_tokens": [],
            "normalizer": {"type": "BertNormalizer", "clean_text": true,
                           "handle_chinese_chars": true, "strip_accents": null, "lowercase": true},
            "pre_tokenizer": {"type": "BertPreTokenizer"},
            "post_processor": {"type": "BertProcessing", "sep": ["[SEP]", 3], "cls": ["[CLS]", 2]},
            "decoder": null,
            "model": {"type": "WordPiece", "unk_token": "[UNK]", "continuing_subword_prefix": "##",
                      "max_input_chars_per_word": 100, "vocab": vocab}
        });
        let p = common::file("text-tokenizer.json", &serde_json::to_vec(&json).unwrap());
        TextTokenizer::from_file(&p).expect("a valid tokenizer")
    })
}

fuzz_target!(|data: &[u8]| {
    let tok = tokenizer();
    let p = common::file("text.txt", data);
    for m in [3, 7] {
        let from_file = tok.encode_file(&p, Some(m));
        let Ok(text) = std::str::from_utf8(data) else {
            if let Ok(ids) = from_file {
                assert!(ids.len() <= m);
            }
            continue;
        };
        match (tok.encode(text, Some(m)), from_file) {
            (Ok(a), Ok(b)) => {
                assert_eq!(a, b);
                let (pre, body, suf) = tok.encode_parts(text).unwrap();
                let keep = (m - pre.len() - suf.len()).min(body.len());
                assert_eq!(a, [&pre[..], &body[..keep], &suf[..]].concat());
            }
            (Err(a), Err(b)) => {
                common::message(a);
                common::message(b);
            }
            (a, b) => panic!("text {a:?} but file {b:?}"),
        }
    }
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = tok.windows(text, 5, 3).map_err(common::message);
    }
});
