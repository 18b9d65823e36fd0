//! Weight-tied attention of infinite depth: fixed points X* = T(X*) in token space (plain,
//! damped and input-injected variants of one attention layer f) and mu* = F(mu*) in measure
//! space with residuals and errors in exact W1. Certified contraction constants come from
//! docs/dynamics.md#d2 (token space) and #d3 (measure space); without one the solvers still run
//! and report measured quantities only.

use super::branch::Branch;
use super::certify::{self, Certificate, CertifiedDomain};
use super::solver::{solve, FixedPointMap, Solution, SolveOptions, Solver};
use super::{flatten, unflatten};
use crate::attention::{AttentionLayer, Kernel};
use crate::error::{check_at_least, check_in, Error, Interval, Result};
use crate::fmt::{compact, exact};
use crate::linalg::rounding::{add_up, max_row_norm_up, mul_up, up};
use crate::measure::Measure;
use faer::{Mat, MatRef};

/// Which map of the layer f is iterated.
#[derive(Clone, Debug)]
pub enum Variant {
    /// T(X) = f(X).
    Plain,
    /// T(X) = (1 - beta) X + beta f(X), beta in (0, 1].
    Damped { beta: f64 },
    /// T(X) = U + f(X): a weight-tied residual network with input injection (deep equilibrium),
    /// and the inverse of a residual block y = x + g(x) with f = -g, U = Y.
    Injected { input: Mat<f64> },
}

impl Variant {
    pub fn name(&self) -> &'static str {
        match self {
            Variant::Plain => "plain",
            Variant::Damped { .. } => "damped",
            Variant::Injected { .. } => "injected",
        }
    }
}

/// X* = T(X*) for sequences of n tokens, f any [`Branch`].
pub struct TokenFixedPoint<B: Branch = AttentionLayer<f64>> {
    pub layer: B,
    pub n: usize,
    pub variant: Variant,
    /// Certified Frobenius constant of f on `domain` (None when no bound is proven there).
    pub layer_certificate: Option<Certificate>,
    /// Certified constant of T, present only when below 1.
    pub contraction: Option<f64>,
    /// The domain T maps into itself and where the constants hold.
    pub domain: Option<CertifiedDomain>,
    /// Why there is no certificate, when there is none.
    pub notes: Vec<String>,
}

impl<B: Branch> TokenFixedPoint<B> {
    /// For the dot-product kernel (plain or rotary) the certificate needs a ball that T maps
    /// into itself (Lemma D0): `radius` if given and invariant, else the smallest invariant one.
    pub fn new(layer: B, n: usize, variant: Variant, radius: Option<f64>) -> Result<Self> {
        certify::check_square(&layer)?;
        crate::domain::check_optional_radius(radius)?;
        check_at_least("n", n, 1)?;
        let d = layer.d_in();
        let mut u = 0.0;
        match &variant {
            Variant::Plain => {}
            Variant::Damped { beta } => {
                check_in("damping beta", *beta, Interval::open_closed(0.0, 1.0))?;
            }
            Variant::Injected { input } => {
                if input.nrows() != n || input.ncols() != d {
                    return Err(Error::shape(
                        "injected input U",
                        format!("{n}x{d}"),
                        format!("{}x{}", input.nrows(), input.ncols()),
                    ));
                }
                crate::error::check_finite("injected input U", flatten(input.as_ref()))?;
                u = max_row_norm_up(input.as_ref());
            }
        }
        let mut notes = vec![];
        // Tied L2 with an exact factorisation is certified everywhere; every other layer only on
        // a ball that the map sends into itself (Lemma D0 holds for either kernel).
        let global = if layer.needs_ball(n)? {
            None
        } else {
            layer.token_lipschitz(n, None)?
        };
        let (cert, domain) = match global {
            Some(c) => (Some(c), Some(CertifiedDomain::All)),
            None => {
                if layer.kernel() == Kernel::L2 {
                    notes.push("tied L2: W_V = U W_Q does not hold exactly in the stored numbers, so B5 is certified on an invariant ball only (docs/bounds.md#b5-on-a-ball)".into());
                }
                let (m, b) = layer.row_bound()?;
                let inv = certify::invariant_radius_at_least(m, b, u, f64::MIN_POSITIVE);
                let r = match (radius, inv) {
                    (Some(r), _) if certify::ball_is_invariant(m, b, u, r) => Some(r),
                    (Some(r), _) => {
                        notes.push(format!(
                            "the ball of radius {} is not mapped into itself (needs u + m R + b <= R, rounded upward, with m = {}, b = {}, u = {})",
                            exact(r),
                            compact(m),
                            compact(b),
                            compact(u)
                        ));
                        None
                    }
                    (None, Some(r)) => Some(r),
                    (None, None) => {
                        notes.push(format!(
                            "no invariant ball: sum_h |W_O^h W_V^h| = {} >= 1",
                            compact(m)
                        ));
                        None
                    }
                };
                match r {
                    Some(r) => (
                        layer.token_lipschitz(n, Some(r))?,
                        Some(CertifiedDomain::Ball { radius: r }),
                    ),
                    None => (None, None),
                }
            }
        };
        if let (None, Some(CertifiedDomain::Ball { radius })) = (&cert, domain) {
            notes.push(format!(
                "no finite certified constant of f on the ball of radius {} (see the layer's bound in docs/bounds.md)",
                exact(radius)
            ));
        }
        let contraction = cert.as_ref().and_then(|c| {
            let l = match &variant {
                // Rounded upward (docs/bounds.md#floating-point): 1 - beta is exact or not.
                Variant::Damped { beta } => add_up(up(1.0 - beta), mul_up(*beta, c.constant)),
                _ => c.constant,
            };
            (l < 1.0).then_some(l)
        });
        if let (Some(c), None) = (&cert, contraction) {
            notes.push(format!(
                "the certified constant of f ({}) does not make T a contraction",
                compact(c.constant)
            ));
        }
        Ok(Self {
            layer,
            n,
            variant,
            layer_certificate: cert,
            contraction,
            domain,
            notes,
        })
    }

