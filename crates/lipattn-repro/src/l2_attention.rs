//! Figure (b), L2 attention with D = H = 1 and unit weights (Kim et al. 2021): their Lip_inf and
//! Lip_2 bounds, lipattn's certified B5, and the attained Lip_inf and Lip_2 over N = 2..1024.

use crate::figure::{numeric_csv, Curve, CurveKind, Figure, Plot};
use crate::setup::{identity_head, lanczos};
use crate::stats::loglog_fit;
use anyhow::{Context, Result};
use faer::Mat;
use lipattn::attention::{AttentionLayer, Kernel};
use lipattn::bounds::l2::{kim_bounds, l2_bounds, lambert_w0};
use lipattn::derivatives::Linearization;
use lipattn::estimation::local_norm;
use serde_json::{json, Value};

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

pub fn l2_attention(quick: bool) -> Result<(Figure, Value)> {
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
                .context("the best configuration is one of the scanned ones")?
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
    let reference: Vec<(f64, f64)> = ns
        .iter()
        .filter(|&&n| n >= 4)
        .map(|&n| (n as f64, alpha * g(n as f64) + beta))
        .collect();
    let figure = Figure {
        name: "l2_attention",
        csv: numeric_csv(
            "N,kim_lip_inf,kim_lip_2,b5_frobenius,attained_lip_inf,best_c,lemma_k1_c,attained_lip_2",
            &rows,
        ),
        plot: Plot {
            title: "L2 attention, D = H = 1, unit weights".into(),
            x_label: "N (tokens)".into(),
            y_label: "Lipschitz constant (bound or attained)".into(),
            log_x: true,
            log_y: true,
            curves: vec![
                Curve::new("Kim et al. Lip_inf bound", kinf, CurveKind::Measured),
                Curve::new("Kim et al. Lip_2 bound", k2, CurveKind::Measured),
                Curve::new(
                    "lipattn B5 (Frobenius, certified)",
                    b5s,
                    CurveKind::Measured,
                ),
                Curve::new(
                    "attained Lip_inf (lower bound)",
                    att_inf,
                    CurveKind::Measured,
                ),
                Curve::new("attained Lip_2 (lower bound)", att_2, CurveKind::Measured),
                Curve::new(
                    format!("{alpha:.2} (log N - log log N) + {beta:.2}"),
                    reference,
                    CurveKind::Reference,
                ),
            ],
            vlines: vec![],
        },
    };
    Ok((
        figure,
        json!({
            "figure": "l2_attention",
            "fit": { "alpha": alpha, "beta": beta, "max_abs_residual": resid, "loglog_slope": loglog_slope },
            "table": table,
        }),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The dense Jacobian (n x n, d = 1) from n JVPs.
    fn dense_jacobian(layer: &AttentionLayer<f64>, x: &[f64]) -> Result<Mat<f64>> {
        let xm = Mat::from_fn(x.len(), 1, |i, _| x[i]);
        Ok(Linearization::new(layer, xm.as_ref(), None, false)?.dense_jacobian()?)
    }

    #[test]
    fn l2_attained_grows_and_stays_below_same_norm_bounds() {
        let (_, v) = l2_attention(true).unwrap();
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
}
