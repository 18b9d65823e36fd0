//! Runtime selection of AVX2+FMA code for the crate's own hot loops.
//!
//! Why: the release build used to compile everything with `-C target-cpu=x86-64-v3`, so the CLI
//! and the Python wheel died with an illegal instruction on x86-64 CPUs without AVX2. The crate is
//! now compiled for baseline x86-64 (SSE2), and the few loops that carry the time outside the
//! GEMMs (softmax forward and backward, the vectorised exp, the Krylov vector operations) are
//! compiled twice: once under `#[target_feature(enable = "avx2,fma")]`, chosen at run time when the
//! CPU has both, and once for the baseline. faer already does the same for its GEMM kernels.
//!
//! Why these loops must run VEX-encoded, not only fast: faer's GEMM microkernels
//! (private-gemm-x86) are hand-written assembly that uses the 256/512-bit registers and returns
//! without `vzeroupper`, leaving the upper vector state dirty. Legacy-SSE instructions executed
//! in that state pay a transition penalty or a false dependency on Intel cores (measured at 45x on
//! exp() when this crate was built for SSE2). VEX-encoded instructions (what LLVM emits inside
//! an AVX2 function) do not. Two measures keep the penalty away:
//! - every dispatched body is `#[inline(always)]` into its `target_feature` wrapper, so the whole
//!   loop, including the exp polynomial that replaces libm, is VEX code; what it calls without
//!   being inlined would be baseline code again, so the bodies call nothing heavier than slices;
//! - `clear_upper_state` runs `vzeroupper` after every GEMM of the crate (`attention::forward::gemm`),
//!   so that baseline code after a product (bookkeeping, libm calls elsewhere) starts clean. LLVM
//!   itself emits `vzeroupper` on leaving a function that used the 256-bit registers, so the AVX2
//!   bodies hand back a clean state to their baseline callers.
//!
//! Why this and not a crate: `multiversion` would do the duplication with a proc macro, and pulp's
//! `WithSimd` with a trait per kernel; a dozen lines of `macro_rules!` cover our six kernels
//! without a new dependency. The choice is made once per process (an atomic load per call).
//!
//! `LIPATTN_NO_AVX2=1` in the environment forces the baseline bodies, so that the test suite can
//! check them on a machine that has AVX2 (`LIPATTN_NO_AVX2=1 cargo test --release --workspace`).
//!
//! A third compilation targets AVX-512 (F, DQ, BW, VL, with AVX2 and FMA), chosen over the AVX2
//! one where the CPU has it: the same bodies in 512-bit registers, half the instructions per
//! element for the exp polynomial and the elementwise tile loops of the streaming state. The
//! bodies do the same IEEE operations in the same order at any vector width (their reductions
//! keep fixed accumulator lanes), so the AVX-512 results equal the AVX2 ones bit for bit.
//! `LIPATTN_NO_AVX512=1` falls back to AVX2 (and `LIPATTN_NO_AVX2=1` to the baseline).

use std::sync::atomic::{AtomicU8, Ordering};

const UNKNOWN: u8 = 0;
const AVX2_FMA: u8 = 1;
const BASELINE: u8 = 2;
const AVX512: u8 = 3;

static LEVEL: AtomicU8 = AtomicU8::new(UNKNOWN);

/// Whether the AVX2+FMA (or AVX-512) bodies run: the CPU has both and `LIPATTN_NO_AVX2` is unset
/// (or "0").
#[inline]
pub fn avx2_fma() -> bool {
    matches!(level(), AVX2_FMA | AVX512)
}

/// Whether the AVX-512 bodies run: the CPU has AVX-512 F, DQ, BW and VL besides AVX2 and FMA,
/// and neither `LIPATTN_NO_AVX512` nor `LIPATTN_NO_AVX2` is set.
#[inline]
pub fn avx512() -> bool {
    level() == AVX512
}

