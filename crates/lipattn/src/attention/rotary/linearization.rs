//! The rotary sublayer linearised at one X: the forward intermediates the derivatives read
//! (rope table, qk-norm states, rotated queries and keys, values, each head's probabilities and
//! softcap tanh on the visible band, head outputs) are formed once here and shared by every JVP
//! and VJP at that X, as Lanczos and power iteration need.

use super::forward::RotaryState;
use super::layer::RotaryAttention;
use crate::attention::forward::{affine, check_shape, gemm, par_for};
use crate::derivatives::LinearizedMap;
use crate::error::Result;
use faer::{Mat, MatRef};

pub struct RotaryLinearization<'a> {
    layer: &'a RotaryAttention,
    state: RotaryState,
}

impl<'a> RotaryLinearization<'a> {
    /// Linearises X -> f(X) at `x` (n x d, positions 0..n-1). The stored state is checked
    /// against the memory budget before it is allocated.
    pub fn new(layer: &'a RotaryAttention, x: MatRef<'_, f64>) -> Result<Self> {
        let state = layer.state(x, true)?;
        Ok(Self { layer, state })
    }

    pub fn layer(&self) -> &RotaryAttention {
        self.layer
    }

    /// f(X), the sublayer's output at the linearisation point (n x d_out).
    pub fn output(&self) -> Mat<f64> {
        affine(
            self.state.o.as_ref(),
            self.layer.wo.as_ref(),
            &self.layer.bo,
        )
    }
}

/// a w^T, split over threads like the sublayer's own projections.
fn times_transpose(a: MatRef<'_, f64>, w: MatRef<'_, f64>) -> Mat<f64> {
    let mut out = Mat::<f64>::zeros(a.nrows(), w.nrows());
    gemm(
        out.as_mut(),
        false,
        a,
        w.transpose(),
        1.0,
        par_for(a.nrows(), w.nrows(), a.ncols()),
    );
    out
}

impl LinearizedMap<f64> for RotaryLinearization<'_> {
    /// W_O^T W_O (H head_dim square).
    type NormalData = Mat<f64>;

    fn n(&self) -> usize {
        self.state.q.nrows()
    }

    fn d_in(&self) -> usize {
        self.layer.d_in()
    }

    fn d_out(&self) -> usize {
        self.layer.d_out()
    }

    fn jvp(&self, t: MatRef<'_, f64>) -> Result<Mat<f64>> {
        let d_o = self.layer.jvp_heads(&self.state, t)?;
        Ok(self.image_output(d_o.as_ref()))
    }

    fn vjp(&self, y: MatRef<'_, f64>) -> Result<Mat<f64>> {
        check_shape("VJP cotangent", y, self.n(), self.d_out())?;
        let wo = self.layer.wo.as_ref();
        let mut obar = Mat::<f64>::zeros(y.nrows(), wo.ncols());
        gemm(
            obar.as_mut(),
            false,
            y,
            wo,
            1.0,
            par_for(y.nrows(), wo.ncols(), y.ncols()),
        );
        self.layer.vjp_heads(&self.state, obar.as_ref())
    }

    fn normal_data(&self) -> Mat<f64> {
        let wo = self.layer.wo.as_ref();
        let mut g = Mat::<f64>::zeros(wo.ncols(), wo.ncols());
        let par = par_for(wo.ncols(), wo.ncols(), wo.nrows());
        gemm(g.as_mut(), false, wo.transpose(), wo, 1.0, par);
        g
    }

    /// The image is dO (n x H head_dim), J u = dO W_O^T.
    fn normal_step(&self, gram: &Mat<f64>, u: MatRef<'_, f64>) -> Result<(Mat<f64>, Mat<f64>)> {
        let d_o = self.layer.jvp_heads(&self.state, u)?;
        let obar = times_transpose(d_o.as_ref(), gram.as_ref());
        let w = self.layer.vjp_heads(&self.state, obar.as_ref())?;
        Ok((d_o, w))
    }

    fn image_output(&self, d_o: MatRef<'_, f64>) -> Mat<f64> {
        times_transpose(d_o, self.layer.wo.as_ref())
    }
}
