//! Attention as an operator on measures (math.md section 1).

pub mod layer;

pub use layer::{AttentionLayer, Kernel};
