//! The steps of a streamed attention pass that do not depend on how a tile's logits were
//! formed, shared by the plain (`derivatives::streaming`) and the rotary
//! (`attention::rotary::streaming`) linearisations: the online softmax of the forward pass, the
//! JVP's two products and row correction, and the first half of FlashAttention-2's backward.
//! Tiles are stored keys x queries, so each query's entries are one contiguous column.

use crate::attention::forward::gemm;
use crate::attention::softmax::softmax_backward_columns_centered;
use crate::scalar::Scalar;
use faer::{Mat, MatMut, MatRef, Par};

/// Column `j` of a column-major matrix as a slice.
pub(crate) fn col<T: Scalar>(m: MatRef<'_, T>, j: usize) -> &[T] {
    m.col(j)
        .try_as_col_major()
        .expect("owned matrices are column-major")
        .as_slice()
}

/// Column `j` of a column-major matrix as a mutable slice.
pub(crate) fn col_mut<T: Scalar>(m: MatMut<'_, T>, j: usize) -> &mut [T] {
    m.col_mut(j)
        .try_as_col_major_mut()
        .expect("owned matrices are column-major")
        .as_slice_mut()
}

fn exp1<T: Scalar>(x: T) -> T {
    let mut a = [x];
    T::exp_nonpositive(&mut a);
    a[0]
}

/// Folds one query's logits on a tile (`seen`, its visible keys there, not empty) into its
/// running maximum `m`, sum of exponentials `l` and value accumulator `acc`: when the maximum
/// grows, `l` and `acc` are rescaled by e^{m_old - m}; then `seen` becomes e^{logit - m} and its
/// sum is added to `l`. The caller adds V_tile^T `seen` to `acc` afterwards.
pub(crate) fn absorb_logits<T: Scalar>(seen: &mut [T], m: &mut T, l: &mut T, acc: &mut [T]) {
    let zero = T::of(0.0);
    let mut bm = T::neg_infinity();
    for &x in seen.iter() {
        bm = if x > bm { x } else { bm };
    }
    if bm > *m {
        if *l != zero {
            let scale = exp1(*m - bm);
            *l *= scale;
            for a in acc.iter_mut() {
                *a *= scale;
            }
        }
        *m = bm;
    }
    for x in seen.iter_mut() {
        *x -= *m;
    }
    T::exp_nonpositive(seen);
    let mut sum = zero;
    for &x in seen.iter() {
        sum += x;
    }
    *l += sum;
}

crate::simd::multiversion! {
/// The additive terms of one query's logits on a tile, in the dense softmax's order: x_j <-
/// (x_j - norms_j) + log_w_j (`norms`: the key norms of tied L2, none for the dot kernel).
pub(crate) fn add_logit_terms[T: Scalar](col: &mut [T], norms: Option<&[T]>, log_w: &[T]) {
    if let Some(norms) = norms {
        for (x, &nj) in col.iter_mut().zip(norms) {
            *x -= nj;
        }
    }
    for (x, &w) in col.iter_mut().zip(log_w) {
        *x += w;
    }
}
}

crate::simd::multiversion! {
/// One query's probabilities on a tile from its logits `seen`, its running maximum `m` and
/// 1/l: x <- e^{x - m} / l, subnormal results 0 (like the dense softmax: they would put every
/// product that reads the tile on the slow path).
pub(crate) fn normalized_exp[T: Scalar](seen: &mut [T], m: T, inv: T) {
    for x in seen.iter_mut() {
        *x -= m;
    }
    T::exp_nonpositive(seen);
    for x in seen.iter_mut() {
        *x = (*x * inv).flush_subnormal();
    }
}
}

