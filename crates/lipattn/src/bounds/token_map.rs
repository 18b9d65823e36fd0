//! Bounds for the token map X -> f(X) on (B_R)^n in the Frobenius norm: B1, its tightened form,
//! the multi-head compositions of B4, and the anchor's formulas for comparison.

use super::constants::HeadConstants;
use super::{require_dot, Bound, Domain, LayerConstants, Metric};
use crate::attention::AttentionLayer;
use crate::error::Result;
use crate::linalg::rounding::{add_up, div_up, exp_up, hypot_up, ln_up, mul_up, sqrt_up, sum_up};

/// An upper bound on max_j sum_i P_ij, the largest column sum of the attention matrix, for
/// uniform weights on n tokens in B_R with scores whose key-dependent part spans at most
/// 2 R beta (Lemma 3).
pub fn column_sum_bound(domain: &Domain, beta: f64) -> f64 {
    column_sum_from_spread(
        mul_up(mul_up(2.0, domain.radius), beta),
        domain.n,
        domain.causal,
    )
}

/// Lemma 3 for scores of one query spanning at most `spread` (an upper bound): with uniform
/// weights P_ij <= min(1, e^spread / (number of keys visible to query i)), summed over the queries
/// that see one key. Causal: query i sees i + 1 keys. Rounded upward; capping the exponent at 700
/// changes nothing, since e^700 exceeds any sequence length.
pub fn column_sum_from_spread(spread: f64, n: usize, causal: bool) -> f64 {
    let e = exp_up(spread.min(700.0));
    if !causal || e >= n as f64 {
        return (n as f64).min(e);
    }
    if n <= EXACT_HARMONIC_TERMS {
        return sum_up((0..n).map(|i| div_up(e, (i + 1) as f64).min(1.0)));
    }
    causal_column_sum_long(e, n)
}

/// Terms of the causal column sum added one by one; past them the harmonic tail is bounded by a
/// logarithm, so that the bound costs O(1) whatever n (a sweep over lengths near usize::MAX would
/// otherwise loop for hours).
const EXACT_HARMONIC_TERMS: usize = 1 << 20;

/// sum_{i=1}^n min(1, e / i) for 1 <= e < n: the first k = floor(e) terms are 1, the next ones
/// are added exactly up to i = m, and sum_{i=m+1}^n 1/i <= ln(n / m) (the integral of 1/x bounds
/// the sum of a decreasing function from above). Rounded upward.
fn causal_column_sum_long(e: f64, n: usize) -> f64 {
    let k = e.floor() as usize;
    let m = n.min(k.saturating_add(EXACT_HARMONIC_TERMS));
    let head = sum_up(((k + 1)..=m).map(|i| div_up(1.0, i as f64)));
    let tail = if m < n {
        ln_up(div_up(n as f64, m as f64))
    } else {
        0.0
    };
    add_up(k as f64, mul_up(e, add_up(head, tail)))
}

/// beta = a R + |c|, rounded upward.
fn beta_up(k: &HeadConstants, r: f64) -> f64 {
    add_up(mul_up(k.a, r), k.c)
}

/// B1 for one head with value norm `vn` (vn = ||W_V|| gives its original form,
/// docs/background.md#upper-bounds): vn (a R^2 + sqrt(n) (1 + R (a R + |c|))), rounded upward.
pub fn b1_head(k: &HeadConstants, vn: f64, domain: &Domain) -> f64 {
    let r = domain.radius;
    let r2 = mul_up(r, r);
    let spread = mul_up(
        sqrt_up(domain.n as f64),
        add_up(1.0, mul_up(r, beta_up(k, r))),
    );
    mul_up(vn, add_up(mul_up(k.a, r2), spread))
}

/// B1-tight for one head: sup_u |M u||A u| R^2 + |M| (sqrt(colsum) + R (a R + |c|)
/// sqrt(min(colsum, n / 2))), rounded upward (docs/bounds.md#b1-tight; Lemma 4 gives the n / 2).
pub fn b1_tight_head(k: &HeadConstants, use_output: bool, domain: &Domain) -> f64 {
    let r = domain.radius;
    let beta = beta_up(k, r);
    let (prod, vn) = if use_output { (k.ma, k.m) } else { (k.va, k.v) };
    let colsum = column_sum_bound(domain, beta);
    let spread = mul_up(
        vn,
        add_up(
            sqrt_up(colsum),
            mul_up(
                mul_up(r, beta),
                sqrt_up(softmax_column_sum(colsum, domain.n)),
            ),
        ),
    );
    add_up(mul_up(prod, mul_up(r, r)), spread)
}

