//! The token map X -> f(X) (self-attention, context weights fixed) linearised at one X.
//! Everything that depends on X alone (projections, attention probabilities, outputs) is computed
//! once here and shared by every JVP and VJP at that X, as power iteration and Lanczos need.

use super::LinearizedMap;
use crate::attention::forward::{gemm_blocks_rayon, AttentionState};
use crate::attention::{AttentionLayer, Kernel};
use crate::error::Result;
use crate::scalar::Scalar;
use faer::{Mat, MatRef};
use std::sync::{Mutex, MutexGuard};

/// Queries per block in the JVP and VJP: a head's score tangent is n x block, not n x n, so the
/// workspaces grow linearly in n and stay in the core's L2 cache between the product that writes
/// them, the softmax backward and the products that read them. (Blocks of 64 to 512 timed the
/// same at n = 512 on MiniLM sizes.)
pub(crate) const QUERY_BLOCK: usize = 128;
/// Keys per chunk inside a query block of the dense VJP: a chunk's probabilities and its logit
/// cotangents (256 x 128 each, 256 kB in f64) stay in L2 while the four products that read them
/// run. (At n = 4,096 in f64 the VJP took 0.91-0.94 of its time without chunks; chunks of 128
/// and 512 were no better than 256. The JVP, chunked the same way with its mean entering as a
/// rank-one correction, was 2-8% slower, so it keeps whole blocks.)
pub(crate) const KEY_CHUNK: usize = 256;

pub struct Linearization<'a, T: Scalar> {
    pub(crate) layer: &'a AttentionLayer<T>,
    pub(crate) state: AttentionState<T>,
    /// Per head h, [W_Q^h; W_K^h; W_V^h] (for L2, [W_Q^h; W_V^h]), heads one after another: one
    /// product projects a tangent for all heads, and each head's tangent projections (or
    /// cotangents) are one contiguous block of columns, `head_width()` wide.
    pub(crate) w_in: Mat<T>,
    /// W_in^T (d x rows of w_in), present when the projections run as one product for all heads
    /// (see `global_projections`).
    pub(crate) w_in_t: Option<Mat<T>>,
    pub(crate) causal: bool,
    /// Q^T (H dk x n), K^T (H dk x n; Q^T again for L2) and V^T (H dv x n), stored column-major:
    /// the products of depth n in the JVP and VJP then read both operands column-major, which
    /// the GEMM kernels run about 20% faster than a transposed (row-major) left operand.
    pub(crate) q_t: Mat<T>,
    pub(crate) k_t: Mat<T>,
    pub(crate) v_t: Mat<T>,
    output: Mat<T>,
    /// One workspace per head, reused across blocks and calls.
    scratch: Vec<Mutex<HeadScratch<T>>>,
    /// The n-sized intermediates of one call, reused across calls (see `CallBuffers`).
    buffers: Mutex<CallBuffers<T>>,
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
        let (dk, dv) = (layer.dk, layer.dv);
        let mut blocks: Vec<(&Mat<T>, usize)> = vec![(&layer.wq, dk)];
        if layer.kernel == Kernel::Dot {
            blocks.push((&layer.wk, dk));
        }
        blocks.push((&layer.wv, dv));
        let width: usize = blocks.iter().map(|b| b.1).sum();
        let d = layer.d_in();
        let mut w_in = Mat::<T>::zeros(layer.heads * width, d);
        let mut r0 = 0;
        for h in 0..layer.heads {
            for &(w, rows) in &blocks {
                w_in.as_mut()
                    .submatrix_mut(r0, 0, rows, d)
                    .copy_from(w.as_ref().submatrix(h * rows, 0, rows, d));
                r0 += rows;
            }
        }
        let n = x.nrows();
        let scratch = (0..layer.heads)
            .map(|_| Mutex::new(HeadScratch::new(n, dk, dv, width)))
            .collect();
        let w_in_t = global_projections::<T>(n, d).then(|| w_in.transpose().to_owned());
        let buffers = Mutex::new(CallBuffers::new(
            n,
            layer.heads,
            width,
            dv,
            w_in_t.is_some(),
        ));
        let q_t = state.q.transpose().to_owned();
        let k_t = state.k.transpose().to_owned();
        let v_t = state.v.transpose().to_owned();
        Ok(Self {
            layer,
            state,
            w_in,
            w_in_t,
            causal,
            q_t,
            k_t,
            v_t,
            output,
            scratch,
            buffers,
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

    /// Columns per head in a tangent projected by `w_in`: dQ, dK (dot kernel only), dV.
    pub(crate) fn head_width(&self) -> usize {
        let dk = self.layer.dk;
        match self.layer.kernel {
            Kernel::Dot => 2 * dk + self.layer.dv,
            Kernel::L2 => dk + self.layer.dv,
        }
    }

    /// Whether the JVP's projections and the VJP's output cotangents run as one product for all
    /// heads (`global_projections`); both derivatives follow the same choice.
    pub(crate) fn projects_all_heads(&self) -> bool {
        self.w_in_t.is_some()
    }

    /// The logit scale: s = the layer's score scale (1/sqrt(dk) by default) for the dot kernel, 2s for tied L2, whose logits
    /// s (2 q_i.q_j - |q_j|^2) have the bilinear part 2s q_i.q_j.
    pub(crate) fn bilinear_scale(&self) -> T {
        let s = self.layer.score_scale::<T>();
        match self.layer.kernel {
            Kernel::Dot => s,
            Kernel::L2 => s + s,
        }
    }

    /// The keys visible to the queries q0..q0+len: all of them, or 0..q0+len under a causal mask
    /// (the other probabilities are exactly zero, so their terms are skipped, not computed).
    pub(crate) fn visible_keys(&self, q0: usize, len: usize) -> usize {
        if self.causal {
            q0 + len
        } else {
            self.n()
        }
    }

    /// The shared intermediates of one JVP or VJP. A concurrent call gets fresh ones instead of
    /// waiting.
    pub(crate) fn call_buffers(&self) -> CallBuffersGuard<'_, T> {
        match self.buffers.try_lock() {
            Ok(guard) => CallBuffersGuard::Shared(guard),
            Err(_) => {
                let layer = self.layer;
                CallBuffersGuard::Fresh(Box::new(CallBuffers::new(
                    self.n(),
                    layer.heads,
                    self.head_width(),
                    layer.dv,
                    self.projects_all_heads(),
                )))
            }
        }
    }

    /// The workspace of head h. A concurrent caller on the same head waits.
    pub(crate) fn scratch(&self, h: usize) -> MutexGuard<'_, HeadScratch<T>> {
        self.scratch[h]
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl<T: Scalar> LinearizedMap<T> for Linearization<'_, T> {
    /// W_O^T W_O (H dv x H dv).
    type NormalData = Mat<T>;

    fn n(&self) -> usize {
        Linearization::n(self)
    }

    fn d_in(&self) -> usize {
        Linearization::d_in(self)
    }

    fn d_out(&self) -> usize {
        Linearization::d_out(self)
    }

    fn jvp(&self, t: MatRef<'_, T>) -> Result<Mat<T>> {
        Linearization::jvp(self, t)
    }

    fn vjp(&self, y: MatRef<'_, T>) -> Result<Mat<T>> {
        Linearization::vjp(self, y)
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
        let d_o = self.jvp_heads(u);
        let w = self.vjp_through(d_o.as_ref(), gram.as_ref());
        Ok((d_o, w))
    }

    fn image_output(&self, d_o: MatRef<'_, T>) -> Mat<T> {
        let mut jv = Mat::<T>::zeros(d_o.nrows(), self.d_out());
        faer::linalg::matmul::matmul(
            jv.as_mut(),
            faer::Accum::Replace,
            d_o,
            self.layer.wo.as_ref().transpose(),
            T::of(1.0),
            faer::Par::Seq,
        );
        jv
    }
}

