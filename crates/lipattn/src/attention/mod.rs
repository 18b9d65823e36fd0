//! Attention as an operator on measures (docs/background.md#notation).

pub mod forward;
pub mod layer;
pub mod softmax;

pub use layer::{AttentionLayer, Kernel};
