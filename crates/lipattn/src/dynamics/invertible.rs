//! Invertible attention: y = x + g(x) with g a multi-head attention layer scaled so that its
//! certified Lipschitz constant is at most c < 1 (docs/dynamics.md#d1). Tied L2 attention is
//! certified on all of R^{n x d} by B5; dot-product attention (B1/B4) and rotary attention (B7)
//! only on a ball (B_R)^n, and only for inputs y for which Lemma D0 proves that every preimage
//! and every iterate stay in it. The branch is any [`Branch`].

use super::branch::Branch;
use super::certify::{self, Certificate, CertifiedDomain};
use super::fixed_point::{TokenFixedPoint, Variant};
use super::solver::{Solution, SolveOptions, Solver};
use super::{check_contraction_target, frobenius};
use crate::attention::{AttentionLayer, Kernel};
use crate::error::{Error, Result};
use faer::{Mat, MatRef};
use serde::Serialize;

pub struct InvertibleBlock<B: Branch = AttentionLayer<f64>> {
    /// The residual branch g = s f.
    pub g: B,
    /// The factor s applied to f's output projection.
    pub scale: f64,
    /// The requested bound c on Lip(g).
    pub target: f64,
    pub n: usize,
    /// The certified constant of g (at most `target`), with its norm and domain.
    pub certificate: Certificate,
}

/// The result of inverting y = x + g(x).
#[derive(Clone, Debug, Serialize)]
pub struct Inversion {
    #[serde(skip)]
    pub x: Mat<f64>,
    /// Certified Lipschitz constant of g (Frobenius norm on the stated domain).
    pub certified_lipschitz: f64,
    pub domain: CertifiedDomain,
    pub solver: String,
    /// Steps of the solver up to the returned iterate.
    pub iterations: usize,
    pub evaluations: usize,
    /// |x + g(x) - y|_F at the returned x.
    pub residual: f64,
    /// Certified: |x - x*|_F <= error_bound, x* the unique preimage (None only if an
    /// extrapolating solver returned an iterate outside the certified ball).
    pub error_bound: Option<f64>,
    /// Certified: fixed-point iteration from y reaches the requested residual within this many
    /// steps.
    pub a_priori_iterations: Option<usize>,
    /// Certified: fixed-point iteration from y gets within the requested tolerance of x* (in
    /// error, not residual) within this many steps.
    pub a_priori_iterations_error: Option<usize>,
    pub abs_trace: Vec<f64>,
    pub rel_trace: Vec<f64>,
    pub seconds: f64,
}

impl<B: Branch> InvertibleBlock<B> {
    /// Scales `layer` so that g = s f has certified constant <= c on sequences of n tokens: on
    /// all of R^{n x d} for tied L2 whose W_V = U W_Q holds exactly (`radius` must be None), on
    /// (B_R)^n otherwise (`radius` = R required).
    pub fn new(layer: &B, n: usize, c: f64, radius: Option<f64>) -> Result<Self> {
        check_contraction_target("the contraction constant c", c)?;
        certify::check_square(layer)?;
        crate::domain::check_len(n)?;
        match (layer.needs_ball(n)?, radius) {
            (false, Some(_)) => {
                return Err(Error::invalid(
                    "tied L2 attention with an exact factorisation W_V = U W_Q is certified on all of R^{n x d}; give no radius",
                ))
            }
            (true, None) => return Err(Error::invalid(layer.needs_ball_reason())),
            _ => {}
        }
        let base = layer.token_lipschitz(n, radius)?.ok_or_else(|| {
            Error::invalid("no finite certified bound for this layer (tied L2 needs W_V = U W_Q, see docs/bounds.md#b5-tied-l2-attention; rotary attention with a qk-norm of eps = 0 is not Lipschitz near q = 0, see docs/bounds.md#b7-rotary)")
        })?;
        if !(base.constant.is_finite() && base.constant > 0.0) {
            return Err(Error::Numerical(format!(
                "certified constant of the layer is {}",
                crate::fmt::compact(base.constant)
            )));
        }
        let mut s = c / base.constant;
        // The bound is linear in W_O; recomputing it on the scaled layer and shrinking on the
        // rare rounding overshoot makes the final statement about g itself.
        for _ in 0..8 {
            let g = layer.scaled(s);
            let cert = g
                .token_lipschitz(n, radius)?
                .ok_or_else(|| Error::Numerical("bound lost after scaling".into()))?;
            if cert.constant <= c {
                return Ok(Self {
                    g,
                    scale: s,
                    target: c,
                    n,
                    certificate: cert,
                });
            }
            s *= c / cert.constant * (1.0 - 1e-12);
        }
        Err(Error::Numerical(
            "could not scale the layer below the requested constant".into(),
        ))
    }

