//! Integer parameters. pyo3 extracts a `usize` or `u64` from -1 as an OverflowError that names
//! no parameter; docs/python.md promises a ValueError. So every integer parameter is taken as
//! Python gives it (`i128`: any int a machine word can hold, negative included) and converted
//! at the top of the function with [`unsigned!`], through the library's one check
//! (`lipattn::error::check_unsigned`), whose message names the parameter.

use crate::errors::IntoPyResult;
use pyo3::PyResult;

/// A Python integer argument (or an optional one, or a sequence of them) as the library's
/// unsigned type.
pub trait Unsigned<T> {
    fn unsigned(self, name: &str) -> PyResult<T>;
}

impl<T: TryFrom<i128>> Unsigned<T> for i128 {
    fn unsigned(self, name: &str) -> PyResult<T> {
        lipattn::error::check_unsigned(name, self).py_err()
    }
}

impl<T: TryFrom<i128>> Unsigned<Option<T>> for Option<i128> {
    fn unsigned(self, name: &str) -> PyResult<Option<T>> {
        self.map(|v| v.unsigned(name)).transpose()
    }
}

/// Each entry is named by its index: `ns[2] must be a nonnegative integer, got -1`.
impl<T: TryFrom<i128>> Unsigned<Vec<T>> for Vec<i128> {
    fn unsigned(self, name: &str) -> PyResult<Vec<T>> {
        self.into_iter()
            .enumerate()
            .map(|(i, v)| v.unsigned(&format!("{name}[{i}]")))
            .collect()
    }
}

impl<T: TryFrom<i128>> Unsigned<Option<Vec<T>>> for Option<Vec<i128>> {
    fn unsigned(self, name: &str) -> PyResult<Option<Vec<T>>> {
        self.map(|v| v.unsigned(name)).transpose()
    }
}

/// `unsigned!(n, d)` rebinds each parameter to its unsigned value, named as the parameter is
/// (`stringify!`, so the name in the message cannot drift from the signature).
macro_rules! unsigned {
    ($($p:ident),+ $(,)?) => {
        $(let $p = $crate::ints::Unsigned::unsigned($p, stringify!($p))?;)+
    };
}
pub(crate) use unsigned;
