//! The attained value both passes measure: ||J(X)||_2 of one operator at one input, by Lanczos.

use crate::attention::AttentionLayer;
use crate::derivatives::Linearization;
use crate::error::Result;
use crate::estimation::{lanczos, LanczosOptions};
use faer::MatRef;

pub(super) fn local_sigma(
    op: &AttentionLayer<f64>,
    x: MatRef<'_, f64>,
    causal: bool,
    opts: &LanczosOptions,
) -> Result<f64> {
    let lin = Linearization::new(op, x, None, causal)?;
    Ok(lanczos(&lin, opts, None)?.sigma)
}
