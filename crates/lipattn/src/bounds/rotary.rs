//! B7: certified bounds for rotary attention (docs/bounds.md#b7-rotary), in the Frobenius norm of
//! the token map and in W1 over (position, token) measures, per query head and summed or
//! concatenated over heads (B4). The rotation enters only through an upper bound of the norm of
//! every R_i, so the proof holds for the rotations the code applies (its computed cos/sin table),
//! whatever the scaling type.

use super::constants::HeadConstants;
use super::token_map::column_sum_from_spread;
use super::{Bound, Domain, Metric};
use crate::attention::RotaryAttention;
use crate::error::{Error, Result};
use crate::linalg::rounding::{
    add_up, div_up, down, inv_sqrt_up, mul_up, norm2_up, spectral_up, sqrt_down, sqrt_up, sum_up,
};
use serde::Serialize;

/// What the B7 bounds take from one query head h and its kv head g (every field a proven upper
/// bound of the exact value for the exact f64 weights, rounding included).
#[derive(Clone, Debug, Serialize)]
pub struct RotaryHeadConstants {
    /// ||W_Q^h||_2 and ||W_K^g||_2.
    pub wq: f64,
    pub wk: f64,
    /// |b_Q^h| and |b_K^g|.
    pub bq: f64,
    pub bk: f64,
    /// A lower bound of |b_Q^h| (for the smallest |W_Q x + b_Q| on the ball, under a qk-norm).
    pub bq_low: f64,
    pub bk_low: f64,
    /// ||W_O^h W_V^g||_2, ||W_V^g||_2, ||W_O^h||_2.
    pub m: f64,
    pub v: f64,
    pub o: f64,
}

/// The weights' constants of a rotary layer (independent of R and of n).
#[derive(Clone, Debug, Serialize)]
pub struct RotaryConstants {
    pub heads: Vec<RotaryHeadConstants>,
    /// ||W_O||_2.
    pub wo: f64,
    /// An upper bound of 1 / sqrt(score_divisor_sq).
    pub score_scale: f64,
    /// max |gain| of the query and the key norm, when the layer normalises q and k per head.
    pub q_gain: Option<f64>,
    pub k_gain: Option<f64>,
}

impl RotaryConstants {
    pub fn of(layer: &RotaryAttention) -> Result<Self> {
        layer.check_shapes()?;
        let dh = layer.head_dim;
        let heads = (0..layer.heads)
            .map(|h| head_constants(layer, h))
            .collect::<Result<Vec<_>>>()?;
        let max_abs = |g: &[f64]| g.iter().fold(0.0f64, |m, x| m.max(x.abs()));
        let (q_gain, k_gain) = match &layer.qk_norm {
            Some(norm) => {
                let (gq, gk) = norm.gains();
                (Some(max_abs(&gq)), Some(max_abs(&gk)))
            }
            None => (None, None),
        };
        debug_assert!(heads.len() * dh == layer.wq.nrows());
        Ok(Self {
            heads,
            wo: spectral_up(layer.wo.as_ref())?,
            score_scale: inv_sqrt_up(layer.score_divisor_sq),
            q_gain,
            k_gain,
        })
    }
}

fn head_constants(layer: &RotaryAttention, h: usize) -> Result<RotaryHeadConstants> {
    // The value side is a plain head's: one query head reading kv head g.
    let plain = layer.unrotated_head(h)?;
    let k = HeadConstants::of(&plain, 0)?;
    Ok(RotaryHeadConstants {
        wq: spectral_up(plain.wq.as_ref())?,
        wk: spectral_up(plain.wk.as_ref())?,
        bq: norm2_up(plain.bq.iter().copied()),
        bk: norm2_up(plain.bk.iter().copied()),
        bq_low: norm2_down(&plain.bq),
        bk_low: norm2_down(&plain.bk),
        m: k.m,
        v: k.v,
        o: k.o,
    })
}

/// A lower bound of the Euclidean norm of an f64 vector.
fn norm2_down(x: &[f64]) -> f64 {
    // Each fl(x^2) >= x^2 (1 - u) - ETA / 2 and the recursive sum is within gamma_{n} of the exact
    // one; dividing the computed sum by 1 + 2 gamma_n and subtracting n ETA undoes both.
    let n = x.len();
    let s: f64 = x.iter().map(|v| v * v).sum();
    let g = crate::linalg::rounding::gamma(n + 1);
    if g.is_nan() || g > 0.5 {
        return 0.0;
    }
    let low =
        down(s / add_up(1.0, mul_up(2.0, g))) - mul_up(n as f64, crate::linalg::rounding::ETA);
    sqrt_down(down(low).max(0.0))
}

