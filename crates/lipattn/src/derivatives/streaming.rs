//! The token map X -> f(X) of an [`AttentionLayer`] linearised at one X without any n x n
//! matrix: FlashAttention-style streaming (docs/streaming.md).
//!
//! [`Linearization`](super::Linearization) keeps every head's probability matrix, n^2 values a
//! head: 26 GB for MiniLM's 12 heads at n = 16,384. Here only the projections, the heads'
//! outputs and two numbers per query and head (the row maximum m_i of the logits and 1 / l_i,
//! l_i the sum of their exponentials) are kept; the forward pass finds them with a running
//! maximum and rescaled sums over blocks of keys, and every JVP and VJP recomputes the
//! probabilities of one block of queries and keys at a time as p_ij = exp(logit_ij - m_i) / l_i.
//! Memory is O(n d + threads block^2) (`memory_estimate`); the price is recomputing the logits
//! (one product of depth dk per tile) and their exponentials in every derivative.

use super::tiles::{
    absorb_logits, add_jvp_tile, add_logit_terms, col, col_mut, finish_rows, normalized_exp,
    subtract_means, vjp_tile_logits, weight_column,
};
use super::LinearizedMap;
use crate::attention::forward::{
    affine, check_dims, check_shape, check_tokens, gemm, gemm_blocks_rayon, log_weights,
};
use crate::attention::{AttentionLayer, Kernel};
use crate::error::{check_at_least, Error, Result};
use crate::scalar::Scalar;
use faer::reborrow::ReborrowMut;
use faer::{Mat, MatMut, MatRef, Par};
use rayon::prelude::*;

/// Queries and keys per tile when the caller has no preference. A tile of logits is then
/// 128 KiB in f64 and stays in a core's L2 cache between the products that write and read it
/// (the dense derivatives chose the same size for their query blocks, `QUERY_BLOCK`).
pub const DEFAULT_BLOCK: usize = 128;

/// An attention layer linearised at one input, streaming over tiles of `block` queries by
/// `block` keys; the same map as [`Linearization`](super::Linearization) to rounding.
pub struct StreamingLinearization<'a, T: Scalar> {
    layer: &'a AttentionLayer<T>,
    causal: bool,
    block: usize,
    /// Q (n x H dk), with its bias.
    q: Mat<T>,
    /// K (n x H dk), None for tied L2, whose keys are the queries.
    k: Option<Mat<T>>,
    /// V (n x H dv).
    v: Mat<T>,
    /// The heads' outputs O (n x H dv): the JVP centres its score tangents and the VJP forms
    /// its row term D_i = <o_i, obar_i> from them, so neither needs a pass over the keys for it.
    o: Mat<T>,
    output: Mat<T>,
    log_w: Vec<T>,
    /// Tied L2 only: s |k_j|^2 per key and head (n x H), the part of the logit that depends on
    /// the key alone.
    key_norms: Option<Mat<T>>,
    /// m_i per query and head (n x H): the maximum of logit + log w over the visible keys.
    row_max: Mat<T>,
    /// 1 / l_i per query and head (n x H), l_i = sum_j exp(logit_ij + log w_j - m_i).
    inv_sum: Mat<T>,
    /// Per head [W_Q^h; W_K^h; W_V^h] (for L2 [W_Q^h; W_V^h]), as in the dense linearisation:
    /// one product projects a tangent for all heads, and one takes every head's cotangents
    /// back to the tokens.
    w_in: Mat<T>,
}

