//! Figure (a), mean-field saturation: ||J(X)||_2 at the adversarial input of Castin et al. for
//! A = V = I in R^2, n = 2..4096 and R in {2, 3, 4}, with the sqrt(n) regime fitted below
//! n* = e^{a R^2 / 4}.

use crate::figure::{numeric_csv, Curve, CurveKind, Figure, Plot};
use crate::setup::{identity_head, lanczos};
use crate::stats::loglog_fit;
use anyhow::Result;
use lipattn::attention::Kernel;
use lipattn::estimation::adversarial::adversarial_input;
use lipattn::estimation::local_norm;
use serde_json::{json, Value};

pub fn saturation(quick: bool) -> Result<(Figure, Value)> {
    let layer = identity_head(2, 2f64.powf(0.25), Kernel::Dot)?;
    let max_pow = if quick { 6 } else { 12 };
    let ns: Vec<usize> = (1..=max_pow).map(|k| 1usize << k).collect();
    let radii = [2.0, 3.0, 4.0];
    let mut rows = Vec::new();
    let mut curves = Vec::new();
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
        curves.push(Curve::new(
            format!("R = {r} (small-n slope {slope:.2})"),
            pts,
            CurveKind::Measured,
        ));
    }
    // sqrt(n) reference through the R = 4 curve's first point.
    let first = curves.last().expect("three radii").points[0];
    curves.push(Curve::new(
        "c sqrt(n)",
        ns.iter()
            .map(|&n| (n as f64, first.1 * (n as f64 / first.0).sqrt()))
            .collect(),
        CurveKind::Reference,
    ));
    let figure = Figure {
        name: "saturation",
        csv: numeric_csv("R,n,sigma", &rows),
        plot: Plot {
            title: "Mean-field saturation: A = V = I in R^2, adversarial input".into(),
            x_label: "n (tokens)".into(),
            y_label: "local constant ||J(X)||_2 (attained)".into(),
            log_x: true,
            log_y: true,
            curves,
            vlines,
        },
    };
    Ok((
        figure,
        json!({ "figure": "saturation", "a": 1.0, "curves": summary }),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saturation_grows_like_sqrt_then_flattens() {
        let (_, v) = saturation(true).unwrap();
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
    }
}
