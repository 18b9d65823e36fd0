//! The floating-point types the attention engine runs in (f64 by default, f32 where it pays).

use faer::traits::RealField;

pub trait Scalar:
    RealField + Copy + Send + Sync + 'static + std::fmt::Debug + std::fmt::Display + PartialOrd
{
    const NAME: &'static str;
    /// Below this argument exp() underflows to a subnormal or zero; such terms are set to 0
    /// directly (libm's subnormal path is two orders of magnitude slower).
    const EXP_UNDERFLOW: f64;
    fn of(v: f64) -> Self;
    fn f64(self) -> f64;
    fn exp(self) -> Self;
    /// In place exp of non-positive arguments (shifted logits), vectorised; arguments below
    /// EXP_UNDERFLOW give 0 (crate::fastexp).
    fn exp_nonpositive(xs: &mut [Self]);
    fn ln(self) -> Self;
    fn sqrt(self) -> Self;
    fn is_finite(self) -> bool;
    fn neg_infinity() -> Self;
    /// 0 for a subnormal, else the value: products with subnormal operands take a microcode
    /// assist of about a hundred cycles per vector instruction on x86.
    fn flush_subnormal(self) -> Self;
    /// `m` itself when Self is f32: a caller that needs f32 reads it without a copy.
    fn as_f32(m: faer::MatRef<'_, Self>) -> Option<faer::MatRef<'_, f32>>;
    /// `m` itself when Self is f64.
    fn as_f64(m: faer::MatRef<'_, Self>) -> Option<faer::MatRef<'_, f64>>;
}

macro_rules! impl_scalar {
    ($t:ty, $name:literal, $under:expr, $exp_slice:path, $as32:expr, $as64:expr) => {
        impl Scalar for $t {
            const NAME: &'static str = $name;
            const EXP_UNDERFLOW: f64 = $under;
            #[inline(always)]
            fn of(v: f64) -> Self {
                v as $t
            }
            #[inline(always)]
            fn f64(self) -> f64 {
                self as f64
            }
            #[inline(always)]
            fn exp(self) -> Self {
                <$t>::exp(self)
            }
            #[inline(always)]
            fn exp_nonpositive(xs: &mut [Self]) {
                $exp_slice(xs, $under)
            }
            #[inline(always)]
            fn ln(self) -> Self {
                <$t>::ln(self)
            }
            #[inline(always)]
            fn sqrt(self) -> Self {
                <$t>::sqrt(self)
            }
            #[inline(always)]
            fn is_finite(self) -> bool {
                <$t>::is_finite(self)
            }
            #[inline(always)]
            fn neg_infinity() -> Self {
                <$t>::NEG_INFINITY
            }
            #[inline(always)]
            fn flush_subnormal(self) -> Self {
                if self.abs() < <$t>::MIN_POSITIVE {
                    0.0
                } else {
                    self
                }
            }
            #[inline(always)]
            fn as_f32(m: faer::MatRef<'_, Self>) -> Option<faer::MatRef<'_, f32>> {
                $as32(m)
            }
            #[inline(always)]
            fn as_f64(m: faer::MatRef<'_, Self>) -> Option<faer::MatRef<'_, f64>> {
                $as64(m)
            }
        }
    };
}
impl_scalar!(
    f64,
    "f64",
    -708.0,
    crate::fastexp::exp_nonpositive_f64,
    |_| None,
    Some
);
impl_scalar!(
    f32,
    "f32",
    -87.0,
    crate::fastexp::exp_nonpositive_f32,
    Some,
    |_| None
);
