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

/// One query's logit tangents on a tile (`sd`) weighted by its probabilities `p`: sdot_ij <-
/// p_ij sdot_ij (subnormal products flushed, as the dense softmax does). Returns their sum, the
/// tile's part of the query's mean tangent.
pub(crate) fn weight_column<T: Scalar>(sd: &mut [T], p: &[T]) -> T {
    let mut acc = T::of(0.0);
    for (x, &pj) in sd.iter_mut().zip(p) {
        *x = (pj * *x).flush_subnormal();
        acc += *x;
    }
    acc
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
