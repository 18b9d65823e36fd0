//! `lipattn fixed-point`: infinitely deep weight-tied attention. Iterates T(X) = f(X) (plain),
//! (1 - beta) X + beta f(X) (damped) or U + f(X) (injected) in token space, or F(mu) in measure
//! space with exact W1 residuals, with Picard, Anderson and Broyden. Reports residual traces,
//! steps, the lowest-residual iterate and, when the layer is a certified contraction, the
//! a-priori and a-posteriori bounds; divergence is reported, never returned as a result.

use crate::dyn_source::{failure_json, solvers, SourceArgs};
use crate::plot::{residual_series, Chart};
use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use lipattn::dynamics::certify::{invariant_radius, row_bound, scaled};
use lipattn::dynamics::max_row_norm;
use lipattn::dynamics::{MeasureFixedPoint, SolveOptions, TokenFixedPoint, Variant};
use lipattn::{AttentionLayer, Kernel, Mat};
use serde_json::json;
use std::path::PathBuf;

#[derive(Clone, Copy, ValueEnum, PartialEq)]
pub enum Space {
    Tokens,
    Measure,
}

#[derive(Clone, Copy, ValueEnum, PartialEq)]
pub enum VariantArg {
    Plain,
    Damped,
    Injected,
}

#[derive(Args)]
pub struct FixedPointArgs {
    #[command(flatten)]
    source: SourceArgs,
    #[arg(long, value_enum, default_value = "tokens")]
    space: Space,
    /// Token space: plain X = f(X), damped X = (1 - beta) X + beta f(X), or injected
    /// X = U + f(X) with U the tokens.
    #[arg(long, value_enum, default_value = "plain")]
    variant: VariantArg,
    #[arg(long, default_value_t = 0.5)]
    beta: f64,
    /// Scale W_O and b_O so that the certified constant of T is at most this (< 1), by
    /// bisection on the scale; the layer is used as given otherwise.
    #[arg(long)]
    contract: Option<f64>,
    /// Dot-product layers: radius of the ball the certificate holds on (default: the larger of
    /// the smallest invariant one and the tokens' radius).
    #[arg(long)]
    radius: Option<f64>,
    /// picard, anderson, broyden or all.
    #[arg(long, default_value = "all")]
    solver: String,
    #[arg(long, default_value_t = 1e-10)]
    atol: f64,
    /// Also stop at residual <= rtol * size(T x) (0: off).
    #[arg(long, default_value_t = 0.0)]
    rtol: f64,
    #[arg(long, default_value_t = 500)]
    max_iter: usize,
    #[arg(long, default_value_t = 6)]
    anderson_memory: usize,
    #[arg(long, default_value_t = 1e-4)]
    anderson_reg: f64,
    /// Broyden: secant updates stored before a restart.
    #[arg(long, default_value_t = 30)]
    broyden_memory: usize,
    /// Write the first converged solver's fixed point (n, d) as float64 .npy.
    #[arg(long)]
    save: Option<PathBuf>,
    /// Write residual-trace plots (SVG and PNG) into this directory.
    #[arg(long)]
    plot: Option<PathBuf>,
    #[arg(long)]
    json: bool,
}

enum Problem {
    Tokens(TokenFixedPoint),
    Measure(MeasureFixedPoint),
}

impl Problem {
    fn contraction(&self) -> Option<f64> {
        match self {
            Problem::Tokens(p) => p.contraction,
            Problem::Measure(p) => p.contraction,
        }
    }
}

fn build(a: &FixedPointArgs, layer: AttentionLayer<f64>, x: &Mat<f64>) -> Result<Problem> {
    let n = x.nrows();
    // Every radius above the smallest invariant one is invariant too (m < 1); taking the larger
    // of it and the tokens' radius puts the start in the certified domain, which the a-priori
    // count needs.
    let radius = match (a.radius, layer.kernel) {
        (Some(r), _) => Some(r),
        (None, Kernel::Dot) => {
            let (m, b) = row_bound(&layer)?;
            let u = if a.space == Space::Tokens && a.variant == VariantArg::Injected {
                max_row_norm(x.as_ref())
            } else {
                0.0
            };
            invariant_radius(m, b, u).map(|r| r.max(max_row_norm(x.as_ref())))
        }
        (None, Kernel::L2) => None,
    };
    Ok(match a.space {
        Space::Tokens => {
            let variant = match a.variant {
                VariantArg::Plain => Variant::Plain,
                VariantArg::Damped => Variant::Damped { beta: a.beta },
                VariantArg::Injected => Variant::Injected { input: x.clone() },
            };
            Problem::Tokens(TokenFixedPoint::new(layer, n, variant, radius)?)
        }
        Space::Measure => {
            if a.variant != VariantArg::Plain {
                bail!("--space measure iterates mu = F(mu) only (variant plain)");
            }
            Problem::Measure(MeasureFixedPoint::new(
                layer,
                vec![1.0 / n as f64; n],
                radius,
            )?)
        }
    })
}

