//! Deterministic mutation fuzzing of every parser of files and text (#16 item 8): `.npy`,
//! safetensors (alone and inside a model directory), `config.json`, the sharded index,
//! `tokenizer.json`, text (whole, under a token limit, read from a file, cut into windows) and
//! the `--max-memory` size strings.
//!
//! Each class starts from valid inputs written here and applies seeded mutations: bit flips,
//! byte insertions, deletions and duplications, truncation, splicing with another seed, boundary
//! integers (0, -1, 2^31, 2^32, 2^53 + 1, 2^63, 2^64 - 1, 2^64) and NaN, inf and 1e308 in
//! numeric fields, JSON nodes replaced, deleted, renamed or nested past the parser's depth
//! limit, and invalid UTF-8. Every case must end in `Ok` with a consistent result (shapes that
//! match the data, finite weights and hidden states, token counts within the limit and equal to
//! the whole text's tokens truncated) or in `Err` with a message; a panic, a case slower than
//! `SLOW_CASE`, or an allocation beyond the address-space cap fails the test. The memory budget is
//! set to 256 MiB, so a size the library checks is refused rather than allocated.
//!
//! The cases are the same on every run (seed `SEED`). `LIPATTN_FUZZ_SCALE=k` runs k times as
//! many cases per class and `LIPATTN_FUZZ_SEED` changes the seed, for longer local runs; the
//! per-class counts are printed with `--nocapture` (docs/reliability.md#inputs-tried-by-class).
//! A failing input is saved under `CARGO_TARGET_TMPDIR/fuzz-failures/` for a regression test.

mod common;

use lipattn::analysis::TextIds;
use lipattn::linalg::SplitMix;
use lipattn::models::{
    load_attention_layer_source, load_bert_layer, tokenize::windows_of, Model, ModelConfig,
    TensorStore, TextTokenizer,
};
use serde_json::{json, Map, Value};
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Once};
use std::time::{Duration, Instant};

const SEED: u64 = 0x1_6f22_2026;

/// A case slower than this is a failure (the slowest valid cases take milliseconds).
const SLOW_CASE: Duration = Duration::from_secs(10);
/// A case still running after this is taken for a hang: the watchdog names it and exits, so
/// that CI fails instead of waiting for its own timeout.
const HANG: Duration = Duration::from_secs(120);
/// The address-space cap of the test process: far above what the seeds need (a few MB), far
/// below what a size trusted from a mutated header would ask for.
const ADDRESS_SPACE: u64 = 8 << 30;
/// A single allocation above this fails its case even when it succeeds: the memory budget is as
/// large, and an allocation sized by an untrusted header (`vec![0; header_len]` is calloc, which
/// Linux grants lazily) passes the address-space cap unnoticed up to 8 GiB.
const ALLOCATION_CAP: usize = 256 << 20;

/// The system allocator, noting on each thread the largest allocation above `ALLOCATION_CAP`.
struct Watched;

thread_local! {
    static LARGEST: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

fn note(size: usize) {
    if size > ALLOCATION_CAP {
        // try_with: an allocation during the thread's teardown is not a case's.
        let _ = LARGEST.try_with(|l| l.set(l.get().max(size)));
    }
}

// SAFETY: every call is forwarded unchanged to the system allocator; `note` only reads and writes
// a thread-local Cell, which allocates nothing.
unsafe impl std::alloc::GlobalAlloc for Watched {
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        note(layout.size());
        std::alloc::System.alloc(layout)
    }
    unsafe fn alloc_zeroed(&self, layout: std::alloc::Layout) -> *mut u8 {
        note(layout.size());
        std::alloc::System.alloc_zeroed(layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: std::alloc::Layout, new: usize) -> *mut u8 {
        note(new);
        std::alloc::System.realloc(ptr, layout, new)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: std::alloc::Layout) {
        std::alloc::System.dealloc(ptr, layout)
    }
}

#[global_allocator]
static ALLOCATOR: Watched = Watched;

// ------------------------------------------------------------------------------------------
// The harness: seeded choices, panics caught with their location, the watchdog, the tally.

struct Rng(SplitMix);

impl Rng {
    fn new(class: &str) -> Self {
        let seed = std::env::var("LIPATTN_FUZZ_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(SEED);
        // Each class has its own stream, so adding cases to one leaves the others unchanged.
        let h = class.bytes().fold(seed, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
        });
        Self(SplitMix::new(h))
    }

    fn below(&mut self, n: usize) -> usize {
        (self.0.next_u64() % n.max(1) as u64) as usize
    }

    fn chance(&mut self, p: f64) -> bool {
        self.0.uniform() < p
    }

    fn pick<'a, T>(&mut self, xs: &'a [T]) -> &'a T {
        &xs[self.below(xs.len())]
    }

    fn byte(&mut self) -> u8 {
        self.0.next_u64() as u8
    }
}

/// How many times the default number of cases to run (`LIPATTN_FUZZ_SCALE`).
fn scale() -> usize {
    std::env::var("LIPATTN_FUZZ_SCALE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1)
        .max(1)
}

thread_local! {
    /// The panic of the running case; None outside a case, where panics (the test's own
    /// assertions) go to the default hook.
    static PANIC: RefCell<Option<Option<String>>> = const { RefCell::new(None) };
}

/// Once per process: the panic hook records message and location for the case that panicked
/// (catch_unwind's payload has no location), the budget is set low and the address space capped.
fn setup() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if PANIC.with(|p| p.borrow().is_none()) {
                return default(info);
            }
            let msg = match info.payload().downcast_ref::<&str>() {
                Some(s) => s.to_string(),
                None => info
                    .payload()
                    .downcast_ref::<String>()
                    .cloned()
                    .unwrap_or_default(),
            };
            let at = info
                .location()
                .map(|l| format!(" at {}:{}", l.file(), l.line()))
                .unwrap_or_default();
            PANIC.with(|p| *p.borrow_mut() = Some(Some(format!("{msg}{at}"))));
        }));
        lipattn::budget::set_max_memory(Some(256 << 20));
        let cap = libc::rlimit {
            rlim_cur: ADDRESS_SPACE,
            rlim_max: libc::RLIM_INFINITY,
        };
        // SAFETY: setrlimit reads the struct it is given and nothing else.
        let rc = unsafe { libc::setrlimit(libc::RLIMIT_AS, &cap) };
        assert_eq!(rc, 0, "setrlimit(RLIMIT_AS)");
    });
}

/// A file and its content, saved when a case fails.
type Input = (String, Vec<u8>);

struct Fuzz {
    class: &'static str,
    dir: PathBuf,
    cases: usize,
    ok: usize,
    errors: usize,
    failures: Vec<String>,
    started: Instant,
    /// Milliseconds since `started` at which the running case began (0: none running), its
    /// name and inputs, for the watchdog.
    running: Arc<Running>,
}

