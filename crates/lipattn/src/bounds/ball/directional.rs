//! The directional form of Lemma S (docs/bounds.md#lemma-s-directional) for dot-product heads.
//!
//! The first version of the lemma bounds every spread by a trace (E_p ||k - m||^2) and every
//! map by a product of norms (||W_O|| ||W_V||). Its second derivative only ever sees the keys
//! through c W_Q^T k_j and the values through W_O v_j, and only along one direction at a time, so
//! this form uses the largest eigenvalue of the weighted covariance of those images instead, the
//! norms of the products W_O W_V and W_Q^T W_K, and the fact that a diffuse row cannot put much
//! weight on any one token (e_i(a)^2 <= max_j p_ij). The eigenvalues are formed once at X on
//! factors of the small (head-dimension) Gram matrices and scaled to the ball by the same
//! per-row factor that bounds the probabilities there.

use super::{grown, Projected, RowCentre};
use crate::error::{Error, Result};
use crate::linalg::rounding::{
    add_up, frob_up, mul_up, norm2_up, product_norm_up, product_with_error, spectral_up, sqrt_up,
    sum_up, ETA, UNIT_ROUNDOFF,
};
use faer::{Mat, MatRef, Side};
use std::borrow::Borrow;

/// B <= F F^T + e I (Loewner order) for the exact Gram matrix B of a weight block.
struct Factor {
    f: Mat<f64>,
    e: f64,
}

/// A factor of the exact Gram matrix A A^T (A is k x d, a head's block of a weight matrix).
/// F comes from the computed eigendecomposition; e bounds, in the spectral norm, everything it
/// misses: the rounding of the Gram matrix and the residual of F F^T against it.
fn gram_factor(a: MatRef<'_, f64>) -> Result<Factor> {
    let (g, e_g) = product_with_error(&[a, a.transpose()]);
    let k = g.nrows();
    let evd = g
        .self_adjoint_eigen(Side::Lower)
        .map_err(|e| Error::Numerical(format!("eigendecomposition did not converge: {e:?}")))?;
    let u = evd.U();
    let s = evd.S().column_vector();
    let f = Mat::from_fn(k, k, |i, j| u[(i, j)] * s[j].max(0.0).sqrt());
    let (ff, e_ff) = product_with_error(&[f.as_ref(), f.transpose()]);
    let resid = Mat::from_fn(k, k, |i, j| g[(i, j)] - ff[(i, j)]);
    let e = sum_up([
        e_g,
        e_ff,
        mul_up(frob_up(resid.as_ref()), 1.0 + 2.0 * UNIT_ROUNDOFF),
    ]);
    Ok(Factor { f, e })
}

/// Rows y_j = F^T z_j of a projection Z (computed, with per-row errors), and a bound on each
/// row's error against F^T times the exact row.
struct Images {
    rows: Mat<f64>,
    errors: Vec<f64>,
}

fn images(p: &Projected, factor: &Factor) -> Images {
    let (rows, e) = product_with_error(&[p.centred.as_ref(), factor.f.as_ref()]);
    let f_norm = frob_up(factor.f.as_ref());
    let errors = p
        .errors
        .iter()
        .map(|&err| add_up(e, mul_up(f_norm, err)))
        .collect();
    Images { rows, errors }
}

/// An upper bound of sqrt(lambda_max(sum_j w_j y_j y_j^T)) for the exact rows y_j = F^T z_j of
/// `keys`, each shifted by the exact row of `shift` when given, with weights w_j <= s_j^2.
fn weighted_top(img: &Images, keys: &[usize], s: &[f64], shift: Option<usize>) -> Result<f64> {
    let k = img.rows.ncols();
    let at = |j: usize, t: usize| img.rows[(j, t)] - shift.map_or(0.0, |b| img.rows[(b, t)]);
    let m = Mat::from_fn(keys.len(), k, |r, t| s[r] * at(keys[r], t));
    // Each entry rounds twice (the shift and the scaling): 3u of its size covers both, plus
    // ETA for a product that underflows.
    let formed = add_up(
        mul_up(3.0 * UNIT_ROUNDOFF, frob_up(m.as_ref())),
        mul_up(ETA, (keys.len() * k) as f64),
    );
    let exact_err = norm2_up(keys.iter().zip(s).map(|(&j, &sj)| {
        let e = add_up(img.errors[j], shift.map_or(0.0, |b| img.errors[b]));
        mul_up(sj, e)
    }));
    Ok(sum_up([spectral_up(m.as_ref())?, formed, exact_err]))
}

