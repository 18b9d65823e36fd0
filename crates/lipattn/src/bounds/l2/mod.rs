//! B5: tied L2 attention (Kim, Papamakarios, Mnih 2021), re-derived in docs/bounds.md#b5.
//! It holds on all of R^{n x d} when every head's value map factors through its query
//! projection exactly, W_V^h = U_h W_Q^h in the stored numbers (proven, not within a tolerance:
//! any other remainder makes the head's growth unbounded). Otherwise lipattn splits
//! W_V^h = U_h W_Q^h + E_h and certifies on a ball, with a term for E_h
//! (docs/bounds.md#b5-on-a-ball).

mod factor;
mod moments;

pub use factor::{split_value_map, ValueSplit};
pub use moments::{
    first_moment_bound, kim_bounds, lambert_w0, second_moment_bound, unit_l2_lipschitz,
};

use super::{Bound, Metric};
use crate::attention::{AttentionLayer, Kernel};
use crate::domain::CertifiedDomain;
use crate::error::{check_positive, Error, Result};
use crate::linalg::rounding::{
    add_up, div_up, hypot_up, inv_sqrt_up, mul_up, product_norm_up, spectral_up, sqrt_up, sum_up,
    up,
};

/// A B5 bound with the domain it holds on.
#[derive(Clone, Debug)]
pub struct B5 {
    /// "B5" on all of R^{n x d}, "B5-ball" on (B_R)^n.
    pub bound: Bound,
    pub domain: CertifiedDomain,
    /// Per head, an upper bound of ||W_V^h - U_h W_Q^h||_2; 0 where W_V^h = U_h W_Q^h is exact.
    pub residuals: Vec<f64>,
}

impl B5 {
    /// Where the bound holds, in words, for reports.
    pub fn domain_note(&self, n: usize) -> String {
        match self.domain {
            CertifiedDomain::All => format!(
                "B5 holds on all of R^(n x d), n = {n}: every head's W_V = U W_Q holds exactly in the stored numbers"
            ),
            CertifiedDomain::Ball { radius } => {
                let (h, e) = self
                    .residuals
                    .iter()
                    .enumerate()
                    .fold((0, 0.0f64), |a, (h, &e)| if e > a.1 { (h, e) } else { a });
                format!(
                    "B5-ball holds on (B_R)^n, R = {}, n = {n} only: W_V = U W_Q + E is not exact (largest |E| <= {}, head {h}), and tied L2 attention is certified on all of R^(n x d) only for an exact factorisation",
                    crate::fmt::compact(radius),
                    crate::fmt::compact(e)
                )
            }
        }
    }
}

