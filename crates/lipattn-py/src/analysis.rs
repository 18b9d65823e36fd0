//! `Model.analyze`: the whole-model analysis behind `lipattn analyze`, returned as the plain
//! dict the CLI prints with `--json` (the same serde serialisation, so the keys cannot drift).

use crate::convert::json_to_py;
use crate::errors::interruptible;
use lipattn::analysis::{analyze, AnalysisOptions, TextIds, DEFAULT_TEXT, DEFAULT_TEXT_SOURCE};
use lipattn::estimation::LanczosOptions;
use lipattn::models::{Model, TextTokenizer};
use lipattn::Error;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use std::sync::Arc;

/// Names the caller's text in the report (the CLI names its --text file there).
const CALLER_TEXT_SOURCE: &str = "text given by the caller";

pub struct Request {
    pub text: Option<String>,
    pub ns: Vec<usize>,
    pub windows: usize,
    pub layers: Option<Vec<usize>>,
    pub heads: bool,
    pub adversarial: bool,
    pub tol: f64,
}

pub fn run<'py>(
    py: Python<'py>,
    model: Arc<Model>,
    tokenizer: Arc<TextTokenizer>,
    r: Request,
) -> PyResult<Bound<'py, PyAny>> {
    // Lanczos would not reject a bad tolerance itself; checked before any work is done.
    if !(r.tol.is_finite() && r.tol > 0.0) {
        return Err(PyValueError::new_err(format!(
            "tol must be positive and finite, got {}",
            r.tol
        )));
    }
    let opts = AnalysisOptions {
        ns: r.ns,
        windows: r.windows,
        layers: r.layers,
        heads: r.heads,
        adversarial: r.adversarial,
        lanczos: LanczosOptions {
            tol: r.tol,
            ..AnalysisOptions::default().lanczos
        },
        ..AnalysisOptions::default()
    };
    let text = r.text;
    let report = interruptible(py, move || {
        let ids = match &text {
            Some(t) => TextIds::from_text(&tokenizer, t, CALLER_TEXT_SOURCE)?,
            None => TextIds::from_text(&tokenizer, DEFAULT_TEXT, DEFAULT_TEXT_SOURCE)?,
        };
        let report = analyze(&model, Some(&ids), &opts, &mut |_| {})?;
        serde_json::to_value(&report)
            .map_err(|e| Error::Numerical(format!("serialising the report: {e}")))
    })?;
    json_to_py(py, &report)
}
