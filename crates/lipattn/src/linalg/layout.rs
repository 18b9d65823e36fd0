//! Token matrices as flat row-major vectors (the layout of the fixed-point solvers' iterates)
//! and back.

use faer::{Mat, MatRef};

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