impl Fuzz {
    fn new(class: &'static str) -> Self {
        setup();
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("fuzz-{class}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        // The inputs kept from an earlier run's failures of this class, so that what is there
        // after this run is this run's.
        if let Ok(kept) = std::fs::read_dir(keep_dir("")) {
            for e in kept.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if name.strip_prefix(class).is_some_and(|r| r.starts_with('-')) {
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
        }
        let running: Arc<Running> =
            Arc::new((AtomicU64::new(0), Mutex::new((String::new(), vec![]))));
        let started = Instant::now();
        let watched = Arc::downgrade(&running);
        std::thread::spawn(move || loop {
            std::thread::sleep(Duration::from_secs(1));
            let Some(r) = watched.upgrade() else { return };
            let since = r.0.load(Ordering::Relaxed);
            let now = started.elapsed().as_millis() as u64;
            if since > 0 && now.saturating_sub(since) > HANG.as_millis() as u64 {
                let case = r.1.lock().unwrap();
                let dir = keep_dir(&format!("{class}-hang"));
                keep(&dir, &case.1);
                eprintln!(
                    "fuzz {class}: {} still running after {HANG:?}: a hang (inputs in {})",
                    case.0,
                    dir.display()
                );
                std::process::exit(3);
            }
        });
        Self {
            class,
            dir,
            cases: 0,
            ok: 0,
            errors: 0,
            failures: vec![],
            started,
            running,
        }
    }

    /// Runs one case: `f` returns `Outcome::Ok` for a consistent result, `Outcome::Err` for an
    /// error of the library (which must carry a message) and `Outcome::Bad` for an inconsistent
    /// result. A panic (caught here or inside the library) or a case slower than `SLOW_CASE`
    /// fails it too; `inputs` are saved when it fails.
    fn case(&mut self, name: String, inputs: &[Input], f: impl FnOnce() -> Outcome) {
        self.cases += 1;
        *self.running.1.lock().unwrap() = (name.clone(), inputs.to_vec());
        let t0 = Instant::now();
        self.running.0.store(
            self.started.elapsed().as_millis() as u64 + 1,
            Ordering::Relaxed,
        );
        PANIC.with(|p| *p.borrow_mut() = Some(None));
        LARGEST.with(|l| l.set(0));
        let result = catch_unwind(AssertUnwindSafe(f));
        let panic = PANIC.with(|p| p.borrow_mut().take()).flatten();
        let largest = LARGEST.with(|l| l.get());
        self.running.0.store(0, Ordering::Relaxed);
        let took = t0.elapsed();
        let problem = match &result {
            Err(_) => Some(format!("panicked: {}", panic.unwrap_or_default())),
            Ok(_) if largest > 0 => Some(format!(
                "allocated {largest} bytes at once, above the {ALLOCATION_CAP} a case may"
            )),
            // A panic the library caught is still printed by the panic hook (a CLI user sees
            // "panicked" on stderr), so it is a failure too.
            Ok(_) if panic.is_some() => Some(format!(
                "panicked (caught inside the library): {}",
                panic.clone().unwrap_or_default()
            )),
            Ok(Outcome::Ok) => None,
            Ok(Outcome::Err(m)) if m.trim().is_empty() => Some("an error without a message".into()),
            Ok(Outcome::Err(m)) if m.contains("panicked") => {
                Some(format!("error names a panic: {m}"))
            }
            Ok(Outcome::Err(_)) => None,
            Ok(Outcome::Bad(why)) => Some(why.clone()),
        };
        match (&problem, took > SLOW_CASE) {
            (None, false) => {}
            (Some(p), _) => self.fail(&name, p, inputs),
            (None, true) => self.fail(&name, &format!("took {took:?}"), inputs),
        }
        match result {
            Ok(Outcome::Ok) => self.ok += 1,
            Ok(Outcome::Err(_)) => self.errors += 1,
            _ => {}
        }
    }

    fn fail(&mut self, name: &str, problem: &str, inputs: &[Input]) {
        let dir = keep_dir(&format!("{}-{}", self.class, self.failures.len()));
        keep(&dir, inputs);
        self.failures
            .push(format!("{name}: {problem} (inputs in {})", dir.display()));
    }

    /// Prints the tally; fails the test on any failure or when fewer than `at_least` cases ran.
    fn finish(self, at_least: usize) {
        eprintln!(
            "fuzz {}: {} cases ({} ok, {} clean errors) in {:.1} s",
            self.class,
            self.cases,
            self.ok,
            self.errors,
            self.started.elapsed().as_secs_f64()
        );
        assert!(
            self.cases >= at_least,
            "{}: only {} cases",
            self.class,
            self.cases
        );
        assert!(
            self.failures.is_empty(),
            "fuzz {}: {} failing cases:\n{}",
            self.class,
            self.failures.len(),
            self.failures
                .iter()
                .take(20)
                .cloned()
                .collect::<Vec<_>>()
                .join("\n")
        );
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

type Running = (AtomicU64, Mutex<(String, Vec<Input>)>);

/// Where the inputs of a failing case are kept.
fn keep_dir(name: &str) -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("fuzz-failures")
        .join(name)
}

fn keep(dir: &Path, inputs: &[Input]) {
    let _ = std::fs::create_dir_all(dir);
    for (file, bytes) in inputs {
        let _ = std::fs::write(dir.join(file), bytes);
    }
}

enum Outcome {
    Ok,
    Err(String),
    Bad(String),
}

/// `Err(e)` of a library call as an outcome; `?` on it ends a case as a clean error.
fn err(e: lipattn::Error) -> Outcome {
    Outcome::Err(e.to_string())
}

/// Runs the checks of one case: `Ok(())` for a consistent result, `Err(outcome)` otherwise.
fn run(f: impl FnOnce() -> Result<(), Outcome>) -> Outcome {
    match f() {
        Ok(()) => Outcome::Ok,
        Err(o) => o,
    }
}

fn bad(why: String) -> Outcome {
    Outcome::Bad(why)
}

// ------------------------------------------------------------------------------------------
// Mutations.

/// Integers at the edges of the integer types (written into numeric fields as text).
const INTS: &[&str] = &[
    "0",
    "-1",
    "1",
    "2",
    "3",
    "7",
    "255",
    "65535",
    "65536",
    "2147483647",
    "2147483648",
    "4294967295",
    "4294967296",
    "9007199254740993",
    "9223372036854775807",
    "9223372036854775808",
    "18446744073709551615",
    "18446744073709551616",
    "-9223372036854775809",
    "340282366920938463463374607431768211456",
];

/// Floats at the edges, and the non-numbers some JSON writers emit.
const FLOATS: &[&str] = &[
    "0.0",
    "-0.0",
    "0.5",
    "-0.5",
    "1e-12",
    "1e-308",
    "5e-324",
    "1e308",
    "-1e308",
    "1.7976931348623157e308",
    "1e309",
    "-1e999",
    "NaN",
    "Infinity",
    "-Infinity",
    "nan",
    "inf",
    "3.4028235e38",
    "1e",
    "--1",
];

/// Strings swapped into JSON: names the parsers look for, paths that escape, odd characters.
const STRINGS: &[&str] = &[
    "",
    "bert",
    "gpt2",
    "llama",
    "gelu",
    "gelu_new",
    "relu",
    "absolute",
    "relative_key",
    "F32",
    "F16",
    "BF16",
    "F64",
    "I64",
    "U8",
    "BOOL",
    "F8_E4M3",
    "model.safetensors",
    "model-00001-of-00002.safetensors",
    "model-00002-of-00002.safetensors",
    "model.safetensors.index.json",
    "config.json",
    "../model.safetensors",
    "/etc/hostname",
    ".",
    "..",
    "a/b",
    "WordPiece",
    "BPE",
    "WordLevel",
    "Unigram",
    "BertNormalizer",
    "BertPreTokenizer",
    "ByteLevel",
    "Whitespace",
    "WhitespaceSplit",
    "Metaspace",
    "Sequence",
    "TemplateProcessing",
    "BertProcessing",
    "RobertaProcessing",
    "[UNK]",
    "[CLS]",
    "[SEP]",
    "[MASK]",
    "<|endoftext|>",
    "##",
    "\u{0}",
    "\u{feff}",
    "é",
    "日本",
    "\u{1F4A5}",
    "\\",
    "\"",
    "$A",
    "$B",
];

/// Keys swapped into JSON objects: the keys the parsers read.
const KEYS: &[&str] = &[
    "model_type",
    "hidden_size",
    "num_attention_heads",
    "num_hidden_layers",
    "n_embd",
    "n_head",
    "n_layer",
    "layer_norm_eps",
    "layer_norm_epsilon",
    "hidden_act",
    "activation_function",
    "position_embedding_type",
    "weight_map",
    "metadata",
    "__metadata__",
    "dtype",
    "shape",
    "data_offsets",
    "type",
    "vocab",
    "merges",
    "unk_token",
    "model",
    "normalizer",
    "pre_tokenizer",
    "post_processor",
    "added_tokens",
    "truncation",
    "padding",
    "single",
    "pair",
    "special_tokens",
    "max_input_chars_per_word",
    "continuing_subword_prefix",
];

fn json_numbers() -> Vec<Value> {
    vec![
        json!(0),
        json!(-1),
        json!(1),
        json!(2),
        json!(3),
        json!(i64::MIN),
        json!(i64::MAX),
        json!(1u64 << 31),
        json!(1u64 << 32),
        json!((1u64 << 53) + 1),
        json!(1u64 << 63),
        json!(u64::MAX),
        json!(0.5),
        json!(-0.0),
        json!(1e308),
        json!(-1e308),
        json!(5e-324),
        json!(1e-12),
    ]
}

/// One seeded edit of raw bytes; returns its name.
fn mutate_bytes(r: &mut Rng, data: &mut Vec<u8>, donors: &[&[u8]]) -> &'static str {
    let len = data.len();
    let at = r.below(len + 1);
    match r.below(11) {
        0 if len > 0 => {
            let i = r.below(len);
            data[i] ^= 1 << r.below(8);
            "bit flip"
        }
        1 if len > 0 => {
            let i = r.below(len);
            data[i] = *r.pick(&[
                0u8, 1, 0x7f, 0x80, 0xff, b'"', b'{', b'[', b',', b'\\', b'-',
            ]);
            "byte set"
        }
        2 => {
            let k = 1 + r.below(16);
            let bytes: Vec<u8> = (0..k).map(|_| r.byte()).collect();
            data.splice(at..at, bytes);
            "bytes inserted"
        }
        3 if len > 0 => {
            let end = (at + 1 + r.below(32)).min(len);
            data.drain(at.min(len - 1)..end);
            "bytes deleted"
        }
        4 if len > 0 => {
            let start = r.below(len);
            let end = (start + 1 + r.below(64)).min(len);
            let piece = data[start..end].to_vec();
            data.splice(at..at, piece);
            "range duplicated"
        }
        5 => {
            data.truncate(at);
            "truncated"
        }
        6 if !donors.is_empty() => {
            let d = r.pick(donors);
            let from = r.below(d.len() + 1);
            data.truncate(at);
            data.extend_from_slice(&d[from..]);
            "spliced"
        }
        7 if len >= 8 => {
            let i = r.below(len - 7);
            let v = *r.pick(&[0u64, 1, u64::MAX, 1 << 63, 1 << 32, 1 << 31, len as u64 + 1]);
            data[i..i + 8].copy_from_slice(&v.to_le_bytes());
            "u64 written"
        }
        8 => {
            let bad: &[u8] = r.pick::<&[u8]>(&[
                &[0xff],
                &[0xc0, 0x80],
                &[0xed, 0xa0, 0x80],
                &[0xe2, 0x82],
                &[0xf4, 0x90, 0x80, 0x80],
            ]);
            data.splice(at..at, bad.iter().copied());
            "invalid UTF-8 inserted"
        }
        9 => {
            if replace_number(r, data) {
                "number replaced"
            } else {
                "no number to replace"
            }
        }
        _ => {
            data.extend(std::iter::repeat_n(r.byte(), 1 + r.below(300)));
            "bytes appended"
        }
    }
}

/// Replaces one run of number characters in `data` by a boundary integer or float; false when
/// there is none.
fn replace_number(r: &mut Rng, data: &mut Vec<u8>) -> bool {
    let mut spans = vec![];
    let mut i = 0;
    while i < data.len() {
        if data[i].is_ascii_digit() {
            let start = if i > 0 && data[i - 1] == b'-' {
                i - 1
            } else {
                i
            };
            let mut end = i;
            while end < data.len()
                && matches!(data[end], b'0'..=b'9' | b'.' | b'e' | b'E' | b'+' | b'-')
            {
                end += 1;
            }
            spans.push((start, end));
            i = end;
        } else {
            i += 1;
        }
    }
    if spans.is_empty() {
        return false;
    }
    let (a, b) = *r.pick(&spans);
    let with = if r.chance(0.6) {
        *r.pick(INTS)
    } else {
        *r.pick(FLOATS)
    };
    data.splice(a..b, with.bytes());
    true
}

/// Every node's JSON pointer.
fn pointers(v: &Value, at: String, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, c) in m {
                let key = k.replace('~', "~0").replace('/', "~1");
                pointers(c, format!("{at}/{key}"), out);
            }
        }
        Value::Array(a) => {
            for (i, c) in a.iter().enumerate() {
                pointers(c, format!("{at}/{i}"), out);
            }
        }
        _ => {}
    }
    out.push(at);
}

