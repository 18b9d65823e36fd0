//! The rotary sublayer linearised at one X: the forward intermediates the derivatives read
//! (rope table, qk-norm states, rotated queries and keys, values, each head's probabilities and
//! softcap tanh on the visible band, head outputs) are formed once here and shared by every JVP
//! and VJP at that X, as Lanczos and power iteration need.

use super::forward::RotaryState;
use super::layer::RotaryAttention;
use crate::attention::forward::{affine, check_shape, gemm, par_for};
use crate::derivatives::LinearizedMap;
use crate::error::Result;
use crate::linalg::layout::transposed;
use crate::scalar::Scalar;
use faer::{Mat, MatRef};

pub struct RotaryLinearization<'a, T: Scalar = f64> {
    layer: &'a RotaryAttention<T>,
    state: RotaryState<T>,
    /// [W_Q; W_K; W_V]^T and W_O^T, column-major: every step's products then read their weight
    /// operand column-major (`RotaryAttention::stacked_projections_t`).
    w_in_t: Mat<T>,
    wo_t: Mat<T>,
}

impl<'a, T: Scalar> RotaryLinearization<'a, T> {
    /// Linearises X -> f(X) at `x` (n x d, positions 0..n-1). The stored state is checked
    /// against the memory budget before it is allocated.
    pub fn new(layer: &'a RotaryAttention<T>, x: MatRef<'_, T>) -> Result<Self> {
        // The shapes first: the stacked copy below indexes by them.
        layer.check_shapes()?;
        let w_in_t = layer.stacked_projections_t();
        let state = layer.state_with(x, true, Some(&w_in_t))?;
        let wo_t = transposed(layer.wo.as_ref());
        Ok(Self {
            layer,
            state,
            w_in_t,
            wo_t,
        })
    }

    pub fn layer(&self) -> &RotaryAttention<T> {
        self.layer
    }

    /// f(X), the sublayer's output at the linearisation point (n x d_out).
    pub fn output(&self) -> Mat<T> {
        affine(
            self.state.o.as_ref(),
            self.layer.wo.as_ref(),
            &self.layer.bo,
        )
    }
}

impl<T: Scalar> LinearizedMap<T> for RotaryLinearization<'_, T> {
    /// W_O^T W_O (H head_dim square).
    type NormalData = Mat<T>;

    fn n(&self) -> usize {
        self.state.q.nrows()
    }

    fn d_in(&self) -> usize {
        self.layer.d_in()
    }

    fn d_out(&self) -> usize {
        self.layer.d_out()
    }

    fn jvp(&self, t: MatRef<'_, T>) -> Result<Mat<T>> {
        let d_o = self
            .layer
            .jvp_heads_with(&self.state, t, Some(&self.w_in_t))?;
        Ok(self.image_output(d_o.as_ref()))
    }

    fn vjp(&self, y: MatRef<'_, T>) -> Result<Mat<T>> {
        check_shape("VJP cotangent", y, self.n(), self.d_out())?;
        let obar = head_cotangents(self.layer, y);
        self.layer.vjp_heads(&self.state, obar.as_ref())
    }

    fn normal_data(&self) -> Mat<T> {
        output_gram(self.layer.wo.as_ref())
    }

    /// The image is dO (n x H head_dim), J u = dO W_O^T.
    fn normal_step(&self, gram: &Mat<T>, u: MatRef<'_, T>) -> Result<(Mat<T>, Mat<T>)> {
        let d_o = self
            .layer
            .jvp_heads_with(&self.state, u, Some(&self.w_in_t))?;
        let obar = gram_product(gram, d_o.as_ref());
        let w = self.layer.vjp_heads(&self.state, obar.as_ref())?;
        Ok((d_o, w))
    }

    /// The `count` tokens that receive the most attention, sum_h sum_i P_h[i, j] (the column
    /// sums of the probabilities over every head): under a causal mask the first tokens, which
    /// every query sees and where the top singular vector concentrates (at the Llama shape of
    /// bench/rotary_local, 99.99% of its energy on the first 32 of 512 tokens).
    fn start_rows(&self, count: usize) -> Option<Vec<usize>> {
        let n = self.n();
        let mut mass = vec![0.0f64; n];
        for band in &self.state.p_t {
            for (b, (_, len, keys)) in self.layer.bands(n).enumerate() {
                let blk = band.block(b);
                for c in 0..len {
                    for (m, &p) in mass[keys.clone()].iter_mut().zip(blk.col_as_slice(c)) {
                        *m += p.f64();
                    }
                }
            }
        }
        let mut order: Vec<usize> = (0..n).collect();
        order.sort_by(|&a, &b| mass[b].total_cmp(&mass[a]).then(a.cmp(&b)));
        order.truncate(count.min(n));
        order.sort_unstable();
        Some(order)
    }

    /// Projects only the tokens `rows` of u and of J^T J u and forms only the band entries that
    /// reach them (of the band's products only dP V stays a full one); the Gram product is the
    /// full one: about a third of a full step at the Llama shape of bench/rotary_local.
    fn normal_step_rows(
        &self,
        gram: &Mat<T>,
        rows: &[usize],
        u: MatRef<'_, T>,
    ) -> Result<(Mat<T>, Mat<T>)> {
        let d_o = self
            .layer
            .jvp_heads_rows(&self.state, rows, u, &self.w_in_t)?;
        let obar = gram_product(gram, d_o.as_ref());
        let w = self
            .layer
            .vjp_heads_rows(&self.state, obar.as_ref(), rows)?;
        Ok((d_o, w))
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

/// W_O^T W_O: only the lower half is multiplied out (half the d^3 of the full product: 34 G of
/// 69 G multiply-adds at d = 4096, the largest one-off cost of an f32 run) and mirrored.
pub(super) fn output_gram<T: Scalar>(wo: MatRef<'_, T>) -> Mat<T> {
    use faer::linalg::matmul::triangular::{matmul, BlockStructure};
    let c = wo.ncols();
    let mut g = Mat::<T>::zeros(c, c);
    matmul(
        g.as_mut(),
        BlockStructure::TriangularLower,
        faer::Accum::Replace,
        wo.transpose(),
        BlockStructure::Rectangular,
        wo,
        BlockStructure::Rectangular,
        T::of(1.0),
        par_for(c, c, wo.nrows()),
    );
    crate::simd::clear_upper_state();
    for j in 0..c {
        for i in j + 1..c {
            g[(j, i)] = g[(i, j)];
        }
    }
    g
}

/// The heads' output cotangents Obar = Y W_O (n x H head_dim) of an output cotangent Y.
pub(super) fn head_cotangents<T: Scalar>(layer: &RotaryAttention<T>, y: MatRef<'_, T>) -> Mat<T> {
    let wo = layer.wo.as_ref();
    let mut obar = Mat::<T>::zeros(y.nrows(), wo.ncols());
    gemm(
        obar.as_mut(),
        false,
        y,
        wo,
        T::of(1.0),
        par_for(y.nrows(), wo.ncols(), y.ncols()),
    );
    obar
}

/// d_o G for the symmetric Gram G = W_O^T W_O: d_o G^T = d_o G, read column-major (faster).
pub(super) fn gram_product<T: Scalar>(gram: &Mat<T>, d_o: MatRef<'_, T>) -> Mat<T> {
    let mut obar = Mat::<T>::zeros(d_o.nrows(), gram.ncols());
    gemm(
        obar.as_mut(),
        false,
        d_o,
        gram.as_ref(),
        T::of(1.0),
        par_for(d_o.nrows(), gram.ncols(), d_o.ncols()),
    );
    obar
}
