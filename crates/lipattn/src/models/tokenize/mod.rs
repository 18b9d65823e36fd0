//! Text to token ids with the model's own `tokenizer.json` (the `tokenizers` crate, built
//! without its download features: nothing here touches the network).

mod cuts;

use crate::error::{check_at_least, Error, Result};
use cuts::Cuts;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use tokenizers::{
    PostProcessor, Tokenizer, TruncationDirection, TruncationParams, TruncationStrategy,
};

pub const TOKENIZER_FILE: &str = "tokenizer.json";

pub struct TextTokenizer {
    path: PathBuf,
    /// Without padding or truncation: each call sets the truncation it needs on a copy.
    inner: Tokenizer,
    cuts: Cuts,
}

/// The first prefix tried holds this many bytes per wanted token (English runs at 4 to 5), and
/// at least `MIN_HEAD` bytes; each retry doubles it.
const BYTES_PER_TOKEN: usize = 8;
const MIN_HEAD: usize = 1 << 16;

impl TextTokenizer {
    /// `dir/tokenizer.json`.
    pub fn from_dir(dir: &Path) -> Result<Self> {
        Self::from_file(&dir.join(TOKENIZER_FILE))
    }

    pub fn from_file(path: &Path) -> Result<Self> {
        if !path.is_file() {
            return Err(Error::Io {
                path: path.to_path_buf(),
                source: std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "tokenizer file not found (the model directory needs the tokenizer.json its tokenizer was saved as)",
                ),
            });
        }
        let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_json_text(path, &text)
    }

    /// A tokenizer.json's text (a `tokenizers` tokenizer serialised, as a transformers fast
    /// tokenizer's `backend_tokenizer.to_str()` gives it), checked as `from_file` checks the file;
    /// `origin` names it in errors.
    pub fn from_json_text(origin: &Path, text: &str) -> Result<Self> {
        let path = origin;
        let fmt = |msg: String| Error::Format {
            path: path.to_path_buf(),
            msg,
        };
        // The JSON is checked before `tokenizers` reads it: its decoder section is parsed with
        // `expect`, so a syntax error there (a truncated file) panicked instead of failing
        // (tokenizers 0.22; found by crates/lipattn/tests/fuzz_parsers.rs).
        let json = serde_json::from_str::<serde_json::Value>(text)
            .map_err(|e| fmt(format!("invalid JSON: {e}")))?;
        check_merges(&json).map_err(fmt)?;
        // Any other panic of `tokenizers` while it reads the file becomes an error: nothing it
        // built survives the unwinding, so no broken state is used afterwards.
        let mut inner = std::panic::catch_unwind(|| Tokenizer::from_str(text))
            .map_err(|p| {
                let why = p
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| p.downcast_ref::<String>().cloned())
                    .unwrap_or_default();
                fmt(format!(
                    "not a usable tokenizer.json: the tokenizers crate failed on it ({why})"
                ))
            })?
            .map_err(|e| fmt(format!("not a usable tokenizer.json: {e}")))?;
        check_templates(&inner).map_err(fmt)?;
        // Saved tokenizers often pad every input to a fixed length (MiniLM's pads to 128):
        // padding tokens would become hidden states of their own, so they are never added.
        inner.with_padding(None);
        inner
            .with_truncation(None)
            .map_err(|e| Error::invalid(format!("disabling truncation: {e}")))?;
        Ok(Self {
            path: path.to_path_buf(),
            cuts: Cuts::of(&inner),
            inner,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Ids of `text` as one sequence with the model's special tokens (BERT: [CLS] ... [SEP];
    /// GPT-2: none), keeping at most `max_tokens` tokens, special ones included, by cutting the
    /// end of the text. `None` keeps everything, overriding a truncation saved in the file.
    /// With a limit only a prefix of the text long enough for it is tokenised (`cuts`), with the
    /// same ids as the whole text truncated.
    pub fn encode(&self, text: &str, max_tokens: Option<usize>) -> Result<Vec<u32>> {
        if text.trim().is_empty() {
            return Err(Error::Empty {
                what: "text".into(),
            });
        }
        let Some(m) = max_tokens else {
            return self.encode_whole(text, None);
        };
        self.check_max_tokens(m)?;
        let mut from = BYTES_PER_TOKEN.saturating_mul(m).max(MIN_HEAD);
        loop {
            match self.head(text, m, from, true)? {
                Some(head) => return self.encode_whole(head, Some(m)),
                None => from = from.saturating_mul(2),
            }
        }
    }

    /// Like `encode` on the content of a UTF-8 file, reading only as much of it as `max_tokens`
    /// needs (in pieces that double in size).
    pub fn encode_file(&self, path: &Path, max_tokens: Option<usize>) -> Result<Vec<u32>> {
        let io = |source| Error::Io {
            path: path.to_path_buf(),
            source,
        };
        let mut file = std::fs::File::open(path).map_err(io)?;
        let Some(m) = max_tokens else {
            let mut text = String::new();
            file.read_to_string(&mut text).map_err(io)?;
            return self.encode(&text, None);
        };
        self.check_max_tokens(m)?;
        // The cuts are searched from the same place as `encode` searches them, so that a file and
        // its text in memory give the same result, errors included: searched from 0, a file
        // whose text fails to tokenise after its first few words (a word the vocabulary and its
        // unknown token both lack) gave tokens where the text gave the error (found by
        // tests/fuzz_parsers.rs).
        let from = BYTES_PER_TOKEN.saturating_mul(m).max(MIN_HEAD);
        let (mut buf, mut want) = (Vec::new(), from);
        loop {
            let got = (&mut file)
                .take((want - buf.len()) as u64)
                .read_to_end(&mut buf)
                .map_err(io)?;
            let complete = got == 0 || buf.len() < want;
            let text = match std::str::from_utf8(&buf) {
                Ok(t) => t,
                // A character cut by the end of the piece is completed by the next piece.
                Err(e) if e.error_len().is_none() && !complete => {
                    std::str::from_utf8(&buf[..e.valid_up_to()]).expect("valid up to here")
                }
                Err(e) => {
                    return Err(io(std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        format!("not UTF-8 text (byte {})", e.valid_up_to()),
                    )))
                }
            };
            if complete && text.trim().is_empty() {
                return Err(Error::Empty {
                    what: format!("text of {}", path.display()),
                });
            }
            if let Some(head) = self.head(text, m, from, complete)? {
                return self.encode_whole(head, Some(m));
            }
            want = want.saturating_mul(2);
        }
    }

    /// The special tokens must fit with at least one token of text (the tokenizer would ignore
    /// a shorter limit and return everything).
    fn check_max_tokens(&self, m: usize) -> Result<()> {
        let specials = self
            .inner
            .get_post_processor()
            .map_or(0, |p| p.added_tokens(false));
        check_at_least("max_tokens", m, specials + 1).map(drop)
    }

    /// A prefix of `text` ending at a safe cut at or after byte `from` whose body holds at least
    /// `m` tokens, hence the same first `m` tokens as the whole text; the whole text when it is
    /// `complete` and no such cut exists; None when more text (or a later cut) is needed.
    fn head<'t>(
        &self,
        text: &'t str,
        m: usize,
        from: usize,
        complete: bool,
    ) -> Result<Option<&'t str>> {
        let mut at = from;
        while let Some(cut) = self.cuts.next(text, at) {
            if self.body(&text[..cut])?.len() >= m {
                return Ok(Some(&text[..cut]));
            }
            at = cut.saturating_mul(2).max(cut + 1);
        }
        Ok(complete.then_some(text))
    }

    fn body(&self, text: &str) -> Result<Vec<u32>> {
        Ok(self
            .inner
            .encode(text, false)
            .map_err(|e| Error::Format {
                path: self.path.clone(),
                msg: format!("tokenising failed: {e}"),
            })?
            .get_ids()
            .to_vec())
    }

    fn encode_whole(&self, text: &str, max_tokens: Option<usize>) -> Result<Vec<u32>> {
        let mut tok = self.inner.clone();
        let truncation = max_tokens.map(|max_length| TruncationParams {
            max_length,
            strategy: TruncationStrategy::LongestFirst,
            stride: 0,
            direction: TruncationDirection::Right,
        });
        tok.with_truncation(truncation)
            .map_err(|e| Error::invalid(format!("truncation to {max_tokens:?} tokens: {e}")))?;
        let enc = tok.encode(text, true).map_err(|e| Error::Format {
            path: self.path.clone(),
            msg: format!("tokenising failed: {e}"),
        })?;
        let ids = enc.get_ids().to_vec();
        if ids.is_empty() {
            return Err(Error::Empty {
                what: "token sequence of the text".into(),
            });
        }
        Ok(ids)
    }

    /// The text's ids split as (special prefix, body, special suffix): the model's sequence is
    /// prefix + body + suffix. Windows of real text keep the specials around a slice of the body.
    pub fn encode_parts(&self, text: &str) -> Result<(Vec<u32>, Vec<u32>, Vec<u32>)> {
        let full = self.encode(text, None)?;
        let body = self.body(text)?;
        // The post-processor only adds tokens around the body; find where it sits.
        let at = (0..=full.len().saturating_sub(body.len()))
            .find(|&k| full[k..k + body.len()] == body[..])
            .ok_or_else(|| Error::Format {
                path: self.path.clone(),
                msg: "the tokenizer's post-processor changes the body of the text, so windows of it cannot be formed".into(),
            })?;
        let suffix = full[at + body.len()..].to_vec();
        Ok((full[..at].to_vec(), body, suffix))
    }

    /// Up to `count` windows of exactly `n` ids (specials included), their bodies evenly spaced
    /// over the text. Fewer (possibly none) when the text is too short for `n`.
    pub fn windows(&self, text: &str, n: usize, count: usize) -> Result<Vec<Vec<u32>>> {
        let (pre, body, suf) = self.encode_parts(text)?;
        Ok(windows_of(&pre, &body, &suf, n, count))
    }
}

