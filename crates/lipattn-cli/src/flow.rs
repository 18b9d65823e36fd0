//! `lipattn flow`: continuous-depth attention, dx_i/dt = Gamma_{mu_t}(x_i), optionally on the
//! sphere or through a LayerNorm, with RK4 or Dormand-Prince. Reports the clustering of the
//! tokens over time and, on request, the certified Gronwall bound against measured W1 distances
//! and the measured mean-field convergence rate; writes the figures with --plot.

use crate::dyn_source::SourceArgs;
use crate::plot::{Chart, Series, Style};
use anyhow::{bail, Result};
use clap::{Args, ValueEnum};
use lipattn::dynamics::flow::{
    clustering, gronwall_check, identity_layer, integrate, mean_field, sphere_sample,
};
use lipattn::dynamics::{FlowOptions, Integrator, Projection};
use lipattn::estimation::SplitMix;
use lipattn::{Mat, Measure};
use serde_json::json;
use std::path::PathBuf;

#[derive(Clone, Copy, ValueEnum, PartialEq)]
pub enum ProjectArg {
    None,
    Sphere,
    Layernorm,
}

#[derive(Clone, Copy, ValueEnum, PartialEq)]
pub enum IntegratorArg {
    Rk4,
    Dopri,
    DopriFixed,
}

#[derive(Args)]
pub struct FlowArgs {
    #[command(flatten)]
    source: SourceArgs,
    /// Geshkovski et al.'s layer Q = K = V = I on R^d with scores beta <x, y> instead of the
    /// model or synthetic layer; tokens uniform on the sphere unless --tokens is given.
    #[arg(long)]
    identity: bool,
    /// Inverse temperature of --identity.
    #[arg(long, default_value_t = 1.0)]
    beta: f64,
    /// Final time T.
    #[arg(long, default_value_t = 15.0)]
    t: f64,
    #[arg(long, value_enum, default_value = "sphere")]
    project: ProjectArg,
    #[arg(long, value_enum, default_value = "rk4")]
    integrator: IntegratorArg,
    /// Step of rk4 and dopri-fixed.
    #[arg(long, default_value_t = 0.1)]
    dt: f64,
    /// Tolerances of the adaptive dopri.
    #[arg(long, default_value_t = 1e-6)]
    rtol: f64,
    #[arg(long, default_value_t = 1e-9)]
    atol: f64,
    /// Record the state every this much time.
    #[arg(long, default_value_t = 0.5)]
    record: f64,
    /// Cosine threshold of the cluster count: tokens with cos >= 1 - this are joined.
    #[arg(long, default_value_t = 1e-2)]
    cluster_threshold: f64,
    /// Also check the Gronwall bound against a second measure: the tokens moved by Gaussian
    /// noise of this size (then put back on the sphere when projecting).
    #[arg(long)]
    gronwall: Option<f64>,
    /// Also measure mean-field consistency with these sample sizes (comma separated) against a
    /// reference flow of --mean-field-reference samples uniform on the sphere.
    #[arg(long, value_delimiter = ',')]
    mean_field: Option<Vec<usize>>,
    #[arg(long, default_value_t = 1024)]
    mean_field_reference: usize,
    /// Independent samples per size (their W1 values are averaged).
    #[arg(long, default_value_t = 4)]
    mean_field_replicates: usize,
    /// Write the figures (SVG and PNG) into this directory.
    #[arg(long)]
    plot: Option<PathBuf>,
    #[arg(long)]
    json: bool,
}

/// Longitude and latitude (degrees) of the direction of a 3-vector.
fn lon_lat(x: &Mat<f64>, i: usize) -> (f64, f64) {
    let r = (0..3).map(|k| x[(i, k)].powi(2)).sum::<f64>().sqrt();
    (
        x[(i, 1)].atan2(x[(i, 0)]).to_degrees(),
        (x[(i, 2)] / r).clamp(-1.0, 1.0).asin().to_degrees(),
    )
}

