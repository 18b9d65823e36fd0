//! Certified Lipschitz upper bounds (provenance in docs/background.md#upper-bounds; proofs in
//! docs/bounds.md) and, for comparison only, the anchor's published formulas (never labelled
//! certified).

pub mod ball;
pub mod chain_ball;
pub mod composed;
pub mod constants;
pub mod cross_attention;
pub mod joint;
pub mod l2;
pub mod layer_norm;
pub mod measure_w1;
pub mod piece_ball;
pub mod rotary;
pub mod token_map;

mod bound;
mod metric;
mod summary;

pub use crate::domain::Domain;
/// Outward rounding lives with the other kernels (`linalg::rounding`); certificates are its users.
pub use crate::linalg::rounding;
pub use bound::{best, Bound};
pub use constants::HeadConstants;
pub use metric::Metric;
pub(crate) use summary::require_dot;
pub use summary::{
    certified_summaries, certified_summary, head_constants, Certified, CertifiedSummary,
    LayerConstants,
};
