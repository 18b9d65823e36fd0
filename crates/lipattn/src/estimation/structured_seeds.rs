//! Starts for the measure-pair searches built from a dot-product head's weights. Random measures
//! in d = 384 almost never line up with the few directions where the constants of B2 and B3 are
//! made; these starts encode the mechanisms of those proofs (docs/bounds.md), so that the attained
//! ratios of `search_pairs` and `search_cross_pairs` come close to what the weights allow.

use super::adversarial::adversarial_direction;
use crate::attention::{AttentionLayer, Kernel};
use crate::error::{Error, Result};
use crate::measure::Measure;
use faer::Mat;

/// The starts for one radius R (every atom in B_R).
#[derive(Clone, Debug)]
pub struct StructuredSeeds {
    pub radius: f64,
    /// Pairs (mu, nu) for the self-attention map F (B2), in W1 or W2.
    pub pairs: Vec<(Measure, Measure)>,
    /// (queries, context, moved queries) for cross-attention in its queries (B3).
    pub queries: Vec<(Measure, Measure, Measure)>,
    /// (queries, context, moved context) for cross-attention in its context (B3).
    pub context: Vec<(Measure, Measure, Measure)>,
}

/// The self-attention pair starts at radius R from every head of `layer` (dot kernel; none for
/// the L2 kernel, whose mechanisms differ), as `lipattn lipschitz` and the Python `lipschitz`
/// use them.
pub fn layer_pair_seeds(
    layer: &AttentionLayer<f64>,
    radius: f64,
) -> Result<Vec<(Measure, Measure)>> {
    if layer.kernel != Kernel::Dot {
        return Ok(Vec::new());
    }
    let mut out = Vec::new();
    for h in 0..layer.heads {
        for s in structured_seeds(&layer.head(h, false)?, &[radius])? {
            out.extend(s.pairs);
        }
    }
    Ok(out)
}