/// ||F^T z|| of an exact row, bounded upward, and with it sqrt(||F^T z||^2 + e ||z||^2) >=
/// ||B^{1/2} z||.
fn image_norm(img: &Images, j: usize, shift: Option<usize>, e: f64, z_norm: f64) -> f64 {
    let k = img.rows.ncols();
    let y = norm2_up((0..k).map(|t| img.rows[(j, t)] - shift.map_or(0.0, |b| img.rows[(b, t)])));
    let y = add_up(
        mul_up(y, 1.0 + 2.0 * UNIT_ROUNDOFF),
        add_up(img.errors[j], shift.map_or(0.0, |b| img.errors[b])),
    );
    sqrt_up(add_up(mul_up(y, y), mul_up(e, mul_up(z_norm, z_norm))))
}

/// One row's quantities at X (squares of the directional spreads before the ball's factor).
struct DirRow {
    /// sup_u E_p (c u^T W_Q^T (k_j - m))^2 and sup_z E_p (z^T W_O (v_j - m'))^2 over unit u, z,
    /// with p the bound p_hat on the row at X; the same about the row's peak.
    key2: f64,
    value2: f64,
    key2_peak: f64,
    value2_peak: f64,
    /// max_j ||c W_Q^T (k_j - k_peak)|| and max_j ||W_O (v_j - v_peak)|| at X.
    key_reach: f64,
    value_reach: f64,
}

/// Everything of the directional form that depends on X only.
pub(super) struct DirectionalCentre {
    /// c ||W_Q^T W_K||_2 and ||W_O W_V||_2.
    a_qk: f64,
    a_ov: f64,
    /// ||c W_Q^T (k_j - m)|| and ||W_O (v_j - m')|| at X, per key.
    key_grad: Vec<f64>,
    value_out: Vec<f64>,
    /// ||W_K^T q_i|| at X (q_i already carries c), per query.
    query_key: Vec<f64>,
    rows: Vec<DirRow>,
}

/// The head's weights and projections at X, as `head_centre` formed them.
pub(super) struct HeadInputs<'a> {
    pub wq: &'a Mat<f64>,
    pub wk: &'a Mat<f64>,
    pub wv: &'a Mat<f64>,
    pub wo: &'a Mat<f64>,
    /// Upper bound of c = 1 / sqrt(score divisor).
    pub c_up: f64,
    pub q: &'a Projected,
    pub k: &'a Projected,
    pub v: &'a Projected,
}

