//! Forward-mode derivative of the token map: dY = J(X) G (math.md section 3, with biases,
//! multi-head and the tied L2 kernel).

use super::linearization::Linearization;
use crate::attention::forward::{affine_no_bias, check_shape, gemm, inv_sqrt_dk};
use crate::attention::softmax::softmax_backward_columns;
use crate::attention::Kernel;
use crate::error::Result;
use crate::scalar::Scalar;
use faer::reborrow::ReborrowMut;
use faer::{Mat, MatRef, Par};
use rayon::prelude::*;

impl<T: Scalar> Linearization<'_, T> {
    /// J(X) G for a tangent G (n x d); returns n x d_out.
    pub fn jvp(&self, g: MatRef<'_, T>) -> Result<Mat<T>> {
        check_shape("JVP tangent", g, self.n(), self.d_in())?;
        Ok(self.jvp_unchecked(g))
    }

    pub(crate) fn jvp_unchecked(&self, g: MatRef<'_, T>) -> Mat<T> {
        let layer = self.layer;
        let (dk, dv) = (layer.dk, layer.dv);
        let st = &self.state;
        let proj = self.project(g);
        let (k_off, v_off) = self.offsets();
        let s = inv_sqrt_dk::<T>(dk);
        let one = T::of(1.0);
        let mut d_o = Mat::<T>::zeros(self.n(), layer.heads * dv);
        d_o.as_mut()
            .par_col_chunks_mut(dv)
            .enumerate()
            .for_each(|(h, mut doh)| {
                let q = st.q.as_ref().subcols(h * dk, dk);
                let k = st.k.as_ref().subcols(h * dk, dk);
                let v = st.v.as_ref().subcols(h * dv, dv);
                let p_t = st.p_t[h].as_ref();
                let dq = proj.as_ref().subcols(h * dk, dk);
                let dv_h = proj.as_ref().subcols(v_off + h * dv, dv);
                // dL^T (keys x queries).
                let mut dl = self.scratch(h);
                match layer.kernel {
                    Kernel::Dot => {
                        // One product of depth 2 dk, [K dK] [dQ Q]^T, instead of two of depth dk:
                        // the n x n output is written once.
                        let dkh = proj.as_ref().subcols(k_off + h * dk, dk);
                        let n = q.nrows();
                        let mut left = Mat::<T>::zeros(n, 2 * dk);
                        let mut right = Mat::<T>::zeros(n, 2 * dk);
                        left.as_mut().subcols_mut(0, dk).copy_from(k);
                        left.as_mut().subcols_mut(dk, dk).copy_from(dkh);
                        right.as_mut().subcols_mut(0, dk).copy_from(dq);
                        right.as_mut().subcols_mut(dk, dk).copy_from(q);
                        gemm(
                            dl.as_mut(),
                            false,
                            left.as_ref(),
                            right.transpose(),
                            s,
                            Par::Seq,
                        );
                    }
                    Kernel::L2 => {
                        // logits_ij = s (2 q_i.q_j - |q_j|^2): d = 2s (dq_i.q_j + q_i.dq_j - q_j.dq_j).
                        gemm(dl.as_mut(), false, q, dq.transpose(), s + s, Par::Seq);
                        gemm(dl.as_mut(), true, dq, q.transpose(), s + s, Par::Seq);
                        let r: Vec<T> = (0..q.nrows())
                            .map(|j| {
                                let mut acc = T::of(0.0);
                                for c in 0..dk {
                                    acc += q[(j, c)] * dq[(j, c)];
                                }
                                (s + s) * acc
                            })
                            .collect();
                        for i in 0..dl.ncols() {
                            for (x, &rj) in dl.col_as_slice_mut(i).iter_mut().zip(&r) {
                                *x -= rj;
                            }
                        }
                    }
                }
                softmax_backward_columns(p_t, dl.as_mut());
                gemm(doh.rb_mut(), false, dl.transpose(), v, one, Par::Seq);
                gemm(doh.rb_mut(), true, p_t.transpose(), dv_h, one, Par::Seq);
            });
        affine_no_bias(d_o.as_ref(), layer.wo.as_ref())
    }
}