/// Bytes a streaming linearisation of `layer` at n tokens with tiles of `block` keeps and uses
/// per JVP or VJP: linear in n, the only quadratic term being the tiles (two of block^2 values a
/// thread). The estimate counts the stored projections, outputs and statistics, one call's
/// projected tangents, head outputs, cotangents and result, and the VJP's per-head accumulators.
pub fn memory_estimate<T: Scalar>(
    layer: &AttentionLayer<T>,
    n: usize,
    block: usize,
) -> Option<u64> {
    let (h, dk, dv) = (layer.heads, layer.dk, layer.dv);
    let width = head_width(layer);
    let per_token = [
        2 * h * dk,            // Q, K
        2 * h * dv,            // V, O
        layer.d_out(),         // f(X)
        3 * h,                 // m, 1/l, key norms or shifts
        h * width,             // projected tangent or cotangents of a call
        h * dv,                // dO or Obar
        layer.d_in(),          // the call's result
        h * (2 * dk + dv + 1), // the VJP's per-head accumulators
    ]
    .iter()
    .try_fold(0usize, |a, &b| a.checked_add(b))?;
    let bytes = std::mem::size_of::<T>() as u64;
    let threads = rayon::current_num_threads().max(1);
    let tiles = crate::budget::bytes_of(&[2 * threads, block, block], bytes);
    crate::budget::total(&[crate::budget::bytes_of(&[n, per_token], bytes), tiles])
}

/// Columns per head in a projected tangent: dQ, dK (dot kernel only), dV.
fn head_width<T: Scalar>(layer: &AttentionLayer<T>) -> usize {
    match layer.kernel {
        Kernel::Dot => 2 * layer.dk + layer.dv,
        Kernel::L2 => layer.dk + layer.dv,
    }
}

/// One head's views, what a tile needs to recompute its probabilities.
struct HeadView<'s, T: Scalar> {
    q: MatRef<'s, T>,
    k: MatRef<'s, T>,
    v: MatRef<'s, T>,
    o: MatRef<'s, T>,
    key_norms: Option<&'s [T]>,
    row_max: &'s [T],
    inv_sum: &'s [T],
}

impl<'a, T: Scalar> StreamingLinearization<'a, T> {
    /// Linearises X -> f(X) at `x` (n x d), context masses `weights` (uniform when None) fixed,
    /// visiting keys and queries in tiles of `block` (at least 1; [`DEFAULT_BLOCK`] is a good
    /// choice).
    pub fn new(
        layer: &'a AttentionLayer<T>,
        x: MatRef<'_, T>,
        weights: Option<&[f64]>,
        causal: bool,
        block: usize,
    ) -> Result<Self> {
        check_at_least("streaming block", block, 1)?;
        check_tokens("tokens", x, layer.d_in())?;
        let n = x.nrows();
        crate::budget::check(
            || {
                format!(
                    "streaming attention of {n} tokens with {} heads in tiles of {block} (projections, outputs and per-row statistics)",
                    layer.heads
                )
            },
            memory_estimate(layer, n, block),
        )?;
        let log_w = log_weights::<T>(weights, n)?;
        let q = affine(x, layer.wq.as_ref(), &layer.bq);
        let k = (layer.kernel == Kernel::Dot).then(|| affine(x, layer.wk.as_ref(), &layer.bk));
        let v = affine(x, layer.wv.as_ref(), &layer.bv);
        let (heads, dk, dv) = (layer.heads, layer.dk, layer.dv);
        let s = layer.score_scale::<T>();
        let key_norms = (layer.kernel == Kernel::L2).then(|| {
            Mat::from_fn(n, heads, |j, h| {
                let mut acc = T::of(0.0);
                for c in 0..dk {
                    let x = q[(j, h * dk + c)];
                    acc += x * x;
                }
                acc * s
            })
        });
        let w_in = stack_projections(layer);
        let mut this = Self {
            layer,
            causal,
            block,
            q,
            k,
            v,
            o: Mat::zeros(n, heads * dv),
            output: Mat::zeros(0, 0),
            log_w,
            key_norms,
            row_max: Mat::zeros(n, heads),
            inv_sum: Mat::zeros(n, heads),
            w_in,
        };
        let tasks: Vec<(usize, usize)> = (0..heads)
            .flat_map(|h| (0..n).step_by(block).map(move |q0| (h, q0)))
            .collect();
        let results = tasks
            .par_iter()
            .map_init(
                || Mat::<T>::zeros(block.min(n), block.min(n)),
                |tile, &(h, q0)| this.forward_block(h, q0, tile),
            )
            .collect::<Result<Vec<_>>>()?;
        for (&(h, q0), (acc_t, m, inv)) in tasks.iter().zip(results) {
            for (i, (&mi, &li)) in m.iter().zip(&inv).enumerate() {
                this.row_max[(q0 + i, h)] = mi;
                this.inv_sum[(q0 + i, h)] = li;
                for c in 0..dv {
                    this.o[(q0 + i, h * dv + c)] = acc_t[(c, i)];
                }
            }
        }
        this.output = layer.output(this.o.as_ref());
        Ok(this)
    }