/// Ends the forward pass of a block of queries: divides each column of the accumulated values
/// `acc_t` (dv x ql) by its sum l_i and returns 1/l_i.
pub(crate) fn finish_rows<T: Scalar>(acc_t: &mut Mat<T>, l: &[T]) -> Vec<T> {
    let inv: Vec<T> = l.iter().map(|&x| T::of(1.0) / x).collect();
    for (i, &r) in inv.iter().enumerate() {
        for a in col_mut(acc_t.as_mut(), i) {
            *a *= r;
        }
    }
    inv
}

crate::simd::multiversion! {
/// One query's logit tangents on a tile (`sd`) weighted by its probabilities `p`: sdot_ij <-
/// p_ij sdot_ij (subnormal products flushed, as the dense softmax does). Returns their sum, the
/// tile's part of the query's mean tangent. The sum runs in eight lanes (as `softmax::dot`), so
/// that it vectorises: a single running sum was a chain of dependent additions, 4% of a
/// streamed JVP + VJP at n = 2,048.
pub(crate) fn weight_column[T: Scalar](sd: &mut [T], p: &[T]) -> T {
    let zero = T::of(0.0);
    let len = sd.len().min(p.len());
    let n8 = len / 8 * 8;
    let (head, tail) = sd[..len].split_at_mut(n8);
    let mut acc = [zero; 8];
    for (x, w) in head.chunks_exact_mut(8).zip(p.chunks_exact(8)) {
        for l in 0..8 {
            x[l] = (w[l] * x[l]).flush_subnormal();
            acc[l] += x[l];
        }
    }
    let mut rest = zero;
    for (x, &w) in tail.iter_mut().zip(&p[n8..]) {
        *x = (w * *x).flush_subnormal();
        rest += *x;
    }
    ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7])) + rest
}
}

/// The JVP's products on one tile: out_t += V_tile^T (p o sdot) + dV_tile^T p, with `weighted`
/// the probabilities times the logit tangents and `p` the probabilities (both keys x queries).
pub(crate) fn add_jvp_tile<T: Scalar>(
    mut out_t: MatMut<'_, T>,
    v_tile: MatRef<'_, T>,
    dv_tile: MatRef<'_, T>,
    weighted: MatRef<'_, T>,
    p: MatRef<'_, T>,
) {
    let one = T::of(1.0);
    gemm(
        faer::reborrow::ReborrowMut::rb_mut(&mut out_t),
        true,
        v_tile.transpose(),
        weighted,
        one,
        Par::Seq,
    );
    gemm(out_t, true, dv_tile.transpose(), p, one, Par::Seq);
}

/// The JVP's row correction once every tile is in: column i of `out_t` loses mean_i o_i, where
/// mean_i = sum_j p_ij sdot_ij and `o` holds the head's outputs of queries q0.. (rows).
pub(crate) fn subtract_means<T: Scalar>(
    mut out_t: MatMut<'_, T>,
    means: &[T],
    o: MatRef<'_, T>,
    q0: usize,
) {
    for (i, &mean) in means.iter().enumerate() {
        for (c, x) in col_mut(out_t.as_mut(), i).iter_mut().enumerate() {
            *x -= mean * o[(q0 + i, c)];
        }
    }
}