/// The largest scale s (bisection over 60 halvings) whose scaled layer has a certified
/// contraction constant <= c.
fn contract(
    a: &FixedPointArgs,
    layer: &AttentionLayer<f64>,
    x: &Mat<f64>,
    c: f64,
) -> Result<(f64, Problem)> {
    if !(c.is_finite() && c > 0.0 && c < 1.0) {
        bail!("--contract must lie in (0, 1), got {c}");
    }
    let ok = |s: f64| -> Result<Option<Problem>> {
        let p = build(a, scaled(layer, s), x)?;
        Ok(p.contraction().filter(|l| *l <= c).map(|_| p))
    };
    let mut hi = 1.0;
    while ok(hi)?.is_some() && hi < 1e12 {
        hi *= 2.0;
    }
    let mut lo = 0.0;
    let mut best = None;
    for _ in 0..60 {
        let mid = 0.5 * (lo + hi);
        match ok(mid)? {
            Some(p) => {
                lo = mid;
                best = Some(p);
            }
            None => hi = mid,
        }
    }
    match best {
        Some(p) => Ok((lo, p)),
        None => bail!("no scale makes the layer a certified contraction with constant <= {c}"),
    }
}

pub fn run(a: FixedPointArgs) -> Result<()> {
    let (layer, desc) = a.source.layer()?;
    let x = a.source.tokens(layer.d_in())?;
    let (scale, problem) = match a.contract {
        Some(c) => contract(&a, &layer, &x, c)?,
        None => (1.0, build(&a, layer, &x)?),
    };
    let opts = SolveOptions {
        atol: a.atol,
        rtol: a.rtol,
        max_evals: a.max_iter + 1,
        ..Default::default()
    };
    opts.check()?;
    let mut runs = vec![];
    let mut traces = vec![];
    let mut solutions: Vec<Mat<f64>> = vec![];
    let mut failed = false;
    for s in solvers(
        &a.solver,
        a.anderson_memory,
        a.anderson_reg,
        a.broyden_memory,
    )? {
        let res = match &problem {
            Problem::Tokens(p) => p.solve(x.as_ref(), &s, &opts),
            Problem::Measure(p) => p
                .solve(x.as_ref(), &s, &opts)
                .map(|(mu, sol)| (mu.points().to_owned(), sol)),
        };
        match res {
            Ok((xs, sol)) => {
                traces.push((s.name().to_string(), sol.abs_trace.clone()));
                let mut v = serde_json::to_value(&sol)?;
                v["status"] = json!("converged");
                v["steps"] = json!(sol.step);
                if solutions.is_empty() {
                    if let Some(p) = &a.save {
                        lipattn::npy::write_matrix(p, xs.as_ref())
                            .with_context(|| format!("writing --save {}", p.display()))?;
                    }
                } else {
                    v["distance_to_first"] =
                        json!(lipattn::dynamics::frobenius((&xs - &solutions[0]).as_ref()));
                }
                solutions.push(xs);
                runs.push(v);
            }
            Err(e @ lipattn::Error::NoConvergence { .. }) => {
                failed = true;
                runs.push(failure_json(s.name(), &e));
            }
            Err(e) => return Err(e.into()),
        }
    }
    let (space, metric, certificate, notes) = match &problem {
        Problem::Tokens(p) => (
            "tokens",
            "frobenius",
            serde_json::to_value(&p.layer_certificate)?,
            p.notes.clone(),
        ),
        Problem::Measure(p) => (
            "measure",
            "w1",
            serde_json::to_value(&p.certificate)?,
            p.notes.clone(),
        ),
    };
    if let Some(dir) = &a.plot {
        std::fs::create_dir_all(dir)?;
        let series = residual_series(&traces);
        Chart {
            title: format!("Fixed point in {space} space ({metric} residual)"),
            x_label: "iteration".into(),
            y_label: "residual d(x, T x)".into(),
            log_x: false,
            log_y: true,
            series,
            vlines: vec![],
        }
        .write(&dir.join("fixed_point_residuals"))?;
    }
    let out = json!({
        "command": "fixed-point",
        "space": space,
        "variant": match a.variant { VariantArg::Plain => "plain", VariantArg::Damped => "damped", VariantArg::Injected => "injected" },
        "metric": metric,
        "dtype": "f64",
        "n": x.nrows(),
        "d": x.ncols(),
        "layer": desc,
        "scale": scale,
        "certified_contraction": problem.contraction(),
        "layer_certificate": certificate,
        "notes": notes,
        "solvers": runs,
    });
    if a.json {
        println!("{out}");
    } else {
        println!("{}", serde_json::to_string_pretty(&out)?);
    }
    if failed {
        bail!("a solver did not converge (reported above, not a result)");
    }
    Ok(())
}
