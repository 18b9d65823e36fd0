//! `lipattn local`: the local constant ||J(X)||_2 of one layer's attention sublayer (or of one
//! head's contribution) at a given token sequence (the library's `ops::local`). An attained
//! value, hence a lower bound on the Lipschitz constant over any domain containing X, never a
//! certificate.

use crate::layer_arg::LayerArg;
use crate::names::named;
use crate::progress::Bar;
use anyhow::{Context, Result};
use clap::Args;
use lipattn::fmt::{compact, exact};
use lipattn::npy::read_matrix;
use lipattn::ops::local::{self, LocalDtype, LocalMethod, LocalRequest};
use serde_json::json;
use std::path::PathBuf;

#[derive(Args)]
pub struct LocalArgs {
    #[command(flatten)]
    target: LayerArg,
    /// Tokens X, an (n, d) float32 or float64 .npy array in C order (for a rotary model, token i
    /// at position i).
    #[arg(long)]
    tokens: PathBuf,
    /// Analyse head H's contribution W_O^h Gamma^h alone (no output bias).
    #[arg(long)]
    head: Option<usize>,
    /// Lanczos: requested relative accuracy of sigma (an estimate). Power iteration always uses
    /// the anchor's rule instead (Rayleigh quotient change below 1e-4, absolute).
    #[arg(long, default_value_t = LocalRequest::default().tol)]
    tol: f64,
    #[arg(long, value_parser = named::<LocalMethod>(), default_value_t = LocalRequest::default().method)]
    method: LocalMethod,
    /// Iteration cap (default 300 for Lanczos, 100 for power iteration).
    #[arg(long)]
    max_iter: Option<usize>,
    /// Seed of the random start vector.
    #[arg(long, default_value_t = LocalRequest::default().seed)]
    seed: u64,
    /// Arithmetic of the Lanczos iteration: f64, or f32 with the top vector refined in f64 (the
    /// reported sigma and its error estimate are the f64 ones).
    #[arg(long, value_parser = named::<LocalDtype>(), default_value_t = LocalRequest::default().dtype)]
    dtype: LocalDtype,
    /// Write the top right singular vector (n, d) as float64 .npy.
    #[arg(long)]
    save_vector: Option<PathBuf>,
    /// Print one JSON object instead of a summary.
    #[arg(long)]
    json: bool,
}

impl From<&LocalArgs> for LocalRequest {
    fn from(a: &LocalArgs) -> Self {
        Self {
            method: a.method,
            tol: a.tol,
            max_iter: a.max_iter,
            seed: a.seed,
            head: a.head,
            dtype: a.dtype,
        }
    }
}

pub fn run(a: LocalArgs) -> Result<()> {
    let save_vector = a
        .save_vector
        .as_deref()
        .map(lipattn::output::StagedFile::create)
        .transpose()?;
    // The operator the model computes, mask included (GPT-2 and the rotary families: causal).
    let (weights, source) = a.target.load_sublayer()?;
    let x = read_matrix(&a.tokens).context("reading --tokens")?;
    let bar = Bar::new(a.json);
    let report = local::run_sublayer(
        &LocalRequest::from(&a),
        &weights,
        &source,
        x.as_ref(),
        &mut |p| bar.update(p),
    )?;
    drop(bar);
    if let Some(f) = save_vector {
        report
            .result
            .save(None, Some(f.path()))
            .context("writing --save-vector")?;
        f.commit()?;
    }
    if a.json {
        let mut out = lipattn::ops::to_json(&report)?;
        out["layer"] = json!(a.target.layer);
        out["vector"] = json!(a.save_vector.as_ref().map(|p| p.display().to_string()));
        println!("{out}");
    } else {
        println!("operator: {}", report.operator.description);
        println!(
            "||J(X)||_2 >= {} (attained at X, n = {}, max row norm {}; Frobenius norms)",
            // The answer with every digit; the rest rounded for reading.
            exact(report.sigma),
            report.n,
            compact(report.radius)
        );
        println!(
            "{}: {} iterations, {}, estimated relative error {}, {:.3} s",
            report.method,
            report.iterations,
            if report.converged {
                "converged"
            } else {
                "NOT converged (iteration cap)"
            },
            compact(report.rel_error),
            report.seconds
        );
    }
    Ok(())
}
