//! Rotary attention as a residual branch (docs/dynamics.md#branches): the sublayer on positions
//! 0..n-1 with its own causal or sliding-window mask, certified by B7 on (B_R)^n
//! (docs/bounds.md#b7-rotary). Rotary attention is never certified on all of R^{n x d} (the
//! scores grow with R), so every certificate here holds on a ball, and the dynamics prove that
//! the iterates stay in it exactly as for the unrotated dot product (Lemma D0).

use super::branch::Branch;
use super::certify::Certificate;
use crate::attention::{AttentionLayer, Kernel, RotaryAttention, RotaryLinearization};
use crate::bounds;
use crate::domain::Domain;
use crate::error::{Error, Result};
use crate::linalg::rounding::{add_up, norm2_up, product_frob_up, product_norm_up};
use crate::operator::RotaryForm;
use faer::{Mat, MatRef};

/// A rotary sublayer with the `model_type` its reports name.
#[derive(Clone, Debug)]
pub struct RotaryBranch {
    pub layer: RotaryAttention,
    pub family: &'static str,
}

impl RotaryBranch {
    pub fn new(layer: RotaryAttention, family: &'static str) -> Self {
        Self { layer, family }
    }
}

impl Branch for RotaryBranch {
    type Lin<'a> = RotaryLinearization<'a>;

    fn d_in(&self) -> usize {
        self.layer.d_in()
    }
    fn d_out(&self) -> usize {
        self.layer.d_out()
    }
    fn forward(&self, x: MatRef<'_, f64>) -> Result<Mat<f64>> {
        self.layer.forward(x)
    }
    fn linearize<'a>(&'a self, x: MatRef<'_, f64>) -> Result<RotaryLinearization<'a>> {
        RotaryLinearization::new(&self.layer, x)
    }
    fn scaled(&self, s: f64) -> Self {
        let mut g = self.clone();
        for j in 0..g.layer.wo.ncols() {
            for i in 0..g.layer.wo.nrows() {
                g.layer.wo[(i, j)] *= s;
            }
        }
        for b in &mut g.layer.bo {
            *b *= s;
        }
        g
    }
    /// Lemma D0 holds for any probability weights over the visible keys, so the mask and the
    /// rotations do not enter: m = sum_h |W_O^h W_V^{g(h)}|, b = sum_h |W_O^h b_V^{g(h)}| + |b_O|.
    fn row_bound(&self) -> Result<(f64, f64)> {
        let l = &self.layer;
        let hd = l.head_dim;
        let mut m = 0.0;
        let mut b = 0.0;
        for h in 0..l.heads {
            let g = h / l.group();
            let wo_h = l.wo.as_ref().subcols(h * hd, hd);
            let wv_g = l.wv.as_ref().subrows(g * hd, hd);
            m = add_up(m, product_norm_up(&[wo_h, wv_g])?);
            let bv = Mat::from_fn(hd, 1, |k, _| l.bv[g * hd + k]);
            b = add_up(b, product_frob_up(&[wo_h, bv.as_ref()]));
        }
        Ok((m, add_up(b, norm2_up(l.bo.iter().copied()))))
    }
    fn token_lipschitz(&self, n: usize, radius: Option<f64>) -> Result<Option<Certificate>> {
        super::certify::check_square(self)?;
        let Some(r) = radius else {
            return Err(Error::invalid(self.needs_ball_reason()));
        };
        // B7's column sum is the causal one whatever the flag; the window enters through the layer.
        let domain = Domain::new(r, n, true)?;
        let consts = bounds::rotary::RotaryConstants::of(&self.layer)?;
        let all = bounds::rotary::rotary_bounds(&self.layer, &consts, &domain)?;
        Ok(Certificate::best_frobenius_on_ball(&all, r, n))
    }
    fn needs_ball(&self, _n: usize) -> Result<bool> {
        Ok(true)
    }
    fn needs_ball_reason(&self) -> &'static str {
        "rotary attention is Lipschitz only on a ball (B7, docs/bounds.md#b7-rotary): give a radius"
    }
    fn kernel(&self) -> Kernel {
        Kernel::Dot
    }
    fn causal(&self) -> bool {
        true
    }
    fn rotary_form(&self) -> Option<RotaryForm> {
        Some(RotaryForm::of(self.family, &self.layer))
    }
    fn measure_map(&self) -> Result<&AttentionLayer<f64>> {
        Err(Error::Option(format!(
            "model_type '{}': rotary attention depends on the positions of the tokens, so it is no map of measures on B_R (docs/bounds.md#b7-measure-view) and the measure-space dynamics (fixed-point `space` 'measure', whose W1 contraction is stated for measures) do not apply; the token-space dynamics (invert, fixed-point `space` 'tokens', and flow, which integrates dX/dt = f(X) on the token matrix) run on it",
            self.family
        )))
    }
}