/// min(colsum, n / 2): the bound of Lemma 4 on (1 / R^2) max_j sum_i (sum_k P_ik |x_k - xbar_i|)
/// P_ij |x_j - xbar_i| for n queries at most seeing one key (exact: n / 2 is a power-of-two
/// division).
pub fn softmax_column_sum(colsum: f64, n: usize) -> f64 {
    colsum.min(n as f64 / 2.0)
}

/// B1-joint for a layer of several heads (docs/bounds.md#b1-joint): the first two terms of
/// B1-tight combined over the heads by the better form of B4, each on its own, and the softmax
/// terms of all heads together through Lemma J,
/// (a_w R + c_w) R (sum_h m_h^2 min(colsum_h, n / 2) / w_h)^{1/2} for the better of the layer's
/// weightings, rounded upward. None for one head.
pub fn b1_joint(c: &LayerConstants, domain: &Domain) -> Option<f64> {
    let j = c.joint.as_ref()?;
    let r = domain.radius;
    let r2 = mul_up(r, r);
    let colsums: Vec<f64> = c
        .heads
        .iter()
        .map(|k| column_sum_bound(domain, beta_up(k, r)))
        .collect();
    let both = |sum: f64, cat: f64| sum.min(cat);
    let covariance = both(
        sum_up(c.heads.iter().map(|k| mul_up(k.ma, r2))),
        concat_up(c.wo, c.heads.iter().map(|k| mul_up(k.va, r2))),
    );
    let values = both(
        sum_up(
            c.heads
                .iter()
                .zip(&colsums)
                .map(|(k, &s)| mul_up(k.m, sqrt_up(s))),
        ),
        concat_up(
            c.wo,
            c.heads
                .iter()
                .zip(&colsums)
                .map(|(k, &s)| mul_up(k.v, sqrt_up(s))),
        ),
    );
    // Heads with w_h = 0 have no softmax term (their scores do not depend on the keys). Every
    // weighting gives a valid bound; the smallest is taken.
    let softmax = j
        .weightings
        .iter()
        .map(|jw| {
            let spread = sum_up(
                c.heads
                    .iter()
                    .zip(&colsums)
                    .zip(&jw.weights)
                    .filter(|(_, &w)| w > 0.0)
                    .map(|((k, &s), &w)| {
                        div_up(mul_up(mul_up(k.m, k.m), softmax_column_sum(s, domain.n)), w)
                    }),
            );
            mul_up(mul_up(add_up(mul_up(jw.a, r), jw.c), r), sqrt_up(spread))
        })
        .fold(f64::INFINITY, f64::min);
    Some(add_up(add_up(covariance, values), softmax))
}

/// Castin, Ablin, Peyre 2024 as recalled in docs/background.md#castin-et-al:
/// sqrt(3) |V| (a^2 R^4 (4n + 1) + n)^{1/2}.
pub fn anchor_castin_head(k: &HeadConstants, vn: f64, domain: &Domain) -> f64 {
    let (r, n) = (domain.radius, domain.n as f64);
    if vn == 0.0 {
        return 0.0; // a zero value map contributes 0, whatever its scores (no 0 * inf)
    }
    3f64.sqrt() * vn * (k.a * k.a * r.powi(4) * (4.0 * n + 1.0) + n).sqrt()
}

/// The per-head form of Castin et al.'s code (docs/background.md#castin-et-al),
/// |V_h| sqrt(R_h^2 r^2 (n + 1) + n), read with R_h = a_h r (the scale of the scores), i.e.
/// |V_h| sqrt(a^2 r^4 (n + 1) + n).
pub fn anchor_code_head(k: &HeadConstants, vn: f64, domain: &Domain) -> f64 {
    let (r, n) = (domain.radius, domain.n as f64);
    if vn == 0.0 {
        return 0.0;
    }
    vn * (k.a * k.a * r.powi(4) * (n + 1.0) + n).sqrt()
}

fn concat(wo: f64, per_head: impl Iterator<Item = f64>) -> f64 {
    let s = per_head.map(|x| x * x).sum::<f64>().sqrt();
    if wo == 0.0 || s == 0.0 {
        return 0.0; // a zero factor makes the product 0 (no 0 * inf)
    }
    wo * s
}