/// The first half of FlashAttention-2's backward on one tile of probabilities `p` (keys x
/// queries): Vbar_tile += p Obar_blk, then `lbar` = V_tile Obar_blk^T turned into the logit
/// cotangents p o (lbar - D) with D_i = <o_i, obar_i> (`d_row`).
pub(crate) fn vjp_tile_logits<T: Scalar>(
    vbar_tile: MatMut<'_, T>,
    mut lbar: MatMut<'_, T>,
    p: MatRef<'_, T>,
    v_tile: MatRef<'_, T>,
    ob_blk: MatRef<'_, T>,
    d_row: &[T],
) {
    let one = T::of(1.0);
    gemm(vbar_tile, true, p, ob_blk, one, Par::Seq);
    gemm(
        faer::reborrow::ReborrowMut::rb_mut(&mut lbar),
        false,
        v_tile,
        ob_blk.transpose(),
        one,
        Par::Seq,
    );
    softmax_backward_columns_centered(p, lbar, d_row);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The tile kernels' compilations agree: AVX-512 and AVX2 bit for bit (same operations),
    /// the baseline to rounding (its exp splits each multiply-add), on lengths with every
    /// remainder modulo 8.
    #[test]
    fn tile_kernels_agree_across_compilations() {
        for len in [1usize, 7, 8, 13, 64, 129] {
            let p: Vec<f64> = (0..len).map(|j| ((j * 7) % 11) as f64 / 40.0).collect();
            let sd: Vec<f64> = (0..len).map(|j| ((j * 5) % 13) as f64 - 6.0).collect();
            let logits: Vec<f64> = (0..len).map(|j| ((j * 3) % 17) as f64 * -0.7).collect();
            let norms: Vec<f64> = (0..len).map(|j| (j % 5) as f64 * 0.1).collect();
            let log_w = vec![-(len as f64).ln(); len];
            type Kernels = (
                &'static str,
                fn(&mut [f64], &[f64]) -> f64,
                fn(&mut [f64], Option<&[f64]>, &[f64]),
                fn(&mut [f64], f64, f64),
            );
            let mut paths: Vec<Kernels> = vec![(
                "portable",
                weight_column::portable,
                add_logit_terms::portable,
                normalized_exp::portable,
            )];
            #[cfg(target_arch = "x86_64")]
            if crate::simd::cpu_has_avx2_fma() {
                // SAFETY: the CPU has AVX2 and FMA.
                paths.push((
                    "avx2",
                    |a, b| unsafe { weight_column::avx2(a, b) },
                    |a, b, c| unsafe { add_logit_terms::avx2(a, b, c) },
                    |a, b, c| unsafe { normalized_exp::avx2(a, b, c) },
                ));
            }
            #[cfg(target_arch = "x86_64")]
            if crate::simd::cpu_has_avx512() {
                // SAFETY: the CPU has AVX-512 F/DQ/BW/VL, AVX2 and FMA.
                paths.push((
                    "avx512",
                    |a, b| unsafe { weight_column::avx512(a, b) },
                    |a, b, c| unsafe { add_logit_terms::avx512(a, b, c) },
                    |a, b, c| unsafe { normalized_exp::avx512(a, b, c) },
                ));
            }
            let run = |&(_, weight, terms, exp): &Kernels| {
                let mut w = sd.clone();
                let total = weight(&mut w, &p);
                let mut l = logits.clone();
                terms(&mut l, Some(&norms), &log_w);
                exp(&mut l, 0.5, 0.25);
                (w, total, l)
            };
            let (w0, t0, l0) = run(&paths[0]);
            let exact: f64 = p.iter().zip(&sd).map(|(a, b)| a * b).sum();
            assert!((t0 - exact).abs() <= 1e-14 * exact.abs().max(1.0));
            for (j, &x) in l0.iter().enumerate() {
                let want = ((logits[j] - norms[j]) + log_w[j] - 0.5).exp() * 0.25;
                assert!(
                    (x - want).abs() <= 4.0 * f64::EPSILON * want,
                    "{j}: {x} {want}"
                );
            }
            let mut previous: Option<(Vec<f64>, f64, Vec<f64>)> = None;
            for path in &paths[1..] {
                let (w, t, l) = run(path);
                assert_eq!(w, w0, "{}: weighted tangents", path.0);
                assert_eq!(t, t0, "{}: their sum", path.0);
                for (a, b) in l.iter().zip(&l0) {
                    assert!(
                        (a - b).abs() <= 4.0 * f64::EPSILON * b,
                        "{}: {a} {b}",
                        path.0
                    );
                }
                if let Some((pw, pt, pl)) = &previous {
                    assert_eq!((pw, pt, pl), (&w, &t, &l), "{}: vs AVX2", path.0);
                }
                previous = Some((w, t, l));
            }
        }
    }
}
