//! JVP and VJP of X -> output through every stage: projections, qk-norm, rotation, scores,
//! softcap, masked softmax, values and output projection (docs/rotary.md#derivatives).
//!
//! Both work transposed per head (keys x queries) on the visible band, in the forward pass's
//! blocks of queries: the score tangent or cotangent of a block is keys x block, and masked
//! entries inside the band carry P = 0, so the softmax's derivative P ⊙ (g - <P, g>) zeroes them
//! without a mask of its own.

use super::forward::{RotaryState, QUERY_BLOCK};
use super::layer::RotaryAttention;
use crate::attention::forward::{affine, check_shape, gemm, par_for};
use crate::attention::softmax::{softmax_backward_columns, softmax_backward_columns_centered};
use crate::error::Result;
use faer::reborrow::ReborrowMut;
use faer::{Mat, MatMut, MatRef, Par};
use rayon::prelude::*;
use std::ops::Range;

/// a b^T without bias, parallel like the forward projections.
fn linear(a: MatRef<'_, f64>, w: MatRef<'_, f64>) -> Mat<f64> {
    let mut out = Mat::<f64>::zeros(a.nrows(), w.nrows());
    let par = par_for(a.nrows(), w.nrows(), a.ncols());
    gemm(out.as_mut(), false, a, w.transpose(), 1.0, par);
    out
}

/// a w (the transpose of `linear`'s map applied to a cotangent), accumulated into `out`.
fn linear_t(out: &mut Mat<f64>, add: bool, a: MatRef<'_, f64>, w: MatRef<'_, f64>) {
    let par = par_for(a.nrows(), w.ncols(), a.ncols());
    gemm(out.as_mut(), add, a, w, 1.0, par);
}

impl RotaryAttention {
    /// In place on a band block m (keys `keys` x queries q0..q0 + m.ncols()) of a head's
    /// keys x queries matrix, `tanh` the same block of the head's tanh band:
    /// g_ji *= 1 - t_ji^2 on the visible entries, the derivative of cap tanh(s / cap) with
    /// t = tanh(s / cap).
    fn through_softcap(
        &self,
        mut m: MatMut<'_, f64>,
        keys: &Range<usize>,
        q0: usize,
        tanh: Option<&Mat<f64>>,
    ) {
        let Some(t) = tanh else { return };
        for c in 0..m.ncols() {
            let visible = self.visible(q0 + c);
            let rows = visible.start - keys.start..visible.end - keys.start;
            let tc = &t.col_as_slice(c)[rows.clone()];
            let col = m
                .rb_mut()
                .col_mut(c)
                .try_as_col_major_mut()
                .expect("column-major")
                .as_slice_mut();
            for (x, &th) in col[rows].iter_mut().zip(tc) {
                *x *= 1.0 - th * th;
            }
        }
    }

    /// The output at x and its directional derivative J(x) dx (both n x d_out).
    pub fn jvp(&self, x: MatRef<'_, f64>, dx: MatRef<'_, f64>) -> Result<(Mat<f64>, Mat<f64>)> {
        let st = self.state(x, true)?;
        let d_o = self.jvp_heads(&st, dx)?;
        let y = affine(st.o.as_ref(), self.wo.as_ref(), &self.bo);
        Ok((y, linear(d_o.as_ref(), self.wo.as_ref())))
    }

    /// J(x)^T dy for a cotangent dy (n x d_out): n x d.
    pub fn vjp(&self, x: MatRef<'_, f64>, dy: MatRef<'_, f64>) -> Result<Mat<f64>> {
        let st = self.state(x, true)?;
        check_shape("VJP cotangent", dy, x.nrows(), self.d_out())?;
        let mut obar = Mat::<f64>::zeros(x.nrows(), self.heads * self.head_dim);
        linear_t(&mut obar, false, dy, self.wo.as_ref());
        self.vjp_heads(&st, obar.as_ref())
    }

