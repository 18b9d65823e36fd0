//! The certified constants the dynamics rest on, assembled from the bounds of docs/bounds.md:
//! B5 (tied L2: all of R^{n x d} for an exact factorisation, else a ball), B1/B1-tight with B4 (dot product on (B_R)^n) and B2 (measures
//! in W1 on P(B_R)), plus the row bound that proves a ball invariant (docs/dynamics.md#d0).

use crate::attention::{AttentionLayer, Kernel};
use crate::bounds::{self, HeadConstants, Metric};
pub use crate::domain::CertifiedDomain;
use crate::domain::{self, Domain};
use crate::error::{Error, Result};
use crate::linalg::rounding::{
    add_up, div_up, down, mul_up, norm2_up, product_frob_up, product_norm_up, ETA,
};
use serde::Serialize;

/// A proven Lipschitz constant with the norm and the domain it holds on.
#[derive(Clone, Debug, Serialize)]
pub struct Certificate {
    pub constant: f64,
    pub metric: Metric,
    pub domain: CertifiedDomain,
    /// Sequence length the token-map bounds hold for (None for measures).
    pub n: Option<usize>,
    /// Where the proof is written.
    pub source: String,
}

impl Certificate {
    /// The best finite Frobenius bound among `all`, certified on (B_r)^n.
    pub fn best_frobenius_on_ball(all: &[bounds::Bound], r: f64, n: usize) -> Option<Self> {
        bounds::best(all, Metric::Frobenius)
            .filter(|b| b.value.is_finite())
            .map(|b| Certificate {
                constant: b.value,
                metric: Metric::Frobenius,
                domain: CertifiedDomain::Ball { radius: r },
                n: Some(n),
                source: format!("{} ({})", b.source, b.name),
            })
    }
}

/// The layer with W_O and b_O multiplied by s: the map X -> s f(X).
pub fn scaled(layer: &AttentionLayer<f64>, s: f64) -> AttentionLayer<f64> {
    let mut g = layer.clone();
    for j in 0..g.wo.ncols() {
        for i in 0..g.wo.nrows() {
            g.wo[(i, j)] *= s;
        }
    }
    for b in &mut g.bo {
        *b *= s;
    }
    g
}

/// (m, b) with |Gamma_mu(x)| <= m max_j |x_j| + b for every query x and every context mu
/// (any kernel, any weights): m = sum_h |W_O^h W_V^h|, b = sum_h |W_O^h b_V^h| + |b_O|.
/// Lemma D0 of docs/dynamics.md.
pub fn row_bound(layer: &AttentionLayer<f64>) -> Result<(f64, f64)> {
    let dv = layer.dv;
    let mut m = 0.0;
    let mut b = 0.0;
    for h in 0..layer.heads {
        let wo_h = layer.wo.as_ref().subcols(h * dv, dv);
        let wv_h = layer.wv.as_ref().subrows(h * dv, dv);
        // Proven upper bounds, rounding included (docs/bounds.md#floating-point).
        m = add_up(m, product_norm_up(&[wo_h, wv_h])?);
        let bv = faer::Mat::from_fn(dv, 1, |k, _| layer.bv[h * dv + k]);
        b = add_up(b, product_frob_up(&[wo_h, bv.as_ref()]));
    }
    b = add_up(b, norm2_up(layer.bo.iter().copied()));
    Ok((m, b))
}

/// Whether u + m R + b <= R is proven for the exact reals: the left side rounded upward is at
/// most R (Lemma D0 with docs/bounds.md#floating-point; u, m, b upper bounds).
pub fn ball_is_invariant(m: f64, b: f64, u: f64, r: f64) -> bool {
    add_up(add_up(u, mul_up(m, r)), b) <= r
}

/// About the smallest R with u + m R + b <= R, i.e. a ball that X -> U + f(X) maps into itself
/// when every row of U has norm at most u (Lemma D0); None when m >= 1. Rounded outward: the
/// exact u + m R + b <= R holds, and so does [`ball_is_invariant`].
pub fn invariant_radius(m: f64, b: f64, u: f64) -> Option<f64> {
    invariant_radius_at_least(m, b, u, 0.0)
}

/// The radius of [`invariant_radius`], at least `lo` (every radius above an invariant one is
/// invariant too): R >= (u + b) / (1 - m) computed as next_up((u + b)_up / (1 - m)_down), then
/// enlarged, if need be, until the outward-rounded test [`ball_is_invariant`] accepts it as well
/// (it can miss the exact inequality's margin by a few units in the last place). None when
/// m >= 1 (1 - m rounded down is not positive) or no finite radius passes.
pub fn invariant_radius_at_least(m: f64, b: f64, u: f64, lo: f64) -> Option<f64> {
    let den = down(1.0 - m); // <= 1 - m
    if !(den > 0.0 && b.is_finite() && u.is_finite() && lo.is_finite()) {
        return None;
    }
    let mut r = div_up(add_up(u, b), den).max(lo);
    let mut step = (r * f64::EPSILON).max(ETA);
    for _ in 0..256 {
        if !r.is_finite() {
            return None;
        }
        if ball_is_invariant(m, b, u, r) {
            return Some(r);
        }
        r = add_up(r, step);
        step *= 2.0;
    }
    None
}

