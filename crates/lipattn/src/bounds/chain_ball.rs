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
    chain_balls(centre, &[ball], |i, balls| {
        balls.iter().map(|&b| step(i, b)).collect()
    })
    .map(|mut all| all.pop().expect("one chain"))
}

/// [`chain_ball`] on every ball of `balls` at once, the chains walked step by step together:
/// step i's ball on each chain depends only on that chain's steps before i, so all of them are
/// known before any chain's step i is bounded, and `step(i, bs)` bounds step i on all of them
/// in one call (one result per ball of `bs`, in order; a step that reads its input once for
/// several balls, such as Lemma S's streamed centre, reads it once). Each chain's arithmetic is
/// [`chain_ball`]'s, so each result equals `chain_ball` on its ball alone. The result is the
/// first error in the order of `balls` (as calling [`chain_ball`] on each in turn would give),
/// else every chain's bounds; a chain after one that failed is not walked further.
pub fn chain_balls(
    centre: &ChainCentre,
    balls: &[PieceBall],
    mut step: impl FnMut(usize, &[PieceBall]) -> Vec<Result<PieceBound>>,
) -> Result<Vec<ChainBall>> {
    let k = centre.steps();
    let mut walks: Vec<Walk> = balls.iter().map(|&b| Walk::new(centre, b)).collect();
    // Chains 0..live are still walked; the first error (in chain order) ends those after it.
    let mut live = walks.len();
    let mut failed: Option<(usize, Error)> = None;
    for i in 0..k {
        let current: Vec<PieceBall> = walks[..live].iter().map(|w| w.balls[i]).collect();
        if current.is_empty() {
            break;
        }
        let bounds = step(i, &current);
        assert_eq!(bounds.len(), current.len(), "one bound per ball");
        for (c, bound) in bounds.into_iter().enumerate().take(live) {
            if let Err(e) = bound.and_then(|b| walks[c].push(centre, b)) {
                live = c;
                failed = Some((c, e));
                break;
            }
        }
    }
    // The chains before the failed one ran every step; their own last check comes first.
    let mut out = Vec::with_capacity(walks.len());
    for (c, w) in walks.into_iter().enumerate() {
        if let Some((f, e)) = failed.take() {
            if c == f {
                return Err(e);
            }
            failed = Some((f, e));
        }
        out.push(w.finish(centre)?);
    }
    Ok(out)
}

/// One chain of [`chain_balls`]: the balls around each step's input so far and the steps'
/// bounds on them.
struct Walk {
    rho: f64,
    balls: Vec<PieceBall>,
    bounds: Vec<PieceBound>,
}

impl Walk {
    fn new(centre: &ChainCentre, ball: PieceBall) -> Self {
        let mut balls = Vec::with_capacity(centre.steps() + 1);
        balls.push(ball);
        Self {
            rho: ball.frobenius,
            balls,
            bounds: Vec::with_capacity(centre.steps()),
        }
    }

    /// Step i's bound on balls[i] (i = bounds.len()): the ball around step i + 1's input.
    fn push(&mut self, centre: &ChainCentre, bound: PieceBound) -> Result<()> {
        let t = &centre.interval;
        let (i, rho) = (self.bounds.len(), self.rho);
        let b = self.balls[i];
        self.bounds.push(bound);
        let r = b.frobenius;
        let taylor = add_up(
            mul_up(t[i][i + 1], r),
            mul_up(0.5, mul_up(bound.slope, mul_up(r, r))),
        );
        let prefix = sup_to(t, i + 1, &self.balls, &self.bounds)[0];
        let frobenius = mul_up(bound.sup, r).min(taylor).min(mul_up(rho, prefix));
        if !frobenius.is_finite() {
            return Err(overflow(rho));
        }
        let token = mul_up(bound.token_gain, b.token).min(frobenius);
        self.balls.push(PieceBall { frobenius, token });
        Ok(())
    }

