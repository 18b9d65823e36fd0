//! The whole Jacobian as a matrix, for the sizes where that is affordable (exact
//! log-determinants, and tests that need every singular value).

use super::{Linearization, LinearizedMap};
use crate::error::Result;
use faer::Mat;

impl Linearization<'_, f64> {
    /// J(X) as a dense matrix (see [`dense_jacobian`]).
    pub fn dense_jacobian(&self) -> Result<Mat<f64>> {
        dense_jacobian(self)
    }
}

/// J built column by column from the JVPs of the unit tangents: (n e) x (n d), rows and columns
/// vec'ed row-major (entry (i, k) of a token matrix at i d + k). Costs n d JVPs.
pub fn dense_jacobian<L: LinearizedMap<f64>>(lin: &L) -> Result<Mat<f64>> {
    let (n, d, e) = (lin.n(), lin.d_in(), lin.d_out());
    let mut j = Mat::<f64>::zeros(n * e, n * d);
    let mut t = Mat::<f64>::zeros(n, d);
    for i in 0..n {
        for k in 0..d {
            t[(i, k)] = 1.0;
            let y = lin.jvp(t.as_ref())?;
            t[(i, k)] = 0.0;
            for a in 0..n {
                for b in 0..e {
                    j[(a * e + b, i * d + k)] = y[(a, b)];
                }
            }
        }
    }
    Ok(j)
}
