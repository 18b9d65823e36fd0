//! What the Krylov estimators (Lanczos, power iteration) need of a map linearised at one point:
//! its sizes, J and J^T, and a fused product with J^T J.
//!
//! The fused product is separate from a JVP followed by a VJP because attention's output
//! projection is linear: with J u = D W_O^T (D the heads' output tangent), J^T J u is the VJP of
//! D W_O^T W_O, and the Gram matrix W_O^T W_O is formed once per run. That saves one product of
//! the output projection's size per step. Lanczos keeps each step's D (the "image") so that it can
//! recompute J v exactly for its final vector, v being a combination of the basis.

use crate::error::Result;
use crate::scalar::Scalar;
use faer::{Mat, MatRef};

/// A map R^{n x d_in} -> R^{n x d_out} linearised at one input, Frobenius norms on both sides.
pub trait LinearizedMap<T: Scalar> {
    /// What `normal_step` needs besides the linearisation (e.g. W_O^T W_O), formed once per run.
    type NormalData;

    /// Tokens n.
    fn n(&self) -> usize;
    /// Token width d_in of the input.
    fn d_in(&self) -> usize;
    /// Token width d_out of the output.
    fn d_out(&self) -> usize;
    /// J t for a tangent t (n x d_in).
    fn jvp(&self, t: MatRef<'_, T>) -> Result<Mat<T>>;
    /// J^T y for a cotangent y (n x d_out).
    fn vjp(&self, y: MatRef<'_, T>) -> Result<Mat<T>>;
    fn normal_data(&self) -> Self::NormalData;
    /// (image of u, J^T J u) for `data` = `normal_data()`. The image is linear in u and
    /// J u = `image_output(image)`.
    fn normal_step(&self, data: &Self::NormalData, u: MatRef<'_, T>) -> Result<(Mat<T>, Mat<T>)>;
    /// J u from the image of u that `normal_step` returned.
    fn image_output(&self, image: MatRef<'_, T>) -> Mat<T>;

    /// At most `count` tokens (rows of a tangent, increasing) on which J^T J restricted to
    /// tangents supported there has a cheap `normal_step_rows`, chosen so that the top right
    /// singular vector of J is likely to live mostly on them; None (the default) when the map
    /// has no cheaper restricted step. Only a start vector is built from them
    /// (`estimation::lanczos`'s restricted start), so a poor choice costs steps, never accuracy.
    fn start_rows(&self, count: usize) -> Option<Vec<usize>> {
        let _ = count;
        None
    }

    /// `normal_step` on the tangent that is `u` (rows.len() x d_in) on the tokens `rows` and 0
    /// elsewhere, returning its image and the rows `rows` of J^T J u: the restriction
    /// E^T J^T J E of J^T J to those tokens (E the embedding). The default embeds, takes a full
    /// step and gathers.
    fn normal_step_rows(
        &self,
        data: &Self::NormalData,
        rows: &[usize],
        u: MatRef<'_, T>,
    ) -> Result<(Mat<T>, Mat<T>)> {
        let mut full = Mat::<T>::zeros(self.n(), self.d_in());
        for (r, &i) in rows.iter().enumerate() {
            full.as_mut().row_mut(i).copy_from(u.row(r));
        }
        let (image, w) = self.normal_step(data, full.as_ref())?;
        Ok((
            image,
            Mat::from_fn(rows.len(), w.ncols(), |r, j| w[(rows[r], j)]),
        ))
    }
}
