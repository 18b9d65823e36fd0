//! JVP and VJP of X -> output through every stage: projections, qk-norm, rotation, scores,
//! softcap, masked softmax, values and output projection (docs/rotary.md#derivatives).
//!
//! Both work transposed per head (keys x queries), like the forward pass: the score tangent or
//! cotangent of head h is n x n, and masked entries carry P = 0, so the softmax's derivative
//! P ⊙ (g - <P, g>) zeroes them without a mask of its own.

use super::layer::RotaryAttention;
use crate::attention::forward::{affine, check_shape, gemm, par_for};
use crate::attention::softmax::{softmax_backward_columns, softmax_backward_columns_centered};
use crate::error::Result;
use faer::{Mat, MatRef, Par};
use rayon::prelude::*;

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
    /// In place on the visible entries of a head's keys x queries block: g_ji *= 1 - t_ji^2, the
    /// derivative of cap tanh(s / cap) with t = tanh(s / cap).
    fn through_softcap(&self, m: &mut Mat<f64>, tanh_t: Option<&Mat<f64>>) {
        let Some(t) = tanh_t else { return };
        for i in 0..m.ncols() {
            let visible = self.visible(i);
            let tc = &t.col_as_slice(i)[visible.clone()];
            for (x, &th) in m.col_as_slice_mut(i)[visible].iter_mut().zip(tc) {
                *x *= 1.0 - th * th;
            }
        }
    }

    /// The output at x and its directional derivative J(x) dx (both n x d_out).
    pub fn jvp(&self, x: MatRef<'_, f64>, dx: MatRef<'_, f64>) -> Result<(Mat<f64>, Mat<f64>)> {
        let st = self.state(x, true, 1)?;
        let (n, hd) = (x.nrows(), self.head_dim);
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
                let p_t = st.p_t[h].as_ref();
                // dS^T = s (K dQ^T + dK Q^T), keys x queries.
                let mut ds = Mat::<f64>::zeros(n, n);
                gemm(ds.as_mut(), false, k, dq.transpose(), s, Par::Seq);
                gemm(ds.as_mut(), true, dk, q.transpose(), s, Par::Seq);
                self.through_softcap(&mut ds, st.tanh_t.get(h));
                softmax_backward_columns(p_t, ds.as_mut());
                // dO_h = dP V + P dV.
                let mut doh = doh;
                gemm(doh.as_mut(), false, ds.transpose(), v, 1.0, Par::Seq);
                gemm(doh, true, p_t.transpose(), dv, 1.0, Par::Seq);
            });
        let y = affine(st.o.as_ref(), self.wo.as_ref(), &self.bo);
        Ok((y, linear(d_o.as_ref(), self.wo.as_ref())))
    }

    /// J(x)^T dy for a cotangent dy (n x d_out): n x d.
    pub fn vjp(&self, x: MatRef<'_, f64>, dy: MatRef<'_, f64>) -> Result<Mat<f64>> {
        let st = self.state(x, true, 1)?;
        let (n, hd) = (x.nrows(), self.head_dim);
        check_shape("VJP cotangent", dy, n, self.d_out())?;
        let mut obar = Mat::<f64>::zeros(n, self.heads * hd);
        linear_t(&mut obar, false, dy, self.wo.as_ref());
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
                let ob = obar.as_ref().subcols(h * hd, hd);
                let p_t = st.p_t[h].as_ref();
                let mut vbar = Mat::<f64>::zeros(n, hd);
                gemm(vbar.as_mut(), false, p_t, ob, 1.0, Par::Seq);
                // Pbar^T = V Obar^T; its means against P are <o_i, obar_i> (P V = O).
                let mut lbar = Mat::<f64>::zeros(n, n);
                gemm(lbar.as_mut(), false, v, ob.transpose(), 1.0, Par::Seq);
                let means: Vec<f64> = (0..n)
                    .map(|i| (0..hd).map(|c| o[(i, c)] * ob[(i, c)]).sum())
                    .collect();
                softmax_backward_columns_centered(p_t, lbar.as_mut(), &means);
                self.through_softcap(&mut lbar, st.tanh_t.get(h));
                // S = s Q K^T: Qbar = s Sbar K, Kbar = s Sbar^T Q, with lbar = Sbar^T.
                let mut qbar = Mat::<f64>::zeros(n, hd);
                gemm(qbar.as_mut(), false, lbar.transpose(), k, s, Par::Seq);
                let mut kbar = Mat::<f64>::zeros(n, hd);
                gemm(kbar.as_mut(), false, lbar.as_ref(), q, s, Par::Seq);
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