/// Search starts built from one dot-product head's weights, one set per radius, for the three
/// measure searches (B2 pairs, B3 in the queries, B3 in the context). Random measures in d = 384 almost never align with the few directions where the
/// constants of B2/B3 are made, so these encode the mechanisms of the proofs:
/// - two atoms a, b and a small change of the mass p on b: the attention weight of b moves by
///   about e^{Delta} dp with Delta = beta(x)^T (b - a), the mechanism behind e^{2 R beta};
///   a, b and the query x are taken along the top singular vectors of A (which maximise
///   x^T A y over B_R) and of the value map;
/// - translations of a two-atom measure (ratio about |M t| / |t|);
/// - for the query argument, a context at +-R w (covariance R^2 w w^T, so the query Jacobian is
///   R^2 M w (A w)^T) with w maximising |M w| |A w| among a few candidates, and a query where the
///   two scores balance, moved along A w.
pub fn structured_seeds(head: &AttentionLayer<f64>, radii: &[f64]) -> Result<Vec<StructuredSeeds>> {
    if head.heads != 1 || head.kernel != Kernel::Dot {
        return Err(Error::invalid(format!(
            "structured search starts are built for one dot-product head (got {} heads, kernel {:?})",
            head.heads, head.kernel
        )));
    }
    let s = head.score_scale::<f64>();
    let a_mat = head.wq.transpose() * &head.wk * s;
    let c = matvec(&head.wk.transpose().to_owned(), &head.bq)
        .into_iter()
        .map(|x| x * s)
        .collect::<Vec<_>>();
    let m_mat = &head.wo * &head.wv;
    let (_, v_a, z_a) = top_singular(&a_mat);
    let (_, v_m, _) = top_singular(&m_mat);
    let u = adversarial_direction(head, 0)?;
    let neg = |v: &[f64]| scaled(v, -1.0);
    let mut dirs = vec![v_a.clone(), v_m.clone(), u.clone()];
    for sgn in [1.0, -1.0] {
        let mix: Vec<f64> = v_a.iter().zip(&v_m).map(|(x, y)| x + sgn * y).collect();
        dirs.push(unit(&mix));
    }
    let norm_prod = |w: &[f64]| {
        let mw = matvec(&m_mat, w);
        let aw = matvec(&a_mat, w);
        dotv(&mw, &mw).sqrt() * dotv(&aw, &aw).sqrt()
    };
    let w_best = dirs
        .iter()
        .max_by(|x, y| norm_prod(x).total_cmp(&norm_prod(y)))
        .cloned()
        .expect("candidates");
    let ps = [1e-6, 1e-4, 1e-2, 0.1, 0.5];
    let reweigh = |p: f64| (vec![1.0 - p, p], vec![1.0 - 1.2 * p, 1.2 * p]);
    let c_hat = unit(&c);
    let a_t = a_mat.transpose().to_owned();
    let beta_at =
        |x: &[f64]| -> Vec<f64> { matvec(&a_t, x).iter().zip(&c).map(|(p, q)| p + q).collect() };
    let mut out = Vec::with_capacity(radii.len());
    for &r in radii {
        // Self-attention pairs (B2).
        let mut pairs = Vec::new();
        let two_atom = [
            (neg(&v_a), v_a.clone()),
            (z_a.clone(), v_a.clone()),
            (neg(&z_a), v_a.clone()),
            (neg(&u), u.clone()),
            (neg(&v_m), v_m.clone()),
            (neg(&c_hat), c_hat.clone()),
        ];
        for (da, db) in &two_atom {
            for (a, b) in [(da, db), (db, da)] {
                let pts = [scaled(a, r), scaled(b, r)];
                // The heavy atom a is the query that sees b amplified by e^{Delta}, Delta =
                // beta(a)^T (b - a); the gain saturates once p e^{Delta} > 1.
                let diff: Vec<f64> = pts[1].iter().zip(&pts[0]).map(|(p, q)| p - q).collect();
                let delta = dotv(&beta_at(&pts[0]), &diff);
                let p_match = (-delta.abs()).exp().clamp(1e-9, 0.1);
                for p in ps.into_iter().chain([p_match]) {
                    let (w0, w1) = reweigh(p);
                    pairs.push((atoms(&pts, &w0)?, atoms(&pts, &w1)?));
                }
            }
        }
        // Self-attention has no separate query: a heavy atom x plays the query, and the mass moves
        // between a light pair (a, b) that x attends to very unequally.
        for dir in [&v_a, &v_m, &c_hat] {
            let ad = unit(&matvec(&a_mat, dir));
            for sgn in [1.0, -1.0] {
                let x = scaled(&ad, sgn * r);
                let delta = 2.0 * r * dotv(&beta_at(&x), dir);
                let b = scaled(dir, r * delta.signum());
                let a = scaled(&b, -1.0);
                let pts = [x.clone(), a, b];
                // The gain e^{Delta} dp saturates once p e^{Delta} > 1, so p = e^{-Delta} is tried too.
                let p_match = (-delta.abs()).exp().clamp(1e-9, 0.1);
                for q in [0.05, 0.5] {
                    for p in [1e-6, 1e-4, 1e-2, 0.1, p_match] {
                        pairs.push((
                            atoms(&pts, &[1.0 - q - p, q, p])?,
                            atoms(&pts, &[1.0 - q - p, q - 0.2 * p, 1.2 * p])?,
                        ));
                    }
                }
            }
        }
        for dir in [&v_m, &v_a, &u, &w_best] {
            let pts = [scaled(dir, 0.45 * r), scaled(dir, -0.45 * r)];
            let moved = [scaled(dir, 0.46 * r), scaled(dir, -0.44 * r)];
            pairs.push((atoms(&pts, &[0.5, 0.5])?, atoms(&moved, &[0.5, 0.5])?));
        }
        // Context argument (B3): query x fixed, context reweighted between a and b.
        let mut context = Vec::new();
        for dir in [&v_a, &v_m, &w_best, &c_hat] {
            // The query that maximises beta(x)^T dir over B_R: x along A dir, plus the sign of c.
            let ad = unit(&matvec(&a_mat, dir));
            for sgn in [1.0, -1.0] {
                let x = scaled(&ad, sgn * r);
                let delta = 2.0 * r * dotv(&beta_at(&x), dir);
                let (b, a) = if delta >= 0.0 {
                    (scaled(dir, r), scaled(dir, -r))
                } else {
                    (scaled(dir, -r), scaled(dir, r))
                };
                let q = atoms(&[x], &[1.0])?;
                let mut plist = ps.to_vec();
                plist.push((-delta.abs()).exp().clamp(1e-9, 0.5));
                for p in plist {
                    let (w0, w1) = reweigh(p);
                    context.push((
                        q.clone(),
                        atoms(&[a.clone(), b.clone()], &w0)?,
                        atoms(&[a.clone(), b.clone()], &w1)?,
                    ));
                }
            }
        }
        // Query argument (B3): context at +-R w, query at the balance point, moved along A w.
        let mut queries = Vec::new();
        for w in dirs.iter().chain([&w_best]) {
            let aw = matvec(&a_mat, w);
            let aw2 = dotv(&aw, &aw).max(f64::MIN_POSITIVE);
            // (A^T x + c)^T w = x^T (A w) + c^T w vanishes at x0 = -(c^T w / |A w|^2) A w.
            let mut x0 = scaled(&aw, -dotv(&c, w) / aw2);
            let nx = dotv(&x0, &x0).sqrt();
            if nx > 0.9 * r {
                x0 = scaled(&x0, 0.9 * r / nx);
            }
            let step = scaled(&unit(&aw), 1e-3 * r);
            let x1: Vec<f64> = x0.iter().zip(&step).map(|(p, q)| p + q).collect();
            let ctx = atoms(&[scaled(w, r), scaled(w, -r)], &[0.5, 0.5])?;
            queries.push((atoms(&[x0], &[1.0])?, ctx, atoms(&[x1], &[1.0])?));
        }
        out.push(StructuredSeeds {
            radius: r,
            pairs,
            queries,
            context,
        });
    }
    Ok(out)
}

