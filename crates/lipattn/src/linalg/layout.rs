//! Token matrices as flat row-major vectors (the layout of the fixed-point solvers' iterates)
//! and back, and transposing copies between row-major and column-major layouts.

use crate::scalar::Scalar;
use faer::{Mat, MatMut, MatRef};
use rayon::prelude::*;

/// The rows of `x`, one after the other.
pub fn flatten(x: MatRef<'_, f64>) -> Vec<f64> {
    let (n, d) = (x.nrows(), x.ncols());
    let mut v = Vec::with_capacity(n * d);
    for i in 0..n {
        for k in 0..d {
            v.push(x[(i, k)]);
        }
    }
    v
}

/// The n x d matrix whose rows are consecutive slices of `v`.
pub fn unflatten(v: &[f64], n: usize, d: usize) -> Mat<f64> {
    Mat::from_fn(n, d, |i, k| v[i * d + k])
}

/// Tile edge of `transpose_into`: a 32 x 32 tile of f64 is 8 KiB read and 8 KiB written, inside
/// the L1 cache, so both sides of the copy touch each cache line once.
const TILE: usize = 32;

/// dst = src^T, copied tile by tile, strips of tiles on the rayon pool. Column by column, one
/// side of a transposing copy strides through memory a whole column apart: on Llama-sized
/// weights (4096 x 4096) that took most of a second per matrix (cache and TLB misses).
pub(crate) fn transpose_into<T: Scalar>(dst: MatMut<'_, T>, src: MatRef<'_, T>) {
    assert!(
        dst.nrows() == src.ncols() && dst.ncols() == src.nrows(),
        "transpose_into: shapes"
    );
    // Strip c: columns c TILE.. of dst, i.e. rows c TILE.. of src.
    dst.par_col_chunks_mut(TILE)
        .enumerate()
        .for_each(|(c, mut strip)| {
            let rows = src.subrows(c * TILE, strip.ncols());
            for j0 in (0..rows.ncols()).step_by(TILE) {
                for j in j0..(j0 + TILE).min(rows.ncols()) {
                    for i in 0..rows.nrows() {
                        strip[(j, i)] = rows[(i, j)];
                    }
                }
            }
        });
}

/// src^T as a new column-major matrix (`transpose_into`).
pub(crate) fn transposed<T: Scalar>(src: MatRef<'_, T>) -> Mat<T> {
    let mut out = Mat::<T>::zeros(src.ncols(), src.nrows());
    transpose_into(out.as_mut(), src);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every shape around the tile edge, and a destination that is a view inside a larger
    /// matrix (as the stacked projection weights are written), against faer's own transpose.
    #[test]
    fn transpose_matches_faer_on_ragged_tiles() {
        for &(r, c) in &[
            (1, 1),
            (1, 70),
            (70, 1),
            (31, 33),
            (32, 32),
            (33, 65),
            (100, 7),
        ] {
            let src = Mat::from_fn(r, c, |i, j| (i * 1000 + j) as f64 + 0.5);
            assert_eq!(
                transposed(src.as_ref()),
                src.transpose().to_owned(),
                "{r}x{c}"
            );
            let mut wide = Mat::<f32>::zeros(c, r + 5);
            let src32 = Mat::from_fn(r, c, |i, j| (i * 1000 + j) as f32);
            transpose_into(wide.as_mut().subcols_mut(3, r), src32.as_ref());
            for i in 0..c {
                for j in 0..r + 5 {
                    let want = if (3..3 + r).contains(&j) {
                        src32[(j - 3, i)]
                    } else {
                        0.0
                    };
                    assert_eq!(wide[(i, j)], want, "{r}x{c} at ({i}, {j})");
                }
            }
        }
    }
}