/// A BPE model's merges `a b` must each have a `b` at least as long as the
/// `continuing_subword_prefix`: `tokenizers` cuts the prefix off `b` by slicing, which panicked
/// on a shorter one (or one whose prefix length falls inside a character).
fn check_merges(json: &serde_json::Value) -> std::result::Result<(), String> {
    let Some(model) = json.get("model") else {
        return Ok(());
    };
    let prefix = model
        .get("continuing_subword_prefix")
        .and_then(|p| p.as_str())
        .unwrap_or("");
    let Some(merges) = model.get("merges").and_then(|m| m.as_array()) else {
        return Ok(());
    };
    for (i, m) in merges.iter().enumerate() {
        // Two forms: "a b" (split at its one space, as tokenizers does) and ["a", "b"].
        let second = match m {
            serde_json::Value::String(s) => {
                s.split(' ').nth(1).filter(|_| s.split(' ').count() == 2)
            }
            serde_json::Value::Array(pair) if pair.len() == 2 => pair[1].as_str(),
            _ => None,
        };
        if let Some(b) = second {
            if b.get(prefix.len()..).is_none() {
                return Err(format!(
                    "merge {} ({m}): its second token '{b}' does not hold the continuing_subword_prefix '{prefix}'",
                    i + 1
                ));
            }
        }
    }
    Ok(())
}

