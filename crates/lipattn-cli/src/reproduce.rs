//! `lipattn reproduce`: the figures of docs/reproductions.md (math.md section 7), each written as
//! CSV + SVG + PNG, with one JSON summary. Every "attained" number is a lower bound computed at a
//! concrete input; every "certified" number comes from `lipattn::bounds`.

use crate::plot::{loglog_fit, Chart, Series, Style};
use anyhow::{Context, Result};
use clap::Args;
use faer::Mat;
use lipattn::attention::{AttentionLayer, Kernel};
use lipattn::bounds::l2::{kim_bounds, l2_bounds, lambert_w0};
use lipattn::bounds::token_map::token_map_bounds;
use lipattn::bounds::Domain;
use lipattn::derivatives::Linearization;
use lipattn::estimation::adversarial::adversarial_input;
use lipattn::estimation::{local_norm, LanczosOptions, Method};
use serde_json::{json, Value};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

#[derive(Args)]
pub struct ReproduceArgs {
    /// Output directory (created if missing).
    #[arg(long)]
    out: PathBuf,
    /// MiniLM model directory for figure (c); defaults to $LIPATTN_MINILM, skipped when neither.
    #[arg(long)]
    model: Option<PathBuf>,
    /// Tiny configuration (for tests): few n, N and heads.
    #[arg(long)]
    quick: bool,
    /// Print the JSON summary instead of a text summary.
    #[arg(long)]
    json: bool,
}

fn lanczos() -> Method {
    Method::Lanczos(LanczosOptions {
        tol: 1e-8,
        max_iter: 300,
        seed: 0,
    })
}

fn eye(d: usize, s: f64) -> Mat<f64> {
    Mat::from_fn(d, d, |i, j| if i == j { s } else { 0.0 })
}

/// One head in R^d with W_Q = W_K = q I, W_V = W_O = I, no biases.
fn identity_head(d: usize, q: f64, kernel: Kernel) -> Result<AttentionLayer<f64>> {
    Ok(AttentionLayer::new(
        1,
        kernel,
        eye(d, q),
        vec![0.0; d],
        eye(d, q),
        vec![0.0; d],
        eye(d, 1.0),
        vec![0.0; d],
        eye(d, 1.0),
        vec![0.0; d],
    )?)
}

fn write_csv(path: &Path, header: &str, rows: &[Vec<f64>]) -> Result<()> {
    let mut s = String::from(header);
    s.push('\n');
    for r in rows {
        let line: Vec<String> = r.iter().map(|v| format!("{v:.10e}")).collect();
        writeln!(s, "{}", line.join(","))?;
    }
    std::fs::write(path, s).with_context(|| format!("writing {}", path.display()))
}

/// Figure (a): ||J(X)||_2 at the adversarial input for A = V = I in R^2.
pub fn saturation(out: &Path, quick: bool) -> Result<Value> {
    let layer = identity_head(2, 2f64.powf(0.25), Kernel::Dot)?;
    let max_pow = if quick { 6 } else { 12 };
    let ns: Vec<usize> = (1..=max_pow).map(|k| 1usize << k).collect();
    let radii = [2.0, 3.0, 4.0];
    let mut rows = Vec::new();
    let mut series = Vec::new();
    let mut summary = Vec::new();
    let mut vlines = Vec::new();
    for &r in &radii {
        let mut pts = Vec::new();
        for &n in &ns {
            let x = adversarial_input(&layer, 0, n, r)?;
            let res = local_norm(&layer, x.as_ref(), None, false, &lanczos())?;
            pts.push((n as f64, res.top.sigma));
            rows.push(vec![r, n as f64, res.top.sigma]);
        }
        let n_star = (r * r / 4.0f64).exp();
        // Small-n range: n <= n* = e^{a R^2 / 4} (at least the first two points), where the growth
        // is still sqrt-like; large-n range: the last three points.
        let k_small = pts.iter().filter(|p| p.0 <= n_star).count().max(2);
        let (slope, c) = loglog_fit(&pts[..k_small]);
        let large_slope = loglog_fit(&pts[pts.len().saturating_sub(3)..]).0;
        let peak = pts
            .iter()
            .copied()
            .fold((0.0, 0.0), |a, p| if p.1 > a.1 { p } else { a });
        summary.push(json!({
            "R": r, "n_star": n_star, "small_n_slope": slope, "small_n_prefactor": c, "small_n_max": pts[k_small - 1].0,
            "large_n_slope": large_slope, "peak_n": peak.0, "peak_sigma": peak.1,
            "sigma_at_max_n": pts.last().map(|p| p.1),
            "points": pts.iter().map(|p| json!([p.0, p.1])).collect::<Vec<_>>(),
        }));
        vlines.push((n_star, format!("n = e^(R^2/4), R = {r}")));
        series.push(Series::new(
            format!("R = {r} (small-n slope {slope:.2})"),
            pts,
            Style::LinePoints,
        ));
    }
    // sqrt(n) reference through the R = 4 curve's first point.
    let first = series.last().unwrap().points[0];
    series.push(Series::new(
        "c sqrt(n)",
        ns.iter()
            .map(|&n| (n as f64, first.1 * (n as f64 / first.0).sqrt()))
            .collect(),
        Style::Reference,
    ));
    write_csv(&out.join("saturation.csv"), "R,n,sigma", &rows)?;
    Chart {
        title: "Mean-field saturation: A = V = I in R^2, adversarial input".into(),
        x_label: "n (tokens)".into(),
        y_label: "local constant ||J(X)||_2 (attained)".into(),
        log_x: true,
        log_y: true,
        series,
        vlines,
    }
    .write(&out.join("saturation"))?;
    Ok(json!({ "figure": "saturation", "a": 1.0, "curves": summary }))
}