/// ||W_O|| (sum_h L_h^2)^{1/2}, rounded upward (for the certified forms).
pub(crate) fn concat_up(wo: f64, per_head: impl Iterator<Item = f64>) -> f64 {
    mul_up(wo, hypot_up(per_head))
}

/// All token-map bounds of a layer (dot kernel, non-causal or causal). Certified: B1 composed by
/// both forms of B4 (docs/bounds.md#b4-multi-head), B1-tight (value maps W_O^h W_V^h summed
/// over heads, or concatenated) and, for several heads, B1-joint. Not certified: the anchor formulas.
pub fn token_map_bounds(layer: &AttentionLayer<f64>, domain: &Domain) -> Result<Vec<Bound>> {
    require_dot(layer, "the token-map bound B1")?;
    Ok(token_map_bounds_from(&LayerConstants::of(layer)?, domain))
}

/// [`token_map_bounds`] from constants computed once (they do not depend on the domain).
pub fn token_map_bounds_from(c: &LayerConstants, domain: &Domain) -> Vec<Bound> {
    let (ks, wo) = (&c.heads, c.wo);
    let f = Metric::Frobenius;
    let b1_sum = sum_up(ks.iter().map(|k| mul_up(k.o, b1_head(k, k.v, domain))));
    let b1_cat = concat_up(wo, ks.iter().map(|k| b1_head(k, k.v, domain)));
    let tight_sum = sum_up(ks.iter().map(|k| b1_tight_head(k, true, domain)));
    let tight_cat = concat_up(wo, ks.iter().map(|k| b1_tight_head(k, false, domain)));
    let mut out = vec![
        Bound::certified("B1+B4-sum", f, b1_sum, "b1-token-map-frobenius"),
        Bound::certified("B1+B4-concat", f, b1_cat, "b4-multi-head"),
        Bound::certified("B1-tight-sum", f, tight_sum, "b1-tight"),
        Bound::certified("B1-tight-concat", f, tight_cat, "b1-tight"),
    ];
    if let Some(v) = b1_joint(c, domain) {
        out.push(Bound::certified("B1-joint", f, v, "b1-joint"));
    }
    out.extend([
        Bound::anchor(
            "anchor-castin-mathmd",
            f,
            concat(wo, ks.iter().map(|k| anchor_castin_head(k, k.v, domain))),
            "Castin, Ablin, Peyre 2024 as recalled in docs/background.md#castin-et-al, heads combined by ||W_O|| sqrt(sum_h L_h^2)",
        ),
        Bound::anchor(
            "anchor-castin-code",
            f,
            concat(wo, ks.iter().map(|k| anchor_code_head(k, k.v, domain))),
            "per-head form of Castin et al.'s code (docs/background.md#castin-et-al) |V_h| sqrt(R_h^2 r^2 (n+1) + n) with R_h = a_h r, heads combined by ||W_O|| sqrt(sum_h L_h^2)",
        ),
    ]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exact(e: f64, n: usize) -> f64 {
        (1..=n).map(|i| (e / i as f64).min(1.0)).sum()
    }

    #[test]
    fn long_causal_column_sum_bounds_the_exact_sum_closely() {
        for &(spread, extra) in &[(0.0, 1usize), (1.3, 4096), (9.0, 300_000), (12.5, 1)] {
            let n = EXACT_HARMONIC_TERMS + extra;
            let e = exp_up(spread);
            let long = column_sum_from_spread(spread, n, true);
            let truth = exact(e, n);
            assert!(long >= truth, "spread {spread}, n {n}: {long} < {truth}");
            assert!(
                long <= truth * (1.0 + 1e-6),
                "spread {spread}, n {n}: {long} vs {truth}"
            );
        }
    }

    #[test]
    fn causal_column_sum_at_huge_lengths_is_finite_and_monotone() {
        let a = column_sum_from_spread(2.0, usize::MAX / 2, true);
        let b = column_sum_from_spread(2.0, usize::MAX, true);
        assert!(a.is_finite() && b >= a && b < 400.0, "{a} {b}");
        // Sum of min(1, e/i) up to n is at most e (1 + ln n) for e >= 1.
        let n = usize::MAX as f64;
        assert!(b <= exp_up(2.0) * (1.0 + n.ln()) + 1.0);
        assert_eq!(
            column_sum_from_spread(800.0, usize::MAX, true),
            usize::MAX as f64
        );
    }
}
