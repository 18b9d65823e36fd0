//! The weights of one multi-head attention layer, in the convention of
//! docs/background.md#notation.

use crate::error::{check_at_least, check_index, Error, Result};
use crate::scalar::Scalar;
use faer::Mat;

crate::named_enum! {
    /// Score kernel. `Dot`: s(x, y) = <W_Q x + b_Q, W_K y + b_K> / sqrt(dk).
    /// `L2` (tied, Kim et al. 2021): s(x, y) = -||W_Q x - W_Q y||^2 / sqrt(dk); keys use the
    /// query projection, so W_K and b_K are ignored and b_Q cancels.
    /// In both, sqrt(dk) stands for sqrt(`score_divisor_sq`), which is dk unless a checkpoint's
    /// config sets another score scale (docs/models.md#config-keys).
    pub enum Kernel as "kernel" {
        Dot = "dot",
        L2 = "l2",
    }
}

/// H heads of query/key width dk and value width dv on tokens of width d, with output projection
/// to width d_out. Linear maps act on rows as y = x W^T + b (PyTorch's Linear convention):
/// `wq`, `wk`: (H dk) x d; `wv`: (H dv) x d; `wo`: d_out x (H dv). Head h owns rows h*dk..(h+1)*dk
/// of `wq`/`wk`, rows h*dv.. of `wv` and the same columns of `wo`.
#[derive(Clone, Debug)]
pub struct AttentionLayer<T: Scalar = f64> {
    pub heads: usize,
    pub dk: usize,
    pub dv: usize,
    pub kernel: Kernel,
    /// Scores are divided by sqrt(score_divisor_sq): dk for the standard scaled dot product.
    /// An integer, so that the exact real scale 1/sqrt(score_divisor_sq) is what the forward
    /// pass approximates and what the bounds bound from above (`inv_sqrt_up`); GPT-2's
    /// `scale_attn_weights: false` gives 1 and `scale_attn_by_inverse_layer_idx` multiplies it
    /// by (l + 1)^2, both exact.
    pub score_divisor_sq: usize,
    pub wq: Mat<T>,
    pub bq: Vec<T>,
    pub wk: Mat<T>,
    pub bk: Vec<T>,
    pub wv: Mat<T>,
    pub bv: Vec<T>,
    pub wo: Mat<T>,
    pub bo: Vec<T>,
}

