//! What is wrong with an invalid argument, as data: the families that recur across the library
//! (a size below its minimum, a step or radius that must be positive, an index past the end, a
//! value outside an interval) are typed, so that callers can match on them and every family is
//! worded once; the rest carry their message.
//!
//! The checks are written to fail closed: a NaN compares false with everything, so each one
//! states the condition that must hold and rejects whatever does not satisfy it.

use super::{Error, Result};
// Values the user gave are echoed with all their digits (docs of `crate::fmt`).
use crate::fmt::exact;
use std::fmt;

#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum Invalid {
    /// A size or count below the least value that makes sense (`n`, heads, memory, iterations).
    #[error("{what} must be at least {min}, got {got}{}", if *min == 1 { " (at least one is needed)" } else { "" })]
    TooSmall {
        what: String,
        min: usize,
        got: usize,
    },
    /// A count of full repetitions (random starts, probes, replicates) above [`MAX_REPEATS`].
    #[error("{what} must be at most {max}, got {got} (each one repeats a whole computation: a larger count is a run that cannot finish)")]
    TooMany {
        what: String,
        max: usize,
        got: usize,
    },
    /// A radius, tolerance or step that must be a positive finite number.
    #[error("{what} must be positive and finite, got {}", exact(*value))]
    NotPositive { what: String, value: f64 },
    /// A scale, time or tolerance that may be zero but must be finite and not negative.
    #[error("{what} must be finite and nonnegative, got {}", exact(*value))]
    Negative { what: String, value: f64 },
    /// A number outside the interval where it is meaningful (a contraction factor in (0, 1)).
    #[error("{what} must lie in {interval}, got {}", exact(*value))]
    OutsideInterval {
        what: String,
        interval: Interval,
        value: f64,
    },
    /// A head or layer index past the last one of its owner.
    #[error("{what} {index} out of range: {owner} has {count} {what}s{}", index_hint(*count))]
    IndexOutOfRange {
        what: &'static str,
        index: usize,
        count: usize,
        owner: String,
    },
    /// Any other inconsistency, in words.
    #[error("{0}")]
    Other(String),
}

/// A real interval with open or closed ends; `hi = None` is unbounded above.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Interval {
    pub lo: f64,
    pub lo_closed: bool,
    pub hi: Option<f64>,
    pub hi_closed: bool,
}

impl Interval {
    /// (lo, hi)
    pub const fn open(lo: f64, hi: f64) -> Self {
        Self {
            lo,
            lo_closed: false,
            hi: Some(hi),
            hi_closed: false,
        }
    }

    /// (lo, hi]
    pub const fn open_closed(lo: f64, hi: f64) -> Self {
        Self {
            lo,
            lo_closed: false,
            hi: Some(hi),
            hi_closed: true,
        }
    }

    /// (lo, infinity)
    pub const fn above(lo: f64) -> Self {
        Self {
            lo,
            lo_closed: false,
            hi: None,
            hi_closed: false,
        }
    }

    /// False for NaN, so that a NaN never passes.
    pub fn contains(&self, v: f64) -> bool {
        let above_lo = if self.lo_closed {
            v >= self.lo
        } else {
            v > self.lo
        };
        let below_hi = match self.hi {
            Some(hi) if self.hi_closed => v <= hi,
            Some(hi) => v < hi,
            None => v < f64::INFINITY,
        };
        above_lo && below_hi
    }
}

impl fmt::Display for Interval {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let open = if self.lo_closed { '[' } else { '(' };
        match self.hi {
            Some(hi) => {
                let close = if self.hi_closed { ']' } else { ')' };
                write!(f, "{open}{}, {}{close}", exact(self.lo), exact(hi))
            }
            None => write!(f, "{open}{}, inf)", exact(self.lo)),
        }
    }
}

fn index_hint(count: usize) -> String {
    if count > 0 {
        format!(" (0..={})", count - 1)
    } else {
        String::new()
    }
}

impl From<Invalid> for Error {
    fn from(e: Invalid) -> Self {
        Error::Invalid(e)
    }
}

impl Error {
    /// An invalid argument outside the typed families, in words.
    pub fn invalid(msg: impl Into<String>) -> Self {
        Error::Invalid(Invalid::Other(msg.into()))
    }
}

/// The same check for a request's option: an `Invalid` becomes `Error::Option`, so that the
/// frontends render the option's name (written in backticks in `what`) in their own syntax.
pub fn as_option<T>(checked: Result<T>) -> Result<T> {
    checked.map_err(|e| match e {
        Error::Invalid(i) => Error::Option(i.to_string()),
        other => other,
    })
}

