//! Numerically stable softmax over the keys of each query, with log-weights and causal masks.

use crate::error::{Error, Result};
use crate::scalar::Scalar;
use faer::reborrow::ReborrowMut;
use faer::MatMut;

/// In place: column i of `logits_t` (keys x queries) becomes the distribution
/// P_i. = softmax_j(logits_ji + log_w_j), restricted to keys j <= i when `causal`.
/// The row maximum is subtracted first, so logits of any finite size give finite results;
/// a non-finite logit (overflow in the score) is reported rather than turned into NaN.
pub fn softmax_columns<T: Scalar>(
    mut logits_t: MatMut<'_, T>,
    log_w: &[T],
    causal: bool,
) -> Result<()> {
    let nk = logits_t.nrows();
    for i in 0..logits_t.ncols() {
        let col = logits_t
            .rb_mut()
            .col_mut(i)
            .try_as_col_major_mut()
            .expect("owned matrices are column-major")
            .as_slice_mut();
        let visible = if causal { (i + 1).min(nk) } else { nk };
        let mut max = T::neg_infinity();
        for (j, (l, &lw)) in col[..visible].iter_mut().zip(log_w).enumerate() {
            if !l.is_finite() {
                return Err(Error::Numerical(format!(
                    "attention score of query {i} and key {j} is {l}: the scores overflowed (inputs or weights too large for {})",
                    T::NAME
                )));
            }
            *l += lw;
            if *l > max {
                max = *l;
            }
        }
        let mut sum = T::of(0.0);
        let under = T::of(T::EXP_UNDERFLOW);
        for l in col[..visible].iter_mut() {
            let z = *l - max;
            *l = if z < under { T::of(0.0) } else { z.exp() };
            sum += *l;
        }
        let inv = T::of(1.0) / sum;
        for l in col[..visible].iter_mut() {
            *l *= inv;
        }
        for l in col[visible..].iter_mut() {
            *l = T::of(0.0);
        }
    }
    Ok(())
}

/// In place: column i of `g` becomes P_i o (g_i - <P_i, g_i>), the softmax's Jacobian (a symmetric
/// operator) applied to g_i. Used by both the JVP and the VJP.
pub fn softmax_backward_columns<T: Scalar>(p_t: faer::MatRef<'_, T>, mut g: MatMut<'_, T>) {
    for i in 0..g.ncols() {
        let p = p_t
            .col(i)
            .try_as_col_major()
            .expect("column-major")
            .as_slice();
        let gc = g
            .rb_mut()
            .col_mut(i)
            .try_as_col_major_mut()
            .expect("column-major")
            .as_slice_mut();
        let mean = dot(p, gc);
        for (gj, &pj) in gc.iter_mut().zip(p) {
            *gj = pj * (*gj - mean);
        }
    }
}

/// Dot product with eight independent accumulators, so that it vectorises without reassociation
/// licence from the compiler.
#[inline]
pub fn dot<T: Scalar>(a: &[T], b: &[T]) -> T {
    let zero = T::of(0.0);
    let mut acc = [zero; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for l in 0..8 {
            acc[l] += x[l] * y[l];
        }
    }
    let mut tail = zero;
    for (&x, &y) in ra.iter().zip(rb) {
        tail += x * y;
    }
    ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7])) + tail
}