fn nested(depth: usize, inner: Value) -> Value {
    (0..depth).fold(inner, |v, _| Value::Array(vec![v]))
}

/// One seeded edit of a JSON document's structure; returns its name.
fn mutate_json(r: &mut Rng, doc: &mut Value) -> &'static str {
    let mut ptrs = vec![];
    pointers(doc, String::new(), &mut ptrs);
    let p = r.pick(&ptrs).clone();
    let q = r.pick(&ptrs).clone();
    let other = doc.pointer(&q).cloned().unwrap_or(Value::Null);
    let numbers = json_numbers();
    let (parent, last) = match p.rfind('/') {
        Some(i) => (
            p[..i].to_string(),
            p[i + 1..].replace("~1", "/").replace("~0", "~"),
        ),
        None => (String::new(), String::new()),
    };
    let node = doc.pointer_mut(&p).expect("pointer of a node");
    match r.below(10) {
        0 => {
            *node = r.pick(&numbers).clone();
            "number set"
        }
        1 => {
            *node = Value::String(r.pick(STRINGS).to_string());
            "string set"
        }
        2 => {
            *node = r
                .pick(&[Value::Null, json!(true), json!([]), json!({}), json!([[]])])
                .clone();
            "null, bool or empty container set"
        }
        3 => {
            *node = nested(*r.pick(&[2usize, 127, 129, 300]), node.clone());
            "nested deeply"
        }
        4 => match node {
            Value::Number(n) => {
                let x = n.as_f64().unwrap_or(0.0);
                let y = *r.pick(&[x + 1.0, x - 1.0, 2.0 * x, -x, x * 1e300, x / 3.0]);
                *node = serde_json::Number::from_f64(y).map_or(Value::Null, Value::Number);
                "number changed"
            }
            Value::String(s) => {
                *s = match r.below(4) {
                    0 => s.repeat(1 + r.below(50)),
                    1 => s.to_uppercase(),
                    2 => s.chars().rev().collect(),
                    _ => format!("{s}{}", r.pick(STRINGS)),
                };
                "string changed"
            }
            Value::Array(a) if !a.is_empty() => {
                match r.below(3) {
                    0 => a.truncate(r.below(a.len())),
                    1 => a.reverse(),
                    _ => {
                        let i = r.below(a.len());
                        let x = a[i].clone();
                        a.insert(i, x);
                    }
                }
                "array changed"
            }
            Value::Object(m) if !m.is_empty() => {
                let keys: Vec<String> = m.keys().cloned().collect();
                let k = r.pick(&keys).clone();
                let v = m.remove(&k).unwrap();
                m.insert(r.pick(KEYS).to_string(), v);
                "key renamed"
            }
            _ => "nothing to change",
        },
        5 => {
            if let Value::Object(m) = node {
                m.insert(r.pick(KEYS).to_string(), other);
                "key added"
            } else {
                *node = other;
                "node copied"
            }
        }
        6 => {
            *node = other;
            "node copied"
        }
        _ => match doc.pointer_mut(&parent) {
            Some(Value::Object(m)) => {
                m.remove(&last);
                "key deleted"
            }
            Some(Value::Array(a)) => {
                if let Ok(i) = last.parse::<usize>() {
                    a.remove(i);
                }
                "element deleted"
            }
            _ => "nothing to delete",
        },
    }
}

/// A mutated JSON document as bytes: 1 to 3 structural edits, then sometimes a textual edit (a
/// number replaced by NaN, inf or a boundary value serde would not write, or raw bytes).
fn mutated_json(r: &mut Rng, seed: &Value, donors: &[&[u8]]) -> (Vec<u8>, String) {
    let mut doc = seed.clone();
    let mut what = vec![];
    // Mostly one edit, so that many cases stay close enough to valid to reach the code after
    // the parser.
    let edits = *r.pick(&[1, 1, 1, 1, 1, 1, 2, 2, 3, 3]);
    for _ in 0..edits {
        what.push(mutate_json(r, &mut doc));
    }
    let mut bytes = serde_json::to_vec(&doc).unwrap();
    if r.chance(0.15) {
        replace_number(r, &mut bytes);
        what.push("number replaced in the text");
    }
    if r.chance(0.1) {
        what.push(mutate_bytes(r, &mut bytes, donors));
    }
    (bytes, what.join(", "))
}

fn write(path: &Path, bytes: &[u8]) {
    std::fs::write(path, bytes).unwrap();
}

// ------------------------------------------------------------------------------------------
// .npy

