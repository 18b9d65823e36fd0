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
        let seen = &mut col[..visible];
        let Some(max) = add_and_max(seen, log_w) else {
            let j = seen.iter().position(|l| !l.is_finite()).unwrap_or(0);
            return Err(Error::Numerical(format!(
                "attention score of query {i} and key {j} is {}: the scores overflowed (inputs or weights too large for {})",
                seen[j],
                T::NAME
            )));
        };
        for l in seen.iter_mut() {
            *l -= max;
        }
        T::exp_nonpositive(seen);
        let inv = T::of(1.0) / sum(seen);
        for l in seen.iter_mut() {
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
        if i + 1 < g.ncols() {
            prefetch(
                p_t.col(i + 1)
                    .try_as_col_major()
                    .expect("column-major")
                    .as_slice(),
            );
        }
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

/// Asks for `data` in the L1 cache ahead of use. The softmax backward reads each column of P once,
/// straight from memory, and the hardware prefetcher does not run far enough ahead of it.
#[inline]
fn prefetch<T>(data: &[T]) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        let bytes = std::mem::size_of_val(data);
        let base = data.as_ptr() as *const i8;
        for off in (0..bytes).step_by(64) {
            // SAFETY: prefetching is a hint with no memory access semantics; the address lies
            // within `data`.
            unsafe { _mm_prefetch::<_MM_HINT_T0>(base.add(off)) };
        }
    }
}

/// l += log_w lane by lane, returning the maximum, or None if an entry is not finite. Eight
/// running maxima so that it vectorises (a single one is a chain of dependent comparisons); the
/// finiteness check rides along as a sum of x * 0, which is NaN exactly when some x is inf or NaN.
#[inline]
fn add_and_max<T: Scalar>(l: &mut [T], log_w: &[T]) -> Option<T> {
    let zero = T::of(0.0);
    let mut acc = [T::neg_infinity(); 8];
    let mut probe = [zero; 8];
    let n8 = l.len() / 8 * 8;
    let (head, tail) = l.split_at_mut(n8);
    for (x, w) in head.chunks_exact_mut(8).zip(log_w.chunks_exact(8)) {
        for k in 0..8 {
            x[k] += w[k];
            probe[k] += x[k] * zero;
            acc[k] = if x[k] > acc[k] { x[k] } else { acc[k] };
        }
    }
    let mut max = T::neg_infinity();
    let mut bad = zero;
    for (x, &w) in tail.iter_mut().zip(&log_w[n8..]) {
        *x += w;
        bad += *x * zero;
        max = if *x > max { *x } else { max };
    }
    for (a, p) in acc.into_iter().zip(probe) {
        max = if a > max { a } else { max };
        bad += p;
    }
    (bad == zero).then_some(max)
}

/// Sum with eight independent accumulators (vectorised, like `dot`).
#[inline]
fn sum<T: Scalar>(a: &[T]) -> T {
    let zero = T::of(0.0);
    let mut acc = [zero; 8];
    let chunks = a.chunks_exact(8);
    let mut tail = zero;
    for &x in chunks.remainder() {
        tail += x;
    }
    for x in chunks {
        for l in 0..8 {
            acc[l] += x[l];
        }
    }
    ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7])) + tail
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
