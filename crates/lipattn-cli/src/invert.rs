//! `lipattn invert`: a residual block y = x + g(x) whose attention branch g is scaled to a
//! certified Lipschitz constant c < 1, inverted by fixed-point iteration, Anderson and Broyden,
//! with the certified a-priori step count and a-posteriori error bound beside the measured
//! residual and reconstruction error.

use crate::dyn_source::{failure_json, solvers, SourceArgs};
use crate::plot::{residual_series, Chart};
use anyhow::{bail, Context, Result};
use clap::Args;
use lipattn::dynamics::logdet::{logdet_exact, logdet_series, EXACT_MAX_DIM};
use lipattn::dynamics::{frobenius, max_row_norm, InvertibleBlock, SolveOptions};
use lipattn::estimation::{local_norm, LanczosOptions, Method};
use lipattn::{Kernel, Mat};
use serde_json::json;
use std::path::PathBuf;

#[derive(Args)]
pub struct InvertArgs {
    #[command(flatten)]
    source: SourceArgs,
    /// Certified Lipschitz constant required of the branch g (0 < c < 1).
    #[arg(long, default_value_t = 0.9)]
    c: f64,
    /// Dot-product layers: radius R of the ball (B_R)^n the certificate holds on (default: the
    /// smallest tried radius, from 1.25 max |x_i| up, for which y provably has its preimage and
    /// every iterate in the ball).
    #[arg(long)]
    radius: Option<f64>,
    /// picard, anderson, broyden or all.
    #[arg(long, default_value = "all")]
    solver: String,
    /// Stop at residual |x + g(x) - y|_F <= atol.
    #[arg(long, default_value_t = 1e-10)]
    atol: f64,
    #[arg(long, default_value_t = 1000)]
    max_iter: usize,
    #[arg(long, default_value_t = 6)]
    anderson_memory: usize,
    #[arg(long, default_value_t = 1e-4)]
    anderson_reg: f64,
    /// Broyden: secant updates stored before a restart.
    #[arg(long, default_value_t = 30)]
    broyden_memory: usize,
    /// Also compute log|det(I + J_g(x))| (exact for n d <= 4096, else the series estimator).
    #[arg(long)]
    logdet: bool,
    /// Probes of the series estimator (when n d > 4096, or with --logdet-series).
    #[arg(long, default_value_t = 16)]
    probes: usize,
    /// Use the series estimator even where the exact value is affordable (and report both).
    #[arg(long)]
    logdet_series: bool,
    /// Write the reconstructed tokens (n, d) as float64 .npy.
    #[arg(long)]
    save: Option<PathBuf>,
    /// Write residual-trace plots (SVG and PNG) into this directory.
    #[arg(long)]
    plot: Option<PathBuf>,
    #[arg(long)]
    json: bool,
}

fn block_for(
    layer: &lipattn::AttentionLayer<f64>,
    x: &Mat<f64>,
    c: f64,
    radius: Option<f64>,
) -> Result<(InvertibleBlock, Mat<f64>)> {
    let n = x.nrows();
    if layer.kernel == Kernel::L2 {
        if radius.is_some() {
            bail!("--radius applies to dot-product layers only (tied L2 is certified on all of R^(n x d))");
        }
        let b = InvertibleBlock::new(layer, n, c, None)?;
        let y = b.forward(x.as_ref())?;
        return Ok((b, y));
    }
    let mut r = match radius {
        Some(r) => r,
        None => 1.25 * max_row_norm(x.as_ref()).max(1e-3),
    };
    for _ in 0..40 {
        let b = InvertibleBlock::new(layer, n, c, Some(r))?;
        let y = b.forward(x.as_ref())?;
        if b.inverse_problem(y.as_ref()).is_ok() {
            return Ok((b, y));
        }
        if radius.is_some() {
            bail!("with --radius {r}, y = x + g(x) lies outside the range where the inverse is certified; choose a larger radius");
        }
        r *= 1.5;
    }
    bail!("found no radius for which the inverse is certified")
}

