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
        let beta_of = |sign: f64| -> Vec<f64> {
            (0..d)
                .map(|k| sign * r * (0..d).map(|i| a[(i, k)] * p[i]).sum::<f64>() + c[k])
                .collect()
        };
        let (sign, beta) = [1.0, -1.0]
            .into_iter()
            .map(|s| (s, beta_of(s)))
            .max_by(|x, y| norm(&x.1).total_cmp(&norm(&y.1)))
            .expect("two signs");
        let x: Vec<f64> = p.iter().map(|v| sign * r * v).collect();
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
        let alpha = (self.beta_x + margin) / (r * self.beta_norm);
        if alpha.is_nan() || alpha.abs() >= 1.0 {
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