/// Whether the JVP's tangent projections G W_in^T and the VJP's output cotangents Y W_O run as
/// one product for all heads before the per-head work, instead of inside each head's task. Per
/// head, the shared operand (the n x d tangent or cotangent) is repacked for every head; once it
/// outgrows about half a core's L2 cache the single product wins. Measured on MiniLM sizes
/// (d = 384, 12 heads), alternating both forms step by step: 7% faster per JVP+VJP in f64 at
/// n = 512 (1.5 MiB operand), 3% slower in f32 at n = 512 (0.75 MiB), 5 to 9% slower at n = 128.
pub(crate) fn global_projections<T: Scalar>(n: usize, d: usize) -> bool {
    n * d * std::mem::size_of::<T>() > 1 << 20
}

/// The intermediates of one JVP or VJP that span all heads. Allocated per call they cost up to
/// 5% of a step at MiniLM sizes: each is large enough for the allocator to map fresh pages, so
/// every call paid page faults and the zeroing of megabytes on one thread while the other
/// waited. Every entry is written before it is read in each call (the VJP clears its value
/// cotangents itself), so nothing carries over.
pub(crate) struct CallBuffers<T: Scalar> {
    /// dO^T (H dv x n), the JVP's heads before the output projection.
    pub d_ot: Mat<T>,
    /// The cotangents of all heads' projections (n x H width), the VJP's input to W_in.
    pub dbar: Mat<T>,
    /// G W_in^T (n x H width), present when the projections run for all heads at once.
    pub projected: Mat<T>,
    /// Y W (n x H dv), likewise.
    pub obar: Mat<T>,
}

impl<T: Scalar> CallBuffers<T> {
    fn new(n: usize, heads: usize, width: usize, dv: usize, all_heads: bool) -> Self {
        let rows = if all_heads { n } else { 0 };
        Self {
            d_ot: Mat::zeros(heads * dv, n),
            dbar: Mat::zeros(n, heads * width),
            projected: Mat::zeros(rows, heads * width),
            obar: Mat::zeros(rows, heads * dv),
        }
    }
}

