//! The residual branch the dynamics iterate, scale and certify: a sublayer f of width d with its
//! forward map, its linearisation (for attained local constants and log-determinants), the factor
//! s of g = s f on the output projection, Lemma D0's row bound and a certified Frobenius constant
//! on sequences of n tokens (docs/dynamics.md#branches). Plain attention (B1/B1-tight/B4 for the
//! dot product, B5 for tied L2) and rotary attention (B7) are branches; every certificate of
//! invert and fixed-point is stated and checked through this trait only, so the two kernels get
//! the same hypotheses (a ball the map sends into itself, iterates inside it).

use super::certify::{self, Certificate};
use crate::attention::{AttentionLayer, Kernel};
use crate::derivatives::{Linearization, LinearizedMap};
use crate::error::Result;
use crate::operator::RotaryForm;
use faer::{Mat, MatRef};

pub trait Branch: Clone {
    /// The branch linearised at one X.
    type Lin<'a>: LinearizedMap<f64, NormalData = Mat<f64>>
    where
        Self: 'a;

    fn d_in(&self) -> usize;
    fn d_out(&self) -> usize;
    /// f(X) for a sequence X (n x d_in): the map the certificates are about.
    fn forward(&self, x: MatRef<'_, f64>) -> Result<Mat<f64>>;
    fn linearize<'a>(&'a self, x: MatRef<'_, f64>) -> Result<Self::Lin<'a>>;
    /// The branch with its output projection and output bias multiplied by s: X -> s f(X).
    fn scaled(&self, s: f64) -> Self;
    /// (m, b) with |f(X)_i| <= m max_j |x_j| + b for every X (Lemma D0), rounded upward.
    fn row_bound(&self) -> Result<(f64, f64)>;
    /// A certified Frobenius constant of X -> f(X) on n tokens: on all of R^{n x d} when the
    /// branch has one there, else on (B_R)^n for `radius` = R (Ok(None) when nothing is proven).
    fn token_lipschitz(&self, n: usize, radius: Option<f64>) -> Result<Option<Certificate>>;
    /// Whether the constant of `token_lipschitz` holds on a ball only.
    fn needs_ball(&self, n: usize) -> Result<bool>;
    /// Why a radius is required (when `needs_ball`), for the error that asks for one.
    fn needs_ball_reason(&self) -> &'static str;
    /// The score kernel a report names (rotary attention scores by dot products).
    fn kernel(&self) -> Kernel;
    /// Whether the map applies a causal mask (the rotary families' own; plain layers run unmasked
    /// in the dynamics).
    fn causal(&self) -> bool {
        false
    }
    /// The rotary structure a report states (rotary branches only).
    fn rotary_form(&self) -> Option<RotaryForm> {
        None
    }
    /// The same layer as a map of measures mu -> (Gamma_mu)_# mu, for the measure-space
    /// dynamics; an error saying why where the branch is no such map.
    fn measure_map(&self) -> Result<&AttentionLayer<f64>>;
}

impl Branch for AttentionLayer<f64> {
    type Lin<'a> = Linearization<'a, f64>;

    fn d_in(&self) -> usize {
        AttentionLayer::d_in(self)
    }
    fn d_out(&self) -> usize {
        AttentionLayer::d_out(self)
    }
    fn forward(&self, x: MatRef<'_, f64>) -> Result<Mat<f64>> {
        AttentionLayer::forward(self, x, None, false)
    }
    fn linearize<'a>(&'a self, x: MatRef<'_, f64>) -> Result<Linearization<'a, f64>> {
        Linearization::new(self, x, None, false)
    }
    fn scaled(&self, s: f64) -> Self {
        certify::scaled(self, s)
    }
    fn row_bound(&self) -> Result<(f64, f64)> {
        certify::row_bound(self)
    }
    fn token_lipschitz(&self, n: usize, radius: Option<f64>) -> Result<Option<Certificate>> {
        certify::token_lipschitz(self, n, radius)
    }
    fn needs_ball(&self, n: usize) -> Result<bool> {
        certify::needs_ball(self, n)
    }
    fn needs_ball_reason(&self) -> &'static str {
        match self.kernel {
            Kernel::Dot => "dot-product attention is Lipschitz only on a ball: give a radius",
            Kernel::L2 => "tied L2 attention whose W_V = U W_Q does not hold exactly in the stored numbers is certified on a ball only (docs/bounds.md#b5-on-a-ball): give a radius",
        }
    }
    fn kernel(&self) -> Kernel {
        self.kernel
    }
    fn measure_map(&self) -> Result<&AttentionLayer<f64>> {
        Ok(self)
    }
}
