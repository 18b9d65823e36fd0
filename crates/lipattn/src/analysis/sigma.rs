//! The attained value both passes measure: ||J(X)||_2 of one operator at one input X of the
//! domain (its n tokens, its mask), by Lanczos.

use crate::attention::AttentionLayer;
use crate::derivatives::Linearization;
use crate::domain::Domain;
use crate::error::Result;
use crate::estimation::{lanczos, LanczosOptions};
use faer::MatRef;

pub(super) fn local_sigma(
    op: &AttentionLayer<f64>,
    x: MatRef<'_, f64>,
    domain: &Domain,
    opts: &LanczosOptions,
) -> Result<f64> {
    debug_assert_eq!(x.nrows(), domain.n);
    let lin = Linearization::new(op, x, None, domain.causal)?;
    Ok(lanczos(&lin, opts, None)?.sigma)
}
