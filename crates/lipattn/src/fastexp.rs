//! exp() over a slice of non-positive arguments (a softmax's logits minus their maximum), written
//! branch-free so that the compiler vectorises it. libm's exp is one call per element and was
//! 40% of a linearisation at n = 512.
//!
//! Method (as in Cephes): x = n ln2 + r with n = round(x / ln2) and |r| <= ln2 / 2, ln2 split in
//! a high part exact in n ln2_hi and a low part; exp(r) by a polynomial; 2^n put straight into
//! the exponent bits. n is read off the bits of x/ln2 + 1.5 2^(p-1), where the addition rounds
//! to an integer. Arguments below the type's EXP_UNDERFLOW give 0: there 2^n would be subnormal
//! (and the probabilities lose nothing a sum of at least 1 can see).
//! Accuracy: within 2 ulp of the correctly rounded value (tested against libm in tests/).
//!
//! Three compilations (crate::simd): AVX-512 and AVX2, both with fused multiply-adds (the same
//! operations, so the same results, 8 or 4 f64 lanes at a time), and baseline x86-64 with each
//! multiply-add split in two (`mul_add` without FMA hardware is a libm call per operation, a
//! software emulation on CPUs old enough to lack it). The split form rounds once more per step;
//! it stays within the same 2 ulp (tested below for all three).

/// In place: x -> exp(x) for x <= 0; x < `under` (at least -87) gives 0.
pub fn exp_nonpositive_f32(xs: &mut [f32], under: f32) {
    #[cfg(target_arch = "x86_64")]
    if crate::simd::avx512() {
        // SAFETY: the CPU has AVX-512 F/DQ/BW/VL, AVX2 and FMA.
        return unsafe { exp_f32_avx512(xs, under) };
    }
    #[cfg(target_arch = "x86_64")]
    if crate::simd::avx2_fma() {
        // SAFETY: the CPU has AVX2 and FMA.
        return unsafe { exp_f32_avx2(xs, under) };
    }
    exp_f32::<false>(xs, under)
}