/// `got >= min`, or `Invalid::TooSmall` naming `what`.
pub fn check_at_least(what: &str, got: usize, min: usize) -> Result<usize> {
    if got < min {
        return Err(Invalid::TooSmall {
            what: what.to_string(),
            min,
            got,
        }
        .into());
    }
    Ok(got)
}

/// An integer a frontend holds signed (Python's `int`) where the library takes an unsigned `T`
/// (a size, count, index or seed): a negative value, or one beyond `T`'s range, is refused
/// naming `what`, so that -1 is a bad argument like any other rather than an overflow.
pub fn check_unsigned<T: TryFrom<i128>>(what: &str, value: i128) -> Result<T> {
    if value < 0 {
        return Err(Error::invalid(format!(
            "{what} must be a nonnegative integer, got {value}"
        )));
    }
    T::try_from(value).map_err(|_| {
        Error::invalid(format!(
            "{what} = {value} is too large (at most {} bits, unsigned)",
            8 * std::mem::size_of::<T>()
        ))
    })
}

/// The error for an integer argument too wide for `i128` (Python's `int` has no bound), known by
/// its sign and bit length: worded as [`check_unsigned`] words a narrower one, without printing
/// hundreds of digits. Every such integer is out of range for an unsigned `T` of at most 64 bits.
pub fn unsigned_too_wide<T>(what: &str, negative: bool, bits: u64) -> Error {
    Error::invalid(if negative {
        format!("{what} must be a nonnegative integer, got a negative integer of {bits} bits")
    } else {
        format!(
            "{what} is too large: an integer of {bits} bits (at most {} bits, unsigned)",
            8 * std::mem::size_of::<T>()
        )
    })
}

/// The most full repetitions a count may ask for. Random starts, ascent steps, pair proposals,
/// probes and replicates each repeat a whole computation, and all but the ascent steps always
/// run to the count (those stop early only when a step fails to improve), so the time grows with
/// the count: 2^64 - 1 starts once ran until killed. A million is far above every default (2 to
/// 100) and above what any run finishes in practice.
pub const MAX_REPEATS: usize = 1_000_000;

/// The most whole evaluations counts may ask for together: each count may reach [`MAX_REPEATS`]
/// alone, but two nested ones (ascent starts and their steps, log-det probes and their series
/// terms) multiply, and 10^6 x 10^6 runs for days even on the smallest layer. 10^8 is above
/// every product of defaults by more than four orders of magnitude.
pub const MAX_WORK: u64 = 100_000_000;

/// The product of nested counts (`(name, count)`, outermost first) is at most [`MAX_WORK`], or an
/// error naming every count, their product and the cap.
pub fn check_work(counts: &[(&str, usize)]) -> Result<u64> {
    let product = counts
        .iter()
        .try_fold(1u64, |acc, &(_, c)| acc.checked_mul(c as u64));
    match product {
        Some(p) if p <= MAX_WORK => Ok(p),
        _ => {
            let names: Vec<String> = counts
                .iter()
                .map(|(name, c)| format!("{name} = {c}"))
                .collect();
            let total = product.map_or("more than 1.8e19".to_string(), |p| {
                crate::fmt::compact(p as f64).to_string()
            });
            Err(Error::invalid(format!(
                "{}: {total} evaluations in all, above the cap of {} (lower one of them)",
                names.join(" times "),
                crate::fmt::compact(MAX_WORK as f64)
            )))
        }
    }
}

/// `got <= MAX_REPEATS`, or `Invalid::TooMany` naming `what`.
pub fn check_repeats(what: &str, got: usize) -> Result<usize> {
    if got > MAX_REPEATS {
        return Err(Invalid::TooMany {
            what: what.to_string(),
            max: MAX_REPEATS,
            got,
        }
        .into());
    }
    Ok(got)
}

/// A positive finite number, or `Invalid::NotPositive` naming `what`.
pub fn check_positive(what: &str, value: f64) -> Result<f64> {
    if !(value.is_finite() && value > 0.0) {
        return Err(Invalid::NotPositive {
            what: what.to_string(),
            value,
        }
        .into());
    }
    Ok(value)
}

/// A finite number >= 0, or `Invalid::Negative` naming `what`.
pub fn check_nonnegative(what: &str, value: f64) -> Result<f64> {
    if !(value.is_finite() && value >= 0.0) {
        return Err(Invalid::Negative {
            what: what.to_string(),
            value,
        }
        .into());
    }
    Ok(value)
}