/// Every special token a `TemplateProcessing` post-processor places must be among its
/// `special_tokens`: `tokenizers` checks this when a template is built in code but not when one is
/// read from a file, and looks the token up with an index that panics when it encodes.
fn check_templates(tok: &Tokenizer) -> std::result::Result<(), String> {
    fn walk(v: &serde_json::Value) -> std::result::Result<(), String> {
        use serde_json::Value;
        match v {
            Value::Object(m)
                if m.get("type").and_then(Value::as_str) == Some("TemplateProcessing") =>
            {
                let known = m.get("special_tokens").and_then(Value::as_object);
                for key in ["single", "pair"] {
                    let pieces = m.get(key).and_then(Value::as_array).into_iter().flatten();
                    for id in pieces.filter_map(|p| p.pointer("/SpecialToken/id")?.as_str()) {
                        if !known.is_some_and(|k| k.contains_key(id)) {
                            return Err(format!(
                                "the post-processor's {key} template places the special token '{id}', which its special_tokens do not define"
                            ));
                        }
                    }
                }
                Ok(())
            }
            Value::Object(m) => m.values().try_for_each(walk),
            Value::Array(a) => a.iter().try_for_each(walk),
            _ => Ok(()),
        }
    }
    match tok.get_post_processor() {
        // The serialised form is the canonical one whatever the file's spelling was (a template
        // may be written as a string), and it reaches the templates inside a `Sequence`.
        Some(p) => walk(&serde_json::to_value(p).map_err(|e| e.to_string())?),
        None => Ok(()),
    }
}

/// Windows of `n` ids: `pre` + a slice of `body` + `suf`, at `count` evenly spaced offsets.
pub fn windows_of(pre: &[u32], body: &[u32], suf: &[u32], n: usize, count: usize) -> Vec<Vec<u32>> {
    let extra = pre.len() + suf.len();
    if count == 0 || n <= extra || n - extra > body.len() {
        return vec![];
    }
    let len = n - extra;
    let room = body.len() - len;
    let count = count.min(room + 1);
    let mut starts: Vec<usize> = (0..count)
        .map(|i| {
            if count == 1 {
                0
            } else {
                i * room / (count - 1)
            }
        })
        .collect();
    starts.dedup();
    starts
        .into_iter()
        .map(|s| {
            let mut w = pre.to_vec();
            w.extend_from_slice(&body[s..s + len]);
            w.extend_from_slice(suf);
            w
        })
        .collect()
}

#[cfg(test)]
mod tests;
