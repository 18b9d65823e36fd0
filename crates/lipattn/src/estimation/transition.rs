//! Starts at a softmax transition (docs/background.md#transition-starts). At a real radius the
//! scores of a head span hundreds of units, so a random input has one-hot attention rows and
//! almost no gradient: an ascent from it stays where it started. The local constant is made
//! where a query is balanced between keys: there the derivative of its attention row along a key
//! is largest, and with many queries balanced on the same two keys every one of them moves when
//! a key does. These starts put all queries but two at the point of the ball whose scores vary
//! most (the top left singular vector of A = W_Q^T W_K / sqrt(dk)) and the two remaining tokens
//! as keys with equal scores, differing along the direction the value map stretches most.

use crate::attention::{AttentionLayer, Kernel};
use crate::domain::Domain;
use crate::error::{Error, Result};
use faer::{Mat, Side};

/// The unit top eigenvector (and eigenvalue) of a symmetric matrix.
pub(super) fn top_eigenvector(s: &Mat<f64>) -> Result<(Vec<f64>, f64)> {
    let evd = s
        .self_adjoint_eigen(Side::Lower)
        .map_err(|e| Error::Numerical(format!("eigensolver: {e:?}")))?;
    let d = s.nrows();
    let top = evd.S()[d - 1];
    Ok(((0..d).map(|k| evd.U()[(k, d - 1)]).collect(), top))
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

fn norm(a: &[f64]) -> f64 {
    dot(a, a).sqrt()
}

/// What the transition starts of one head on a ball B_R share whatever n is: the query x, the
/// unit key-score direction b with |beta| and beta^T x, and the unit key offset v. Computing it
/// costs two d x d eigendecompositions, so a sweep over n computes it once (`start` per n).
#[derive(Clone, Debug)]
pub struct TransitionGeometry {
    radius: f64,
    x: Vec<f64>,
    b: Vec<f64>,
    beta_norm: f64,
    beta_x: f64,
    v: Vec<f64>,
}

impl TransitionGeometry {
    /// None where the head has no transition start on B_R (a vanishing score matrix or value
    /// map).
    pub fn new(layer: &AttentionLayer<f64>, head: usize, radius: f64) -> Result<Option<Self>> {
        crate::domain::check_radius(radius)?;
        let r = radius;
        let h = layer.head(head, false)?;
        let wk = match layer.kernel {
            Kernel::Dot => &h.wk,
            Kernel::L2 => &h.wq,
        };
        let scale = layer.score_scale::<f64>();
        let a = h.wq.transpose() * wk * scale;
        let d = a.nrows();
        // The query: the left singular vector p of A's top singular value (top eigenvector of
        // A A^T), which makes |A^T x| largest on the sphere of radius R.
        let (p, s2) = top_eigenvector(&(&a * a.transpose()))?;
        if s2.is_nan() || s2 <= 0.0 {
            return Ok(None);
        }
        // The key-dependent part of the score of query x is beta^T y, beta = A^T x + W_K^T b_Q s.
        // For the tied L2 kernel the key-dependent part is (2 x^T A y - |W_Q y|^2) / sqrt(dk):
        // the two keys' |W_Q y|^2 differ in general, so there the queries are only roughly
        // balanced. Any point of the ball is a valid start; balance is what makes it a good one.
        let c: Vec<f64> = match layer.kernel {
            Kernel::Dot => (0..d)
                .map(|k| (0..h.dk).map(|i| wk[(i, k)] * h.bq[i]).sum::<f64>() * scale)
                .collect(),
            Kernel::L2 => vec![0.0; d],
        };
        let beta_of = |x: &[f64]| -> Vec<f64> {
            (0..d)
                .map(|k| (0..d).map(|i| a[(i, k)] * x[i]).sum::<f64>() + c[k])
                .collect()
        };
        let x: Vec<f64> = [1.0, -1.0]
            .into_iter()
            .map(|sign| p.iter().map(|v| sign * r * v).collect::<Vec<f64>>())
            .max_by(|x, y| norm(&beta_of(x)).total_cmp(&norm(&beta_of(y))))
            .expect("two signs");
        // For the dot kernel, move the query to where the keys can sit nearest the equator of
        // beta (the key offset, and with it the key term, scales with sqrt(1 - alpha^2)).
        let x = match layer.kernel {
            Kernel::Dot => best_query(&h.wq, wk, scale, &c, r, x),
            Kernel::L2 => x,
        };
        let beta = beta_of(&x);
        let beta_norm = norm(&beta);
        // Fails closed on NaN.
        if beta_norm.is_nan() || beta_norm <= 0.0 {
            return Ok(None);
        }
        let b: Vec<f64> = beta.iter().map(|v| v / beta_norm).collect();
        // The key offset v: unit, orthogonal to beta, where the value map M = W_O^h W_V^h
        // stretches most (top eigenvector of P M^T M P with P the projection orthogonal to beta).
        let m = &h.wo * &h.wv;
        let mut mp = m.clone();
        for i in 0..mp.nrows() {
            let mb: f64 = (0..d).map(|k| m[(i, k)] * b[k]).sum();
            for k in 0..d {
                mp[(i, k)] -= mb * b[k];
            }
        }
        let (mut v, _) = top_eigenvector(&(mp.transpose() * &mp))?;
        let vb = dot(&v, &b);
        for k in 0..d {
            v[k] -= vb * b[k];
        }
        let vn = norm(&v);
        if vn.is_nan() || vn <= 0.0 {
            return Ok(None);
        }
        v.iter_mut().for_each(|e| *e /= vn);
        Ok(Some(Self {
            radius: r,
            beta_x: dot(&beta, &x),
            x,
            b,
            beta_norm,
            v,
        }))
    }

    /// The start for n tokens, or None where there is none (n < 3, or keys that cannot outscore
    /// the queries within the ball). Tokens 0 and 1 are the keys, so that under a causal mask
    /// every query sees both.
    pub fn start(&self, n: usize) -> Option<Mat<f64>> {
        if n < 3 {
            return None;
        }
        let r = self.radius;
        // The keys must outscore the n - 2 queries (which see each other too) by enough that
        // the queries' own share is small: log(n) + 4 units above the queries' score of each
        // other.
        let margin = (n as f64).ln() + 4.0;
        // Keys on the equator (alpha = 0) already outscore queries whose own score is below
        // -margin; a negative alpha would only bring them closer together.
        let alpha = ((self.beta_x + margin) / (r * self.beta_norm)).max(0.0);
        if alpha.is_nan() || alpha >= 1.0 {
            return None;
        }
        let side = (1.0 - alpha * alpha).sqrt();
        let (b, v) = (&self.b, &self.v);
        Some(Mat::from_fn(n, self.x.len(), |i, k| match i {
            0 => r * (alpha * b[k] + side * v[k]),
            1 => r * (alpha * b[k] - side * v[k]),
            _ => self.x[k],
        }))
    }
}

/// The margin the query is chosen for: that of n = 64 (`start` recomputes alpha for its own n).
const REFERENCE_MARGIN: f64 = 8.158883083359672; // ln(64) + 4

/// The query of a transition start: from x0 (the top left singular vector of A, scaled to R),
/// projected gradient ascent on the sphere |x| = R of g(x) = |beta|^2 - t_+^2 / R^2 with
/// beta = A^T x + c and t = beta^T x + margin, i.e. of |beta|^2 (1 - alpha_+^2): the key term of
/// the start is proportional to |beta| sqrt(1 - alpha^2) (docs/background.md#transition-starts).
/// A = scale W_Q^T W_K is applied through its factors (rank dk). Any point of the sphere is a
/// valid start; this only picks a better one.
fn best_query(
    wq: &Mat<f64>,
    wk: &Mat<f64>,
    scale: f64,
    c: &[f64],
    r: f64,
    x0: Vec<f64>,
) -> Vec<f64> {
    let (dk, d) = (wq.nrows(), wq.ncols());
    // y -> W y (rows of w) and z -> W^T z.
    let apply = |w: &Mat<f64>, y: &[f64]| -> Vec<f64> {
        (0..dk)
            .map(|i| (0..d).map(|k| w[(i, k)] * y[k]).sum::<f64>())
            .collect()
    };
    let apply_t = |w: &Mat<f64>, z: &[f64]| -> Vec<f64> {
        (0..d)
            .map(|k| (0..dk).map(|i| w[(i, k)] * z[i]).sum::<f64>())
            .collect()
    };
    let beta = |x: &[f64]| -> Vec<f64> {
        let kx = apply_t(wk, &apply(wq, x));
        kx.iter().zip(c).map(|(v, ci)| scale * v + ci).collect()
    };
    let value = |x: &[f64]| -> f64 {
        let b = beta(x);
        let t = (dot(&b, x) + REFERENCE_MARGIN).max(0.0);
        dot(&b, &b) - t * t / (r * r)
    };
    // (1/2) grad g = A beta - (t_+ / R^2) ((A + A^T) x + c).
    let ascent_direction = |x: &[f64]| -> Vec<f64> {
        let b = beta(x);
        let t = (dot(&b, x) + REFERENCE_MARGIN).max(0.0);
        let a_of = |y: &[f64]| -> Vec<f64> {
            apply_t(wq, &apply(wk, y))
                .into_iter()
                .map(|v| scale * v)
                .collect()
        };
        let (ab, ax) = (a_of(&b), a_of(x));
        let mut g: Vec<f64> = (0..d)
            .map(|k| ab[k] - t / (r * r) * (ax[k] + b[k]))
            .collect();
        // b = A^T x + c, so (A + A^T) x + c = A x + b. Project onto the sphere's tangent space.
        let gx = dot(&g, x) / dot(x, x);
        g.iter_mut().zip(x).for_each(|(gi, xi)| *gi -= gx * xi);
        g
    };
    let (mut x, mut fx) = (x0.clone(), value(&x0));
    let mut step = 0.05 * r;
    for _ in 0..200 {
        let g = ascent_direction(&x);
        let gn = norm(&g);
        if !(gn > 0.0 && gn.is_finite()) {
            break;
        }
        let mut y: Vec<f64> = x
            .iter()
            .zip(&g)
            .map(|(xi, gi)| xi + step * gi / gn)
            .collect();
        let yn = norm(&y);
        y.iter_mut().for_each(|v| *v *= r / yn);
        let fy = value(&y);
        if fy > fx {
            (x, fx) = (y, fy);
            step *= 1.2;
        } else {
            step *= 0.5;
            if step < 1e-6 * r {
                break;
            }
        }
    }
    if fx.is_finite() {
        x
    } else {
        x0
    }
}

/// The transition start of head `head` for `domain` (`TransitionGeometry` for one n), or None
/// where the head has none.
pub fn transition_start(
    layer: &AttentionLayer<f64>,
    head: usize,
    domain: &Domain,
) -> Result<Option<Mat<f64>>> {
    if domain.n < 3 {
        return Ok(None);
    }
    Ok(TransitionGeometry::new(layer, head, domain.radius)?.and_then(|g| g.start(domain.n)))
}