fn npy_bytes(version: u8, descr: &str, fortran: bool, shape: &str, payload: &[u8]) -> Vec<u8> {
    let fo = if fortran { "True" } else { "False" };
    let mut header = format!("{{'descr': '{descr}', 'fortran_order': {fo}, 'shape': {shape}, }}");
    let pre = if version == 1 { 10 } else { 12 };
    while (pre + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut b = b"\x93NUMPY".to_vec();
    b.extend_from_slice(&[version, 0]);
    if version == 1 {
        b.extend_from_slice(&(header.len() as u16).to_le_bytes());
    } else {
        b.extend_from_slice(&(header.len() as u32).to_le_bytes());
    }
    b.extend_from_slice(header.as_bytes());
    b.extend_from_slice(payload);
    b
}

fn f64s(xs: &[f64]) -> Vec<u8> {
    xs.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn npy_seeds(dir: &Path) -> Vec<Vec<u8>> {
    let p = dir.join("seed.npy");
    let m = lipattn::Mat::from_fn(3, 4, |i, k| i as f64 - 0.25 * k as f64);
    lipattn::npy::write_matrix(&p, m.as_ref()).unwrap();
    let written = std::fs::read(&p).unwrap();
    lipattn::npy::write_vector(&p, &[1.0, -2.0, 3.5]).unwrap();
    let vector = std::fs::read(&p).unwrap();
    let f32s: Vec<u8> = [1.0f32, 2.0, -3.0, 0.5, 7.0, 8.0]
        .iter()
        .flat_map(|x| x.to_le_bytes())
        .collect();
    let big: Vec<u8> = [1.0f64, 2.0].iter().flat_map(|x| x.to_be_bytes()).collect();
    vec![
        written,
        vector,
        npy_bytes(1, "<f4", false, "(2, 3)", &f32s),
        npy_bytes(1, ">f8", false, "(2,)", &big),
        npy_bytes(2, "<f8", false, "(1, 2)", &f64s(&[0.5, -0.5])),
        npy_bytes(
            1,
            "<f8",
            false,
            "(2, 1)",
            &f64s(&[f64::MAX, f64::MIN_POSITIVE]),
        ),
    ]
}

#[test]
fn fuzz_npy() {
    let mut fz = Fuzz::new("npy");
    let mut r = Rng::new("npy");
    let seeds = npy_seeds(&fz.dir);
    let donors: Vec<&[u8]> = seeds.iter().map(Vec::as_slice).collect();
    let descrs = [
        "<f8", "<f4", ">f4", "|f8", "<f2", "<f16", "<i8", "<u4", "|b1", "<c16", "<U3", "|O", "|V8",
        "<M8[s]", "", "f8", "<f", "<f4\x00",
    ];
    let path = fz.dir.join("x.npy");
    for case in 0..3000 * scale() {
        let mut bytes = r.pick(&seeds).clone();
        let what = match r.below(10) {
            0..=4 => {
                let mut w = vec![];
                for _ in 0..1 + r.below(3) {
                    w.push(mutate_bytes(&mut r, &mut bytes, &donors));
                }
                w.join(", ")
            }
            5..=7 => {
                // A well-formed header around a shape and dtype of any kind.
                let dims: Vec<String> = (0..r.below(4)).map(|_| r.pick(INTS).to_string()).collect();
                let shape = match r.below(6) {
                    0 => r
                        .pick(&[
                            "()",
                            "(2, 3",
                            "[2, 3]",
                            "(1e3,)",
                            "(2**64,)",
                            "(-1,)",
                            "None",
                            "(3, 4, 5)",
                        ])
                        .to_string(),
                    _ if dims.len() == 1 => format!("({},)", dims[0]),
                    _ => format!("({})", dims.join(", ")),
                };
                let version = *r.pick(&[1u8, 2, 3]);
                let payload_len = r.below(200);
                let payload: Vec<u8> = (0..payload_len).map(|_| r.byte()).collect();
                bytes = npy_bytes(
                    version,
                    r.pick::<&str>(&descrs),
                    r.chance(0.1),
                    &shape,
                    &payload,
                );
                format!("header shape {shape}")
            }
            8 => {
                // The header length field.
                let v = *r.pick(&[0u16, 1, 9, 63, 64, 0x7fff, u16::MAX]);
                if bytes.len() >= 10 {
                    bytes[8..10].copy_from_slice(&v.to_le_bytes());
                }
                format!("header length {v}")
            }
            _ => {
                if bytes.len() >= 8 {
                    bytes[6] = *r.pick(&[0u8, 1, 2, 3, 4, 255]);
                    bytes[7] = *r.pick(&[0u8, 1, 255]);
                }
                "version bytes".into()
            }
        };
        write(&path, &bytes);
        let inputs = [("x.npy".to_string(), bytes.clone())];
        fz.case(format!("npy case {case} ({what})"), &inputs, || {
            run(|| {
                let a = lipattn::npy::read_npy(&path).map_err(err)?;
                let values = a
                    .shape
                    .iter()
                    .try_fold(1usize, |acc, &s| acc.checked_mul(s));
                if values != Some(a.data.len()) {
                    return Err(bad(format!(
                        "shape {:?} but {} values",
                        a.shape,
                        a.data.len()
                    )));
                }
                if let Ok(m) = lipattn::npy::read_matrix(&path) {
                    if m.nrows() * m.ncols() != a.data.len() || m.nrows() == 0 || m.ncols() == 0 {
                        return Err(bad(format!(
                            "matrix {}x{} of {} values",
                            m.nrows(),
                            m.ncols(),
                            a.data.len()
                        )));
                    }
                }
                if let Ok(v) = lipattn::npy::read_vector(&path) {
                    if v.len() != a.data.len() {
                        return Err(bad(format!(
                            "vector of {} of {} values",
                            v.len(),
                            a.data.len()
                        )));
                    }
                }
                Ok(())
            })
        });
    }
    fz.finish(3000);
}

// ------------------------------------------------------------------------------------------
// safetensors

/// name -> (dtype, shape, raw little-endian bytes), written in name order.
type Raw = BTreeMap<String, (String, Vec<usize>, Vec<u8>)>;

fn header_of(tensors: &Raw) -> Value {
    let mut header = Map::new();
    header.insert("__metadata__".into(), json!({"format": "pt"}));
    let mut at = 0usize;
    for (name, (dtype, shape, bytes)) in tensors {
        header.insert(
            name.clone(),
            json!({"dtype": dtype, "shape": shape, "data_offsets": [at, at + bytes.len()]}),
        );
        at += bytes.len();
    }
    Value::Object(header)
}

fn safetensors_bytes(header: &[u8], data: &[u8]) -> Vec<u8> {
    let mut b = (header.len() as u64).to_le_bytes().to_vec();
    b.extend_from_slice(header);
    b.extend_from_slice(data);
    b
}

fn data_of(tensors: &Raw) -> Vec<u8> {
    tensors.values().flat_map(|t| t.2.iter().copied()).collect()
}

fn serialize(tensors: &Raw) -> Vec<u8> {
    safetensors_bytes(
        &serde_json::to_vec(&header_of(tensors)).unwrap(),
        &data_of(tensors),
    )
}

fn encode(dtype: &str, values: &[f64]) -> Vec<u8> {
    values
        .iter()
        .flat_map(|&v| match dtype {
            "F64" => v.to_le_bytes().to_vec(),
            "F32" => (v as f32).to_le_bytes().to_vec(),
            "F16" => half::f16::from_f64(v).to_le_bytes().to_vec(),
            "BF16" => half::bf16::from_f64(v).to_le_bytes().to_vec(),
            "I64" => (v as i64).to_le_bytes().to_vec(),
            "U8" | "BOOL" => vec![v as u8],
            other => panic!("test helper does not encode {other}"),
        })
        .collect()
}

/// A mutated safetensors file built from `tensors`: its header edited as JSON (and written back
/// with its true length), its length prefix set to a boundary value, its data edited, or raw
/// byte edits anywhere.
fn mutated_safetensors(r: &mut Rng, tensors: &Raw, donors: &[&[u8]]) -> (Vec<u8>, String) {
    let data = data_of(tensors);
    match r.below(10) {
        0..=4 => {
            let (header, what) = mutated_json(r, &header_of(tensors), &[]);
            (safetensors_bytes(&header, &data), format!("header: {what}"))
        }
        5 => {
            let mut b = serialize(tensors);
            let v = *r.pick(&[
                0u64,
                1,
                2,
                u64::MAX,
                1 << 63,
                1 << 32,
                100_000_001,
                b.len() as u64,
            ]);
            b[..8].copy_from_slice(&v.to_le_bytes());
            (b, format!("header length {v}"))
        }
        6 | 7 => {
            // The values only: NaN, inf and huge numbers in the weights.
            let mut d = data;
            if !d.is_empty() {
                for _ in 0..1 + r.below(4) {
                    let i = r.below(d.len());
                    d[i] = *r.pick(&[0xffu8, 0x7f, 0x80, 0x00, 0x7c, 0xfe]);
                }
            }
            let header = serde_json::to_vec(&header_of(tensors)).unwrap();
            (safetensors_bytes(&header, &d), "data bytes".into())
        }
        _ => {
            let mut b = serialize(tensors);
            let mut w = vec![];
            for _ in 0..1 + r.below(3) {
                w.push(mutate_bytes(r, &mut b, donors));
            }
            (b, w.join(", "))
        }
    }
}

/// Every tensor of a store read back as its header says: values match the shape.
fn read_all(store: &TensorStore) -> Result<(), Outcome> {
    for name in store.names() {
        let shape = store.shape(name).map_err(err)?;
        let n = shape.iter().try_fold(1usize, |a, &s| a.checked_mul(s));
        match store.read_f64(name, &shape) {
            Ok(v) if Some(v.len()) != n => {
                return Err(bad(format!(
                    "'{name}' of shape {shape:?} gave {} values",
                    v.len()
                )))
            }
            Ok(_) => {}
            Err(e) if e.to_string().trim().is_empty() => return Err(Outcome::Err(String::new())),
            Err(_) => {}
        }
        let _ = match shape.as_slice() {
            [a, b] => store.matrix(name, *a, *b).map(drop),
            [a] => store.vector(name, *a).map(drop),
            _ => Ok(()),
        };
    }
    Ok(())
}

#[test]
fn fuzz_safetensors() {
    let mut fz = Fuzz::new("safetensors");
    let mut r = Rng::new("safetensors");
    let mut seeds: Vec<Raw> = vec![];
    for dtype in ["F32", "F16", "BF16", "F64"] {
        let mut t = Raw::new();
        let vals: Vec<f64> = (0..6).map(|i| i as f64 * 0.5 - 1.0).collect();
        t.insert("w".into(), (dtype.into(), vec![2, 3], encode(dtype, &vals)));
        t.insert(
            "b".into(),
            (dtype.into(), vec![3], encode(dtype, &vals[..3])),
        );
        seeds.push(t);
    }
    let mut odd = Raw::new();
    odd.insert(
        "ids".into(),
        (
            "I64".into(),
            vec![1, 4],
            encode("I64", &[0.0, 1.0, 2.0, 3.0]),
        ),
    );
    odd.insert(
        "mask".into(),
        ("BOOL".into(), vec![2], encode("BOOL", &[1.0, 0.0])),
    );
    odd.insert("empty".into(), ("F32".into(), vec![0, 3], vec![]));
    odd.insert(
        "scalar".into(),
        ("F64".into(), vec![], encode("F64", &[2.5])),
    );
    seeds.push(odd);
    let files: Vec<Vec<u8>> = seeds.iter().map(serialize).collect();
    let donors: Vec<&[u8]> = files.iter().map(Vec::as_slice).collect();
    let path = fz.dir.join("x.safetensors");
    for case in 0..2500 * scale() {
        let seed = r.pick(&seeds);
        let (bytes, what) = mutated_safetensors(&mut r, seed, &donors);
        write(&path, &bytes);
        let inputs = [("x.safetensors".to_string(), bytes)];
        fz.case(format!("safetensors case {case} ({what})"), &inputs, || {
            run(|| read_all(&TensorStore::open_file(&path).map_err(err)?))
        });
    }
    fz.finish(2500);
}

// ------------------------------------------------------------------------------------------
// Model directories: config.json with a checkpoint, single file or sharded.

const D: usize = 4;
const HEADS: usize = 2;
const FFN: usize = 8;
const LAYERS: usize = 2;
const VOCAB: usize = 10;
const POSITIONS: usize = 8;

struct Tiny {
    config: Value,
    tensors: Raw,
}

fn tiny_model(family: &str, prefix: &str, dtype: &str, seed: u64) -> Tiny {
    let mut g = SplitMix::new(seed);
    let mut t = Raw::new();
    let mut add = |name: String, shape: &[usize], center: f64, scale: f64| {
        let n: usize = shape.iter().product();
        let v: Vec<f64> = (0..n)
            .map(|_| center + scale * (2.0 * g.uniform() - 1.0))
            .collect();
        t.insert(name, (dtype.to_string(), shape.to_vec(), encode(dtype, &v)));
    };
    let config = if family == "bert" {
        let e = format!("{prefix}embeddings.");
        add(format!("{e}word_embeddings.weight"), &[VOCAB, D], 0.0, 1.0);
        add(
            format!("{e}position_embeddings.weight"),
            &[POSITIONS, D],
            0.0,
            0.5,
        );
        add(
            format!("{e}token_type_embeddings.weight"),
            &[2, D],
            0.0,
            0.5,
        );
        add(format!("{e}LayerNorm.weight"), &[D], 1.0, 0.2);
        add(format!("{e}LayerNorm.bias"), &[D], 0.0, 0.2);
        for l in 0..LAYERS {
            let p = format!("{prefix}encoder.layer.{l}.");
            for m in ["query", "key", "value"] {
                add(format!("{p}attention.self.{m}.weight"), &[D, D], 0.0, 0.3);
                add(format!("{p}attention.self.{m}.bias"), &[D], 0.0, 0.3);
            }
            add(
                format!("{p}attention.output.dense.weight"),
                &[D, D],
                0.0,
                0.3,
            );
            add(format!("{p}attention.output.dense.bias"), &[D], 0.0, 0.3);
            for ln in ["attention.output.LayerNorm", "output.LayerNorm"] {
                add(format!("{p}{ln}.weight"), &[D], 1.0, 0.2);
                add(format!("{p}{ln}.bias"), &[D], 0.0, 0.2);
            }
            add(format!("{p}intermediate.dense.weight"), &[FFN, D], 0.0, 0.3);
            add(format!("{p}intermediate.dense.bias"), &[FFN], 0.0, 0.3);
            add(format!("{p}output.dense.weight"), &[D, FFN], 0.0, 0.3);
            add(format!("{p}output.dense.bias"), &[D], 0.0, 0.3);
        }
        json!({"model_type": "bert", "hidden_size": D, "num_attention_heads": HEADS,
               "num_hidden_layers": LAYERS, "intermediate_size": FFN,
               "max_position_embeddings": POSITIONS, "vocab_size": VOCAB,
               "layer_norm_eps": 1e-12, "hidden_act": "gelu",
               "position_embedding_type": "absolute"})
    } else {
        add(format!("{prefix}wte.weight"), &[VOCAB, D], 0.0, 1.0);
        add(format!("{prefix}wpe.weight"), &[POSITIONS, D], 0.0, 0.5);
        for l in 0..LAYERS {
            let p = format!("{prefix}h.{l}.");
            for ln in ["ln_1", "ln_2"] {
                add(format!("{p}{ln}.weight"), &[D], 1.0, 0.2);
                add(format!("{p}{ln}.bias"), &[D], 0.0, 0.2);
            }
            for (name, shape) in [
                ("attn.c_attn", [D, 3 * D]),
                ("attn.c_proj", [D, D]),
                ("mlp.c_fc", [D, FFN]),
                ("mlp.c_proj", [FFN, D]),
            ] {
                add(format!("{p}{name}.weight"), &shape, 0.0, 0.3);
                add(format!("{p}{name}.bias"), &shape[1..], 0.0, 0.3);
            }
        }
        add(format!("{prefix}ln_f.weight"), &[D], 1.0, 0.2);
        add(format!("{prefix}ln_f.bias"), &[D], 0.0, 0.2);
        json!({"model_type": "gpt2", "n_embd": D, "n_head": HEADS, "n_layer": LAYERS,
               "n_positions": POSITIONS, "vocab_size": VOCAB, "layer_norm_epsilon": 1e-5,
               "activation_function": "gelu_new"})
    };
    Tiny { config, tensors: t }
}

fn tiny_models() -> Vec<Tiny> {
    vec![
        tiny_model("bert", "", "F32", 1),
        tiny_model("bert", "bert.", "F16", 2),
        tiny_model("gpt2", "", "F32", 3),
        tiny_model("gpt2", "transformer.", "BF16", 4),
        tiny_model("gpt2", "", "F64", 5),
    ]
}

fn finite(what: &str, m: &lipattn::Mat<f64>) -> Result<(), Outcome> {
    for j in 0..m.ncols() {
        if let Some(v) = m.col_as_slice(j).iter().find(|v| !v.is_finite()) {
            return Err(bad(format!("{what} holds {v}")));
        }
    }
    Ok(())
}

/// Opens a model directory and uses everything a command reads from it; checks that what loads
/// is consistent with the config and that hidden states are finite.
fn use_model(dir: &Path) -> Result<(), Outcome> {
    let m = Model::open(dir).map_err(err)?;
    let (d, layers) = (m.hidden_size(), m.num_layers());
    if d == 0 || d % m.config().num_attention_heads != 0 {
        return Err(bad(format!("opened with hidden size {d}")));
    }
    for l in 0..layers.min(LAYERS + 1) {
        let layer = m.layer(l).map_err(err)?;
        let a = &layer.attention;
        if a.d_in() != d || a.d_out() != d || a.heads != m.config().num_attention_heads {
            return Err(bad(format!(
                "layer {l}: attention {}x{} with {} heads in a model of width {d}",
                a.d_out(),
                a.d_in(),
                a.heads
            )));
        }
    }
    let e = m.embeddings().map_err(err)?;
    let n = e.max_positions().unwrap_or(5).min(5);
    let ids: Vec<u32> = (0..n).map(|i| (i * 7 % e.vocab_size()) as u32).collect();
    let states = m
        .hidden_states_upto(&ids, layers.min(LAYERS))
        .map_err(err)?;
    for (l, s) in states.iter().enumerate() {
        if s.nrows() != n || s.ncols() != d {
            return Err(bad(format!(
                "hidden state {l} is {}x{}",
                s.nrows(),
                s.ncols()
            )));
        }
        finite(&format!("hidden state {l}"), s)?;
    }
    if layers > 0 {
        load_attention_layer_source(dir, 0).map_err(err)?;
        if m.config().model_type == "bert" {
            load_bert_layer(dir, 0).map_err(err)?;
        }
    }
    Ok(())
}

#[test]
fn fuzz_model_config_and_checkpoint() {
    let mut fz = Fuzz::new("model");
    let mut r = Rng::new("model");
    let models = tiny_models();
    let files: Vec<Vec<u8>> = models.iter().map(|m| serialize(&m.tensors)).collect();
    let donors: Vec<&[u8]> = files.iter().map(Vec::as_slice).collect();
    let dir = fz.dir.join("m");
    std::fs::create_dir_all(&dir).unwrap();
    let mut configs = 0;
    let mut checkpoints = 0;
    let mut direct = 0;
    for case in 0..3000 * scale() {
        let k = r.below(models.len());
        let tiny = &models[k];
        let (config, weights, what) = match r.below(10) {
            0..=5 => {
                configs += 1;
                let (c, w) = mutated_json(&mut r, &tiny.config, &[]);
                (c, files[k].clone(), format!("config.json: {w}"))
            }
            _ => {
                checkpoints += 1;
                let (b, w) = mutated_safetensors(&mut r, &tiny.tensors, &donors);
                (
                    serde_json::to_vec(&tiny.config).unwrap(),
                    b,
                    format!("model.safetensors: {w}"),
                )
            }
        };
        write(&dir.join("config.json"), &config);
        write(&dir.join("model.safetensors"), &weights);
        let inputs = [
            ("config.json".to_string(), config.clone()),
            ("model.safetensors".to_string(), weights),
        ];
        fz.case(format!("model case {case} ({what})"), &inputs, || {
            run(|| use_model(&dir))
        });
        // The config parser on its own, as `hidden` and `analyze` call it first.
        if case % 3 == 0 {
            direct += 1;
            let path = dir.join("config.json");
            fz.case(
                format!("config.json alone, case {case} ({what})"),
                &inputs[..1],
                || {
                    run(|| match ModelConfig::from_file(&path).map_err(err)? {
                        Ok(c) if c.hidden_size == 0 || c.num_attention_heads == 0 => {
                            Err(bad(format!("accepted {c:?}")))
                        }
                        Ok(c) if !(c.layer_norm_eps.is_finite() && c.layer_norm_eps >= 0.0) => {
                            Err(bad(format!("accepted eps {}", c.layer_norm_eps)))
                        }
                        _ => Ok(()),
                    })
                },
            );
        }
    }
    eprintln!(
        "fuzz model: {configs} mutated config.json, {checkpoints} mutated checkpoints, {direct} config.json parsed alone"
    );
    fz.finish(3000);
}

#[test]
fn fuzz_sharded_index() {
    let mut fz = Fuzz::new("sharded");
    let mut r = Rng::new("sharded");
    let models = tiny_models();
    let shard_names = [
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
    ];
    let dir = fz.dir.join("m");
    for case in 0..1500 * scale() {
        let tiny = &models[r.below(models.len())];
        // Split the tensors between two shards; the index maps each name to its shard.
        let mut halves = [Raw::new(), Raw::new()];
        let mut map = Map::new();
        for (i, (name, t)) in tiny.tensors.iter().enumerate() {
            halves[i % 2].insert(name.clone(), t.clone());
            map.insert(name.clone(), json!(shard_names[i % 2]));
        }
        let index = json!({"metadata": {"total_size": 1234}, "weight_map": map});
        let mut shards: Vec<Option<Vec<u8>>> = halves.iter().map(|h| Some(serialize(h))).collect();
        let (index_bytes, what) = match r.below(10) {
            0..=6 => {
                let (b, w) = mutated_json(&mut r, &index, &[]);
                (b, format!("index: {w}"))
            }
            7 => {
                let s = r.below(2);
                shards[s] = None;
                (
                    serde_json::to_vec(&index).unwrap(),
                    format!("shard {s} missing"),
                )
            }
            _ => {
                let s = r.below(2);
                let donors: Vec<&[u8]> = vec![];
                let (b, w) = mutated_safetensors(&mut r, &halves[s], &donors);
                shards[s] = Some(b);
                (
                    serde_json::to_vec(&index).unwrap(),
                    format!("shard {s}: {w}"),
                )
            }
        };
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        write(
            &dir.join("config.json"),
            &serde_json::to_vec(&tiny.config).unwrap(),
        );
        write(&dir.join("model.safetensors.index.json"), &index_bytes);
        let mut inputs = vec![("model.safetensors.index.json".to_string(), index_bytes)];
        for (name, shard) in shard_names.iter().zip(&shards) {
            if let Some(b) = shard {
                write(&dir.join(name), b);
                inputs.push((name.to_string(), b.clone()));
            }
        }
        fz.case(format!("sharded case {case} ({what})"), &inputs, || {
            run(|| {
                let store = TensorStore::open_index(&dir.join("model.safetensors.index.json"))
                    .map_err(err)?;
                read_all(&store)?;
                use_model(&dir)
            })
        });
    }
    fz.finish(1500);
}

// ------------------------------------------------------------------------------------------
// tokenizer.json and text

fn wordpiece_tokenizer() -> Value {
    let words = [
        "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "a", "##s", "word", "##ing", ",", ".",
        "!", "3", "##1", "hello", "world", "é", "日",
    ];
    let vocab: Map<String, Value> = words
        .iter()
        .enumerate()
        .map(|(i, w)| (w.to_string(), json!(i)))
        .collect();
    let added: Vec<Value> = (0..5)
        .map(|i| {
            json!({"id": i, "content": words[i], "single_word": false, "lstrip": false,
                   "rstrip": false, "normalized": false, "special": true})
        })
        .collect();
    json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": added,
        "normalizer": {"type": "BertNormalizer", "clean_text": true, "handle_chinese_chars": true,
                       "strip_accents": null, "lowercase": true},
        "pre_tokenizer": {"type": "BertPreTokenizer"},
        "post_processor": {"type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": "[CLS]", "type_id": 0}},
                       {"Sequence": {"id": "A", "type_id": 0}},
                       {"SpecialToken": {"id": "[SEP]", "type_id": 0}}],
            "pair": [{"SpecialToken": {"id": "[CLS]", "type_id": 0}},
                     {"Sequence": {"id": "A", "type_id": 0}},
                     {"SpecialToken": {"id": "[SEP]", "type_id": 0}},
                     {"Sequence": {"id": "B", "type_id": 1}},
                     {"SpecialToken": {"id": "[SEP]", "type_id": 1}}],
            "special_tokens": {"[CLS]": {"id": "[CLS]", "ids": [2], "tokens": ["[CLS]"]},
                               "[SEP]": {"id": "[SEP]", "ids": [3], "tokens": ["[SEP]"]}}},
        "decoder": {"type": "WordPiece", "prefix": "##", "cleanup": true},
        "model": {"type": "WordPiece", "unk_token": "[UNK]", "continuing_subword_prefix": "##",
                  "max_input_chars_per_word": 100, "vocab": vocab}
    })
}