pub fn run(a: FlowArgs) -> Result<()> {
    let (layer, desc) = if a.identity {
        (
            identity_layer(a.source.d, a.beta)?,
            json!({"source": "identity", "d": a.source.d, "beta": a.beta, "kernel": "dot"}),
        )
    } else {
        a.source.layer()?
    };
    let d = layer.d_in();
    let x0 = if a.identity && a.source.tokens.is_none() {
        sphere_sample(
            a.source.n,
            d,
            &mut SplitMix::new(a.source.seed.wrapping_add(1)),
        )
    } else {
        a.source.tokens(d)?
    };
    let projection = match a.project {
        ProjectArg::None => Projection::None,
        ProjectArg::Sphere => Projection::Sphere,
        ProjectArg::Layernorm => Projection::LayerNorm { eps: 1e-5 },
    };
    let integrator = match a.integrator {
        IntegratorArg::Rk4 => Integrator::Rk4 { dt: a.dt },
        IntegratorArg::DopriFixed => Integrator::DoPri5Fixed { dt: a.dt },
        IntegratorArg::Dopri => Integrator::DoPri5 {
            rtol: a.rtol,
            atol: a.atol,
            h0: a.dt,
        },
    };
    let opts = FlowOptions {
        projection,
        integrator,
        t_end: a.t,
        record_every: a.record,
        max_steps: 10_000_000,
    };
    let traj = integrate(&layer, x0.as_ref(), None, &opts)?;
    let stats: Vec<_> = traj
        .states
        .iter()
        .map(|x| clustering(x.as_ref(), a.cluster_threshold))
        .collect();
    let gron = match a.gronwall {
        Some(eps) => {
            if !(eps.is_finite() && eps > 0.0) {
                bail!("--gronwall needs a positive perturbation size");
            }
            let mut rng = SplitMix::new(a.source.seed.wrapping_add(7));
            let nu_pts = Mat::from_fn(x0.nrows(), d, |i, k| x0[(i, k)] + eps * rng.gauss());
            let mu = Measure::uniform(x0.clone())?;
            let nu = Measure::uniform(nu_pts)?;
            Some(gronwall_check(&layer, &mu, &nu, &opts)?)
        }
        None => None,
    };
    let mf = match &a.mean_field {
        Some(ns) => Some(mean_field(
            &layer,
            ns,
            a.mean_field_reference,
            a.mean_field_replicates,
            &opts,
            a.source.seed.wrapping_add(11),
        )?),
        None => None,
    };
    if let Some(dir) = &a.plot {
        std::fs::create_dir_all(dir)?;
        let mc: Vec<(f64, f64)> = traj
            .times
            .iter()
            .zip(&stats)
            .map(|(t, s)| (*t, s.mean_cosine))
            .collect();
        let nc: Vec<(f64, f64)> = traj
            .times
            .iter()
            .zip(&stats)
            .map(|(t, s)| (*t, s.clusters as f64 / x0.nrows() as f64))
            .collect();
        Chart {
            title: format!("Clustering of {} tokens (d = {d}), T = {}", x0.nrows(), a.t),
            x_label: "t".into(),
            y_label: "clustering measure".into(),
            log_x: false,
            log_y: false,
            series: vec![
                Series::new("mean pairwise cosine", mc, Style::LinePoints),
                Series::new("clusters / n", nc, Style::LinePoints),
            ],
            vlines: vec![],
        }
        .write(&dir.join("flow_clustering"))?;
        if d == 3 {
            let k = traj.states.len();
            let picks = [0, k / 6, k / 3, k - 1];
            let series = picks
                .iter()
                .map(|&s| {
                    let x = &traj.states[s];
                    Series::new(
                        format!("t = {:.1}", traj.times[s]),
                        (0..x.nrows()).map(|i| lon_lat(x, i)).collect(),
                        Style::Points,
                    )
                })
                .collect();
            Chart {
                title: "Tokens on S^2 (longitude, latitude)".into(),
                x_label: "longitude (degrees)".into(),
                y_label: "latitude (degrees)".into(),
                log_x: false,
                log_y: false,
                series,
                vlines: vec![],
            }
            .write(&dir.join("flow_tokens"))?;
        }
        if let Some(g) = &gron {
            let pts = |v: &[f64]| -> Vec<(f64, f64)> {
                g.times.iter().zip(v).map(|(t, w)| (*t, *w)).collect()
            };
            Chart {
                title: format!("Gronwall: certified L = {:.3e}", g.lipschitz),
                x_label: "t".into(),
                y_label: "W1(mu_t, nu_t)".into(),
                log_x: false,
                log_y: true,
                series: vec![
                    Series::new("measured (exact W1)", pts(&g.measured), Style::LinePoints),
                    Series::new(
                        "e^{Lt} W1(mu_0, nu_0) (certified)",
                        pts(&g.bound),
                        Style::Reference,
                    ),
                ],
                vlines: vec![],
            }
            .write(&dir.join("flow_gronwall"))?;
        }
        if let Some(m) = &mf {
            let pts = |v: &[f64]| -> Vec<(f64, f64)> {
                m.ns.iter().zip(v).map(|(n, w)| (*n as f64, *w)).collect()
            };
            Chart {
                title: format!(
                    "Mean field: empirical flows against {} samples",
                    m.reference_n
                ),
                x_label: "n".into(),
                y_label: "W1 to the reference".into(),
                log_x: true,
                log_y: true,
                series: vec![
                    Series::new(
                        format!("t = T (slope {:.2})", m.rate_final),
                        pts(&m.w1_final),
                        Style::LinePoints,
                    ),
                    Series::new(
                        format!("t = 0 (slope {:.2})", m.rate_initial),
                        pts(&m.w1_initial),
                        Style::LinePoints,
                    ),
                ],
                vlines: vec![],
            }
            .write(&dir.join("flow_mean_field"))?;
        }
    }
    let out = json!({
        "command": "flow",
        "layer": desc,
        "n": x0.nrows(),
        "d": d,
        "dtype": "f64",
        "options": opts,
        "steps": {"accepted": traj.accepted, "rejected": traj.rejected, "evaluations": traj.evaluations},
        "times": traj.times,
        "clustering": stats,
        "clustering_is": "measured",
        "gronwall": gron,
        "mean_field": mf,
    });
    if a.json {
        println!("{out}");
    } else {
        let (c0, c1) = (&stats[0], stats.last().unwrap());
        println!(
            "flow to T = {}: {} steps ({} rejected), {} velocity evaluations",
            a.t, traj.accepted, traj.rejected, traj.evaluations
        );
        println!(
            "mean cosine {:.4} -> {:.4}, clusters {} -> {}",
            c0.mean_cosine, c1.mean_cosine, c0.clusters, c1.clusters
        );
        if let Some(g) = &gron {
            println!(
                "Gronwall: certified L = {:.4e}, measured rate {:.4}, violated: {}",
                g.lipschitz, g.measured_rate, g.violated
            );
        }
        if let Some(m) = &mf {
            println!(
                "mean field: W1 at T {:?}, rate {:.3}",
                m.w1_final, m.rate_final
            );
        }
    }
    Ok(())
}
