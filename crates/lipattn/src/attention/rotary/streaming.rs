//! The rotary sublayer linearised at one X without any band of probabilities: the streaming
//! (FlashAttention-style) form of [`RotaryLinearization`](super::RotaryLinearization), the same
//! map to rounding (docs/streaming.md#rotary-sublayers).
//!
//! The dense state keeps every head's probabilities (and softcap tanh values) on the visible
//! band, n^2 / 2 values a head under the causal mask. Here only the token-local intermediates
//! (qk-norm states, rotated queries and keys, values, head outputs) and two numbers per query
//! and head (the row maximum m_i of the capped logits and 1 / l_i) are kept; every JVP and VJP
//! recomputes one tile of logits, their softcap tanh and p_ij = exp(l_ij - m_i) / l_i at a time,
//! tiles of keys starting at the first key the block's first query sees, so that key blocks the
//! causal mask or the window hides entirely are never formed. Query head h reads kv head
//! h / (H / kv_heads) (`RotaryAttention::kv_of`), as the dense code does.

use super::forward::{RotaryState, TokenStage};
use super::layer::RotaryAttention;
use super::linearization::{gram_product, head_cotangents, output_gram};
use crate::attention::forward::{affine, check_shape, check_tokens, gemm, par_for};
use crate::derivatives::tiles::{
    absorb_logits, add_jvp_tile, col, col_mut, finish_rows, subtract_means, vjp_tile_logits,
    weight_column,
};
use crate::derivatives::LinearizedMap;
use crate::error::{check_at_least, Error, Result};
use crate::linalg::layout::transposed;
use crate::scalar::Scalar;
use faer::reborrow::ReborrowMut;
use faer::{Mat, MatMut, MatRef, Par};
use rayon::prelude::*;
use std::ops::Range;

/// The rotary sublayer linearised at one input, streaming over tiles of `block` queries by
/// `block` keys.
pub struct StreamingRotaryLinearization<'a, T: Scalar> {
    layer: &'a RotaryAttention<T>,
    block: usize,
    /// The token-local intermediates and the head outputs O (n x H head_dim); its bands stay
    /// empty, which is the point.
    state: RotaryState<T>,
    /// m_i per query and head (n x H): the maximum of the (capped) logits over visible keys.
    row_max: Mat<T>,
    /// 1 / l_i per query and head (n x H), l_i = sum_j exp(l_ij - m_i) over visible keys.
    inv_sum: Mat<T>,
    /// [W_Q; W_K; W_V]^T and W_O^T, column-major, as `RotaryLinearization` keeps them.
    w_in_t: Mat<T>,
    wo_t: Mat<T>,
}

/// Bytes a streaming linearisation of `layer` at n tokens with tiles of `block` keeps and uses
/// per JVP or VJP (None: beyond u64): linear in n, the only quadratic term being three tiles of
/// block^2 values a thread. Counted: the weights' transposed copies, the rope table, the
/// projections, qk-norm states, head outputs and statistics, and one call's projected and
/// rotated tangents, head tangents or cotangents, the VJP's per-head parts and their sums, the
/// result and the output.
pub fn memory_estimate<T: Scalar>(
    layer: &RotaryAttention<T>,
    n: usize,
    block: usize,
) -> Option<u64> {
    let (h, kv, hd) = (layer.heads, layer.kv_heads, layer.head_dim);
    let proj = (h + 2 * kv) * hd;
    let norm = if layer.qk_norm.is_some() {
        (h + kv) * (hd + 1)
    } else {
        0
    };
    let per_token = [
        proj,                         // Q, K, V
        h * hd,                       // O
        norm,                         // the qk-norm states
        layer.rope.rotary_dim,        // cos and sin
        2 * h,                        // m, 1/l
        2 * proj,                     // a call's projected tangent and its split copies
        h * hd,                       // dO, or Obar
        3 * h * hd,                   // the VJP's per-head parts
        proj,                         // their sums over each group
        layer.d_in() + layer.d_out(), // the call's result and the output
    ]
    .iter()
    .try_fold(0usize, |a, &b| a.checked_add(b))?;
    let bytes = std::mem::size_of::<T>() as u64;
    let threads = rayon::current_num_threads().max(1);
    let tile = block.min(n).max(1);
    crate::budget::total(&[
        crate::budget::bytes_of(&[n, per_token], bytes),
        crate::budget::bytes_of(&[3 * threads, tile, tile], bytes),
        crate::budget::bytes_of(&[layer.d_in() + layer.d_out(), h * hd + 2 * kv * hd], bytes),
    ])
}

