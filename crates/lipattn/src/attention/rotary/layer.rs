//! The weights of one rotary attention sublayer and their validation.

use super::rope::Rope;
use crate::error::{
    check_at_least, check_finite, check_index, check_nonnegative, check_positive, Error, Result,
};
use crate::scalar::Scalar;
use faer::reborrow::ReborrowMut;
use faer::Mat;
use rayon::prelude::*;

/// Columns per task of `RotaryAttention::cast`.
const CAST_STRIP: usize = 64;

/// RMS normalisation of each head's coordinates of q and of k, before the rotation (Qwen3):
/// q <- g ⊙ q / sqrt(mean(q^2) + eps), with g = w or (Gemma-style) 1 + w.
#[derive(Clone, Debug, PartialEq)]
pub struct QkNorm {
    pub q_weight: Vec<f64>,
    pub k_weight: Vec<f64>,
    pub eps: f64,
    pub unit_offset: bool,
}

impl QkNorm {
    /// The gains g of the query norm and the key norm.
    pub(crate) fn gains(&self) -> (Vec<f64>, Vec<f64>) {
        let g = |w: &[f64]| -> Vec<f64> {
            w.iter()
                .map(|&w| if self.unit_offset { 1.0 + w } else { w })
                .collect()
        };
        (g(&self.q_weight), g(&self.k_weight))
    }
}

/// Causal multi-head attention with rotary positions, grouped-query heads, optional per-head RMS
/// normalisation of q and k, logit soft-capping and a sliding window: the attention sublayer of
/// the Llama lineage (docs/rotary.md). Linear maps act on rows as y = x W^T + b.
#[derive(Clone, Debug)]
///
/// T is the arithmetic of the forward pass and derivatives; the checkpoint loaders and the
/// bounds build f64 layers, and `cast` rounds one to f32 for the fast local constant.
pub struct RotaryAttention<T: Scalar = f64> {
    /// Query heads H.
    pub heads: usize,
    /// Key/value heads; query head h reads kv head h / (H / kv_heads).
    pub kv_heads: usize,
    pub head_dim: usize,
    /// (H head_dim) x d.
    pub wq: Mat<T>,
    pub bq: Vec<T>,
    /// (kv_heads head_dim) x d.
    pub wk: Mat<T>,
    pub bk: Vec<T>,
    /// (kv_heads head_dim) x d.
    pub wv: Mat<T>,
    pub bv: Vec<T>,
    /// d_out x (H head_dim).
    pub wo: Mat<T>,
    pub bo: Vec<T>,
    /// Scores are divided by sqrt(score_divisor_sq): head_dim, or Gemma 2's query_pre_attn_scalar.
    pub score_divisor_sq: usize,
    pub rope: Rope,
    pub qk_norm: Option<QkNorm>,
    /// Logit soft-capping s -> cap tanh(s / cap), after scaling, before masking.
    pub softcap: Option<f64>,
    /// Query i sees keys j with j <= i and i - j < window.
    pub window: Option<usize>,
}