/// The terms of one query head on a domain (docs/bounds.md#b7-rotary), per unit norm of the
/// value map V: with c = colsum and n' = min(n, window), the Frobenius bound is
/// ||V|| (alpha + sqrt(c) + R cross sqrt(min(c, n' / 2))) and the W1 bound
/// ||V|| (alpha + c + 2 R cross min(c, n' / 4)).
#[derive(Clone, Copy, Debug, Serialize)]
pub struct RotaryHeadTerms {
    /// Bound on |q~| and |k~|, the query and key vectors the scores are formed from.
    pub q_len: f64,
    pub k_len: f64,
    /// Bound on the norm of the derivative of x -> q~(x) and of x -> k~(x).
    pub q_slope: f64,
    pub k_slope: f64,
    /// Bound on |l_ij|, the (soft-capped) score; the scores of one query span at most twice it.
    pub score: f64,
    /// Bound on the largest column sum of the attention matrix (Lemma 3).
    pub colsum: f64,
    /// The most queries that see one key, min(n, window).
    pub seen: usize,
    pub alpha: f64,
    /// p Q omega_K: the score's slope in a key, times |q~|.
    pub cross: f64,
    pub radius: f64,
}

/// The domain of a rotary bound: tokens in B_R at positions 0..n, causal, with the layer's window.
fn check_domain(domain: &Domain) -> Result<()> {
    if !domain.causal {
        return Err(Error::invalid(
            "rotary attention is causal: its bounds need a causal domain",
        ));
    }
    Ok(())
}

/// An upper bound of ||R_i|| over positions i < n (the attention factor included; 1 for the
/// coordinates past rotary_dim, which pass through unrotated).
pub fn rotation_norm(layer: &RotaryAttention, n: usize) -> Result<f64> {
    let rotated = layer.rope.rotation_norm_up(n)?;
    Ok(if layer.rope.rotary_dim < layer.head_dim {
        rotated.max(1.0)
    } else {
        rotated
    })
}

/// Bound on |q~(x)| for x in B_R and on the norm of its derivative: q~ = W x + b, or its
/// RMS-normalised form g ⊙ q / sqrt(|q|^2 / D + eps) under a qk-norm with gains bounded by `gain`.
fn side(w: f64, b: f64, b_low: f64, r: f64, gain: Option<f64>, eps: f64, dh: usize) -> (f64, f64) {
    let raw = add_up(mul_up(w, r), b);
    let Some(g) = gain else {
        return (raw, w);
    };
    // |q| >= |b| - ||W|| R on B_R, so rho(q) = sqrt(|q|^2 / D + eps) >= sqrt(low^2 / D + eps);
    // |q| / rho(q) <= sqrt(D) always, and the normalisation's derivative has norm <= g / rho(q).
    let low = down(b_low - mul_up(w, r)).max(0.0);
    let rho_min = sqrt_down(down(down(down(low * low) / dh as f64) + eps).max(0.0));
    let by_dim = mul_up(g, sqrt_up(dh as f64));
    if rho_min > 0.0 {
        (
            by_dim.min(mul_up(g, div_up(raw, rho_min))),
            mul_up(g, div_up(w, rho_min)),
        )
    } else {
        (by_dim, mul_up(g, mul_up(w, f64::INFINITY)))
    }
}

/// The B7 terms of every query head on `domain` (R, n, causal).
pub fn head_terms(
    layer: &RotaryAttention,
    consts: &RotaryConstants,
    domain: &Domain,
) -> Result<Vec<RotaryHeadTerms>> {
    check_domain(domain)?;
    let r = domain.radius;
    let rho = rotation_norm(layer, domain.n)?;
    // |<R_i q, R_j k>| / sqrt(t) <= rho^2 |q| |k| / sqrt(t).
    let pair = mul_up(mul_up(rho, rho), consts.score_scale);
    let eps = layer.qk_norm.as_ref().map_or(0.0, |n| n.eps);
    // A query sees at most min(n, window) keys, and Lemma 3 needs only that count (B7 proof).
    let seen = layer.window.map_or(domain.n, |w| w.min(domain.n));
    Ok(consts
        .heads
        .iter()
        .map(|k| {
            let (q_len, q_slope) =
                side(k.wq, k.bq, k.bq_low, r, consts.q_gain, eps, layer.head_dim);
            let (k_len, k_slope) =
                side(k.wk, k.bk, k.bk_low, r, consts.k_gain, eps, layer.head_dim);
            let raw = mul_up(pair, mul_up(q_len, k_len));
            // |cap tanh(s / cap)| <= min(|s|, cap).
            let score = layer.softcap.map_or(raw, |cap| raw.min(cap));
            let colsum = column_sum_from_spread(mul_up(2.0, score), seen, true);
            let alpha = mul_up(r, mul_up(mul_up(pair, k_len), q_slope));
            let cross = mul_up(mul_up(pair, q_len), k_slope);
            RotaryHeadTerms {
                q_len,
                k_len,
                q_slope,
                k_slope,
                score,
                colsum,
                seen,
                alpha,
                cross,
                radius: r,
            }
        })
        .collect())
}

