//! The real text the analysis measures on, as token ids of the model's own tokenizer.

use crate::error::Result;
use crate::models::TextTokenizer;

/// The default real text: the GPL-3 licence, verbatim (see assets/README.md).
pub const DEFAULT_TEXT: &str = include_str!("../../assets/GPL-3.txt");
pub const DEFAULT_TEXT_SOURCE: &str = "GPL-3 licence text (embedded default)";

/// Eight licence documents, verbatim, separated by a blank line (assets/README.md): 33,015
/// MiniLM tokens, enough for windows of 16,384 and 32,768 tokens.
pub const LICENCES_TEXT: &str = concat!(
    include_str!("../../assets/GPL-3.txt"),
    "\n\n",
    include_str!("../../assets/GPL-2.txt"),
    "\n\n",
    include_str!("../../assets/LGPL-2.1.txt"),
    "\n\n",
    include_str!("../../assets/LGPL-3.txt"),
    "\n\n",
    include_str!("../../assets/GFDL-1.3.txt"),
    "\n\n",
    include_str!("../../assets/GPL-1.txt"),
    "\n\n",
    include_str!("../../assets/GFDL-1.2.txt"),
    "\n\n",
    include_str!("../../assets/LGPL-2.txt"),
);
pub const LICENCES_TEXT_SOURCE: &str = "licence texts GPL-3, GPL-2, LGPL-2.1, LGPL-3, GFDL-1.3, GPL-1, GFDL-1.2, LGPL-2 (embedded corpus 'licences')";

crate::named_enum! {
    /// The embedded real texts (assets/README.md).
    #[derive(Default)]
    pub enum Corpus as "corpus" {
        /// The GPL-3 licence alone (6,840 MiniLM tokens): the default.
        #[default]
        Gpl3 = "gpl-3",
        /// Eight licence documents (33,015 MiniLM tokens): windows up to 32,768 tokens.
        Licences = "licences" | "licenses",
    }
}

impl Corpus {
    /// The text, verbatim.
    pub fn text(self) -> &'static str {
        match self {
            Corpus::Gpl3 => DEFAULT_TEXT,
            Corpus::Licences => LICENCES_TEXT,
        }
    }

    /// How the report names it.
    pub fn source(self) -> &'static str {
        match self {
            Corpus::Gpl3 => DEFAULT_TEXT_SOURCE,
            Corpus::Licences => LICENCES_TEXT_SOURCE,
        }
    }
}

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

    /// The caller's `text` (`(text, source)`, the source naming it in the report) or, without
    /// one, the embedded `corpus`. A text beside a corpus other than the default is refused
    /// rather than one of them silently ignored (every frontend asks for both the same way).
    pub fn from_text_or_corpus(
        tokenizer: &TextTokenizer,
        text: Option<(&str, &str)>,
        corpus: Corpus,
    ) -> Result<Self> {
        match text {
            Some(_) if corpus != Corpus::default() => Err(crate::Error::invalid(format!(
                "text and corpus '{corpus}' are both given: corpus names the embedded text analysed when no text is given; give one of them"
            ))),
            Some((text, source)) => Self::from_text(tokenizer, text, source),
            None => Self::from_text(tokenizer, corpus.text(), corpus.source()),
        }
    }
}
