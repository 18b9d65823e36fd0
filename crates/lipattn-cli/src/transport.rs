//! `lipattn transport`: optimal transport between two weighted point clouds stored as .npy.

use anyhow::{bail, Context};
use clap::{Args, ValueEnum};
use lipattn::transport::{self, CostMatrix, SinkhornOptions};
use lipattn::{npy, Measure};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::time::Instant;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Method {
    /// Network simplex, with an optimality certificate.
    Exact,
    /// Monotone coupling of sorted atoms (d = 1 only; any p >= 1).
    Sorted,
    /// Entropic transport (log-domain Sinkhorn); needs --eps.
    Sinkhorn,
}

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
    #[arg(long, default_value_t = 1.0)]
    pub p: f64,
    /// A user cost matrix (n x m .npy) replacing ||x - y||^p (exact and sinkhorn).
    #[arg(long)]
    pub cost: Option<PathBuf>,
    #[arg(long, value_enum, default_value_t = Method::Exact)]
    pub method: Method,
    /// Entropic regularisation for sinkhorn, in cost units.
    #[arg(long)]
    pub eps: Option<f64>,
    /// Sinkhorn stopping tolerance on the L1 marginal error.
    #[arg(long, default_value_t = 1e-9)]
    pub tol: f64,
    /// Sinkhorn iteration limit.
    #[arg(long, default_value_t = 10_000)]
    pub max_iter: usize,
    /// Write the plan's nonzeros as a k x 3 .npy array of (i, j, mass).
    #[arg(long)]
    pub plan: Option<PathBuf>,
    /// Print one JSON object (otherwise a short human-readable summary).
    #[arg(long)]
    pub json: bool,
}

fn read_points(path: &Path) -> anyhow::Result<lipattn::Mat<f64>> {
    let arr = npy::read_npy(path)?;
    if arr.shape.len() == 1 {
        let v = arr.data;
        return Ok(lipattn::Mat::from_fn(v.len(), 1, |i, _| v[i]));
    }
    Ok(npy::read_matrix(path)?)
}

fn measure(
    points: &Path,
    weights: Option<&PathBuf>,
    normalise: bool,
    what: &str,
) -> anyhow::Result<Measure> {
    let x = read_points(points).with_context(|| format!("reading the {what} points"))?;
    let m = match weights {
        None => Measure::uniform(x),
        Some(w) => {
            let w = npy::read_vector(w).with_context(|| format!("reading the {what} weights"))?;
            if normalise {
                Measure::normalised(x, w)
            } else {
                Measure::new(x, w)
            }
        }
    };
    m.with_context(|| format!("the {what} measure"))
}

fn integer_p(p: f64) -> anyhow::Result<u32> {
    if p == 1.0 || p == 2.0 {
        Ok(p as u32)
    } else {
        bail!("--p {p} is not supported by this method: use 1 or 2 (or --method sorted for other p >= 1 in d = 1)")
    }
}

pub fn run(args: TransportArgs) -> anyhow::Result<()> {
    let start = Instant::now();
    let a = measure(&args.a, args.wa.as_ref(), args.normalise, "source")?;
    let b = measure(&args.b, args.wb.as_ref(), args.normalise, "target")?;
    let user_cost = match &args.cost {
        None => None,
        Some(path) => {
            if args.method == Method::Sorted {
                bail!("--cost cannot be used with --method sorted (its cost is |x - y|^p on the line)");
            }
            let c = npy::read_matrix(path).context("reading the cost matrix")?;
            if c.nrows() != a.len() || c.ncols() != b.len() {
                bail!(
                    "cost matrix is {} x {}, expected {} x {} (source atoms x target atoms)",
                    c.nrows(),
                    c.ncols(),
                    a.len(),
                    b.len()
                );
            }
            Some(CostMatrix::from_mat(c.as_ref())?)
        }
    };
    if args.eps.is_some() && args.method != Method::Sinkhorn {
        bail!("--eps only applies to --method sinkhorn");
    }
    let (n, m, d) = (a.len(), b.len(), a.dim());
    let mut out =
        json!({ "method": format!("{:?}", args.method).to_lowercase(), "n": n, "m": m, "d": d });
    let plan = match args.method {
        Method::Exact | Method::Sorted => {
            let t = match (args.method, &user_cost) {
                (Method::Sorted, _) => transport::sorted_1d(&a, &b, args.p)?,
                (_, Some(c)) => transport::exact_with_cost_matrix(a.weights(), b.weights(), c)?,
                (_, None) => transport::exact(&a, &b, integer_p(args.p)?)?,
            };
            let o = out.as_object_mut().expect("object");
            o.insert("p".into(), json!(t.p));
            o.insert("cost".into(), json!(t.cost));
            o.insert("distance".into(), json!(t.distance));
            o.insert("gap".into(), json!(t.gap));
            o.insert("relative_gap".into(), json!(t.relative_gap));
            o.insert("infeasibility".into(), json!(t.infeasibility));
            o.insert("marginal_error".into(), json!(t.marginal_error));
            o.insert("iterations".into(), json!(t.iterations));
            o.insert("plan_nonzeros".into(), json!(t.plan.len()));
            o.insert("solver_seconds".into(), json!(t.seconds));
            Some(t.plan)
        }
        Method::Sinkhorn => {
            let Some(eps) = args.eps else {
                bail!("--method sinkhorn needs --eps (the entropic regularisation, in cost units)");
            };
            let opts = SinkhornOptions {
                eps,
                tol: args.tol,
                max_iter: args.max_iter,
            };
            let e = match &user_cost {
                Some(c) => transport::sinkhorn_with_cost(a.weights(), b.weights(), c, &opts)?,
                None => transport::sinkhorn(&a, &b, integer_p(args.p)?, &opts)?,
            };
            let o = out.as_object_mut().expect("object");
            o.insert("p".into(), json!(e.p));
            o.insert("eps".into(), json!(e.eps));
            o.insert("cost".into(), json!(e.cost));
            o.insert("distance".into(), json!(e.distance));
            // No exactness claim for an entropic plan: no gap or dual infeasibility.
            o.insert("gap".into(), json!(null));
            o.insert("infeasibility".into(), json!(null));
            o.insert("marginal_error".into(), json!(e.marginal_error));
            o.insert("converged".into(), json!(e.converged));
            o.insert("iterations".into(), json!(e.iterations));
            o.insert("solver_seconds".into(), json!(e.seconds));
            None
        }
    };
    if let Some(path) = &args.plan {
        let Some(plan) = &plan else {
            bail!("--plan is only available for the exact and sorted methods (the entropic plan is dense)");
        };
        let mat = lipattn::Mat::from_fn(plan.len(), 3, |k, c| match c {
            0 => plan[k].0 as f64,
            1 => plan[k].1 as f64,
            _ => plan[k].2,
        });
        npy::write_matrix(path, mat.as_ref()).context("writing the plan")?;
    }
    out.as_object_mut()
        .expect("object")
        .insert("seconds".into(), json!(start.elapsed().as_secs_f64()));
    if args.json {
        println!("{out}");
    } else {
        let g = |k: &str| out.get(k).cloned().unwrap_or_default();
        println!(
            "{} transport, n = {n}, m = {m}, d = {d}: cost {} distance {} gap {} infeasibility {} ({} iterations, {:.3} s)",
            g("method"),
            g("cost"),
            g("distance"),
            g("gap"),
            g("infeasibility"),
            g("iterations"),
            start.elapsed().as_secs_f64()
        );
    }
    Ok(())
}
