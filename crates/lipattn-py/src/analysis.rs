//! `Model.analyze`: the whole-model analysis behind `lipattn analyze`, returned as the plain
//! dict the CLI prints with `--json` (the same serde serialisation, so the keys cannot drift);
//! and the same analysis cut into (layer, n) tasks, run one at a time and merged
//! (`lipattn::analysis::tasks`), for lipattn.cluster.

use crate::convert::json_to_py;
use crate::errors::interruptible;
use lipattn::analysis::{
    analysis_tasks, analyze, merge, run_task, run_tasks, AnalysisOptions, AnalysisTask, Corpus,
    TaskResult, TextIds,
};
use lipattn::derivatives::AttentionMemory;
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
    pub attention: AttentionMemory,
    /// The embedded text analysed when `text` is None.
    pub corpus: Corpus,
}

impl Request {
    // Options the Python analysis does not take keep the library's defaults (the update may
    // set nothing, while every option is taken).
    #[allow(clippy::needless_update)]
    fn options(&self) -> PyResult<AnalysisOptions> {
        // Lanczos would not reject a bad tolerance itself; checked before any work is done.
        if !(self.tol.is_finite() && self.tol > 0.0) {
            return Err(PyValueError::new_err(format!(
                "tol must be positive and finite, got {}",
                self.tol
            )));
        }
        Ok(AnalysisOptions {
            ns: self.ns.clone(),
            windows: self.windows,
            layers: self.layers.clone(),
            heads: self.heads,
            adversarial: self.adversarial,
            lanczos: LanczosOptions {
                tol: self.tol,
                ..AnalysisOptions::default().lanczos
            },
            attention: self.attention,
            ..AnalysisOptions::default()
        })
    }
}

/// The caller's text (named `source` in the report, by default CALLER_TEXT_SOURCE), or the
/// embedded `corpus`, as the model's token ids.
fn text_ids(
    tokenizer: &TextTokenizer,
    text: Option<&str>,
    source: Option<&str>,
    corpus: Corpus,
) -> Result<TextIds, Error> {
    let text = text.map(|t| (t, source.unwrap_or(CALLER_TEXT_SOURCE)));
    TextIds::from_text_or_corpus(tokenizer, text, corpus)
}

fn to_json<T: serde::Serialize>(v: &T, what: &str) -> Result<serde_json::Value, Error> {
    serde_json::to_value(v).map_err(|e| Error::Numerical(format!("serialising the {what}: {e}")))
}

pub fn run<'py>(
    py: Python<'py>,
    model: Arc<Model>,
    tokenizer: Arc<TextTokenizer>,
    r: Request,
) -> PyResult<Bound<'py, PyAny>> {
    let opts = r.options()?;
    let (text, corpus) = (r.text, r.corpus);
    let report = interruptible(py, move || {
        let ids = text_ids(&tokenizer, text.as_deref(), None, corpus)?;
        let report = analyze(&model, Some(&ids), &opts, &mut |_| {})?;
        to_json(&report, "report")
    })?;
    json_to_py(py, &report)
}

/// The (layer, n) tasks of the analysis, in merge order.
pub fn tasks(py: Python<'_>, model: Arc<Model>, r: Request) -> PyResult<Vec<(usize, usize)>> {
    let opts = r.options()?;
    let tasks = interruptible(py, move || analysis_tasks(&model, &opts))?;
    Ok(tasks.into_iter().map(|t| (t.layer, t.n)).collect())
}

/// One task's result as its JSON text (what lipattn.cluster checkpoints and merges).
pub fn run_one(
    py: Python<'_>,
    model: Arc<Model>,
    tokenizer: Arc<TextTokenizer>,
    r: Request,
    task: AnalysisTask,
) -> PyResult<String> {
    let opts = r.options()?;
    let (text, corpus) = (r.text, r.corpus);
    interruptible(py, move || {
        let ids = text_ids(&tokenizer, text.as_deref(), None, corpus)?;
        let result = run_task(&model, Some(&ids), &opts, task)?;
        serde_json::to_string(&result)
            .map_err(|e| Error::Numerical(format!("serialising the task result: {e}")))
    })
}

/// The tasks (layer, n) for every n of `ns` in one run sharing the layer's setup
/// (`lipattn::analysis::run_tasks`): their results as JSON texts, n ascending.
pub fn run_layer(
    py: Python<'_>,
    model: Arc<Model>,
    tokenizer: Arc<TextTokenizer>,
    r: Request,
    layer: usize,
    ns: Vec<usize>,
) -> PyResult<Vec<String>> {
    let opts = r.options()?;
    let (text, corpus) = (r.text, r.corpus);
    interruptible(py, move || {
        let ids = text_ids(&tokenizer, text.as_deref(), None, corpus)?;
        run_tasks(&model, Some(&ids), &opts, layer, &ns)?
            .iter()
            .map(|result| {
                serde_json::to_string(result)
                    .map_err(|e| Error::Numerical(format!("serialising the task result: {e}")))
            })
            .collect()
    })
}

/// The report of all task results (JSON texts), as `run` returns it; `text_source` names the
/// caller's text in the report.
pub fn merge_results<'py>(
    py: Python<'py>,
    model: Arc<Model>,
    tokenizer: Arc<TextTokenizer>,
    r: Request,
    results: Vec<String>,
    text_source: Option<String>,
) -> PyResult<Bound<'py, PyAny>> {
    let opts = r.options()?;
    let (text, corpus) = (r.text, r.corpus);
    let report = interruptible(py, move || {
        let parsed: Vec<TaskResult> = results
            .iter()
            .enumerate()
            .map(|(i, s)| {
                serde_json::from_str(s).map_err(|e| {
                    Error::invalid(format!("result {i} is not an analysis task result: {e}"))
                })
            })
            .collect::<Result<_, Error>>()?;
        let ids = text_ids(&tokenizer, text.as_deref(), text_source.as_deref(), corpus)?;
        let report = merge(&model, Some(&ids), &opts, &parsed)?;
        to_json(&report, "report")
    })?;
    json_to_py(py, &report)
}
