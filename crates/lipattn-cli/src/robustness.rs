//! `lipattn robustness`: the certified robustness radius of an input beside the attack radius
//! (the library's `ops::robustness`).

use crate::certificate_args::CertificateArgs;
use crate::names::named;
use crate::progress::Bar;
use crate::scope_input::ScopeInputArgs;
use anyhow::{Context, Result};
use clap::Args;
use lipattn::fmt::{compact, exact};
use lipattn::models::{Pool, Scope};
use lipattn::ops::robustness::{self, RobustnessRequest};
use serde_json::json;
use std::path::PathBuf;

#[derive(Args)]
pub struct RobustnessArgs {
    #[command(flatten)]
    input: ScopeInputArgs,
    /// The map: model (from the input embeddings), block, sublayer-residual-norm or attention.
    #[arg(long, value_parser = named::<Scope>(), default_value_t = RobustnessRequest::default().scope)]
    scope: Scope,
    /// After --scope model: none, mean or mean-normalised (sentence embedding).
    #[arg(long, value_parser = named::<Pool>(), default_value_t = RobustnessRequest::default().pool)]
    pool: Pool,
    /// Tolerance: the output must stay within this distance of f(X) (Frobenius).
    #[arg(long, required_unless_present = "cosine", conflicts_with = "cosine")]
    delta: Option<f64>,
    /// Tolerance: the pooled embedding must keep at least this cosine similarity with f(X).
    #[arg(long)]
    cosine: Option<f64>,
    #[command(flatten)]
    certificate: CertificateArgs,
    /// Random starts of the attack besides the two along X's top singular vector.
    #[arg(long, default_value_t = RobustnessRequest::default().attack_starts)]
    attack_starts: usize,
    /// Ascent steps per start and radius.
    #[arg(long, default_value_t = RobustnessRequest::default().attack_steps)]
    attack_steps: usize,
    #[arg(long, default_value_t = RobustnessRequest::default().seed)]
    seed: u64,
    /// Write the attack's input (n, d) as float64 .npy.
    #[arg(long)]
    save_attack: Option<PathBuf>,
    /// Print one JSON object instead of a summary.
    #[arg(long)]
    json: bool,
}

impl From<&RobustnessArgs> for RobustnessRequest {
    fn from(a: &RobustnessArgs) -> Self {
        Self {
            scope: a.scope,
            pool: a.pool,
            delta: a.delta,
            cosine: a.cosine,
            ball: a.certificate.ball,
            failure_probability: a.certificate.failure_probability,
            upper_steps: a.certificate.upper_steps,
            interval_steps: a.certificate.interval_steps,
            intervals: a.certificate.intervals,
            attack_starts: a.attack_starts,
            attack_steps: a.attack_steps,
            seed: a.seed,
            attention: a.certificate.attention,
        }
    }
}

pub fn run(a: RobustnessArgs) -> Result<()> {
    let req = RobustnessRequest::from(&a);
    req.check()?;
    let save = a
        .save_attack
        .as_deref()
        .map(lipattn::output::StagedFile::create)
        .transpose()?;
    let (model, layer, x) = a.input.load(a.scope, a.pool)?;
    let bar = Bar::new(a.json);
    let report = robustness::run(&req, &model, layer, x.as_ref(), &mut |p| bar.update(p))?;
    drop(bar);
    if let (Some(f), Some(y)) = (save, &report.attack_input) {
        lipattn::npy::write_matrix(f.path(), y.as_ref()).context("writing --save-attack")?;
        f.commit()?;
    }
    if a.json {
        let mut out = lipattn::ops::to_json(&report)?;
        out["attack_input"] = json!(report
            .attack_input
            .as_ref()
            .and(a.save_attack.as_ref())
            .map(|p| p.display().to_string()));
        println!("{out}");
        return Ok(());
    }
    println!("operator: {}", report.description);
    println!(
        "certified radius {} (||f(Y) - f(X)|| <= {} <= delta {}; {}, fails with probability <= {})",
        exact(report.certified_radius),
        compact(report.certified_change),
        compact(report.delta),
        report.certified_kind,
        compact(report.failure_probability)
    );
    match (report.attack_radius, report.ratio) {
        (Some(r), Some(q)) => println!(
            "attack radius {} (an input at that distance leaves the tolerance); ratio {}",
            exact(r),
            compact(q)
        ),
        _ => println!("the attack found no input leaving the tolerance"),
    }
    println!(
        "at X: ||J(X)||_2 >= {} (Lanczos), <= {} (Lemma P, intervals {}); {} attack evaluations; {} attention state; {:.3} s",
        exact(report.centre_attained),
        exact(report.centre_upper),
        report.intervals.name(),
        report.attack_evaluations,
        report.attention.name(),
        report.seconds
    );
    Ok(())
}
