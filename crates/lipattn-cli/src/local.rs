//! `lipattn local`: the local constant ||J(X)||_2 of one layer's attention sublayer (or of one
//! head's contribution) at a given token sequence. An attained value, hence a lower bound on the
//! Lipschitz constant over any domain containing X, never a certificate.

use crate::layer_arg::LayerArg;
use anyhow::{Context, Result};
use clap::{Args, ValueEnum};
use lipattn::estimation::{local_norm, LanczosOptions, Method, PowerOptions};
use lipattn::npy::read_matrix;
use serde_json::json;
use std::path::PathBuf;

#[derive(Clone, Copy, ValueEnum)]
pub enum MethodArg {
    Lanczos,
    Power,
}

#[derive(Args)]
pub struct LocalArgs {
    #[command(flatten)]
    target: LayerArg,
    /// Tokens X, an (n, d) float32 or float64 .npy array in C order.
    #[arg(long)]
    tokens: PathBuf,
    /// Analyse head H's contribution W_O^h Gamma^h alone (no output bias).
    #[arg(long)]
    head: Option<usize>,
    /// Lanczos: requested relative accuracy of sigma (an estimate). Power iteration always uses
    /// the anchor's rule instead (Rayleigh quotient change below 1e-4, absolute).
    #[arg(long, default_value_t = 1e-6)]
    tol: f64,
    #[arg(long, value_enum, default_value = "lanczos")]
    method: MethodArg,
    /// Iteration cap (default 300 for Lanczos, 100 for power iteration).
    #[arg(long)]
    max_iter: Option<usize>,
    /// Seed of the random start vector.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Write the top right singular vector (n, d) as float64 .npy.
    #[arg(long)]
    save_vector: Option<PathBuf>,
    /// Print one JSON object instead of a summary.
    #[arg(long)]
    json: bool,
}

pub fn run(a: LocalArgs) -> Result<()> {
    // GPT-2-family layers are causal: analyse the operator the model computes.
    let (full, causal) = a.target.load()?;
    let layer = match a.head {
        Some(h) => full.head(h, false)?,
        None => full,
    };
    let x = read_matrix(&a.tokens).context("reading --tokens")?;
    let method = match a.method {
        MethodArg::Lanczos => Method::Lanczos(LanczosOptions {
            tol: a.tol,
            max_iter: a.max_iter.unwrap_or(300),
            seed: a.seed,
        }),
        MethodArg::Power => Method::Power(PowerOptions {
            max_iter: a.max_iter.unwrap_or(100),
            seed: a.seed,
            ..Default::default()
        }),
    };
    let res = local_norm(&layer, x.as_ref(), None, causal, &method)?;
    if let Some(p) = &a.save_vector {
        res.save(None, Some(p))
            .with_context(|| format!("writing --save-vector {}", p.display()))?;
    }
    let n = x.nrows();
    let radius = (0..n)
        .map(|i| {
            (0..x.ncols())
                .map(|k| x[(i, k)].powi(2))
                .sum::<f64>()
                .sqrt()
        })
        .fold(0.0, f64::max);
    let t = &res.top;
    if a.json {
        let out = json!({
            "kind": "attained_lower_bound",
            "quantity": "local_lipschitz",
            "sigma": t.sigma,
            "rel_error": t.rel_error,
            "rel_error_is": "estimate",
            "converged": t.converged,
            "iterations": t.iterations,
            "seconds": res.seconds,
            "method": res.method,
            "tol": if matches!(a.method, MethodArg::Lanczos) { json!(a.tol) } else { json!(null) },
            "norm": "frobenius",
            "n": n,
            "d": x.ncols(),
            "d_out": layer.d_out(),
            "radius": radius,
            "dtype": "f64",
            "layer": a.target.layer,
            "head": a.head,
            "causal": causal,
            "weights": "uniform",
            "vector": a.save_vector.as_ref().map(|p| p.display().to_string()),
        });
        println!("{out}");
    } else {
        let what = match a.head {
            Some(h) => format!("layer {} head {h}", a.target.layer),
            None => format!("layer {} attention sublayer", a.target.layer),
        };
        println!(
            "{what}: ||J(X)||_2 >= {:.10e} (attained at X, n = {n}, max row norm {radius:.6}; Frobenius norms)",
            t.sigma
        );
        println!(
            "{}: {} iterations, {}, estimated relative error {:.1e}, {:.3} s",
            res.method,
            t.iterations,
            if t.converged {
                "converged"
            } else {
                "NOT converged (iteration cap)"
            },
            t.rel_error,
            res.seconds
        );
    }
    Ok(())
}
