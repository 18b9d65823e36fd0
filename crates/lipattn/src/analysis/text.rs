//! The real text the analysis measures on, as token ids of the model's own tokenizer.

use crate::error::Result;
use crate::models::TextTokenizer;

/// The default real text: the GPL-3 licence, verbatim (see assets/README.md).
pub const DEFAULT_TEXT: &str = include_str!("../../assets/GPL-3.txt");
pub const DEFAULT_TEXT_SOURCE: &str = "GPL-3 licence text (embedded default)";

/// Real text as the model's sequence: prefix + (a window of) body + suffix.
#[derive(Clone, Debug)]
pub struct TextIds {
    pub prefix: Vec<u32>,
    pub body: Vec<u32>,
    pub suffix: Vec<u32>,
    /// Where the text came from, for the report.
    pub source: String,
}

impl TextIds {
    /// `text` tokenised by the model's own tokenizer; `source` names it in the report.
    pub fn from_text(tokenizer: &TextTokenizer, text: &str, source: &str) -> Result<Self> {
        let (prefix, body, suffix) = tokenizer.encode_parts(text)?;
        Ok(Self {
            prefix,
            body,
            suffix,
            source: source.to_string(),
        })
    }
}
