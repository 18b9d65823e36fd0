//! Optimal transport between weighted discrete measures, with a certificate for every exact answer.
//!
//! * [`exact`] / [`exact_with_cost`]: network simplex on the complete bipartite graph, ground
//!   cost `||x - y||^p` (p = 1 or 2) or a user cost matrix.
//! * [`sorted_1d`]: the monotone coupling on the line, exact for any convex cost `|x - y|^p`, p >= 1.
//! * [`sinkhorn`]: entropic transport in the log domain.
//!
//! Exact solvers return dual potentials `(u, v)`; [`certificate::certify`] recomputes from the
//! plan, the potentials and the cost alone (never from solver internals) the primal-dual gap, the
//! largest dual infeasibility `max(u_i + v_j - C_ij, 0)` over all pairs and the marginal error.

pub mod certificate;
pub mod cost;
pub mod exact;
pub mod masses;
mod network_simplex;
pub mod sinkhorn;
pub mod sorted;

pub use certificate::Certificate;
pub use cost::{check_p, ground_cost, CostMatrix};
pub use exact::{exact, exact_with_cost, exact_with_cost_matrix, Transport};
pub(crate) use masses::check_masses;
pub use masses::MASS_TOL;
pub use sinkhorn::{sinkhorn, sinkhorn_with_cost, Entropic, SinkhornOptions};
pub use sorted::sorted_1d;
