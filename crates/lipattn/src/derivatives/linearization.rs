//! The token map X -> f(X) (self-attention, context weights fixed) linearised at one X.
//! Everything that depends on X alone (projections, attention probabilities, outputs) is computed
//! once here and shared by every JVP and VJP at that X, as power iteration and Lanczos need.

use crate::attention::forward::{gemm, par_for, AttentionState};
use crate::attention::{AttentionLayer, Kernel};
use crate::error::Result;
use crate::scalar::Scalar;
use faer::{Mat, MatRef};
use std::sync::{Mutex, MutexGuard};

pub struct Linearization<'a, T: Scalar> {
    pub(crate) layer: &'a AttentionLayer<T>,
    pub(crate) state: AttentionState<T>,
    /// [W_Q; W_K; W_V] stacked (for L2, [W_Q; W_V]): one product projects a tangent for all heads.
    pub(crate) w_in: Mat<T>,
    pub(crate) causal: bool,
    output: Mat<T>,
    /// One n x n buffer per head for the score tangent (JVP) or cotangent (VJP), reused across
    /// calls: every entry is overwritten by a product before it is read, and allocating and
    /// zeroing it on each call cost about 5% of a JVP at n = 512.
    scratch: Vec<Mutex<Mat<T>>>,
}

impl<'a, T: Scalar> Linearization<'a, T> {
    /// Linearises X -> f(X) at `x` (n x d). `weights` are the context masses (uniform when None);
    /// they stay fixed while the tokens move.
    pub fn new(
        layer: &'a AttentionLayer<T>,
        x: MatRef<'_, T>,
        weights: Option<&[f64]>,
        causal: bool,
    ) -> Result<Self> {
        let state = layer.state(x, x, weights, causal, true)?;
        let output = layer.output(state.o.as_ref());
        let blocks: Vec<&Mat<T>> = match layer.kernel {
            Kernel::Dot => vec![&layer.wq, &layer.wk, &layer.wv],
            Kernel::L2 => vec![&layer.wq, &layer.wv],
        };
        let rows: usize = blocks.iter().map(|b| b.nrows()).sum();
        let d = layer.d_in();
        let mut w_in = Mat::<T>::zeros(rows, d);
        let mut r0 = 0;
        for b in blocks {
            w_in.as_mut()
                .submatrix_mut(r0, 0, b.nrows(), d)
                .copy_from(b.as_ref());
            r0 += b.nrows();
        }
        let n = x.nrows();
        let scratch = (0..layer.heads)
            .map(|_| Mutex::new(Mat::<T>::zeros(n, n)))
            .collect();
        Ok(Self {
            layer,
            state,
            w_in,
            causal,
            output,
            scratch,
        })
    }

    /// f(X), the layer's output at the linearisation point (n x d_out).
    pub fn output(&self) -> MatRef<'_, T> {
        self.output.as_ref()
    }

    pub fn n(&self) -> usize {
        self.state.q.nrows()
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

    pub fn layer(&self) -> &AttentionLayer<T> {
        self.layer
    }

    /// Column offsets of the key and value blocks in a tangent projected by `w_in`.
    pub(crate) fn offsets(&self) -> (usize, usize) {
        let hk = self.layer.heads * self.layer.dk;
        match self.layer.kernel {
            Kernel::Dot => (hk, 2 * hk),
            Kernel::L2 => (0, hk),
        }
    }

    /// The n x n scratch buffer of head h. A concurrent caller on the same head waits.
    pub(crate) fn scratch(&self, h: usize) -> MutexGuard<'_, Mat<T>> {
        self.scratch[h]
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// t W_in^T: the tangent's query, key and value projections for all heads at once.
    pub(crate) fn project(&self, t: MatRef<'_, T>) -> Mat<T> {
        let mut out = Mat::<T>::zeros(t.nrows(), self.w_in.nrows());
        let par = par_for(t.nrows(), self.w_in.nrows(), t.ncols());
        gemm(
            out.as_mut(),
            false,
            t,
            self.w_in.transpose(),
            T::of(1.0),
            par,
        );
        out
    }
}
