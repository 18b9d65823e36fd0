//! Figure (e): the anchor's estimator against the true local constant on MiniLM.
//!
//! Castin et al.'s stored code forms its power-iteration step with
//! `torch.func.jvp(f, (X,), (u,))[0]`, which is f(X) (the primal output), not J u; the VJP of
//! that is J(X)^T f(X) whatever u is, so the loop returns sqrt(||J(X)^T f(X)||_F) from its first
//! step on, not ||J(X)||_2. Here both are computed at the same inputs: windows of the embedded
//! text (the model's own layer inputs) and the adversarial construction, for the attention
//! sublayer, for the scope their BERT experiments used (transformers' `BertAttention`: attention,
//! W_O, residual and the post-LayerNorm, lipattn's `sublayer-residual-norm`) and for one head, and
//! the growth exponents in n of both are fitted.

use crate::figure::{numeric_csv, Curve, CurveKind, Figure, Plot};
use crate::setup::lanczos;
use crate::stats::{loglog_fit, median};
use anyhow::Result;
use faer::{Mat, MatRef};
use lipattn::analysis::DEFAULT_TEXT;
use lipattn::derivatives::{Linearization, LinearizedMap};
use lipattn::estimation::adversarial::adversarial_input;
use lipattn::estimation::local_norm_of;
use lipattn::linalg::{frobenius, max_row_norm};
use lipattn::models::{Model, Pool, Scope, TextTokenizer};
use serde_json::{json, Value};
use std::path::Path;

/// (true ||J(X)||_2, the anchor code's value sqrt(||J(X)^T f(X)||_F)) for a map linearised at
/// X with output `out`.
fn both<L: LinearizedMap<f64>>(out: MatRef<'_, f64>, lin: L) -> Result<(f64, f64)> {
    let anchor = frobenius(lin.vjp(out)?.as_ref()).sqrt();
    let sigma = local_norm_of(&lanczos(), move || Ok(lin))?.top.sigma;
    Ok((sigma, anchor))
}

/// One series: label, and per n the (sigma, anchor) values of each input.
struct Series {
    label: String,
    points: Vec<(usize, Vec<(f64, f64)>)>,
}

impl Series {
    fn medians(&self, pick: fn(&(f64, f64)) -> f64) -> Vec<(f64, f64)> {
        self.points
            .iter()
            .filter(|(_, v)| !v.is_empty())
            .map(|(n, v)| (*n as f64, median(&v.iter().map(pick).collect::<Vec<_>>())))
            .collect()
    }
}

pub fn anchor_estimator(dir: &Path, quick: bool) -> Result<(Figure, Value)> {
    let model = Model::open(dir)?;
    let tokenizer = TextTokenizer::from_dir(dir)?;
    let ns: &[usize] = if quick {
        &[8, 16]
    } else {
        &[8, 16, 32, 64, 128, 256, 512]
    };
    let windows = if quick { 1 } else { 3 };
    let layers: &[usize] = if quick { &[0] } else { &[0, 3] };
    let mut series = Vec::new();
    let mut rows = Vec::new();
    for &l in layers {
        for scope in [Scope::Attention, Scope::SublayerResidualNorm] {
            let w = model.stack(scope, Some(l), Pool::None)?;
            let mut s = Series {
                label: format!("layer {l} {} (text)", scope.name()),
                points: Vec::new(),
            };
            for &n in ns {
                let mut vals = Vec::new();
                for (k, ids) in tokenizer
                    .windows(DEFAULT_TEXT, n, windows)?
                    .iter()
                    .enumerate()
                {
                    let x = model.stack_input(&w, ids)?;
                    let (out, lin) = w.linearize(x.as_ref())?;
                    let (sigma, anchor) = both(out.as_ref(), lin)?;
                    rows.push(vec![
                        l as f64,
                        scope_code(scope),
                        0.0,
                        n as f64,
                        k as f64,
                        max_row_norm(x.as_ref()),
                        sigma,
                        anchor,
                    ]);
                    vals.push((sigma, anchor));
                }
                s.points.push((n, vals));
            }
            series.push(s);
        }
        // The construction for head 0 at the radius of the real text at this layer's input.
        let attention = model.attention_layer(l)?;
        let head = attention.head(0, false)?;
        let w = model.stack(Scope::Attention, Some(l), Pool::None)?;
        let probe = tokenizer.windows(DEFAULT_TEXT, *ns.last().expect("ns"), 1)?;
        let r = max_row_norm(model.stack_input(&w, &probe[0])?.as_ref());
        let mut s = Series {
            label: format!("layer {l} head 0 (construction, R = {r:.2})"),
            points: Vec::new(),
        };
        for &n in ns {
            let x: Mat<f64> = adversarial_input(&head, 0, n, r)?;
            let lin = Linearization::new(&head, x.as_ref(), None, false)?;
            let out = lin.output().to_owned();
            let (sigma, anchor) = both(out.as_ref(), lin)?;
            rows.push(vec![l as f64, 2.0, 1.0, n as f64, 0.0, r, sigma, anchor]);
            s.points.push((n, vec![(sigma, anchor)]));
        }
        series.push(s);
    }
    let mut curves = Vec::new();
    let mut fits = Vec::new();
    for s in &series {
        let true_pts = s.medians(|p| p.0);
        let anchor_pts = s.medians(|p| p.1);
        let (e_true, c_true) = loglog_fit(&true_pts);
        let (e_anchor, c_anchor) = loglog_fit(&anchor_pts);
        let (e_true_100, _) = loglog_fit(
            &true_pts
                .iter()
                .copied()
                .filter(|p| p.0 <= 128.0)
                .collect::<Vec<_>>(),
        );
        let (e_anchor_100, _) = loglog_fit(
            &anchor_pts
                .iter()
                .copied()
                .filter(|p| p.0 <= 128.0)
                .collect::<Vec<_>>(),
        );
        fits.push(json!({
            "series": s.label,
            "true": {"exponent": e_true, "coefficient": c_true, "exponent_n_le_128": e_true_100,
                     "median_by_n": true_pts},
            "anchor_code": {"exponent": e_anchor, "coefficient": c_anchor,
                            "exponent_n_le_128": e_anchor_100, "median_by_n": anchor_pts},
        }));
        curves.push(Curve::new(
            format!("{}: ||J(X)||_2", s.label),
            true_pts,
            CurveKind::Measured,
        ));
        curves.push(Curve::new(
            format!("{}: anchor code, sqrt(||J^T f(X)||)", s.label),
            anchor_pts,
            CurveKind::Reference,
        ));
    }
    let csv = numeric_csv(
        "layer,scope(0=attention;1=sublayer-residual-norm;2=head0),input(0=text;1=construction),n,window,radius,true_local_constant,anchor_code_value",
        &rows,
    );
    let figure = Figure {
        name: "anchor_estimator",
        csv,
        plot: Plot {
            title: "MiniLM: the true local constant and the anchor code's value".into(),
            x_label: "n (tokens)".into(),
            y_label: "value (Frobenius norms)".into(),
            log_x: true,
            log_y: true,
            curves,
            vlines: vec![],
        },
    };
    Ok((
        figure,
        json!({"figure": "anchor_estimator", "ns": ns, "windows": windows, "layers": layers,
               "text": lipattn::analysis::DEFAULT_TEXT_SOURCE, "fits": fits}),
    ))
}

