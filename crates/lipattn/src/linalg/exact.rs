//! Exact verification of a matrix identity A B = C in the real numbers that f64 entries stand
//! for, without big integers: every product is split exactly into two floats by a fused
//! multiply-add, and every sum is carried exactly as a list of floats by Knuth's two-sum
//! (docs/bounds.md#exact-factorisation). Used where a certificate holds only if a factorisation
//! is exact (B5 on all of R^{n x d}), so that "exact" is proven, not a tolerance.

use faer::MatRef;

/// Below this magnitude a nonzero product's rounding error may not be a float (it may underflow
/// the subnormal range), so the split a b = p + e is not proven exact: 2^-969 = 2^(-1022 + 53).
const EXACT_PRODUCT_MIN: f64 = f64::from_bits((1023 - 969) << 52);

/// s + t = a + b exactly (Knuth's TwoSum; exact in round-to-nearest binary arithmetic whenever s
/// is finite, subnormal results included).
fn two_sum(a: f64, b: f64) -> (f64, f64) {
    let s = a + b;
    let bb = s - a;
    let t = (a - (s - bb)) + (b - bb);
    (s, t)
}

/// The exact sum of floats, held as a list of floats whose exact sum it is.
struct ExactSum(Vec<f64>);

impl ExactSum {
    /// Adds b exactly (Shewchuk's Grow-Expansion): each two-sum replaces two floats by two
    /// floats of the same exact sum, so the invariant holds after every step; zeros are dropped.
    fn add(&mut self, b: f64) {
        let mut q = b;
        for h in self.0.iter_mut() {
            let (s, t) = two_sum(q, *h);
            *h = t;
            q = s;
        }
        self.0.push(q);
        self.0.retain(|&x| x != 0.0);
    }

    /// True only if the exact sum is proven zero: no component is left (a nonempty list of
    /// nonzero floats is not used to claim anything), and nothing overflowed on the way.
    fn is_zero(&self) -> bool {
        self.0.is_empty()
    }

    fn is_finite(&self) -> bool {
        self.0.iter().all(|x| x.is_finite())
    }
}

/// a b = p + e exactly, or None where that is not proven (overflow, or a product small enough
/// that its rounding error could underflow).
fn two_product(a: f64, b: f64) -> Option<(f64, f64)> {
    let p = a * b;
    if !p.is_finite() {
        return None;
    }
    if p == 0.0 {
        // 0 only exactly when a factor is 0; otherwise the product underflowed.
        return (a == 0.0 || b == 0.0).then_some((0.0, 0.0));
    }
    if p.abs() < EXACT_PRODUCT_MIN {
        return None;
    }
    Some((p, a.mul_add(b, -p)))
}

/// Whether this thread's arithmetic is what the proofs assume: gradual underflow (no
/// flush-to-zero of results, no subnormal inputs read as zero: a library built with fast-math
/// loaded into the process can switch either on) and a fused `mul_add` (a platform `fma` that
/// rounds twice would make every split error 0).
fn arithmetic_is_ieee() -> bool {
    use std::hint::black_box;
    let tiny = black_box(f64::MIN_POSITIVE);
    let sub = black_box(f64::from_bits(1));
    let x = black_box(1.0 + 2f64.powi(-30));
    tiny / 2.0 != 0.0
        && sub * 2.0 == f64::from_bits(2)
        && x.mul_add(x, -(1.0 + 2f64.powi(-29))) == 2f64.powi(-60)
}