fn byte_level_tokenizer() -> Value {
    json!({
        "version": "1.0", "truncation": null, "padding": null,
        "added_tokens": [{"id": 8, "content": "<|endoftext|>", "single_word": false, "lstrip": false,
                          "rstrip": false, "normalized": true, "special": true}],
        "normalizer": null,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true,
                          "use_regex": true},
        "post_processor": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": false,
                           "use_regex": true},
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true,
                    "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": null,
                  "continuing_subword_prefix": "", "end_of_word_suffix": "",
                  "fuse_unk": false, "byte_fallback": false,
                  "vocab": {"a": 0, "b": 1, "\u{120}": 2, "ab": 3, "\u{120}a": 4, "'s": 5, "'": 6,
                            "s": 7, "<|endoftext|>": 8},
                  "merges": ["a b", "\u{120} a", "' s"]}
    })
}

fn word_level_tokenizer() -> Value {
    json!({
        "version": "1.0",
        "truncation": {"direction": "Right", "max_length": 3, "strategy": "LongestFirst", "stride": 0},
        "padding": {"strategy": {"Fixed": 12}, "direction": "Right", "pad_to_multiple_of": null,
                    "pad_id": 0, "pad_type_id": 0, "pad_token": "[PAD]"},
        "added_tokens": [], "normalizer": {"type": "Lowercase"},
        "pre_tokenizer": {"type": "Whitespace"}, "post_processor": null, "decoder": null,
        "model": {"type": "WordLevel", "vocab": {"[PAD]": 0, "[UNK]": 1, "a": 2, "b": 3, "c": 4},
                  "unk_token": "[UNK]"}
    })
}