/// Infinity-norm operator norm (max absolute row sum) of the Jacobian at x, d = 1, from one VJP per
/// distinct token position (tokens at equal positions have rows that are permutations of each
/// other, so the maximum over these rows is the maximum over all rows).
pub fn jacobian_inf_norm(layer: &AttentionLayer<f64>, x: &[f64]) -> Result<f64> {
    let n = x.len();
    let xm = Mat::from_fn(n, 1, |i, _| x[i]);
    let lin = Linearization::new(layer, xm.as_ref(), None, false)?;
    let mut seen: Vec<f64> = Vec::new();
    let mut best: f64 = 0.0;
    for (i, &xi) in x.iter().enumerate() {
        if seen.contains(&xi) {
            continue;
        }
        seen.push(xi);
        let e = Mat::from_fn(n, 1, |k, _| if k == i { 1.0 } else { 0.0 });
        let row = lin.vjp(e.as_ref())?;
        best = best.max((0..n).map(|j| row[(j, 0)].abs()).sum());
    }
    Ok(best)
}

/// The dense Jacobian (n x n, d = 1) from n JVPs, for checks.
#[cfg(test)]
pub fn dense_jacobian(layer: &AttentionLayer<f64>, x: &[f64]) -> Result<Mat<f64>> {
    let n = x.len();
    let xm = Mat::from_fn(n, 1, |i, _| x[i]);
    let lin = Linearization::new(layer, xm.as_ref(), None, false)?;
    let mut j = Mat::zeros(n, n);
    for col in 0..n {
        let e = Mat::from_fn(n, 1, |k, _| if k == col { 1.0 } else { 0.0 });
        let c = lin.jvp(e.as_ref())?;
        for row in 0..n {
            j[(row, col)] = c[(row, 0)];
        }
    }
    Ok(j)
}

/// The configurations scanned for the attained Lip_inf: token 1 at 0 and the others at c
/// ("one-vs-rest"), and token 1 at 0 with the others split between +c and -c ("split").
fn configs(n: usize, c: f64) -> Vec<(&'static str, Vec<f64>)> {
    let rest: Vec<f64> = (0..n).map(|i| if i == 0 { 0.0 } else { c }).collect();
    let split: Vec<f64> = (0..n)
        .map(|i| match i {
            0 => 0.0,
            i if i % 2 == 1 => c,
            _ => -c,
        })
        .collect();
    vec![("one-vs-rest", rest), ("split", split)]
}

