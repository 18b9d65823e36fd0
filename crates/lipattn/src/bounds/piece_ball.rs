//! Ball bounds of the pieces between attention sublayers (docs/bounds.md#lemma-n): on a ball
//! around a piece's input, an upper bound on ||J|| over the ball ("sup"), on the Lipschitz
//! constant of J there ("slope", ||J(Y) - J(Y')||_2 <= slope ||Y - Y'||_F) and on ||J|| at the
//! centre. All are deterministic and rounded upward; every piece acts token by token or on one
//! pooled row, so its Jacobian is block diagonal and each bound is the worst token's.

use crate::attention::norms::{LayerNorm, RmsNorm};
use crate::error::{Error, Result};
use crate::linalg::rounding::{
    add_up, div_up, down, exp_down, exp_up, gamma, hypot_up, mul_up, norm2_up, spectral_up,
    sqrt_down, sqrt_up, up, ETA, UNIT_ROUNDOFF,
};
use crate::models::decoder::GatedFeedForward;
use crate::models::{Activation, FeedForward};
use faer::{Mat, MatRef};
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

/// A lower bound of sqrt(d) s^2 (0 where it underflows, so that a bound divided by it is +inf).
fn sqrt_d_s2_down(d: usize, s: f64) -> f64 {
    down(sqrt_down(d as f64) * down(s * s).max(0.0)).max(0.0)
}

/// An upper bound of a / b for a >= 0 and a lower bound b >= 0 of the divisor: 0 when a is
/// (a zero gain), +inf when b underflowed to 0.
fn quotient_up(a: f64, b: f64) -> f64 {
    if a == 0.0 {
        0.0
    } else {
        div_up(a, b)
    }
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
    let slope = quotient_up(mul_up(g, 6.0), sqrt_d_s2_down(d, s));
    Ok(PieceBound {
        sup,
        slope,
        token_gain: sup,
    })
}

/// Lower bounds of |x_t| for every token t of `x`. The computed sum of squares s of d numbers
/// satisfies s <= (1 + gamma_d) (|x|^2 + d ETA / 2) (each square rounds once, relative u or
/// absolute ETA / 2 when it underflows, and the sum of nonnegative terms is within gamma_{d-1}),
/// so |x|^2 >= s / (1 + gamma_d) - d ETA.
fn row_norms_down(x: MatRef<'_, f64>) -> Vec<f64> {
    let d = x.ncols();
    let q = add_up(1.0, gamma(d));
    let slack = mul_up(d as f64, ETA);
    (0..x.nrows())
        .map(|i| {
            let s = (0..d).map(|k| x[(i, k)] * x[(i, k)]).sum::<f64>();
            sqrt_down(down(down(s / q) - slack).max(0.0))
        })
        .collect()
}

/// The constant of Lemma N (RMSNorm): |D^2 (y / rho(y))[h, h]| <= (2 / sqrt 3) |h|^2 /
/// (sqrt(d) rho(y)^2), rounded up (2 / sqrt 3 = 1.154700538...).
const RMS_SECOND_DERIVATIVE: f64 = 1.154_700_54;

