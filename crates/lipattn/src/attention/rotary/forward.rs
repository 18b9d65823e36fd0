//! The forward pass: projections, qk-norm, rotation, per-head scores with soft-capping and the
//! causal (windowed) mask, softmax, values and output projection.

use super::layer::RotaryAttention;
use super::rope::RopeTable;
use crate::attention::forward::{affine, check_tokens, gemm, par_for};
use crate::attention::rms::{normalise, NormState};
use crate::attention::softmax::softmax_columns;
use crate::error::{Error, Result};
use crate::scalar::Scalar;
use faer::reborrow::ReborrowMut;
use faer::{Mat, MatRef, Par};
use std::ops::Range;

/// Queries per block when the visible band of keys is formed: the band's staircase costs at most
/// one block's worth of masked entries per row of blocks.
pub(crate) const QUERY_BLOCK: usize = 64;
use rayon::prelude::*;

/// Everything the derivatives need at one input X.
pub(crate) struct RotaryState<T: Scalar = f64> {
    pub table: RopeTable<T>,
    /// The qk-norm intermediates of the queries and keys (with a qk-norm only).
    pub q_norm: Option<NormState<T>>,
    pub k_norm: Option<NormState<T>>,
    /// Rotated (and normalised) queries, n x H head_dim.
    pub q: Mat<T>,
    /// Rotated (and normalised) keys, n x kv_heads head_dim.
    pub k: Mat<T>,
    /// Values, n x kv_heads head_dim.
    pub v: Mat<T>,
    /// P_h^T (keys x queries) per query head on its visible band, masked entries exactly 0;
    /// empty unless the state was formed for the derivatives.
    pub p_t: Vec<Band<T>>,
    /// tanh(s_ij / cap) (keys x queries) per query head on the band, with a softcap only; 0
    /// where masked.
    pub tanh_t: Vec<Band<T>>,
    /// Concatenated head outputs P_h V_{g(h)}, n x H head_dim.
    pub o: Mat<T>,
}

/// The token-local intermediates at X: rope table, qk-norm states, rotated (and normalised)
/// queries and keys (n x H head_dim, n x kv_heads head_dim) and values.
pub(crate) struct TokenStage<T: Scalar> {
    pub table: RopeTable<T>,
    pub q_norm: Option<NormState<T>>,
    pub k_norm: Option<NormState<T>>,
    pub q: Mat<T>,
    pub k: Mat<T>,
    pub v: Mat<T>,
}

/// One head's keys x queries values on the visible band, stored by blocks of queries: block b
/// (the b-th of `RotaryAttention::bands`, queries q0..q0 + len) is keys x len for the keys
/// k0..q0 + len that any of its queries sees. About n^2 / 2 entries under the causal mask and
/// n (w + QUERY_BLOCK) with a window w, instead of n^2.
pub(crate) struct Band<T: Scalar = f64> {
    blocks: Vec<Mat<T>>,
}

impl<T: Scalar> Band<T> {
    pub fn block(&self, b: usize) -> &Mat<T> {
        &self.blocks[b]
    }
}

