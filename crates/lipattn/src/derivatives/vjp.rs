//! Reverse-mode derivative of the token map: Xbar = J(X)^T Ybar.

use super::linearization::{Linearization, KEY_CHUNK, QUERY_BLOCK};
use super::tiles::vjp_tile_logits;
use crate::attention::forward::{check_dims, check_shape, gemm, gemm_blocks_rayon};
use crate::attention::Kernel;
use crate::error::Result;
use crate::scalar::Scalar;
use faer::reborrow::ReborrowMut;
use faer::{Mat, MatMut, MatRef, Par};
use rayon::prelude::*;

impl<T: Scalar> Linearization<'_, T> {
    /// J(X)^T Ybar for a cotangent Ybar (n x d_out); returns n x d.
    pub fn vjp(&self, ybar: MatRef<'_, T>) -> Result<Mat<T>> {
        let mut xbar = Mat::<T>::zeros(self.n(), self.d_in());
        self.vjp_into(ybar, xbar.as_mut())?;
        Ok(xbar)
    }

    /// J(X)^T Ybar written into `out` (n x d), for iterations that reuse their buffers.
    pub fn vjp_into(&self, ybar: MatRef<'_, T>, out: MatMut<'_, T>) -> Result<()> {
        check_shape("VJP cotangent", ybar, self.n(), self.d_out())?;
        check_dims(
            "VJP output",
            out.nrows(),
            out.ncols(),
            self.n(),
            self.d_in(),
        )?;
        self.vjp_through_into(ybar, self.layer.wo.as_ref(), out);
        Ok(())
    }

    /// The VJP from the heads' output cotangents Obar_h = Y W[:, h dv..(h+1) dv]: with
    /// (Ybar, W_O) it is J^T Ybar; with (dO, W_O^T W_O), dO from `jvp_heads`, it is J^T J G
    /// without forming J G (Lanczos).
    pub(crate) fn vjp_through(&self, y: MatRef<'_, T>, w: MatRef<'_, T>) -> Mat<T> {
        let mut xbar = Mat::<T>::zeros(self.n(), self.d_in());
        self.vjp_through_into(y, w, xbar.as_mut());
        xbar
    }

    fn vjp_through_into(&self, y: MatRef<'_, T>, w: MatRef<'_, T>, out: MatMut<'_, T>) {
        let layer = self.layer;
        let (dk, dv, n) = (layer.dk, layer.dv, self.n());
        let st = &self.state;
        let one = T::of(1.0);
        let sc = self.bilinear_scale();
        let zero = T::of(0.0);
        // Each head writes its cotangents (Qbar, Kbar, Vbar; for L2 Qbar, Vbar) straight into its
        // own columns, laid out like the rows of w_in.
        let width = self.head_width();
        let mut bufs = self.call_buffers();
        let bufs = &mut *bufs;
        // Obar = Y W for all heads at once where the projections are global; otherwise each
        // head's task computes its own columns.
        let obar_all = self.projects_all_heads().then(|| {
            gemm_blocks_rayon(bufs.obar.as_mut(), y, w);
            bufs.obar.as_ref()
        });
        bufs.dbar
            .as_mut()
            .par_col_chunks_mut(width)
            .enumerate()
            .for_each(|(h, mut cot)| {
                let q = st.q.as_ref().subcols(h * dk, dk);
                let k_t = self.k_t.as_ref().subrows(h * dk, dk);
                let v = st.v.as_ref().subcols(h * dv, dv);
                let o = st.o.as_ref().subcols(h * dv, dv);
                let p_t = st.p_t[h].as_ref();
                let mut guard = self.scratch(h);
                let ws = &mut *guard;
                // Obar_h = Y W^h.
                let ob = match obar_all {
                    Some(all) => all.subcols(h * dv, dv),
                    None => {
                        gemm(
                            ws.obar.as_mut(),
                            false,
                            y,
                            w.subcols(h * dv, dv),
                            one,
                            Par::Seq,
                        );
                        ws.obar.as_ref()
                    }
                };
                // The value cotangents accumulate over the query blocks.
                cot.rb_mut().subcols_mut(width - dv, dv).fill(zero);
                // The logits' bilinear part sc k_j.q_i gives the queries sc Lbar K and the keys
                // sc Lbar^T Q (for L2 both land on Qbar, the keys being the queries).
                ws.key_part.as_mut().fill(zero);
                // Tied L2 only: the column sums of Lbar, for the -s |q_j|^2 term.
                let mut colsum = vec![T::of(0.0); if layer.kernel == Kernel::L2 { n } else { 0 }];
                for q0 in (0..n).step_by(QUERY_BLOCK) {
                    let len = QUERY_BLOCK.min(n - q0);
                    let nk = self.visible_keys(q0, len);
                    let ob_blk = ob.subrows(q0, len);
                    // <P_i, Pbar_i> = <P_i, V ob_i> = <o_i, ob_i>: the head's outputs at X give
                    // the softmax backward its means without a pass over the block.
                    let means = &mut ws.means[..len];
                    means.fill(zero);
                    for c in 0..dv {
                        let oc = o.col(c).try_as_col_major().expect("column-major");
                        let obc = ob.col(c).try_as_col_major().expect("column-major");
                        let pairs = oc.as_slice()[q0..q0 + len]
                            .iter()
                            .zip(&obc.as_slice()[q0..q0 + len]);
                        for (m, (&x, &y)) in means.iter_mut().zip(pairs) {
                            *m += x * y;
                        }
                    }
                    // The keys in chunks, each chunk's probabilities and logit cotangents used by
                    // all four products while they are in cache (a whole block's, nk x 128, is
                    // larger than L2 from n ~ 2,000 in f64 and was read from memory twice).
                    let mut qbar_t = ws.query_t.as_mut().subcols_mut(0, len);
                    for c0 in (0..nk).step_by(KEY_CHUNK) {
                        let cl = KEY_CHUNK.min(nk - c0);
                        let p_c = p_t.submatrix(c0, q0, cl, len);
                        // Vbar += P_blk^T Obar_blk on these keys' rows, and Lbar^T.
                        let mut lbar = ws.scores.as_mut().submatrix_mut(0, 0, cl, len);
                        vjp_tile_logits(
                            cot.rb_mut().submatrix_mut(c0, width - dv, cl, dv),
                            lbar.rb_mut(),
                            p_c,
                            v.subrows(c0, cl),
                            ob_blk,
                            &ws.means[..len],
                        );
                        // Qbar_blk^T = sc K^T Lbar_blk^T, summed over the chunks, both operands
                        // column-major.
                        gemm(
                            qbar_t.rb_mut(),
                            c0 > 0,
                            k_t.subcols(c0, cl),
                            lbar.as_ref(),
                            sc,
                            Par::Seq,
                        );
                        gemm(
                            ws.key_part.as_mut().subrows_mut(c0, cl),
                            true,
                            lbar.as_ref(),
                            q.subrows(q0, len),
                            sc,
                            Par::Seq,
                        );
                        for (j, c) in colsum.iter_mut().skip(c0).take(cl).enumerate() {
                            for i in 0..len {
                                *c += lbar[(j, i)];
                            }
                        }
                    }
                    cot.rb_mut()
                        .submatrix_mut(q0, 0, len, dk)
                        .copy_from(qbar_t.transpose());
                }
                match layer.kernel {
                    Kernel::Dot => cot.subcols_mut(dk, dk).copy_from(ws.key_part.as_ref()),
                    Kernel::L2 => {
                        // Qbar = sc (Lbar Q + Lbar^T Q - diag(colsum Lbar) Q).
                        for c in 0..dk {
                            for (j, &cs) in colsum.iter().enumerate() {
                                cot[(j, c)] += ws.key_part[(j, c)] - sc * cs * q[(j, c)];
                            }
                        }
                    }
                }
            });
        gemm_blocks_rayon(out, bufs.dbar.as_ref(), self.w_in.as_ref());
    }
}
