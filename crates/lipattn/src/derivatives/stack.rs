//! Exact JVP and VJP of compositions of the pieces transformer blocks are made of (attention,
//! LayerNorm, RMSNorm, feed-forward, residual additions, pooling), linearised at one input:
//! blocks, stacks of blocks and whole models (docs/derivatives.md#blocks-and-models).
//!
//! Each piece is linearised while the forward pass runs (`models::stack` builds them), keeping
//! only what its derivative reads; the composition applies them in order (JVP) or in reverse
//! (VJP). The attention pieces reuse the sublayer linearisations, so a block's derivative is the
//! sublayer's own exact derivative composed with the exact derivatives of the rest.

use super::LinearizedMap;
use crate::attention::forward::{gemm, par_for};
use crate::attention::rms::NormState;
use crate::error::Result;
use crate::models::Activation;
use faer::{Mat, MatRef};

/// One piece of a composition, linearised at its input.
pub trait Step: Send + Sync {
    /// J t.
    fn jvp(&self, t: Mat<f64>) -> Result<Mat<f64>>;
    /// J^T y.
    fn vjp(&self, y: Mat<f64>) -> Result<Mat<f64>>;
}

/// x w^T (w: out x in), threaded like the sublayers' projections.
pub(crate) fn times_transpose(x: MatRef<'_, f64>, w: MatRef<'_, f64>) -> Mat<f64> {
    let mut out = Mat::<f64>::zeros(x.nrows(), w.nrows());
    let par = par_for(x.nrows(), w.nrows(), x.ncols());
    gemm(out.as_mut(), false, x, w.transpose(), 1.0, par);
    out
}

/// x w (w: out x in): the transpose of `times_transpose`.
pub(crate) fn times(x: MatRef<'_, f64>, w: MatRef<'_, f64>) -> Mat<f64> {
    let mut out = Mat::<f64>::zeros(x.nrows(), w.ncols());
    let par = par_for(x.nrows(), w.ncols(), x.ncols());
    gemm(out.as_mut(), false, x, w, 1.0, par);
    out
}

fn hadamard(a: &mut Mat<f64>, b: &Mat<f64>) {
    for j in 0..a.ncols() {
        for (x, &y) in a.col_as_slice_mut(j).iter_mut().zip(b.col_as_slice(j)) {
            *x *= y;
        }
    }
}

/// An attention sublayer (its output projection and bias included) as a step: BERT and GPT-2 or
/// rotary, on the dense or the streaming state (docs/streaming.md#blocks-and-models), whichever
/// linearisation `L` holds.
pub struct AttentionStep<L>(pub L);

impl<L: LinearizedMap<f64> + Send + Sync> Step for AttentionStep<L> {
    fn jvp(&self, t: Mat<f64>) -> Result<Mat<f64>> {
        self.0.jvp(t.as_ref())
    }
    fn vjp(&self, y: Mat<f64>) -> Result<Mat<f64>> {
        self.0.vjp(y.as_ref())
    }
}

/// A boxed step is the step it holds (the attention steps are chosen at run time).
impl<S: Step + ?Sized> Step for Box<S> {
    fn jvp(&self, t: Mat<f64>) -> Result<Mat<f64>> {
        (**self).jvp(t)
    }
    fn vjp(&self, y: Mat<f64>) -> Result<Mat<f64>> {
        (**self).vjp(y)
    }
}

/// LayerNorm of each token, y = g (x - mean) / s + b with s = sqrt(var + eps). With
/// z = (x - mean) / s (centred), dy = g ⊙ (c - z <z, c> / d) / s where c = dx - mean(dx); the map
/// c -> c - z <z, c> / d composed with centring is symmetric, so the VJP is the same projection
/// applied to g ⊙ ybar.
pub struct LayerNormStep {
    gamma: Vec<f64>,
    /// z, n x d.
    z: Mat<f64>,
    /// 1 / s per token.
    inv_s: Vec<f64>,
}