/// Figure (b): L2 attention, D = H = 1, unit weights.
pub fn l2_attention(out: &Path, quick: bool) -> Result<Value> {
    let layer = identity_head(1, 1.0, Kernel::L2)?;
    let max_pow = if quick { 4 } else { 10 };
    let ns: Vec<usize> = (1..=max_pow).map(|k| 1usize << k).collect();
    let grid: Vec<f64> = (0..=16).map(|k| 0.4 + 0.1 * k as f64).collect();
    let mut rows = Vec::new();
    let mut table = Vec::new();
    let (mut kinf, mut k2, mut b5s, mut att_inf, mut att_2) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for &n in &ns {
        let nf = n as f64;
        let (ki, kt) = kim_bounds(n, 1.0, 1.0, 1.0);
        let b5 = l2_bounds(&layer, n)?
            .0
            .context("B5 must apply to the unit L2 head")?
            .value;
        let c_star = (1.0 + lambert_w0((nf - 1.0) / std::f64::consts::E)).sqrt();
        let mut best = (0.0, 0.0, "");
        for &g in &grid {
            let c = g * c_star;
            for (name, x) in configs(n, c) {
                let v = jacobian_inf_norm(&layer, &x)?;
                if v > best.0 {
                    best = (v, c, name);
                }
            }
        }
        // Attained Lip_2 (Frobenius = spectral here, d = 1) at the best Lip_inf configuration
        // and at the one-vs-rest configuration with c*: the larger is kept.
        let mut l2 = 0.0f64;
        for x in [
            configs(n, best.1)
                .into_iter()
                .find(|c| c.0 == best.2)
                .unwrap()
                .1,
            configs(n, c_star)[0].1.clone(),
        ] {
            let xm = Mat::from_fn(n, 1, |i, _| x[i]);
            l2 = l2.max(
                local_norm(&layer, xm.as_ref(), None, false, &lanczos())?
                    .top
                    .sigma,
            );
        }
        rows.push(vec![nf, ki, kt, b5, best.0, best.1, c_star, l2]);
        table.push(json!({
            "N": n, "kim_lip_inf": ki, "kim_lip_2": kt, "b5_frobenius": b5,
            "attained_lip_inf": best.0, "best_c": best.1, "best_config": best.2,
            "lemma_k1_c": c_star, "attained_lip_2": l2,
        }));
        kinf.push((nf, ki));
        k2.push((nf, kt));
        b5s.push((nf, b5));
        att_inf.push((nf, best.0));
        att_2.push((nf, l2));
    }
    // Growth of the attained Lip_inf: least squares y = alpha (log N - log log N) + beta over
    // N >= 4 (log log 2 < 0), and the log-log slope.
    let g = |n: f64| n.ln() - n.ln().ln();
    let fitpts: Vec<(f64, f64)> = att_inf
        .iter()
        .filter(|p| p.0 >= 4.0)
        .map(|p| (g(p.0), p.1))
        .collect();
    let m = fitpts.len() as f64;
    let mx = fitpts.iter().map(|p| p.0).sum::<f64>() / m;
    let my = fitpts.iter().map(|p| p.1).sum::<f64>() / m;
    let alpha = fitpts.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum::<f64>()
        / fitpts.iter().map(|p| (p.0 - mx).powi(2)).sum::<f64>();
    let beta = my - alpha * mx;
    let resid = fitpts
        .iter()
        .map(|p| (p.1 - alpha * p.0 - beta).abs())
        .fold(0.0, f64::max);
    let loglog_slope = loglog_fit(&att_inf).0;
    write_csv(
        &out.join("l2_attention.csv"),
        "N,kim_lip_inf,kim_lip_2,b5_frobenius,attained_lip_inf,best_c,lemma_k1_c,attained_lip_2",
        &rows,
    )?;
    let reference: Vec<(f64, f64)> = ns
        .iter()
        .filter(|&&n| n >= 4)
        .map(|&n| (n as f64, alpha * g(n as f64) + beta))
        .collect();
    Chart {
        title: "L2 attention, D = H = 1, unit weights".into(),
        x_label: "N (tokens)".into(),
        y_label: "Lipschitz constant (bound or attained)".into(),
        log_x: true,
        log_y: true,
        series: vec![
            Series::new("Kim et al. Lip_inf bound", kinf, Style::LinePoints),
            Series::new("Kim et al. Lip_2 bound", k2, Style::LinePoints),
            Series::new("lipattn B5 (Frobenius, certified)", b5s, Style::LinePoints),
            Series::new("attained Lip_inf (lower bound)", att_inf, Style::LinePoints),
            Series::new("attained Lip_2 (lower bound)", att_2, Style::LinePoints),
            Series::new(
                format!("{alpha:.2} (log N - log log N) + {beta:.2}"),
                reference,
                Style::Reference,
            ),
        ],
        vlines: vec![],
    }
    .write(&out.join("l2_attention"))?;
    Ok(json!({
        "figure": "l2_attention",
        "fit": { "alpha": alpha, "beta": beta, "max_abs_residual": resid, "loglog_slope": loglog_slope },
        "table": table,
    }))
}