/// Lemma N (RMSNorm): y -> g ⊙ y / rho(y), rho(y) = sqrt(|y|^2 / d + eps), with rho >= s on the
/// ball: ||J(y)|| <= max|g| / s and the second derivative is at most
/// max|g| (2 / sqrt 3) / (sqrt(d) s^2), per token. g is `rn.gain()`, as the forward forms it.
pub fn rms_norm_ball(rn: &RmsNorm, x: MatRef<'_, f64>, ball: PieceBall) -> Result<PieceBound> {
    let d = rn.weight.len();
    if d == 0 {
        return Err(Error::Empty {
            what: "RMSNorm weight".into(),
        });
    }
    crate::attention::forward::check_shape("RMSNorm input", x, x.nrows(), d)?;
    let g = max_abs(&rn.gain());
    let r = ball.token.min(ball.frobenius);
    let s = row_norms_down(x)
        .into_iter()
        .map(|c| {
            let a = down(c - r).max(0.0);
            let ms = down(down(a * a) / d as f64).max(0.0);
            sqrt_down(down(ms + rn.eps))
        })
        .fold(f64::INFINITY, f64::min);
    if s.is_nan() || s <= 0.0 {
        return Err(Error::invalid(format!(
            "the ball reaches a token whose RMSNorm root mean square is 0 (eps = {}): no bound holds there; take a smaller ball",
            rn.eps
        )));
    }
    let sup = div_up(g, s);
    let slope = quotient_up(mul_up(g, RMS_SECOND_DERIVATIVE), sqrt_d_s2_down(d, s));
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
#[derive(Clone, Debug, Serialize)]
pub struct FeedForwardNorms {
    /// ||W_in||_2, ||W_out||_2 and max_j |row j of W_in|.
    pub w_in: f64,
    pub w_out: f64,
    pub w_in_rows: f64,
    /// sup |act'| and sup |act''|.
    pub c1: f64,
    pub c2: f64,
    /// |row j of W_in|, bounded upward.
    #[serde(skip)]
    rows: Vec<f64>,
    #[serde(skip)]
    activation: Activation,
}

/// The pre-activations z = W_in x_t + b_in of a feed-forward network at the centre of a ball,
/// computed once, with bounds on their rounding errors.
pub struct FeedForwardCentre {
    pre: Mat<f64>,
    errors: Mat<f64>,
}

/// sup |act''(z)| over |z| >= m for GELU-erf, whose act''(z) = phi(z) (2 - z^2) is even; on
/// z >= 0 its derivative phi(z) z (z^2 - 4) makes |act''| fall from 2 phi(0) to 0 on [0, sqrt 2],
/// rise to 2 phi(2) = 0.10798 at 2 and fall to 0 after (docs/bounds.md#lemma-n).
fn gelu_erf_curvature_beyond(m: f64) -> f64 {
    const BUMP: f64 = 0.107_99; // > 2 phi(2) = 0.107981933...
    const INV_SQRT_2PI: f64 = 0.398_942_280_401_433; // > 1 / sqrt(2 pi)
    let m = m.max(0.0);
    let m2_lo = down(m * m);
    let m2_hi = mul_up(m, m);
    // phi(m) <= e^{-m^2/2} / sqrt(2 pi), with the exponent rounded up.
    let phi = mul_up(exp_up(-(m2_lo / 2.0)), INV_SQRT_2PI);
    if m <= 2.0 {
        let at_m = if m2_hi < 2.0 {
            mul_up(phi, up(2.0 - m2_lo))
        } else {
            0.0
        };
        at_m.max(BUMP)
    } else {
        mul_up(phi, up(m2_hi - 2.0))
    }
}

impl FeedForwardNorms {
    pub fn of(ff: &FeedForward) -> Result<Self> {
        let c2 = second_derivative_bound(ff.activation).ok_or_else(|| {
            Error::invalid(
                "the feed-forward activation is ReLU, whose derivative jumps: no slope bound exists for the ball certificate",
            )
        })?;
        let rows: Vec<f64> = (0..ff.w_in.nrows())
            .map(|j| norm2_up((0..ff.w_in.ncols()).map(|k| ff.w_in[(j, k)])))
            .collect();
        Ok(Self {
            w_in: spectral_up(ff.w_in.as_ref())?,
            w_out: spectral_up(ff.w_out.as_ref())?,
            w_in_rows: rows.iter().copied().fold(0.0f64, f64::max),
            c1: ff.activation.derivative_bound(),
            c2,
            rows,
            activation: ff.activation,
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

    /// The pre-activations at the centre X (n x d), for [`Self::local_bound`].
    pub fn centre(&self, ff: &FeedForward, x: MatRef<'_, f64>) -> Result<FeedForwardCentre> {
        let (f, d) = (ff.w_in.nrows(), ff.w_in.ncols());
        if self.rows.len() != f || ff.b_in.len() != f {
            return Err(Error::invalid(
                "the feed-forward norms were formed for another network",
            ));
        }
        crate::attention::forward::check_shape("feed-forward input", x, x.nrows(), d)?;
        crate::budget::check(
            || format!("the feed-forward pre-activations of {} tokens", x.nrows()),
            crate::budget::bytes_of(&[2, x.nrows(), f], 8),
        )?;
        let raw = x * ff.w_in.transpose();
        let pre = Mat::from_fn(x.nrows(), f, |t, j| raw[(t, j)] + ff.b_in[j]);
        // |fl(x . w) - x . w| <= gamma_d |x| |w| + d ETA (Higham (3.13), with underflow), and the
        // bias addition rounds once more: u |z| <= 2 u |fl(z)|.
        let gd = gamma(d);
        let underflow = mul_up(d as f64, ETA);
        let norms: Vec<f64> = (0..x.nrows())
            .map(|t| norm2_up((0..d).map(|k| x[(t, k)])))
            .collect();
        let errors = Mat::from_fn(x.nrows(), f, |t, j| {
            add_up(
                add_up(mul_up(gd, mul_up(norms[t], self.rows[j])), underflow),
                mul_up(2.0 * UNIT_ROUNDOFF, pre[(t, j)].abs()),
            )
        });
        Ok(FeedForwardCentre { pre, errors })
    }

    /// [`Self::bound`] with the slope read at the centre (GELU-erf only; the other activations
    /// keep the global one): on token t's ball every pre-activation z_j stays within
    /// rho_tj = |w_j| r + (its rounding) of the computed one, so |act''| along any segment there
    /// is at most A''_tj = sup over |z| >= max(0, |z~_tj| - rho_tj) of |act''|, and
    /// |act'(z_j) - act'(z'_j)| <= A''_tj |w_j| |y - y'|: slope <= ||W_out|| ||W_in||
    /// max_t max_j A''_tj |w_j|.
    pub fn local_bound(&self, c: &FeedForwardCentre, ball: PieceBall) -> Result<PieceBound> {
        let global = self.bound();
        if self.activation != Activation::GeluErf {
            return Ok(global);
        }
        let r = ball.token.min(ball.frobenius);
        let mut worst = 0.0f64;
        for t in 0..c.pre.nrows() {
            for (j, &row) in self.rows.iter().enumerate() {
                let z = c.pre[(t, j)];
                if !z.is_finite() {
                    return Err(Error::Numerical(format!(
                        "feed-forward: the pre-activation of token {t} overflowed at hidden unit {j}"
                    )));
                }
                let rho = add_up(c.errors[(t, j)], mul_up(row, r));
                let m = down(z.abs() - rho).max(0.0);
                let a2 = gelu_erf_curvature_beyond(m).min(self.c2);
                worst = worst.max(mul_up(a2, row));
            }
        }
        let slope = mul_up(self.w_out, mul_up(self.w_in, worst));
        Ok(PieceBound {
            slope: slope.min(global.slope),
            ..global
        })
    }
}

/// Upper bounds of |act(z)| and |act'(z)| at an f64 number z (docs/bounds.md#lemma-n, gated
/// feed-forward). SiLU and the tanh GELUs are act(z) = z sigma(v(z)) with
/// v(z) = kappa z (1 + k z^2) (SiLU: kappa = 1, k = 0; the tanh GELUs: kappa = 2 c, since
/// (1 + tanh w) / 2 = sigma(2 w)), so act'(z) = sigma(v) + z v'(z) sigma(v) (1 - sigma(v)) with
/// v' = kappa (1 + 3 k z^2) > 0; sigma(v) and 1 - sigma(v) = sigma(-v) are bounded above and
/// below through `exp_down` and `exp_up` of bounds on v, and act' by interval arithmetic.
/// GELU-erf: |act(z)| <= |z| for z >= 0 and <= min(|z| / 2, 0.4) for z < 0 (Phi(z) <= 1/2 and,
/// by the Mills ratio, |z| Phi(z) <= phi(z) <= 1 / sqrt(2 pi)); |act'| <= c_1. The caller caps
/// the derivative by c_1 too.
fn activation_at(act: Activation, z: f64) -> (f64, f64) {
    let m = z.abs();
    let (kappa, k) = match act {
        Activation::Silu => (1.0, 0.0),
        // The constants of `Activation::apply`: c (x + 0.044715 x^3) = c x (1 + 0.044715 x^2).
        Activation::GeluTanh => (2.0 * 0.797_884_560_802_865_4, 0.044715),
        Activation::GeluFast => (2.0 * 0.797_884_560_8, 0.044715),
        Activation::GeluErf | Activation::Relu => {
            let a = if z >= 0.0 { m } else { (0.5 * m).min(0.4) };
            return (a, act.derivative_bound());
        }
    };
    let dn = |a: f64, b: f64| down(a * b).max(0.0);
    let mag_hi = mul_up(kappa, mul_up(m, add_up(1.0, mul_up(k, mul_up(m, m)))));
    let mag_lo = dn(kappa, dn(m, down(1.0 + dn(k, dn(m, m)))));
    let (v_lo, v_hi) = if z >= 0.0 {
        (mag_lo, mag_hi)
    } else {
        (-mag_hi, -mag_lo)
    };
    // sigma(v) <= 1 / (1 + e^{-v_hi}) and sigma(-v) <= 1 / (1 + e^{v_lo}); the lower bounds
    // with the other ends and exp rounded up.
    let sig_hi = div_up(1.0, down(1.0 + exp_down(-v_hi))).min(1.0);
    let sig_neg_hi = div_up(1.0, down(1.0 + exp_down(v_lo))).min(1.0);
    let sig_lo = down(1.0 / up(1.0 + exp_up(-v_lo))).max(0.0);
    let sig_neg_lo = down(1.0 / up(1.0 + exp_up(v_hi))).max(0.0);
    let value = mul_up(m, sig_hi);
    let m2 = mul_up(m, m);
    let vp_hi = mul_up(kappa, add_up(1.0, mul_up(mul_up(3.0, k), m2)));
    let vp_lo = dn(kappa, down(1.0 + dn(dn(3.0, k), dn(m, m))));
    // z v' sigma (1 - sigma), in absolute value, between these two.
    let second_hi = mul_up(m, mul_up(vp_hi, mul_up(sig_hi, sig_neg_hi).min(0.25)));
    let second_lo = dn(m, dn(vp_lo, dn(sig_lo, sig_neg_lo)));
    // act' = sigma + (second) for z >= 0, both terms >= 0; for z < 0, act' = sigma - (second)
    // lies in [sig_lo - second_hi, sig_hi - second_lo].
    let derivative = if z >= 0.0 {
        add_up(sig_hi, second_hi)
    } else {
        up(sig_hi - second_lo).max(up(second_hi - sig_lo))
    };
    (value, derivative)
}

/// The entries of a matrix, column by column.
fn cells(m: MatRef<'_, f64>) -> impl Iterator<Item = f64> + '_ {
    (0..m.ncols()).flat_map(move |k| (0..m.nrows()).map(move |i| m[(i, k)]))
}

/// The largest entry of nonnegative bounds, NaN if any is NaN.
fn max_of(v: impl IntoIterator<Item = f64>) -> f64 {
    v.into_iter()
        .fold(0.0f64, |m, x| if x.is_nan() { x } else { m.max(x) })
}

/// The smallest of upper bounds, NaN if any is NaN (f64::min would drop it).
fn min_of(v: &[f64]) -> f64 {
    if v.iter().any(|x| x.is_nan()) {
        return f64::NAN;
    }
    v.iter().copied().fold(f64::INFINITY, f64::min)
}

/// Norms of a gated feed-forward network's matrices, formed once per network
/// (docs/bounds.md#lemma-n): F(x) = W_d (act(W_g x + b_g) ⊙ (W_u x + b_u)) + b_d per token.
#[derive(Clone, Debug, Serialize)]
pub struct GatedFeedForwardNorms {
    /// ||W_g||_2, ||W_u||_2, ||W_d||_2.
    pub gate: f64,
    pub up: f64,
    pub down: f64,
    /// |row j| of W_g and of W_u and |column j| of W_d, over the hidden units j.
    pub gate_rows: Vec<f64>,
    pub up_rows: Vec<f64>,
    pub down_cols: Vec<f64>,
    /// sup |act'| and sup |act''|.
    pub c1: f64,
    pub c2: f64,
    #[serde(skip)]
    pub activation: Activation,
}

impl GatedFeedForwardNorms {
    pub fn of(ff: &GatedFeedForward) -> Result<Self> {
        let c2 = second_derivative_bound(ff.activation).ok_or_else(|| {
            Error::invalid(
                "the gated feed-forward activation is ReLU, whose derivative jumps: no slope bound exists for the ball certificate",
            )
        })?;
        let (f, d) = (ff.gate.nrows(), ff.gate.ncols());
        let shapes = [
            ("gated feed-forward up", ff.up.nrows(), ff.up.ncols(), f, d),
            (
                "gated feed-forward down",
                ff.down.nrows(),
                ff.down.ncols(),
                d,
                f,
            ),
            ("gated feed-forward gate bias", ff.b_gate.len(), 1, f, 1),
            ("gated feed-forward up bias", ff.b_up.len(), 1, f, 1),
            ("gated feed-forward down bias", ff.b_down.len(), 1, d, 1),
        ];
        for (what, rows, cols, want_rows, want_cols) in shapes {
            crate::attention::forward::check_dims(what, rows, cols, want_rows, want_cols)?;
        }
        crate::error::check_finite("gated feed-forward gate", cells(ff.gate.as_ref()))?;
        crate::error::check_finite("gated feed-forward up", cells(ff.up.as_ref()))?;
        crate::error::check_finite("gated feed-forward down", cells(ff.down.as_ref()))?;
        crate::error::check_finite("gated feed-forward gate bias", ff.b_gate.iter().copied())?;
        crate::error::check_finite("gated feed-forward up bias", ff.b_up.iter().copied())?;
        let rows = |m: &faer::Mat<f64>| -> Vec<f64> {
            (0..m.nrows())
                .map(|j| norm2_up((0..m.ncols()).map(|k| m[(j, k)])))
                .collect()
        };
        let down_cols = (0..f)
            .map(|j| norm2_up((0..d).map(|k| ff.down[(k, j)])))
            .collect();
        Ok(Self {
            gate: spectral_up(ff.gate.as_ref())?,
            up: spectral_up(ff.up.as_ref())?,
            down: spectral_up(ff.down.as_ref())?,
            gate_rows: rows(&ff.gate),
            up_rows: rows(&ff.up),
            down_cols,
            c1: ff.activation.derivative_bound(),
            c2,
            activation: ff.activation,
        })
    }

    /// An upper bound of ||W_d diag(s) W|| over every s with |s_j| <= w_j, W the matrix with
    /// spectral norm `right` and row norms `right_rows`: the smallest of
    /// ||W_d|| max w ||W||, ||W_d|| (sum_j w_j^2 |W_j|^2)^(1/2) (||diag(s) W||_2 <= its Frobenius
    /// norm) and (sum_j |W_d^j|^2 w_j^2)^(1/2) ||W|| (the same for W_d diag(s)).
    fn scaled(&self, w: &[f64], right: f64, right_rows: &[f64]) -> f64 {
        let spectral = mul_up(self.down, mul_up(max_of(w.iter().copied()), right));
        let frob_right = mul_up(
            self.down,
            hypot_up(w.iter().zip(right_rows).map(|(&a, &b)| mul_up(a, b))),
        );
        let frob_left = mul_up(
            hypot_up(w.iter().zip(&self.down_cols).map(|(&a, &b)| mul_up(a, b))),
            right,
        );
        min_of(&[spectral, frob_right, frob_left])
    }

    /// Lemma N (gated feed-forward) on `ball` around X (n x d), per token t and hidden unit j:
    /// with rho_tj >= |g_j(y) - g_j(x_t)| (|W_g row j| r, plus the rounding of g at x_t),
    /// U_tj >= |u_j(y)|, A_tj >= |act(g_j(y))|, A'_tj >= |act'(g_j(y))| over the token's ball,
    /// sup ||J|| <= ||W_d diag(s) W_g|| + ||W_d diag(s') W_u|| with |s_j| <= A'_j U_j and
    /// |s'_j| <= A_j (or the Frobenius norm of the sum), and the second derivative is at most
    /// ||W_d diag(c2 U_j |W_g,j|) W_g|| + 2 ||W_d diag(A'_j |W_g,j|) W_u|| (or the other way
    /// round); each bound is the worst token's.
    pub fn bound(
        &self,
        ff: &GatedFeedForward,
        x: MatRef<'_, f64>,
        ball: PieceBall,
    ) -> Result<PieceBound> {
        let (f, d) = (ff.gate.nrows(), ff.gate.ncols());
        let same = self.gate_rows.len() == f
            && self.up_rows.len() == f
            && self.down_cols.len() == f
            && (ff.up.nrows(), ff.up.ncols()) == (f, d)
            && (ff.down.nrows(), ff.down.ncols()) == (d, f)
            && ff.b_gate.len() == f
            && ff.b_up.len() == f;
        if !same {
            return Err(Error::invalid(
                "the gated feed-forward norms were formed for another network",
            ));
        }
        crate::attention::forward::check_shape("gated feed-forward input", x, x.nrows(), d)?;
        let r = ball.token.min(ball.frobenius);
        let pg = x * ff.gate.transpose();
        let pu = x * ff.up.transpose();
        // |fl(x . w) - x . w| <= gamma_d |x| |w| + d ETA in any order of summation, with or
        // without fused multiply-add (Higham (3.13), plus ETA / 2 for each product that
        // underflows, magnified by at most 1 + gamma_d <= 2 in the sum); the bias addition
        // rounds once more: |z - fl(z)| <= u |z| <= 2 u |fl(z)|.
        let gd = gamma(d);
        let underflow = mul_up(d as f64, ETA);
        let two_u = 2.0 * UNIT_ROUNDOFF;
        let error = |xn: f64, row: f64, computed: f64| {
            add_up(
                add_up(mul_up(gd, mul_up(xn, row)), underflow),
                mul_up(two_u, computed.abs()),
            )
        };
        let (c1, c2) = (self.c1, self.c2);
        let mut sup = 0.0f64;
        let mut slope = 0.0f64;
        let mut alpha = vec![0.0; f]; // >= |act'(g_j) u_j|
        let mut beta = vec![0.0; f]; // >= |act(g_j)|
        let mut curv = vec![0.0; f]; // >= |act''(g_j) u_j| |W_g,j|
        let mut mixed_u = vec![0.0; f]; // >= 2 |act'(g_j)| |W_g,j| (W_u on the right)
        let mut mixed_g = vec![0.0; f]; // >= 2 |act'(g_j)| |W_u,j| (W_g on the right)
        let mut sum_sup = vec![0.0; f];
        let mut sum_slope = vec![0.0; f];
        for t in 0..x.nrows() {
            let xn = norm2_up((0..d).map(|k| x[(t, k)]));
            for j in 0..f {
                let g_hat = pg[(t, j)] + ff.b_gate[j];
                let u_hat = pu[(t, j)] + ff.b_up[j];
                if !(g_hat.is_finite() && u_hat.is_finite()) {
                    return Err(Error::Numerical(format!(
                        "gated feed-forward: the projections of token {t} overflowed at hidden unit {j}"
                    )));
                }
                let (gr, ur) = (self.gate_rows[j], self.up_rows[j]);
                let rho = add_up(error(xn, gr, g_hat), mul_up(gr, r));
                let u_bar = add_up(add_up(u_hat.abs(), error(xn, ur, u_hat)), mul_up(ur, r));
                let (a0, a1) = activation_at(self.activation, g_hat);
                // |act(z)| <= |z| (every activation here is z times a gate in [0, 1]).
                let act_bar = min_of(&[add_up(a0, mul_up(c1, rho)), add_up(g_hat.abs(), rho)]);
                let der_bar = min_of(&[add_up(a1, mul_up(c2, rho)), c1]);
                alpha[j] = mul_up(der_bar, u_bar);
                beta[j] = act_bar;
                curv[j] = mul_up(c2, mul_up(u_bar, gr));
                mixed_u[j] = mul_up(2.0, mul_up(der_bar, gr));
                mixed_g[j] = mul_up(2.0, mul_up(der_bar, ur));
                sum_sup[j] = add_up(mul_up(alpha[j], gr), mul_up(beta[j], ur));
                sum_slope[j] = add_up(mul_up(curv[j], gr), mul_up(mixed_u[j], ur));
            }
            let sup_t = min_of(&[
                add_up(
                    self.scaled(&alpha, self.gate, &self.gate_rows),
                    self.scaled(&beta, self.up, &self.up_rows),
                ),
                mul_up(self.down, hypot_up(sum_sup.iter().copied())),
            ]);
            let slope_t = min_of(&[
                add_up(
                    self.scaled(&curv, self.gate, &self.gate_rows),
                    min_of(&[
                        self.scaled(&mixed_u, self.up, &self.up_rows),
                        self.scaled(&mixed_g, self.gate, &self.gate_rows),
                    ]),
                ),
                mul_up(self.down, hypot_up(sum_slope.iter().copied())),
            ]);
            sup = max_of([sup, sup_t]);
            slope = max_of([slope, slope_t]);
        }
        if sup.is_nan() || slope.is_nan() {
            return Err(Error::Numerical(
                "gated feed-forward ball bound: NaN in the bounds".into(),
            ));
        }
        Ok(PieceBound {
            sup,
            slope,
            token_gain: sup,
        })
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

    /// GELU-erf's |act''| beyond m against a fine grid of z >= m (act'' = phi(z) (2 - z^2)).
    #[test]
    fn gelu_erf_curvature_beyond_bounds_a_grid() {
        let f = |z: f64| (-z * z / 2.0).exp() / (2.0 * std::f64::consts::PI).sqrt() * (2.0 - z * z);
        for k in 0..=400 {
            let m = k as f64 * 0.02;
            let bound = gelu_erf_curvature_beyond(m);
            let sup = (0..40_000)
                .map(|i| f(m + i as f64 * 1e-3).abs())
                .fold(0.0f64, f64::max);
            assert!(sup <= bound, "m = {m}: {sup} > {bound}");
            // Not loose: within 1e-3 of the grid's supremum (the grid step) where it matters.
            assert!(bound <= sup + 2e-3, "m = {m}: {bound} vs {sup}");
        }
        assert!(gelu_erf_curvature_beyond(0.0) <= 0.82);
    }

    /// The slope read at the centre against measured slopes between points of the ball, on
    /// GELU-erf networks whose pre-activations are large enough for it to be well below the
    /// global one (it must be the smaller on most cases, else this would not test it).
    #[test]
    fn local_feed_forward_slope_holds_on_the_ball() {
        let mut rng = SplitMix::new(19);
        let (mut smaller, mut cases) = (0, 0);
        for case in 0..30 {
            let (n, d, h) = (3, 5, 9);
            let scale = [0.7, 1.5, 3.0][case % 3];
            let ff = FeedForward {
                w_in: rng.gauss_mat::<f64>(h, d) * scale,
                b_in: (0..h).map(|_| 4.0 * (rng.uniform() - 0.5)).collect(),
                w_out: rng.gauss_mat::<f64>(d, h),
                b_out: vec![0.0; d],
                activation: Activation::GeluErf,
            };
            let norms = FeedForwardNorms::of(&ff).expect("norms");
            let x: Mat<f64> = rng.gauss_mat::<f64>(n, d) * 1.5;
            let centre = norms.centre(&ff, x.as_ref()).expect("centre");
            let r = [0.01, 0.1, 0.5][case / 3 % 3];
            let ball = PieceBall {
                frobenius: r,
                token: r,
            };
            let local = norms.local_bound(&centre, ball).expect("bound");
            let global = norms.bound();
            assert!(local.slope <= global.slope && local.sup == global.sup);
            if local.slope < 0.8 * global.slope {
                smaller += 1;
            }
            let f = |y: &Mat<f64>| ff.forward(y.as_ref()).unwrap();
            for _ in 0..6 {
                let (p, q) = (point_in(&x, r, &mut rng), point_in(&x, r, &mut rng));
                let s = measured_slope(&f, &p, &q, &mut rng);
                assert!(s <= local.slope, "case {case}: {s} > {}", local.slope);
                cases += 1;
            }
        }
        assert!(
            cases == 180 && smaller >= 10,
            "local slope smaller on {smaller} of 30"
        );
        let tanh = FeedForward {
            w_in: Mat::identity(2, 2),
            b_in: vec![5.0; 2],
            w_out: Mat::identity(2, 2),
            b_out: vec![0.0; 2],
            activation: Activation::GeluTanh,
        };
        let norms = FeedForwardNorms::of(&tanh).expect("norms");
        let c = norms
            .centre(&tanh, Mat::<f64>::zeros(1, 2).as_ref())
            .expect("centre");
        let b = norms.local_bound(&c, PieceBall::centre()).expect("bound");
        assert_eq!(b.slope, norms.bound().slope);
    }

    /// A sequence (n x d) as one vector of n d entries, token by token, and back.
    fn flat(m: &Mat<f64>) -> Vec<f64> {
        (0..m.nrows())
            .flat_map(|i| (0..m.ncols()).map(move |k| m[(i, k)]))
            .collect()
    }

    fn unflat(v: &[f64], n: usize, d: usize) -> Mat<f64> {
        Mat::from_fn(n, d, |i, k| v[i * d + k])
    }

    fn unit(v: Vec<f64>) -> Vec<f64> {
        let s = v.iter().map(|x| x * x).sum::<f64>().sqrt();
        v.into_iter().map(|x| x / s).collect()
    }

    /// The dense Jacobian of f at p (n d x n d) by central differences with step h.
    fn dense_jacobian(f: &dyn Fn(&Mat<f64>) -> Mat<f64>, p: &Mat<f64>, h: f64) -> Mat<f64> {
        let (n, d) = (p.nrows(), p.ncols());
        let mut j = Mat::zeros(n * d, n * d);
        for c in 0..n * d {
            let mut e = vec![0.0; n * d];
            e[c] = h;
            let e = unflat(&e, n, d);
            let col = flat(&((f(&(p + &e)) - f(&(p - &e))) * (0.5 / h)));
            for (r, v) in col.into_iter().enumerate() {
                j[(r, c)] = v;
            }
        }
        j
    }

    /// ||J||_2 and its top right singular vector, by power iteration on J^T J.
    fn top_singular(j: &Mat<f64>, rng: &mut SplitMix) -> (f64, Vec<f64>) {
        let mut v: Mat<f64> = rng.gauss_mat(j.ncols(), 1);
        let mut sigma = 0.0;
        for _ in 0..200 {
            let w = j.transpose() * (j * &v);
            let norm = frobenius(w.as_ref());
            sigma = norm.sqrt();
            v = w * (1.0 / norm);
        }
        (sigma, (0..j.ncols()).map(|i| v[(i, 0)]).collect())
    }

    /// |D^2 f(p)[h, h]| for a unit h, by second differences at step eps, and h moved a few steps
    /// towards the worst direction: h <- M_v h with v the direction of D^2 f[h, h] and
    /// M_v = d/dx (J(x)^T v) (the top eigenvector of M_v maximises <v, D^2 f[h, h]>).
    fn measured_curvature(
        f: &dyn Fn(&Mat<f64>) -> Mat<f64>,
        p: &Mat<f64>,
        start: Vec<f64>,
        eps: f64,
    ) -> f64 {
        let (n, d) = (p.nrows(), p.ncols());
        let mut h = unit(start);
        let mut best = 0.0f64;
        for step in 0..4 {
            let hm = unflat(&h, n, d) * eps;
            let b = (f(&(p + &hm)) - f(p) * 2.0 + f(&(p - &hm))) * (1.0 / (eps * eps));
            let size = frobenius(b.as_ref());
            best = best.max(size);
            if step == 3 || size == 0.0 {
                break;
            }
            let v = Mat::from_fn(n * d, 1, |i, _| flat(&b)[i] / size);
            let ja = dense_jacobian(f, &(p + &hm), 1e-3 * eps);
            let jb = dense_jacobian(f, &(p - &hm), 1e-3 * eps);
            let mv = (ja - jb).transpose() * v; // (M_v (2 eps h))
            h = unit((0..n * d).map(|i| mv[(i, 0)]).collect());
        }
        best
    }

    /// A point at distance exactly r from x in a random direction.
    fn point_on(x: &Mat<f64>, r: f64, rng: &mut SplitMix) -> Mat<f64> {
        let dir: Mat<f64> = rng.gauss_mat(x.nrows(), x.ncols());
        x + &dir * (r / frobenius(dir.as_ref()))
    }

    /// Checks a piece's bound at the given points of the ball: ||J(p)||_2 (power iteration on
    /// the dense Jacobian) <= sup, the second derivative (random, top-singular and ascended
    /// directions) and the secant slope of J between points <= slope. Returns the largest
    /// measured / bound ratios (sup, second derivative, secant slope).
    fn check_points(
        f: &dyn Fn(&Mat<f64>) -> Mat<f64>,
        b: &PieceBound,
        points: &[Mat<f64>],
        eps: f64,
        rng: &mut SplitMix,
        case: usize,
    ) -> (f64, f64, f64) {
        let (mut ws, mut wc, mut wl) = (0.0f64, 0.0f64, 0.0f64);
        for (i, p) in points.iter().enumerate() {
            let (n, d) = (p.nrows(), p.ncols());
            let j = dense_jacobian(f, p, 1e-3 * eps);
            let (sigma, v) = top_singular(&j, rng);
            assert!(
                sigma <= b.sup * (1.0 + 1e-5),
                "case {case}, point {i}: ||J|| {sigma} > sup {}",
                b.sup
            );
            ws = ws.max(sigma / b.sup);
            // A random unit u: ||J u|| below the sup as well.
            let u: Mat<f64> = rng.gauss_mat(n, d);
            let u = &u * (1.0 / frobenius(u.as_ref()));
            let ju = (f(&(p + &u * 1e-6)) - f(&(p - &u * 1e-6))) * (0.5 / 1e-6);
            assert!(
                frobenius(ju.as_ref()) <= b.sup * (1.0 + 1e-5),
                "case {case}"
            );
            let random: Vec<f64> = flat(&rng.gauss_mat(n, d));
            for start in [v, random] {
                let c = measured_curvature(f, p, start, eps);
                assert!(
                    c <= b.slope * (1.0 + 1e-4),
                    "case {case}, point {i}: second derivative {c} > slope {}",
                    b.slope
                );
                wc = wc.max(c / b.slope);
            }
            if i > 0 {
                let s = measured_slope(f, p, &points[i - 1], rng);
                assert!(s <= b.slope, "case {case}: secant slope {s} > {}", b.slope);
                wl = wl.max(s / b.slope);
            }
        }
        (ws, wc, wl)
    }

    #[test]
    fn rms_norm_bounds_hold_on_the_ball() {
        let mut rng = SplitMix::new(17);
        let (mut ws, mut wc, mut wl) = (0.0f64, 0.0f64, 0.0f64);
        let mut least = (f64::INFINITY, f64::INFINITY);
        for case in 0..36 {
            let (n, d) = (3, [4, 6, 8, 12][case % 4]);
            let eps = [1e-12, 1e-6, 1e-3, 0.1][(case / 4) % 4];
            let unit_offset = case % 2 == 1;
            let weight: Vec<f64> = (0..d)
                .map(|_| {
                    if unit_offset {
                        0.3 * rng.gauss() // Gemma: gain 1 + w
                    } else {
                        1.0 + 0.5 * (rng.uniform() - 0.5)
                    }
                })
                .collect();
            let rn = RmsNorm {
                weight,
                eps,
                unit_offset,
            };
            let scale = [0.05, 0.3, 1.0, 3.0][(case / 3) % 4];
            let x: Mat<f64> = rng.gauss_mat::<f64>(n, d) * scale;
            let r = [1e-3, 0.01, 0.1, 0.3][(case / 5) % 4] * scale;
            let ball = PieceBall {
                frobenius: r,
                token: r,
            };
            let b = rms_norm_ball(&rn, x.as_ref(), ball).expect("bound");
            let f = |y: &Mat<f64>| rn.apply(y.as_ref()).unwrap();
            // The smallest token moved towards 0 by r: where the bounds are nearly attained.
            let t = (0..n)
                .min_by(|&a, &c| {
                    let na = frobenius(x.as_ref().row(a).as_mat());
                    let nc = frobenius(x.as_ref().row(c).as_mat());
                    na.total_cmp(&nc)
                })
                .unwrap();
            let mut worst = x.clone();
            let nt = frobenius(x.as_ref().row(t).as_mat());
            for k in 0..d {
                worst[(t, k)] *= 1.0 - r / nt;
            }
            let mut points = vec![x.clone(), worst];
            for _ in 0..3 {
                points.push(point_in(&x, r, &mut rng));
                points.push(point_on(&x, r, &mut rng));
            }
            let (s, c, l) = check_points(&f, &b, &points, 1e-4 * scale, &mut rng, case);
            ws = ws.max(s);
            wc = wc.max(c);
            wl = wl.max(l);
            least = (least.0.min(s), least.1.min(c));
        }
        println!(
            "RMSNorm: worst measured / bound: sup {ws:.6}, second derivative {wc:.3}, secant slope {wl:.3}; the loosest case's best: sup {:.3}, second derivative {:.3}",
            least.0, least.1
        );
        assert!(ws > 0.5 && wc > 0.3, "the bounds are far from attained");
    }

    #[test]
    fn rms_norm_refuses_a_ball_through_zero() {
        let rn = RmsNorm {
            weight: vec![1.0; 3],
            eps: 0.0,
            unit_offset: false,
        };
        let x = Mat::from_fn(2, 3, |i, k| (i + k) as f64 + 1.0);
        let reaching = PieceBall {
            frobenius: 10.0,
            token: 10.0,
        };
        let err = rms_norm_ball(&rn, x.as_ref(), reaching).unwrap_err();
        assert!(err.to_string().contains("RMSNorm") && err.to_string().contains("eps = 0"));
        // A zero token with eps = 0 is refused even at the centre.
        let zero = Mat::from_fn(2, 3, |i, k| if i == 0 { 0.0 } else { k as f64 });
        assert!(rms_norm_ball(&rn, zero.as_ref(), PieceBall::centre()).is_err());
        // A ball that stays away from 0 is fine with eps = 0.
        let near = PieceBall {
            frobenius: 0.1,
            token: 0.1,
        };
        assert!(rms_norm_ball(&rn, x.as_ref(), near).is_ok());
    }

    #[test]
    fn activation_bounds_at_points_hold() {
        for act in [
            Activation::Silu,
            Activation::GeluTanh,
            Activation::GeluFast,
            Activation::GeluErf,
        ] {
            let mut z = -60.0;
            while z <= 60.0 {
                let (a0, a1) = activation_at(act, z);
                let (v, dv) = (act.apply(z).abs(), act.derivative(z).abs());
                // The f64 forward cancels in 1 + tanh for z << 0: allow its absolute error.
                let slack = 1e-15 * (1.0 + z.abs());
                assert!(v <= a0 + slack, "{act:?} at {z}: {v} > {a0}");
                assert!(dv <= a1 + slack, "{act:?} at {z}: {dv} > {a1}");
                if act != Activation::GeluErf {
                    // Tight up to rounding (where the forward is accurate).
                    assert!(
                        a0 <= v * (1.0 + 1e-9) + 10.0 * slack,
                        "{act:?} at {z}: {a0}"
                    );
                    assert!(
                        a1 <= dv * (1.0 + 1e-9) + 10.0 * slack,
                        "{act:?} at {z}: {a1}"
                    );
                }
                z += 0.0137;
            }
            for z in [-1e300, -1e10, 1e10, 1e300, 0.0] {
                let (a0, a1) = activation_at(act, z);
                assert!(!a0.is_nan() && !a1.is_nan() && a0 >= act.apply(z).abs());
            }
        }
    }

    fn gated(
        d: usize,
        f: usize,
        act: Activation,
        biases: bool,
        rng: &mut SplitMix,
    ) -> GatedFeedForward {
        let mut bias = |k: usize| -> Vec<f64> {
            (0..k)
                .map(|_| if biases { 0.5 * rng.gauss() } else { 0.0 })
                .collect()
        };
        let (b_gate, b_up, b_down) = (bias(f), bias(f), bias(d));
        GatedFeedForward {
            gate: rng.gauss_mat::<f64>(f, d) * (1.5 / (d as f64).sqrt()),
            b_gate,
            up: rng.gauss_mat::<f64>(f, d) * (1.0 / (d as f64).sqrt()),
            b_up,
            down: rng.gauss_mat::<f64>(d, f) * (1.0 / (f as f64).sqrt()),
            b_down,
            activation: act,
        }
    }

    #[test]
    fn gated_feed_forward_bounds_hold_on_the_ball() {
        let mut rng = SplitMix::new(23);
        let (mut ws, mut wc, mut wl) = (0.0f64, 0.0f64, 0.0f64);
        let mut least = (f64::INFINITY, f64::INFINITY);
        for case in 0..36 {
            let (n, d) = (3, [4, 6, 8][case % 3]);
            let f = (2 + (case / 3) % 3) * d;
            let act = [Activation::Silu, Activation::GeluTanh][case % 2];
            let ff = gated(d, f, act, (case / 2) % 2 == 1, &mut rng);
            let norms = GatedFeedForwardNorms::of(&ff).expect("norms");
            let scale = [0.05, 0.5, 1.0, 3.0][(case / 4) % 4];
            let x: Mat<f64> = rng.gauss_mat::<f64>(n, d) * scale;
            let r = [1e-3, 0.01, 0.1, 0.3][(case / 7) % 4] * scale;
            let ball = PieceBall {
                frobenius: r,
                token: r,
            };
            let b = norms.bound(&ff, x.as_ref(), ball).expect("bound");
            let at_centre = norms.bound(&ff, x.as_ref(), PieceBall::centre()).unwrap();
            assert!(at_centre.sup <= b.sup && at_centre.slope <= b.slope);
            let fwd = |y: &Mat<f64>| ff.forward(y.as_ref()).unwrap();
            let mut points = vec![x.clone()];
            for _ in 0..3 {
                points.push(point_in(&x, r, &mut rng));
                points.push(point_on(&x, r, &mut rng));
            }
            let (s, c, l) = check_points(&fwd, &b, &points, 1e-4 * scale.max(0.1), &mut rng, case);
            ws = ws.max(s);
            wc = wc.max(c);
            wl = wl.max(l);
            least = (least.0.min(s), least.1.min(c));
        }
        println!(
            "gated feed-forward: worst measured / bound: sup {ws:.6}, second derivative {wc:.3}, secant slope {wl:.3}; the loosest case's best: sup {:.3}, second derivative {:.3}",
            least.0, least.1
        );
        assert!(ws > 0.3 && wc > 0.1, "the bounds are far from attained");
        let relu = gated(2, 4, Activation::Relu, false, &mut rng);
        assert!(GatedFeedForwardNorms::of(&relu).is_err());
    }
}
