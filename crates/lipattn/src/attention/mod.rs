//! Attention as an operator on measures (docs/background.md#notation).

pub mod forward;
pub mod layer;
pub mod norms;
pub(crate) mod rms;
pub mod rotary;

pub use crate::linalg::softmax;
pub use layer::{AttentionLayer, Kernel};
pub use norms::{LayerNorm, RmsNorm};
pub use rotary::{
    QkNorm, Rope, RopeScaling, RotaryAttention, RotaryLinearization, StreamingRotaryLinearization,
};
