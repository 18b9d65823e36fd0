//! Lemma C (docs/bounds.md#lemma-c): a ball certificate for a composition f = g_k o ... o g_1
//! from bounds on each step over the ball around its own input and from upper bounds on the
//! Jacobians of intervals of the chain (steps a..b-1) at the centre.
//!
//! With x_i = g_i(x_{i-1}), y_i = g_i(y_{i-1}) for Y = y_0 in the ball B_0 around X = x_0:
//! J_f(Y) - J_f(X) = sum_i J_{T_i}(y_i) (J_i(y_{i-1}) - J_i(x_{i-1})) J_{G_{i-1}}(X), where G_i is
//! the prefix g_i o ... o g_1 and T_i the suffix g_k o ... o g_{i+1}. Each term is bounded by the
//! suffix's supremum over the images of the ball, the step's slope times the radius of the image
//! ball, and the prefix's norm at the centre, so that, to first order in the radius, only
//! quantities at the centre enter: sup ||J_f|| <= ||J_f(X)|| + rho sum_i Q_i H_i P_{i-1}^2.

use super::piece_ball::{PieceBall, PieceBound};
use crate::error::{Error, Result};
use crate::linalg::rounding::{add_up, mul_up};
use serde::Serialize;

/// Upper bounds at the centre X: `interval[a][b]` >= ||J of steps a..b-1 at x_a|| for
/// 0 <= a <= b <= k (1 on the diagonal).
#[derive(Clone, Debug)]
pub struct ChainCentre {
    pub interval: Vec<Vec<f64>>,
}

impl ChainCentre {
    /// The table from the steps' own bounds `steps[i]` >= ||J_i(x_i)|| and bounds `known` on
    /// some intervals (a, b, value): every other interval is bounded by the best product over
    /// its splits (norms are submultiplicative).
    pub fn new(steps: &[f64], known: &[(usize, usize, f64)]) -> Self {
        let k = steps.len();
        let mut t = vec![vec![f64::INFINITY; k + 1]; k + 1];
        for (a, row) in t.iter_mut().enumerate() {
            row[a] = 1.0;
            if a < k {
                row[a + 1] = steps[a];
            }
        }
        for &(a, b, v) in known {
            t[a][b] = t[a][b].min(v);
        }
        for len in 2..=k {
            for a in 0..=k - len {
                let b = a + len;
                let best = (a + 1..b).fold(t[a][b], |m, c| m.min(mul_up(t[a][c], t[c][b])));
                t[a][b] = best;
            }
        }
        Self { interval: t }
    }

    pub fn steps(&self) -> usize {
        self.interval.len() - 1
    }

    /// The bound at the centre on the whole chain.
    pub fn whole(&self) -> f64 {
        self.interval[0][self.steps()]
    }
}

/// Lemma C's bounds on one ball.
#[derive(Clone, Debug, Serialize)]
pub struct ChainBall {
    /// An upper bound on sup ||J_f(Y)||_2 over the ball.
    pub sup: f64,
    /// An upper bound on sup ||f(Y) - f(X)||_F over the ball (radius of the last image ball).
    pub output_radius: f64,
    /// Per step: its bound on the ball around its input, and that ball.
    pub steps: Vec<StepBall>,
}

#[derive(Clone, Debug, Serialize)]
pub struct StepBall {
    pub ball: PieceBall,
    pub bound: PieceBound,
}

/// Lemma C for the chain of `centre.steps()` steps on `ball` around X; `step(i, b)` bounds step i
/// (0-based) on the ball `b` around its input x_i.
///
/// With S(a, i) >= sup over the ball of ||J of steps a..i-1 at y_a||, H_l and r_l the slope and
/// radius of step l's ball and I the centre table, the telescoping sum gives
/// S(a, i) <= I[a][i] + sum_{a <= l < i} S(l + 1, i) H_l r_l I[a][l], and S(a, i) <= M_a S(a+1, i).
/// The image radii are r_i <= rho S(0, i) (and the step's own bounds), the certificate S(0, k).
pub fn chain_ball(
    centre: &ChainCentre,
    ball: PieceBall,
    mut step: impl FnMut(usize, PieceBall) -> Result<PieceBound>,
) -> Result<ChainBall> {
    let k = centre.steps();
    let t = &centre.interval;
    let rho = ball.frobenius;
    let mut balls = vec![ball];
    let mut bounds: Vec<PieceBound> = Vec::with_capacity(k);
    let sup_to = |i: usize, balls: &[PieceBall], bounds: &[PieceBound]| -> Vec<f64> {
        // S(a, i) for a = i down to 0, over steps whose bounds are known (a < i <= bounds.len()).
        let mut s = vec![0.0f64; i + 1];
        s[i] = 1.0;
        for a in (0..i).rev() {
            let mut corr = 0.0;
            for l in a..i {
                let term = mul_up(
                    s[l + 1],
                    mul_up(bounds[l].slope, mul_up(balls[l].frobenius, t[a][l])),
                );
                corr = add_up(corr, term);
            }
            s[a] = mul_up(bounds[a].sup, s[a + 1]).min(add_up(t[a][i], corr));
        }
        s
    };
    for i in 0..k {
        let b = balls[i];
        let bound = step(i, b)?;
        bounds.push(bound);
        let r = b.frobenius;
        let taylor = add_up(
            mul_up(t[i][i + 1], r),
            mul_up(0.5, mul_up(bound.slope, mul_up(r, r))),
        );
        let prefix = sup_to(i + 1, &balls, &bounds)[0];
        let frobenius = mul_up(bound.sup, r).min(taylor).min(mul_up(rho, prefix));
        if !frobenius.is_finite() {
            return Err(overflow(rho));
        }
        let token = mul_up(bound.token_gain, b.token).min(frobenius);
        balls.push(PieceBall { frobenius, token });
    }
    let sup = sup_to(k, &balls, &bounds)[0];
    if !sup.is_finite() {
        return Err(overflow(rho));
    }
    let output_radius = balls[k].frobenius;
    Ok(ChainBall {
        sup,
        output_radius,
        steps: balls
            .into_iter()
            .zip(bounds)
            .map(|(ball, bound)| StepBall { ball, bound })
            .collect(),
    })
}

/// ||f(Y) - f(X)||_F <= int_0^1 sup_{B(s)} ||J_f|| rho ds <= (rho / m) sum_{j=1}^m S(j / m), with
/// S(t) a bound on the supremum over the ball scaled by t (the balls grow with t), taken beside
/// the last image radius of the full ball.
pub fn output_change(
    rho: f64,
    full: &ChainBall,
    m: usize,
    mut scaled_sup: impl FnMut(f64) -> Result<f64>,
) -> Result<f64> {
    let mut sum = 0.0;
    for j in 1..=m {
        let t = j as f64 / m as f64;
        let s = if j == m { full.sup } else { scaled_sup(t)? };
        sum = add_up(sum, s);
    }
    Ok(mul_up(mul_up(rho, sum), 1.0 / m as f64 * (1.0 + 1e-15)).min(full.output_radius))
}

fn overflow(rho: f64) -> Error {
    Error::invalid(format!(
        "the ball certificate overflows f64 on a ball of Frobenius radius {rho}: take a smaller ball"
    ))
}