    pub fn apply_mat(&self, x: MatRef<'_, f64>) -> Result<Mat<f64>> {
        let f = self.layer.forward(x)?;
        Ok(match &self.variant {
            Variant::Plain => f,
            Variant::Damped { beta } => Mat::from_fn(x.nrows(), x.ncols(), |i, k| {
                (1.0 - beta) * x[(i, k)] + beta * f[(i, k)]
            }),
            Variant::Injected { input } => &f + input,
        })
    }

    pub fn solve(
        &self,
        x0: MatRef<'_, f64>,
        solver: &Solver,
        opts: &SolveOptions,
    ) -> Result<(Mat<f64>, Solution)> {
        let d = self.layer.d_in();
        if x0.nrows() != self.n || x0.ncols() != d {
            return Err(Error::shape(
                "starting tokens",
                format!("{}x{d}", self.n),
                format!("{}x{}", x0.nrows(), x0.ncols()),
            ));
        }
        let sol = solve(self, &flatten(x0), solver, opts)?;
        Ok((unflatten(&sol.x, self.n, d), sol))
    }
}

impl<B: Branch> FixedPointMap for TokenFixedPoint<B> {
    fn dim(&self) -> usize {
        self.n * self.layer.d_in()
    }
    fn apply(&self, x: &[f64]) -> Result<Vec<f64>> {
        let xm = unflatten(x, self.n, self.layer.d_in());
        Ok(flatten(self.apply_mat(xm.as_ref())?.as_ref()))
    }
    fn contraction(&self) -> Option<f64> {
        self.contraction
    }
    fn in_domain(&self, x: &[f64]) -> bool {
        match self.domain {
            Some(CertifiedDomain::All) => true,
            Some(CertifiedDomain::Ball { radius }) => {
                let xm = unflatten(x, self.n, self.layer.d_in());
                max_row_norm_up(xm.as_ref()) <= radius
            }
            None => false,
        }
    }
}

/// mu* = F(mu*) with F(mu) = (Gamma_mu)_# mu: the atoms move, their masses stay. Residuals and
/// errors are exact W1 distances.
pub struct MeasureFixedPoint {
    pub layer: AttentionLayer<f64>,
    pub weights: Vec<f64>,
    pub certificate: Option<Certificate>,
    pub contraction: Option<f64>,
    pub radius: Option<f64>,
    pub notes: Vec<String>,
}

