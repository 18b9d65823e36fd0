//! Low-level numerical helpers shared by the domain modules, so that each exists once.
//!
//! Conventions: matrices are faer `Mat`/`MatRef` (column-major); tokens are rows; norms and
//! reductions accumulate in f64 whatever the element type.

pub mod fit;
pub mod layout;
pub mod norms;

pub use fit::{least_squares, loglog, LineFit};
pub use layout::{flatten, unflatten};
pub use norms::{dist2, frobenius, max_row_norm, norm2};
