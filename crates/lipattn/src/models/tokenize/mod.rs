//! Text to token ids with the model's own `tokenizer.json` (the `tokenizers` crate, built
//! without its download features: nothing here touches the network).

mod cuts;

use crate::error::{check_at_least, Error, Result};
use cuts::Cuts;
use std::io::Read;
use std::path::{Path, PathBuf};
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
        let mut inner = Tokenizer::from_file(path).map_err(|e| Error::Format {
            path: path.to_path_buf(),
            msg: format!("not a usable tokenizer.json: {e}"),
        })?;
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
        let mut from = (BYTES_PER_TOKEN * m).max(MIN_HEAD);
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
        let (mut buf, mut want) = (Vec::new(), (BYTES_PER_TOKEN * m).max(MIN_HEAD));
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
            if let Some(head) = self.head(text, m, 0, complete)? {
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