/// A number inside `interval`, or `Invalid::OutsideInterval` naming `what`.
pub fn check_in(what: &str, value: f64, interval: Interval) -> Result<f64> {
    if !interval.contains(value) {
        return Err(Invalid::OutsideInterval {
            what: what.to_string(),
            interval,
            value,
        }
        .into());
    }
    Ok(value)
}

/// `index < count`, or `Invalid::IndexOutOfRange`; `owner` says whose `what`s are counted
/// ("the layer", "the model in DIR").
pub fn check_index(
    what: &'static str,
    index: usize,
    count: usize,
    owner: impl FnOnce() -> String,
) -> Result<usize> {
    if index >= count {
        return Err(Invalid::IndexOutOfRange {
            what,
            index,
            count,
            owner: owner(),
        }
        .into());
    }
    Ok(index)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checks_fail_closed_on_nan() {
        assert!(check_positive("r", f64::NAN).is_err());
        assert!(check_nonnegative("t", f64::NAN).is_err());
        assert!(check_in("c", f64::NAN, Interval::open(0.0, 1.0)).is_err());
        assert!(check_in("c", f64::NAN, Interval::above(1.0)).is_err());
        assert!(check_in("c", f64::INFINITY, Interval::above(1.0)).is_err());
        assert!(check_positive("r", f64::INFINITY).is_err());
        assert!(check_nonnegative("t", -0.0).is_ok());
    }

    #[test]
    fn intervals_respect_their_ends() {
        let i = Interval::open_closed(0.0, 1.0);
        assert!(!i.contains(0.0) && i.contains(1.0) && i.contains(0.5) && !i.contains(1.5));
        assert_eq!(i.to_string(), "(0, 1]");
        assert_eq!(Interval::open(0.0, 1.0).to_string(), "(0, 1)");
        assert_eq!(Interval::above(1.0).to_string(), "(1, inf)");
    }

    #[test]
    fn messages_name_the_argument_and_the_value() {
        let e = check_at_least("sequence length n", 0, 1).unwrap_err();
        assert_eq!(
            e.to_string(),
            "invalid argument: sequence length n must be at least 1, got 0 (at least one is needed)"
        );
        assert!(matches!(
            e,
            Error::Invalid(Invalid::TooSmall { min: 1, got: 0, .. })
        ));
        let e = check_index("layer", 7, 6, || "the model in m".into()).unwrap_err();
        assert_eq!(
            e.to_string(),
            "invalid argument: layer 7 out of range: the model in m has 6 layers (0..=5)"
        );
        let e = check_in("c", 1.0, Interval::open(0.0, 1.0)).unwrap_err();
        assert_eq!(
            e.to_string(),
            "invalid argument: c must lie in (0, 1), got 1"
        );
        // An echoed value keeps its digits but never becomes a 301-digit decimal.
        let e = check_positive("radius", -1e300).unwrap_err();
        assert_eq!(
            e.to_string(),
            "invalid argument: radius must be positive and finite, got -1e300"
        );
        let e = check_unsigned::<usize>("n", -1).unwrap_err();
        assert_eq!(
            e.to_string(),
            "invalid argument: n must be a nonnegative integer, got -1"
        );
        assert_eq!(
            check_unsigned::<u64>("seed", u64::MAX.into()).unwrap(),
            u64::MAX
        );
        assert_eq!(
            check_work(&[("a", 10_000), ("b", 10_000)]).unwrap(),
            MAX_WORK
        );
        let e = check_work(&[("`starts`", 1_000_000), ("`steps`", 1_000_000)])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("`starts` = 1000000 times `steps` = 1000000: 1e12 evaluations")
                && e.contains("cap of 1e8"),
            "{e}"
        );
        let e = check_work(&[("a", usize::MAX), ("b", 3)])
            .unwrap_err()
            .to_string();
        assert!(e.contains("more than 1.8e19"), "{e}");
        let e = unsigned_too_wide::<u64>("seed", false, 300).to_string();
        assert!(
            e.contains("seed is too large") && e.contains("300 bits") && e.contains("64"),
            "{e}"
        );
        let e = unsigned_too_wide::<usize>("n", true, 200).to_string();
        assert!(e.contains("n must be a nonnegative integer"), "{e}");
        let e = check_unsigned::<u32>("p", 1 << 40).unwrap_err();
        assert!(
            e.to_string().contains("p = 1099511627776 is too large"),
            "{e}"
        );
        let e = check_in("c", 1.0 + 1e-15, Interval::open(0.0, 1.0)).unwrap_err();
        assert!(e.to_string().ends_with("got 1.000000000000001"), "{e}");
    }
}