fn minilm_tokenizer() -> Option<PathBuf> {
    Some(common::minilm("the MiniLM tokenizer cases")?.join("tokenizer.json"))
}

/// Uses a tokenizer as the commands do and checks the results against each other: a token
/// limit gives the whole text's tokens truncated (specials kept), the file reader agrees with
/// the in-memory one, windows have the length asked for.
fn use_tokenizer(
    tok: &TextTokenizer,
    text: &[u8],
    file: &Path,
    limits: &[usize],
    window: (usize, usize),
) -> Result<(), Outcome> {
    let utf8 = std::str::from_utf8(text).ok();
    // The whole text's (special prefix, body, special suffix), computed once: on a long text
    // each whole-text pass is what the case costs.
    let mut parts = None;
    for &m in limits {
        let from_file = tok.encode_file(file, Some(m));
        let Some(text) = utf8 else {
            // Invalid UTF-8 is an error unless it lies past the prefix the limit needs.
            if let Ok(ids) = from_file {
                if ids.len() > m {
                    return Err(bad(format!(
                        "{} tokens from the file under a limit of {m}",
                        ids.len()
                    )));
                }
            }
            continue;
        };
        let got = match tok.encode(text, Some(m)) {
            Ok(ids) => ids,
            Err(e) => {
                if from_file.is_ok() {
                    return Err(bad(format!(
                        "the file gave tokens where the text gave '{e}'"
                    )));
                }
                return Err(err(e));
            }
        };
        if parts.is_none() {
            parts = Some(tok.encode_parts(text).map_err(err)?);
        }
        let (pre, body, suf) = parts.as_ref().expect("computed above");
        let keep = m.saturating_sub(pre.len() + suf.len()).min(body.len());
        let want: Vec<u32> = [&pre[..], &body[..keep], &suf[..]].concat();
        if got != want {
            return Err(bad(format!(
                "limit {m}: {got:?}, but the whole text truncated is {want:?}"
            )));
        }
        match from_file {
            Ok(ids) if ids != got => {
                return Err(bad(format!(
                    "limit {m}: the file gave {ids:?}, the text {got:?}"
                )))
            }
            Err(e) => {
                return Err(bad(format!(
                    "limit {m}: the text gave tokens, the file '{e}'"
                )))
            }
            Ok(_) => {}
        }
    }
    let Some(text) = utf8 else { return Ok(()) };
    let (n, count) = window;
    let windows = match parts {
        // A long text: the windows of the parts already computed (`windows` is exactly this).
        Some((pre, body, suf)) => windows_of(&pre, &body, &suf, n, count),
        None => {
            let whole = tok.encode(text, None).map_err(err)?;
            if whole.is_empty() {
                return Err(bad("no tokens and no error".into()));
            }
            TextIds::from_text(tok, text, "fuzz").map_err(err)?;
            tok.windows(text, n, count).map_err(err)?
        }
    };
    if let Some(w) = windows.iter().find(|w| w.len() != n) {
        return Err(bad(format!("a window of {} tokens for n = {n}", w.len())));
    }
    Ok(())
}

