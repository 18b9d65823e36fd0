//! One error type for the library: every failure names the offending input.

use std::path::PathBuf;

mod invalid;
pub use invalid::{
    as_option, check_at_least, check_in, check_index, check_nonnegative, check_positive,
    check_repeats, check_unsigned, check_work, unsigned_too_wide, Interval, Invalid, MAX_REPEATS,
    MAX_WORK,
};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{what}: value at index {index} is {} (NaN or infinite values are not accepted)", crate::fmt::exact(*value))]
    NonFinite {
        what: String,
        index: usize,
        value: f64,
    },
    #[error("{what}: expected shape {expected}, found {found}")]
    Shape {
        what: String,
        expected: String,
        found: String,
    },
    #[error("{what} is empty")]
    Empty { what: String },
    #[error("{what}: weight {index} is {}; weights must be positive", crate::fmt::exact(*value))]
    NegativeWeight {
        what: String,
        index: usize,
        value: f64,
    },
    // The sum is compared with 1 to within `tol`: only its exact digits show how far off it is.
    #[error("{what}: weights sum to {}, not 1 within tolerance {} (use the normalising constructor to rescale)", crate::fmt::exact(*sum), crate::fmt::compact(*tol))]
    NotNormalised { what: String, sum: f64, tol: f64 },
    /// An argument the operation cannot take; the frequent families are typed (`Invalid`).
    #[error("invalid argument: {0}")]
    Invalid(Invalid),
    /// A request's option out of range, unknown or inconsistent with another. Option names are
    /// written in backticks as the request's fields (`max_iter`), so that each frontend can
    /// render them in its own syntax (`--max-iter` in the CLI, `max_iter` in Python).
    #[error("{0}")]
    Option(String),
    #[error("numerical failure: {0}")]
    Numerical(String),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: malformed file: {msg}")]
    Format { path: PathBuf, msg: String },
    #[error("model: {0}")]
    Model(String),
    /// An iterative solver that diverged or ran out of steps: never a result. The residual trace
    /// and the lowest residual reached travel with the error for diagnosis.
    #[error("{solver}: no convergence ({reason}) after {steps} steps; lowest residual {} at step {best_step}", crate::fmt::compact(*best_residual))]
    NoConvergence {
        solver: String,
        reason: String,
        steps: usize,
        best_residual: f64,
        best_step: usize,
        residuals: Vec<f64>,
    },
    /// A request whose estimated memory exceeds the budget (`crate::budget`); `need` is None
    /// when the estimate itself overflows 64 bits.
    #[error("{what} needs {} of memory, above the budget of {} ({origin}); reduce the sizes or raise the budget (`max_memory`)", need.map_or("more than 18 EB".to_string(), crate::budget::human), crate::budget::human(*budget))]
    Budget {
        what: String,
        need: Option<u64>,
        budget: u64,
        origin: &'static str,
    },
    /// A request within the budget whose memory the system refused when it was reserved
    /// (`crate::budget::check` reserves large needs before the work allocates them).
    #[error("{what} needs {} of memory, which the system refused to allocate now (budget {}); free memory or reduce the sizes", crate::budget::human(*need), crate::budget::human(*budget))]
    OutOfMemory {
        what: String,
        need: u64,
        budget: u64,
    },
    /// The caller raised the cancellation flag of `crate::cancel` (e.g. Ctrl-C in Python).
    #[error("cancelled by the caller")]
    Cancelled,
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub fn shape(
        what: impl Into<String>,
        expected: impl Into<String>,
        found: impl Into<String>,
    ) -> Self {
        Error::Shape {
            what: what.into(),
            expected: expected.into(),
            found: found.into(),
        }
    }
}

/// An unknown name for an option that takes one of a few names.
pub fn unknown_name(option: &str, got: &str, expected: &[&str]) -> Error {
    let list = match expected {
        [] => String::new(),
        [one] => format!("'{one}'"),
        [init @ .., last] => format!(
            "{} or '{last}'",
            init.iter()
                .map(|e| format!("'{e}'"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    Error::Option(format!("unknown `{option}` '{got}' (expected {list})"))
}

/// Rejects NaN and infinities, naming the first offending index.
pub fn check_finite<T: Copy + Into<f64>>(
    what: &str,
    values: impl IntoIterator<Item = T>,
) -> Result<()> {
    for (index, v) in values.into_iter().enumerate() {
        let value: f64 = v.into();
        if !value.is_finite() {
            return Err(Error::NonFinite {
                what: what.to_string(),
                index,
                value,
            });
        }
    }
    Ok(())
}
