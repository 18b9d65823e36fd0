//! The norms the bounds, estimators and dynamics share.

use crate::scalar::Scalar;
use faer::MatRef;

/// Frobenius norm of a matrix, accumulated in f64.
pub fn frobenius<T: Scalar>(x: MatRef<'_, T>) -> f64 {
    let mut s = 0.0;
    for j in 0..x.ncols() {
        for i in 0..x.nrows() {
            let v = x[(i, j)].f64();
            s += v * v;
        }
    }
    s.sqrt()
}

/// Largest row norm max_i |x_i|: the radius of the smallest centred ball holding every token,
/// accumulated in f64.
pub fn max_row_norm<T: Scalar>(x: MatRef<'_, T>) -> f64 {
    (0..x.nrows())
        .map(|i| {
            (0..x.ncols())
                .map(|k| {
                    let v = x[(i, k)].f64();
                    v * v
                })
                .sum::<f64>()
                .sqrt()
        })
        .fold(0.0, f64::max)
}

/// Euclidean norm of a flat vector.
pub fn norm2(v: &[f64]) -> f64 {
    v.iter().map(|x| x * x).sum::<f64>().sqrt()
}

/// Euclidean distance between two flat vectors.
pub fn dist2(a: &[f64], b: &[f64]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y) * (x - y))
        .sum::<f64>()
        .sqrt()
}