const TEXTS: &[&str] = &[
    "Hello world, the words. 3.1!",
    "a b c ab 's a's",
    "日本語のテキスト and é\u{301} naïve",
    "[MASK] [CLS] <|endoftext|> [SEP]",
    "tab\there  \n\n new   line",
    "no-whitespace-at-all_but(punctuation)and,digits123",
    "\u{0}\u{1}\u{7f}\u{feff}\u{200b}",
    "\u{1F4A5}\u{1F600} emoji",
    "   ",
    "x",
];

const LIMITS: &[usize] = &[0, 1, 2, 3, 4, 5, 8, 64, 65_536, usize::MAX];

#[test]
fn fuzz_tokenizer_json() {
    let mut fz = Fuzz::new("tokenizer");
    let mut r = Rng::new("tokenizer");
    // MiniLM's tokenizer.json (30,522 entries) takes a second a case to mutate, parse and use.
    const MINILM_CASES: usize = 10;
    let mut seeds = vec![
        wordpiece_tokenizer(),
        byte_level_tokenizer(),
        word_level_tokenizer(),
    ];
    let minilm = minilm_tokenizer();
    let path = fz.dir.join("tokenizer.json");
    let text_file = fz.dir.join("text.txt");
    let seed_bytes: Vec<Vec<u8>> = seeds
        .iter()
        .map(|s| serde_json::to_vec(s).unwrap())
        .collect();
    let donors: Vec<&[u8]> = seed_bytes.iter().map(Vec::as_slice).collect();
    let mut big = 0;
    let cases = 1500 * scale();
    for case in 0..cases {
        if case == cases - MINILM_CASES {
            if let Some(p) = &minilm {
                seeds = vec![serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap()];
            }
        }
        if seeds.len() == 1 {
            big += 1;
        }
        let seed = r.pick(&seeds).clone();
        let (bytes, what) = if r.chance(0.8) {
            mutated_json(&mut r, &seed, &donors)
        } else {
            let mut b = serde_json::to_vec(&seed).unwrap();
            let w = mutate_bytes(&mut r, &mut b, &donors);
            (b, w.to_string())
        };
        write(&path, &bytes);
        let text = r.pick(TEXTS).as_bytes().to_vec();
        write(&text_file, &text);
        let limits = [*r.pick(LIMITS), *r.pick(LIMITS)];
        let window = (
            *r.pick(&[0usize, 1, 3, 4, 6, usize::MAX]),
            *r.pick(&[0usize, 1, 2, usize::MAX]),
        );
        let inputs = [
            ("tokenizer.json".to_string(), bytes),
            ("text.txt".to_string(), text.clone()),
        ];
        fz.case(format!("tokenizer case {case} ({what})"), &inputs, || {
            run(|| {
                let tok = TextTokenizer::from_file(&path).map_err(err)?;
                use_tokenizer(&tok, &text, &text_file, &limits, window)
            })
        });
    }
    eprintln!("fuzz tokenizer: {big} cases mutated MiniLM's tokenizer.json");
    fz.finish(1500);
}

/// Pieces random texts are made of: words, punctuation, whitespace runs, marks, scripts, added
/// and special tokens, control characters.
const PIECES: &[&str] = &[
    "the",
    "a",
    "words",
    "hello",
    "world",
    "don't",
    "it's",
    "x_y",
    "3.14",
    "1,000",
    "naïve",
    "über",
    "日本語",
    "[MASK]",
    "[CLS]",
    "[SEP]",
    "[UNK]",
    "<|endoftext|>",
    "a,b",
    "(c)",
    "--",
    "e\u{301}",
    "\u{3000}",
    "end.",
    "WORLD!",
    "\t",
    "\n",
    "\r\n",
    "  ",
    " ",
    " ",
    " ",
    "o'clock",
    "क\u{93f}.",
    "\u{0}",
    "\u{7f}",
    "\u{feff}",
    "\u{200b}",
    "\u{1F4A5}",
    "\u{10FFFF}",
    "ab",
    "'s",
];

#[test]
fn fuzz_text() {
    let mut fz = Fuzz::new("text");
    let mut r = Rng::new("text");
    let mut tokenizers = vec![];
    for (i, seed) in [
        wordpiece_tokenizer(),
        byte_level_tokenizer(),
        word_level_tokenizer(),
    ]
    .iter()
    .enumerate()
    {
        let p = fz.dir.join(format!("tokenizer-{i}.json"));
        write(&p, &serde_json::to_vec(seed).unwrap());
        tokenizers.push(TextTokenizer::from_file(&p).unwrap());
    }
    if let Some(p) = minilm_tokenizer() {
        tokenizers.push(TextTokenizer::from_file(&p).unwrap());
    }
    let file = fz.dir.join("text.txt");
    let mut large = 0;
    for case in 0..2500 * scale() {
        let mut text: Vec<u8> = vec![];
        // One case in 100 is past the 64 KiB a token limit reads first, so that the prefix
        // search and the file reader's doubling pieces run (about 4 bytes a piece).
        let pieces = if r.chance(1.0 / 100.0) {
            large += 1;
            17_000 + r.below(10_000)
        } else {
            r.below(40)
        };
        for _ in 0..pieces {
            text.extend_from_slice(r.pick(PIECES).as_bytes());
            if r.chance(0.5) {
                text.push(b' ');
            }
        }
        let mut what = format!("{pieces} pieces");
        if r.chance(0.3) {
            let donors: Vec<&[u8]> = TEXTS.iter().map(|t| t.as_bytes()).collect();
            what = format!("{what}, {}", mutate_bytes(&mut r, &mut text, &donors));
        }
        write(&file, &text);
        let t = r.below(tokenizers.len());
        let limits = [*r.pick(LIMITS), *r.pick(LIMITS)];
        let window = (
            *r.pick(&[0usize, 1, 2, 3, 4, 7, 16, usize::MAX]),
            *r.pick(&[0usize, 1, 2, 5, usize::MAX]),
        );
        let inputs = [("text.txt".to_string(), text.clone())];
        let tok = &tokenizers[t];
        fz.case(
            format!("text case {case} (tokenizer {t}, {what})"),
            &inputs,
            || run(|| use_tokenizer(tok, &text, &file, &limits, window)),
        );
    }
    eprintln!("fuzz text: {large} texts past 64 KiB");
    fz.finish(2500);
}