impl LayerNormStep {
    /// The derivative's state at `x`; the forward value itself is `LayerNorm::apply`'s.
    pub fn at(gamma: &[f64], eps: f64, x: MatRef<'_, f64>) -> Self {
        let (n, d) = (x.nrows(), x.ncols());
        let mut z = Mat::<f64>::zeros(n, d);
        let mut inv_s = vec![0.0; n];
        let mut row = vec![0.0; d];
        for i in 0..n {
            for (k, r) in row.iter_mut().enumerate() {
                *r = x[(i, k)];
            }
            let mean = row.iter().sum::<f64>() / d as f64;
            let var = row.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / d as f64;
            inv_s[i] = 1.0 / (var + eps).sqrt();
            for k in 0..d {
                z[(i, k)] = (row[k] - mean) * inv_s[i];
            }
        }
        Self {
            gamma: gamma.to_vec(),
            z,
            inv_s,
        }
    }

    /// In place: the symmetric projection c -> (P c - z <z, P c> / d) / s of each row.
    fn project(&self, m: &mut Mat<f64>) {
        let (n, d) = (m.nrows(), m.ncols());
        let mut mean = vec![0.0; n];
        let mut dot = vec![0.0; n];
        for k in 0..d {
            for (i, (&v, &zz)) in m
                .col_as_slice(k)
                .iter()
                .zip(self.z.col_as_slice(k))
                .enumerate()
            {
                mean[i] += v;
                dot[i] += v * zz;
            }
        }
        for m in &mut mean {
            *m /= d as f64;
        }
        // <z, P c> = <z, c> since z is centred.
        for k in 0..d {
            let zc = self.z.col_as_slice(k);
            for (i, v) in m.col_as_slice_mut(k).iter_mut().enumerate() {
                *v = (*v - mean[i] - zc[i] * dot[i] / d as f64) * self.inv_s[i];
            }
        }
    }

    fn scale(&self, m: &mut Mat<f64>) {
        for (k, &g) in self.gamma.iter().enumerate() {
            for v in m.col_as_slice_mut(k) {
                *v *= g;
            }
        }
    }
}

impl Step for LayerNormStep {
    fn jvp(&self, mut t: Mat<f64>) -> Result<Mat<f64>> {
        self.project(&mut t);
        self.scale(&mut t);
        Ok(t)
    }
    fn vjp(&self, mut y: Mat<f64>) -> Result<Mat<f64>> {
        self.scale(&mut y);
        self.project(&mut y);
        Ok(y)
    }
}

/// RMSNorm of each token over its whole width (attention::rms holds the formulas).
pub struct RmsNormStep {
    pub(crate) gain: Vec<f64>,
    pub(crate) state: NormState,
}

impl Step for RmsNormStep {
    fn jvp(&self, mut t: Mat<f64>) -> Result<Mat<f64>> {
        self.state.apply(&mut t, self.gain.len(), &self.gain, false);
        Ok(t)
    }
    fn vjp(&self, mut y: Mat<f64>) -> Result<Mat<f64>> {
        self.state.apply(&mut y, self.gain.len(), &self.gain, true);
        Ok(y)
    }
}

/// x -> W_out act(W_in x + b_in) + b_out on each token: J t = ((t W_in^T) ⊙ act'(pre)) W_out^T.
pub struct FeedForwardStep<'a> {
    pub w_in: MatRef<'a, f64>,
    pub w_out: MatRef<'a, f64>,
    /// act'(W_in x + b_in), n x ffn.
    pub slope: Mat<f64>,
}

impl Step for FeedForwardStep<'_> {
    fn jvp(&self, t: Mat<f64>) -> Result<Mat<f64>> {
        let mut h = times_transpose(t.as_ref(), self.w_in);
        hadamard(&mut h, &self.slope);
        Ok(times_transpose(h.as_ref(), self.w_out))
    }
    fn vjp(&self, y: Mat<f64>) -> Result<Mat<f64>> {
        let mut h = times(y.as_ref(), self.w_out);
        hadamard(&mut h, &self.slope);
        Ok(times(h.as_ref(), self.w_in))
    }
}

/// x -> W_down (act(W_gate x + b_g) ⊙ (W_up x + b_u)) + b_down on each token (SwiGLU, GeGLU):
/// J t = ((t W_g^T) ⊙ act'(g) ⊙ u + act(g) ⊙ (t W_u^T)) W_down^T.
pub struct GatedStep<'a> {
    pub gate: MatRef<'a, f64>,
    pub up: MatRef<'a, f64>,
    pub down: MatRef<'a, f64>,
    /// act'(g) ⊙ u, n x ffn.
    pub gate_slope: Mat<f64>,
    /// act(g), n x ffn.
    pub up_slope: Mat<f64>,
}

