//! Ball bounds of the pieces between attention sublayers (docs/bounds.md#lemma-n): on a ball
//! around a piece's input, an upper bound on ||J|| over the ball ("sup"), on the Lipschitz
//! constant of J there ("slope", ||J(Y) - J(Y')||_2 <= slope ||Y - Y'||_F) and on ||J|| at the
//! centre. All are deterministic and rounded upward; every piece acts token by token or on one
//! pooled row, so its Jacobian is block diagonal and each bound is the worst token's.

use crate::attention::norms::LayerNorm;
use crate::error::{Error, Result};
use crate::linalg::rounding::{
    add_up, div_up, down, gamma, mul_up, norm2_up, spectral_up, sqrt_down, sqrt_up, UNIT_ROUNDOFF,
};
use crate::models::{Activation, FeedForward};
use faer::MatRef;
use serde::Serialize;

/// A ball around a piece's input: every Y in it has ||Y - X||_F <= `frobenius` and every token
/// within `token` of X's (token <= frobenius).
#[derive(Clone, Copy, Debug, Serialize)]
pub struct PieceBall {
    pub frobenius: f64,
    pub token: f64,
}

impl PieceBall {
    pub fn centre() -> Self {
        Self {
            frobenius: 0.0,
            token: 0.0,
        }
    }
}

/// What a piece satisfies on a ball.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct PieceBound {
    /// An upper bound on sup ||J(Y)||_2 over the ball.
    pub sup: f64,
    /// An upper bound on the Lipschitz constant of J on the ball (Frobenius norms).
    pub slope: f64,
    /// An upper bound on each token's own Jacobian block over the ball (token-wise pieces): a
    /// token moved by t moves its output by at most token_gain t; +inf for pieces that mix tokens.
    pub token_gain: f64,
}

/// max_k |gamma_k|.
fn max_abs(v: &[f64]) -> f64 {
    v.iter().fold(0.0f64, |m, g| m.max(g.abs()))
}

/// Lower bounds of |P x_t| (P: centring) for every token t of `x`, whatever the rounding of the
/// computed mean: |P x| = |P (x - m 1)| >= |x - m 1| - sqrt(d) |mean(x) - m| for any number m.
fn centred_norms_down(x: MatRef<'_, f64>) -> Vec<f64> {
    let d = x.ncols();
    let g = gamma(d + 3);
    (0..x.nrows())
        .map(|i| {
            let row: Vec<f64> = (0..d).map(|k| x[(i, k)]).collect();
            let m = row.iter().sum::<f64>() / d as f64;
            let abs_mean = row.iter().map(|v| v.abs()).sum::<f64>() / d as f64;
            // |fl(sum)/d - exact mean| <= gamma_{d+1} mean|x|; the differences x_k - m round
            // once each (relative u), and the computed norm is within gamma_{d+2} of theirs.
            let computed = row.iter().map(|v| (v - m) * (v - m)).sum::<f64>().sqrt();
            let norm = computed * (1.0 - 2.0 * g) * (1.0 - UNIT_ROUNDOFF);
            let shift = mul_up(sqrt_up(d as f64), mul_up(g, mul_up(1.01, abs_mean)));
            down(down(norm) - shift).max(0.0)
        })
        .collect()
}

/// Lemma N (LayerNorm): with sigma(y) = sqrt(|P y|^2 / d + eps) >= s on the ball,
/// ||J(y)|| <= max|gamma| / s and the second derivative is at most
/// max|gamma| 6 / (sqrt(d) s^2), per token.
pub fn layer_norm_ball(ln: &LayerNorm, x: MatRef<'_, f64>, ball: PieceBall) -> Result<PieceBound> {
    let d = ln.gamma.len();
    crate::attention::forward::check_shape("LayerNorm input", x, x.nrows(), d)?;
    let g = max_abs(&ln.gamma);
    let r = ball.token.min(ball.frobenius);
    let s = centred_norms_down(x)
        .into_iter()
        .map(|c| {
            let a = down(c - r).max(0.0);
            let var = down(down(a * a) / d as f64).max(0.0);
            sqrt_down(down(var + ln.eps))
        })
        .fold(f64::INFINITY, f64::min);
    if s.is_nan() || s <= 0.0 {
        return Err(Error::invalid(format!(
            "the ball reaches a token whose LayerNorm variance is 0 (eps = {}): no bound holds there; take a smaller ball",
            ln.eps
        )));
    }
    let sup = div_up(g, s);
    let slope = div_up(mul_up(g, 6.0), mul_up(sqrt_down(d as f64), down(s * s)));
    Ok(PieceBound {
        sup,
        slope,
        token_gain: sup,
    })
}

/// A proven upper bound of sup_x |act''(x)| (docs/bounds.md#lemma-n; checked on a grid in
/// tests/activation_bounds.rs), or None where act'' does not exist (ReLU).
pub fn second_derivative_bound(act: Activation) -> Option<f64> {
    match act {
        // GELU-erf: act'' = phi(x) (2 - x^2), largest in absolute value at 0: 2 phi(0) = 0.798.
        Activation::GeluErf | Activation::GeluTanh | Activation::GeluFast => Some(0.82),
        Activation::Silu => Some(0.52),
        Activation::Relu => None,
    }
}