/// The head's bound with a value map of norm (at most) `value`.
fn head_bound(t: &RotaryHeadTerms, value: f64, w1: bool) -> f64 {
    let through_keys = mul_up(t.radius, t.cross);
    let per_unit = if w1 {
        // sum_i P_ij (1 - P_ij) <= min(colsum, n' / 4) (Lemma 4).
        let softmax = t.colsum.min(t.seen as f64 / 4.0);
        add_up(
            t.alpha,
            add_up(t.colsum, mul_up(mul_up(2.0, through_keys), softmax)),
        )
    } else {
        let softmax = super::token_map::softmax_column_sum(t.colsum, t.seen);
        add_up(
            t.alpha,
            add_up(sqrt_up(t.colsum), mul_up(through_keys, sqrt_up(softmax))),
        )
    };
    mul_up(value, per_unit)
}

/// The B7 bounds of a rotary layer on `domain`: Frobenius (token map) and W1 over (position,
/// token) measures, each summed over heads with value maps W_O^h W_V^g and composed with W_O by
/// B4 (concatenated form).
pub fn rotary_bounds(
    layer: &RotaryAttention,
    consts: &RotaryConstants,
    domain: &Domain,
) -> Result<Vec<Bound>> {
    let terms = head_terms(layer, consts, domain)?;
    let mut out = Vec::new();
    for (metric, w1, suffix) in [
        (Metric::Frobenius, false, ""),
        (Metric::PositionW1, true, "-W1"),
    ] {
        let sum = sum_up(
            terms
                .iter()
                .zip(&consts.heads)
                .map(|(t, k)| head_bound(t, k.m, w1)),
        );
        out.push(Bound::certified(
            &format!("B7{suffix}-sum"),
            metric,
            sum,
            "b7-rotary",
        ));
        // Concatenated: value maps W_V^g, then ||W_O|| (B4).
        let per_head = terms
            .iter()
            .zip(&consts.heads)
            .map(|(t, k)| head_bound(t, k.v, w1));
        let value = if w1 {
            mul_up(consts.wo, sum_up(per_head))
        } else {
            mul_up(consts.wo, sqrt_up(sum_up(per_head.map(|x| mul_up(x, x)))))
        };
        out.push(Bound::certified(
            &format!("B7{suffix}+B4-concat"),
            metric,
            value,
            "b7-rotary",
        ));
    }
    Ok(out)
}

/// The certified summary of a rotary layer on `domain`: the best B7 bound in the Frobenius norm
/// (the token map; also the W2 constant over (position, token) measures) beside every B7 bound,
/// W1 over (position, token) measures among them. The W1/W2 fields of [`super::Certified`] are
/// about measures on B_R without positions and stay empty, with a note saying why.
pub fn rotary_summary(layer: &RotaryAttention, domain: &Domain) -> Result<super::CertifiedSummary> {
    let consts = RotaryConstants::of(layer)?;
    let bounds = rotary_bounds(layer, &consts, domain)?;
    let frobenius = super::best(&bounds, Metric::Frobenius).map(|b| b.value);
    let mut notes = vec![
        "rotary attention depends on positions: it is no map of measures on B_R, so w1/w2 (B2) do not apply; B7's position_w1 is W1 over (position, token) measures, and the Frobenius bound is also its W2 constant (docs/bounds.md#b7-measure-view)".to_string(),
    ];
    let frobenius = match frobenius {
        Some(v) if v.is_finite() => Some(v),
        _ => {
            notes.push("frobenius: the certified bound is +inf (a qk-norm with eps = 0 is not Lipschitz near q = 0) or beyond the f64 range".into());
            None
        }
    };
    Ok(super::CertifiedSummary {
        best: super::Certified {
            frobenius,
            w1: None,
            w2: None,
            anchor: None,
            anchor_code: None,
        },
        bounds,
        notes,
    })
}
