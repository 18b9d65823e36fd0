//! The attained value both passes measure: ||J(X)||_2 of one operator at one input X of the
//! domain (its n tokens, its mask), by Lanczos, on the attention state the plan chose for the
//! operator at that n (dense or streaming, `super::memory`).

use crate::attention::{
    AttentionLayer, RotaryAttention, RotaryLinearization, StreamingRotaryLinearization,
};
use crate::derivatives::streaming::{StreamingLinearization, DEFAULT_BLOCK};
use crate::derivatives::{AttentionMemory, Linearization};
use crate::domain::Domain;
use crate::error::Result;
use crate::estimation::{lanczos, LanczosOptions};
use faer::MatRef;

/// `attention` is resolved (`Dense` or `Streaming`); `Auto` runs dense.
pub(super) fn local_sigma(
    op: &AttentionLayer<f64>,
    x: MatRef<'_, f64>,
    domain: &Domain,
    opts: &LanczosOptions,
    attention: AttentionMemory,
) -> Result<f64> {
    debug_assert_eq!(x.nrows(), domain.n);
    Ok(match attention {
        AttentionMemory::Streaming => {
            let lin = StreamingLinearization::new(op, x, None, domain.causal, DEFAULT_BLOCK)?;
            lanczos(&lin, opts, None)?.sigma
        }
        _ => {
            let lin = Linearization::new(op, x, None, domain.causal)?;
            lanczos(&lin, opts, None)?.sigma
        }
    })
}

/// `local_sigma` for a rotary sublayer (its own causal, possibly windowed mask, positions
/// 0..n-1); `attention` resolved as there.
pub(super) fn rotary_local_sigma(
    op: &RotaryAttention,
    x: MatRef<'_, f64>,
    opts: &LanczosOptions,
    attention: AttentionMemory,
) -> Result<f64> {
    Ok(match attention {
        AttentionMemory::Streaming => {
            let lin = StreamingRotaryLinearization::new(op, x, DEFAULT_BLOCK)?;
            lanczos(&lin, opts, None)?.sigma
        }
        _ => {
            let lin = RotaryLinearization::new(op, x)?;
            lanczos(&lin, opts, None)?.sigma
        }
    })
}
