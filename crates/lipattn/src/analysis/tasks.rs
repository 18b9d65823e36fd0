//! The analysis cut into independent tasks, one per (layer, n) of the plan, and their results
//! merged into the report [`analyze`](super::analyze) returns: for a cluster (the Python
//! package's `lipattn.cluster` runs the tasks as Ray tasks) or any other way of spreading work.
//!
//! Why (layer, n): every value of the report is computed at one layer and one n. The real-text
//! windows of length n depend on n only; their hidden states at layer l pass through blocks
//! 0..l-1 only; the adversarial direction and the transition geometry of a head depend on its
//! layer only; the sublayer's structured value at n is taken at the input of the best head at
//! that (layer, n), so the heads of one (layer, n) stay in one task; every Lanczos run has the
//! options' seed; certified bounds at one n are computed alone. What spans tasks is done at
//! merge time: the largest token norm per layer (the max over its tasks) and its radius check,
//! the notes, and the power-law fits over n. Merged in the plan's order, the report equals the
//! single-machine one value for value (only `seconds` differs: the merge reports the sum of the
//! tasks' seconds). docs/cluster.md describes the cut and its costs.
//!
//! A task result is serde JSON; f64 values survive the round trip exactly (serde_json's
//! `float_roundtrip`). Each carries a fingerprint of what its numbers depend on (the options,
//! the text's token ids, the model's shape), and [`merge`] refuses results of another sweep.

use super::adversarial_pass::adversarial_pass;
use super::certify::{certify, check_radius};
use super::plan::{frame, grid, plan};
use super::report::{report, Measured};
use super::request::AnalysisOptions;
use super::text::TextIds;
use super::text_pass::{text_pass, TextValues};
use super::ModelReport;
use crate::bounds::{Certified, CertifiedSummary};
use crate::error::{Error, Result};
use crate::models::Model;
use serde::{Deserialize, Serialize};
use std::time::Instant;

/// One unit of the analysis: every operator of layer `layer` at sequence length `n`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct AnalysisTask {
    pub layer: usize,
    pub n: usize,
}

/// What one task measured, in the order of the plan's operators (the sublayer, then each head).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TaskResult {
    pub task: AnalysisTask,
    /// Of the options, the text and the model's shape (see [`fingerprint`]).
    pub fingerprint: String,
    /// Largest token norm at the layer's attention input over this n's real-text windows (0
    /// without windows), or over those of every n computed with it by [`run_tasks`].
    pub observed_max_norm: f64,
    pub operators: Vec<TaskValues>,
    /// Wall time of the task (its share of a [`run_tasks`] call).
    pub seconds: f64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TaskValues {
    /// Attained at each real-text window of length n.
    pub text: Vec<f64>,
    pub adversarial: Option<f64>,
    pub transition: Option<f64>,
    pub certified: TaskCertified,
    /// The attention state its local constants ran on ("dense" or "streaming": `auto` resolves
    /// against the memory of the machine that ran the task).
    pub attention: String,
}

/// The best certified bounds ([`Certified`]) as a task result carries them.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct TaskCertified {
    pub frobenius: Option<f64>,
    pub w1: Option<f64>,
    pub w2: Option<f64>,
    pub anchor: Option<f64>,
    pub anchor_code: Option<f64>,
}

impl From<Certified> for TaskCertified {
    fn from(c: Certified) -> Self {
        Self {
            frobenius: c.frobenius,
            w1: c.w1,
            w2: c.w2,
            anchor: c.anchor,
            anchor_code: c.anchor_code,
        }
    }
}

impl From<TaskCertified> for Certified {
    fn from(c: TaskCertified) -> Self {
        Self {
            frobenius: c.frobenius,
            w1: c.w1,
            w2: c.w2,
            anchor: c.anchor,
            anchor_code: c.anchor_code,
        }
    }
}

/// The tasks of `analyze(model, text, opts)`, in merge order: layers ascending, then n
/// ascending. Checks the options as `analyze` does.
pub fn analysis_tasks(model: &Model, opts: &AnalysisOptions) -> Result<Vec<AnalysisTask>> {
    let embeddings = model.embeddings()?;
    let (ns, layers) = grid(model, &embeddings, opts)?;
    Ok(layers
        .iter()
        .flat_map(|&layer| ns.iter().map(move |&n| AnalysisTask { layer, n }))
        .collect())
}

