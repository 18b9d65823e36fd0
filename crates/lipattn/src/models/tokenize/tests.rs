//! Tokenising a prefix gives the whole text's first tokens: every safe cut of varied texts is
//! checked against the whole text, on MiniLM's WordPiece and on a byte-level BPE like GPT-2's.

use super::*;
use serde_json::json;
use std::collections::HashMap;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;

/// A fresh directory per call: tests run in parallel threads of one process, and two of them
/// building the same tokenizer must not share (and delete) one another's files.
fn scratch(name: &str) -> PathBuf {
    static CALLS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let k = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let d = std::env::temp_dir().join(format!("lipattn-tok-{name}-{}-{k}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Texts with words, punctuation, digits, runs of spaces, tabs, non-ASCII letters and marks,
/// CJK, added tokens, and long runs without whitespace.
fn texts() -> Vec<String> {
    let words = [
        "the",
        "licence",
        "don't",
        "it's",
        "x_y",
        "3.14",
        "naïve",
        "über",
        "日本語",
        "[MASK]",
        "<|endoftext|>",
        "a,b",
        "(c)",
        "--",
        "e\u{301}",
        "\u{3000}",
        "x\u{3000}  y",
        "end.",
        "Hello",
        "WORLD!",
        "tab\there",
        "new\nline",
        "  ",
        "o'clock",
        "1,000",
        "क\u{93f}.",
    ];
    let mut state = 12345u64;
    let mut next = || {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (state >> 33) as usize
    };
    let mut out = vec![
        "a".repeat(300),
        "abc.def,ghi;jkl".repeat(20),
        "word".repeat(50) + " tail",
        "no-whitespace-at-all_but(punctuation)and,digits123".repeat(5),
    ];
    for _ in 0..12 {
        let mut t = String::new();
        for _ in 0..60 {
            t.push_str(words[next() % words.len()]);
            t.push_str([" ", "", "  ", ".", "\n"][next() % 5]);
        }
        out.push(t);
    }
    out
}

fn check(tok: &TextTokenizer) {
    let mut cuts_seen = 0;
    for text in texts() {
        let whole = tok.body(&text).unwrap();
        let mut at = 0;
        while let Some(cut) = tok.cuts.next(&text, at) {
            let head = tok.body(&text[..cut]).unwrap();
            assert_eq!(
                head[..],
                whole[..head.len()],
                "cut at {cut} of {text:?} changes the tokens"
            );
            cuts_seen += 1;
            at = cut + 1;
        }
        let least = if tok.body("a").unwrap() == tok.encode("a", None).unwrap() {
            1
        } else {
            3
        };
        for m in [1, 2, 3, 7, 20, 64].into_iter().filter(|&m| m >= least) {
            let want = tok.encode_whole(&text, Some(m)).unwrap();
            for from in [0, 1, 5, 17, 60, 200] {
                let head = tok.head(&text, m, from, true).unwrap().unwrap();
                assert_eq!(
                    tok.encode_whole(head, Some(m)).unwrap(),
                    want,
                    "{text:?} m={m}"
                );
            }
            assert_eq!(tok.encode(&text, Some(m)).unwrap(), want);
        }
    }
    assert!(cuts_seen > 500, "only {cuts_seen} cuts exercised");
}

#[test]
fn minilm_prefixes_give_the_first_tokens() {
    let Some(dir) = std::env::var_os("LIPATTN_MINILM") else {
        assert!(
            std::env::var_os("CI").is_none(),
            "LIPATTN_MINILM must be set under CI"
        );
        eprintln!("skipping: LIPATTN_MINILM not set (scripts/test.sh installs the checkpoint)");
        return;
    };
    let tok = TextTokenizer::from_dir(Path::new(&dir)).unwrap();
    assert_eq!(tok.cuts.rule, cuts::Rule::WordEnds);
    // [CLS] and [SEP] leave no room for text below 3.
    let e = tok.encode("some text", Some(2)).unwrap_err().to_string();
    assert!(e.contains("max_tokens") && e.contains('3'), "{e}");
    check(&tok);
}

/// A byte-level BPE tokenizer in GPT-2's format, its merges learnt here from the test texts
/// (the most frequent adjacent pair, repeatedly), so that merges span many characters.
fn byte_level_bpe() -> TextTokenizer {
    let mut alphabet: Vec<char> = ByteLevel::alphabet().into_iter().collect();
    alphabet.sort();
    let mut vocab: HashMap<String, usize> = alphabet
        .iter()
        .enumerate()
        .map(|(i, c)| (c.to_string(), i))
        .collect();
    let map = |w: &str| -> Vec<String> {
        w.bytes()
            .map(|b| alphabet_char(b).to_string())
            .collect::<Vec<_>>()
    };
    let corpus = texts().join(" ");
    let mut words: Vec<Vec<String>> = corpus.split(' ').map(|w| map(&format!(" {w}"))).collect();
    let mut merges = Vec::new();
    for _ in 0..200 {
        let mut count: HashMap<(String, String), usize> = HashMap::new();
        for w in &words {
            for p in w.windows(2) {
                *count.entry((p[0].clone(), p[1].clone())).or_default() += 1;
            }
        }
        let Some(((a, b), _)) = count
            .into_iter()
            .max_by(|x, y| x.1.cmp(&y.1).then(y.0.cmp(&x.0)))
        else {
            break;
        };
        let ab = format!("{a}{b}");
        let n = vocab.len();
        vocab.entry(ab.clone()).or_insert(n);
        merges.push(format!("{a} {b}"));
        for w in &mut words {
            let mut i = 0;
            while i + 1 < w.len() {
                if w[i] == a && w[i + 1] == b {
                    w[i] = ab.clone();
                    w.remove(i + 1);
                }
                i += 1;
            }
        }
    }
    let eot = vocab.len();
    let tok = json!({
        "version": "1.0", "truncation": null, "padding": null,
        "added_tokens": [{"id": eot, "content": "<|endoftext|>", "single_word": false,
                          "lstrip": false, "rstrip": false, "normalized": false, "special": true}],
        "normalizer": null,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true,
                          "use_regex": true},
        "post_processor": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": false,
                           "use_regex": true},
        "decoder": null,
        "model": {"type": "BPE", "dropout": null, "unk_token": null,
                  "continuing_subword_prefix": "", "end_of_word_suffix": "",
                  "fuse_unk": false, "byte_fallback": false, "vocab": vocab, "merges": merges}
    });
    let dir = scratch("bpe");
    std::fs::write(dir.join(TOKENIZER_FILE), tok.to_string()).unwrap();
    let t = TextTokenizer::from_dir(&dir).unwrap();
    std::fs::remove_dir_all(dir).ok();
    t
}

/// GPT-2's map of bytes to printable characters.
fn alphabet_char(b: u8) -> char {
    let printable = |b: u8| (b'!'..=b'~').contains(&b) || (0xA1..=0xAC).contains(&b) || b >= 0xAE;
    if printable(b) {
        return char::from(b);
    }
    let k = (0..b).filter(|&c| !printable(c)).count() as u32;
    char::from_u32(256 + k).unwrap()
}

#[test]
fn byte_level_bpe_prefixes_give_the_first_tokens() {
    let tok = byte_level_bpe();
    assert_eq!(tok.cuts.rule, cuts::Rule::WordEnds);
    // The merges are real: whole words become single tokens.
    assert!(tok.body(" the").unwrap().len() == 1);
    check(&tok);
}

#[test]
fn files_are_read_only_as_far_as_needed_and_match_the_whole_text() {
    let tok = byte_level_bpe();
    let dir = scratch("file");
    let path = dir.join("t.txt");
    let text = texts().join(" ").repeat(40);
    std::fs::write(&path, &text).unwrap();
    for m in [1, 5, 300, 100_000] {
        assert_eq!(
            tok.encode_file(&path, Some(m)).unwrap(),
            tok.encode_whole(&text, Some(m)).unwrap()
        );
    }
    assert_eq!(
        tok.encode_file(&path, None).unwrap(),
        tok.encode(&text, None).unwrap()
    );
    std::fs::write(&path, b"ok \xff\xfe").unwrap();
    let e = tok.encode_file(&path, Some(1)).unwrap_err().to_string();
    assert!(e.contains("t.txt") && e.contains("UTF-8"), "{e}");
    let e = tok.encode_file(&dir.join("nope.txt"), Some(1)).unwrap_err();
    assert!(e.to_string().contains("nope.txt"), "{e}");
    std::fs::remove_dir_all(dir).ok();
}