/// Figure (c): certified / attained ratios for MiniLM layer 0, per head, n = 32.
pub fn minilm_ratios(out: &Path, dir: &Path, quick: bool) -> Result<Value> {
    let full = lipattn::models::load_attention_layer(dir, 0)?;
    let heads = if quick { 2 } else { full.heads };
    let n = 32;
    let radii = [1.0, 2.0, 4.0];
    let names = [
        "B1+B4-concat",
        "B1-tight-concat",
        "anchor-castin-mathmd",
        "anchor-castin-code",
    ];
    let mut rows = Vec::new();
    let mut per: Vec<Vec<Vec<f64>>> = vec![vec![Vec::new(); radii.len()]; names.len()];
    let mut detail = Vec::new();
    for h in 0..heads {
        let head = full.head(h, false)?;
        for (ri, &r) in radii.iter().enumerate() {
            let bounds = token_map_bounds(&head, &Domain::new(r, n, false)?)?;
            // Attained: the adversarial construction and two random inputs with rows in B_R.
            let mut att = 0.0f64;
            let x = adversarial_input(&head, 0, n, r)?;
            att = att.max(
                local_norm(&head, x.as_ref(), None, false, &lanczos())?
                    .top
                    .sigma,
            );
            let mut rng = lipattn::estimation::SplitMix::new(1000 + h as u64);
            for _ in 0..2 {
                let g = rng.gauss_mat::<f64>(n, head.d_in());
                let xr = Mat::from_fn(n, head.d_in(), |i, k| {
                    let nr = (0..head.d_in())
                        .map(|q| g[(i, q)].powi(2))
                        .sum::<f64>()
                        .sqrt();
                    r * g[(i, k)] / nr
                });
                att = att.max(
                    local_norm(&head, xr.as_ref(), None, false, &lanczos())?
                        .top
                        .sigma,
                );
            }
            let mut row = vec![h as f64, r, att];
            for (bi, name) in names.iter().enumerate() {
                let b = bounds
                    .iter()
                    .find(|b| b.name == *name)
                    .map(|b| b.value)
                    .unwrap_or(f64::NAN);
                row.push(b / att);
                per[bi][ri].push(b / att);
            }
            detail.push(json!({"head": h, "R": r, "attained": att,
                "bounds": bounds.iter().map(|b| json!({"name": b.name, "value": b.value, "certified": b.certified})).collect::<Vec<_>>()}));
            rows.push(row);
        }
    }
    write_csv(
        &out.join("minilm_ratios.csv"),
        &format!(
            "head,R,attained,{}",
            names.map(|s| format!("ratio_{s}")).join(",")
        ),
        &rows,
    )?;
    let median = |v: &Vec<f64>| {
        let mut s = v.clone();
        s.sort_by(f64::total_cmp);
        s[s.len() / 2]
    };
    let mut series = Vec::new();
    let mut med = serde_json::Map::new();
    for (bi, name) in names.iter().enumerate() {
        let pts: Vec<(f64, f64)> = radii
            .iter()
            .enumerate()
            .map(|(ri, &r)| (r, median(&per[bi][ri])))
            .collect();
        med.insert(
            name.to_string(),
            json!(pts.iter().map(|p| json!([p.0, p.1])).collect::<Vec<_>>()),
        );
        series.push(Series::new(
            format!("{name} (median over heads)"),
            pts,
            Style::LinePoints,
        ));
    }
    Chart {
        title: format!("MiniLM layer 0, n = {n}: certified / attained per head"),
        x_label: "radius R".into(),
        y_label: "bound / attained".into(),
        log_x: true,
        log_y: true,
        series,
        vlines: vec![],
    }
    .write(&out.join("minilm_ratios"))?;
    Ok(json!({"figure": "minilm_ratios", "n": n, "median_ratios": med, "detail": detail}))
}