/// The smallest of the layer's B5 bounds on sequences of n tokens with context weights
/// `weights` (uniform when None; causal or not): on all of R^{n x d} when every head's value map
/// factors exactly (`radius` is then not needed and not used), otherwise on (B_R)^n with
/// R = `radius`. Err(reason) when no bound applies (a remainder and no radius).
pub fn b5(
    layer: &AttentionLayer<f64>,
    n: usize,
    radius: Option<f64>,
    weights: Option<&[f64]>,
) -> Result<std::result::Result<B5, String>> {
    if layer.kernel != Kernel::L2 {
        return Err(Error::invalid("B5 applies to the tied L2 kernel only"));
    }
    crate::domain::check_len(n)?;
    let radius = crate::domain::check_optional_radius(radius)?;
    // The fields are public: weights edited after `AttentionLayer::new` are checked again, since
    // a NaN norm would vanish in `min` below.
    for (name, m) in [("W_Q", &layer.wq), ("W_V", &layer.wv), ("W_O", &layer.wo)] {
        if !m.col_iter().all(|c| c.iter().all(|x| x.is_finite())) {
            return Err(Error::invalid(format!("{name} has a non-finite entry")));
        }
    }
    let rho = ratio_bound(n, weights)?;
    let (dk, dv) = (layer.dk, layer.dv);
    let unit = unit_l2_lipschitz(rho, n as f64);
    let splits = (0..layer.heads)
        .map(|h| {
            split_value_map(
                layer.wq.as_ref().subrows(h * dk, dk),
                layer.wv.as_ref().subrows(h * dv, dv),
            )
        })
        .collect::<Result<Vec<_>>>()?;
    let residuals: Vec<f64> = splits.iter().map(|s| s.residual).collect();
    let exact = splits.iter().all(|s| s.exact);
    if !exact && radius.is_none() {
        let h = splits.iter().position(|s| !s.exact).unwrap_or(0);
        return Ok(Err(format!(
            "head {h}: W_V = U W_Q does not hold exactly in the stored numbers (remainder |E| <= {}), so tied L2 attention is not certified on all of R^(n x d); B5 holds on a ball: give a radius",
            crate::fmt::compact(splits[h].residual)
        )));
    }
    // Every norm is a proven upper bound and every operation is rounded upward
    // (docs/bounds.md#floating-point).
    // The remainder term depends on the score scale 1 / sqrt(t), t = score_divisor_sq.
    let inv_sqrt_t = inv_sqrt_up(layer.score_divisor_sq);
    let sqrt_n = sqrt_up(n as f64);
    let mut sum = 0.0;
    let mut cat = Vec::with_capacity(layer.heads);
    for (h, split) in splits.iter().enumerate() {
        let wq = layer.wq.as_ref().subrows(h * dk, dk);
        let wo_h = layer.wo.as_ref().subcols(h * dv, dv);
        // With t = score_divisor_sq (dk by default) and z = W_Q x / t^{1/4} the scores are
        // -|z_i - z_j|^2 and the tied part of the head is x -> W_O^h U t^{1/4} sum_j P_ij z_j,
        // so Lip <= |W_O^h U| |W_Q| Lip(unit map) whatever t is.
        let wq_norm = spectral_up(wq)?;
        let mut head_sum = mul_up(
            mul_up(product_norm_up(&[wo_h, split.u.as_ref()])?, wq_norm),
            unit,
        );
        let mut head_cat = mul_up(mul_up(spectral_up(split.u.as_ref())?, wq_norm), unit);
        if let (false, Some(r)) = (split.exact, radius) {
            // The remainder X -> E xbar_i on (B_R)^n (docs/bounds.md#b5-on-a-ball):
            // Lip <= |E| (2 g R^2 + sqrt(n) (1 + 4 g R^2)), g = |W_Q|^2 / sqrt(t).
            let g = mul_up(mul_up(wq_norm, wq_norm), inv_sqrt_t);
            let gr2 = mul_up(g, mul_up(r, r));
            let c = add_up(
                mul_up(2.0, gr2),
                mul_up(sqrt_n, add_up(1.0, mul_up(4.0, gr2))),
            );
            let e = mul_up(split.residual, c);
            head_sum = add_up(head_sum, mul_up(spectral_up(wo_h)?, e));
            head_cat = add_up(head_cat, e);
        }
        sum = add_up(sum, head_sum);
        cat.push(head_cat);
    }
    let value = sum.min(mul_up(spectral_up(layer.wo.as_ref())?, hypot_up(cat)));
    let (name, section, domain) = match (exact, radius) {
        (true, _) => ("B5", "b5-tied-l2-attention", CertifiedDomain::All),
        (false, Some(radius)) => ("B5-ball", "b5-on-a-ball", CertifiedDomain::Ball { radius }),
        (false, None) => unreachable!("refused above"),
    };
    Ok(Ok(B5 {
        bound: Bound::certified(name, Metric::Frobenius, value, section),
        domain,
        residuals,
    }))
}

/// B5 on all of R^{n x d} for uniform weights, or None with the reason (a value map that does
/// not factor exactly through W_Q).
pub fn l2_bounds(layer: &AttentionLayer<f64>, n: usize) -> Result<(Option<Bound>, Option<String>)> {
    Ok(match b5(layer, n, None, None)? {
        Ok(b) => (Some(b.bound), None),
        Err(why) => (None, Some(why)),
    })
}

/// rho >= (W - w_i) / w_i for every token i, W the total weight (Lemma K1; n - 1 for uniform
/// weights). A causal mask only removes keys, which lowers W.
fn ratio_bound(n: usize, weights: Option<&[f64]>) -> Result<f64> {
    let Some(w) = weights else {
        return Ok((n - 1) as f64);
    };
    if w.len() != n {
        return Err(Error::shape(
            "token weights",
            n.to_string(),
            w.len().to_string(),
        ));
    }
    let mut min = f64::INFINITY;
    for &x in w {
        min = min.min(check_positive("token weight", x)?);
    }
    let total = sum_up(w.iter().copied());
    let rho = div_up(up(total - min), min);
    if !rho.is_finite() {
        return Err(Error::invalid(format!(
            "token weights: (total - smallest) / smallest = ({total:e} - {min:e}) / {min:e} overflows; Lemma K1 has no finite bound for weights this uneven"
        )));
    }
    Ok(rho)
}