    /// f(X), the layer's output at the linearisation point (n x d_out).
    pub fn output(&self) -> MatRef<'_, T> {
        self.output.as_ref()
    }

    /// The heads' outputs before the output projection (n x H dv).
    pub fn head_outputs(&self) -> MatRef<'_, T> {
        self.o.as_ref()
    }

    pub fn n(&self) -> usize {
        self.q.nrows()
    }

    pub fn d_in(&self) -> usize {
        self.layer.d_in()
    }

    pub fn d_out(&self) -> usize {
        self.layer.d_out()
    }

    pub fn causal(&self) -> bool {
        self.causal
    }

    pub fn block(&self) -> usize {
        self.block
    }

    pub fn layer(&self) -> &AttentionLayer<T> {
        self.layer
    }

    /// J(X) G for a tangent G (n x d); returns n x d_out.
    pub fn jvp(&self, g: MatRef<'_, T>) -> Result<Mat<T>> {
        check_shape("JVP tangent", g, self.n(), self.d_in())?;
        let d_o = self.jvp_heads(g);
        Ok(self.image_output_of(d_o.as_ref()))
    }

    /// J(X)^T Ybar for a cotangent Ybar (n x d_out); returns n x d.
    pub fn vjp(&self, ybar: MatRef<'_, T>) -> Result<Mat<T>> {
        check_shape("VJP cotangent", ybar, self.n(), self.d_out())?;
        Ok(self.vjp_through(ybar, self.layer.wo.as_ref()))
    }

    fn keys(&self) -> &Mat<T> {
        self.k.as_ref().unwrap_or(&self.q)
    }

    fn head_view(&self, h: usize) -> HeadView<'_, T> {
        let (dk, dv) = (self.layer.dk, self.layer.dv);
        HeadView {
            q: self.q.as_ref().subcols(h * dk, dk),
            k: self.keys().as_ref().subcols(h * dk, dk),
            v: self.v.as_ref().subcols(h * dv, dv),
            o: self.o.as_ref().subcols(h * dv, dv),
            key_norms: self.key_norms.as_ref().map(|m| col(m.as_ref(), h)),
            row_max: col(self.row_max.as_ref(), h),
            inv_sum: col(self.inv_sum.as_ref(), h),
        }
    }

    /// The logit scale of the product q_i.k_j: s for the dot kernel, 2s for tied L2, whose
    /// logits s (2 q_i.k_j - |k_j|^2) differ from -s |q_i - k_j|^2 by a constant per query.
    fn bilinear_scale(&self) -> T {
        let s = self.layer.score_scale::<T>();
        match self.layer.kernel {
            Kernel::Dot => s,
            Kernel::L2 => s + s,
        }
    }

    /// Keys visible to the queries q0..q0+len: all, or 0..q0+len under a causal mask.
    fn visible_keys(&self, q0: usize, len: usize) -> usize {
        if self.causal {
            q0 + len
        } else {
            self.n()
        }
    }

    /// Keys k0..k0+len that query qi sees: a prefix of the tile.
    fn visible_in_tile(&self, qi: usize, k0: usize, len: usize) -> usize {
        if self.causal {
            (qi + 1).saturating_sub(k0).min(len)
        } else {
            len
        }
    }

    /// Writes into `tile` (kl x ql) the logits of keys k0.. (rows) for queries q0.. (columns),
    /// log-weights included, in the dense softmax's order of operations (product, key norm,
    /// log-weight) so that both round alike. Entries past a query's visible keys are left as
    /// they are.
    fn logits(&self, hv: &HeadView<'_, T>, k0: usize, q0: usize, mut tile: MatMut<'_, T>) {
        let (kl, ql) = (tile.nrows(), tile.ncols());
        gemm(
            tile.rb_mut(),
            false,
            hv.k.subrows(k0, kl),
            hv.q.subrows(q0, ql).transpose(),
            self.bilinear_scale(),
            Par::Seq,
        );
        let log_w = &self.log_w[k0..k0 + kl];
        let norms = hv.key_norms.map(|n| &n[k0..k0 + kl]);
        for i in 0..ql {
            let vis = self.visible_in_tile(q0 + i, k0, kl);
            add_logit_terms(&mut col_mut(tile.rb_mut(), i)[..vis], norms, log_w);
        }
    }

    /// Writes into `tile` (kl x ql) the probabilities p_ij of keys k0.. for queries q0..,
    /// recomputed from the stored m_i and 1/l_i; masked entries are 0.
    fn probabilities(&self, hv: &HeadView<'_, T>, k0: usize, q0: usize, mut tile: MatMut<'_, T>) {
        self.logits(hv, k0, q0, tile.rb_mut());
        let (kl, ql) = (tile.nrows(), tile.ncols());
        for i in 0..ql {
            let vis = self.visible_in_tile(q0 + i, k0, kl);
            let (m, inv) = (hv.row_max[q0 + i], hv.inv_sum[q0 + i]);
            let col = col_mut(tile.rb_mut(), i);
            let (seen, hidden) = col.split_at_mut(vis);
            normalized_exp(seen, m, inv);
            hidden.fill(T::of(0.0));
        }
    }

    /// The forward pass over the keys for queries q0..q0+block of head h: returns the head's
    /// outputs transposed (dv x ql), m_i and 1/l_i. `tile` is block x block scratch.
    #[allow(clippy::type_complexity)]
    fn forward_block(
        &self,
        h: usize,
        q0: usize,
        tile: &mut Mat<T>,
    ) -> Result<(Mat<T>, Vec<T>, Vec<T>)> {
        let hv = self.head_view(h);
        let n = self.n();
        let ql = self.block.min(n - q0);
        let dv = self.layer.dv;
        let zero = T::of(0.0);
        let mut m = vec![T::neg_infinity(); ql];
        let mut l = vec![zero; ql];
        // Accumulated transposed so that each query's running sum is one contiguous column,
        // rescaled in place when its maximum grows.
        let mut acc_t = Mat::<T>::zeros(dv, ql);
        let nk = self.visible_keys(q0, ql);
        for k0 in (0..nk).step_by(self.block) {
            let kl = self.block.min(nk - k0);
            let mut t = tile.as_mut().submatrix_mut(0, 0, kl, ql);
            self.logits(&hv, k0, q0, t.rb_mut());
            for i in 0..ql {
                let vis = self.visible_in_tile(q0 + i, k0, kl);
                let col = col_mut(t.rb_mut(), i);
                let (seen, hidden) = col.split_at_mut(vis);
                hidden.fill(zero);
                if vis == 0 {
                    continue;
                }
                let mut probe = zero;
                for &x in seen.iter() {
                    probe += x * zero;
                }
                if probe != zero {
                    let j = seen.iter().position(|x| !x.is_finite()).unwrap_or(0);
                    return Err(Error::Numerical(format!(
                        "attention score of query {} and key {} is {}: the scores overflowed (inputs or weights too large for {})",
                        q0 + i,
                        k0 + j,
                        seen[j],
                        T::NAME
                    )));
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

    /// The heads' output tangents dO (n x H dv), J G = dO W_O^T. Tangents are not checked here.
    pub(crate) fn jvp_heads(&self, g: MatRef<'_, T>) -> Mat<T> {
        let layer = self.layer;
        let (heads, dk, dv, n) = (layer.heads, layer.dk, layer.dv, self.n());
        let width = head_width(layer);
        let mut projected = Mat::<T>::zeros(n, heads * width);
        gemm_blocks_rayon(projected.as_mut(), g, self.w_in.as_ref().transpose());
        let sc = self.bilinear_scale();
        // Tied L2: the tangent of -s |q_j|^2 is -2s q_j.dq_j, the same for every query.
        let shifts: Option<Mat<T>> = (layer.kernel == Kernel::L2).then(|| {
            Mat::from_fn(n, heads, |j, h| {
                let mut acc = T::of(0.0);
                for c in 0..dk {
                    acc += self.q[(j, h * dk + c)] * projected[(j, h * width + c)];
                }
                acc * sc
            })
        });
        let tasks: Vec<(usize, usize)> = (0..heads)
            .flat_map(|h| (0..n).step_by(self.block).map(move |q0| (h, q0)))
            .collect();
        let tile_len = self.block.min(n);
        let blocks: Vec<Mat<T>> = tasks
            .par_iter()
            .map_init(
                || {
                    (
                        Mat::<T>::zeros(tile_len, tile_len),
                        Mat::<T>::zeros(tile_len, tile_len),
                    )
                },
                |(p_tile, s_tile), &(h, q0)| {
                    let cols = projected.as_ref().subcols(h * width, width);
                    let dq = cols.subcols(0, dk);
                    let dkey = match layer.kernel {
                        Kernel::Dot => cols.subcols(dk, dk),
                        Kernel::L2 => dq,
                    };
                    let dvals = cols.subcols(width - dv, dv);
                    let shift = shifts.as_ref().map(|s| col(s.as_ref(), h));
                    self.jvp_block(h, q0, (dq, dkey, dvals), shift, p_tile, s_tile)
                },
            )
            .collect();
        let mut d_o = Mat::<T>::zeros(n, heads * dv);
        for (&(h, q0), blk) in tasks.iter().zip(blocks) {
            d_o.as_mut()
                .submatrix_mut(q0, h * dv, blk.ncols(), dv)
                .copy_from(blk.transpose());
        }
        d_o
    }

    /// dO^T (dv x ql) of head h for queries q0..: with p the probabilities and sdot the logit
    /// tangents, dO_i = sum_j p_ij sdot_ij v_j - (sum_j p_ij sdot_ij) o_i + sum_j p_ij dv_j, all
    /// three sums accumulated in one pass over the keys (the mean of sdot under p_i is only
    /// known at the end, and o_i is stored).
    fn jvp_block(
        &self,
        h: usize,
        q0: usize,
        (dq, dkey, dvals): (MatRef<'_, T>, MatRef<'_, T>, MatRef<'_, T>),
        shift: Option<&[T]>,
        p_tile: &mut Mat<T>,
        s_tile: &mut Mat<T>,
    ) -> Mat<T> {
        let hv = self.head_view(h);
        let n = self.n();
        let ql = self.block.min(n - q0);
        let dv = self.layer.dv;
        let zero = T::of(0.0);
        let sc = self.bilinear_scale();
        let mut out_t = Mat::<T>::zeros(dv, ql);
        let mut means = vec![zero; ql];
        let nk = self.visible_keys(q0, ql);
        for k0 in (0..nk).step_by(self.block) {
            let kl = self.block.min(nk - k0);
            let mut p = p_tile.as_mut().submatrix_mut(0, 0, kl, ql);
            self.probabilities(&hv, k0, q0, p.rb_mut());
            // sdot^T = sc (K dQ^T + dK Q^T) on the tile.
            let mut sd = s_tile.as_mut().submatrix_mut(0, 0, kl, ql);
            gemm(
                sd.rb_mut(),
                false,
                hv.k.subrows(k0, kl),
                dq.subrows(q0, ql).transpose(),
                sc,
                Par::Seq,
            );
            gemm(
                sd.rb_mut(),
                true,
                dkey.subrows(k0, kl),
                hv.q.subrows(q0, ql).transpose(),
                sc,
                Par::Seq,
            );
            for (i, mean) in means.iter_mut().enumerate() {
                let pc = col(p.as_ref(), i);
                let sdc = col_mut(sd.rb_mut(), i);
                if let Some(shift) = shift {
                    for (x, &r) in sdc.iter_mut().zip(&shift[k0..k0 + kl]) {
                        *x -= r;
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

    /// J^T of the heads' output cotangents Obar = Y W: with (Ybar, W_O) it is J^T Ybar; with
    /// (dO, W_O^T W_O), dO from `jvp_heads`, it is J^T J G (Lanczos).
    pub(crate) fn vjp_through(&self, y: MatRef<'_, T>, w: MatRef<'_, T>) -> Mat<T> {
        let layer = self.layer;
        let (heads, dv, n) = (layer.heads, layer.dv, self.n());
        let width = head_width(layer);
        let mut obar = Mat::<T>::zeros(n, heads * dv);
        gemm_blocks_rayon(obar.as_mut(), y, w);
        let mut dbar = Mat::<T>::zeros(n, heads * width);
        // One task per head: the key and value cotangents sum over every block of queries, so
        // a head's blocks run in sequence on its own accumulators.
        dbar.as_mut()
            .par_col_chunks_mut(width)
            .enumerate()
            .for_each(|(h, cot)| {
                self.vjp_head(h, obar.as_ref().subcols(h * dv, dv), cot);
            });
        let mut xbar = Mat::<T>::zeros(n, self.d_in());
        gemm_blocks_rayon(xbar.as_mut(), dbar.as_ref(), self.w_in.as_ref());
        xbar
    }

    /// FlashAttention-2's backward for head h, written into `cot` (n x width: Qbar, Kbar (dot
    /// only), Vbar). Per tile: Vbar += P Obar, dP = V Obar^T, Lbar = P o (dP - D) with the row
    /// term D_i = <o_i, obar_i> (= <p_i, dP_i>, known before the pass), then Qbar += sc Lbar^T K
    /// and Kbar += sc Lbar Q.
    fn vjp_head(&self, h: usize, ob: MatRef<'_, T>, mut cot: MatMut<'_, T>) {
        let hv = self.head_view(h);
        let layer = self.layer;
        let (dk, dv, n) = (layer.dk, layer.dv, self.n());
        let width = cot.ncols();
        let zero = T::of(0.0);
        let sc = self.bilinear_scale();
        let tile_len = self.block.min(n);
        let mut p_tile = Mat::<T>::zeros(tile_len, tile_len);
        let mut l_tile = Mat::<T>::zeros(tile_len, tile_len);
        // The key part lands in Kbar's columns for the dot kernel; for tied L2 the keys are the
        // queries, and it is added to Qbar at the end.
        let mut key_part = Mat::<T>::zeros(if layer.kernel == Kernel::L2 { n } else { 0 }, dk);
        let mut colsum = vec![zero; if layer.kernel == Kernel::L2 { n } else { 0 }];
        let mut d_row = vec![zero; tile_len];
        for q0 in (0..n).step_by(self.block) {
            let ql = self.block.min(n - q0);
            let ob_blk = ob.subrows(q0, ql);
            let d_row = &mut d_row[..ql];
            for (i, d) in d_row.iter_mut().enumerate() {
                let mut acc = zero;
                for c in 0..dv {
                    acc += hv.o[(q0 + i, c)] * ob_blk[(i, c)];
                }
                *d = acc;
            }
            let nk = self.visible_keys(q0, ql);
            for k0 in (0..nk).step_by(self.block) {
                let kl = self.block.min(nk - k0);
                let mut p = p_tile.as_mut().submatrix_mut(0, 0, kl, ql);
                self.probabilities(&hv, k0, q0, p.rb_mut());
                let mut lbar = l_tile.as_mut().submatrix_mut(0, 0, kl, ql);
                vjp_tile_logits(
                    cot.rb_mut().submatrix_mut(k0, width - dv, kl, dv),
                    lbar.rb_mut(),
                    p.as_ref(),
                    hv.v.subrows(k0, kl),
                    ob_blk,
                    d_row,
                );
                gemm(
                    cot.rb_mut().submatrix_mut(q0, 0, ql, dk),
                    true,
                    lbar.as_ref().transpose(),
                    hv.k.subrows(k0, kl),
                    sc,
                    Par::Seq,
                );
                match layer.kernel {
                    Kernel::Dot => gemm(
                        cot.rb_mut().submatrix_mut(k0, dk, kl, dk),
                        true,
                        lbar.as_ref(),
                        hv.q.subrows(q0, ql),
                        sc,
                        Par::Seq,
                    ),
                    Kernel::L2 => {
                        gemm(
                            key_part.as_mut().subrows_mut(k0, kl),
                            true,
                            lbar.as_ref(),
                            hv.q.subrows(q0, ql),
                            sc,
                            Par::Seq,
                        );
                        for i in 0..ql {
                            let lc = col(lbar.as_ref(), i);
                            for (c, &x) in colsum[k0..k0 + kl].iter_mut().zip(lc) {
                                *c += x;
                            }
                        }
                    }
                }
            }
        }
        if layer.kernel == Kernel::L2 {
            // The key-only logit term -s |q_j|^2 has gradient -sc q_j per unit of Lbar's column
            // sum.
            for c in 0..dk {
                for (j, &cs) in colsum.iter().enumerate() {
                    cot[(j, c)] += key_part[(j, c)] - sc * cs * hv.q[(j, c)];
                }
            }
        }
    }

    /// J u from the heads' output tangents dO: dO W_O^T.
    fn image_output_of(&self, d_o: MatRef<'_, T>) -> Mat<T> {
        let mut jv = Mat::<T>::zeros(d_o.nrows(), self.d_out());
        gemm_blocks_rayon(jv.as_mut(), d_o, self.layer.wo.as_ref().transpose());
        jv
    }
}

/// Per head [W_Q^h; W_K^h; W_V^h] (for L2 [W_Q^h; W_V^h]), heads one after another.
fn stack_projections<T: Scalar>(layer: &AttentionLayer<T>) -> Mat<T> {
    let (dk, dv, d) = (layer.dk, layer.dv, layer.d_in());
    let mut blocks: Vec<(&Mat<T>, usize)> = vec![(&layer.wq, dk)];
    if layer.kernel == Kernel::Dot {
        blocks.push((&layer.wk, dk));
    }
    blocks.push((&layer.wv, dv));
    let mut w_in = Mat::<T>::zeros(layer.heads * head_width(layer), d);
    let mut r0 = 0;
    for h in 0..layer.heads {
        for &(w, rows) in &blocks {
            w_in.as_mut()
                .submatrix_mut(r0, 0, rows, d)
                .copy_from(w.as_ref().submatrix(h * rows, 0, rows, d));
            r0 += rows;
        }
    }
    w_in
}

impl<T: Scalar> LinearizedMap<T> for StreamingLinearization<'_, T> {
    /// W_O^T W_O (H dv x H dv).
    type NormalData = Mat<T>;

    fn n(&self) -> usize {
        StreamingLinearization::n(self)
    }

    fn d_in(&self) -> usize {
        StreamingLinearization::d_in(self)
    }

    fn d_out(&self) -> usize {
        StreamingLinearization::d_out(self)
    }

    fn jvp(&self, t: MatRef<'_, T>) -> Result<Mat<T>> {
        StreamingLinearization::jvp(self, t)
    }

    fn vjp(&self, y: MatRef<'_, T>) -> Result<Mat<T>> {
        StreamingLinearization::vjp(self, y)
    }

    fn normal_data(&self) -> Mat<T> {
        let wo = self.layer.wo.as_ref();
        let hdv = wo.ncols();
        let mut g = Mat::<T>::zeros(hdv, hdv);
        gemm_blocks_rayon(g.as_mut(), wo.transpose(), wo);
        g
    }

    /// The image is dO (n x H dv), J u = dO W_O^T.
    fn normal_step(&self, gram: &Mat<T>, u: MatRef<'_, T>) -> Result<(Mat<T>, Mat<T>)> {
        check_dims(
            "normal step input",
            u.nrows(),
            u.ncols(),
            self.n(),
            self.d_in(),
        )?;
        let d_o = self.jvp_heads(u);
        let w = self.vjp_through(d_o.as_ref(), gram.as_ref());
        Ok((d_o, w))
    }

    fn image_output(&self, d_o: MatRef<'_, T>) -> Mat<T> {
        self.image_output_of(d_o)
    }
}