impl DirectionalCentre {
    /// The centre of one head from its rows at X, each read once in order (kept or recomputed).
    pub(super) fn new<R: Borrow<RowCentre>>(
        h: &HeadInputs<'_>,
        rows: impl ExactSizeIterator<Item = R>,
    ) -> Result<Self> {
        let c2 = mul_up(h.c_up, h.c_up);
        let fq = gram_factor(h.wq.as_ref())?;
        let fk = gram_factor(h.wk.as_ref())?;
        let fo = gram_factor(h.wo.as_ref().transpose())?;
        // ||c W_Q^T W_K u||^2 <= c^2 (||F_Q^T W_K u||^2 + e_Q ||W_K u||^2), the same for W_O W_V.
        let a_k = spectral_up(h.wk.as_ref())?;
        let a_v = spectral_up(h.wv.as_ref())?;
        let fq_wk = product_norm_up(&[fq.f.as_ref().transpose(), h.wk.as_ref()])?;
        let fo_wv = product_norm_up(&[fo.f.as_ref().transpose(), h.wv.as_ref()])?;
        let a_qk = sqrt_up(mul_up(
            c2,
            add_up(mul_up(fq_wk, fq_wk), mul_up(fq.e, mul_up(a_k, a_k))),
        ));
        let a_ov = sqrt_up(add_up(mul_up(fo_wv, fo_wv), mul_up(fo.e, mul_up(a_v, a_v))));
        let ki = images(h.k, &fq);
        let vi = images(h.v, &fo);
        let qi = images(h.q, &fk);
        let n = h.k.centred.nrows();
        let key_grad: Vec<f64> = (0..n)
            .map(|j| mul_up(h.c_up, image_norm(&ki, j, None, fq.e, h.k.norms[j])))
            .collect();
        let value_out: Vec<f64> = (0..n)
            .map(|j| image_norm(&vi, j, None, fo.e, h.v.norms[j]))
            .collect();
        let query_key: Vec<f64> = (0..n)
            .map(|i| mul_up(h.c_up, image_norm(&qi, i, None, fk.e, h.q.norms[i])))
            .collect();
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            let row = row.borrow();
            let s: Vec<f64> = row.p.iter().map(|&p| sqrt_up(p)).collect();
            // lambda_max(W^T A W) <= lambda_max(F^T A F) + e lambda_max(A), lambda_max(A) <= tr A;
            // `norms[pos]` bounds the exact row (shifted by the peak's) of the key at `pos`.
            let spread = |img: &Images, e: f64, norms: &[f64], peak: Option<usize>| {
                let top = weighted_top(img, &row.keys, &s, peak)?;
                let trace = sum_up(
                    norms
                        .iter()
                        .zip(&row.p)
                        .map(|(&z, &p)| mul_up(p, mul_up(z, z))),
                );
                Ok::<f64, Error>(add_up(mul_up(top, top), mul_up(e, trace)))
            };
            let kn: Vec<f64> = row.keys.iter().map(|&j| h.k.norms[j]).collect();
            let vn: Vec<f64> = row.keys.iter().map(|&j| h.v.norms[j]).collect();
            let peak = Some(row.peak);
            let key2 = mul_up(c2, spread(&ki, fq.e, &kn, None)?);
            let key2_peak = mul_up(c2, spread(&ki, fq.e, &row.key_distance, peak)?);
            let value2 = spread(&vi, fo.e, &vn, None)?;
            let value2_peak = spread(&vi, fo.e, &row.value_distance, peak)?;
            let key_reach = row
                .keys
                .iter()
                .zip(&row.key_distance)
                .map(|(&j, &z)| mul_up(h.c_up, image_norm(&ki, j, peak, fq.e, z)))
                .fold(0.0f64, f64::max);
            let value_reach = row
                .keys
                .iter()
                .zip(&row.value_distance)
                .map(|(&j, &z)| image_norm(&vi, j, peak, fo.e, z))
                .fold(0.0f64, f64::max);
            out.push(DirRow {
                key2,
                value2,
                key2_peak,
                value2_peak,
                key_reach,
                value_reach,
            });
        }
        Ok(Self {
            a_qk,
            a_ov,
            key_grad,
            value_out,
            query_key,
            rows: out,
        })
    }

    /// A bound on the change of row i's centred scores over the ball: s_ij(Z) - s_ij(X) =
    /// c (W_Q d_i) . (k_j - m) + q_i . W_K d_j + c (W_Q d_i) . (W_K d_j) with |d| <= r, so
    /// |change| <= r ||c W_Q^T (k_j - m)|| + r ||W_K^T q_i|| + a_QK r^2.
    pub(super) fn score_change(&self, i: usize, keys: &[usize], r: f64) -> f64 {
        let g = keys
            .iter()
            .map(|&j| self.key_grad[j])
            .fold(0.0f64, f64::max);
        sum_up([
            mul_up(r, g),
            mul_up(r, self.query_key[i]),
            mul_up(self.a_qk, mul_up(r, r)),
        ])
    }

    /// The head's contribution ||W_O^h D^2 o^h|| on the ball of token radius r, accumulated
    /// row by row ([`DirectionalSlope::row`], then [`DirectionalSlope::finish`]): nothing of a
    /// row outlives its visit but its share of six column sums.
    pub(super) fn slope(&self, n: usize, r: f64) -> DirectionalSlope<'_> {
        DirectionalSlope {
            g: grown(&self.key_grad, self.a_qk, r),
            hv: grown(&self.value_out, self.a_ov, r),
            qk: grown(&self.query_key, self.a_qk, r),
            centre: self,
            r,
            columns: std::array::from_fn(|_| vec![0.0; n]),
            maxima: [0.0; 10],
        }
    }
}