impl<T: Scalar> AttentionLayer<T> {
    /// Validates shapes and finiteness of every weight.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        heads: usize,
        kernel: Kernel,
        wq: Mat<T>,
        bq: Vec<T>,
        wk: Mat<T>,
        bk: Vec<T>,
        wv: Mat<T>,
        bv: Vec<T>,
        wo: Mat<T>,
        bo: Vec<T>,
    ) -> Result<Self> {
        check_at_least("number of heads", heads, 1)?;
        let d = wq.ncols();
        if d == 0 {
            return Err(Error::Empty {
                what: "W_Q (input dimension 0)".into(),
            });
        }
        if !wq.nrows().is_multiple_of(heads) || wq.nrows() == 0 {
            return Err(Error::shape(
                "W_Q rows",
                format!("a positive multiple of the {heads} heads"),
                wq.nrows().to_string(),
            ));
        }
        if !wv.nrows().is_multiple_of(heads) || wv.nrows() == 0 {
            return Err(Error::shape(
                "W_V rows",
                format!("a positive multiple of the {heads} heads"),
                wv.nrows().to_string(),
            ));
        }
        let dk = wq.nrows() / heads;
        let dv = wv.nrows() / heads;
        let dims = |m: &Mat<T>| format!("{}x{}", m.nrows(), m.ncols());
        if wk.nrows() != heads * dk || wk.ncols() != d {
            return Err(Error::shape(
                "W_K",
                format!("{}x{d}", heads * dk),
                dims(&wk),
            ));
        }
        if wv.ncols() != d {
            return Err(Error::shape(
                "W_V",
                format!("{}x{d}", heads * dv),
                dims(&wv),
            ));
        }
        if wo.ncols() != heads * dv || wo.nrows() == 0 {
            return Err(Error::shape(
                "W_O",
                format!("d_out x {}", heads * dv),
                dims(&wo),
            ));
        }
        for (name, b, len) in [
            ("b_Q", &bq, heads * dk),
            ("b_K", &bk, heads * dk),
            ("b_V", &bv, heads * dv),
            ("b_O", &bo, wo.nrows()),
        ] {
            if b.len() != len {
                return Err(Error::shape(
                    name,
                    format!("[{len}]"),
                    format!("[{}]", b.len()),
                ));
            }
            check_finite_slice(name, b)?;
        }
        for (name, m) in [("W_Q", &wq), ("W_K", &wk), ("W_V", &wv), ("W_O", &wo)] {
            check_finite_mat(name, m)?;
        }
        Ok(Self {
            heads,
            dk,
            dv,
            kernel,
            score_divisor_sq: dk,
            wq,
            bq,
            wk,
            bk,
            wv,
            bv,
            wo,
            bo,
        })
    }

    /// Token (input) width d.
    pub fn d_in(&self) -> usize {
        self.wq.ncols()
    }

    /// Output width (rows of W_O).
    pub fn d_out(&self) -> usize {
        self.wo.nrows()
    }

    pub fn with_kernel(mut self, kernel: Kernel) -> Self {
        self.kernel = kernel;
        self
    }

    /// The same layer with scores divided by sqrt(`divisor_sq`) instead of sqrt(dk).
    pub fn with_score_divisor_sq(mut self, divisor_sq: usize) -> Result<Self> {
        check_at_least("squared score divisor", divisor_sq, 1)?;
        // Beyond 2^53 the integer would not be exact in f64, and the scale would be rounded
        // before the bounds see it.
        if divisor_sq as u64 > 1u64 << 53 {
            return Err(Error::invalid(format!(
                "squared score divisor {divisor_sq} is above 2^53, where it is no longer exact in f64"
            )));
        }
        self.score_divisor_sq = divisor_sq;
        Ok(self)
    }

    /// The score scale 1/sqrt(`score_divisor_sq`), rounded to nearest in T.
    pub(crate) fn score_scale<U: Scalar>(&self) -> U {
        U::of(1.0 / (self.score_divisor_sq as f64).sqrt())
    }

    /// The layer restricted to head h: its W_Q, W_K, W_V rows, its W_O columns, and b_O
    /// only if `keep_output_bias` (a head's contribution to the sum has no bias of its own).
    pub fn head(&self, h: usize, keep_output_bias: bool) -> Result<Self> {
        check_index("head", h, self.heads, || "the layer".into())?;
        let (dk, dv, d) = (self.dk, self.dv, self.d_in());
        let rows = |m: &Mat<T>, w: usize| Mat::from_fn(w, d, |i, k| m[(h * w + i, k)]);
        let bias = |b: &[T], w: usize| b[h * w..(h + 1) * w].to_vec();
        Ok(Self {
            heads: 1,
            dk,
            dv,
            kernel: self.kernel,
            score_divisor_sq: self.score_divisor_sq,
            wq: rows(&self.wq, dk),
            bq: bias(&self.bq, dk),
            wk: rows(&self.wk, dk),
            bk: bias(&self.bk, dk),
            wv: rows(&self.wv, dv),
            bv: bias(&self.bv, dv),
            wo: Mat::from_fn(self.d_out(), dv, |i, k| self.wo[(i, h * dv + k)]),
            bo: if keep_output_bias {
                self.bo.clone()
            } else {
                vec![T::of(0.0); self.d_out()]
            },
        })
    }

    /// The same layer in another floating-point type.
    pub fn cast<U: Scalar>(&self) -> AttentionLayer<U> {
        let m = |a: &Mat<T>| Mat::from_fn(a.nrows(), a.ncols(), |i, j| U::of(a[(i, j)].f64()));
        let v = |a: &[T]| a.iter().map(|x| U::of(x.f64())).collect::<Vec<U>>();
        AttentionLayer {
            heads: self.heads,
            dk: self.dk,
            dv: self.dv,
            kernel: self.kernel,
            score_divisor_sq: self.score_divisor_sq,
            wq: m(&self.wq),
            bq: v(&self.bq),
            wk: m(&self.wk),
            bk: v(&self.bk),
            wv: m(&self.wv),
            bv: v(&self.bv),
            wo: m(&self.wo),
            bo: v(&self.bo),
        }
    }
}

fn check_finite_slice<T: Scalar>(what: &str, v: &[T]) -> Result<()> {
    crate::error::check_finite(what, v.iter().map(|x| x.f64()))
}

fn check_finite_mat<T: Scalar>(what: &str, m: &Mat<T>) -> Result<()> {
    for i in 0..m.nrows() {
        for j in 0..m.ncols() {
            let v = m[(i, j)].f64();
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