/// Norms of a feed-forward network's matrices, formed once per network.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct FeedForwardNorms {
    /// ||W_in||_2, ||W_out||_2 and max_j |row j of W_in|.
    pub w_in: f64,
    pub w_out: f64,
    pub w_in_rows: f64,
    /// sup |act'| and sup |act''|.
    pub c1: f64,
    pub c2: f64,
}

impl FeedForwardNorms {
    pub fn of(ff: &FeedForward) -> Result<Self> {
        let c2 = second_derivative_bound(ff.activation).ok_or_else(|| {
            Error::invalid(
                "the feed-forward activation is ReLU, whose derivative jumps: no slope bound exists for the ball certificate",
            )
        })?;
        let w_in_rows = (0..ff.w_in.nrows())
            .map(|j| norm2_up((0..ff.w_in.ncols()).map(|k| ff.w_in[(j, k)])))
            .fold(0.0f64, f64::max);
        Ok(Self {
            w_in: spectral_up(ff.w_in.as_ref())?,
            w_out: spectral_up(ff.w_out.as_ref())?,
            w_in_rows,
            c1: ff.activation.derivative_bound(),
            c2,
        })
    }

    /// F(x) = W_out act(W_in x + b_in) + b_out per token, on any ball:
    /// ||J|| <= ||W_out|| c1 ||W_in||, and J(y) - J(y') = W_out diag(act'(z) - act'(z')) W_in
    /// with |act'(z_j) - act'(z'_j)| <= c2 |w_j| |y - y'|, so slope ||W_out|| ||W_in|| c2 max|w_j|.
    pub fn bound(&self) -> PieceBound {
        let sup = mul_up(self.w_out, mul_up(self.c1, self.w_in));
        PieceBound {
            sup,
            slope: mul_up(
                self.w_out,
                mul_up(self.w_in, mul_up(self.c2, self.w_in_rows)),
            ),
            token_gain: sup,
        }
    }
}

/// The mean over n tokens: linear, ||J|| = 1 / sqrt(n) (Frobenius to l2).
pub fn mean_pool_bound(n: usize) -> PieceBound {
    PieceBound {
        sup: div_up(1.0, sqrt_down(n as f64)),
        slope: 0.0,
        token_gain: f64::INFINITY,
    }
}

/// p / |p| on a ball of radius r around p (r < |p|): ||J|| = 1 / |p'| <= 1 / (|p| - r), and the
/// second derivative is at most (2 / sqrt 3) / |p'|^2 <= 2 / (|p| - r)^2.
pub fn normalise_bound(p: MatRef<'_, f64>, r: f64) -> Result<PieceBound> {
    let cells = (0..p.nrows()).flat_map(|i| (0..p.ncols()).map(move |k| p[(i, k)]));
    let computed = cells.clone().map(|v| v * v).sum::<f64>().sqrt();
    let norm = down(computed * (1.0 - 2.0 * gamma(p.ncols() + 2)));
    let m = down(norm - r);
    if m.is_nan() || m <= 0.0 {
        return Err(Error::invalid(format!(
            "the ball around the pooled embedding (radius {r} there) reaches its norm {norm}: the normalisation has no bound on it; take a smaller ball"
        )));
    }
    let sup = div_up(1.0, m);
    Ok(PieceBound {
        sup,
        slope: div_up(2.0, down(m * m)),
        token_gain: f64::INFINITY,
    })
}

/// g o h on a ball where h satisfies `inner` and g satisfies `outer` on a ball holding h's image:
/// ||J|| <= M_g M_h and slope <= H_g M_h^2 + M_g H_h.
pub fn compose(outer: PieceBound, inner: PieceBound) -> PieceBound {
    PieceBound {
        sup: mul_up(outer.sup, inner.sup),
        slope: add_up(
            mul_up(outer.slope, mul_up(inner.sup, inner.sup)),
            mul_up(outer.sup, inner.slope),
        ),
        token_gain: mul_up(outer.token_gain, inner.token_gain),
    }
}