#[inline]
fn level() -> u8 {
    match LEVEL.load(Ordering::Relaxed) {
        UNKNOWN => detect(),
        l => l,
    }
}

#[cold]
fn detect() -> u8 {
    let off = |name: &str| std::env::var_os(name).is_some_and(|v| !v.is_empty() && v != "0");
    let level = if off("LIPATTN_NO_AVX2") || !cpu_has_avx2_fma() {
        BASELINE
    } else if off("LIPATTN_NO_AVX512") || !cpu_has_avx512() {
        AVX2_FMA
    } else {
        AVX512
    };
    LEVEL.store(level, Ordering::Relaxed);
    level
}

/// The CPU's answer alone, regardless of `LIPATTN_NO_AVX2` (tests compare both bodies with it).
pub fn cpu_has_avx2_fma() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Whether the CPU can run the AVX-512 bodies, regardless of the environment (for tests).
pub fn cpu_has_avx512() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        cpu_has_avx2_fma()
            && std::is_x86_feature_detected!("avx512f")
            && std::is_x86_feature_detected!("avx512dq")
            && std::is_x86_feature_detected!("avx512bw")
            && std::is_x86_feature_detected!("avx512vl")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// `vzeroupper` where the CPU has AVX: call after code that may leave the upper halves of the
/// vector registers dirty (faer's assembly GEMM kernels). A no-op elsewhere.
#[inline]
pub(crate) fn clear_upper_state() {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx") {
        // SAFETY: the CPU has AVX (checked above).
        unsafe { vzeroupper() }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx")]
unsafe fn vzeroupper() {
    std::arch::x86_64::_mm256_zeroupper();
}

/// Defines `fn $name`, which runs `$body` compiled for AVX-512 when `avx512()`, for AVX2+FMA when
/// `avx2_fma()` and for the baseline otherwise; the compilations are `$name::portable` and
/// (x86-64) `$name::avx2` and `$name::avx512`, for
/// tests that compare them (a module and a function may share a name). Generic parameters go in
/// brackets: `fn f[T: Scalar](x: &[T]) -> T { .. }`. The body sees the enclosing module's items.
macro_rules! multiversion {
    (
        $(#[$attr:meta])*
        $vis:vis fn $name:ident $([$($gen:tt)*])? ($($arg:ident : $ty:ty),* $(,)?) $(-> $ret:ty)?
        $body:block
    ) => {
        $(#[$attr])*
        #[inline]
        $vis fn $name $(<$($gen)*>)? ($($arg: $ty),*) $(-> $ret)? {
            #[cfg(target_arch = "x86_64")]
            if $crate::simd::avx512() {
                // SAFETY: the CPU has AVX-512 F/DQ/BW/VL, AVX2 and FMA (`avx512` checked).
                return unsafe { $name::avx512($($arg),*) };
            }
            #[cfg(target_arch = "x86_64")]
            if $crate::simd::avx2_fma() {
                // SAFETY: the CPU has AVX2 and FMA (`avx2_fma` checked).
                return unsafe { $name::avx2($($arg),*) };
            }
            $name::portable($($arg),*)
        }

        #[doc(hidden)]
        #[allow(dead_code, unused_imports)]
        $vis mod $name {
            use super::*;

            #[inline(always)]
            pub fn portable $(<$($gen)*>)? ($($arg: $ty),*) $(-> $ret)? $body

            /// # Safety
            /// The CPU must support AVX2 and FMA.
            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx2,fma")]
            pub unsafe fn avx2 $(<$($gen)*>)? ($($arg: $ty),*) $(-> $ret)? $body

            /// # Safety
            /// The CPU must support AVX-512 F, DQ, BW and VL, AVX2 and FMA.
            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx512f,avx512dq,avx512bw,avx512vl,avx2,fma")]
            pub unsafe fn avx512 $(<$($gen)*>)? ($($arg: $ty),*) $(-> $ret)? $body
        }
    };
}
pub(crate) use multiversion;
