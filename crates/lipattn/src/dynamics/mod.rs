//! Regularity put to work (docs/background.md#dynamics; proofs in docs/dynamics.md): residual
//! blocks whose attention branch is a certified contraction and their inverses, log-determinants of
//! their Jacobians, weight-tied attention of infinite depth (fixed points in token and measure
//! space) and continuous-depth attention flows.
//!
//! Every number called certified here is proven in docs/dynamics.md from the bounds of
//! docs/bounds.md (B1, B2, B4, B5); everything else (traces, attained constants, stochastic
//! estimates) is reported as measured or estimated.

pub mod anderson;
pub mod any_branch;
pub mod branch;
pub mod broyden;
pub mod certify;
mod checks;
pub mod fixed_point;
pub mod flow;
mod integrator;
pub mod invertible;
pub mod logdet;
pub mod rotary_branch;
pub mod solver;
pub mod synthetic;
pub mod token_flow;

pub use any_branch::AnyBranch;
pub use branch::Branch;
pub use certify::{Certificate, CertifiedDomain};
pub use fixed_point::{MeasureFixedPoint, TokenFixedPoint, Variant};
pub use flow::{FlowOptions, Integrator, Projection, Trajectory};
pub use invertible::{Inversion, InvertibleBlock};
pub use logdet::{logdet_exact, logdet_series, LogDetEstimate, LogDetExact};
pub use rotary_branch::RotaryBranch;
pub use solver::{solve, FixedPointMap, Solution, SolveOptions, Solver};

pub(crate) use crate::linalg::{dist2, flatten, norm2, unflatten};
pub use crate::linalg::{frobenius, max_row_norm};
pub(crate) use checks::EPS;
pub use checks::{check_contraction_target, CONTRACTION_MARGIN};
