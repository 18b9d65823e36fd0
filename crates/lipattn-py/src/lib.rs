//! Python bindings of lipattn: the extension module `lipattn._lipattn`, re-exported by the
//! pure-Python package `lipattn` (python/lipattn). NumPy arrays in and out; every library error
//! becomes a Python exception; long computations run without the GIL.
//!
//! One file per library area. A new area of the core (the model analysis and the dynamics, in
//! progress on other branches) gets its own file here with a `register` function, one line in
//! `_lipattn` below, its names in python/lipattn/__init__.py and its stubs in
//! python/lipattn/_lipattn.pyi; docs/python.md says how.

mod analysis;
mod bounds;
mod budget;
mod convert;
mod dynamics;
mod errors;
mod ints;
mod layer;
mod local;
mod measure;
mod model;
mod rotary;
mod tensors;
mod transport;

use pyo3::prelude::*;

#[pymodule]
fn _lipattn(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    errors::register(m)?;
    convert::register(m)?;
    budget::register(m)?;
    measure::register(m)?;
    layer::register(m)?;
    local::register(m)?;
    bounds::register(m)?;
    transport::register(m)?;
    model::register(m)?;
    rotary::register(m)?;
    dynamics::register(m)?;
    Ok(())
}