impl<T: Scalar> RotaryAttention<T> {
    /// The query blocks of the banded products, each with the keys any of its queries sees.
    pub(crate) fn bands(
        &self,
        n: usize,
    ) -> impl Iterator<Item = (usize, usize, Range<usize>)> + '_ {
        (0..n).step_by(QUERY_BLOCK).map(move |q0| {
            let len = QUERY_BLOCK.min(n - q0);
            (q0, len, self.visible(q0).start..q0 + len)
        })
    }

    /// Entries of one head's `Band` at n tokens.
    pub(crate) fn band_entries(&self, n: usize) -> usize {
        self.bands(n).map(|(_, len, keys)| len * keys.len()).sum()
    }

    /// Keys visible to query i: lo..=i.
    pub(crate) fn visible(&self, i: usize) -> std::ops::Range<usize> {
        let lo = self.window.map_or(0, |w| (i + 1).saturating_sub(w));
        lo..i + 1
    }

    /// The kv head read by query head h.
    pub(crate) fn kv_of(&self, h: usize) -> usize {
        h / self.group()
    }

    /// The intermediates at X. With `keep`, the probabilities (and tanh values) of every head
    /// are stored for the derivatives; without, each head's are dropped once its output is
    /// formed, so that the forward pass holds the n x n matrices of the heads in flight only.
    pub(crate) fn state(&self, x: MatRef<'_, T>, keep: bool) -> Result<RotaryState<T>> {
        self.state_with(x, keep, None)
    }

    /// Bytes of the state the forward pass at n tokens budgets (None: beyond u64): per head,
    /// P_h^T on the visible band (and the tanh values with a softcap), for every head when the
    /// state is kept for derivatives (`keep`) and for one a thread otherwise, beside the
    /// projections and head outputs. The formula of the budget check, and of `analyze`'s
    /// estimate.
    pub fn state_bytes(&self, n: usize, keep: bool) -> Option<u64> {
        let per_head = 1 + usize::from(self.softcap.is_some());
        let in_memory = if keep {
            self.heads
        } else {
            self.heads.min(rayon::current_num_threads())
        };
        let widths = 2 * (self.heads + self.kv_heads) * self.head_dim;
        crate::budget::total(&[
            crate::budget::bytes_of(
                &[per_head, in_memory, self.band_entries(n)],
                std::mem::size_of::<T>() as u64,
            ),
            crate::budget::bytes_of(&[n, widths], std::mem::size_of::<T>() as u64),
        ])
    }

    /// The budget check of the state at n tokens (`state_bytes`), made before any of it is
    /// allocated: per head, P_h^T on the band (the scores are formed in place) and, with a
    /// softcap, the tanh values; beside them the projections and head outputs.
    pub fn check_state_budget(&self, n: usize, keep: bool) -> Result<()> {
        crate::budget::check(
            || {
                format!(
                    "rotary attention of {n} tokens with {} heads (the score matrices on the visible band)",
                    self.heads
                )
            },
            self.state_bytes(n, keep),
        )
    }

    /// `state`, projecting X with `w_in_t` = `stacked_projections_t()` when given: one product
    /// reading its weight operand column-major, as the JVP does (`jvp_heads_with`), instead of
    /// three reading the weights transposed.
    pub(crate) fn state_with(
        &self,
        x: MatRef<'_, T>,
        keep: bool,
        w_in_t: Option<&Mat<T>>,
    ) -> Result<RotaryState<T>> {
        self.check_shapes()?;
        check_tokens("tokens", x, self.d_in())?;
        let n = x.nrows();
        self.check_state_budget(n, keep)?;
        crate::cancel::check()?;
        let TokenStage {
            table,
            q_norm,
            k_norm,
            q,
            k,
            v,
        } = self.token_stage(x, w_in_t)?;
        let hd = self.head_dim;
        crate::cancel::check()?;
        let mut o = Mat::<T>::zeros(n, self.heads * hd);
        let per_head: Vec<(Band<T>, Option<Band<T>>)> = o
            .as_mut()
            .par_col_chunks_mut(hd)
            .enumerate()
            .map(|(h, oh)| {
                let g = self.kv_of(h);
                let (p_t, tanh_t) = self.head_probabilities_t(
                    h,
                    q.as_ref().subcols(h * hd, hd),
                    k.as_ref().subcols(g * hd, hd),
                )?;
                let mut oh = oh;
                for (b, (q0, len, keys)) in self.bands(n).enumerate() {
                    gemm(
                        oh.rb_mut().subrows_mut(q0, len),
                        false,
                        p_t.block(b).transpose(),
                        v.as_ref().submatrix(keys.start, g * hd, keys.len(), hd),
                        T::of(1.0),
                        Par::Seq,
                    );
                }
                Ok(if keep {
                    (p_t, tanh_t)
                } else {
                    (Band { blocks: vec![] }, None)
                })
            })
            .collect::<Result<_>>()?;
        let (p_t, tanh_t): (Vec<_>, Vec<_>) = if keep {
            per_head.into_iter().unzip()
        } else {
            (Vec::new(), Vec::new())
        };
        let tanh_t = tanh_t.into_iter().flatten().collect();
        Ok(RotaryState {
            table,
            q_norm,
            k_norm,
            q,
            k,
            v,
            p_t,
            tanh_t,
            o,
        })
    }

    /// The token-local stages at X (positions 0..n): projections, qk-norm and rotation, shared
    /// by the dense state and the streaming linearisation (`super::streaming`). No budget check:
    /// the callers check their own totals first.
    pub(crate) fn token_stage(
        &self,
        x: MatRef<'_, T>,
        w_in_t: Option<&Mat<T>>,
    ) -> Result<TokenStage<T>> {
        let n = x.nrows();
        let table = self.rope.table(n)?;
        let hd = self.head_dim;
        let (mut q, mut k, v) = match w_in_t {
            Some(w) => self.stacked_affine(x, w),
            None => (
                affine(x, self.wq.as_ref(), &self.bq),
                affine(x, self.wk.as_ref(), &self.bk),
                affine(x, self.wv.as_ref(), &self.bv),
            ),
        };
        let (q_norm, k_norm) = match &self.qk_norm {
            Some(norm) => {
                let (gq, gk) = norm.gains();
                let (gq, gk) = (to_t::<T>(&gq), to_t::<T>(&gk));
                (
                    Some(normalise(
                        &mut q,
                        hd,
                        &gq,
                        norm.eps,
                        "qk_norm of the queries",
                    )?),
                    Some(normalise(&mut k, hd, &gk, norm.eps, "qk_norm of the keys")?),
                )
            }
            None => (None, None),
        };
        table.rotate(q.as_mut(), hd, false);
        table.rotate(k.as_mut(), hd, false);
        Ok(TokenStage {
            table,
            q_norm,
            k_norm,
            q,
            k,
            v,
        })
    }

    /// The queries, keys and values x W^T + b from the stacked product x [W_Q; W_K; W_V]^T, the
    /// biases added after the product as `affine` adds them.
    fn stacked_affine(&self, x: MatRef<'_, T>, w_in_t: &Mat<T>) -> (Mat<T>, Mat<T>, Mat<T>) {
        let mut all = Mat::<T>::zeros(x.nrows(), w_in_t.ncols());
        gemm(
            all.as_mut(),
            false,
            x,
            w_in_t.as_ref(),
            T::of(1.0),
            par_for(x.nrows(), w_in_t.ncols(), x.ncols()),
        );
        let (q, k) = (self.wq.nrows(), self.wk.nrows());
        let part = |c0: usize, b: &[T]| {
            let mut m = all.as_ref().subcols(c0, b.len()).to_owned();
            for (j, &bj) in b.iter().enumerate() {
                for v in m.col_as_slice_mut(j) {
                    *v += bj;
                }
            }
            m
        };
        (part(0, &self.bq), part(q, &self.bk), part(q + k, &self.bv))
    }

    /// P_h^T for one head on its visible band from its rotated queries and its kv head's rotated
    /// keys, and the tanh(s / cap) values when soft-capped. Only the band is formed: about half
    /// the products under the causal mask, and O(n w) instead of O(n^2) with a window w.
    fn head_probabilities_t(
        &self,
        h: usize,
        q: MatRef<'_, T>,
        k: MatRef<'_, T>,
    ) -> Result<(Band<T>, Option<Band<T>>)> {
        let n = q.nrows();
        let zero = T::of(0.0);
        let zeros = vec![zero; n];
        let mut p_blocks = Vec::new();
        let mut t_blocks = Vec::new();
        for (q0, len, keys) in self.bands(n) {
            let mut lt = Mat::<T>::zeros(keys.len(), len);
            gemm(
                lt.as_mut(),
                false,
                k.subrows(keys.start, keys.len()),
                q.subrows(q0, len).transpose(),
                self.score_scale(),
                Par::Seq,
            );
            let mut tanh_t = self.softcap.map(|_| Mat::<T>::zeros(keys.len(), len));
            for c in 0..len {
                let i = q0 + c;
                let visible = self.visible(i);
                let rows = visible.start - keys.start..visible.end - keys.start;
                let col = lt.col_as_slice_mut(c);
                // Checked here rather than left to the softmax: a capped overflow would be
                // silently finite, and the softmax below sees only the visible part of a column.
                if let Some(r) = rows.clone().find(|&r| !col[r].is_finite()) {
                    return Err(Error::Numerical(format!(
                        "attention score of head {h}, query {i} and key {} is {}: the scores overflowed (inputs or weights too large for {})",
                        keys.start + r,
                        col[r],
                        T::NAME
                    )));
                }
                if let (Some(cap), Some(t)) = (self.softcap, tanh_t.as_mut()) {
                    let tc = t.col_as_slice_mut(c);
                    for r in rows.clone() {
                        // tanh in f64 (exact for f64 scores): Scalar has no tanh, and the
                        // softcap's rounding is no larger than T's own.
                        let th = (col[r].f64() / cap).tanh();
                        tc[r] = T::of(th);
                        col[r] = T::of(cap * th);
                    }
                }
                col[..rows.start].fill(zero);
                col[rows.end..].fill(zero);
                softmax_columns(
                    lt.as_mut().submatrix_mut(rows.start, c, rows.len(), 1),
                    &zeros[..rows.len()],
                    false,
                )?;
            }
            p_blocks.push(lt);
            t_blocks.extend(tanh_t);
        }
        let tanh = self.softcap.map(|_| Band { blocks: t_blocks });
        Ok((Band { blocks: p_blocks }, tanh))
    }

    /// The sublayer on a token sequence x (n x d, positions 0..n, causal): n x d_out.
    pub fn forward(&self, x: MatRef<'_, T>) -> Result<Mat<T>> {
        let st = self.state(x, false)?;
        Ok(affine(st.o.as_ref(), self.wo.as_ref(), &self.bo))
    }
}

/// A vector of f64 parameters rounded to T.
pub(crate) fn to_t<T: Scalar>(v: &[f64]) -> Vec<T> {
    v.iter().map(|&x| T::of(x)).collect()
}