// ------------------------------------------------------------------------------------------
// --max-memory size strings

#[test]
fn fuzz_size_strings() {
    let mut fz = Fuzz::new("sizes");
    let mut r = Rng::new("sizes");
    let parts = [
        "0",
        "1",
        "9",
        ".",
        "5",
        "e",
        "E",
        "-",
        "+",
        " ",
        "K",
        "M",
        "G",
        "T",
        "k",
        "B",
        "Q",
        "ß",
        "日",
        "inf",
        "nan",
        "1e308",
        "18446744073709551615",
        "18446744073709551616",
        "0x10",
        "_",
        "\t",
        "\u{0}",
        "1.5",
        "1e-9",
        "e309",
    ];
    for case in 0..2000 * scale() {
        // Half are a number and a suffix as a user would write them, half any mixture.
        let s: String = if r.chance(0.5) {
            let num = if r.chance(0.5) {
                *r.pick(INTS)
            } else {
                *r.pick(FLOATS)
            };
            let suffix = *r.pick(&["", "", "K", "M", "G", "T", "k", "g", "B", "KB", " G", "Q"]);
            let pad = *r.pick(&["", "", " ", "\t"]);
            format!("{pad}{num}{suffix}{pad}")
        } else {
            (0..1 + r.below(6)).map(|_| *r.pick(&parts)).collect()
        };
        let inputs = [("size.txt".to_string(), s.clone().into_bytes())];
        fz.case(format!("size case {case} ({s:?})"), &inputs, || {
            match lipattn::budget::parse_bytes(&s) {
                Ok(0) => Outcome::Bad("a budget of 0 bytes".into()),
                Ok(v) => {
                    // Whole numbers of bytes up to 2^53 are exact.
                    match s.trim().parse::<u64>() {
                        Ok(want) if want < 1 << 53 && want != v => {
                            Outcome::Bad(format!("{v} bytes, not {want}"))
                        }
                        _ => Outcome::Ok,
                    }
                }
                Err(m) => Outcome::Err(m),
            }
        });
    }
    fz.finish(2000);
}

// ------------------------------------------------------------------------------------------
// The bugs these fuzzers found, as plain tests of their reproducers.

fn scratch(name: &str) -> PathBuf {
    let d = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("fuzz-regression-{name}"));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// tokenizers 0.22 parses the `decoder` section with `expect`: a syntax error there (a file cut
/// short, or nesting past serde's depth limit) panicked.
#[test]
fn tokenizer_json_cut_short_in_its_decoder_is_an_error() {
    let dir = scratch("decoder");
    let path = dir.join("tokenizer.json");
    let full = serde_json::to_string(&wordpiece_tokenizer()).unwrap();
    let cut = full.find("\"decoder\"").unwrap() + 24;
    write(&path, &full.as_bytes()[..cut]);
    let e = TextTokenizer::from_file(&path).err().unwrap().to_string();
    assert!(
        e.contains("tokenizer.json") && e.contains("invalid JSON"),
        "{e}"
    );
    let mut deep = wordpiece_tokenizer();
    deep["decoder"] = nested(200, json!({"type": "WordPiece"}));
    write(&path, &serde_json::to_vec(&deep).unwrap());
    let e = TextTokenizer::from_file(&path).err().unwrap().to_string();
    assert!(e.contains("recursion limit"), "{e}");
}

/// A `TemplateProcessing` read from a file is not checked by tokenizers: a template placing a
/// special token its `special_tokens` lack panicked at the first encode.
#[test]
fn template_placing_an_undefined_special_token_is_an_error() {
    let dir = scratch("template");
    let path = dir.join("tokenizer.json");
    let mut tok = wordpiece_tokenizer();
    tok["post_processor"]["special_tokens"]
        .as_object_mut()
        .unwrap()
        .remove("[SEP]");
    write(&path, &serde_json::to_vec(&tok).unwrap());
    let e = TextTokenizer::from_file(&path).err().unwrap().to_string();
    assert!(e.contains("'[SEP]'") && e.contains("special_tokens"), "{e}");
    // Inside a Sequence of post-processors too.
    let mut seq = wordpiece_tokenizer();
    let inner = tok["post_processor"].clone();
    seq["post_processor"] = json!({"type": "Sequence", "processors": [inner]});
    write(&path, &serde_json::to_vec(&seq).unwrap());
    let e = TextTokenizer::from_file(&path).err().unwrap().to_string();
    assert!(e.contains("'[SEP]'"), "{e}");
}

/// tokenizers cuts the continuing-subword prefix off each merge's second token by slicing, which
/// panicked on a token shorter than the prefix.
#[test]
fn bpe_merge_shorter_than_the_subword_prefix_is_an_error() {
    let dir = scratch("merges");
    let path = dir.join("tokenizer.json");
    let mut tok = byte_level_tokenizer();
    tok["model"]["continuing_subword_prefix"] = json!("BOOL");
    write(&path, &serde_json::to_vec(&tok).unwrap());
    let e = TextTokenizer::from_file(&path).err().unwrap().to_string();
    assert!(
        e.contains("merge 1") && e.contains("continuing_subword_prefix"),
        "{e}"
    );
    // The pair form of merges, and a prefix that ends inside a character ("é" is two bytes).
    tok["model"]["continuing_subword_prefix"] = json!("x");
    tok["model"]["merges"] = json!([["a", "é"]]);
    tok["model"]["vocab"]["é"] = json!(9);
    write(&path, &serde_json::to_vec(&tok).unwrap());
    let e = TextTokenizer::from_file(&path).err().unwrap().to_string();
    assert!(e.contains("continuing_subword_prefix"), "{e}");
}

/// A header may give a tensor no values and a dimension of 2^63: building the 0 x 2^63 matrix
/// looped over 2^63 empty columns.
#[test]
fn empty_tensor_with_a_huge_dimension_is_an_error() {
    let dir = scratch("empty");
    let path = dir.join("x.safetensors");
    let mut t = Raw::new();
    t.insert("e".into(), ("F32".into(), vec![0, 1 << 63], vec![]));
    t.insert("f".into(), ("F32".into(), vec![1 << 63, 0], vec![]));
    write(&path, &serialize(&t));
    let store = TensorStore::open_file(&path).unwrap();
    let t0 = Instant::now();
    let e = store.matrix("e", 0, 1 << 63).unwrap_err().to_string();
    assert!(e.contains("tensor 'e'") && e.contains("is empty"), "{e}");
    let e = store
        .matrix_transposed("f", 0, 1 << 63)
        .unwrap_err()
        .to_string();
    assert!(e.contains("tensor 'f'") && e.contains("is empty"), "{e}");
    assert!(t0.elapsed() < Duration::from_secs(1));
}

/// Finite weights whose products overflow: a final LayerNorm gain of 1.7e308 made GPT-2's output
/// -inf, returned as a hidden state.
#[test]
fn hidden_states_that_overflow_are_an_error() {
    let dir = scratch("overflow");
    let mut tiny = tiny_model("gpt2", "", "F64", 5);
    let gain = tiny.tensors.get_mut("ln_f.weight").unwrap();
    gain.2 = encode("F64", &[1.7e308; D]);
    write(
        &dir.join("config.json"),
        &serde_json::to_vec(&tiny.config).unwrap(),
    );
    write(&dir.join("model.safetensors"), &serialize(&tiny.tensors));
    let m = Model::open(&dir).unwrap();
    assert!(m.hidden_states_upto(&[1, 2, 3], 1).is_ok());
    let e = m.hidden_states(&[1, 2, 3]).unwrap_err().to_string();
    assert!(
        e.contains("hidden state 2") && e.contains("overflow"),
        "{e}"
    );
}

/// A file and the same text in memory give the same result under a token limit, errors
/// included: a word that neither the vocabulary nor its (missing) unknown token covers made the
/// text an error while the file, cut after its first words, gave tokens.
#[test]
fn a_file_and_its_text_agree_when_the_text_fails_to_tokenise() {
    let dir = scratch("unk");
    let mut tok = byte_level_tokenizer();
    tok["model"]["unk_token"] = json!("<unk>");
    write(
        &dir.join("tokenizer.json"),
        &serde_json::to_vec(&tok).unwrap(),
    );
    let tok = TextTokenizer::from_file(&dir.join("tokenizer.json")).unwrap();
    let text = "a b c ab 's a's";
    write(&dir.join("text.txt"), text.as_bytes());
    let in_memory = tok.encode(text, Some(2)).unwrap_err().to_string();
    let from_file = tok
        .encode_file(&dir.join("text.txt"), Some(2))
        .unwrap_err()
        .to_string();
    assert!(
        in_memory.contains("<unk>") && from_file == in_memory,
        "{in_memory} / {from_file}"
    );
}
