//! Text to token ids with the model's own `tokenizer.json` (the `tokenizers` crate, built
//! without its download features: nothing here touches the network).

use crate::error::{check_at_least, Error, Result};
use std::path::{Path, PathBuf};
use tokenizers::{Tokenizer, TruncationDirection, TruncationParams, TruncationStrategy};

pub const TOKENIZER_FILE: &str = "tokenizer.json";

pub struct TextTokenizer {
    path: PathBuf,
    inner: Tokenizer,
}

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
        let mut inner = Tokenizer::from_file(path).map_err(|e| Error::Format {
            path: path.to_path_buf(),
            msg: format!("not a usable tokenizer.json: {e}"),
        })?;
        // Saved tokenizers often pad every input to a fixed length (MiniLM's pads to 128):
        // padding tokens would become hidden states of their own, so they are never added.
        inner.with_padding(None);
        Ok(Self {
            path: path.to_path_buf(),
            inner,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Ids of `text` as one sequence with the model's special tokens (BERT: [CLS] ... [SEP];
    /// GPT-2: none), keeping at most `max_tokens` tokens, special ones included, by cutting the
    /// end of the text. `None` keeps everything, overriding a truncation saved in the file.
    pub fn encode(&self, text: &str, max_tokens: Option<usize>) -> Result<Vec<u32>> {
        if text.trim().is_empty() {
            return Err(Error::Empty {
                what: "text".into(),
            });
        }
        if let Some(m) = max_tokens {
            check_at_least("max_tokens", m, 1)?;
        }
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
        let mut tok = self.inner.clone();
        tok.with_truncation(None)
            .map_err(|e| Error::invalid(format!("disabling truncation: {e}")))?;
        let body = tok
            .encode(text, false)
            .map_err(|e| Error::Format {
                path: self.path.clone(),
                msg: format!("tokenising failed: {e}"),
            })?
            .get_ids()
            .to_vec();
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
