//! lipattn: how smooth is this attention layer, provably?
//!
//! Attention as an operator on discrete probability measures of tokens (Vuckovic, Baratin,
//! Tachet des Combes, arXiv 2102.05628), with exact derivatives, exact optimal transport,
//! certified Lipschitz bounds and attained lower bounds.

pub mod budget;
pub mod cancel;
pub mod domain;
pub mod error;
pub mod fmt;
pub mod linalg;
pub mod measure;
pub mod models;
pub mod names;
pub mod npy;
pub mod operator;
pub mod ops;
pub mod output;

pub use domain::Domain;
pub use error::{Error, Result};
pub use faer::{Mat, MatRef};
pub use measure::Measure;
pub use operator::{LayerSource, Operator};
pub mod analysis;
pub mod attention;
pub mod bounds;
pub mod derivatives;
pub mod dynamics;
pub mod estimation;
pub mod fastexp;
pub mod scalar;
pub mod simd;
pub mod transport;

pub use attention::{AttentionLayer, Kernel};
pub use derivatives::{query_jacobian, Linearization};
pub use scalar::Scalar;
