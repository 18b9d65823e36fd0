//! Reverse-mode derivative of the token map: Xbar = J(X)^T Ybar.

use super::linearization::Linearization;
use crate::attention::forward::{check_shape, gemm, inv_sqrt_dk, par_for};
use crate::attention::softmax::softmax_backward_columns;
use crate::attention::Kernel;
use crate::error::Result;
use crate::scalar::Scalar;
use faer::{Mat, MatRef, Par};
use rayon::prelude::*;

/// One head's (Qbar, Kbar, Vbar); Kbar is absent for the tied L2 kernel.
type HeadCotangents<T> = (Mat<T>, Option<Mat<T>>, Mat<T>);

impl<T: Scalar> Linearization<'_, T> {
    /// J(X)^T Ybar for a cotangent Ybar (n x d_out); returns n x d.
    pub fn vjp(&self, ybar: MatRef<'_, T>) -> Result<Mat<T>> {
        check_shape("VJP cotangent", ybar, self.n(), self.d_out())?;
        Ok(self.vjp_unchecked(ybar))
    }

    pub(crate) fn vjp_unchecked(&self, ybar: MatRef<'_, T>) -> Mat<T> {
        let layer = self.layer;
        let (dk, dv, n) = (layer.dk, layer.dv, self.n());
        let st = &self.state;
        let one = T::of(1.0);
        let s = inv_sqrt_dk::<T>(dk);
        // Obar = Ybar W_O, all heads at once.
        let hdv = layer.heads * dv;
        let mut obar = Mat::<T>::zeros(n, hdv);
        let par = par_for(n, hdv, ybar.ncols());
        gemm(obar.as_mut(), false, ybar, layer.wo.as_ref(), one, par);
        let (k_off, v_off) = self.offsets();
        let parts: Vec<HeadCotangents<T>> = (0..layer.heads)
            .into_par_iter()
            .map(|h| {
                let q = st.q.as_ref().subcols(h * dk, dk);
                let k = st.k.as_ref().subcols(h * dk, dk);
                let v = st.v.as_ref().subcols(h * dv, dv);
                let p_t = st.p_t[h].as_ref();
                let ob = obar.as_ref().subcols(h * dv, dv);
                // Vbar = P^T Obar; Pbar^T = V Obar^T (keys x queries).
                let mut vbar = Mat::<T>::zeros(n, dv);
                gemm(vbar.as_mut(), false, p_t, ob, one, Par::Seq);
                let mut lbar = self.scratch(h);
                gemm(lbar.as_mut(), false, v, ob.transpose(), one, Par::Seq);
                softmax_backward_columns(p_t, lbar.as_mut());
                // lbar now holds Lbar^T (keys x queries).
                let mut qbar = Mat::<T>::zeros(n, dk);
                match layer.kernel {
                    Kernel::Dot => {
                        gemm(qbar.as_mut(), false, lbar.transpose(), k, s, Par::Seq);
                        let mut kbar = Mat::<T>::zeros(n, dk);
                        gemm(kbar.as_mut(), false, lbar.as_ref(), q, s, Par::Seq);
                        (qbar, Some(kbar), vbar)
                    }
                    Kernel::L2 => {
                        // Qbar = 2s (Lbar Q + Lbar^T Q - diag(colsum Lbar) Q).
                        let two_s = s + s;
                        gemm(qbar.as_mut(), false, lbar.transpose(), q, two_s, Par::Seq);
                        gemm(qbar.as_mut(), true, lbar.as_ref(), q, two_s, Par::Seq);
                        for j in 0..n {
                            // Column sum of Lbar over queries = row j of Lbar^T summed.
                            let mut c = T::of(0.0);
                            for i in 0..n {
                                c += lbar[(j, i)];
                            }
                            for col in 0..dk {
                                qbar[(j, col)] -= two_s * c * q[(j, col)];
                            }
                        }
                        (qbar, None, vbar)
                    }
                }
            })
            .collect();
        let mut dbar = Mat::<T>::zeros(n, self.w_in.nrows());
        for (h, (qb, kb, vb)) in parts.iter().enumerate() {
            dbar.as_mut()
                .submatrix_mut(0, h * dk, n, dk)
                .copy_from(qb.as_ref());
            if let Some(kb) = kb {
                dbar.as_mut()
                    .submatrix_mut(0, k_off + h * dk, n, dk)
                    .copy_from(kb.as_ref());
            }
            dbar.as_mut()
                .submatrix_mut(0, v_off + h * dv, n, dv)
                .copy_from(vb.as_ref());
        }
        let mut xbar = Mat::<T>::zeros(n, layer.d_in());
        let par = par_for(n, layer.d_in(), dbar.ncols());
        gemm(
            xbar.as_mut(),
            false,
            dbar.as_ref(),
            self.w_in.as_ref(),
            one,
            par,
        );
        xbar
    }
}
