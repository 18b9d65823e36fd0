//! JVP and VJP of X -> output through every stage: projections, qk-norm, rotation, scores,
//! softcap, masked softmax, values and output projection (docs/rotary.md#derivatives).
//!
//! Both work transposed per head (keys x queries) on the visible band, in the forward pass's
//! blocks of queries: the score tangent or cotangent of a block is keys x block, and masked
//! entries inside the band carry P = 0, so the softmax's derivative P ⊙ (g - <P, g>) zeroes them
//! without a mask of its own.

use super::forward::{to_t, RotaryState, QUERY_BLOCK};
use super::layer::RotaryAttention;
use crate::attention::forward::{affine, check_shape, gemm, par_for};
use crate::attention::softmax::{softmax_backward_columns, softmax_backward_columns_centered};
use crate::error::Result;
use crate::linalg::layout::transpose_into;
use crate::scalar::Scalar;
use faer::reborrow::ReborrowMut;
use faer::{Mat, MatMut, MatRef, Par};
use rayon::prelude::*;
use std::ops::Range;

/// a b^T without bias, parallel like the forward projections.
fn linear<T: Scalar>(a: MatRef<'_, T>, w: MatRef<'_, T>) -> Mat<T> {
    let mut out = Mat::<T>::zeros(a.nrows(), w.nrows());
    let par = par_for(a.nrows(), w.nrows(), a.ncols());
    gemm(out.as_mut(), false, a, w.transpose(), T::of(1.0), par);
    out
}

/// a w for a column-major w.
fn linear_t_new<T: Scalar>(a: MatRef<'_, T>, w: MatRef<'_, T>) -> Mat<T> {
    let mut out = Mat::<T>::zeros(a.nrows(), w.ncols());
    linear_t(&mut out, false, a, w);
    out
}

/// a w (the transpose of `linear`'s map applied to a cotangent), accumulated into `out`.
fn linear_t<T: Scalar>(out: &mut Mat<T>, add: bool, a: MatRef<'_, T>, w: MatRef<'_, T>) {
    let par = par_for(a.nrows(), w.ncols(), a.ncols());
    gemm(out.as_mut(), add, a, w, T::of(1.0), par);
}