pub fn run(a: ReproduceArgs) -> Result<()> {
    std::fs::create_dir_all(&a.out).with_context(|| format!("creating {}", a.out.display()))?;
    let start = std::time::Instant::now();
    let sat = saturation(&a.out, a.quick)?;
    let l2 = l2_attention(&a.out, a.quick)?;
    let model = a
        .model
        .clone()
        .or_else(|| std::env::var_os("LIPATTN_MINILM").map(PathBuf::from));
    let minilm = match &model {
        Some(dir) => minilm_ratios(&a.out, dir, a.quick)?,
        None => {
            json!({"figure": "minilm_ratios", "skipped": "no --model and LIPATTN_MINILM unset"})
        }
    };
    let summary = json!({
        "saturation": sat, "l2_attention": l2, "minilm_ratios": minilm,
        "quick": a.quick, "seconds": start.elapsed().as_secs_f64(),
    });
    let path = a.out.join("summary.json");
    std::fs::write(&path, serde_json::to_string_pretty(&summary)?)
        .with_context(|| format!("writing {}", path.display()))?;
    if a.json {
        println!("{}", serde_json::to_string(&summary)?);
    } else {
        for c in summary["saturation"]["curves"].as_array().unwrap() {
            println!(
                "saturation R={}: small-n slope {:.3}, peak sigma {:.3} at n={}, n*={:.1}",
                c["R"],
                c["small_n_slope"].as_f64().unwrap_or(f64::NAN),
                c["peak_sigma"].as_f64().unwrap_or(f64::NAN),
                c["peak_n"],
                c["n_star"].as_f64().unwrap_or(f64::NAN)
            );
        }
        println!("l2 fit: {}", summary["l2_attention"]["fit"]);
        println!(
            "minilm: {}",
            summary["minilm_ratios"]
                .get("skipped")
                .unwrap_or(&summary["minilm_ratios"]["median_ratios"])
        );
        println!(
            "wrote {} in {:.1}s",
            a.out.display(),
            start.elapsed().as_secs_f64()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("lipattn-repro-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn saturation_grows_like_sqrt_then_flattens() {
        let d = tmp("sat");
        let v = saturation(&d, true).unwrap();
        let curves = v["curves"].as_array().unwrap();
        let by_r = |r: f64| curves.iter().find(|c| c["R"] == r).unwrap();
        // R = 3: n* = e^{9/4} ~ 9.5, so n = 2, 4, 8 are in the sqrt regime.
        let s3 = by_r(3.0)["small_n_slope"].as_f64().unwrap();
        assert!((0.35..=0.65).contains(&s3), "small-n slope {s3}");
        // R = 2: n* ~ 2.7; past it the curve stops growing (here it decays towards ||V|| = 1).
        let large = by_r(2.0)["large_n_slope"].as_f64().unwrap();
        assert!(large < 0.1, "large-n slope {large}");
        let pts = by_r(2.0)["points"].as_array().unwrap();
        let last = pts.last().unwrap()[1].as_f64().unwrap();
        let peak = by_r(2.0)["peak_sigma"].as_f64().unwrap();
        assert!(last <= peak && peak < 2.0 * 2f64.sqrt());
        std::fs::remove_dir_all(d).ok();
    }

    #[test]
    fn l2_attained_grows_and_stays_below_same_norm_bounds() {
        let d = tmp("l2");
        let v = l2_attention(&d, true).unwrap();
        let t = v["table"].as_array().unwrap();
        let f = |r: &Value, k: &str| r[k].as_f64().unwrap();
        for w in t.windows(2) {
            assert!(f(&w[1], "attained_lip_inf") > f(&w[0], "attained_lip_inf"));
        }
        for r in t {
            // Lip_inf attained vs Kim's Lip_inf; Lip_2 attained vs Kim's Lip_2 and B5 (Frobenius
            // equals the 2-norm on R^{N x 1}).
            assert!(f(r, "attained_lip_inf") <= f(r, "kim_lip_inf"));
            assert!(f(r, "attained_lip_2") <= f(r, "kim_lip_2"));
            assert!(f(r, "attained_lip_2") <= f(r, "b5_frobenius"));
        }
        std::fs::remove_dir_all(d).ok();
    }

    #[test]
    fn inf_norm_from_representative_rows_matches_dense_jacobian() {
        let layer = identity_head(1, 1.0, Kernel::L2).unwrap();
        for (_, x) in configs(16, 1.3) {
            let j = dense_jacobian(&layer, &x).unwrap();
            let dense = (0..16)
                .map(|i| (0..16).map(|k| j[(i, k)].abs()).sum::<f64>())
                .fold(0.0, f64::max);
            let fast = jacobian_inf_norm(&layer, &x).unwrap();
            assert!((dense - fast).abs() <= 1e-12 * dense, "{dense} vs {fast}");
        }
    }

    #[test]
    fn quick_run_writes_every_file() {
        let d = tmp("run");
        run(ReproduceArgs {
            out: d.clone(),
            model: None,
            quick: true,
            json: true,
        })
        .unwrap();
        for stem in ["saturation", "l2_attention"] {
            for ext in ["csv", "svg", "png"] {
                let p = d.join(format!("{stem}.{ext}"));
                let len = std::fs::metadata(&p).unwrap().len();
                assert!(len > 100, "{} has {len} bytes", p.display());
            }
        }
        let png = std::fs::read(d.join("saturation.png")).unwrap();
        assert_eq!(&png[..4], b"\x89PNG");
        let s: Value =
            serde_json::from_str(&std::fs::read_to_string(d.join("summary.json")).unwrap())
                .unwrap();
        assert!(s["saturation"]["curves"].is_array());
        std::fs::remove_dir_all(d).ok();
    }
}