impl RotaryAttention {
    /// Validates every shape, every weight's finiteness, the head grouping, the rope parameters
    /// and the optional parts, naming the offending field.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        heads: usize,
        kv_heads: usize,
        head_dim: usize,
        wq: Mat<f64>,
        bq: Vec<f64>,
        wk: Mat<f64>,
        bk: Vec<f64>,
        wv: Mat<f64>,
        bv: Vec<f64>,
        wo: Mat<f64>,
        bo: Vec<f64>,
        score_divisor_sq: usize,
        rope: Rope,
        qk_norm: Option<QkNorm>,
        softcap: Option<f64>,
        window: Option<usize>,
    ) -> Result<Self> {
        let layer = Self {
            heads,
            kv_heads,
            head_dim,
            wq,
            bq,
            wk,
            bk,
            wv,
            bv,
            wo,
            bo,
            score_divisor_sq,
            rope,
            qk_norm,
            softcap,
            window,
        };
        layer.check_shapes()?;
        for (name, m) in [
            ("wq", &layer.wq),
            ("wk", &layer.wk),
            ("wv", &layer.wv),
            ("wo", &layer.wo),
        ] {
            check_finite_mat(name, m)?;
        }
        for (name, b) in [
            ("bq", &layer.bq),
            ("bk", &layer.bk),
            ("bv", &layer.bv),
            ("bo", &layer.bo),
        ] {
            check_finite(name, b.iter().copied())?;
        }
        if let Some(norm) = &layer.qk_norm {
            check_finite("qk_norm q_weight", norm.q_weight.iter().copied())?;
            check_finite("qk_norm k_weight", norm.k_weight.iter().copied())?;
            check_nonnegative("qk_norm eps", norm.eps)?;
        }
        if let Some(cap) = layer.softcap {
            check_positive("softcap", cap)?;
        }
        if let Some(w) = layer.window {
            check_at_least("window", w, 1)?;
        }
        layer.rope.validate()?;
        Ok(layer)
    }

    /// The same layer with every weight rounded to U (rounded once from f64), the matrices by
    /// strips of columns on the rayon pool.
    pub fn cast<U: Scalar>(&self) -> RotaryAttention<U> {
        let m = |w: &Mat<f64>| {
            let mut out = Mat::<U>::zeros(w.nrows(), w.ncols());
            out.par_col_chunks_mut(CAST_STRIP)
                .enumerate()
                .for_each(|(c, mut strip)| {
                    for j in 0..strip.ncols() {
                        let col = w.col_as_slice(c * CAST_STRIP + j);
                        for (o, &x) in strip.rb_mut().col_mut(j).iter_mut().zip(col) {
                            *o = U::of(x);
                        }
                    }
                });
            out
        };
        let v = |b: &[f64]| b.iter().map(|&x| U::of(x)).collect();
        RotaryAttention {
            heads: self.heads,
            kv_heads: self.kv_heads,
            head_dim: self.head_dim,
            wq: m(&self.wq),
            bq: v(&self.bq),
            wk: m(&self.wk),
            bk: v(&self.bk),
            wv: m(&self.wv),
            bv: v(&self.bv),
            wo: m(&self.wo),
            bo: v(&self.bo),
            score_divisor_sq: self.score_divisor_sq,
            rope: self.rope.clone(),
            qk_norm: self.qk_norm.clone(),
            softcap: self.softcap,
            window: self.window,
        }
    }

    /// Query head h's contribution alone: its query rows, its kv head's key and value rows and
    /// its columns of W_O, without the output bias (one query head reading one kv head).
    pub fn head(&self, h: usize) -> Result<Self> {
        check_index("head", h, self.heads, || "the layer".into())?;
        let (hd, d, g) = (self.head_dim, self.d_in(), self.kv_of(h));
        let rows = |m: &Mat<f64>, r: usize| Mat::from_fn(hd, d, |i, k| m[(r * hd + i, k)]);
        let bias = |b: &[f64], r: usize| b[r * hd..(r + 1) * hd].to_vec();
        Ok(Self {
            heads: 1,
            kv_heads: 1,
            head_dim: hd,
            wq: rows(&self.wq, h),
            bq: bias(&self.bq, h),
            wk: rows(&self.wk, g),
            bk: bias(&self.bk, g),
            wv: rows(&self.wv, g),
            bv: bias(&self.bv, g),
            wo: Mat::from_fn(self.d_out(), hd, |i, k| self.wo[(i, h * hd + k)]),
            bo: vec![0.0; self.d_out()],
            score_divisor_sq: self.score_divisor_sq,
            rope: self.rope.clone(),
            qk_norm: self.qk_norm.clone(),
            softcap: self.softcap,
            window: self.window,
        })
    }

    /// Query head h with its kv head as a plain dot-product head (one head, no rotation, no
    /// qk-norm, no softcap, no output bias): the part of the weights the value-side constants of
    /// B7 and the transition starts of the rotary ascent read.
    pub fn unrotated_head(&self, h: usize) -> Result<crate::attention::AttentionLayer<f64>> {
        let r = self.head(h)?;
        let mut plain = crate::attention::AttentionLayer::new(
            1,
            crate::attention::Kernel::Dot,
            r.wq,
            r.bq,
            r.wk,
            r.bk,
            r.wv,
            r.bv,
            r.wo,
            r.bo,
        )?;
        plain.score_divisor_sq = self.score_divisor_sq;
        Ok(plain)
    }
}

