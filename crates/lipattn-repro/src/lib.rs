//! The reproductions of docs/reproductions.md (the published numbers they test are in
//! docs/background.md#castin-et-al and #kim-et-al), one experiment per module, kept out of the
//! shipped commands' code path. Every "attained" number is a lower bound computed at a
//! concrete input; every "certified" number comes from `lipattn::bounds`.
//!
//! The crate computes and returns data: each figure's CSV text and plot description
//! ([`Figure`]), the JSON summary and the bound checks. Drawing and writing files belong to the
//! frontend (`lipattn reproduce`), so this crate has no plotting dependency.

pub mod anchor_estimator;
pub mod check;
pub mod figure;
pub mod fixtures;
pub mod l2_attention;
pub mod minilm_all_bounds;
pub mod minilm_ratios;
pub mod saturation;
mod setup;
mod stats;

pub use check::{Check, Witness};
pub use figure::{Curve, CurveKind, Figure, Plot};

use anyhow::Result;
use serde_json::{json, Value};
use std::path::PathBuf;

/// What to reproduce.
#[derive(Clone, Debug, Default)]
pub struct ReproduceRequest {
    /// MiniLM model directory for figures (c) and (d); both are skipped when None.
    pub model: Option<PathBuf>,
    /// Tiny configuration (for tests): few n, N and heads.
    pub quick: bool,
}

/// Everything but the figures, which went to the caller as they were finished.
#[derive(Clone, Debug)]
pub struct Reproduction {
    /// The JSON summary without its total `seconds` (the caller's wall time includes writing).
    pub summary: serde_json::Map<String, Value>,
    /// Every certified bound beside its attained value from figures (c) and (d).
    pub checks: Vec<Check>,
}

/// Runs every experiment in the order of docs/reproductions.md, handing each figure to `emit` as
/// soon as it is finished, so that a failure later on still leaves the earlier figures written.
pub fn run(
    request: &ReproduceRequest,
    emit: &mut dyn FnMut(&Figure) -> Result<()>,
) -> Result<Reproduction> {
    let quick = request.quick;
    let (figure, sat) = saturation::saturation(quick)?;
    emit(&figure)?;
    let (figure, l2) = l2_attention::l2_attention(quick)?;
    emit(&figure)?;
    let mut checks = Vec::new();
    let (minilm, all_bounds, anchor) = match &request.model {
        Some(dir) => {
            let t = std::time::Instant::now();
            refuse_rotary(dir)?;
            let full = lipattn::models::load_attention_layer(dir, 0)?;
            let t_load = t.elapsed().as_secs_f64();
            let (figure, mut c, checks_c) = minilm_ratios::minilm_ratios(&full, quick)?;
            emit(&figure)?;
            let t_c = t.elapsed().as_secs_f64();
            let (figure, mut d, checks_d) = minilm_all_bounds::minilm_all_bounds(&full, quick)?;
            emit(&figure)?;
            c["seconds"] = json!(t_c - t_load);
            d["seconds"] = json!(t.elapsed().as_secs_f64() - t_c);
            c["load_seconds"] = json!(t_load);
            checks.extend(checks_c);
            checks.extend(checks_d);
            let t_e = std::time::Instant::now();
            let (figure, mut e) = anchor_estimator::anchor_estimator(dir, quick)?;
            emit(&figure)?;
            e["seconds"] = json!(t_e.elapsed().as_secs_f64());
            (c, d, e)
        }
        None => {
            let why = "no --model and LIPATTN_MINILM unset";
            (
                json!({"figure": "minilm_ratios", "skipped": why}),
                json!({"figure": "minilm_all_bounds", "skipped": why}),
                json!({"figure": "anchor_estimator", "skipped": why}),
            )
        }
    };
    let mut summary = serde_json::Map::new();
    summary.insert("saturation".into(), sat);
    summary.insert("l2_attention".into(), l2);
    summary.insert("minilm_ratios".into(), minilm);
    summary.insert("minilm_all_bounds".into(), all_bounds);
    summary.insert("anchor_estimator".into(), anchor);
    summary.insert("quick".into(), json!(quick));
    Ok(Reproduction { summary, checks })
}

/// Figures (c) and (d) are the paper's measurements on MiniLM: B1-B4 for unrotated attention on
/// measures over B_R beside attained values. A rotary checkpoint computes another operator
/// (positions, causal mask, B7), so running them on it would reproduce nothing; the rotary
/// counterparts are other commands, which the error names.
fn refuse_rotary(dir: &std::path::Path) -> Result<()> {
    let model = lipattn::models::Model::open(dir)?;
    if model.family().is_rotary() {
        return Err(lipattn::Error::Option(format!(
            "{}: model_type '{}': `model` of reproduce is the paper's MiniLM (BERT family) experiment, figures (c) and (d): the bounds B1-B4 of unrotated attention on measures over B_R beside attained values; rotary attention is another operator (positions 0..n-1, causal mask, bound B7), so those figures do not apply to it. For this model run lipattn lipschitz --model DIR --layer L (B7 beside the attained search), lipattn local --model, or lipattn analyze",
            dir.display(),
            model.config().model_type
        ))
        .into());
    }
    Ok(())
}
