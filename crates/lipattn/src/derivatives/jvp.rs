//! Forward-mode derivative of the token map: dY = J(X) G (docs/background.md#derivatives, here
//! with biases, multi-head and the tied L2 kernel).
//!
//! Worked transposed (tokens as columns): per head and block of queries, the score tangent
//! dL^T (keys x queries) goes through the softmax backward, and dO^T = V^T dP^T + dV^T P^T
//! is written into the head's rows of dO^T; every product then has column-major operands.

use super::linearization::{Linearization, QUERY_BLOCK};
use crate::attention::forward::{check_dims, check_shape, gemm, gemm_blocks_rayon};
use crate::attention::softmax::softmax_backward_columns;
use crate::attention::Kernel;
use crate::error::Result;
use crate::scalar::Scalar;
use faer::reborrow::ReborrowMut;
use faer::{Mat, MatMut, MatRef, Par};
use rayon::prelude::*;

impl<T: Scalar> Linearization<'_, T> {
    /// J(X) G for a tangent G (n x d); returns n x d_out.
    pub fn jvp(&self, g: MatRef<'_, T>) -> Result<Mat<T>> {
        let mut dy = Mat::<T>::zeros(self.n(), self.d_out());
        self.jvp_into(g, dy.as_mut())?;
        Ok(dy)
    }

    /// J(X) G written into `out` (n x d_out), for iterations that reuse their buffers.
    pub fn jvp_into(&self, g: MatRef<'_, T>, out: MatMut<'_, T>) -> Result<()> {
        check_shape("JVP tangent", g, self.n(), self.d_in())?;
        check_dims(
            "JVP output",
            out.nrows(),
            out.ncols(),
            self.n(),
            self.d_out(),
        )?;
        let mut bufs = self.call_buffers();
        let bufs = &mut *bufs;
        self.jvp_heads_into(g, bufs.d_ot.as_mut(), &mut bufs.projected);
        gemm_blocks_rayon(out, bufs.d_ot.transpose(), self.layer.wo.transpose());
        Ok(())
    }

    /// The heads' output tangents before the output projection, dO (n x H dv): J G = dO W_O^T.
    pub(crate) fn jvp_heads(&self, g: MatRef<'_, T>) -> Mat<T> {
        let mut bufs = self.call_buffers();
        let bufs = &mut *bufs;
        self.jvp_heads_into(g, bufs.d_ot.as_mut(), &mut bufs.projected);
        bufs.d_ot.transpose().to_owned()
    }

    /// `jvp_heads` into `d_ot`, every entry overwritten; `projected` (n x H width) holds the
    /// tangent projections when they run for all heads at once.
    fn jvp_heads_into(&self, g: MatRef<'_, T>, mut d_ot: MatMut<'_, T>, projected: &mut Mat<T>) {
        let layer = self.layer;
        let (dk, dv, n) = (layer.dk, layer.dv, self.n());
        let st = &self.state;
        let width = self.head_width();
        let sc = self.bilinear_scale();
        let one = T::of(1.0);
        let projected = self.w_in_t.as_ref().map(|w_in_t| {
            gemm_blocks_rayon(projected.as_mut(), g, w_in_t.as_ref());
            projected.as_ref()
        });
        // One task per head, projections included unless they ran above for all heads.
        d_ot.rb_mut()
            .par_row_chunks_mut(dv)
            .enumerate()
            .for_each(|(h, mut dot_h)| {
                let mut guard = self.scratch(h);
                let ws = &mut *guard;
                // W_in^h G^T: this head's tangent projections dQ^T, dK^T, dV^T.
                match projected {
                    Some(p) => ws
                        .proj
                        .as_mut()
                        .copy_from(p.subcols(h * width, width).transpose()),
                    None => gemm(
                        ws.proj.as_mut(),
                        false,
                        self.w_in.as_ref().subrows(h * width, width),
                        g.transpose(),
                        one,
                        Par::Seq,
                    ),
                }
                let tangents = ws.proj.as_ref();
                let dq_t = tangents.subrows(0, dk);
                // For tied L2 the keys are the queries, so their tangent is dQ.
                let dkey_t = match layer.kernel {
                    Kernel::Dot => tangents.subrows(dk, dk),
                    Kernel::L2 => dq_t,
                };
                let dv_t = tangents.subrows(width - dv, dv);
                let v_t = self.v_t.as_ref().subrows(h * dv, dv);
                let q_t = self.q_t.as_ref().subrows(h * dk, dk);
                let p_t = st.p_t[h].as_ref();
                // The bilinear part of the logit tangent, dL^T_ji = sc [k_j dk_j].[dq_i q_i], is
                // one product of depth 2 dk per block instead of two of depth dk.
                let left = &mut ws.left;
                left.as_mut()
                    .subcols_mut(0, dk)
                    .copy_from(st.k.as_ref().subcols(h * dk, dk));
                left.as_mut()
                    .subcols_mut(dk, dk)
                    .copy_from(dkey_t.transpose());
                // Tied L2 logits also carry -s |q_j|^2, whose tangent -2s q_j.dq_j is the same for
                // every query (left is [Q dQ] there).
                let key_shift: Option<Vec<T>> = (layer.kernel == Kernel::L2).then(|| {
                    let mut shift = vec![T::of(0.0); n];
                    for c in 0..dk {
                        let (a, b) = (left.col_as_slice(c), left.col_as_slice(dk + c));
                        for ((r, &x), &y) in shift.iter_mut().zip(a).zip(b) {
                            *r += x * y;
                        }
                    }
                    shift.iter_mut().for_each(|r| *r *= sc);
                    shift
                });
                for q0 in (0..n).step_by(QUERY_BLOCK) {
                    let len = QUERY_BLOCK.min(n - q0);
                    let nk = self.visible_keys(q0, len);
                    let mut right = ws.right_t.as_mut().subcols_mut(0, len);
                    right
                        .rb_mut()
                        .subrows_mut(0, dk)
                        .copy_from(dq_t.subcols(q0, len));
                    right
                        .rb_mut()
                        .subrows_mut(dk, dk)
                        .copy_from(q_t.subcols(q0, len));
                    let mut dl = ws.scores.as_mut().submatrix_mut(0, 0, nk, len);
                    gemm(
                        dl.rb_mut(),
                        false,
                        ws.left.as_ref().subrows(0, nk),
                        right.as_ref(),
                        sc,
                        Par::Seq,
                    );
                    if let Some(shift) = &key_shift {
                        for i in 0..len {
                            let col = dl
                                .rb_mut()
                                .col_mut(i)
                                .try_as_col_major_mut()
                                .expect("column-major")
                                .as_slice_mut();
                            for (x, &r) in col.iter_mut().zip(shift) {
                                *x -= r;
                            }
                        }
                    }
                    let p_blk = p_t.submatrix(0, q0, nk, len);
                    softmax_backward_columns(p_blk, dl.rb_mut());
                    let mut out = dot_h.rb_mut().subcols_mut(q0, len);
                    gemm(
                        out.rb_mut(),
                        false,
                        v_t.subcols(0, nk),
                        dl.as_ref(),
                        one,
                        Par::Seq,
                    );
                    gemm(out, true, dv_t.subcols(0, nk), p_blk, one, Par::Seq);
                }
            });
    }
}