/// FNV-1a, 64 bits: a fixed hash (std's hasher may change between Rust releases).
fn fnv1a(bytes: &[u8], mut h: u64) -> u64 {
    for &b in bytes {
        h ^= b as u64;
        h = h.wrapping_mul(0x100_0000_01b3);
    }
    h
}

/// Everything a task's numbers depend on besides the weights: the options as `analyze` reads
/// them (grid, windows, layers, heads, structured inputs, Lanczos), the text's token ids (not
/// its source, which only names it), and the model's family and shape.
pub fn fingerprint(model: &Model, text: Option<&TextIds>, opts: &AnalysisOptions) -> String {
    let mut ns = opts.ns.clone();
    ns.sort_unstable();
    ns.dedup();
    let layers = opts.layers.clone().map(|mut l| {
        l.sort_unstable();
        l.dedup();
        l
    });
    let text = text.map(|t| (&t.prefix, &t.body, &t.suffix));
    let key = format!(
        "lipattn-analysis-task-v1|{}|{}|{}|{:?}|{}|{:?}|{}|{}|{:016x}|{}|{}|{}|{:?}",
        model.family().name(),
        model.num_layers(),
        model.hidden_size(),
        ns,
        opts.windows,
        layers,
        opts.heads,
        opts.adversarial,
        opts.lanczos.tol.to_bits(),
        opts.lanczos.max_iter,
        opts.lanczos.seed,
        opts.attention.name(),
        text,
    );
    format!("{:016x}", fnv1a(key.as_bytes(), 0xcbf2_9ce4_8422_2325))
}

/// Runs one task of `analyze(model, text, opts)`: exactly the computations the whole analysis
/// does at (task.layer, task.n).
pub fn run_task(
    model: &Model,
    text: Option<&TextIds>,
    opts: &AnalysisOptions,
    task: AnalysisTask,
) -> Result<TaskResult> {
    let mut r = run_tasks(model, text, opts, task.layer, &[task.n])?;
    Ok(r.pop().expect("one result per n"))
}

/// Runs the tasks (layer, n) of `analyze(model, text, opts)` for every n of `ns` at once,
/// sharing what depends on the layer only (its weights, the heads' adversarial directions and
/// transition geometries: a few d x d eigendecompositions per head), and returns one result per
/// n, in the order of the sorted `ns`, each equal to `run_task`'s. The tasks' `seconds` share
/// the call's wall time equally; `observed_max_norm` is taken over the windows of all of `ns`
/// (the merge takes the maximum per layer).
pub fn run_tasks(
    model: &Model,
    text: Option<&TextIds>,
    opts: &AnalysisOptions,
    layer: usize,
    ns: &[usize],
) -> Result<Vec<TaskResult>> {
    let t0 = Instant::now();
    let in_plan = |n: &usize| {
        opts.ns.contains(n)
            && opts
                .layers
                .as_ref()
                .map_or(layer < model.num_layers(), |l| l.contains(&layer))
    };
    if ns.is_empty() || !ns.iter().all(in_plan) {
        return Err(Error::invalid(format!(
            "tasks (layer {layer}, n in {ns:?}) are not in the analysis plan (layers {:?}, ns {:?})",
            opts.layers, opts.ns
        )));
    }
    let some = AnalysisOptions {
        ns: ns.to_vec(),
        layers: Some(vec![layer]),
        ..opts.clone()
    };
    // Validates n against the position table and the layer against the model, as for analyze.
    let plan = plan(model, text, &some)?;
    let mut done = 0;
    let TextValues { sigma, observed } = text_pass(&plan, &some, &mut |_| {}, &mut done)?;
    let structured = adversarial_pass(&plan, &some, &mut |_| {}, &mut done)?;
    // The radius check needs the largest norm over every n: `merge` makes it.
    let certified = certify(&plan, false, &observed)?;
    let key = fingerprint(model, text, opts);
    let seconds = t0.elapsed().as_secs_f64() / plan.ns.len() as f64;
    Ok(plan
        .ns
        .iter()
        .enumerate()
        .map(|(ni, &n)| TaskResult {
            task: AnalysisTask { layer, n },
            fingerprint: key.clone(),
            observed_max_norm: observed[0],
            operators: (0..plan.n_ops())
                .map(|o| TaskValues {
                    text: sigma[0][o][ni].clone(),
                    adversarial: structured.construction[0][o][ni],
                    transition: structured.transition[0][o][ni],
                    certified: certified[0][o][ni].best.into(),
                    attention: plan.work[0].attention[o][ni].name().to_string(),
                })
                .collect(),
            seconds,
        })
        .collect())
}