pub fn run(a: InvertArgs) -> Result<()> {
    let (layer, desc) = a.source.layer()?;
    let x = a.source.tokens(layer.d_in())?;
    let (block, y) = block_for(&layer, &x, a.c, a.radius)?;
    let opts = SolveOptions {
        atol: a.atol,
        max_evals: a.max_iter + 1,
        ..Default::default()
    };
    opts.check()?;
    let mut runs = vec![];
    let mut traces = vec![];
    let mut primary = None;
    let mut failed = false;
    for s in solvers(
        &a.solver,
        a.anderson_memory,
        a.anderson_reg,
        a.broyden_memory,
    )? {
        match block.inverse(y.as_ref(), &s, &opts) {
            Ok(inv) => {
                let rec = frobenius((&inv.x - &x).as_ref());
                traces.push((s.name().to_string(), inv.abs_trace.clone()));
                let mut v = serde_json::to_value(&inv)?;
                v["status"] = json!("converged");
                v["reconstruction_error"] = json!(rec);
                if primary.is_none() {
                    if let Some(p) = &a.save {
                        lipattn::npy::write_matrix(p, inv.x.as_ref())
                            .with_context(|| format!("writing --save {}", p.display()))?;
                    }
                    primary = Some((inv, rec));
                }
                runs.push(v);
            }
            Err(e @ lipattn::Error::NoConvergence { .. }) => {
                failed = true;
                runs.push(failure_json(s.name(), &e));
            }
            Err(e) => return Err(e.into()),
        }
    }
    let local = local_norm(
        &block.g,
        x.as_ref(),
        None,
        false,
        &Method::Lanczos(LanczosOptions::default()),
    )?;
    let (n, d) = (x.nrows(), x.ncols());
    let logdet = if a.logdet || a.logdet_series {
        let mut out = json!({});
        if n * d <= EXACT_MAX_DIM {
            out["exact"] = serde_json::to_value(logdet_exact(&block.g, x.as_ref())?)?;
        }
        if n * d > EXACT_MAX_DIM || a.logdet_series {
            out["series"] = serde_json::to_value(logdet_series(
                &block.g,
                x.as_ref(),
                block.certificate.constant,
                1e-3,
                a.probes,
                a.source.seed,
            )?)?;
            out["series_error_is"] =
                json!("truncation_bound certified; std_error an estimate of the statistical error");
        }
        Some(out)
    } else {
        None
    };
    if let Some(dir) = &a.plot {
        std::fs::create_dir_all(dir)?;
        let series = residual_series(&traces);
        Chart {
            title: format!(
                "Inverting x + g(x) = y, certified Lip(g) <= {:.3}",
                block.certificate.constant
            ),
            x_label: "iteration".into(),
            y_label: "residual |x + g(x) - y|_F".into(),
            log_x: false,
            log_y: true,
            series,
            vlines: vec![],
        }
        .write(&dir.join("invert_residuals"))?;
    }
    let Some((inv, rec)) = primary else {
        println!(
            "{}",
            json!({"command": "invert", "status": "no_convergence", "solvers": runs})
        );
        bail!("no solver converged");
    };
    if a.json {
        let out = json!({
            "command": "invert",
            "certified_lipschitz": block.certificate.constant,
            "certified_lipschitz_source": block.certificate.source,
            "requested_c": a.c,
            "scale": block.scale,
            "norm": "frobenius",
            "domain": block.certificate.domain,
            "dtype": "f64",
            "n": n,
            "d": d,
            "layer": desc,
            "solver": inv.solver,
            "iterations": inv.iterations,
            "evaluations": inv.evaluations,
            "residual": inv.residual,
            "reconstruction_error": rec,
            "error_bound": inv.error_bound,
            "a_priori_iterations": inv.a_priori_iterations,
            "attained_local_lipschitz": local.top.sigma,
            "attained_local_lipschitz_is": "lower bound on Lip(g) (Lanczos at x)",
            "logdet": logdet,
            "solvers": runs,
        });
        println!("{out}");
    } else {
        println!(
            "g: certified Lip <= {:.6} (Frobenius, {:?}), attained at x {:.6}; n = {n}, d = {d}",
            block.certificate.constant, block.certificate.domain, local.top.sigma
        );
        for r in &runs {
            println!("{r}");
        }
        if let Some(l) = logdet {
            println!("logdet: {l}");
        }
    }
    if failed {
        bail!("a solver did not converge (reported above, not a result)");
    }
    Ok(())
}