impl GatedStep<'_> {
    /// (act'(g) ⊙ u, act(g)) at the pre-activations g and u.
    pub fn slopes(activation: Activation, g: &Mat<f64>, u: &Mat<f64>) -> (Mat<f64>, Mat<f64>) {
        let gate_slope = Mat::from_fn(g.nrows(), g.ncols(), |i, j| {
            activation.derivative(g[(i, j)]) * u[(i, j)]
        });
        let up_slope = Mat::from_fn(g.nrows(), g.ncols(), |i, j| activation.apply(g[(i, j)]));
        (gate_slope, up_slope)
    }
}

impl Step for GatedStep<'_> {
    fn jvp(&self, t: Mat<f64>) -> Result<Mat<f64>> {
        let mut a = times_transpose(t.as_ref(), self.gate);
        hadamard(&mut a, &self.gate_slope);
        let mut b = times_transpose(t.as_ref(), self.up);
        hadamard(&mut b, &self.up_slope);
        Ok(times_transpose((a + b).as_ref(), self.down))
    }
    fn vjp(&self, y: Mat<f64>) -> Result<Mat<f64>> {
        let h = times(y.as_ref(), self.down);
        let mut a = h.clone();
        hadamard(&mut a, &self.gate_slope);
        let mut b = h;
        hadamard(&mut b, &self.up_slope);
        Ok(times(a.as_ref(), self.gate) + times(b.as_ref(), self.up))
    }
}

/// x -> x + f(x), f a composition.
pub struct Residual<'a>(pub Chain<'a>);

impl Step for Residual<'_> {
    fn jvp(&self, t: Mat<f64>) -> Result<Mat<f64>> {
        let branch = self.0.jvp(t.clone())?;
        Ok(t + branch)
    }
    fn vjp(&self, y: Mat<f64>) -> Result<Mat<f64>> {
        let branch = self.0.vjp(y.clone())?;
        Ok(y + branch)
    }
}

/// The mean over tokens, n x d -> 1 x d (sentence-transformers' mean pooling with every token
/// attended).
pub struct MeanPool {
    pub n: usize,
}

impl Step for MeanPool {
    fn jvp(&self, t: Mat<f64>) -> Result<Mat<f64>> {
        Ok(Mat::from_fn(1, t.ncols(), |_, k| {
            t.col_as_slice(k).iter().sum::<f64>() / self.n as f64
        }))
    }
    fn vjp(&self, y: Mat<f64>) -> Result<Mat<f64>> {
        Ok(Mat::from_fn(self.n, y.ncols(), |_, k| {
            y[(0, k)] / self.n as f64
        }))
    }
}

/// p -> p / |p| on a single row: J = (I - y y^T) / |p|, symmetric.
pub struct Normalise {
    /// y = p / |p|.
    pub y: Vec<f64>,
    pub inv_norm: f64,
}

impl Normalise {
    fn apply(&self, mut m: Mat<f64>) -> Mat<f64> {
        let dot: f64 = (0..m.ncols()).map(|k| m[(0, k)] * self.y[k]).sum();
        for (k, &yk) in self.y.iter().enumerate() {
            m[(0, k)] = (m[(0, k)] - yk * dot) * self.inv_norm;
        }
        m
    }
}

impl Step for Normalise {
    fn jvp(&self, t: Mat<f64>) -> Result<Mat<f64>> {
        Ok(self.apply(t))
    }
    fn vjp(&self, y: Mat<f64>) -> Result<Mat<f64>> {
        Ok(self.apply(y))
    }
}

/// Steps applied in order.
#[derive(Default)]
pub struct Chain<'a> {
    steps: Vec<Box<dyn Step + 'a>>,
}

impl<'a> Chain<'a> {
    pub fn push(&mut self, s: impl Step + 'a) {
        self.steps.push(Box::new(s));
    }

    pub fn append(&mut self, other: Chain<'a>) {
        self.steps.extend(other.steps);
    }

    pub fn len(&self) -> usize {
        self.steps.len()
    }

    pub fn is_empty(&self) -> bool {
        self.steps.is_empty()
    }

    pub fn jvp(&self, mut t: Mat<f64>) -> Result<Mat<f64>> {
        for s in &self.steps {
            t = s.jvp(t)?;
        }
        Ok(t)
    }