/// One query head's views and statistics: what a tile needs to recompute its probabilities.
struct HeadView<'s, T: Scalar> {
    q: MatRef<'s, T>,
    k: MatRef<'s, T>,
    v: MatRef<'s, T>,
    o: MatRef<'s, T>,
    row_max: &'s [T],
    inv_sum: &'s [T],
}

impl<'a, T: Scalar> StreamingRotaryLinearization<'a, T> {
    /// Linearises X -> f(X) at `x` (n x d, positions 0..n-1), visiting keys and queries in
    /// tiles of `block` (at least 1; `derivatives::streaming::DEFAULT_BLOCK` is a good choice).
    /// The memory estimate is checked against the budget before anything is allocated.
    pub fn new(layer: &'a RotaryAttention<T>, x: MatRef<'_, T>, block: usize) -> Result<Self> {
        check_at_least("streaming block", block, 1)?;
        layer.check_shapes()?;
        check_tokens("tokens", x, layer.d_in())?;
        let n = x.nrows();
        crate::budget::check(
            || {
                format!(
                    "streaming rotary attention of {n} tokens with {} heads ({} kv heads) of {} in tiles of {block} (projections, outputs and per-row statistics)",
                    layer.heads, layer.kv_heads, layer.head_dim
                )
            },
            memory_estimate(layer, n, block),
        )?;
        crate::cancel::check()?;
        let w_in_t = layer.stacked_projections_t();
        let TokenStage {
            table,
            q_norm,
            k_norm,
            q,
            k,
            v,
        } = layer.token_stage(x, Some(&w_in_t))?;
        let (heads, hd) = (layer.heads, layer.head_dim);
        let mut this = Self {
            layer,
            block,
            state: RotaryState {
                table,
                q_norm,
                k_norm,
                q,
                k,
                v,
                p_t: Vec::new(),
                tanh_t: Vec::new(),
                o: Mat::zeros(n, heads * hd),
            },
            row_max: Mat::zeros(n, heads),
            inv_sum: Mat::zeros(n, heads),
            w_in_t,
            wo_t: transposed(layer.wo.as_ref()),
        };
        crate::cancel::check()?;
        let tasks = this.tasks();
        let tile = block.min(n);
        let results = tasks
            .par_iter()
            .map_init(
                || Mat::<T>::zeros(tile, tile),
                |scratch, &(h, q0)| this.forward_block(h, q0, scratch),
            )
            .collect::<Result<Vec<_>>>()?;
        for (&(h, q0), (acc_t, m, inv)) in tasks.iter().zip(results) {
            for (i, (&mi, &li)) in m.iter().zip(&inv).enumerate() {
                this.row_max[(q0 + i, h)] = mi;
                this.inv_sum[(q0 + i, h)] = li;
            }
            this.state
                .o
                .as_mut()
                .submatrix_mut(q0, h * hd, acc_t.ncols(), hd)
                .copy_from(acc_t.transpose());
        }
        Ok(this)
    }

    /// f(X), the sublayer's output at the linearisation point (n x d_out).
    pub fn output(&self) -> Mat<T> {
        affine(
            self.state.o.as_ref(),
            self.layer.wo.as_ref(),
            &self.layer.bo,
        )
    }

    pub fn layer(&self) -> &RotaryAttention<T> {
        self.layer
    }

    pub fn block(&self) -> usize {
        self.block
    }

    fn n(&self) -> usize {
        self.state.q.nrows()
    }

    /// One task per (query head, block of queries).
    fn tasks(&self) -> Vec<(usize, usize)> {
        let (n, block) = (self.n(), self.block);
        (0..self.layer.heads)
            .flat_map(|h| (0..n).step_by(block).map(move |q0| (h, q0)))
            .collect()
    }