/// The image of `ball` under a piece with bound `b`.
pub fn image(ball: PieceBall, b: &PieceBound) -> PieceBall {
    let frobenius = mul_up(b.sup, ball.frobenius);
    PieceBall {
        frobenius,
        token: mul_up(b.token_gain, ball.token).min(frobenius),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::linalg::{frobenius, SplitMix};
    use faer::Mat;

    /// ||J(a) - J(b)||_2 over a few unit directions, by central differences of the map, divided
    /// by ||a - b||_F: a lower estimate of the slope at (a, b) that the bound must exceed.
    fn measured_slope(
        f: &dyn Fn(&Mat<f64>) -> Mat<f64>,
        a: &Mat<f64>,
        b: &Mat<f64>,
        rng: &mut SplitMix,
    ) -> f64 {
        let h = 1e-5;
        let jvp = |x: &Mat<f64>, t: &Mat<f64>| (f(&(x + t * h)) - f(&(x - t * h))) * (0.5 / h);
        let dist = frobenius((a - b).as_ref());
        let mut best = 0.0f64;
        for _ in 0..6 {
            let t: Mat<f64> = rng.gauss_mat(a.nrows(), a.ncols());
            let t = &t * (1.0 / frobenius(t.as_ref()));
            let diff = jvp(a, &t) - jvp(b, &t);
            best = best.max(frobenius(diff.as_ref()) / dist);
        }
        best
    }

    fn point_in(x: &Mat<f64>, r: f64, rng: &mut SplitMix) -> Mat<f64> {
        let dir: Mat<f64> = rng.gauss_mat(x.nrows(), x.ncols());
        let s = r * rng.uniform() / frobenius(dir.as_ref());
        x + &dir * s
    }

    fn ln(d: usize, rng: &mut SplitMix, eps: f64) -> LayerNorm {
        LayerNorm {
            gamma: (0..d).map(|_| 1.0 + 0.5 * rng.uniform()).collect(),
            beta: (0..d).map(|_| rng.uniform() - 0.5).collect(),
            eps,
        }
    }

    #[test]
    fn layer_norm_bounds_hold_on_the_ball() {
        let mut rng = SplitMix::new(5);
        let mut worst = 0.0f64;
        for case in 0..40 {
            let (n, d) = (3, 4 + case % 5);
            let norm = ln(d, &mut rng, [1e-12, 1e-5, 0.1][case % 3]);
            let scale = [0.05, 0.5, 3.0][case % 3];
            let x: Mat<f64> = rng.gauss_mat::<f64>(n, d) * scale;
            let r = [0.002, 0.01, 0.03][(case / 3) % 3] * scale;
            let ball = PieceBall {
                frobenius: r,
                token: r,
            };
            let b = layer_norm_ball(&norm, x.as_ref(), ball).expect("bound");
            let f = |y: &Mat<f64>| norm.apply(y.as_ref()).unwrap();
            for _ in 0..8 {
                let (p, q) = (point_in(&x, r, &mut rng), point_in(&x, r, &mut rng));
                let s = measured_slope(&f, &p, &q, &mut rng);
                assert!(s <= b.slope, "case {case}: slope {s} > {}", b.slope);
                worst = worst.max(s / b.slope);
                // ||J(p) u|| for a random unit u, below the sup bound.
                let u: Mat<f64> = rng.gauss_mat(n, d);
                let u = &u * (1.0 / frobenius(u.as_ref()));
                let h = 1e-6;
                let ju = (f(&(&p + &u * h)) - f(&(&p - &u * h))) * (0.5 / h);
                assert!(
                    frobenius(ju.as_ref()) <= b.sup * (1.0 + 1e-6),
                    "case {case}"
                );
            }
        }
        assert!(worst > 1e-3, "the test never came near the bound ({worst})");
    }

    #[test]
    fn feed_forward_and_normalise_bounds_hold() {
        let mut rng = SplitMix::new(9);
        for case in 0..24 {
            let (n, d, h) = (2, 4, 7);
            let act = [Activation::GeluErf, Activation::GeluTanh, Activation::Silu][case % 3];
            let scale = [0.5, 2.0][case % 2];
            let ff = FeedForward {
                w_in: rng.gauss_mat::<f64>(h, d) * scale,
                b_in: (0..h).map(|_| rng.uniform() - 0.5).collect(),
                w_out: rng.gauss_mat::<f64>(d, h) * scale,
                b_out: vec![0.0; d],
                activation: act,
            };
            let b = FeedForwardNorms::of(&ff).expect("norms").bound();
            let f = |y: &Mat<f64>| ff.forward(y.as_ref()).unwrap();
            let x: Mat<f64> = rng.gauss_mat(n, d);
            for _ in 0..6 {
                let (p, q) = (point_in(&x, 0.3, &mut rng), point_in(&x, 0.3, &mut rng));
                let s = measured_slope(&f, &p, &q, &mut rng);
                assert!(s <= b.slope, "case {case}: {s} > {}", b.slope);
            }
            let pvec: Mat<f64> = rng.gauss_mat(1, 5);
            let r = 0.4 * frobenius(pvec.as_ref());
            let nb = normalise_bound(pvec.as_ref(), r).expect("bound");
            let g = |y: &Mat<f64>| y * (1.0 / frobenius(y.as_ref()));
            for _ in 0..6 {
                let (p, q) = (point_in(&pvec, r, &mut rng), point_in(&pvec, r, &mut rng));
                assert!(
                    measured_slope(&g, &p, &q, &mut rng) <= nb.slope,
                    "case {case}"
                );
            }
        }
        let relu = FeedForward {
            w_in: Mat::identity(2, 2),
            b_in: vec![0.0; 2],
            w_out: Mat::identity(2, 2),
            b_out: vec![0.0; 2],
            activation: Activation::Relu,
        };
        assert!(FeedForwardNorms::of(&relu).is_err());
    }
}
