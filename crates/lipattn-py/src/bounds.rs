//! Certified upper bounds and attained lower bounds, shaped as `lipattn lipschitz --json` prints
//! them so that a notebook and the CLI read the same keys.

use crate::convert::{json_to_py, to_numpy};
use crate::errors::{interruptible, IntoPyResult};
use crate::measure::PyMeasure;
use faer::Mat;
use lipattn::analysis::lipschitz::{
    certified_report, frobenius_domain, lipschitz as run_lipschitz, rotary_lipschitz,
    LipschitzOptions,
};
use lipattn::attention::RotaryAttention;
use lipattn::bounds::Domain;
use lipattn::estimation::{ascent as run_ascent, search_pairs as run_pairs};
use lipattn::estimation::{AscentOptions, PairSearchOptions};
use lipattn::{AttentionLayer, LayerSource, Operator};
use pyo3::prelude::*;
use pyo3::types::PyDict;
use std::sync::Arc;

pub fn certified_bounds<'py>(
    py: Python<'py>,
    layer: &AttentionLayer<f64>,
    origin: &LayerSource,
    radius: f64,
    n: usize,
    causal: Option<bool>,
) -> PyResult<Bound<'py, PyAny>> {
    let out = py
        .detach(|| certified_report(layer, origin, radius, n, causal))
        .py_err()?;
    json_to_py(py, &out)
}

pub fn lipschitz<'py>(
    py: Python<'py>,
    layer: Arc<AttentionLayer<f64>>,
    origin: LayerSource,
    opts: LipschitzOptions,
) -> PyResult<Bound<'py, PyAny>> {
    // The CLI's computation with the CLI's defaults (`lipattn::analysis::lipschitz`).
    let report = interruptible(py, move || run_lipschitz(&layer, &origin, &opts))?;
    let out = report.to_json();
    let (asc, pairs) = (report.ascent, report.pairs);
    let d = json_to_py(py, &out)?;
    let inputs = PyDict::new(py);
    inputs.set_item("frobenius_x", to_numpy(py, asc.x.as_ref()))?;
    inputs.set_item("frobenius_vector", to_numpy(py, asc.vector.as_ref()))?;
    if let Some(pairs) = pairs {
        inputs.set_item(
            "w1_mu",
            PyMeasure {
                inner: pairs.best.mu,
            },
        )?;
        inputs.set_item(
            "w1_nu",
            PyMeasure {
                inner: pairs.best.nu,
            },
        )?;
    }
    d.set_item("inputs", inputs)?;
    Ok(d)
}

/// `lipschitz` on a rotary sublayer (B7 beside the rotary ascent), with the input attaining the
/// Frobenius lower bound in ``inputs``.
pub fn rotary<'py>(
    py: Python<'py>,
    layer: RotaryAttention,
    family: &'static str,
    origin: LayerSource,
    opts: LipschitzOptions,
) -> PyResult<Bound<'py, PyAny>> {
    let report = interruptible(py, move || rotary_lipschitz(&layer, family, &origin, &opts))?;
    let d = json_to_py(py, &report.to_json())?;
    let inputs = PyDict::new(py);
    inputs.set_item("frobenius_x", to_numpy(py, report.ascent.x.as_ref()))?;
    inputs.set_item(
        "frobenius_vector",
        to_numpy(py, report.ascent.vector.as_ref()),
    )?;
    d.set_item("inputs", inputs)?;
    Ok(d)
}

pub fn ascent<'py>(
    py: Python<'py>,
    layer: Arc<AttentionLayer<f64>>,
    origin: &LayerSource,
    n: usize,
    start: Option<Mat<f64>>,
    opts: AscentOptions,
) -> PyResult<Bound<'py, PyDict>> {
    let (radius, causal) = (opts.radius, opts.causal);
    let kernel = layer.kernel;
    let r = interruptible(py, move || {
        run_ascent(&layer, n, start.as_ref().map(|s| s.as_ref()), &opts)
    })?;
    // The ascent checked the domain; this only names it.
    let domain = Domain::new(radius, n, causal).py_err()?;
    let operator = lipattn::ops::to_json(&Operator::token_map(origin, kernel, &domain)).py_err()?;
    let d = PyDict::new(py);
    d.set_item("operator", json_to_py(py, &operator)?)?;
    d.set_item("kind", "attained_lower_bound")?;
    d.set_item("sigma", r.sigma)?;
    d.set_item("x", to_numpy(py, r.x.as_ref()))?;
    d.set_item("vector", to_numpy(py, r.vector.as_ref()))?;
    d.set_item("construction_sigma", r.construction_sigma)?;
    d.set_item("construction_x", to_numpy(py, r.construction_x.as_ref()))?;
    d.set_item("best_start", r.best_start)?;
    d.set_item("evaluations", r.evaluations)?;
    d.set_item("radius", radius)?;
    d.set_item("n", n)?;
    d.set_item("causal", causal)?;
    d.set_item("domain", frobenius_domain(causal))?;
    Ok(d)
}

pub fn search_pairs<'py>(
    py: Python<'py>,
    layer: Arc<AttentionLayer<f64>>,
    opts: PairSearchOptions,
) -> PyResult<Bound<'py, PyDict>> {
    let radius = opts.radius;
    let r = interruptible(py, move || run_pairs(&layer, &opts))?;
    let d = PyDict::new(py);
    d.set_item("kind", "attained_lower_bound")?;
    d.set_item("ratio", r.best.ratio)?;
    d.set_item("w1_in", r.best.w1_in)?;
    d.set_item("w1_out", r.best.w1_out)?;
    d.set_item("mu", PyMeasure { inner: r.best.mu })?;
    d.set_item("nu", PyMeasure { inner: r.best.nu })?;
    d.set_item("phase", r.phase)?;
    d.set_item("evaluations", r.evaluations)?;
    d.set_item("phase_best", r.phase_best.to_vec())?;
    d.set_item("radius", radius)?;
    d.set_item(
        "domain",
        "F(mu) = (Gamma_mu)_# mu on probability measures supported in B_R, Wasserstein-1",
    )?;
    Ok(d)
}

/// The radius of the ball holding LayerNorm outputs with gain ``gamma`` and bias ``beta``.
#[pyfunction]
pub fn layer_norm_radius(gamma: &Bound<'_, PyAny>, beta: &Bound<'_, PyAny>) -> PyResult<f64> {
    let g = crate::convert::vector_f64(gamma, "LayerNorm gamma")?;
    let b = crate::convert::vector_f64(beta, "LayerNorm beta")?;
    lipattn::bounds::layer_norm::layer_norm_radius(&g, &b).py_err()
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(layer_norm_radius, m)?)
}
