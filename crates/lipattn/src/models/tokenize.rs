//! Text to token ids with the model's own `tokenizer.json` (the `tokenizers` crate, built
//! without its download features: nothing here touches the network).

use crate::error::{Error, Result};
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
        let mut tok = self.inner.clone();
        let truncation = match max_tokens {
            Some(0) => {
                return Err(Error::Invalid("max_tokens must be at least 1".into()));
            }
            Some(max_length) => Some(TruncationParams {
                max_length,
                strategy: TruncationStrategy::LongestFirst,
                stride: 0,
                direction: TruncationDirection::Right,
            }),
            None => None,
        };
        tok.with_truncation(truncation)
            .map_err(|e| Error::Invalid(format!("truncation to {max_tokens:?} tokens: {e}")))?;
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
}
