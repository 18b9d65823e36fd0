//! `lipattn invert`: a residual block y = x + g(x) whose attention branch g is scaled to a
//! certified Lipschitz constant c < 1, inverted by fixed-point iteration, Anderson and Broyden
//! (the library's `ops::invert`; this file reads the flags and renders the report).

use crate::dyn_source::{SolverArgs, SourceArgs};
use crate::progress::Bar;
use crate::solver_output::{plot_residuals, save_first};
use anyhow::{bail, Result};
use clap::Args;
use lipattn::dynamics::Branch;
use lipattn::fmt::compact;
use lipattn::ops::invert::{self, InvertInputs, InvertRequest};
use lipattn::ops::source::SourceRequest;
use lipattn::output::{StagedDir, StagedFile};
use std::path::PathBuf;

#[derive(Args)]
pub struct InvertArgs {
    #[command(flatten)]
    source: SourceArgs,
    /// Certified Lipschitz constant required of the branch g (0 < c < 1).
    #[arg(long, default_value_t = InvertRequest::default().c)]
    c: f64,
    /// Dot-product and rotary layers: radius R of the ball (B_R)^n the certificate holds on (default: the
    /// smallest tried radius, from 1.25 max |x_i| up, for which y provably has its preimage and
    /// every iterate in the ball).
    #[arg(long)]
    radius: Option<f64>,
    #[command(flatten)]
    solver: SolverArgs,
    #[arg(long, default_value_t = invert::DEFAULT_MAX_ITER)]
    max_iter: usize,
    /// Also compute log|det(I + J_g(x))| (exact for n d <= 4096, else the series estimator).
    #[arg(long)]
    logdet: bool,
    /// Probes of the series estimator (when n d > 4096, or with --logdet-series).
    #[arg(long, default_value_t = InvertRequest::default().probes)]
    probes: usize,
    /// Use the series estimator even where the exact value is affordable (and report both).
    #[arg(long)]
    logdet_series: bool,
    /// Certified bound on the series estimator's truncation error.
    #[arg(long, default_value_t = InvertRequest::default().truncation_tol)]
    truncation_tol: f64,
    /// Write the reconstructed tokens (n, d) as float64 .npy.
    #[arg(long)]
    save: Option<PathBuf>,
    /// Write residual-trace plots (SVG and PNG) into this directory.
    #[arg(long)]
    plot: Option<PathBuf>,
    #[arg(long)]
    json: bool,
}

impl From<&InvertArgs> for InvertRequest {
    fn from(a: &InvertArgs) -> Self {
        Self {
            c: a.c,
            radius: a.radius,
            solve: a
                .solver
                .request(a.max_iter, InvertRequest::default().solve.rtol),
            logdet: a.logdet,
            probes: a.probes,
            logdet_series: a.logdet_series,
            truncation_tol: a.truncation_tol,
            seed: a.source.seed,
        }
    }
}

pub fn run(a: InvertArgs) -> Result<()> {
    let save = a.save.as_deref().map(StagedFile::create).transpose()?;
    let plot = a.plot.as_deref().map(StagedDir::create).transpose()?;
    let source = SourceRequest::from(&a.source);
    let sourced = source.branch()?;
    let x = source.tokens(sourced.layer.d_in())?;
    let bar = Bar::new(a.json);
    let report = invert::run(
        &InvertRequest::from(&a),
        InvertInputs {
            layer: &sourced.layer,
            x: x.as_ref(),
            source: Some(sourced.description),
            origin: &sourced.origin,
        },
        &mut |p| bar.update(p),
    )?;
    drop(bar);
    save_first(save, &report.reconstructions)?;
    if let Some(dir) = plot {
        plot_residuals(
            dir,
            "invert_residuals",
            format!(
                "Inverting x + g(x) = y, certified Lip(g) <= {}",
                compact(report.certified_lipschitz)
            ),
            "residual |x + g(x) - y|_F",
            &report.traces(),
        )?;
    }
    let mut out = lipattn::ops::to_json(&report)?;
    out["command"] = "invert".into();
    if report.primary.is_none() {
        println!("{out}");
        bail!("no solver converged");
    }
    if a.json {
        println!("{out}");
    } else {
        println!("operator: {}", report.operator.description);
        println!(
            "g: certified Lip <= {}, attained at x {}; n = {}, d = {}",
            compact(report.certified_lipschitz),
            compact(report.attained_local_lipschitz),
            report.n,
            report.d
        );
        for r in &out["solvers"].as_array().cloned().unwrap_or_default() {
            println!("{r}");
        }
        if let Some(l) = &report.logdet {
            println!("logdet: {l}");
        }
    }
    if report.status != "converged" {
        bail!("a solver did not converge (reported above, not a result)");
    }
    Ok(())
}