/// A certified Frobenius Lipschitz constant of the token map X -> f(X) on sequences of n
/// tokens. Tied L2: B5 on all of R^{n x d} when every head's W_V = U W_Q holds exactly (the
/// radius is then not used), else B5 on (B_R)^n (radius required; Ok(None) without one). Dot
/// product: the best of B1/B1-tight/B4 on (B_R)^n (radius required).
pub fn token_lipschitz(
    layer: &AttentionLayer<f64>,
    n: usize,
    radius: Option<f64>,
) -> Result<Option<Certificate>> {
    check_square(layer)?;
    match layer.kernel {
        Kernel::L2 => Ok(bounds::l2::b5(layer, n, radius, None)?
            .ok()
            .filter(|b| b.bound.value.is_finite())
            .map(|b| Certificate {
                constant: b.bound.value,
                metric: Metric::Frobenius,
                domain: b.domain,
                n: Some(n),
                source: b.bound.source,
            })),
        Kernel::Dot => {
            let Some(r) = radius else {
                return Err(Error::invalid(
                    "dot-product attention is Lipschitz only on a ball: give a radius",
                ));
            };
            let domain = Domain::new(r, n, false)?;
            let all = bounds::token_map::token_map_bounds(layer, &domain)?;
            Ok(Certificate::best_frobenius_on_ball(&all, r, n))
        }
    }
}

/// Whether the token map of `layer` on n tokens is certified only on a ball: always for the dot
/// product; for tied L2 unless every head's W_V = U W_Q holds exactly (B5 on all of R^{n x d}).
pub fn needs_ball(layer: &AttentionLayer<f64>, n: usize) -> Result<bool> {
    Ok(match layer.kernel {
        Kernel::Dot => true,
        Kernel::L2 => bounds::l2::b5(layer, n, None, None)?.is_err(),
    })
}

/// A certified W1 constant of F(mu) = (Gamma_mu)_# mu on P(B_R) (B2; dot product only).
pub fn measure_lipschitz(layer: &AttentionLayer<f64>, radius: f64) -> Result<Option<Certificate>> {
    check_square(layer)?;
    if layer.kernel == Kernel::L2 {
        return Ok(None);
    }
    let radius = domain::check_radius(radius)?;
    let all = bounds::measure_w1::measure_bounds(layer, radius)?;
    Ok(bounds::best(&all, Metric::W1)
        .filter(|b| b.value.is_finite())
        .map(|b| Certificate {
            constant: b.value,
            metric: Metric::W1,
            domain: CertifiedDomain::Ball { radius },
            n: None,
            source: b.source.clone(),
        }))
}

/// Lipschitz constants of the velocity field v(x, mu) = Gamma_mu(x) for x in B_R and mu in
/// P(B_R): (L_x, L_mu) with |v(x, mu) - v(y, mu)| <= L_x |x - y| and
/// |v(x, mu) - v(x, nu)| <= L_mu W1(mu, nu) (the two halves of B2, summed over heads; dot only).
pub fn velocity_lipschitz(layer: &AttentionLayer<f64>, radius: f64) -> Result<Option<(f64, f64)>> {
    check_square(layer)?;
    if layer.kernel == Kernel::L2 {
        return Ok(None);
    }
    let mut lx = 0.0;
    let mut lmu = 0.0;
    for h in 0..layer.heads {
        let k = HeadConstants::of(layer, h)?;
        // Rounded upward (docs/bounds.md#floating-point).
        lx = add_up(
            lx,
            bounds::measure_w1::query_lipschitz_head(&k, true, radius),
        );
        lmu = add_up(
            lmu,
            bounds::measure_w1::context_lipschitz_head(&k, true, radius),
        );
    }
    Ok((lx.is_finite() && lmu.is_finite()).then_some((lx, lmu)))
}

/// Residual blocks, fixed points and flows need f: R^d -> R^d.
pub(crate) fn check_square<B: super::branch::Branch>(layer: &B) -> Result<()> {
    if layer.d_out() != layer.d_in() {
        return Err(Error::shape(
            "layer output width",
            format!(
                "{} (equal to the input width, for x + g(x) and x = f(x))",
                layer.d_in()
            ),
            layer.d_out().to_string(),
        ));
    }
    Ok(())
}