/// The report of `analyze(model, text, opts)` from the results of all its tasks, in any order
/// (each exactly once, of this model, text and options). `seconds` of the report is the sum of
/// the tasks' seconds.
pub fn merge(
    model: &Model,
    text: Option<&TextIds>,
    opts: &AnalysisOptions,
    results: &[TaskResult],
) -> Result<ModelReport> {
    let tasks = analysis_tasks(model, opts)?;
    let mut frame = frame(model, text, opts)?;
    let key = fingerprint(model, text, opts);
    let (nl, nn) = (frame.layers.len(), frame.ns.len());
    let mut slots: Vec<Option<&TaskResult>> = vec![None; tasks.len()];
    for r in results {
        let Some(i) = tasks.iter().position(|t| *t == r.task) else {
            return Err(Error::invalid(format!(
                "task result (layer {}, n = {}) is not in the analysis plan",
                r.task.layer, r.task.n
            )));
        };
        if r.fingerprint != key {
            return Err(Error::invalid(format!(
                "task result (layer {}, n = {}) was computed with other options, text or model (fingerprint {} instead of {key})",
                r.task.layer, r.task.n, r.fingerprint
            )));
        }
        if slots[i].replace(r).is_some() {
            return Err(Error::invalid(format!(
                "task (layer {}, n = {}) given twice",
                r.task.layer, r.task.n
            )));
        }
    }
    let missing: Vec<String> = tasks
        .iter()
        .zip(&slots)
        .filter(|(_, s)| s.is_none())
        .map(|(t, _)| format!("(layer {}, n = {})", t.layer, t.n))
        .collect();
    if !missing.is_empty() {
        return Err(Error::invalid(format!(
            "{} of {} task results missing: {}",
            missing.len(),
            tasks.len(),
            missing.join(", ")
        )));
    }
    // tasks are layer-major: slot l * nn + ni holds (layer slot l, n index ni).
    let at = |l: usize, ni: usize| slots[l * nn + ni].expect("every task checked present");
    let n_ops = at(0, 0).operators.len();
    if let Some(r) = slots.iter().flatten().find(|r| r.operators.len() != n_ops) {
        return Err(Error::invalid(format!(
            "task result (layer {}, n = {}) has {} operators, another {n_ops}",
            r.task.layer,
            r.task.n,
            r.operators.len()
        )));
    }
    let per = |f: &dyn Fn(&TaskValues) -> Option<f64>| -> Vec<Vec<Vec<Option<f64>>>> {
        (0..nl)
            .map(|l| {
                (0..n_ops)
                    .map(|o| (0..nn).map(|ni| f(&at(l, ni).operators[o])).collect())
                    .collect()
            })
            .collect()
    };
    // The attention state each task ran on, not the one this machine would pick.
    for (l, layer) in frame.layers.iter_mut().enumerate() {
        for (o, per_n) in layer.attention.iter_mut().enumerate().take(n_ops) {
            for (ni, a) in per_n.iter_mut().enumerate() {
                *a = at(l, ni).operators[o].attention.parse()?;
            }
        }
    }
    let observed: Vec<f64> = (0..nl)
        .map(|l| (0..nn).fold(0.0f64, |m, ni| m.max(at(l, ni).observed_max_norm)))
        .collect();
    if text.is_some() {
        for (l, w) in frame.layers.iter().enumerate() {
            check_radius(w.index, w.radius, w.rotary.is_some(), observed[l])?;
        }
    }
    let sigma = (0..nl)
        .map(|l| {
            (0..n_ops)
                .map(|o| {
                    (0..nn)
                        .map(|ni| at(l, ni).operators[o].text.clone())
                        .collect()
                })
                .collect()
        })
        .collect();
    let certified = (0..nl)
        .map(|l| {
            (0..n_ops)
                .map(|o| {
                    (0..nn)
                        .map(|ni| CertifiedSummary {
                            best: at(l, ni).operators[o].certified.into(),
                            bounds: vec![],
                            notes: vec![],
                        })
                        .collect()
                })
                .collect()
        })
        .collect();
    let measured = Measured {
        text: TextValues { sigma, observed },
        adversarial: per(&|v| v.adversarial),
        transition: per(&|v| v.transition),
        certified,
    };
    let seconds = results.iter().map(|r| r.seconds).sum();
    Ok(report(model, text, opts, frame, &measured, seconds))
}
