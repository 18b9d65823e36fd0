//! `lipattn certify`: a local certificate on a ball around an input (the library's
//! `ops::certify`): the proven bound on sup ||J(Y)||_2 and on ||f(Y) - f(X)||_F over the ball,
//! beside the largest ||J(Y)||_2 that ascent finds there.

use crate::certificate_args::CertificateArgs;
use crate::names::named;
use crate::progress::Bar;
use crate::scope_input::ScopeInputArgs;
use anyhow::{Context, Result};
use clap::Args;
use lipattn::fmt::{compact, exact};
use lipattn::models::{Pool, Scope};
use lipattn::ops::certify::{self, CertifyRequest};
use serde_json::json;
use std::path::PathBuf;

#[derive(Args)]
pub struct CertifyArgs {
    #[command(flatten)]
    input: ScopeInputArgs,
    /// The map certified: attention (the sublayer), block or model.
    #[arg(long, value_parser = named::<Scope>(), default_value_t = CertifyRequest::default().scope)]
    scope: Scope,
    /// After --scope model: none, mean or mean-normalised (sentence embedding).
    #[arg(long, value_parser = named::<Pool>(), default_value_t = CertifyRequest::default().pool)]
    pool: Pool,
    /// Radius of the ball around X.
    #[arg(long)]
    epsilon: f64,
    #[command(flatten)]
    certificate: CertificateArgs,
    /// Random starts of the ascent inside the ball (besides X).
    #[arg(long, default_value_t = CertifyRequest::default().attack_starts)]
    attack_starts: usize,
    /// Ascent steps per start.
    #[arg(long, default_value_t = CertifyRequest::default().attack_steps)]
    attack_steps: usize,
    /// Relative accuracy of each local constant the ascent evaluates (an estimate).
    #[arg(long, default_value_t = CertifyRequest::default().tol)]
    tol: f64,
    #[arg(long, default_value_t = CertifyRequest::default().seed)]
    seed: u64,
    /// Write the input where the largest ||J(Y)||_2 was found (n, d) as float64 .npy.
    #[arg(long)]
    save_attained: Option<PathBuf>,
    /// Print one JSON object instead of a summary.
    #[arg(long)]
    json: bool,
}

impl From<&CertifyArgs> for CertifyRequest {
    fn from(a: &CertifyArgs) -> Self {
        Self {
            scope: a.scope,
            pool: a.pool,
            epsilon: a.epsilon,
            ball: a.certificate.ball,
            failure_probability: a.certificate.failure_probability,
            upper_steps: a.certificate.upper_steps,
            interval_steps: a.certificate.interval_steps,
            intervals: a.certificate.intervals,
            attack_starts: a.attack_starts,
            attack_steps: a.attack_steps,
            tol: a.tol,
            seed: a.seed,
            attention: a.certificate.attention,
        }
    }
}

pub fn run(a: CertifyArgs) -> Result<()> {
    let req = CertifyRequest::from(&a);
    req.check()?;
    let save = a
        .save_attained
        .as_deref()
        .map(lipattn::output::StagedFile::create)
        .transpose()?;
    let (model, layer, x) = a.input.load(a.scope, a.pool)?;
    let bar = Bar::new(a.json);
    let report = certify::run_model(&req, &model, layer, x.as_ref(), &mut |p| bar.update(p))?;
    drop(bar);
    if let Some(f) = save {
        lipattn::npy::write_matrix(f.path(), report.attained_input.as_ref())
            .context("writing --save-attained")?;
        f.commit()?;
    }
    if a.json {
        let mut out = lipattn::ops::to_json(&report)?;
        out["attained_input"] = json!(a.save_attained.as_ref().map(|p| p.display().to_string()));
        println!("{out}");
        return Ok(());
    }
    println!("operator: {}", report.description);
    println!(
        "sup ||J(Y)||_2 over the ball <= {} ({}, fails with probability <= {})",
        exact(report.certified),
        report.certified_kind,
        compact(report.failure_probability)
    );
    println!(
        "attained in the ball: {} (ascent, {} evaluations); ratio {}",
        exact(report.attained),
        report.attack_evaluations,
        compact(report.ratio)
    );
    println!(
        "||f(Y) - f(X)||_F <= {} for every Y in the ball (largest ||Y - X||_F {})",
        exact(report.output_change),
        compact(report.frobenius_radius)
    );
    let growth = match (&report.slope, &report.chain) {
        (Some(s), _) => format!("slope of J on the ball <= {} (Lemma S)", compact(s.value)),
        (_, Some(c)) => format!(
            "{} steps bounded one by one, {} Lemma P runs (Lemma C, intervals {})",
            c.steps.len(),
            c.runs.len(),
            report.intervals.map_or("none", |i| i.name())
        ),
        _ => String::new(),
    };
    println!(
        "at X: ||J(X)||_2 >= {} (Lanczos), <= {} (Lemma P); {growth}; {} attention state; {:.3} s",
        exact(report.centre_attained),
        exact(report.centre.value),
        report.attention.name(),
        report.seconds
    );
    Ok(())
}