fn scope_code(s: Scope) -> f64 {
    match s {
        Scope::Attention => 0.0,
        _ => 1.0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lipattn::derivatives::dense::dense_jacobian;
    use lipattn::estimation::SplitMix;

    /// The anchor code's value against an independent path: the dense Jacobian (built column by
    /// column from JVPs), J^T f(X) as a matrix-vector product, and the dense SVD for ||J||_2.
    #[test]
    fn anchor_value_is_sqrt_of_jt_f_and_differs_from_the_norm() {
        let layer = crate::fixtures::synthetic_layer();
        let x = SplitMix::new(4).gauss_mat::<f64>(5, layer.d_in());
        let lin = Linearization::new(&layer, x.as_ref(), None, false).expect("lin");
        let out = lin.output().to_owned();
        let j = dense_jacobian(&lin).expect("dense");
        // Rows of the dense Jacobian are the output entries (a, b) at a e + b.
        let e = out.ncols();
        let jt_f = (0..j.ncols())
            .map(|c| {
                (0..j.nrows())
                    .map(|r| j[(r, c)] * out[(r / e, r % e)])
                    .sum::<f64>()
                    .powi(2)
            })
            .sum::<f64>()
            .sqrt();
        let top = j
            .singular_values()
            .expect("svd")
            .into_iter()
            .fold(0.0f64, f64::max);
        let (sigma, anchor) = both(out.as_ref(), lin).expect("both");
        assert!(
            (anchor - jt_f.sqrt()).abs() < 1e-10 * anchor,
            "{anchor} vs {}",
            jt_f.sqrt()
        );
        assert!((sigma - top).abs() < 1e-7 * top, "{sigma} vs {top}");
        assert!(
            (sigma - anchor).abs() > 1e-3 * sigma,
            "the two coincide here: {sigma}"
        );
    }

    #[test]
    fn anchor_figure_on_minilm_when_available() {
        let Some(dir) = std::env::var_os("LIPATTN_MINILM") else {
            eprintln!("LIPATTN_MINILM unset: skipping figure (e)");
            return;
        };
        let (fig, summary) = anchor_estimator(Path::new(&dir), true).expect("figure (e)");
        // Header, two scopes x two n x one window, the construction at two n.
        assert_eq!(fig.csv.lines().count(), 1 + 2 * 2 + 2);
        for f in summary["fits"].as_array().expect("fits") {
            for side in ["true", "anchor_code"] {
                let e = f[side]["exponent"].as_f64().expect("exponent");
                assert!(e.is_finite(), "{f}");
            }
        }
    }
}
