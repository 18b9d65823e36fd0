//! RMS normalisation over blocks of D coordinates of each token, and its derivatives: the one
//! implementation behind the model's `RmsNorm` (one block, the whole width) and the per-head
//! qk-norm of rotary attention (one block per head). With u = x / r,
//! r = sqrt(|x|^2 / D + eps) over one block of one token:
//! y = g ⊙ u, dy = g ⊙ (dx - u <u, dx> / D) / r, and the transpose xbar = (ybar_g - u <u, ybar_g> / D) / r
//! with ybar_g = g ⊙ ybar (the projection I - u u^T / D is symmetric; docs/rotary.md#derivatives).

use crate::error::{Error, Result};
use crate::scalar::Scalar;
use faer::Mat;

/// What the derivatives need from the forward normalisation.
pub(crate) struct NormState<T: Scalar = f64> {
    /// u = x / r, the normalised coordinates before the gain (n x heads*D).
    pub u: Mat<T>,
    /// 1 / r per token and head (n x heads).
    pub inv_r: Mat<T>,
}

/// In place: each block of `head_dim` coordinates of each row of `m` becomes g ⊙ x / r. `what`
/// names the input in errors (`qk_norm of the queries`, `RMSNorm`).
pub(crate) fn normalise<T: Scalar>(
    m: &mut Mat<T>,
    head_dim: usize,
    gain: &[T],
    eps: f64,
    what: &str,
) -> Result<NormState<T>> {
    let (n, heads) = (m.nrows(), m.ncols() / head_dim);
    let mut inv_r = Mat::<T>::zeros(n, heads);
    let (dim, eps) = (T::of(head_dim as f64), T::of(eps));
    let (zero, one) = (T::of(0.0), T::of(1.0));
    for h in 0..heads {
        let ir = inv_r.col_as_slice_mut(h);
        for c in 0..head_dim {
            for (s, &x) in ir.iter_mut().zip(m.col_as_slice(h * head_dim + c)) {
                *s += x * x;
            }
        }
        for (i, s) in ir.iter_mut().enumerate() {
            let r = (*s / dim + eps).sqrt();
            if !(r > zero && r.is_finite()) {
                let why = if r == zero {
                    "a zero vector needs eps > 0".to_string()
                } else {
                    format!(
                        "the squares overflowed: inputs or weights too large for {}",
                        T::NAME
                    )
                };
                let head = if heads > 1 {
                    format!(", head {h}")
                } else {
                    String::new()
                };
                return Err(Error::Numerical(format!(
                    "{what} of token {i}{head}: root mean square {r} ({why})"
                )));
            }
            *s = one / r;
        }
    }
    let mut u = Mat::<T>::zeros(n, m.ncols());
    for h in 0..heads {
        for (c, &g) in gain.iter().enumerate() {
            let col = h * head_dim + c;
            let ir = inv_r.col_as_slice(h);
            let (src, dst) = (m.col_as_slice_mut(col), u.col_as_slice_mut(col));
            for ((x, uu), &r) in src.iter_mut().zip(dst.iter_mut()).zip(ir) {
                *uu = *x * r;
                *x = g * *uu;
            }
        }
    }
    Ok(NormState { u, inv_r })
}

impl<T: Scalar> NormState<T> {
    /// In place: a tangent dx (n x heads*D) becomes dy, or with `transpose` a cotangent ybar
    /// becomes xbar. Both are (I - u u^T / D) / r composed with diag(g), in the two orders.
    pub fn apply(&self, m: &mut Mat<T>, head_dim: usize, gain: &[T], transpose: bool) {
        let (n, heads) = (m.nrows(), self.inv_r.ncols());
        let (zero, dim) = (T::of(0.0), T::of(head_dim as f64));
        let mut dots = vec![zero; n];
        for h in 0..heads {
            if transpose {
                scale_by_gain(m, h, head_dim, gain);
            }
            dots.fill(zero);
            for c in 0..head_dim {
                let col = h * head_dim + c;
                for ((s, &x), &uu) in dots
                    .iter_mut()
                    .zip(m.col_as_slice(col))
                    .zip(self.u.col_as_slice(col))
                {
                    *s += x * uu;
                }
            }
            let ir = self.inv_r.col_as_slice(h);
            for c in 0..head_dim {
                let col = h * head_dim + c;
                let u = self.u.col_as_slice(col);
                for (((x, &uu), &s), &r) in
                    m.col_as_slice_mut(col).iter_mut().zip(u).zip(&dots).zip(ir)
                {
                    *x = (*x - uu * s / dim) * r;
                }
            }
            if !transpose {
                scale_by_gain(m, h, head_dim, gain);
            }
        }
    }
}

fn scale_by_gain<T: Scalar>(m: &mut Mat<T>, h: usize, head_dim: usize, gain: &[T]) {
    for (c, &g) in gain.iter().enumerate() {
        for x in m.col_as_slice_mut(h * head_dim + c) {
            *x *= g;
        }
    }
}
