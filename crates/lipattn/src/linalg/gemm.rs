//! Matrix products: when to parallelise, and how the products the derivatives run many times
//! are split over the rayon pool.

use crate::scalar::Scalar;
use faer::linalg::matmul::matmul;
use faer::reborrow::ReborrowMut;
use faer::{Accum, MatMut, MatRef, Par};
use rayon::prelude::*;

/// Above this many multiply-adds a product is worth splitting over the thread pool.
const PAR_THRESHOLD: usize = 1 << 18;

/// Fewer rows than this (a measure of a few atoms through a wide layer) and the split costs more
/// than the product: the pair searches evaluate thousands of such measures, and each parallel
/// product of 3 x 384 x 384 took milliseconds in thread hand-offs.
const PAR_MIN_ROWS: usize = 32;

/// Rows a thread from which `gemm_blocks_rayon` splits rows rather than columns. On MiniLM sizes
/// with 2 threads, the row split was up to 35% faster at 512 rows (256 a thread), the column
/// split 4-10% faster at 128 rows (64 a thread).
const SPLIT_ROWS_FROM: usize = 128;

pub(crate) fn par_for(m: usize, n: usize, k: usize) -> Par {
    if m * n * k >= PAR_THRESHOLD && m >= PAR_MIN_ROWS && rayon::current_num_threads() > 1 {
        Par::rayon(0)
    } else {
        Par::Seq
    }
}

/// dst = a b (+ dst if `add`), scaled by alpha.
pub(crate) fn gemm<T: Scalar>(
    dst: MatMut<'_, T>,
    add: bool,
    a: MatRef<'_, T>,
    b: MatRef<'_, T>,
    alpha: T,
    par: Par,
) {
    let acc = if add { Accum::Add } else { Accum::Replace };
    matmul(dst, acc, a, b, alpha, par);
    // faer's assembly kernels return with the upper vector state dirty (crate::simd).
    crate::simd::clear_upper_state();
}

/// dst = a b, split into blocks run on the rayon pool, each block one sequential product.
/// The derivatives use this instead of the GEMM's own parallel mode: that one runs on a second
/// thread pool, and handing the cores back and forth between the two pools was about 10% of the
/// samples of a JVP at n = 128 (scheduler and barrier time).
pub(crate) fn gemm_blocks_rayon<T: Scalar>(
    mut dst: MatMut<'_, T>,
    a: MatRef<'_, T>,
    b: MatRef<'_, T>,
) {
    let (m, n) = (dst.nrows(), dst.ncols());
    let threads = rayon::current_num_threads();
    if m * n * a.ncols() < PAR_THRESHOLD || threads == 1 {
        gemm(dst, false, a, b, T::of(1.0), Par::Seq);
        return;
    }
    // Short products split their columns, one block a thread: row blocks of 64 leave each block
    // a 16-row tail below the GEMM's 48-row f64 kernel, and the whole product ran 4-10% slower
    // than the column split (MiniLM's output projection and input cotangents at n = 128, f32
    // and f64, 2 threads). Taller ones split rows, in blocks of at least 64 rows (the GEMM's
    // widest kernel stays busy), two a thread (the faster thread takes over part of the slower
    // one's share).
    let by_cols = m < SPLIT_ROWS_FROM * threads;
    let (len, blocks) = if by_cols {
        (n, threads.min(n.div_ceil(64)))
    } else {
        (m, (2 * threads).min(m.div_ceil(64)))
    };
    let size = len.div_ceil(blocks.max(1));
    let block = |i: usize, d: MatMut<'_, T>| {
        let (s, w) = (i * size, size.min(len - i * size));
        let (a, b) = if by_cols {
            (a, b.subcols(s, w))
        } else {
            (a.subrows(s, w), b)
        };
        gemm(d, false, a, b, T::of(1.0), Par::Seq);
    };
    if by_cols {
        let chunks = dst.rb_mut().par_col_chunks_mut(size);
        chunks.enumerate().for_each(|(i, d)| block(i, d));
    } else {
        let chunks = dst.rb_mut().par_row_chunks_mut(size);
        chunks.enumerate().for_each(|(i, d)| block(i, d));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use faer::Mat;

    /// Every split `gemm_blocks_rayon` can choose (none, columns, rows) computes the same product
    /// as one sequential GEMM, on a 2-thread pool as on the CI machine.
    #[test]
    fn split_products_match_the_sequential_one() {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .build()
            .unwrap();
        // (m, k, n): below the threshold, short (column split, with a ragged last block) and
        // tall (row split, ragged too).
        for (m, k, n) in [(8, 16, 8), (100, 130, 257), (130, 200, 20), (301, 70, 33)] {
            let a = Mat::<f64>::from_fn(m, k, |i, j| ((i * 7 + j * 3) % 11) as f64 - 5.0);
            let b = Mat::<f64>::from_fn(k, n, |i, j| ((i * 5 + j * 2) % 13) as f64 / 3.0);
            let mut want = Mat::<f64>::zeros(m, n);
            gemm(want.as_mut(), false, a.as_ref(), b.as_ref(), 1.0, Par::Seq);
            let mut got = Mat::<f64>::from_fn(m, n, |_, _| f64::NAN);
            pool.install(|| gemm_blocks_rayon(got.as_mut(), a.as_ref(), b.as_ref()));
            assert!(
                (&got - &want).norm_l2() <= 1e-13 * want.norm_l2(),
                "{m}x{k}x{n}"
            );
        }
    }
}
