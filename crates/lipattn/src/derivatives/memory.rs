//! Which attention state a computation holds: the dense n x n probabilities of every head
//! ([`Linearization`](super::Linearization), `AttentionLayer::forward`) or the streaming
//! per-row statistics ([`StreamingLinearization`], docs/streaming.md), and the one rule that
//! picks between them (`auto`): dense when the dense state passes its memory budget check,
//! streaming otherwise. `local`, `analyze` and the model forward pass all choose through
//! [`AttentionMemory::resolve`].

use super::streaming::{StreamingLinearization, DEFAULT_BLOCK};
use crate::attention::AttentionLayer;
use crate::error::{Error, Result};
use crate::named_enum;
use crate::scalar::Scalar;
use faer::{Mat, MatRef};

named_enum! {
    /// How the attention state is held while the derivatives run (plain sublayers).
    pub enum AttentionMemory as "attention" {
        /// Dense when its n x n probability matrices fit the memory budget, streaming otherwise.
        Auto = "auto",
        /// The n x n probability matrices of every head (`derivatives::Linearization`).
        Dense = "dense",
        /// Per-row statistics only, probabilities recomputed block by block: O(n d) memory
        /// (`derivatives::streaming`, docs/streaming.md).
        Streaming = "streaming",
    }
}

impl AttentionMemory {
    /// The state to hold for `layer` on `n` tokens: `Dense` or `Streaming` as asked, and for
    /// `Auto` `Dense` exactly when the dense state's own budget check
    /// (`AttentionLayer::check_state_budget`, the same bytes and the same reservation) passes,
    /// else `Streaming`. Errors other than a refusal of the memory (a budget that cannot be
    /// read) are returned.
    pub fn resolve<T: Scalar>(self, layer: &AttentionLayer<T>, n: usize) -> Result<Self> {
        match self {
            AttentionMemory::Auto => match layer.check_state_budget(n, n) {
                Ok(()) => Ok(AttentionMemory::Dense),
                Err(Error::Budget { .. } | Error::OutOfMemory { .. }) => {
                    Ok(AttentionMemory::Streaming)
                }
                Err(e) => Err(e),
            },
            chosen => Ok(chosen),
        }
    }

    /// Bytes of the state this (resolved) choice keeps for `layer` on `n` tokens: the dense
    /// state's `state_bytes`, or the streaming linearisation's `memory_estimate` with the
    /// default block. The same estimates the budget checks use (None: beyond u64).
    pub fn state_bytes<T: Scalar>(self, layer: &AttentionLayer<T>, n: usize) -> Option<u64> {
        match self {
            AttentionMemory::Streaming => {
                super::streaming::memory_estimate(layer, n, DEFAULT_BLOCK)
            }
            _ => layer.state_bytes(n, n),
        }
    }
}

/// The layer's output f(X) at `x` (n x d) with the attention state `memory` asks for (resolved
/// by [`AttentionMemory::resolve`]), and the state that ran. The streaming output equals the
/// dense one to rounding (docs/streaming.md#tests).
pub fn attention_output<T: Scalar>(
    layer: &AttentionLayer<T>,
    x: MatRef<'_, T>,
    weights: Option<&[f64]>,
    causal: bool,
    memory: AttentionMemory,
) -> Result<(Mat<T>, AttentionMemory)> {
    match memory.resolve(layer, x.nrows())? {
        AttentionMemory::Streaming => {
            let lin = StreamingLinearization::new(layer, x, weights, causal, DEFAULT_BLOCK)?;
            Ok((lin.output().to_owned(), AttentionMemory::Streaming))
        }
        _ => Ok((layer.forward(x, weights, causal)?, AttentionMemory::Dense)),
    }
}
