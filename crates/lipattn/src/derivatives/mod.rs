//! Exact derivatives of attention: JVP and VJP of the token map, the dense Jacobian built from
//! them, the Jacobian in the query, and the interface the Krylov estimators run on.

pub mod dense;
pub mod jvp;
pub mod linearization;
pub mod linearized_map;
pub mod memory;
pub mod query_jacobian;
pub mod stack;
pub mod streaming;
pub(crate) mod tiles;
pub mod vjp;

pub use linearization::Linearization;
pub use linearized_map::LinearizedMap;
pub use memory::{AttentionMemory, AttentionStates};
pub use query_jacobian::query_jacobian;
