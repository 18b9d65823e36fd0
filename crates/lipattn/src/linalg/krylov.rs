//! Frobenius-space vector operations on n x d tangents, accumulated in f64 so that f32 runs keep
//! their Krylov bases orthogonal to working precision.

use crate::scalar::Scalar;
use faer::reborrow::ReborrowMut;
use faer::Mat;
use rayon::prelude::*;

/// Column blocks of a tangent handled as one parallel task: fixed (not left to work stealing) so
/// that sums are added in the same order on every run.
const BLOCKS: usize = 8;

/// Below this many entries a vector operation is cheaper than waking the thread pool.
const PARALLEL_MIN: usize = 1 << 15;

fn block_ranges(ncols: usize) -> Vec<std::ops::Range<usize>> {
    let per = ncols.div_ceil(BLOCKS).max(1);
    (0..ncols)
        .step_by(per)
        .map(|s| s..(s + per).min(ncols))
        .collect()
}

crate::simd::multiversion! {
/// Eight independent partial sums: a single running sum is bound by the latency of one add per
/// element.
fn dot_slices[T: Scalar](x: &[T], y: &[T]) -> f64 {
    let mut acc = [0.0f64; 8];
    let mut tail = 0.0;
    let (cx, cy) = (x.chunks_exact(8), y.chunks_exact(8));
    for (u, v) in cx.remainder().iter().zip(cy.remainder()) {
        tail += u.f64() * v.f64();
    }
    for (u, v) in cx.zip(cy) {
        for l in 0..8 {
            acc[l] += u[l].f64() * v[l].f64();
        }
    }
    ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7])) + tail
}
}

crate::simd::multiversion! {
/// x += c y
fn axpy_slice[T: Scalar](x: &mut [T], c: T, y: &[T]) {
    for (a, &b) in x.iter_mut().zip(y) {
        *a += c * b;
    }
}
}

crate::simd::multiversion! {
fn scale_slice[T: Scalar](x: &mut [T], c: T) {
    for a in x.iter_mut() {
        *a *= c;
    }
}
}

fn dot_cols<T: Scalar>(a: &Mat<T>, b: &Mat<T>, cols: std::ops::Range<usize>) -> f64 {
    cols.map(|j| dot_slices(a.col_as_slice(j), b.col_as_slice(j)))
        .sum()
}

pub(crate) fn dot<T: Scalar>(a: &Mat<T>, b: &Mat<T>) -> f64 {
    if a.nrows() * a.ncols() < PARALLEL_MIN {
        return dot_cols(a, b, 0..a.ncols());
    }
    let parts: Vec<f64> = block_ranges(a.ncols())
        .into_par_iter()
        .map(|r| dot_cols(a, b, r))
        .collect();
    parts.iter().sum()
}

pub(crate) fn norm<T: Scalar>(a: &Mat<T>) -> f64 {
    dot(a, a).sqrt()
}

/// a += c b
pub(crate) fn axpy<T: Scalar>(a: &mut Mat<T>, c: f64, b: &Mat<T>) {
    add_combination(a, &[T::of(c)], std::slice::from_ref(b));
}

/// a += sum_i c_i b_i, in parallel over the same column blocks as `dot`.
fn add_combination<T: Scalar>(a: &mut Mat<T>, coeffs: &[T], terms: &[Mat<T>]) {
    let per = if a.nrows() * a.ncols() < PARALLEL_MIN {
        a.ncols().max(1)
    } else {
        a.ncols().div_ceil(BLOCKS).max(1)
    };
    a.as_mut()
        .par_col_chunks_mut(per)
        .enumerate()
        .for_each(|(blk, mut part)| {
            for j in 0..part.ncols() {
                let dst = part
                    .rb_mut()
                    .col_mut(j)
                    .try_as_col_major_mut()
                    .expect("column-major")
                    .as_slice_mut();
                for (&c, b) in coeffs.iter().zip(terms) {
                    axpy_slice(dst, c, b.col_as_slice(blk * per + j));
                }
            }
        });
}

