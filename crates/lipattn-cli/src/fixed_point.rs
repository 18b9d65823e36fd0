//! `lipattn fixed-point`: infinitely deep weight-tied attention in token or measure space (the
//! library's `ops::fixed_point`; this file reads the flags and renders the report).

use crate::dyn_source::{SolverArgs, SourceArgs};
use crate::names::named;
use crate::progress::Bar;
use crate::solver_output::{plot_residuals, save_first};
use anyhow::{bail, Result};
use clap::Args;
use lipattn::dynamics::Branch;
use lipattn::ops::fixed_point::{self, FixedPointInputs, FixedPointRequest, Space, VariantName};
use lipattn::ops::source::SourceRequest;
use lipattn::output::{StagedDir, StagedFile};
use std::path::PathBuf;

#[derive(Args)]
pub struct FixedPointArgs {
    #[command(flatten)]
    source: SourceArgs,
    #[arg(long, value_parser = named::<Space>(), default_value_t = FixedPointRequest::default().space)]
    space: Space,
    /// Token space: plain X = f(X), damped X = (1 - beta) X + beta f(X), or injected
    /// X = U + f(X) with U the tokens.
    #[arg(long, value_parser = named::<VariantName>(), default_value_t = FixedPointRequest::default().variant)]
    variant: VariantName,
    #[arg(long, default_value_t = FixedPointRequest::default().beta)]
    beta: f64,
    /// Scale W_O and b_O so that the certified constant of T is at most this (< 1), by
    /// bisection on the scale; the layer is used as given otherwise.
    #[arg(long)]
    contract: Option<f64>,
    /// Dot-product and rotary layers: radius of the ball the certificate holds on (default: the larger of
    /// the smallest invariant one and the tokens' radius).
    #[arg(long)]
    radius: Option<f64>,
    #[command(flatten)]
    solver: SolverArgs,
    /// Also stop at residual <= rtol * size(T x) (0: off).
    #[arg(long, default_value_t = FixedPointRequest::default().solve.rtol)]
    rtol: f64,
    #[arg(long, default_value_t = fixed_point::DEFAULT_MAX_ITER)]
    max_iter: usize,
    /// Write the first converged solver's fixed point (n, d) as float64 .npy.
    #[arg(long)]
    save: Option<PathBuf>,
    /// Write residual-trace plots (SVG and PNG) into this directory.
    #[arg(long)]
    plot: Option<PathBuf>,
    #[arg(long)]
    json: bool,
}

impl From<&FixedPointArgs> for FixedPointRequest {
    fn from(a: &FixedPointArgs) -> Self {
        Self {
            space: a.space,
            variant: a.variant,
            beta: a.beta,
            contract: a.contract,
            radius: a.radius,
            solve: a.solver.request(a.max_iter, a.rtol),
        }
    }
}

pub fn run(a: FixedPointArgs) -> Result<()> {
    let save = a.save.as_deref().map(StagedFile::create).transpose()?;
    let plot = a.plot.as_deref().map(StagedDir::create).transpose()?;
    let source = SourceRequest::from(&a.source);
    let sourced = source.branch()?;
    let x = source.tokens(sourced.layer.d_in())?;
    let bar = Bar::new(a.json);
    let report = fixed_point::run(
        &FixedPointRequest::from(&a),
        FixedPointInputs {
            layer: &sourced.layer,
            x: x.as_ref(),
            input: None,
            weights: None,
            source: Some(sourced.description),
            origin: &sourced.origin,
        },
        &mut |p| bar.update(p),
    )?;
    drop(bar);
    save_first(save, &report.solutions)?;
    if let Some(dir) = plot {
        plot_residuals(
            dir,
            "fixed_point_residuals",
            format!(
                "Fixed point in {} space ({} residual)",
                report.space, report.metric
            ),
            "residual d(x, T x)",
            &report.traces(),
        )?;
    }
    let mut out = lipattn::ops::to_json(&report)?;
    out["command"] = "fixed-point".into();
    if a.json {
        println!("{out}");
    } else {
        println!("operator: {}", report.operator.description);
        println!("{}", serde_json::to_string_pretty(&out)?);
    }
    if report.status != "converged" {
        bail!("a solver did not converge (reported above, not a result)");
    }
    Ok(())
}