    /// The heads' output tangents dO (n x H head_dim) at the state `st` (formed with `keep`):
    /// J dx = dO W_O^T.
    pub(crate) fn jvp_heads(&self, st: &RotaryState, dx: MatRef<'_, f64>) -> Result<Mat<f64>> {
        let (n, hd) = (st.q.nrows(), self.head_dim);
        check_shape("JVP tangent", dx, n, self.d_in())?;
        let mut dq = linear(dx, self.wq.as_ref());
        let mut dk = linear(dx, self.wk.as_ref());
        let dv = linear(dx, self.wv.as_ref());
        if let (Some(norm), Some(qn), Some(kn)) = (&self.qk_norm, &st.q_norm, &st.k_norm) {
            let (gq, gk) = norm.gains();
            qn.apply(&mut dq, hd, &gq, false);
            kn.apply(&mut dk, hd, &gk, false);
        }
        st.table.rotate(dq.as_mut(), hd, false);
        st.table.rotate(dk.as_mut(), hd, false);
        crate::cancel::check()?;
        let s = self.score_scale();
        let mut d_o = Mat::<f64>::zeros(n, self.heads * hd);
        d_o.as_mut()
            .par_col_chunks_mut(hd)
            .enumerate()
            .for_each(|(h, doh)| {
                let g = self.kv_of(h);
                let (q, k, v) = (
                    st.q.as_ref().subcols(h * hd, hd),
                    st.k.as_ref().subcols(g * hd, hd),
                    st.v.as_ref().subcols(g * hd, hd),
                );
                let (dq, dk, dv) = (
                    dq.as_ref().subcols(h * hd, hd),
                    dk.as_ref().subcols(g * hd, hd),
                    dv.as_ref().subcols(g * hd, hd),
                );
                let mut ds = Mat::<f64>::zeros(n, QUERY_BLOCK.min(n));
                let mut doh = doh;
                for (b, (q0, len, keys)) in self.bands(n).enumerate() {
                    let (k0, nk) = (keys.start, keys.len());
                    // dS^T = s (K dQ^T + dK Q^T), keys x queries, on the band.
                    let mut blk = ds.as_mut().submatrix_mut(0, 0, nk, len);
                    let (kb, dkb) = (k.subrows(k0, nk), dk.subrows(k0, nk));
                    gemm(
                        blk.rb_mut(),
                        false,
                        kb,
                        dq.subrows(q0, len).transpose(),
                        s,
                        Par::Seq,
                    );
                    gemm(
                        blk.rb_mut(),
                        true,
                        dkb,
                        q.subrows(q0, len).transpose(),
                        s,
                        Par::Seq,
                    );
                    let tanh = st.tanh_t.get(h).map(|t| t.block(b));
                    self.through_softcap(blk.rb_mut(), &keys, q0, tanh);
                    let p_blk = st.p_t[h].block(b).as_ref();
                    softmax_backward_columns(p_blk, blk.rb_mut());
                    // dO_h = dP V + P dV.
                    let mut out = doh.rb_mut().subrows_mut(q0, len);
                    let (vb, dvb) = (v.subrows(k0, nk), dv.subrows(k0, nk));
                    gemm(
                        out.rb_mut(),
                        false,
                        blk.as_ref().transpose(),
                        vb,
                        1.0,
                        Par::Seq,
                    );
                    gemm(out, true, p_blk.transpose(), dvb, 1.0, Par::Seq);
                }
            });
        Ok(d_o)
    }