/// Whether sum_l a_il b_lj = c_ij holds exactly for every entry. `false` means "not proven"
/// (different, or beyond what the split can decide: an overflow, a product below 2^-969, or a
/// thread whose arithmetic is not IEEE 754 with gradual underflow and a fused multiply-add);
/// `true` is a proof. Stops at the first entry that fails.
pub fn product_is_exactly(a: MatRef<'_, f64>, b: MatRef<'_, f64>, c: MatRef<'_, f64>) -> bool {
    let (p, k, q) = (a.nrows(), a.ncols(), b.ncols());
    if b.nrows() != k || c.nrows() != p || c.ncols() != q || !arithmetic_is_ieee() {
        return false;
    }
    let mut acc = ExactSum(Vec::with_capacity(2 * k + 1));
    for i in 0..p {
        for j in 0..q {
            acc.0.clear();
            let target = c[(i, j)];
            if !target.is_finite() {
                return false;
            }
            acc.add(-target);
            for l in 0..k {
                let Some((hi, lo)) = two_product(a[(i, l)], b[(l, j)]) else {
                    return false;
                };
                acc.add(hi);
                acc.add(lo);
            }
            if !(acc.is_finite() && acc.is_zero()) {
                return false;
            }
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use faer::Mat;

    #[test]
    fn threshold_is_two_to_the_minus_969() {
        assert_eq!(EXACT_PRODUCT_MIN, 2f64.powi(-969));
    }

    #[test]
    fn this_platform_has_the_assumed_arithmetic() {
        assert!(arithmetic_is_ieee());
    }

    #[test]
    fn exact_sums_cancel() {
        let mut s = ExactSum(vec![]);
        for x in [1e300, 1.0, -1e300, 2f64.powi(-60), -1.0, -(2f64.powi(-60))] {
            s.add(x);
        }
        assert!(s.is_zero());
        s.add(f64::from_bits(1));
        assert!(!s.is_zero());
    }

    /// Against exact integer arithmetic: entries m 2^e (|m| < 2^20, e in [-30, 10]) have
    /// products that are integers times 2^-60 below 2^121, so i128 holds every sum of up to 8 of
    /// them exactly. The claimed identity must hold exactly when claimed, and be claimed for
    /// the exact product and refused one unit in the last place away from it.
    #[test]
    fn agrees_with_integer_arithmetic() {
        let mut rng = crate::linalg::SplitMix::new(11);
        let draw = |rng: &mut crate::linalg::SplitMix| -> (f64, i128) {
            let m = (rng.uniform() * 2_097_152.0) as i64 - 1_048_576;
            let e = (rng.uniform() * 41.0) as i32 - 30;
            ((m as f64) * 2f64.powi(e), (m as i128) << (e + 30))
        };
        let mut claimed = 0;
        for _ in 0..1000 {
            let k = 1 + (rng.uniform() * 8.0) as usize;
            let a: Vec<(f64, i128)> = (0..k).map(|_| draw(&mut rng)).collect();
            let b: Vec<(f64, i128)> = (0..k).map(|_| draw(&mut rng)).collect();
            // Exact sum in units of 2^-60.
            let exact: i128 = a.iter().zip(&b).map(|(x, y)| x.1 * y.1).sum();
            let as_f64 = exact as f64 * 2f64.powi(-60);
            let representable = (as_f64 * 2f64.powi(60)) as i128 == exact;
            let am = Mat::from_fn(1, k, |_, l| a[l].0);
            let bm = Mat::from_fn(k, 1, |l, _| b[l].0);
            for c in [as_f64, as_f64.next_up(), as_f64.next_down()] {
                let cm = Mat::from_fn(1, 1, |_, _| c);
                let holds = representable && c == as_f64;
                assert_eq!(
                    product_is_exactly(am.as_ref(), bm.as_ref(), cm.as_ref()),
                    holds
                );
                claimed += holds as usize;
            }
        }
        assert!(claimed > 150, "too few exact cases to test: {claimed}");
    }

    #[test]
    fn products_are_split_exactly() {
        let a = Mat::from_fn(1, 2, |_, l| [0.1, 0.3][l]);
        let b = Mat::from_fn(2, 1, |l, _| [0.7, 0.9][l]);
        let c = &a * &b;
        // fl(0.1 * 0.7 + 0.3 * 0.9) is not the exact sum of the exact products.
        assert!(!product_is_exactly(a.as_ref(), b.as_ref(), c.as_ref()));
        let a = Mat::from_fn(1, 2, |_, l| [0.5, 0.25][l]);
        let b = Mat::from_fn(2, 1, |l, _| [3.0, -8.0][l]);
        let c = Mat::from_fn(1, 1, |_, _| -0.5);
        assert!(product_is_exactly(a.as_ref(), b.as_ref(), c.as_ref()));
    }
}