/// w <- (I - Q Q^T) w applied twice (classical Gram-Schmidt with one reorthogonalisation,
/// CGS2), for the orthonormal columns Q = `basis`. Each pass is one sweep over the basis for all
/// inner products (a column of w stays in cache while every basis vector's column meets it) and
/// one for the update, instead of an inner product and an update per basis vector: the Krylov
/// bases of Lanczos are memory-bound, and this reads each basis vector twice per pass, not three
/// times per basis vector.
pub(crate) fn orthogonalize<T: Scalar>(w: &mut Mat<T>, basis: &[Mat<T>]) {
    if basis.is_empty() {
        return;
    }
    let ranges = if w.nrows() * w.ncols() < PARALLEL_MIN {
        std::iter::once(0..w.ncols()).collect()
    } else {
        block_ranges(w.ncols())
    };
    for _ in 0..2 {
        let partial: Vec<Vec<f64>> = ranges
            .par_iter()
            .map(|r| {
                let mut acc = vec![0.0; basis.len()];
                for j in r.clone() {
                    let wj = w.col_as_slice(j);
                    for (a, q) in acc.iter_mut().zip(basis) {
                        *a += dot_slices(q.col_as_slice(j), wj);
                    }
                }
                acc
            })
            .collect();
        // Block sums added in block order: the same result on every run.
        let c: Vec<T> = (0..basis.len())
            .map(|i| T::of(-partial.iter().map(|p| p[i]).sum::<f64>()))
            .collect();
        add_combination(w, &c, basis);
    }
}

pub(crate) fn scale<T: Scalar>(a: &mut Mat<T>, c: f64) {
    let c = T::of(c);
    for j in 0..a.ncols() {
        scale_slice(a.col_as_slice_mut(j), c);
    }
}

/// Projects every row onto the closed ball of radius r.
pub(crate) fn project_rows(x: &mut Mat<f64>, r: f64) {
    for i in 0..x.nrows() {
        let nrm = (0..x.ncols())
            .map(|k| x[(i, k)].powi(2))
            .sum::<f64>()
            .sqrt();
        if nrm > r {
            let c = r / nrm;
            for k in 0..x.ncols() {
                x[(i, k)] *= c;
            }
        }
    }
}

pub(crate) use crate::linalg::max_row_norm;

/// A search's best candidate so far, with the phase that found it.
pub(crate) type Best<P> = Option<(P, &'static str)>;

/// Keeps `cand` if its ratio beats the best so far; says whether it did.
pub(crate) fn consider<P>(
    cand: Option<P>,
    phase: &'static str,
    best: &mut Best<P>,
    ratio: impl Fn(&P) -> f64,
) -> bool {
    match cand {
        Some(p) if best.as_ref().is_none_or(|b| ratio(&p) > ratio(&b.0)) => {
            *best = Some((p, phase));
            true
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The baseline and AVX2 compilations of the vector kernels give the same bits: the same
    /// operations in the same order (Rust never fuses a multiply and an add on its own).
    #[test]
    fn baseline_and_avx2_kernels_agree() {
        let x: Vec<f32> = (0..203)
            .map(|i| ((i * 7) % 13) as f32 * 0.37 - 2.0)
            .collect();
        let y: Vec<f32> = (0..203)
            .map(|i| ((i * 5) % 11) as f32 * 0.21 - 1.0)
            .collect();
        let d0 = dot_slices::portable(&x, &y);
        let exact: f64 = x.iter().zip(&y).map(|(&a, &b)| a as f64 * b as f64).sum();
        assert!((d0 - exact).abs() <= 1e-12 * exact.abs().max(1.0));
        let (mut a0, mut s0) = (x.clone(), x.clone());
        axpy_slice::portable(&mut a0, 0.3, &y);
        scale_slice::portable(&mut s0, -1.7);
        #[cfg(target_arch = "x86_64")]
        if crate::simd::cpu_has_avx2_fma() {
            let (mut a1, mut s1) = (x.clone(), x.clone());
            // SAFETY: the CPU has AVX2 and FMA.
            let d1 = unsafe { dot_slices::avx2(&x, &y) };
            unsafe { axpy_slice::avx2(&mut a1, 0.3, &y) };
            unsafe { scale_slice::avx2(&mut s1, -1.7) };
            assert_eq!(d0, d1);
            assert_eq!(a0, a1);
            assert_eq!(s0, s1);
        }
        #[cfg(target_arch = "x86_64")]
        if crate::simd::cpu_has_avx512() {
            let (mut a2, mut s2) = (x.clone(), x.clone());
            // SAFETY: the CPU has AVX-512 F/DQ/BW/VL, AVX2 and FMA.
            let d2 = unsafe { dot_slices::avx512(&x, &y) };
            unsafe { axpy_slice::avx512(&mut a2, 0.3, &y) };
            unsafe { scale_slice::avx512(&mut s2, -1.7) };
            assert_eq!(d0, d2);
            assert_eq!(a0, a2);
            assert_eq!(s0, s2);
        }
    }
}
