//! Integer parameters. pyo3 extracts a `usize` or `u64` from -1 as an OverflowError that names
//! no parameter; docs/python.md promises a ValueError. So every integer parameter is taken as
//! Python gives it ([`PyInt`]: any int, negative or wider than a machine word included) and
//! converted at the top of the function with [`unsigned!`], through the library's one check
//! (`lipattn::error::check_unsigned`), whose message names the parameter.

use crate::errors::IntoPyResult;
use pyo3::exceptions::PyOverflowError;
use pyo3::prelude::*;

/// A Python `int` argument of any size. Wider than `i128` only its sign and bit length are
/// kept: no unsigned parameter can hold it, so they are all the refusal needs.
#[derive(Clone, Copy, Debug)]
pub enum PyInt {
    Fits(i128),
    Wide { negative: bool, bits: u64 },
}

impl PyInt {
    /// Library defaults as the argument type, for `#[pyo3(signature)]` defaults.
    pub fn all(values: &[usize]) -> Vec<PyInt> {
        values.iter().map(|&v| PyInt::Fits(v as i128)).collect()
    }
}

impl<'a, 'py> FromPyObject<'a, 'py> for PyInt {
    type Error = PyErr;

    fn extract(ob: Borrowed<'a, 'py, PyAny>) -> PyResult<Self> {
        match ob.extract::<i128>() {
            Ok(v) => Ok(PyInt::Fits(v)),
            Err(e) if e.is_instance_of::<PyOverflowError>(ob.py()) => {
                let negative = ob.lt(0)?;
                let bits = ob.call_method0("bit_length")?.extract::<u64>()?;
                Ok(PyInt::Wide { negative, bits })
            }
            Err(e) => Err(e),
        }
    }
}

/// A Python integer argument (or an optional one, or a sequence of them) as the library's
/// unsigned type.
pub trait Unsigned<T> {
    fn unsigned(self, name: &str) -> PyResult<T>;
}

impl<T: TryFrom<i128>> Unsigned<T> for PyInt {
    fn unsigned(self, name: &str) -> PyResult<T> {
        match self {
            PyInt::Fits(v) => lipattn::error::check_unsigned(name, v).py_err(),
            PyInt::Wide { negative, bits } => {
                Err(lipattn::error::unsigned_too_wide::<T>(name, negative, bits)).py_err()
            }
        }
    }
}

impl<T: TryFrom<i128>> Unsigned<Option<T>> for Option<PyInt> {
    fn unsigned(self, name: &str) -> PyResult<Option<T>> {
        self.map(|v| v.unsigned(name)).transpose()
    }
}

/// Each entry is named by its index: `ns[2] must be a nonnegative integer, got -1`.
impl<T: TryFrom<i128>> Unsigned<Vec<T>> for Vec<PyInt> {
    fn unsigned(self, name: &str) -> PyResult<Vec<T>> {
        self.into_iter()
            .enumerate()
            .map(|(i, v)| v.unsigned(&format!("{name}[{i}]")))
            .collect()
    }
}

impl<T: TryFrom<i128>> Unsigned<Option<Vec<T>>> for Option<Vec<PyInt>> {
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