    fn finish(self, centre: &ChainCentre) -> Result<ChainBall> {
        let k = centre.steps();
        let sup = sup_to(&centre.interval, k, &self.balls, &self.bounds)[0];
        if !sup.is_finite() {
            return Err(overflow(self.rho));
        }
        let output_radius = self.balls[k].frobenius;
        Ok(ChainBall {
            sup,
            output_radius,
            steps: self
                .balls
                .into_iter()
                .zip(self.bounds)
                .map(|(ball, bound)| StepBall { ball, bound })
                .collect(),
        })
    }
}

/// S(a, i) for a = i down to 0, over steps whose bounds are known (a < i <= bounds.len()), with
/// `t` the centre table.
fn sup_to(t: &[Vec<f64>], i: usize, balls: &[PieceBall], bounds: &[PieceBound]) -> Vec<f64> {
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A made-up step: its bound grows with the ball, and it fails (naming the step and the
    /// ball) where `fails(i, ball)`.
    fn step(i: usize, b: PieceBall, fails: fn(usize, PieceBall) -> bool) -> Result<PieceBound> {
        if fails(i, b) {
            return Err(Error::invalid(format!("step {i} on ball {}", b.frobenius)));
        }
        Ok(PieceBound {
            sup: 1.0 + 0.3 * i as f64 + 2.0 * b.frobenius,
            slope: 0.5 + i as f64 + b.token,
            token_gain: 1.0 + 0.1 * i as f64,
        })
    }

    /// Walking several balls together (`chain_balls`) gives each ball what `chain_ball` gives it
    /// alone, bit for bit, and where some fail the error that walking them one after the other
    /// meets first (also when a later ball fails at an earlier step).
    #[test]
    fn chains_walked_together_equal_chains_walked_alone() {
        let centre = ChainCentre::new(&[1.5, 0.8, 3.0, 1.1, 2.0], &[(0, 3, 2.5), (1, 5, 4.0)]);
        let balls: Vec<PieceBall> = [1.0, 0.125, 0.5, 0.875, 0.25]
            .iter()
            .map(|&t| PieceBall {
                frobenius: 0.2 * t,
                token: 0.05 * t,
            })
            .collect();
        let cases: [fn(usize, PieceBall) -> bool; 5] = [
            |_, _| false,
            |i, b| i == 0 && (b.frobenius - 0.1).abs() < 0.01,
            |i, b| i == 4 || (i == 1 && b.frobenius < 0.08),
            |i, b| i == 2 && b.frobenius < 0.1,
            |i, b| i == 3 && b.frobenius > 0.3,
        ];
        for (case, fails) in cases.into_iter().enumerate() {
            let mut calls = 0;
            let together = chain_balls(&centre, &balls, |i, bs| {
                calls += 1;
                bs.iter().map(|&b| step(i, b, fails)).collect()
            });
            assert!(calls <= centre.steps());
            let alone: Result<Vec<ChainBall>> = balls
                .iter()
                .map(|&b| chain_ball(&centre, b, |i, b| step(i, b, fails)))
                .collect();
            match (together, alone) {
                (Ok(a), Ok(b)) => {
                    assert_eq!(case, 0);
                    for (x, y) in a.iter().zip(&b) {
                        assert_eq!(x.sup.to_bits(), y.sup.to_bits());
                        assert_eq!(x.output_radius.to_bits(), y.output_radius.to_bits());
                        for (s, t) in x.steps.iter().zip(&y.steps) {
                            assert_eq!(s.ball.frobenius.to_bits(), t.ball.frobenius.to_bits());
                            assert_eq!(s.ball.token.to_bits(), t.ball.token.to_bits());
                            assert_eq!(s.bound.sup.to_bits(), t.bound.sup.to_bits());
                        }
                    }
                    assert!(a.windows(2).all(|w| w[0].sup != w[1].sup));
                }
                (Err(a), Err(b)) => {
                    assert_ne!(case, 0);
                    assert_eq!(a.to_string(), b.to_string(), "case {case}");
                }
                (a, b) => panic!(
                    "case {case}: together {:?}, alone {:?}",
                    a.is_ok(),
                    b.is_ok()
                ),
            }
        }
    }
}