/// The directional form's sums and maxima over the rows visited so far.
pub(super) struct DirectionalSlope<'c> {
    centre: &'c DirectionalCentre,
    r: f64,
    /// Key gradients, value images and query-key norms grown to the ball.
    g: Vec<f64>,
    hv: Vec<f64>,
    qk: Vec<f64>,
    /// sum_i u_i W_ij per key j for the six (u, W) of the bound: with W the row weights omega,
    /// u = QK^2 P, (k1 QK)^2, (k2 QK)^2; with W the off-peak weights (the peak's own entry
    /// replaced by Theta), u = QK^2 Theta, (k1' QK)^2, (k2' QK)^2. Summed in row order.
    columns: [Vec<f64>; 6],
    /// Maxima over rows, in the order of the terms of `finish`.
    maxima: [f64; 10],
}

impl DirectionalSlope<'_> {
    /// Row i with its weights' factor `f` (p_ij(Z) / p_hat_ij <= f on the ball).
    pub(super) fn row(&mut self, i: usize, row: &RowCentre, f: f64) {
        let (a_qk, a_ov, r) = (self.centre.a_qk, self.centre.a_ov, self.r);
        let (g, hv, qk) = (&self.g, &self.hv, &self.qk);
        let sqrt2 = sqrt_up(2.0);
        let sq = |x: f64| mul_up(x, x);
        let w: Vec<f64> = row.p.iter().map(|&p| mul_up(p, f).min(1.0)).collect();
        let big_p = w.iter().copied().fold(0.0f64, f64::max);
        let off_mass = sum_up(
            row.keys
                .iter()
                .zip(&w)
                .filter(|(&j, _)| j != row.peak)
                .map(|(_, &x)| x),
        );
        let theta = off_mass.min(1.0);
        let d = &self.centre.rows[i];
        let ag = add_up(sqrt_up(mul_up(f, d.key2)), mul_up(a_qk, r));
        let av = add_up(sqrt_up(mul_up(f, d.value2)), mul_up(a_ov, r));
        let agp = add_up(sqrt_up(mul_up(f, d.key2_peak)), mul_up(2.0 * a_qk, r));
        let avp = add_up(sqrt_up(mul_up(f, d.value2_peak)), mul_up(2.0 * a_ov, r));
        let key_reach = add_up(d.key_reach, mul_up(2.0 * a_qk, r));
        let value_reach = add_up(d.value_reach, mul_up(2.0 * a_ov, r));
        // ||c W_Q^T (E_p k - m)|| and ||W_O (E_p v - m')||: Jensen on the weights.
        let mean_g = sqrt_up(sum_up(
            row.keys
                .iter()
                .zip(&w)
                .map(|(&j, &x)| mul_up(x, mul_up(g[j], g[j]))),
        ));
        let mean_h = sqrt_up(sum_up(
            row.keys
                .iter()
                .zip(&w)
                .map(|(&j, &x)| mul_up(x, mul_up(hv[j], hv[j]))),
        ));
        let max_g = row.keys.iter().map(|&j| g[j]).fold(0.0f64, f64::max);
        let max_h = row.keys.iter().map(|&j| hv[j]).fold(0.0f64, f64::max);
        let m_i = row
            .keys
            .iter()
            .zip(&w)
            .map(|(&j, &x)| mul_up(sqrt_up(x), add_up(hv[j], mean_h)))
            .fold(0.0f64, f64::max);
        let sp = sqrt_up(big_p);
        let st = sqrt_up(theta);
        let q = qk[i];
        let k1 = mul_up(add_up(max_g, mean_g), av).min(mul_up(ag, add_up(max_h, mean_h)));
        let k2 = mul_up(q, mul_up(2.0, av).min(add_up(m_i, mul_up(sp, av))));
        let k1p = mul_up(2.0, mul_up(key_reach, avp).min(mul_up(agp, value_reach)));
        let k2p = mul_up(
            mul_up(q, st),
            add_up(mul_up(2.0 * sqrt2, value_reach), mul_up(2.0, avp)),
        );
        let terms = [
            mul_up(ag, sqrt_up(big_p)),
            mul_up(av, sqrt_up(big_p)),
            mul_up(k1, add_up(ag, mul_up(q, sqrt_up(big_p)))),
            mul_up(k1, ag),
            mul_up(k2, ag),
            mul_up(agp, sqrt_up(theta)),
            mul_up(avp, sqrt_up(theta)),
            mul_up(k1p, add_up(agp, mul_up(sqrt2, mul_up(q, sqrt_up(theta))))),
            mul_up(k1p, agp),
            mul_up(k2p, agp),
        ];
        for (m, t) in self.maxima.iter_mut().zip(terms) {
            *m = m.max(t);
        }
        // sum_i u_i e_i(a)^2 is at most max_j sum_i u_i W_ij over the keys each query sees.
        let u = [
            mul_up(sq(q), big_p),
            sq(mul_up(k1, q)),
            sq(mul_up(k2, q)),
            mul_up(sq(q), theta),
            sq(mul_up(k1p, q)),
            sq(mul_up(k2p, q)),
        ];
        for (&j, &x) in row.keys.iter().zip(&w) {
            // The peak's off-peak weight is the row's off-peak mass.
            let o = if j == row.peak { theta } else { x };
            for (c, col) in self.columns.iter_mut().enumerate() {
                let weight = if c < 3 { x } else { o };
                col[j] = add_up(col[j], mul_up(u[c], weight));
            }
        }
    }

    /// The smaller of the two directional forms, once every row has been visited.
    pub(super) fn finish(self) -> f64 {
        let (a_qk, a_ov) = (self.centre.a_qk, self.centre.a_ov);
        let sqrt2 = sqrt_up(2.0);
        let col = |c: usize| self.columns[c].iter().copied().fold(0.0f64, f64::max);
        let m = &self.maxima;
        // The l2 norm over queries of coef_i sd_i(U), sd_i(U) <= AG_i a_i + QK_i e_i(a).
        let spread_sum = |max_term: f64, c: usize, e_scale: f64| {
            add_up(max_term, mul_up(e_scale, sqrt_up(col(c))))
        };
        // First form: spreads about the keys' and values' means.
        let t12 = mul_up(2.0 * a_ov, add_up(m[0], sqrt_up(col(0))));
        let t3 = mul_up(2.0 * a_qk, m[1]);
        let t4a = m[2].min(spread_sum(m[3], 1, 1.0));
        let t4b = spread_sum(m[4], 2, 1.0);
        let first = sum_up([t12, t3, t4a, t4b]);
        // Second form: spreads about each row's peak.
        let t12p = mul_up(
            mul_up(2.0 * sqrt2, a_ov),
            add_up(m[5], mul_up(sqrt2, sqrt_up(col(3)))),
        );
        let t3p = mul_up(mul_up(2.0 * sqrt2, a_qk), m[6]);
        let t4ap = m[7].min(spread_sum(m[8], 4, sqrt2));
        let t4bp = spread_sum(m[9], 5, sqrt2);
        let peak = sum_up([t12p, t3p, t4ap, t4bp]);
        first.min(peak)
    }
}
