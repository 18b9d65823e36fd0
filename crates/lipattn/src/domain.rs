//! Where a map is evaluated, bounded or searched: tokens in the closed ball B_R, sequences of `n`
//! of them, masked causally or not. It sits at the crate root, below both `bounds` (which certifies
//! on a domain) and `estimation` (which searches one), so that the two sides state and validate
//! the same domain and neither depends on the other for it.

use crate::error::{check_at_least, check_positive, Result};
use serde::Serialize;

/// Tokens (atoms) in the closed ball B_R of radius `radius`; for token maps, sequences of exactly
/// `n` tokens with uniform weights, causal or not.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Domain {
    pub radius: f64,
    pub n: usize,
    pub causal: bool,
}

impl Domain {
    pub fn new(radius: f64, n: usize, causal: bool) -> Result<Self> {
        Ok(Self {
            radius: check_radius(radius)?,
            n: check_len(n)?,
            causal,
        })
    }

    /// The same ball and mask for sequences of `n` tokens: a sweep over n keeps R and the mask.
    pub fn with_n(&self, n: usize) -> Result<Self> {
        Self::new(self.radius, n, self.causal)
    }
}

/// Where a certified constant holds.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum CertifiedDomain {
    /// Every token sequence in R^{n x d} (tied L2 attention with an exact factorisation, B5).
    All,
    /// Every token in the closed ball of this radius (every atom, for measures).
    Ball { radius: f64 },
}

/// The radius of B_R, for maps whose domain fixes a ball and nothing else (measures on P(B_R),
/// whatever their number of atoms); [`Domain::new`] checks its radius here.
pub fn check_radius(radius: f64) -> Result<f64> {
    check_positive("radius", radius)
}

/// A radius that may be absent, where a kernel is certified on all of R^d (tied L2) and a ball is
/// asked for only by the others: absent stays absent, present is checked as [`check_radius`].
pub fn check_optional_radius(radius: Option<f64>) -> Result<Option<f64>> {
    radius.map(check_radius).transpose()
}

/// The sequence length n of a token map, for maps certified without a ball (tied L2 on all of
/// R^{n x d}); [`Domain::new`] checks its n here.
pub fn check_len(n: usize) -> Result<usize> {
    check_at_least("sequence length n", n, 1)
}
