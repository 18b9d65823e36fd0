//! Attention as an operator on measures (math.md section 1).

pub mod forward;
pub mod layer;
pub mod softmax;

pub use layer::{AttentionLayer, Kernel};
