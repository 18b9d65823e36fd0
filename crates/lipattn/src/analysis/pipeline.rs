//! The stages of the analysis in order; each stage's file says what it decides or measures.

use super::adversarial_pass::adversarial_pass;
use super::certify::certify;
use super::memory::estimate;
use super::plan::plan;
use super::report::{report, Measured, ModelReport};
use super::request::{AnalysisOptions, Progress};
use super::text::TextIds;
use super::text_pass::text_pass;
use crate::error::Result;
use crate::models::Model;
use std::time::Instant;

/// Runs the analysis. `text` may be None (adversarial inputs and certified bounds only).
pub fn analyze(
    model: &Model,
    text: Option<&TextIds>,
    opts: &AnalysisOptions,
    progress: &mut dyn FnMut(&Progress),
) -> Result<ModelReport> {
    let t0 = Instant::now();
    let plan = plan(model, text, opts)?;
    let estimate = estimate(model, &plan, opts)?;
    progress(&Progress {
        done: 0,
        total: plan.total,
        stage: "estimate".into(),
        estimate: Some(estimate.clone()),
    });
    let mut done = 0;
    let text_values = text_pass(&plan, opts, progress, &mut done)?;
    let structured = adversarial_pass(&plan, opts, progress, &mut done)?;
    progress(&Progress {
        done,
        total: plan.total,
        stage: "certified bounds".into(),
        estimate: None,
    });
    let certified = certify(&plan, text.is_some(), &text_values.observed)?;
    let measured = Measured {
        text: text_values,
        adversarial: structured.construction,
        transition: structured.transition,
        certified,
    };
    let mut report = report(
        model,
        text,
        opts,
        plan.into_frame(),
        &measured,
        t0.elapsed().as_secs_f64(),
    );
    report.estimate = Some(estimate);
    Ok(report)
}
