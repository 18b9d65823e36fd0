//! Where a text may be cut without changing its tokens before the cut, so that `--max-tokens`
//! tokenises a prefix instead of the whole text (docs/reliability.md#tokenising-stops-at-max-tokens).
//!
//! A cut at byte `i` is safe when (1) the normaliser maps each character on its own (BERT's,
//! lower-casing, Unicode normal forms: none composes a character with a following ASCII space or
//! punctuation mark), (2) the pre-tokenizer never forms a piece that spans `i`, and (3) no added
//! token (`[MASK]`, `<|endoftext|>`) occurs across `i`. Then the pieces before `i` are those of
//! the prefix, and the model (WordPiece, BPE) works piece by piece, so the prefix's tokens are
//! the first tokens of the whole text.
//!
//! (2) holds for these pre-tokenizers, with `c` the character before `i` and `a` the one at `i`:
//! - BERT's (splits at whitespace and at every punctuation character), GPT-2's byte-level regex
//!   (`'s|'t|..| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+`: no alternative that starts at
//!   a non-space extends over a space, and `\p{L}+`, `\p{N}+` end before punctuation) and
//!   `Whitespace` (`\w+|[^\w\s]+`): `a` ASCII whitespace and `c` not whitespace, or `c` an ASCII
//!   letter or digit and `a` ASCII punctuation other than `_` (a word character of `\w`);
//! - `WhitespaceSplit`: `a` ASCII whitespace and `c` not whitespace;
//! - a sequence: the rule of its first member, whose pieces the later members only subdivide;
//! - any other pre-tokenizer (or GPT-2's without its regex): no cut; the whole text is tokenised.

use tokenizers::normalizers::NormalizerWrapper;
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::Tokenizer;

#[derive(Clone, Copy, PartialEq, Debug)]
pub(super) enum Rule {
    /// Before ASCII whitespace, or between an ASCII letter/digit and ASCII punctuation.
    WordEnds,
    /// Before ASCII whitespace only.
    Whitespace,
    /// Nowhere.
    None,
}

pub struct Cuts {
    pub(super) rule: Rule,
    /// Added tokens' contents, ASCII lower-cased (normalised ones match lower-cased text).
    added: Vec<Vec<u8>>,
}

fn normaliser_is_local(n: &NormalizerWrapper) -> bool {
    use NormalizerWrapper as N;
    match n {
        N::BertNormalizer(_)
        | N::Lowercase(_)
        | N::NFC(_)
        | N::NFD(_)
        | N::NFKC(_)
        | N::NFKD(_)
        | N::StripAccents(_)
        | N::StripNormalizer(_)
        | N::Prepend(_)
        | N::ByteLevel(_) => true,
        N::Sequence(s) => s.as_ref().iter().all(normaliser_is_local),
        N::Nmt(_) | N::Precompiled(_) | N::Replace(_) => false,
    }
}

fn pre_tokenizer_rule(p: &PreTokenizerWrapper) -> Rule {
    use PreTokenizerWrapper as P;
    match p {
        P::BertPreTokenizer(_) | P::Whitespace(_) => Rule::WordEnds,
        P::ByteLevel(b) if b.use_regex => Rule::WordEnds,
        P::WhitespaceSplit(_) => Rule::Whitespace,
        P::Sequence(s) => s.as_ref().first().map_or(Rule::None, pre_tokenizer_rule),
        _ => Rule::None,
    }
}

impl Cuts {
    pub fn of(tok: &Tokenizer) -> Cuts {
        let local = tok.get_normalizer().is_none_or(normaliser_is_local);
        let rule = match tok.get_pre_tokenizer() {
            Some(p) if local => pre_tokenizer_rule(p),
            _ => Rule::None,
        };
        let added = tok
            .get_added_tokens_decoder()
            .values()
            .map(|t| t.content.to_ascii_lowercase().into_bytes())
            .filter(|c| !c.is_empty())
            .collect();
        Cuts { rule, added }
    }

    /// The first safe cut at or after byte `from`, strictly inside the text.
    pub fn next(&self, text: &str, from: usize) -> Option<usize> {
        if self.rule == Rule::None {
            return None;
        }
        let bytes = text.as_bytes();
        (from.max(1)..bytes.len()).find(|&i| self.is_cut(text, i))
    }

    fn is_cut(&self, text: &str, i: usize) -> bool {
        let a = text.as_bytes()[i];
        if !a.is_ascii() {
            return false;
        }
        let Some(c) = text[..i].chars().next_back() else {
            return false;
        };
        let ok = (a.is_ascii_whitespace() && !c.is_whitespace())
            || (self.rule == Rule::WordEnds
                && c.is_ascii_alphanumeric()
                && a.is_ascii_punctuation()
                && a != b'_');
        ok && !self.added_across(text.as_bytes(), i)
    }

    /// Whether an added token occurs in `bytes` starting before `i` and ending after it.
    fn added_across(&self, bytes: &[u8], i: usize) -> bool {
        self.added.iter().any(|t| {
            let lo = (i + 1).saturating_sub(t.len());
            let hi = (i + t.len() - 1).min(bytes.len());
            bytes[lo..hi]
                .windows(t.len())
                .enumerate()
                .any(|(k, w)| lo + k < i && w.eq_ignore_ascii_case(t))
        })
    }
}
