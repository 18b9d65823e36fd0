//! Which attention state a computation holds: the dense n x n probabilities of every head
//! ([`Linearization`](super::Linearization), `AttentionLayer::forward`) or the streaming
//! per-row statistics ([`StreamingLinearization`], docs/streaming.md), and the one rule that
//! picks between them (`auto`): dense when the dense state passes its memory budget check,
//! streaming otherwise, for plain and rotary sublayers alike ([`AttentionStates`]). `local`,
//! `analyze` and the model forward pass all choose through [`AttentionMemory::resolve`]; the
//! blocks and models of `local` and `certify` apply the same rule to their whole chain
//! (`models::StackWeights::resolve_attention`).

use super::streaming::{StreamingLinearization, DEFAULT_BLOCK};
use crate::attention::{AttentionLayer, RotaryAttention, StreamingRotaryLinearization};
use crate::error::{Error, Result};
use crate::named_enum;
use crate::scalar::Scalar;
use faer::{Mat, MatRef};

named_enum! {
    /// How the attention state is held while the derivatives run.
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

/// What the one rule reads of a sublayer: its dense state's own budget check and the bytes of
/// each state. Plain sublayers (`AttentionLayer`: n x n probabilities per head) and rotary ones
/// (`RotaryAttention`: probabilities and softcap tanh on the visible band) both answer it, so
/// `auto` means the same for both.
pub trait AttentionStates {
    /// The dense state's budget check at n tokens, the one its constructor makes.
    fn check_dense_budget(&self, n: usize) -> Result<()>;
    /// Bytes of the dense state at n tokens (None: beyond u64).
    fn dense_bytes(&self, n: usize) -> Option<u64>;
    /// Bytes of the streaming linearisation at n tokens with the default block.
    fn streaming_bytes(&self, n: usize) -> Option<u64>;
}

impl<T: Scalar> AttentionStates for AttentionLayer<T> {
    fn check_dense_budget(&self, n: usize) -> Result<()> {
        self.check_state_budget(n, n)
    }

    fn dense_bytes(&self, n: usize) -> Option<u64> {
        self.state_bytes(n, n)
    }

    fn streaming_bytes(&self, n: usize) -> Option<u64> {
        super::streaming::memory_estimate(self, n, DEFAULT_BLOCK)
    }
}

impl<T: Scalar> AttentionStates for RotaryAttention<T> {
    fn check_dense_budget(&self, n: usize) -> Result<()> {
        self.check_state_budget(n, true)
    }

    fn dense_bytes(&self, n: usize) -> Option<u64> {
        self.state_bytes(n, true)
    }

    fn streaming_bytes(&self, n: usize) -> Option<u64> {
        crate::attention::rotary::streaming_memory_estimate(self, n, DEFAULT_BLOCK)
    }
}

/// Boxed layers (the certify and model paths hold them so) resolve as their contents.
impl<L: AttentionStates + ?Sized> AttentionStates for Box<L> {
    fn check_dense_budget(&self, n: usize) -> Result<()> {
        (**self).check_dense_budget(n)
    }

    fn dense_bytes(&self, n: usize) -> Option<u64> {
        (**self).dense_bytes(n)
    }

    fn streaming_bytes(&self, n: usize) -> Option<u64> {
        (**self).streaming_bytes(n)
    }
}

impl AttentionMemory {
    /// The state to hold for `layer` on `n` tokens: `Dense` or `Streaming` as asked, and for
    /// `Auto` `Dense` exactly when the dense state's own budget check
    /// ([`AttentionStates::check_dense_budget`], the same bytes and the same reservation)
    /// passes, else `Streaming`. Errors other than a refusal of the memory (a budget that cannot
    /// be read) are returned.
    pub fn resolve<L: AttentionStates + ?Sized>(self, layer: &L, n: usize) -> Result<Self> {
        match self {
            AttentionMemory::Auto => match layer.check_dense_budget(n) {
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
    /// state's bytes, or the streaming linearisation's `memory_estimate` with the default
    /// block. The same estimates the budget checks use (None: beyond u64).
    pub fn state_bytes<L: AttentionStates + ?Sized>(self, layer: &L, n: usize) -> Option<u64> {
        match self {
            AttentionMemory::Streaming => layer.streaming_bytes(n),
            _ => layer.dense_bytes(n),
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

/// `attention_output` for a rotary sublayer (its own causal, possibly windowed mask; positions
/// 0..n-1), resolved by the same rule.
pub fn rotary_attention_output<T: Scalar>(
    layer: &RotaryAttention<T>,
    x: MatRef<'_, T>,
    memory: AttentionMemory,
) -> Result<(Mat<T>, AttentionMemory)> {
    match memory.resolve(layer, x.nrows())? {
        AttentionMemory::Streaming => {
            let lin = StreamingRotaryLinearization::new(layer, x, DEFAULT_BLOCK)?;
            Ok((lin.output(), AttentionMemory::Streaming))
        }
        _ => Ok((layer.forward(x)?, AttentionMemory::Dense)),
    }
}