    fn head_view(&self, h: usize) -> HeadView<'_, T> {
        let hd = self.layer.head_dim;
        let g = self.layer.kv_of(h);
        let st = &self.state;
        HeadView {
            q: st.q.as_ref().subcols(h * hd, hd),
            k: st.k.as_ref().subcols(g * hd, hd),
            v: st.v.as_ref().subcols(g * hd, hd),
            o: st.o.as_ref().subcols(h * hd, hd),
            row_max: col(self.row_max.as_ref(), h),
            inv_sum: col(self.inv_sum.as_ref(), h),
        }
    }

    /// The key tiles (k0, kl) of queries q0..q0 + ql: from the first key the first query sees
    /// (the window's start) to the last query, so that no tile is hidden from all of them.
    fn key_tiles(&self, q0: usize, ql: usize) -> impl Iterator<Item = (usize, usize)> {
        let (lo, hi, block) = (self.layer.visible(q0).start, q0 + ql, self.block);
        (lo..hi)
            .step_by(block)
            .map(move |k0| (k0, block.min(hi - k0)))
    }

    /// The rows of the key tile k0..k0 + kl that query i sees (possibly none).
    fn rows_in_tile(&self, i: usize, k0: usize, kl: usize) -> Range<usize> {
        let vis = self.layer.visible(i);
        let a = vis.start.clamp(k0, k0 + kl) - k0;
        let b = vis.end.clamp(k0, k0 + kl) - k0;
        a..b.max(a)
    }

    /// Writes into `tile` (kl x ql) the logits of keys k0.. (rows) for queries q0.. (columns),
    /// soft-capped, and into `tanh` their tanh(s / cap) (with a softcap), in the dense state's
    /// order of operations so that both round alike. Only visible entries are meaningful.
    /// Returns the first visible non-finite score before the cap (query, key), which the
    /// forward pass reports; the derivatives recompute what the forward pass accepted.
    fn logits(
        &self,
        hv: &HeadView<'_, T>,
        k0: usize,
        q0: usize,
        mut tile: MatMut<'_, T>,
        mut tanh: Option<MatMut<'_, T>>,
    ) -> Option<(usize, usize, T)> {
        let (kl, ql) = (tile.nrows(), tile.ncols());
        gemm(
            tile.rb_mut(),
            false,
            hv.k.subrows(k0, kl),
            hv.q.subrows(q0, ql).transpose(),
            self.layer.score_scale(),
            Par::Seq,
        );
        let mut bad = None;
        for c in 0..ql {
            let rows = self.rows_in_tile(q0 + c, k0, kl);
            let lc = &mut col_mut(tile.rb_mut(), c)[rows.clone()];
            if bad.is_none() {
                if let Some(r) = lc.iter().position(|x| !x.is_finite()) {
                    bad = Some((q0 + c, k0 + rows.start + r, lc[r]));
                }
            }
            if let Some(cap) = self.layer.softcap {
                let mut tc = tanh.as_mut().map(|t| col_mut(t.rb_mut(), c));
                if let Some(tc) = tc.as_mut() {
                    tc.fill(T::of(0.0));
                }
                for (r, x) in lc.iter_mut().enumerate() {
                    // tanh in f64, as the dense state computes it.
                    let th = (x.f64() / cap).tanh();
                    if let Some(tc) = tc.as_mut() {
                        tc[rows.start + r] = T::of(th);
                    }
                    *x = T::of(cap * th);
                }
            }
        }
        bad
    }

    /// Writes into `p` (kl x ql) the probabilities of keys k0.. for queries q0.., recomputed
    /// from the stored m_i and 1/l_i (masked entries 0), and into `tanh` the softcap's tanh.
    fn probabilities(
        &self,
        hv: &HeadView<'_, T>,
        k0: usize,
        q0: usize,
        mut p: MatMut<'_, T>,
        tanh: Option<MatMut<'_, T>>,
    ) {
        self.logits(hv, k0, q0, p.rb_mut(), tanh);
        let (kl, ql) = (p.nrows(), p.ncols());
        let zero = T::of(0.0);
        for c in 0..ql {
            let rows = self.rows_in_tile(q0 + c, k0, kl);
            let (m, inv) = (hv.row_max[q0 + c], hv.inv_sum[q0 + c]);
            let pc = col_mut(p.rb_mut(), c);
            pc[..rows.start].fill(zero);
            pc[rows.end..].fill(zero);
            let seen = &mut pc[rows];
            for x in seen.iter_mut() {
                *x -= m;
            }
            T::exp_nonpositive(seen);
            // Like the dense softmax: subnormal probabilities would slow every product.
            for x in seen.iter_mut() {
                *x = (*x * inv).flush_subnormal();
            }
        }
    }

    /// The forward pass over the keys for queries q0.. of head h with a running maximum and
    /// rescaled sums: the head's outputs transposed (head_dim x ql), m_i and 1/l_i.
    #[allow(clippy::type_complexity)]
    fn forward_block(
        &self,
        h: usize,
        q0: usize,
        scratch: &mut Mat<T>,
    ) -> Result<(Mat<T>, Vec<T>, Vec<T>)> {
        let hv = self.head_view(h);
        let ql = self.block.min(self.n() - q0);
        let hd = self.layer.head_dim;
        let zero = T::of(0.0);
        let mut m = vec![T::neg_infinity(); ql];
        let mut l = vec![zero; ql];
        // Transposed, so that each query's running sum is one contiguous column.
        let mut acc_t = Mat::<T>::zeros(hd, ql);
        for (k0, kl) in self.key_tiles(q0, ql) {
            let mut t = scratch.as_mut().submatrix_mut(0, 0, kl, ql);
            if let Some((i, j, s)) = self.logits(&hv, k0, q0, t.rb_mut(), None) {
                return Err(Error::Numerical(format!(
                    "attention score of head {h}, query {i} and key {j} is {s}: the scores overflowed (inputs or weights too large for {})",
                    T::NAME
                )));
            }
            for i in 0..ql {
                let rows = self.rows_in_tile(q0 + i, k0, kl);
                let tc = col_mut(t.rb_mut(), i);
                tc[..rows.start].fill(zero);
                tc[rows.end..].fill(zero);
                let seen = &mut tc[rows];
                if seen.is_empty() {
                    continue;
                }
                absorb_logits(seen, &mut m[i], &mut l[i], col_mut(acc_t.as_mut(), i));
            }
            gemm(
                acc_t.as_mut(),
                true,
                hv.v.subrows(k0, kl).transpose(),
                t.as_ref(),
                T::of(1.0),
                Par::Seq,
            );
        }
        let inv = finish_rows(&mut acc_t, &l);
        Ok((acc_t, m, inv))
    }

    /// The heads' output tangents dO (n x H head_dim), J u = dO W_O^T.
    fn jvp_heads(&self, u: MatRef<'_, T>) -> Result<Mat<T>> {
        let (n, layer) = (self.n(), self.layer);
        check_shape("JVP tangent", u, n, layer.d_in())?;
        let (mut dq, mut dk, dv) = layer.project_tangent(u, Some(&self.w_in_t));
        layer.tangents_through_tokens(&self.state, &mut dq, &mut dk);
        crate::cancel::check()?;
        let hd = layer.head_dim;
        let tasks = self.tasks();
        let tile = self.block.min(n);
        let blocks: Vec<Mat<T>> = tasks
            .par_iter()
            .map_init(
                || {
                    let z = || Mat::<T>::zeros(tile, tile);
                    (z(), z(), z())
                },
                |tiles, &(h, q0)| {
                    let g = layer.kv_of(h);
                    let d = (
                        dq.as_ref().subcols(h * hd, hd),
                        dk.as_ref().subcols(g * hd, hd),
                        dv.as_ref().subcols(g * hd, hd),
                    );
                    self.jvp_block(h, q0, d, tiles)
                },
            )
            .collect();
        let mut d_o = Mat::<T>::zeros(n, layer.heads * hd);
        for (&(h, q0), blk) in tasks.iter().zip(blocks) {
            d_o.as_mut()
                .submatrix_mut(q0, h * hd, blk.ncols(), hd)
                .copy_from(blk.transpose());
        }
        Ok(d_o)
    }

    /// dO^T (head_dim x ql) of head h for queries q0..: with p the probabilities and
    /// g = (1 - t^2) sdot the capped logits' tangents, dO_i = sum_j p_ij g_ij v_j
    /// - (sum_j p_ij g_ij) o_i + sum_j p_ij dv_j, the three sums in one pass over the keys.
    fn jvp_block(
        &self,
        h: usize,
        q0: usize,
        (dq, dkey, dvals): (MatRef<'_, T>, MatRef<'_, T>, MatRef<'_, T>),
        (p_tile, t_tile, s_tile): &mut (Mat<T>, Mat<T>, Mat<T>),
    ) -> Mat<T> {
        let hv = self.head_view(h);
        let ql = self.block.min(self.n() - q0);
        let hd = self.layer.head_dim;
        let (one, zero) = (T::of(1.0), T::of(0.0));
        let s = self.layer.score_scale();
        let capped = self.layer.softcap.is_some();
        let mut out_t = Mat::<T>::zeros(hd, ql);
        let mut means = vec![zero; ql];
        for (k0, kl) in self.key_tiles(q0, ql) {
            let mut p = p_tile.as_mut().submatrix_mut(0, 0, kl, ql);
            let mut t = t_tile.as_mut().submatrix_mut(0, 0, kl, ql);
            self.probabilities(&hv, k0, q0, p.rb_mut(), capped.then_some(t.rb_mut()));
            // sdot^T = s (K dQ^T + dK Q^T) on the tile.
            let mut sd = s_tile.as_mut().submatrix_mut(0, 0, kl, ql);
            gemm(
                sd.rb_mut(),
                false,
                hv.k.subrows(k0, kl),
                dq.subrows(q0, ql).transpose(),
                s,
                Par::Seq,
            );
            gemm(
                sd.rb_mut(),
                true,
                dkey.subrows(k0, kl),
                hv.q.subrows(q0, ql).transpose(),
                s,
                Par::Seq,
            );
            for (i, mean) in means.iter_mut().enumerate() {
                let pc = col(p.as_ref(), i);
                let sdc = col_mut(sd.rb_mut(), i);
                if capped {
                    for (x, &th) in sdc.iter_mut().zip(col(t.as_ref(), i)) {
                        *x *= one - th * th;
                    }
                }
                *mean += weight_column(sdc, pc);
            }
            add_jvp_tile(
                out_t.as_mut(),
                hv.v.subrows(k0, kl),
                dvals.subrows(k0, kl),
                sd.as_ref(),
                p.as_ref(),
            );
        }
        subtract_means(out_t.as_mut(), &means, hv.o, q0);
        out_t
    }

    /// J^T from the heads' output cotangents Obar (n x H head_dim): n x d.
    fn vjp_heads(&self, obar: MatRef<'_, T>) -> Result<Mat<T>> {
        let (n, hd) = (self.n(), self.layer.head_dim);
        check_shape("head cotangents", obar, n, self.layer.heads * hd)?;
        crate::cancel::check()?;
        // One task per query head: its key and value parts sum over every block of queries.
        let parts: Vec<(Mat<T>, Mat<T>, Mat<T>)> = (0..self.layer.heads)
            .into_par_iter()
            .map(|h| self.vjp_head(h, obar.subcols(h * hd, hd)))
            .collect();
        crate::cancel::check()?;
        let (qbar, kbar, vbar) = self.layer.sum_head_parts(n, parts);
        Ok(self
            .layer
            .tokens_of_cotangents(&self.state, qbar, kbar, vbar.as_ref()))
    }

    /// FlashAttention-2's backward for query head h: its Qbar and its contributions to its kv
    /// head's Kbar and Vbar (each n x head_dim). Per tile: Vbar += P Obar, Pbar = V Obar^T,
    /// Lbar = (1 - t^2) ⊙ P ⊙ (Pbar - D) with D_i = <o_i, obar_i>, Qbar += s Lbar^T K,
    /// Kbar += s Lbar Q.
    fn vjp_head(&self, h: usize, ob: MatRef<'_, T>) -> (Mat<T>, Mat<T>, Mat<T>) {
        let hv = self.head_view(h);
        let (n, hd) = (self.n(), self.layer.head_dim);
        let (one, zero) = (T::of(1.0), T::of(0.0));
        let s = self.layer.score_scale();
        let capped = self.layer.softcap.is_some();
        let tile = self.block.min(n);
        let (mut p_tile, mut t_tile, mut l_tile) = (
            Mat::<T>::zeros(tile, tile),
            Mat::<T>::zeros(tile, tile),
            Mat::<T>::zeros(tile, tile),
        );
        let (mut qbar, mut kbar, mut vbar) = (
            Mat::<T>::zeros(n, hd),
            Mat::<T>::zeros(n, hd),
            Mat::<T>::zeros(n, hd),
        );
        let mut d_row = vec![zero; tile];
        for q0 in (0..n).step_by(self.block) {
            let ql = self.block.min(n - q0);
            let ob_blk = ob.subrows(q0, ql);
            let d_row = &mut d_row[..ql];
            for (i, d) in d_row.iter_mut().enumerate() {
                *d = (0..hd).fold(zero, |acc, c| acc + hv.o[(q0 + i, c)] * ob_blk[(i, c)]);
            }
            for (k0, kl) in self.key_tiles(q0, ql) {
                let mut p = p_tile.as_mut().submatrix_mut(0, 0, kl, ql);
                let mut t = t_tile.as_mut().submatrix_mut(0, 0, kl, ql);
                self.probabilities(&hv, k0, q0, p.rb_mut(), capped.then_some(t.rb_mut()));
                let mut lbar = l_tile.as_mut().submatrix_mut(0, 0, kl, ql);
                vjp_tile_logits(
                    vbar.as_mut().subrows_mut(k0, kl),
                    lbar.rb_mut(),
                    p.as_ref(),
                    hv.v.subrows(k0, kl),
                    ob_blk,
                    d_row,
                );
                if capped {
                    for i in 0..ql {
                        for (x, &th) in col_mut(lbar.rb_mut(), i).iter_mut().zip(col(t.as_ref(), i))
                        {
                            *x *= one - th * th;
                        }
                    }
                }
                gemm(
                    qbar.as_mut().subrows_mut(q0, ql),
                    true,
                    lbar.as_ref().transpose(),
                    hv.k.subrows(k0, kl),
                    s,
                    Par::Seq,
                );
                gemm(
                    kbar.as_mut().subrows_mut(k0, kl),
                    true,
                    lbar.as_ref(),
                    hv.q.subrows(q0, ql),
                    s,
                    Par::Seq,
                );
            }
        }
        (qbar, kbar, vbar)
    }

    /// sum_h sum_i P_h[i, j] per key j, recomputed tile by tile (see
    /// `RotaryLinearization::start_rows`).
    fn attention_mass(&self) -> Vec<f64> {
        let n = self.n();
        let tile = self.block.min(n);
        let per_head: Vec<Vec<f64>> = (0..self.layer.heads)
            .into_par_iter()
            .map(|h| {
                let hv = self.head_view(h);
                let mut mass = vec![0.0f64; n];
                let mut p_tile = Mat::<T>::zeros(tile, tile);
                for q0 in (0..n).step_by(self.block) {
                    let ql = self.block.min(n - q0);
                    for (k0, kl) in self.key_tiles(q0, ql) {
                        let mut p = p_tile.as_mut().submatrix_mut(0, 0, kl, ql);
                        self.probabilities(&hv, k0, q0, p.rb_mut(), None);
                        for c in 0..ql {
                            for (m, &x) in mass[k0..k0 + kl].iter_mut().zip(col(p.as_ref(), c)) {
                                *m += x.f64();
                            }
                        }
                    }
                }
                mass
            })
            .collect();
        let mut mass = vec![0.0f64; n];
        for head in per_head {
            for (m, x) in mass.iter_mut().zip(head) {
                *m += x;
            }
        }
        mass
    }
}