    /// y = x + g(x).
    pub fn forward(&self, x: MatRef<'_, f64>) -> Result<Mat<f64>> {
        Ok(&self.g.forward(x)? + x)
    }

    /// |x + g(x) - y|_F.
    pub fn residual(&self, x: MatRef<'_, f64>, y: MatRef<'_, f64>) -> Result<f64> {
        let fx = self.forward(x)?;
        if y.nrows() != fx.nrows() || y.ncols() != fx.ncols() {
            return Err(Error::shape(
                "y",
                format!("{}x{}", fx.nrows(), fx.ncols()),
                format!("{}x{}", y.nrows(), y.ncols()),
            ));
        }
        Ok(frobenius((&fx - y).as_ref()))
    }

    /// The inverse problem as the fixed point of T(X) = Y - g(X).
    pub fn inverse_problem(&self, y: MatRef<'_, f64>) -> Result<TokenFixedPoint<B>> {
        let radius = match self.certificate.domain {
            CertifiedDomain::All => None,
            CertifiedDomain::Ball { radius } => Some(radius),
        };
        let p = TokenFixedPoint::new(
            self.g.scaled(-1.0),
            self.n,
            Variant::Injected {
                input: y.to_owned(),
            },
            radius,
        )?;
        if p.contraction.is_none() {
            return Err(Error::invalid(format!(
                "y lies outside the range where the inverse is certified ({}){}",
                p.notes.join("; "),
                if self.g.kernel() == Kernel::Dot {
                    "; choose a larger radius"
                } else {
                    ""
                }
            )));
        }
        Ok(p)
    }

    /// The block for the tokens `x`: for tied L2 with an exact factorisation the block on all of
    /// R^{n x d}; otherwise on the ball of `radius`, or, without one, of the smallest of
    /// 1.25 max|x_i| * 1.5^k (k < 40) for which y = x + g(x) provably has its preimage and every
    /// iterate in the ball.
    pub fn for_tokens(layer: &B, x: MatRef<'_, f64>, c: f64, radius: Option<f64>) -> Result<Self> {
        let n = x.nrows();
        if !layer.needs_ball(n)? {
            if radius.is_some() {
                return Err(Error::Option(
                    "`radius` does not apply: this tied L2 layer's W_V = U W_Q is exact, so it is certified on all of R^(n x d)".into(),
                ));
            }
            return Self::new(layer, n, c, None);
        }
        let mut r = match radius {
            Some(r) => r,
            None => 1.25 * super::max_row_norm(x).max(1e-3),
        };
        for _ in 0..40 {
            let b = Self::new(layer, n, c, Some(r))?;
            let y = b.forward(x)?;
            if b.inverse_problem(y.as_ref()).is_ok() {
                return Ok(b);
            }
            if radius.is_some() {
                return Err(Error::Option(format!("with `radius` {}, y = x + g(x) lies outside the range where the inverse is certified; choose a larger radius", crate::fmt::exact(r))));
            }
            r *= 1.5;
        }
        Err(Error::invalid(
            "found no radius for which the inverse is certified",
        ))
    }

    pub fn inverse(
        &self,
        y: MatRef<'_, f64>,
        solver: &Solver,
        opts: &SolveOptions,
    ) -> Result<Inversion> {
        let p = self.inverse_problem(y)?;
        let (x, sol) = p.solve(y, solver, opts)?;
        Ok(self.report(x, sol))
    }

    fn report(&self, x: Mat<f64>, sol: Solution) -> Inversion {
        Inversion {
            x,
            certified_lipschitz: self.certificate.constant,
            domain: self.certificate.domain,
            solver: sol.solver,
            iterations: sol.step,
            evaluations: sol.evaluations,
            residual: sol.residual,
            error_bound: sol.error_bound,
            a_priori_iterations: sol.a_priori_steps,
            a_priori_iterations_error: sol.a_priori_steps_error,
            abs_trace: sol.abs_trace,
            rel_trace: sol.rel_trace,
            seconds: sol.seconds,
        }
    }
}
