//! Continuous depth in token space: dX/dt = f(X) for a branch f acting on the whole n x d token
//! matrix, the flow of a layer that is no map of measures (rotary attention at positions
//! 0..n-1 with its own mask). Same integrators and projections as the flow of measures; the
//! Gronwall bound is Theorem D6 (docs/dynamics.md#d6): |X(t) - Y(t)|_F <= e^{L t} |X(0) - Y(0)|_F
//! with L the branch's certified Frobenius constant on the ball the tokens provably stay in.

use super::branch::Branch;
use super::certify::Certificate;
use super::flow::{radius_at, FlowOptions, GronwallCheck, Projection, Trajectory};
use super::integrator::{integrate_field, normalise_rows, velocity_of};
use crate::error::{Error, Result};
use crate::fmt::compact;
use crate::linalg::frobenius;
use crate::linalg::rounding::{add_up, max_row_norm_up};
use faer::{Mat, MatRef};

/// The velocity field of the token flow at X: f(X) read through `projection`.
pub fn token_velocity<B: Branch>(
    branch: &B,
    x: MatRef<'_, f64>,
    projection: Projection,
) -> Result<Mat<f64>> {
    velocity_of(|z| branch.forward(z), x, projection)
}

fn check_branch<B: Branch>(branch: &B, what: &str, x: MatRef<'_, f64>) -> Result<()> {
    super::certify::check_square(branch)?;
    crate::attention::forward::check_tokens(what, x, branch.d_in())
}

/// Integrates dX/dt = f(X) from X(0) = `x0` (rows put on the sphere first when projecting on it).
pub fn integrate_tokens<B: Branch>(
    branch: &B,
    x0: MatRef<'_, f64>,
    opts: &FlowOptions,
) -> Result<Trajectory> {
    opts.check()?;
    check_branch(branch, "initial tokens", x0)?;
    integrate_field(&|x| token_velocity(branch, x, opts.projection), x0, opts)
}

/// The certified rate of Theorem D6 and where it holds.
#[derive(Clone, Debug)]
pub struct TokenGronwall {
    /// L: |X(t) - Y(t)|_F <= e^{L t} |X(0) - Y(0)|_F on [0, T].
    pub lipschitz: f64,
    /// Every token of both flows stays in B_R on [0, T] (Lemma D5a; 1 on the sphere).
    pub radius: f64,
    /// The branch's certified Frobenius constant on (B_R)^n that L is built from.
    pub certificate: Certificate,
}

/// L and R of Theorem D6 for n tokens starting in B_{r0} and flowing to `t_end`; an error naming
/// the failing hypothesis where nothing is proven.
pub fn token_gronwall_constant<B: Branch>(
    branch: &B,
    n: usize,
    projection: Projection,
    r0: f64,
    t_end: f64,
) -> Result<TokenGronwall> {
    super::certify::check_square(branch)?;
    let (m, b) = branch.row_bound()?;
    let radius = match projection {
        Projection::LayerNorm { .. } => {
            return Err(Error::invalid(
                "no Gronwall constant is proven for the flow read through a LayerNorm (LayerNorm is not Lipschitz near constant tokens); use projection 'none' or 'sphere'",
            ))
        }
        Projection::Sphere => 1.0,
        Projection::None => radius_at(m, b, r0, t_end),
    };
    if !radius.is_finite() {
        return Err(Error::invalid(format!(
            "the ball the tokens provably stay in overflows by t = {} (Lemma D5a: (r0 + b/m) e^(m t) - b/m with r0 = {}, m = {}, b = {}): no Gronwall constant; shorten the final time",
            compact(t_end),
            compact(r0),
            compact(m),
            compact(b)
        )));
    }
    let ball = if branch.needs_ball(n)? {
        Some(radius)
    } else {
        None
    };
    let Some(certificate) = branch.token_lipschitz(n, ball)? else {
        return Err(Error::invalid(format!(
            "no finite certified Frobenius constant of the layer on n = {n} tokens in the ball of radius R = {} the flow stays in (Lemma D5a), so no Gronwall constant; shorten the final time or start from smaller tokens",
            compact(radius)
        )));
    };
    let lipschitz = match projection {
        // |P_X f(X) - P_Y f(Y)|_F <= L_f |X - Y|_F + (m + b) |X - Y|_F on unit rows.
        Projection::Sphere => add_up(certificate.constant, add_up(m, b)),
        _ => certificate.constant,
    };
    if !lipschitz.is_finite() {
        return Err(Error::invalid(format!(
            "the certified Frobenius constant on the ball of radius R = {} overflows: no Gronwall constant",
            compact(radius)
        )));
    }
    Ok(TokenGronwall {
        lipschitz,
        radius,
        certificate,
    })
}

/// Flows X(0) = `x0` and Y(0) = `y0` with the same integrator and compares |X(t) - Y(t)|_F with
/// e^{L t} |X(0) - Y(0)|_F (Theorem D6).
pub fn token_gronwall_check<B: Branch>(
    branch: &B,
    x0: MatRef<'_, f64>,
    y0: MatRef<'_, f64>,
    opts: &FlowOptions,
) -> Result<GronwallCheck> {
    opts.check()?;
    check_branch(branch, "initial tokens", x0)?;
    check_branch(branch, "second initial tokens", y0)?;
    if y0.nrows() != x0.nrows() {
        return Err(Error::shape(
            "second initial tokens (rows: token i sits at position i in both flows)",
            x0.nrows().to_string(),
            y0.nrows().to_string(),
        ));
    }
    let (mut x, mut y) = (x0.to_owned(), y0.to_owned());
    if opts.projection == Projection::Sphere {
        normalise_rows(&mut x)?;
        normalise_rows(&mut y)?;
    }
    let r0 = max_row_norm_up(x.as_ref()).max(max_row_norm_up(y.as_ref()));
    let g = token_gronwall_constant(branch, x.nrows(), opts.projection, r0, opts.t_end)?;
    let a = integrate_tokens(branch, x.as_ref(), opts)?;
    let b = integrate_tokens(branch, y.as_ref(), opts)?;
    let measured: Vec<f64> = a
        .states
        .iter()
        .zip(&b.states)
        .map(|(p, q)| frobenius((p - q).as_ref()))
        .collect();
    let source = match opts.projection {
        Projection::Sphere => format!(
            "Theorem D6 (docs/dynamics.md#d6): {} on unit rows, plus m + b of Lemma D0",
            g.certificate.source
        ),
        _ => format!(
            "Theorem D6 (docs/dynamics.md#d6): {} on the ball of Lemma D5a",
            g.certificate.source
        ),
    };
    Ok(GronwallCheck::of_distances(
        "tokens",
        "frobenius",
        (g.lipschitz, g.radius),
        source,
        a.times,
        measured,
    ))
}
