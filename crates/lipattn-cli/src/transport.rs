//! `lipattn transport`: optimal transport between two weighted point clouds stored as .npy
//! (the library's `ops::transport`; this file reads the files and renders the report).

use crate::names::named;
use crate::progress::Bar;
use anyhow::{Context, Result};
use clap::Args;
use lipattn::fmt::{compact, exact};
use lipattn::ops::transport::{self, TransportInputs, TransportMethod, TransportRequest};
use lipattn::{npy, Mat, Measure};
use std::path::{Path, PathBuf};

#[derive(Args, Debug)]
pub struct TransportArgs {
    /// Source atoms, an n x d (or length-n, read as d = 1) .npy array.
    pub a: PathBuf,
    /// Target atoms, an m x d (or length-m) .npy array.
    pub b: PathBuf,
    /// Source weights (length n); uniform if omitted.
    #[arg(long)]
    pub wa: Option<PathBuf>,
    /// Target weights (length m); uniform if omitted.
    #[arg(long)]
    pub wb: Option<PathBuf>,
    /// Rescale the given weights to sum to 1 instead of rejecting them.
    #[arg(long)]
    pub normalise: bool,
    /// Ground cost exponent: ||x - y||^p. 1 or 2 for exact and sinkhorn; any p >= 1 for sorted.
    #[arg(long, default_value_t = TransportRequest::default().p)]
    pub p: f64,
    /// A user cost matrix (n x m .npy) replacing ||x - y||^p (exact and sinkhorn).
    #[arg(long)]
    pub cost: Option<PathBuf>,
    /// exact: network simplex, with an optimality certificate; sorted: monotone coupling of
    /// sorted atoms (d = 1 only; any p >= 1); sinkhorn: entropic (log domain), needs --eps.
    #[arg(long, value_parser = named::<TransportMethod>(), default_value_t = TransportRequest::default().method)]
    pub method: TransportMethod,
    /// Entropic regularisation for sinkhorn, in cost units.
    #[arg(long)]
    pub eps: Option<f64>,
    /// Sinkhorn stopping tolerance on the L1 marginal error.
    #[arg(long, default_value_t = TransportRequest::default().tol)]
    pub tol: f64,
    /// Sinkhorn iteration limit.
    #[arg(long, default_value_t = TransportRequest::default().max_iter)]
    pub max_iter: usize,
    /// Print a Sinkhorn result that did not reach --tol (flagged "converged": false and in the
    /// summary) instead of failing.
    #[arg(long)]
    pub accept_unconverged: bool,
    /// Write the plan's nonzeros as a k x 3 .npy array of (i, j, mass).
    #[arg(long)]
    pub plan: Option<PathBuf>,
    /// Print one JSON object (otherwise a short human-readable summary).
    #[arg(long)]
    pub json: bool,
}

impl From<&TransportArgs> for TransportRequest {
    fn from(a: &TransportArgs) -> Self {
        Self {
            method: a.method,
            p: a.p,
            eps: a.eps,
            tol: a.tol,
            max_iter: a.max_iter,
            normalise: a.normalise,
            accept_unconverged: a.accept_unconverged,
        }
    }
}

/// An n x d array, or a vector read as n points in d = 1.
fn read_points(path: &Path) -> Result<Mat<f64>> {
    let arr = npy::read_npy(path)?;
    if arr.shape.len() == 1 {
        let v = arr.data;
        return Ok(Mat::from_fn(v.len(), 1, |i, _| v[i]));
    }
    Ok(npy::read_matrix(path)?)
}

fn measure(
    req: &TransportRequest,
    points: &Path,
    weights: Option<&PathBuf>,
    what: &str,
) -> Result<Measure> {
    let x = read_points(points).with_context(|| format!("reading the {what} points"))?;
    let w = weights
        .map(|w| npy::read_vector(w).with_context(|| format!("reading the {what} weights")))
        .transpose()?;
    req.measure(x, w)
        .with_context(|| format!("the {what} measure"))
}

pub fn run(args: TransportArgs) -> Result<()> {
    let req = TransportRequest::from(&args);
    let inputs = TransportInputs {
        source: measure(&req, &args.a, args.wa.as_ref(), "source")?,
        target: measure(&req, &args.b, args.wb.as_ref(), "target")?,
        cost: args
            .cost
            .as_ref()
            .map(|p| npy::read_matrix(p).context("reading the cost matrix"))
            .transpose()?,
    };
    if args.plan.is_some() && req.method == TransportMethod::Sinkhorn {
        anyhow::bail!("--plan is only available for the exact and sorted methods (the entropic plan is dense)");
    }
    let bar = Bar::new(args.json);
    let report = transport::run(&req, inputs, &mut |p| bar.update(p))?;
    drop(bar);
    if let Some(path) = &args.plan {
        let plan = report.plan.nonzeros();
        let mat = Mat::from_fn(plan.len(), 3, |k, c| match c {
            0 => plan[k].0 as f64,
            1 => plan[k].1 as f64,
            _ => plan[k].2,
        });
        npy::write_matrix(path, mat.as_ref()).context("writing the plan")?;
    }
    let out = lipattn::ops::to_json(&report)?;
    if args.json {
        println!("{out}");
    } else {
        let opt = |x: Option<f64>| x.map_or("none".to_string(), |v| compact(v).to_string());
        println!(
            "{} transport, n = {}, m = {}, d = {}: cost {} distance {} gap {} infeasibility {} ({} iterations, {:.3} s)",
            report.method.name(),
            report.n,
            report.m,
            report.d,
            // The answers with every digit; the certificate's residuals rounded for reading.
            exact(report.cost),
            exact(report.distance),
            opt(report.gap),
            opt(report.infeasibility),
            report.iterations,
            report.seconds
        );
        if !report.converged {
            println!(
                "NOT CONVERGED: the L1 marginal error {} is above --tol {}; this is the plan after --max-iter {} iterations, accepted by --accept-unconverged",
                compact(report.marginal_error),
                exact(args.tol),
                report.iterations
            );
        }
    }
    Ok(())
}