impl<T: Scalar> LinearizedMap<T> for StreamingRotaryLinearization<'_, T> {
    /// W_O^T W_O (H head_dim square).
    type NormalData = Mat<T>;

    fn n(&self) -> usize {
        StreamingRotaryLinearization::n(self)
    }

    fn d_in(&self) -> usize {
        self.layer.d_in()
    }

    fn d_out(&self) -> usize {
        self.layer.d_out()
    }

    fn jvp(&self, t: MatRef<'_, T>) -> Result<Mat<T>> {
        let d_o = self.jvp_heads(t)?;
        Ok(self.image_output(d_o.as_ref()))
    }

    fn vjp(&self, y: MatRef<'_, T>) -> Result<Mat<T>> {
        check_shape("VJP cotangent", y, self.n(), self.d_out())?;
        let obar = head_cotangents(self.layer, y);
        self.vjp_heads(obar.as_ref())
    }

    fn normal_data(&self) -> Mat<T> {
        output_gram(self.layer.wo.as_ref())
    }

    /// The image is dO (n x H head_dim), J u = dO W_O^T.
    fn normal_step(&self, gram: &Mat<T>, u: MatRef<'_, T>) -> Result<(Mat<T>, Mat<T>)> {
        let d_o = self.jvp_heads(u)?;
        let obar = gram_product(gram, d_o.as_ref());
        let w = self.vjp_heads(obar.as_ref())?;
        Ok((d_o, w))
    }

    /// The dense state's choice (the tokens that receive the most attention), at the price of
    /// one pass over the tiles; the restricted step is the default full one.
    fn start_rows(&self, count: usize) -> Option<Vec<usize>> {
        let n = self.n();
        let mass = self.attention_mass();
        let mut order: Vec<usize> = (0..n).collect();
        order.sort_by(|&a, &b| mass[b].total_cmp(&mass[a]).then(a.cmp(&b)));
        order.truncate(count.min(n));
        order.sort_unstable();
        Some(order)
    }

    fn image_output(&self, d_o: MatRef<'_, T>) -> Mat<T> {
        let mut out = Mat::<T>::zeros(d_o.nrows(), self.wo_t.ncols());
        gemm(
            out.as_mut(),
            false,
            d_o,
            self.wo_t.as_ref(),
            T::of(1.0),
            par_for(d_o.nrows(), self.wo_t.ncols(), d_o.ncols()),
        );
        out
    }
}
