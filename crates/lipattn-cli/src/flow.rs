//! `lipattn flow`: continuous-depth attention, dx_i/dt = Gamma_{mu_t}(x_i) (a plain layer: a flow
//! of measures) or dX/dt = f(X) (a rotary checkpoint's layer: a flow of token matrices),
//! optionally on the sphere or through a LayerNorm, with RK4 or Dormand-Prince. Reports the
//! clustering of the tokens over time and, on request, the certified Gronwall bound against
//! measured W1 or Frobenius distances and the measured mean-field convergence rate; writes the
//! figures with --plot.

use crate::dyn_source::SourceArgs;
use crate::names::named;
use crate::plot::{Chart, Series, Style};
use crate::progress::Bar;
use crate::solver_output::save_first;
use anyhow::Result;
use clap::Args;
use lipattn::fmt::{compact, exact};
use lipattn::ops::flow::{self, FlowInputs, FlowMap, FlowRequest, IntegratorName, ProjectionName};
use lipattn::ops::source::SourceRequest;
use lipattn::output::{StagedDir, StagedFile};
use lipattn::Mat;
use std::path::PathBuf;

#[derive(Args)]
pub struct FlowArgs {
    #[command(flatten)]
    source: SourceArgs,
    /// Geshkovski et al.'s layer Q = K = V = I on R^d with scores beta <x, y> instead of the
    /// model or synthetic layer; tokens uniform on the sphere unless --tokens is given.
    #[arg(long)]
    identity: bool,
    /// Inverse temperature of --identity.
    #[arg(long, default_value_t = lipattn::ops::source::IDENTITY_BETA)]
    beta: f64,
    /// Final time T.
    #[arg(long, default_value_t = FlowRequest::default().t)]
    t: f64,
    #[arg(long, visible_alias = "projection", value_parser = named::<ProjectionName>(), default_value_t = FlowRequest::default().projection)]
    project: ProjectionName,
    #[arg(long, value_parser = named::<IntegratorName>(), default_value_t = FlowRequest::default().integrator)]
    integrator: IntegratorName,
    /// Step of rk4 and dopri-fixed.
    #[arg(long, default_value_t = FlowRequest::default().dt)]
    dt: f64,
    /// Tolerances of the adaptive dopri.
    #[arg(long, default_value_t = FlowRequest::default().rtol)]
    rtol: f64,
    #[arg(long, default_value_t = FlowRequest::default().atol)]
    atol: f64,
    /// First step of the adaptive dopri (default: --dt).
    #[arg(long)]
    h0: Option<f64>,
    /// Record the state every this much time.
    #[arg(long, default_value_t = FlowRequest::default().record)]
    record: f64,
    /// Step cap (accepted plus rejected steps).
    #[arg(long, default_value_t = FlowRequest::default().max_steps)]
    max_steps: usize,
    /// Epsilon of --project layernorm.
    #[arg(long, default_value_t = FlowRequest::default().layernorm_eps)]
    layernorm_eps: f64,
    /// Cosine threshold of the cluster count: tokens with cos >= 1 - this are joined.
    #[arg(long, default_value_t = FlowRequest::default().cluster_threshold)]
    cluster_threshold: f64,
    /// Also check the Gronwall bound against a second measure: the tokens moved by Gaussian
    /// noise of this size (then put back on the sphere when projecting).
    #[arg(long)]
    gronwall: Option<f64>,
    /// Also measure mean-field consistency with these sample sizes (comma separated) against a
    /// reference flow of --mean-field-reference samples uniform on the sphere.
    #[arg(long, value_delimiter = ',')]
    mean_field: Option<Vec<usize>>,
    #[arg(long, default_value_t = FlowRequest::default().mean_field_reference)]
    mean_field_reference: usize,
    /// Independent samples per size (their W1 values are averaged).
    #[arg(long, default_value_t = FlowRequest::default().mean_field_replicates)]
    mean_field_replicates: usize,
    /// Write the final tokens X(T) (n x d float64 .npy).
    #[arg(long)]
    save: Option<PathBuf>,
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

impl From<&FlowArgs> for FlowRequest {
    fn from(a: &FlowArgs) -> Self {
        Self {
            t: a.t,
            projection: a.project,
            integrator: a.integrator,
            dt: a.dt,
            rtol: a.rtol,
            atol: a.atol,
            h0: a.h0,
            record: a.record,
            max_steps: a.max_steps,
            layernorm_eps: a.layernorm_eps,
            cluster_threshold: a.cluster_threshold,
            gronwall: a.gronwall,
            mean_field: a.mean_field.clone(),
            mean_field_reference: a.mean_field_reference,
            mean_field_replicates: a.mean_field_replicates,
            seed: a.source.seed,
        }
    }
}

pub fn run(a: FlowArgs) -> Result<()> {
    let save = a.save.as_deref().map(StagedFile::create).transpose()?;
    let plot = a.plot.as_deref().map(StagedDir::create).transpose()?;
    let source = SourceRequest::from(&a.source);
    let sourced = if a.identity {
        source.identity_layer(a.beta)?
    } else {
        source.branch()?
    };
    let d = lipattn::dynamics::Branch::d_in(&sourced.layer);
    let x0 = if a.identity {
        source.sphere_tokens(d)?
    } else {
        source.tokens(d)?
    };
    let bar = Bar::new(a.json);
    let report = flow::run(
        &FlowRequest::from(&a),
        FlowInputs {
            map: FlowMap::of(&sourced.layer),
            x: x0.as_ref(),
            weights: None,
            gronwall_tokens: None,
            source: Some(sourced.description.clone()),
            origin: &sourced.origin,
        },
        &mut |p| bar.update(p),
    )?;
    drop(bar);
    save_first(save, &report.states[report.states.len() - 1..])?;
    let (times, stats) = (&report.times, &report.clustering);
    let (gron, mf) = (&report.gronwall, &report.mean_field);
    if let Some(stage) = plot {
        let dir = stage.path();
        let mc: Vec<(f64, f64)> = times
            .iter()
            .zip(stats)
            .map(|(t, s)| (*t, s.mean_cosine))
            .collect();
        let nc: Vec<(f64, f64)> = times
            .iter()
            .zip(stats)
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
            let k = report.states.len();
            let picks = [0, k / 6, k / 3, k - 1];
            let series = picks
                .iter()
                .map(|&s| {
                    let x = &report.states[s];
                    Series::new(
                        format!("t = {:.1}", times[s]),
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
            let tokens = g.space == "tokens";
            Chart {
                title: format!("Gronwall: certified L = {:.3e}", g.lipschitz),
                x_label: "t".into(),
                y_label: if tokens {
                    "|X_t - Y_t|_F"
                } else {
                    "W1(mu_t, nu_t)"
                }
                .into(),
                log_x: false,
                log_y: true,
                series: vec![
                    Series::new(
                        if tokens {
                            "measured"
                        } else {
                            "measured (exact W1)"
                        },
                        pts(&g.measured),
                        Style::LinePoints,
                    ),
                    Series::new(
                        if tokens {
                            "e^{Lt} |X_0 - Y_0|_F (certified)"
                        } else {
                            "e^{Lt} W1(mu_0, nu_0) (certified)"
                        },
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
        stage.commit()?;
    }
    let mut out = lipattn::ops::to_json(&report)?;
    out["command"] = "flow".into();
    if a.json {
        println!("{out}");
    } else {
        let (c0, c1) = (&stats[0], stats.last().unwrap());
        if let Some(op) = &report.operator {
            println!("operator: {}", op.description);
        }
        println!(
            "flow of {} to T = {}: {} steps ({} rejected), {} velocity evaluations",
            report.space,
            exact(a.t),
            report.steps["accepted"],
            report.steps["rejected"],
            report.steps["evaluations"]
        );
        println!(
            "mean cosine {:.4} -> {:.4}, clusters {} -> {}",
            c0.mean_cosine, c1.mean_cosine, c0.clusters, c1.clusters
        );
        if let Some(g) = &gron {
            println!(
                "Gronwall ({}): certified L = {}, measured rate {}, violated: {}",
                g.metric,
                compact(g.lipschitz),
                compact(g.measured_rate),
                g.violated
            );
        }
        if let Some(m) = &mf {
            println!(
                "mean field: W1 at T {}, rate {}",
                m.w1_final
                    .iter()
                    .map(|w| compact(*w).to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
                compact(m.rate_final)
            );
        }
    }
    Ok(())
}