fn top_singular(m: &Mat<f64>) -> (f64, Vec<f64>, Vec<f64>) {
    let mut v = Mat::from_fn(m.ncols(), 1, |i, _| 1.0 + 0.01 * i as f64);
    let mut mv = m * &v;
    for _ in 0..300 {
        let w = m.transpose() * &mv;
        let nw = w.norm_l2();
        if nw == 0.0 {
            break;
        }
        v = w * (1.0 / nw);
        mv = m * &v;
    }
    let s = mv.norm_l2();
    let left = (0..m.nrows())
        .map(|i| mv[(i, 0)] / s.max(f64::MIN_POSITIVE))
        .collect();
    (s, (0..m.ncols()).map(|i| v[(i, 0)]).collect(), left)
}

fn unit(v: &[f64]) -> Vec<f64> {
    let n = v
        .iter()
        .map(|x| x * x)
        .sum::<f64>()
        .sqrt()
        .max(f64::MIN_POSITIVE);
    v.iter().map(|x| x / n).collect()
}

fn dotv(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

fn matvec(m: &Mat<f64>, v: &[f64]) -> Vec<f64> {
    (0..m.nrows())
        .map(|i| (0..m.ncols()).map(|k| m[(i, k)] * v[k]).sum())
        .collect()
}

/// Weighted measure on the given atoms (rows scaled from unit directions by the caller).
fn atoms(points: &[Vec<f64>], weights: &[f64]) -> Result<Measure> {
    let d = points[0].len();
    Measure::normalised(
        Mat::from_fn(points.len(), d, |i, k| points[i][k]),
        weights.to_vec(),
    )
}

fn scaled(v: &[f64], s: f64) -> Vec<f64> {
    v.iter().map(|x| x * s).collect()
}
