//! Exact derivatives of attention: JVP and VJP of the token map, the dense Jacobian built from
//! them, and the Jacobian in the query.

pub mod dense;
pub mod jvp;
pub mod linearization;
pub mod query_jacobian;
pub mod vjp;

pub use linearization::Linearization;
pub use query_jacobian::query_jacobian;