/// In place: x -> exp(x) for x <= 0; x < `under` (at least -708) gives 0.
pub fn exp_nonpositive_f64(xs: &mut [f64], under: f64) {
    #[cfg(target_arch = "x86_64")]
    if crate::simd::avx512() {
        // SAFETY: the CPU has AVX-512 F/DQ/BW/VL, AVX2 and FMA.
        return unsafe { exp_f64_avx512(xs, under) };
    }
    #[cfg(target_arch = "x86_64")]
    if crate::simd::avx2_fma() {
        // SAFETY: the CPU has AVX2 and FMA.
        return unsafe { exp_f64_avx2(xs, under) };
    }
    exp_f64::<false>(xs, under)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn exp_f32_avx2(xs: &mut [f32], under: f32) {
    exp_f32::<true>(xs, under)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512dq,avx512bw,avx512vl,avx2,fma")]
unsafe fn exp_f32_avx512(xs: &mut [f32], under: f32) {
    exp_f32::<true>(xs, under)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn exp_f64_avx2(xs: &mut [f64], under: f64) {
    exp_f64::<true>(xs, under)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512dq,avx512bw,avx512vl,avx2,fma")]
unsafe fn exp_f64_avx512(xs: &mut [f64], under: f64) {
    exp_f64::<true>(xs, under)
}

/// a b + c, fused or not.
#[inline(always)]
fn madd<const FUSED: bool, F: std::ops::Mul<Output = F> + std::ops::Add<Output = F> + Fma>(
    a: F,
    b: F,
    c: F,
) -> F {
    if FUSED {
        a.fma(b, c)
    } else {
        a * b + c
    }
}

trait Fma {
    fn fma(self, b: Self, c: Self) -> Self;
}
impl Fma for f32 {
    #[inline(always)]
    fn fma(self, b: f32, c: f32) -> f32 {
        self.mul_add(b, c)
    }
}
impl Fma for f64 {
    #[inline(always)]
    fn fma(self, b: f64, c: f64) -> f64 {
        self.mul_add(b, c)
    }
}

#[inline(always)]
fn exp_f32<const FUSED: bool>(xs: &mut [f32], under: f32) {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    const MAGIC: f32 = 12_582_912.0; // 1.5 * 2^23
    let fma = madd::<FUSED, f32>;
    for x in xs.iter_mut() {
        let v = *x;
        let t = fma(v, LOG2E, MAGIC);
        let n = t - MAGIC;
        let r = fma(n, -LN2_LO, fma(n, -LN2_HI, v));
        let mut p: f32 = 1.987_569_1e-4;
        p = fma(p, r, 1.398_199_9e-3);
        p = fma(p, r, 8.333_452e-3);
        p = fma(p, r, 4.166_579_6e-2);
        p = fma(p, r, 1.666_666_5e-1);
        p = fma(p, r, 0.5);
        let e = fma(p, r * r, r) + 1.0;
        // n + 127 in the exponent field: the low bits of t hold n (two's complement).
        let scale = f32::from_bits((t.to_bits().wrapping_add(127)).wrapping_shl(23));
        let y = e * scale;
        *x = if v < under { 0.0 } else { y };
    }
}

#[inline(always)]
fn exp_f64<const FUSED: bool>(xs: &mut [f64], under: f64) {
    const LOG2E: f64 = std::f64::consts::LOG2_E;
    // fdlibm's split of ln 2: the high part has 32 trailing zero bits, so n ln2_hi is exact.
    const LN2_HI: f64 = f64::from_bits(0x3fe6_2e42_fee0_0000);
    const LN2_LO: f64 = f64::from_bits(0x3dea_39ef_3579_3c76);
    const MAGIC: f64 = 6_755_399_441_055_744.0; // 1.5 * 2^52
                                                // 1/k! for k = 13 down to 2: Taylor's remainder at |r| <= ln2/2 is below 5e-18.
    const C: [f64; 12] = [
        1.0 / 6_227_020_800.0,
        1.0 / 479_001_600.0,
        1.0 / 39_916_800.0,
        1.0 / 3_628_800.0,
        1.0 / 362_880.0,
        1.0 / 40_320.0,
        1.0 / 5_040.0,
        1.0 / 720.0,
        1.0 / 120.0,
        1.0 / 24.0,
        1.0 / 6.0,
        0.5,
    ];
    let fma = madd::<FUSED, f64>;
    for x in xs.iter_mut() {
        let v = *x;
        let t = fma(v, LOG2E, MAGIC);
        let n = t - MAGIC;
        let r = fma(n, -LN2_LO, fma(n, -LN2_HI, v));
        let mut p = C[0];
        for &c in &C[1..] {
            p = fma(p, r, c);
        }
        let e = fma(p, r * r, r) + 1.0;
        let scale = f64::from_bits((t.to_bits().wrapping_add(1023)).wrapping_shl(52));
        let y = e * scale;
        *x = if v < under { 0.0 } else { y };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Both compilations (fused on AVX2 machines, split everywhere) within 2 ulp of libm over
    /// the whole range, and 0 below the underflow threshold.
    #[test]
    fn both_paths_match_libm() {
        let m = 100_000;
        let xs64: Vec<f64> = (0..=m).map(|k| -708.0 * k as f64 / m as f64).collect();
        let xs32: Vec<f32> = (0..=m).map(|k| -87.0 * k as f32 / m as f32).collect();
        type Path = (&'static str, fn(&mut [f64], f64), fn(&mut [f32], f32));
        let mut paths: Vec<Path> = vec![("split", exp_f64::<false>, exp_f32::<false>)];
        #[cfg(target_arch = "x86_64")]
        if crate::simd::cpu_has_avx2_fma() {
            // SAFETY: the CPU has AVX2 and FMA.
            paths.push((
                "avx2",
                |x, u| unsafe { exp_f64_avx2(x, u) },
                |x, u| unsafe { exp_f32_avx2(x, u) },
            ));
        }
        #[cfg(target_arch = "x86_64")]
        if crate::simd::cpu_has_avx512() {
            // SAFETY: the CPU has AVX-512 F/DQ/BW/VL, AVX2 and FMA.
            paths.push((
                "avx512",
                |x, u| unsafe { exp_f64_avx512(x, u) },
                |x, u| unsafe { exp_f32_avx512(x, u) },
            ));
        }
        for (name, f64_path, f32_path) in paths {
            let mut y64 = xs64.clone();
            f64_path(&mut y64, -708.0);
            for (&x, &y) in xs64.iter().zip(&y64) {
                let e = x.exp();
                assert!(
                    (y - e).abs() <= 2.0 * f64::EPSILON * e,
                    "{name}: f64 exp({x}) = {y}, libm {e}"
                );
            }
            let mut y32 = xs32.clone();
            f32_path(&mut y32, -87.0);
            for (&x, &y) in xs32.iter().zip(&y32) {
                let e = (x as f64).exp();
                assert!(
                    (y as f64 - e).abs() <= 2.0 * f32::EPSILON as f64 * e,
                    "{name}: f32 exp({x}) = {y}, exact {e}"
                );
            }
            let (mut a, mut b) = ([0.0f64, -708.5, -1e300], [0.0f32, -87.5, -1e30]);
            f64_path(&mut a, -708.0);
            f32_path(&mut b, -87.0);
            assert_eq!(a, [1.0, 0.0, 0.0], "{name}");
            assert_eq!(b, [1.0, 0.0, 0.0], "{name}");
        }
    }

    /// The AVX-512 compilation does the AVX2 one's operations lane by lane: equal bit for bit,
    /// over the range and on slices whose lengths leave every kind of remainder.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn avx512_equals_avx2() {
        if !crate::simd::cpu_has_avx512() {
            return;
        }
        for len in [1usize, 7, 8, 15, 16, 17, 33, 1000, 100_001] {
            let xs64: Vec<f64> = (0..len).map(|k| -710.0 * k as f64 / len as f64).collect();
            let xs32: Vec<f32> = (0..len).map(|k| -88.0 * k as f32 / len as f32).collect();
            let (mut a64, mut b64) = (xs64.clone(), xs64);
            let (mut a32, mut b32) = (xs32.clone(), xs32);
            // SAFETY: the CPU has AVX-512 F/DQ/BW/VL, hence AVX2 and FMA too (checked above).
            unsafe {
                exp_f64_avx2(&mut a64, -708.0);
                exp_f64_avx512(&mut b64, -708.0);
                exp_f32_avx2(&mut a32, -87.0);
                exp_f32_avx512(&mut b32, -87.0);
            }
            let bits64 = |v: &[f64]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            let bits32 = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits64(&a64), bits64(&b64), "f64, length {len}");
            assert_eq!(bits32(&a32), bits32(&b32), "f32, length {len}");
        }
    }
}
