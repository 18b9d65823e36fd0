//! Numerically stable softmax over the keys of each query, with log-weights and causal masks.

use crate::error::{Error, Result};
use crate::scalar::Scalar;
use faer::reborrow::ReborrowMut;
use faer::MatMut;

crate::simd::multiversion! {
/// In place: column i of `logits_t` (keys x queries) becomes the distribution
/// P_i. = softmax_j(logits_ji + log_w_j), restricted to keys j <= i when `causal`.
/// The row maximum is subtracted first, so logits of any finite size give finite results;
/// a non-finite logit (overflow in the score) is reported rather than turned into NaN.
pub fn softmax_columns[T: Scalar](
    logits_t: MatMut<'_, T>,
    log_w: &[T],
    causal: bool,
) -> Result<()> {
    let mut logits_t = logits_t;
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
            return Err(overflow_error(i, seen));
        };
        for l in seen.iter_mut() {
            *l -= max;
        }
        T::exp_nonpositive(seen);
        let inv = T::of(1.0) / sum(seen);
        // A probability below the smallest normal number (e^-87 of the largest in f32) is set to
        // 0, like the exp below EXP_UNDERFLOW: every product that reads P would otherwise take
        // the subnormal slow path.
        for l in seen.iter_mut() {
            *l = (*l * inv).flush_subnormal();
        }
        for l in col[visible..].iter_mut() {
            *l = T::of(0.0);
        }
    }
    Ok(())
}
}

#[cold]
#[inline(never)]
fn overflow_error<T: Scalar>(i: usize, seen: &[T]) -> Error {
    let j = seen.iter().position(|l| !l.is_finite()).unwrap_or(0);
    Error::Numerical(format!(
        "attention score of query {i} and key {j} is {}: the scores overflowed (inputs or weights too large for {})",
        seen[j],
        T::NAME
    ))
}

/// In place: column i of `g` becomes P_i o (g_i - <P_i, g_i>), the softmax's Jacobian (a symmetric
/// operator) applied to g_i. Used by the JVP.
pub fn softmax_backward_columns<T: Scalar>(p_t: faer::MatRef<'_, T>, g: MatMut<'_, T>) {
    backward_columns(p_t, g, None);
}

/// `softmax_backward_columns` with the means <P_i, g_i> known beforehand (`means[i]`), one pass
/// over the block instead of two. The VJP knows them: for g_i = V ob_i they are <o_i, ob_i>.
pub fn softmax_backward_columns_centered<T: Scalar>(
    p_t: faer::MatRef<'_, T>,
    g: MatMut<'_, T>,
    means: &[T],
) {
    assert_eq!(means.len(), g.ncols(), "one mean per column");
    backward_columns(p_t, g, Some(means));
}

crate::simd::multiversion! {
/// The means <P_i, g_i> are `means[i]` when given, else computed per column. No software
/// prefetch of the next column of P: an earlier version asked for it ahead of use, and without it
/// one f64 JVP + VJP is 4-7.5% faster at n = 1,024-2,048 (MiniLM sizes, interleaved, 2026-12-08)
/// and no slower elsewhere.
fn backward_columns[T: Scalar](
    p_t: faer::MatRef<'_, T>,
    g: MatMut<'_, T>,
    means: Option<&[T]>,
) {
    let mut g = g;
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
        let mean = match means {
            Some(m) => m[i],
            None => dot_inline(p, gc),
        };
        // Subnormal results (tiny probabilities times small differences, common in f32) become 0:
        // they changed nothing measurable, but made the two products that read this block up to
        // 15% slower on MiniLM's layer 0 (the VJP in f32 at n = 512).
        for (gj, &pj) in gc.iter_mut().zip(p) {
            *gj = (pj * (*gj - mean)).flush_subnormal();
        }
    }
}
}

/// l += log_w lane by lane, returning the maximum, or None if an entry is not finite. Eight
/// running maxima so that it vectorises (a single one is a chain of dependent comparisons); the
/// finiteness check rides along as a sum of x * 0, which is NaN exactly when some x is inf or NaN.
#[inline(always)]
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
#[inline(always)]
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

crate::simd::multiversion! {
/// Dot product with eight independent accumulators, so that it vectorises without reassociation
/// licence from the compiler.
pub fn dot[T: Scalar](a: &[T], b: &[T]) -> T {
    dot_inline(a, b)
}
}

