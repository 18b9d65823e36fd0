//! Low-level numerical kernels shared by the domain modules, so that each exists once: matrix
//! products and their parallel split (`gemm`), the softmax and its derivative (`softmax`), Krylov
//! vector operations (`krylov`), norms, least-squares fits, row layouts, the seeded generator,
//! the outward-rounded arithmetic and norms that certificates are computed with (`rounding`), and
//! the exact check of a matrix identity (`exact`).
//! Domain modules define none of these themselves.
//!
//! Conventions, once for all: matrices are faer `Mat`/`MatRef` (column-major); tokens are rows;
//! norms, dot products and reductions accumulate in f64 whatever the element type; products over
//! a threshold split over the rayon pool in fixed blocks, so that sums are added in the same
//! order on every run; hot loops are compiled for AVX2+FMA and the baseline (`crate::simd`).

pub mod exact;
pub mod fit;
pub(crate) mod gemm;
pub(crate) mod krylov;
pub mod layout;
pub mod norms;
pub mod rng;
pub mod rounding;
pub mod softmax;

pub use fit::{least_squares, loglog, LineFit};
pub use layout::{flatten, unflatten};
pub use norms::{dist2, frobenius, max_row_norm, norm2};
pub use rng::SplitMix;