impl MeasureFixedPoint {
    /// Certified when the kernel is the dot product, the ball of `radius` (or the smallest
    /// invariant one) is mapped into itself and B2 gives L < 1 there.
    pub fn new(layer: AttentionLayer<f64>, weights: Vec<f64>, radius: Option<f64>) -> Result<Self> {
        certify::check_square(&layer)?;
        crate::domain::check_optional_radius(radius)?;
        let n = weights.len();
        crate::measure::validate_weights("measure weights", &weights, n)?;
        let sum: f64 = weights.iter().sum();
        if (sum - 1.0).abs() > crate::measure::WEIGHT_SUM_TOL {
            return Err(Error::NotNormalised {
                what: "measure weights".into(),
                sum,
                tol: crate::measure::WEIGHT_SUM_TOL,
            });
        }
        let mut notes = vec![];
        let mut r_used = None;
        let mut cert = None;
        if layer.kernel == Kernel::L2 {
            notes.push("L2 kernel: no W1 constant over P_1(R^d) exists (docs/bounds.md#b5-tied-l2-attention)".into());
        } else {
            let (m, b) = certify::row_bound(&layer)?;
            let inv = certify::invariant_radius_at_least(m, b, 0.0, f64::MIN_POSITIVE);
            let r = match (radius, inv) {
                (Some(r), _) if certify::ball_is_invariant(m, b, 0.0, r) => Some(r),
                (Some(r), _) => {
                    notes.push(format!(
                        "P(B_R) with R = {} is not mapped into itself (needs m R + b <= R, rounded upward, m = {}, b = {})",
                        exact(r),
                        compact(m),
                        compact(b)
                    ));
                    None
                }
                (None, Some(r)) => Some(r),
                (None, None) => {
                    notes.push(format!(
                        "no invariant ball: sum_h |W_O^h W_V^h| = {} >= 1",
                        compact(m)
                    ));
                    None
                }
            };
            if let Some(r) = r {
                cert = certify::measure_lipschitz(&layer, r)?;
                r_used = Some(r);
            }
        }
        let contraction = cert.as_ref().map(|c| c.constant).filter(|l| *l < 1.0);
        if let (Some(c), None) = (&cert, contraction) {
            notes.push(format!(
                "the certified W1 constant of F ({}) is not below 1",
                compact(c.constant)
            ));
        }
        Ok(Self {
            layer,
            weights,
            certificate: cert,
            contraction,
            radius: r_used,
            notes,
        })
    }

    fn measure(&self, x: &[f64]) -> Result<Measure> {
        Measure::new(
            unflatten(x, self.weights.len(), self.layer.d_in()),
            self.weights.clone(),
        )
    }

    pub fn solve(
        &self,
        atoms0: MatRef<'_, f64>,
        solver: &Solver,
        opts: &SolveOptions,
    ) -> Result<(Measure, Solution)> {
        let d = self.layer.d_in();
        if atoms0.nrows() != self.weights.len() || atoms0.ncols() != d {
            return Err(Error::shape(
                "starting atoms",
                format!("{}x{d}", self.weights.len()),
                format!("{}x{}", atoms0.nrows(), atoms0.ncols()),
            ));
        }
        let sol = solve(self, &flatten(atoms0), solver, opts)?;
        let mu = self.measure(&sol.x)?;
        Ok((mu, sol))
    }
}

impl FixedPointMap for MeasureFixedPoint {
    fn dim(&self) -> usize {
        self.weights.len() * self.layer.d_in()
    }
    fn apply(&self, x: &[f64]) -> Result<Vec<f64>> {
        let xm = unflatten(x, self.weights.len(), self.layer.d_in());
        let y = self
            .layer
            .forward(xm.as_ref(), Some(&self.weights), false)?;
        Ok(flatten(y.as_ref()))
    }
    fn distance(&self, a: &[f64], b: &[f64]) -> Result<f64> {
        Ok(crate::transport::exact(&self.measure(a)?, &self.measure(b)?, 1)?.distance)
    }
    fn size(&self, fx: &[f64]) -> f64 {
        let d = self.layer.d_in();
        self.weights
            .iter()
            .enumerate()
            .map(|(i, w)| w * super::norm2(&fx[i * d..(i + 1) * d]))
            .sum()
    }
    fn contraction(&self) -> Option<f64> {
        self.contraction
    }
    fn in_domain(&self, x: &[f64]) -> bool {
        match self.radius {
            Some(r) => {
                let xm = unflatten(x, self.weights.len(), self.layer.d_in());
                max_row_norm_up(xm.as_ref()) <= r
            }
            None => false,
        }
    }
}