#[inline(always)]
fn dot_inline<T: Scalar>(a: &[T], b: &[T]) -> T {
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

#[cfg(test)]
mod tests {
    use super::*;
    use faer::Mat;

    fn subnormal_count(m: &Mat<f32>) -> usize {
        (0..m.ncols())
            .flat_map(|j| (0..m.nrows()).map(move |i| (i, j)))
            .filter(|&(i, j)| m[(i, j)].is_subnormal())
            .count()
    }

    /// Logits spread over 100 units put probabilities and their derivatives well below f32's
    /// smallest normal number; both passes must return exact zeros there, and the same values
    /// as the unflushed formulas elsewhere.
    #[test]
    fn no_subnormal_probabilities_or_softmax_derivatives() {
        let (nk, nq) = (64, 3);
        let logits = Mat::<f32>::from_fn(nk, nq, |j, i| -(j as f32) * 1.6 + i as f32);
        let mut p = logits.clone();
        softmax_columns(p.as_mut(), &vec![0.0; nk], false).unwrap();
        let g = Mat::<f32>::from_fn(nk, nq, |j, i| 1e-3 * ((j * 7 + i) % 5) as f32);
        let mut out = g.clone();
        softmax_backward_columns(p.as_ref(), out.as_mut());
        assert_eq!(subnormal_count(&p), 0);
        assert_eq!(subnormal_count(&out), 0);
        let mut flushed = 0;
        for i in 0..nq {
            let z: f64 = (0..nk).map(|j| (logits[(j, i)] as f64).exp()).sum();
            let mean: f64 = (0..nk).map(|j| p[(j, i)] as f64 * g[(j, i)] as f64).sum();
            for j in 0..nk {
                let exact = (logits[(j, i)] as f64).exp() / z;
                if exact < f32::MIN_POSITIVE as f64 {
                    assert_eq!(p[(j, i)], 0.0);
                    flushed += 1;
                } else {
                    assert!((p[(j, i)] as f64 - exact).abs() <= 1e-6 * exact);
                }
                let d = p[(j, i)] as f64 * (g[(j, i)] as f64 - mean);
                if d.abs() >= f32::MIN_POSITIVE as f64 {
                    assert!((out[(j, i)] as f64 - d).abs() <= 1e-5 * d.abs());
                } else {
                    assert_eq!(out[(j, i)], 0.0);
                }
            }
        }
        assert!(flushed > 0, "the test must reach the subnormal range");
    }

    /// The baseline compilation (what CPUs without AVX2 run) and the AVX2+FMA one compute the
    /// same softmax and backward pass: bit for bit in the elementwise steps, to rounding where
    /// the sums may be vectorised differently. Causal masks, log-weights and a column shorter
    /// than a vector included.
    #[test]
    fn baseline_and_avx2_paths_agree() {
        fn check<T: Scalar>(tol: f64) {
            let (nk, nq) = (45, 6);
            let logits = Mat::<T>::from_fn(nk, nq, |j, i| {
                T::of(((j * 5 + i * 3) % 17) as f64 * 0.9 - 6.0)
            });
            let log_w: Vec<T> = (0..nk)
                .map(|j| T::of(-(nk as f64).ln() + 0.01 * j as f64))
                .collect();
            let g = Mat::<T>::from_fn(nk, nq, |j, i| T::of(((j * 3 + i) % 7) as f64 - 3.0));
            for causal in [false, true] {
                let mut p0 = logits.clone();
                softmax_columns::portable(p0.as_mut(), &log_w, causal).unwrap();
                let mut b0 = g.clone();
                backward_columns::portable(p0.as_ref(), b0.as_mut(), None);
                for i in 0..nq {
                    let col: f64 = (0..nk).map(|j| p0[(j, i)].f64()).sum();
                    assert!((col - 1.0).abs() < tol, "columns are distributions");
                }
                #[cfg(target_arch = "x86_64")]
                if crate::simd::cpu_has_avx2_fma() {
                    let mut p1 = logits.clone();
                    // SAFETY: the CPU has AVX2 and FMA.
                    unsafe { softmax_columns::avx2(p1.as_mut(), &log_w, causal) }.unwrap();
                    let mut b1 = g.clone();
                    unsafe { backward_columns::avx2(p1.as_ref(), b1.as_mut(), None) };
                    for i in 0..nq {
                        for j in 0..nk {
                            let (a, b) = (p0[(j, i)].f64(), p1[(j, i)].f64());
                            assert!(
                                (a - b).abs() <= tol * b.abs().max(1e-3),
                                "P {j},{i}: {a} {b}"
                            );
                            let (a, b) = (b0[(j, i)].f64(), b1[(j, i)].f64());
                            assert!((a - b).abs() <= tol, "backward {j},{i}: {a} {b}");
                        }
                    }
                    // AVX-512: the AVX2 body's operations in wider registers, the same bits.
                    if crate::simd::cpu_has_avx512() {
                        let mut p2 = logits.clone();
                        // SAFETY: the CPU has AVX-512 F/DQ/BW/VL, AVX2 and FMA.
                        unsafe { softmax_columns::avx512(p2.as_mut(), &log_w, causal) }.unwrap();
                        let mut b2 = g.clone();
                        unsafe { backward_columns::avx512(p2.as_ref(), b2.as_mut(), None) };
                        assert!(p1 == p2, "softmax, AVX-512 vs AVX2");
                        assert!(b1 == b2, "backward, AVX-512 vs AVX2");
                    }
                }
            }
        }
        check::<f64>(1e-14);
        check::<f32>(1e-6);
    }

    /// Given the means <P_i, g_i>, the one-pass form is the two-pass form: same arithmetic after
    /// the mean, so the same bits.
    #[test]
    fn centered_form_matches_with_the_means_given() {
        let (nk, nq) = (37, 5);
        let mut p = Mat::<f64>::from_fn(nk, nq, |j, i| ((j * 5 + i * 3) % 11) as f64 * 0.4);
        softmax_columns(p.as_mut(), &vec![0.0; nk], false).unwrap();
        let g = Mat::<f64>::from_fn(nk, nq, |j, i| ((j * 3 + i) % 7) as f64 - 3.0);
        let mut two = g.clone();
        softmax_backward_columns(p.as_ref(), two.as_mut());
        let means: Vec<f64> = (0..nq)
            .map(|i| {
                dot(
                    p.col(i).try_as_col_major().unwrap().as_slice(),
                    g.col(i).try_as_col_major().unwrap().as_slice(),
                )
            })
            .collect();
        let mut one = g.clone();
        softmax_backward_columns_centered(p.as_ref(), one.as_mut(), &means);
        assert_eq!(one, two);
    }
}
