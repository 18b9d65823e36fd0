//! The forward pass: projections, qk-norm, rotation, per-head scores with soft-capping and the
//! causal (windowed) mask, softmax, values and output projection.

use super::layer::RotaryAttention;
use super::rope::RopeTable;
use crate::attention::forward::{affine, check_tokens, gemm};
use crate::attention::rms::{normalise, NormState};
use crate::attention::softmax::softmax_columns;
use crate::error::{Error, Result};
use faer::reborrow::ReborrowMut;
use faer::{Mat, MatRef, Par};

/// Queries per block when the visible band of keys is formed: the band's staircase costs at most
/// one block's worth of masked entries per row of blocks.
pub(crate) const QUERY_BLOCK: usize = 64;
use rayon::prelude::*;

/// Everything the derivatives need at one input X.
pub(crate) struct RotaryState {
    pub table: RopeTable,
    /// The qk-norm intermediates of the queries and keys (with a qk-norm only).
    pub q_norm: Option<NormState>,
    pub k_norm: Option<NormState>,
    /// Rotated (and normalised) queries, n x H head_dim.
    pub q: Mat<f64>,
    /// Rotated (and normalised) keys, n x kv_heads head_dim.
    pub k: Mat<f64>,
    /// Values, n x kv_heads head_dim.
    pub v: Mat<f64>,
    /// P_h^T (keys x queries) per query head, masked entries exactly 0; empty unless the
    /// state was formed for the derivatives.
    pub p_t: Vec<Mat<f64>>,
    /// tanh(s_ij / cap) (keys x queries) per query head, with a softcap only; 0 where masked.
    pub tanh_t: Vec<Mat<f64>>,
    /// Concatenated head outputs P_h V_{g(h)}, n x H head_dim.
    pub o: Mat<f64>,
}

impl RotaryAttention {
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
    pub(crate) fn state(&self, x: MatRef<'_, f64>, keep: bool) -> Result<RotaryState> {
        self.check_shapes()?;
        check_tokens("tokens", x, self.d_in())?;
        let n = x.nrows();
        // P_h^T, tanh with a softcap, and the scores being formed.
        let per_head = 2 + usize::from(self.softcap.is_some());
        let in_memory = if keep {
            self.heads
        } else {
            self.heads.min(rayon::current_num_threads())
        };
        crate::budget::check(
            || {
                format!(
                    "rotary attention of {n} tokens with {} heads (the score matrices)",
                    self.heads
                )
            },
            crate::budget::bytes_of(&[per_head, in_memory, n, n], 8),
        )?;
        crate::cancel::check()?;
        let table = self.rope.table(n)?;
        let hd = self.head_dim;
        let mut q = affine(x, self.wq.as_ref(), &self.bq);
        let mut k = affine(x, self.wk.as_ref(), &self.bk);
        let v = affine(x, self.wv.as_ref(), &self.bv);
        let (q_norm, k_norm) = match &self.qk_norm {
            Some(norm) => {
                let (gq, gk) = norm.gains();
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
        crate::cancel::check()?;
        let mut o = Mat::<f64>::zeros(n, self.heads * hd);
        let per_head: Vec<(Mat<f64>, Option<Mat<f64>>)> = o
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
                for q0 in (0..n).step_by(QUERY_BLOCK) {
                    let len = QUERY_BLOCK.min(n - q0);
                    let keys = self.visible(q0).start..q0 + len;
                    gemm(
                        oh.rb_mut().subrows_mut(q0, len),
                        false,
                        p_t.submatrix(keys.start, q0, keys.len(), len).transpose(),
                        v.as_ref().submatrix(keys.start, g * hd, keys.len(), hd),
                        1.0,
                        Par::Seq,
                    );
                }
                Ok(if keep {
                    (p_t, tanh_t)
                } else {
                    (Mat::zeros(0, 0), None)
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

    /// P_h^T for one head from its rotated queries and its kv head's rotated keys, and the
    /// tanh(s / cap) values when soft-capped.
    fn head_probabilities_t(
        &self,
        h: usize,
        q: MatRef<'_, f64>,
        k: MatRef<'_, f64>,
    ) -> Result<(Mat<f64>, Option<Mat<f64>>)> {
        let n = q.nrows();
        let mut lt = Mat::<f64>::zeros(n, n);
        // Only the visible band is formed: about half the products under the causal mask, and
        // O(n w) instead of O(n^2) with a window w. The rest stays 0.
        for q0 in (0..n).step_by(QUERY_BLOCK) {
            let len = QUERY_BLOCK.min(n - q0);
            let keys = self.visible(q0).start..q0 + len;
            gemm(
                lt.as_mut().submatrix_mut(keys.start, q0, keys.len(), len),
                false,
                k.subrows(keys.start, keys.len()),
                q.subrows(q0, len).transpose(),
                self.score_scale(),
                Par::Seq,
            );
        }
        let mut tanh_t = self.softcap.map(|_| Mat::<f64>::zeros(n, n));
        for i in 0..n {
            let visible = self.visible(i);
            let col = lt.col_as_slice_mut(i);
            // Checked here rather than left to the softmax: a capped overflow would be silently
            // finite, and the windowed softmax below sees only part of each column.
            if let Some(j) = visible.clone().find(|&j| !col[j].is_finite()) {
                return Err(Error::Numerical(format!(
                    "attention score of head {h}, query {i} and key {j} is {}: the scores overflowed (inputs or weights too large for f64)",
                    col[j]
                )));
            }
            if let (Some(cap), Some(t)) = (self.softcap, tanh_t.as_mut()) {
                let tc = t.col_as_slice_mut(i);
                for j in visible {
                    let th = (col[j] / cap).tanh();
                    tc[j] = th;
                    col[j] = cap * th;
                }
            }
        }
        let zeros = vec![0.0; n];
        // A window at least n long masks nothing beyond the causal mask.
        if self.window.is_none_or(|w| w >= n) {
            softmax_columns(lt.as_mut(), &zeros, true)?;
        } else {
            for i in 0..n {
                let visible = self.visible(i);
                let len = visible.len();
                softmax_columns(
                    lt.as_mut().submatrix_mut(visible.start, i, len, 1),
                    &zeros[..len],
                    false,
                )?;
                let col = lt.col_as_slice_mut(i);
                col[..visible.start].fill(0.0);
                col[visible.end..].fill(0.0);
            }
        }
        Ok((lt, tanh_t))
    }

    /// The sublayer on a token sequence x (n x d, positions 0..n, causal): n x d_out.
    pub fn forward(&self, x: MatRef<'_, f64>) -> Result<Mat<f64>> {
        let st = self.state(x, false)?;
        Ok(affine(st.o.as_ref(), self.wo.as_ref(), &self.bo))
    }
}