pub(crate) enum CallBuffersGuard<'a, T: Scalar> {
    Shared(MutexGuard<'a, CallBuffers<T>>),
    Fresh(Box<CallBuffers<T>>),
}

impl<T: Scalar> std::ops::Deref for CallBuffersGuard<'_, T> {
    type Target = CallBuffers<T>;
    fn deref(&self) -> &CallBuffers<T> {
        match self {
            Self::Shared(g) => g,
            Self::Fresh(b) => b,
        }
    }
}

impl<T: Scalar> std::ops::DerefMut for CallBuffersGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut CallBuffers<T> {
        match self {
            Self::Shared(g) => g,
            Self::Fresh(b) => b,
        }
    }
}

/// One head's buffers for a JVP or VJP. Allocating and zeroing them on every call cost a few
/// percent of a JVP; the derivatives overwrite every entry they later read (the accumulators
/// are cleared explicitly), so nothing carries over between calls.
pub(crate) struct HeadScratch<T: Scalar> {
    /// Score tangent dL^T (JVP) or cotangent Lbar^T (VJP) of one block of queries, n x block.
    pub scores: Mat<T>,
    /// The head's tangent projections [dQ^T; dK^T; dV^T] (JVP), head_width x n.
    pub proj: Mat<T>,
    /// [K dK] (JVP), n x 2 dk.
    pub left: Mat<T>,
    /// [dQ_blk Q_blk]^T (JVP), 2 dk x block.
    pub right_t: Mat<T>,
    /// Obar_h (VJP), n x dv.
    pub obar: Mat<T>,
    /// sc Lbar^T Q, accumulated over blocks (VJP), n x dk.
    pub key_part: Mat<T>,
    /// Qbar_blk^T (VJP), dk x block.
    pub query_t: Mat<T>,
    /// <o_i, obar_i> for the block's queries (VJP).
    pub means: Vec<T>,
}

impl<T: Scalar> HeadScratch<T> {
    fn new(n: usize, dk: usize, dv: usize, width: usize) -> Self {
        let block = QUERY_BLOCK.min(n);
        Self {
            scores: Mat::zeros(n, block),
            proj: Mat::zeros(width, n),
            left: Mat::zeros(n, 2 * dk),
            right_t: Mat::zeros(2 * dk, block),
            obar: Mat::zeros(n, dv),
            key_part: Mat::zeros(n, dk),
            query_t: Mat::zeros(dk, block),
            means: vec![T::of(0.0); block],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dynamics::synthetic::random_layer;

    fn rel(a: &Mat<f64>, b: &Mat<f64>) -> f64 {
        (a - b).norm_l2() / b.norm_l2()
    }

    /// The projections computed once for all heads and the per-head ones are the same linear
    /// maps: both orders agree to rounding, for both kernels, with and without a causal mask.
    #[test]
    fn global_and_per_head_projections_agree() {
        for (kernel, causal) in [
            (Kernel::Dot, false),
            (Kernel::Dot, true),
            (Kernel::L2, false),
            (Kernel::L2, true),
        ] {
            let layer = random_layer(24, 3, kernel, 0.3, 7).unwrap();
            let n = 150;
            let x = Mat::<f64>::from_fn(n, 24, |i, j| ((i * 13 + j * 7) % 11) as f64 / 5.0 - 1.0);
            let g = Mat::<f64>::from_fn(n, 24, |i, j| ((i * 3 + j * 5) % 7) as f64 / 3.0 - 1.0);
            let y = Mat::<f64>::from_fn(n, 24, |i, j| ((i * 5 + j) % 9) as f64 / 4.0 - 1.0);
            let mut lin = Linearization::new(&layer, x.as_ref(), None, causal).unwrap();
            assert!(!lin.projects_all_heads(), "small layers project per head");
            let (j0, v0) = (lin.jvp(g.as_ref()).unwrap(), lin.vjp(y.as_ref()).unwrap());
            lin.w_in_t = Some(lin.w_in.transpose().to_owned());
            *lin.buffers.get_mut().unwrap() =
                CallBuffers::new(n, layer.heads, lin.head_width(), layer.dv, true);
            assert!(lin.projects_all_heads());
            let (j1, v1) = (lin.jvp(g.as_ref()).unwrap(), lin.vjp(y.as_ref()).unwrap());
            assert!(rel(&j1, &j0) < 1e-13, "{kernel:?} causal={causal}: JVP");
            assert!(rel(&v1, &v0) < 1e-13, "{kernel:?} causal={causal}: VJP");
        }
    }

    #[test]
    fn projections_go_global_once_the_tangent_outgrows_half_an_l2() {
        assert!(!global_projections::<f64>(128, 384));
        assert!(!global_projections::<f32>(512, 384));
        assert!(global_projections::<f64>(512, 384));
        assert!(global_projections::<f32>(1024, 384));
    }
}