impl<T: Scalar> RotaryAttention<T> {
    /// In place on a band block m (keys `keys` x queries q0..q0 + m.ncols()) of a head's
    /// keys x queries matrix, `tanh` the same block of the head's tanh band:
    /// g_ji *= 1 - t_ji^2 on the visible entries, the derivative of cap tanh(s / cap) with
    /// t = tanh(s / cap).
    fn through_softcap(
        &self,
        mut m: MatMut<'_, T>,
        keys: &Range<usize>,
        q0: usize,
        tanh: Option<&Mat<T>>,
    ) {
        let Some(t) = tanh else { return };
        let one = T::of(1.0);
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
                *x *= one - th * th;
            }
        }
    }

    /// The output at x and its directional derivative J(x) dx (both n x d_out).
    pub fn jvp(&self, x: MatRef<'_, T>, dx: MatRef<'_, T>) -> Result<(Mat<T>, Mat<T>)> {
        let st = self.state(x, true)?;
        let d_o = self.jvp_heads(&st, dx)?;
        let y = affine(st.o.as_ref(), self.wo.as_ref(), &self.bo);
        Ok((y, linear(d_o.as_ref(), self.wo.as_ref())))
    }

    /// J(x)^T dy for a cotangent dy (n x d_out): n x d.
    pub fn vjp(&self, x: MatRef<'_, T>, dy: MatRef<'_, T>) -> Result<Mat<T>> {
        let st = self.state(x, true)?;
        check_shape("VJP cotangent", dy, x.nrows(), self.d_out())?;
        let mut obar = Mat::<T>::zeros(x.nrows(), self.heads * self.head_dim);
        linear_t(&mut obar, false, dy, self.wo.as_ref());
        self.vjp_heads(&st, obar.as_ref())
    }

    /// The heads' output tangents dO (n x H head_dim) at the state `st` (formed with `keep`):
    /// J dx = dO W_O^T.
    pub(crate) fn jvp_heads(&self, st: &RotaryState<T>, dx: MatRef<'_, T>) -> Result<Mat<T>> {
        self.jvp_heads_with(st, dx, None)
    }

    /// [W_Q; W_K; W_V]^T (d x (H + 2 kv_heads) head_dim), column-major: `jvp_heads_with`
    /// projects a tangent with one product whose right operand is read column-major, about 1.7x
    /// faster than the three products against the transposed (row-major) weights.
    pub(crate) fn stacked_projections_t(&self) -> Mat<T> {
        let (q, k) = (self.wq.nrows(), self.wk.nrows());
        let mut w = Mat::<T>::zeros(self.d_in(), q + 2 * k);
        transpose_into(w.as_mut().subcols_mut(0, q), self.wq.as_ref());
        transpose_into(w.as_mut().subcols_mut(q, k), self.wk.as_ref());
        transpose_into(w.as_mut().subcols_mut(q + k, k), self.wv.as_ref());
        w
    }

    /// `jvp_heads`, projecting with `w_in_t` = `stacked_projections_t()` when given.
    pub(crate) fn jvp_heads_with(
        &self,
        st: &RotaryState<T>,
        dx: MatRef<'_, T>,
        w_in_t: Option<&Mat<T>>,
    ) -> Result<Mat<T>> {
        let n = st.q.nrows();
        check_shape("JVP tangent", dx, n, self.d_in())?;
        let (dq, dk, dv) = self.project_tangent(dx, w_in_t);
        self.jvp_heads_projected(st, dq, dk, dv)
    }

    /// dx W_Q^T, dx W_K^T, dx W_V^T, with one product against `w_in_t` =
    /// `stacked_projections_t()` when given.
    pub(crate) fn project_tangent(
        &self,
        dx: MatRef<'_, T>,
        w_in_t: Option<&Mat<T>>,
    ) -> (Mat<T>, Mat<T>, Mat<T>) {
        match w_in_t {
            Some(w) => {
                let all = linear_t_new(dx, w.as_ref());
                let (q, k) = (self.wq.nrows(), self.wk.nrows());
                (
                    all.as_ref().subcols(0, q).to_owned(),
                    all.as_ref().subcols(q, k).to_owned(),
                    all.as_ref().subcols(q + k, k).to_owned(),
                )
            }
            None => (
                linear(dx, self.wq.as_ref()),
                linear(dx, self.wk.as_ref()),
                linear(dx, self.wv.as_ref()),
            ),
        }
    }

    /// `jvp_heads_with` for the tangent that is `u` (rows.len() x d) on the tokens `rows`
    /// (increasing) and 0 elsewhere. Only those tokens are projected, and of the band's products
    /// only dP V is a full one: K dQ^T is formed for the queries in `rows`, dK Q^T and P dV for
    /// the keys in `rows` (the other tokens' dQ, dK, dV are 0).
    pub(crate) fn jvp_heads_rows(
        &self,
        st: &RotaryState<T>,
        rows: &[usize],
        u: MatRef<'_, T>,
        w_in_t: &Mat<T>,
    ) -> Result<Mat<T>> {
        let (n, hd) = (st.q.nrows(), self.head_dim);
        check_shape("JVP tangent rows", u, rows.len(), self.d_in())?;
        let part = linear_t_new(u, w_in_t.as_ref());
        let (qw, kw) = (self.wq.nrows(), self.wk.nrows());
        // qk-norm and rotation act token by token at the token's position: on the n-token
        // matrices (cheap), then back to the rows.
        let (mut dq, mut dk) = (
            scatter_rows(n, rows, part.as_ref().subcols(0, qw)),
            scatter_rows(n, rows, part.as_ref().subcols(qw, kw)),
        );
        if let (Some(norm), Some(qn), Some(kn)) = (&self.qk_norm, &st.q_norm, &st.k_norm) {
            let (gq, gk) = norm.gains();
            let (gq, gk) = (to_t::<T>(&gq), to_t::<T>(&gk));
            qn.apply(&mut dq, hd, &gq, false);
            kn.apply(&mut dk, hd, &gk, false);
        }
        st.table.rotate(dq.as_mut(), hd, false);
        st.table.rotate(dk.as_mut(), hd, false);
        let (dq, dk) = (
            gather_rows(dq.as_ref(), rows),
            gather_rows(dk.as_ref(), rows),
        );
        let dv = part.as_ref().subcols(qw + kw, kw);
        crate::cancel::check()?;
        let s = self.score_scale();
        let mut d_o = Mat::<T>::zeros(n, self.heads * hd);
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
                    dv.subcols(g * hd, hd),
                );
                let mut ds = Mat::<T>::zeros(n, QUERY_BLOCK.min(n));
                let mut doh = doh;
                for (b, (q0, len, keys)) in self.bands(n).enumerate() {
                    let (k0, nk) = (keys.start, keys.len());
                    let (sq, sk) = (within(rows, q0..q0 + len), within(rows, keys.clone()));
                    // dS^T = s (K dQ^T + dK Q^T), keys x queries, on the band.
                    let mut blk = ds.as_mut().submatrix_mut(0, 0, nk, len);
                    blk.fill(T::of(0.0));
                    if !sq.is_empty() {
                        let mut cols = Mat::<T>::zeros(nk, sq.len());
                        let dqs = dq.subrows(sq.start, sq.len());
                        gemm(
                            cols.as_mut(),
                            false,
                            k.subrows(k0, nk),
                            dqs.transpose(),
                            s,
                            Par::Seq,
                        );
                        for (c, r) in sq.clone().enumerate() {
                            blk.rb_mut().col_mut(rows[r] - q0).copy_from(cols.col(c));
                        }
                    }
                    if !sk.is_empty() {
                        let mut part = Mat::<T>::zeros(sk.len(), len);
                        gemm(
                            part.as_mut(),
                            false,
                            dk.subrows(sk.start, sk.len()),
                            q.subrows(q0, len).transpose(),
                            s,
                            Par::Seq,
                        );
                        for (c, r) in sk.clone().enumerate() {
                            let mut row = blk.rb_mut().row_mut(rows[r] - k0);
                            row += part.row(c);
                        }
                    }
                    let tanh = st.tanh_t.get(h).map(|t| t.block(b));
                    self.through_softcap(blk.rb_mut(), &keys, q0, tanh);
                    let p_blk = st.p_t[h].block(b).as_ref();
                    softmax_backward_columns(p_blk, blk.rb_mut());
                    // dO_h = dP V + P dV, dV nonzero on the rows only.
                    let mut out = doh.rb_mut().subrows_mut(q0, len);
                    gemm(
                        out.rb_mut(),
                        false,
                        blk.as_ref().transpose(),
                        v.subrows(k0, nk),
                        T::of(1.0),
                        Par::Seq,
                    );
                    if !sk.is_empty() {
                        let p_rows = gather_rows(p_blk, &shift(&rows[sk.clone()], k0));
                        gemm(
                            out,
                            true,
                            p_rows.as_ref().transpose(),
                            dv.subrows(sk.start, sk.len()),
                            T::of(1.0),
                            Par::Seq,
                        );
                    }
                }
            });
        Ok(d_o)
    }

    /// In place: the projected query and key tangents (n x H head_dim, n x kv_heads head_dim)
    /// through the qk-norm and the rotation, token by token at the tokens' positions.
    pub(crate) fn tangents_through_tokens(
        &self,
        st: &RotaryState<T>,
        dq: &mut Mat<T>,
        dk: &mut Mat<T>,
    ) {
        let hd = self.head_dim;
        if let (Some(norm), Some(qn), Some(kn)) = (&self.qk_norm, &st.q_norm, &st.k_norm) {
            let (gq, gk) = norm.gains();
            let (gq, gk) = (to_t::<T>(&gq), to_t::<T>(&gk));
            qn.apply(dq, hd, &gq, false);
            kn.apply(dk, hd, &gk, false);
        }
        st.table.rotate(dq.as_mut(), hd, false);
        st.table.rotate(dk.as_mut(), hd, false);
    }

    /// The transpose of `tangents_through_tokens` on the rotated queries' and keys' cotangents,
    /// then back through the input projections: x-bar (n x d) from Qbar, Kbar (after rotation)
    /// and Vbar.
    pub(crate) fn tokens_of_cotangents(
        &self,
        st: &RotaryState<T>,
        mut qbar: Mat<T>,
        mut kbar: Mat<T>,
        vbar: MatRef<'_, T>,
    ) -> Mat<T> {
        self.cotangents_through_tokens(st, &mut qbar, &mut kbar);
        let mut xbar = Mat::<T>::zeros(qbar.nrows(), self.d_in());
        linear_t(&mut xbar, false, qbar.as_ref(), self.wq.as_ref());
        linear_t(&mut xbar, true, kbar.as_ref(), self.wk.as_ref());
        linear_t(&mut xbar, true, vbar, self.wv.as_ref());
        xbar
    }

    fn cotangents_through_tokens(&self, st: &RotaryState<T>, qbar: &mut Mat<T>, kbar: &mut Mat<T>) {
        let hd = self.head_dim;
        st.table.rotate(qbar.as_mut(), hd, true);
        st.table.rotate(kbar.as_mut(), hd, true);
        if let (Some(norm), Some(qn), Some(kn)) = (&self.qk_norm, &st.q_norm, &st.k_norm) {
            let (gq, gk) = norm.gains();
            let (gq, gk) = (to_t::<T>(&gq), to_t::<T>(&gk));
            qn.apply(qbar, hd, &gq, true);
            kn.apply(kbar, hd, &gk, true);
        }
    }

    /// The heads' output tangents from the projected tangents dx W_Q^T, dx W_K^T, dx W_V^T.
    fn jvp_heads_projected(
        &self,
        st: &RotaryState<T>,
        mut dq: Mat<T>,
        mut dk: Mat<T>,
        dv: Mat<T>,
    ) -> Result<Mat<T>> {
        let (n, hd) = (st.q.nrows(), self.head_dim);
        self.tangents_through_tokens(st, &mut dq, &mut dk);
        crate::cancel::check()?;
        let s = self.score_scale();
        let mut d_o = Mat::<T>::zeros(n, self.heads * hd);
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
                let mut ds = Mat::<T>::zeros(n, QUERY_BLOCK.min(n));
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
                        T::of(1.0),
                        Par::Seq,
                    );
                    gemm(out, true, p_blk.transpose(), dvb, T::of(1.0), Par::Seq);
                }
            });
        Ok(d_o)
    }

    /// J^T dy at the state `st` (formed with `keep`) from the heads' output cotangents
    /// obar = dy W_O (n x H head_dim): n x d.
    pub(crate) fn vjp_heads(&self, st: &RotaryState<T>, obar: MatRef<'_, T>) -> Result<Mat<T>> {
        let (qbar, kbar, vbar) = self.projection_cotangents(st, obar)?;
        Ok(self.tokens_of_cotangents(st, qbar, kbar, vbar.as_ref()))
    }

    /// The rows `rows` (increasing) of `vjp_heads`. Only the entries of the band that reach
    /// them are formed: the cotangents of the keys and values in `rows` (their rows of the band)
    /// and of the queries in `rows` (their columns), and only those tokens go back through the
    /// input projections.
    pub(crate) fn vjp_heads_rows(
        &self,
        st: &RotaryState<T>,
        obar: MatRef<'_, T>,
        rows: &[usize],
    ) -> Result<Mat<T>> {
        let (n, hd, m) = (st.q.nrows(), self.head_dim, rows.len());
        check_shape("head cotangents", obar, n, self.heads * hd)?;
        crate::cancel::check()?;
        let s = self.score_scale();
        let one = T::of(1.0);
        // Sbar^T entries from Pbar^T entries: P (Pbar - <o_i, obar_i>), then the softcap's
        // derivative; masked entries carry P = 0 and tanh 0.
        let through = |x: T, p: T, mean: T, t: Option<T>| {
            let y = p * (x - mean);
            t.map_or(y, |t| y * (one - t * t))
        };
        let parts: Vec<(Mat<T>, Mat<T>, Mat<T>)> = (0..self.heads)
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
                let (mut qbar, mut kbar, mut vbar) = (
                    Mat::<T>::zeros(m, hd),
                    Mat::<T>::zeros(m, hd),
                    Mat::<T>::zeros(m, hd),
                );
                for (b, (q0, len, keys)) in self.bands(n).enumerate() {
                    let (k0, nk) = (keys.start, keys.len());
                    let (sq, sk) = (within(rows, q0..q0 + len), within(rows, keys.clone()));
                    if sq.is_empty() && sk.is_empty() {
                        continue;
                    }
                    let p_blk = st.p_t[h].block(b).as_ref();
                    let tanh = st.tanh_t.get(h).map(|t| t.block(b).as_ref());
                    let ob_blk = ob.subrows(q0, len);
                    let means: Vec<T> = (q0..q0 + len)
                        .map(|i| (0..hd).fold(T::of(0.0), |acc, c| acc + o[(i, c)] * ob[(i, c)]))
                        .collect();
                    if !sk.is_empty() {
                        // The rows of the keys in `rows`: Vbar = P^T Obar and Kbar = s Sbar^T Q.
                        let local = shift(&rows[sk.clone()], k0);
                        let p_rows = gather_rows(p_blk, &local);
                        gemm(
                            vbar.as_mut().subrows_mut(sk.start, sk.len()),
                            true,
                            p_rows.as_ref(),
                            ob_blk,
                            one,
                            Par::Seq,
                        );
                        let mut sbar = Mat::<T>::zeros(sk.len(), len);
                        gemm(
                            sbar.as_mut(),
                            false,
                            gather_rows(v, &rows[sk.clone()]).as_ref(),
                            ob_blk.transpose(),
                            one,
                            Par::Seq,
                        );
                        for c in 0..len {
                            for (r, &j) in local.iter().enumerate() {
                                let t = tanh.map(|t| t[(j, c)]);
                                sbar[(r, c)] = through(sbar[(r, c)], p_rows[(r, c)], means[c], t);
                            }
                        }
                        gemm(
                            kbar.as_mut().subrows_mut(sk.start, sk.len()),
                            true,
                            sbar.as_ref(),
                            q.subrows(q0, len),
                            s,
                            Par::Seq,
                        );
                    }
                    if !sq.is_empty() {
                        // The columns of the queries in `rows`: Qbar = s Sbar K.
                        let mut cols = Mat::<T>::zeros(nk, sq.len());
                        gemm(
                            cols.as_mut(),
                            false,
                            v.subrows(k0, nk),
                            gather_rows(ob, &rows[sq.clone()]).as_ref().transpose(),
                            one,
                            Par::Seq,
                        );
                        for (c, r) in sq.clone().enumerate() {
                            let i = rows[r] - q0;
                            for j in 0..nk {
                                let t = tanh.map(|t| t[(j, i)]);
                                cols[(j, c)] = through(cols[(j, c)], p_blk[(j, i)], means[i], t);
                            }
                        }
                        gemm(
                            qbar.as_mut().subrows_mut(sq.start, sq.len()),
                            true,
                            cols.as_ref().transpose(),
                            k.subrows(k0, nk),
                            s,
                            Par::Seq,
                        );
                    }
                }
                (qbar, kbar, vbar)
            })
            .collect();
        crate::cancel::check()?;
        let mut qbar = Mat::<T>::zeros(m, self.heads * hd);
        let mut kbar = Mat::<T>::zeros(m, self.kv_heads * hd);
        let mut vbar = Mat::<T>::zeros(m, self.kv_heads * hd);
        for (h, (q_h, k_h, v_h)) in parts.into_iter().enumerate() {
            let g = self.kv_of(h);
            qbar.as_mut().subcols_mut(h * hd, hd).copy_from(&q_h);
            let mut kg = kbar.as_mut().subcols_mut(g * hd, hd);
            kg += &k_h;
            let mut vg = vbar.as_mut().subcols_mut(g * hd, hd);
            vg += &v_h;
        }
        // Rotation and qk-norm token by token at the tokens' positions, as in `jvp_heads_rows`.
        let (mut qbar_n, mut kbar_n) = (
            scatter_rows(n, rows, qbar.as_ref()),
            scatter_rows(n, rows, kbar.as_ref()),
        );
        st.table.rotate(qbar_n.as_mut(), hd, true);
        st.table.rotate(kbar_n.as_mut(), hd, true);
        if let (Some(norm), Some(qn), Some(kn)) = (&self.qk_norm, &st.q_norm, &st.k_norm) {
            let (gq, gk) = norm.gains();
            let (gq, gk) = (to_t::<T>(&gq), to_t::<T>(&gk));
            qn.apply(&mut qbar_n, hd, &gq, true);
            kn.apply(&mut kbar_n, hd, &gk, true);
        }
        let (qbar, kbar) = (
            gather_rows(qbar_n.as_ref(), rows),
            gather_rows(kbar_n.as_ref(), rows),
        );
        let mut xbar = Mat::<T>::zeros(m, self.d_in());
        linear_t(&mut xbar, false, qbar.as_ref(), self.wq.as_ref());
        linear_t(&mut xbar, true, kbar.as_ref(), self.wk.as_ref());
        linear_t(&mut xbar, true, vbar.as_ref(), self.wv.as_ref());
        Ok(xbar)
    }

    /// The cotangents of the rotated queries and keys and of the values from the heads' output
    /// cotangents obar (`tokens_of_cotangents` takes them back to the tokens).
    fn projection_cotangents(
        &self,
        st: &RotaryState<T>,
        obar: MatRef<'_, T>,
    ) -> Result<(Mat<T>, Mat<T>, Mat<T>)> {
        let (n, hd) = (st.q.nrows(), self.head_dim);
        check_shape("head cotangents", obar, n, self.heads * hd)?;
        crate::cancel::check()?;
        let s = self.score_scale();
        // Per query head: its queries' cotangent and its contributions to its kv head's key and
        // value cotangents, summed over the group below in head order (the same sums every run).
        let parts: Vec<(Mat<T>, Mat<T>, Mat<T>)> = (0..self.heads)
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
                let mut vbar = Mat::<T>::zeros(n, hd);
                let mut qbar = Mat::<T>::zeros(n, hd);
                let mut kbar = Mat::<T>::zeros(n, hd);
                let mut lbar = Mat::<T>::zeros(n, QUERY_BLOCK.min(n));
                for (b, (q0, len, keys)) in self.bands(n).enumerate() {
                    let (k0, nk) = (keys.start, keys.len());
                    let p_blk = st.p_t[h].block(b).as_ref();
                    let ob_blk = ob.subrows(q0, len);
                    gemm(
                        vbar.as_mut().subrows_mut(k0, nk),
                        true,
                        p_blk,
                        ob_blk,
                        T::of(1.0),
                        Par::Seq,
                    );
                    // Pbar^T = V Obar^T; its means against P are <o_i, obar_i> (P V = O).
                    let mut blk = lbar.as_mut().submatrix_mut(0, 0, nk, len);
                    gemm(
                        blk.rb_mut(),
                        false,
                        v.subrows(k0, nk),
                        ob_blk.transpose(),
                        T::of(1.0),
                        Par::Seq,
                    );
                    let means: Vec<T> = (q0..q0 + len)
                        .map(|i| (0..hd).fold(T::of(0.0), |acc, c| acc + o[(i, c)] * ob[(i, c)]))
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
        Ok(self.sum_head_parts(n, parts))
    }

    /// Per query head (in order) its queries' cotangent and its contributions to its kv head's
    /// key and value cotangents, each `rows` x head_dim, into Qbar, Kbar, Vbar: the group's
    /// contributions summed in head order, the same sums every run.
    #[allow(clippy::type_complexity)]
    pub(crate) fn sum_head_parts(
        &self,
        rows: usize,
        parts: Vec<(Mat<T>, Mat<T>, Mat<T>)>,
    ) -> (Mat<T>, Mat<T>, Mat<T>) {
        let hd = self.head_dim;
        let mut qbar = Mat::<T>::zeros(rows, self.heads * hd);
        let mut kbar = Mat::<T>::zeros(rows, self.kv_heads * hd);
        let mut vbar = Mat::<T>::zeros(rows, self.kv_heads * hd);
        for (h, (q_h, k_h, v_h)) in parts.into_iter().enumerate() {
            let g = self.kv_of(h);
            qbar.as_mut().subcols_mut(h * hd, hd).copy_from(&q_h);
            let mut kg = kbar.as_mut().subcols_mut(g * hd, hd);
            kg += &k_h;
            let mut vg = vbar.as_mut().subcols_mut(g * hd, hd);
            vg += &v_h;
        }
        (qbar, kbar, vbar)
    }
}

/// The indices r of `rows` (increasing) with rows[r] in `range`, a range of indices of `rows`.
fn within(rows: &[usize], range: Range<usize>) -> Range<usize> {
    rows.partition_point(|&i| i < range.start)..rows.partition_point(|&i| i < range.end)
}

/// `rows` less `origin`.
fn shift(rows: &[usize], origin: usize) -> Vec<usize> {
    rows.iter().map(|&i| i - origin).collect()
}

/// The rows `rows` of `m`.
fn gather_rows<T: Scalar>(m: MatRef<'_, T>, rows: &[usize]) -> Mat<T> {
    Mat::from_fn(rows.len(), m.ncols(), |r, j| m[(rows[r], j)])
}

/// The n x m.ncols() matrix with row rows[r] = row r of `m`, 0 elsewhere.
fn scatter_rows<T: Scalar>(n: usize, rows: &[usize], m: MatRef<'_, T>) -> Mat<T> {
    let mut out = Mat::<T>::zeros(n, m.ncols());
    for (r, &i) in rows.iter().enumerate() {
        out.as_mut().row_mut(i).copy_from(m.row(r));
    }
    out
}