impl<T: Scalar> RotaryAttention<T> {
    /// Token (input) width d.
    pub fn d_in(&self) -> usize {
        self.wq.ncols()
    }

    /// Output width (rows of wo).
    pub fn d_out(&self) -> usize {
        self.wo.nrows()
    }

    /// Query heads per kv head.
    pub fn group(&self) -> usize {
        self.heads / self.kv_heads
    }

    /// The score scale 1/sqrt(score_divisor_sq), rounded to nearest in f64 (then to T).
    pub(crate) fn score_scale(&self) -> T {
        T::of(1.0 / (self.score_divisor_sq as f64).sqrt())
    }

    /// Every dimension the forward pass indexes by, so that a layer whose public fields were
    /// changed after `new` is an error, not a panic. Finiteness is checked by `new` only.
    pub(crate) fn check_shapes(&self) -> Result<()> {
        check_at_least("heads", self.heads, 1)?;
        check_at_least("kv_heads", self.kv_heads, 1)?;
        check_at_least("head_dim", self.head_dim, 1)?;
        check_at_least("score_divisor_sq", self.score_divisor_sq, 1)?;
        if self.score_divisor_sq as u64 > 1u64 << 53 {
            return Err(Error::invalid(format!(
                "score_divisor_sq {} is above 2^53, where it is no longer exact in f64",
                self.score_divisor_sq
            )));
        }
        if !self.heads.is_multiple_of(self.kv_heads) {
            return Err(Error::invalid(format!(
                "heads ({}) must be a multiple of kv_heads ({})",
                self.heads, self.kv_heads
            )));
        }
        let d = self.wq.ncols();
        if d == 0 {
            return Err(Error::Empty {
                what: "wq (input dimension 0)".into(),
            });
        }
        let (hd, kvd) = (self.heads * self.head_dim, self.kv_heads * self.head_dim);
        let dims = |m: &Mat<T>| format!("{}x{}", m.nrows(), m.ncols());
        for (name, m, rows) in [
            ("wq", &self.wq, hd),
            ("wk", &self.wk, kvd),
            ("wv", &self.wv, kvd),
        ] {
            if m.nrows() != rows || m.ncols() != d {
                return Err(Error::shape(name, format!("{rows}x{d}"), dims(m)));
            }
        }
        if self.wo.ncols() != hd || self.wo.nrows() == 0 {
            return Err(Error::shape("wo", format!("d_out x {hd}"), dims(&self.wo)));
        }
        for (name, b, len) in [
            ("bq", &self.bq, hd),
            ("bk", &self.bk, kvd),
            ("bv", &self.bv, kvd),
            ("bo", &self.bo, self.wo.nrows()),
        ] {
            if b.len() != len {
                return Err(Error::shape(
                    name,
                    format!("[{len}]"),
                    format!("[{}]", b.len()),
                ));
            }
        }
        if let Some(norm) = &self.qk_norm {
            for (name, w) in [
                ("qk_norm q_weight", &norm.q_weight),
                ("qk_norm k_weight", &norm.k_weight),
            ] {
                if w.len() != self.head_dim {
                    return Err(Error::shape(
                        name,
                        format!("[{}] (head_dim)", self.head_dim),
                        format!("[{}]", w.len()),
                    ));
                }
            }
        }
        if self.rope.rotary_dim > self.head_dim {
            return Err(Error::invalid(format!(
                "rope rotary_dim ({}) must be at most head_dim ({})",
                self.rope.rotary_dim, self.head_dim
            )));
        }
        Ok(())
    }
}

fn check_finite_mat(what: &str, m: &Mat<f64>) -> Result<()> {
    for j in 0..m.ncols() {
        for i in 0..m.nrows() {
            let v = m[(i, j)];
            if !v.is_finite() {
                return Err(Error::NonFinite {
                    what: format!("{what} (row {i}, column {j})"),
                    index: i * m.ncols() + j,
                    value: v,
                });
            }
        }
    }
    Ok(())
}