    /// J^T dy at the state `st` (formed with `keep`) from the heads' output cotangents
    /// obar = dy W_O (n x H head_dim): n x d.
    pub(crate) fn vjp_heads(&self, st: &RotaryState, obar: MatRef<'_, f64>) -> Result<Mat<f64>> {
        let (n, hd) = (st.q.nrows(), self.head_dim);
        check_shape("head cotangents", obar, n, self.heads * hd)?;
        crate::cancel::check()?;
        let s = self.score_scale();
        // Per query head: its queries' cotangent and its contributions to its kv head's key and
        // value cotangents, summed over the group below in head order (the same sums every run).
        let parts: Vec<(Mat<f64>, Mat<f64>, Mat<f64>)> = (0..self.heads)
            .into_par_iter()
            .map(|h| {
                let g = self.kv_of(h);
                let (q, k, v, o) = (
                    st.q.as_ref().subcols(h * hd, hd),
                    st.k.as_ref().subcols(g * hd, hd),
                    st.v.as_ref().subcols(g * hd, hd),
                    st.o.as_ref().subcols(h * hd, hd),
                );
                let ob = obar.subcols(h * hd, hd);
                let mut vbar = Mat::<f64>::zeros(n, hd);
                let mut qbar = Mat::<f64>::zeros(n, hd);
                let mut kbar = Mat::<f64>::zeros(n, hd);
                let mut lbar = Mat::<f64>::zeros(n, QUERY_BLOCK.min(n));
                for (b, (q0, len, keys)) in self.bands(n).enumerate() {
                    let (k0, nk) = (keys.start, keys.len());
                    let p_blk = st.p_t[h].block(b).as_ref();
                    let ob_blk = ob.subrows(q0, len);
                    gemm(
                        vbar.as_mut().subrows_mut(k0, nk),
                        true,
                        p_blk,
                        ob_blk,
                        1.0,
                        Par::Seq,
                    );
                    // Pbar^T = V Obar^T; its means against P are <o_i, obar_i> (P V = O).
                    let mut blk = lbar.as_mut().submatrix_mut(0, 0, nk, len);
                    gemm(
                        blk.rb_mut(),
                        false,
                        v.subrows(k0, nk),
                        ob_blk.transpose(),
                        1.0,
                        Par::Seq,
                    );
                    let means: Vec<f64> = (q0..q0 + len)
                        .map(|i| (0..hd).map(|c| o[(i, c)] * ob[(i, c)]).sum())
                        .collect();
                    softmax_backward_columns_centered(p_blk, blk.rb_mut(), &means);
                    let tanh = st.tanh_t.get(h).map(|t| t.block(b));
                    self.through_softcap(blk.rb_mut(), &keys, q0, tanh);
                    // S = s Q K^T: Qbar = s Sbar K, Kbar = s Sbar^T Q, with blk = Sbar^T.
                    let qb = qbar.as_mut().subrows_mut(q0, len);
                    gemm(
                        qb,
                        false,
                        blk.as_ref().transpose(),
                        k.subrows(k0, nk),
                        s,
                        Par::Seq,
                    );
                    let kb = kbar.as_mut().subrows_mut(k0, nk);
                    gemm(kb, true, blk.as_ref(), q.subrows(q0, len), s, Par::Seq);
                }
                (qbar, kbar, vbar)
            })
            .collect();
        crate::cancel::check()?;
        let mut qbar = Mat::<f64>::zeros(n, self.heads * hd);
        let mut kbar = Mat::<f64>::zeros(n, self.kv_heads * hd);
        let mut vbar = Mat::<f64>::zeros(n, self.kv_heads * hd);
        for (h, (q_h, k_h, v_h)) in parts.into_iter().enumerate() {
            let g = self.kv_of(h);
            qbar.as_mut().subcols_mut(h * hd, hd).copy_from(&q_h);
            let mut kg = kbar.as_mut().subcols_mut(g * hd, hd);
            kg += &k_h;
            let mut vg = vbar.as_mut().subcols_mut(g * hd, hd);
            vg += &v_h;
        }
        st.table.rotate(qbar.as_mut(), hd, true);
        st.table.rotate(kbar.as_mut(), hd, true);
        if let (Some(norm), Some(qn), Some(kn)) = (&self.qk_norm, &st.q_norm, &st.k_norm) {
            let (gq, gk) = norm.gains();
            qn.apply(&mut qbar, hd, &gq, true);
            kn.apply(&mut kbar, hd, &gk, true);
        }
        let mut xbar = Mat::<f64>::zeros(n, self.d_in());
        linear_t(&mut xbar, false, qbar.as_ref(), self.wq.as_ref());
        linear_t(&mut xbar, true, kbar.as_ref(), self.wk.as_ref());
        linear_t(&mut xbar, true, vbar.as_ref(), self.wv.as_ref());
        Ok(xbar)
    }
}