    pub fn vjp(&self, mut y: Mat<f64>) -> Result<Mat<f64>> {
        for s in self.steps.iter().rev() {
            y = s.vjp(y)?;
        }
        Ok(y)
    }

    /// Steps `range` as a map of their own, from `rows_in` x `d` to `rows_out` x `d` (the
    /// ball certificates run Lemma P on prefixes and suffixes of a model).
    pub fn slice(
        &self,
        range: std::ops::Range<usize>,
        rows_in: usize,
        rows_out: usize,
        d: usize,
    ) -> ChainSlice<'_, 'a> {
        ChainSlice {
            steps: &self.steps[range],
            rows_in,
            rows_out,
            d,
        }
    }
}

/// Consecutive steps of a chain (token width d throughout).
pub struct ChainSlice<'s, 'a> {
    steps: &'s [Box<dyn Step + 'a>],
    rows_in: usize,
    rows_out: usize,
    d: usize,
}

impl ChainSlice<'_, '_> {
    fn apply(&self, mut t: Mat<f64>) -> Result<Mat<f64>> {
        for s in self.steps {
            t = s.jvp(t)?;
        }
        Ok(t)
    }
    fn apply_transpose(&self, mut y: Mat<f64>) -> Result<Mat<f64>> {
        for s in self.steps.iter().rev() {
            y = s.vjp(y)?;
        }
        Ok(y)
    }
}

impl LinearizedMap<f64> for ChainSlice<'_, '_> {
    type NormalData = ();

    fn n(&self) -> usize {
        self.rows_in
    }
    fn d_in(&self) -> usize {
        self.d
    }
    fn d_out(&self) -> usize {
        self.d
    }
    fn jvp(&self, t: MatRef<'_, f64>) -> Result<Mat<f64>> {
        crate::attention::forward::check_shape("JVP tangent", t, self.rows_in, self.d)?;
        self.apply(t.to_owned())
    }
    fn vjp(&self, y: MatRef<'_, f64>) -> Result<Mat<f64>> {
        crate::attention::forward::check_shape("VJP cotangent", y, self.rows_out, self.d)?;
        self.apply_transpose(y.to_owned())
    }
    fn normal_data(&self) {}
    fn normal_step(&self, _: &(), u: MatRef<'_, f64>) -> Result<(Mat<f64>, Mat<f64>)> {
        let image = self.apply(u.to_owned())?;
        let w = self.apply_transpose(image.clone())?;
        Ok((image, w))
    }
    fn image_output(&self, image: MatRef<'_, f64>) -> Mat<f64> {
        image.to_owned()
    }
}

/// A composition linearised at X (n x d_in) with its output shape: the map the Krylov
/// estimators run on for a block or a model.
pub struct StackLinearization<'a> {
    pub chain: Chain<'a>,
    /// The attention state its attention steps hold (resolved: dense or streaming).
    pub attention: super::AttentionMemory,
    pub n: usize,
    pub d_in: usize,
    /// Rows of the output: n, or 1 after pooling.
    pub rows_out: usize,
    pub d_out: usize,
}

impl StackLinearization<'_> {
    fn check(&self, what: &str, m: MatRef<'_, f64>, rows: usize, cols: usize) -> Result<()> {
        crate::attention::forward::check_shape(what, m, rows, cols)
    }
}

impl LinearizedMap<f64> for StackLinearization<'_> {
    type NormalData = ();

    fn n(&self) -> usize {
        self.n
    }
    fn d_in(&self) -> usize {
        self.d_in
    }
    fn d_out(&self) -> usize {
        self.d_out
    }
    fn jvp(&self, t: MatRef<'_, f64>) -> Result<Mat<f64>> {
        self.check("JVP tangent", t, self.n, self.d_in)?;
        self.chain.jvp(t.to_owned())
    }
    fn vjp(&self, y: MatRef<'_, f64>) -> Result<Mat<f64>> {
        self.check("VJP cotangent", y, self.rows_out, self.d_out)?;
        self.chain.vjp(y.to_owned())
    }
    fn normal_data(&self) {}
    fn normal_step(&self, _: &(), u: MatRef<'_, f64>) -> Result<(Mat<f64>, Mat<f64>)> {
        let image = self.chain.jvp(u.to_owned())?;
        let w = self.chain.vjp(image.clone())?;
        Ok((image, w))
    }
    fn image_output(&self, image: MatRef<'_, f64>) -> Mat<f64> {
        image.to_owned()
    }
}
