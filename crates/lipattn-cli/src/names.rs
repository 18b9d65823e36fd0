//! The library's names as clap sees them: the accepted values of a named option come from
//! `Named::NAMES`, and option names in library messages are rendered as flags.

use clap::builder::{PossibleValuesParser, TypedValueParser};
use lipattn::names::Named;

/// A value parser listing and accepting exactly the library's names for `T`.
pub fn named<T: Named + std::str::FromStr<Err = lipattn::Error> + Send + Sync>(
) -> impl TypedValueParser<Value = T> {
    PossibleValuesParser::new(T::NAMES.iter().map(|(n, _)| *n)).try_map(|s| s.parse::<T>())
}

/// A library message with its option names (`max_iter`) written as flags (--max-iter).
pub fn flags_in(message: &str) -> String {
    let mut out = String::with_capacity(message.len() + 8);
    let mut parts = message.split('`');
    if let Some(first) = parts.next() {
        out.push_str(first);
    }
    for (k, part) in parts.enumerate() {
        if k % 2 == 0 {
            out.push_str("--");
            out.push_str(&part.replace('_', "-"));
        } else {
            out.push_str(part);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::flags_in;

    #[test]
    fn option_names_become_flags() {
        assert_eq!(
            flags_in("`method` sinkhorn needs `eps` and `max_iter`"),
            "--method sinkhorn needs --eps and --max-iter"
        );
        assert_eq!(flags_in("no option here"), "no option here");
    }
}
