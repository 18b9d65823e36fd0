//! How numbers are written in messages: errors, notes and the CLI's text output (JSON keeps every
//! digit). Rust's `{}` writes an f64 in plain decimal, so 1e300 becomes a 301-digit string; `{:e}`
//! writes 0.25 as `2.5e-1`. Both are hard to read in a sentence. The one style used everywhere:
//!
//! - magnitudes in [1e-4, 1e6) in plain decimal (`0.3`, `123457`, `0.000125`);
//! - others in scientific notation with no `+` and no padding (`3.26e273`, `1e-5`);
//! - `NaN`, `inf`, `-inf`; zero as `0` (or `-0`, which a message about a sign must not hide).
//!
//! [`compact`] keeps 6 significant digits: for computed quantities (bounds, residuals, radii),
//! where the full binary expansion is noise. [`exact`] keeps the shortest digits that read back
//! as the same f64: for a value the user gave (echoed back as typed) and for a value compared with
//! a threshold it is close to (a weight sum off 1 by 1e-12 must not print as `1`).

use std::fmt;

/// An f64 written in the message style; see the module documentation.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Num {
    value: f64,
    /// Significant digits; None for the shortest round-trip representation.
    digits: Option<usize>,
    /// Round toward +inf instead of to nearest: a certified upper bound shown in 6 digits must
    /// not read below the bound itself.
    upward: bool,
}

/// `x` with at most 6 significant digits.
pub fn compact(x: f64) -> Num {
    Num {
        value: x,
        digits: Some(6),
        upward: false,
    }
}

/// [`compact`] rounded toward +inf: for upper bounds (certified constants), whose displayed
/// value must not fall below the bound.
pub fn upper(x: f64) -> Num {
    Num {
        value: x,
        digits: Some(6),
        upward: true,
    }
}

/// `x` with the fewest digits that parse back to exactly `x`.
pub fn exact(x: f64) -> Num {
    Num {
        value: x,
        digits: None,
        upward: false,
    }
}

/// `sci` (|x| to p significant digits, to nearest) moved one unit in its last digit where it
/// lies below x (for x > 0) or above |x| (for x < 0, toward zero), so that the number shown is
/// at least x.
fn round_up(sci: &str, x: f64, p: usize) -> String {
    let shown: f64 = sci.parse().unwrap_or(x.abs());
    let step: i64 = if x > 0.0 && shown < x {
        1
    } else if x < 0.0 && shown > -x {
        -1
    } else {
        return sci.to_string();
    };
    let (mantissa, exponent) = sci.split_once('e').expect("`{:e}` writes an exponent");
    let mut exponent: i32 = exponent.parse().expect("`{:e}` writes an integer exponent");
    let digits: String = mantissa.chars().filter(char::is_ascii_digit).collect();
    let mut k: i64 = digits.parse().expect("`{:e}` writes digits");
    let top = 10i64.pow(p.min(17) as u32);
    k += step;
    if k >= top {
        k /= 10;
        exponent += 1;
    } else if k < top / 10 {
        k = top - 1;
        exponent -= 1;
    }
    let k = k.to_string();
    format!("{}.{}e{exponent}", &k[..1], &k[1..])
}

/// Plain decimal for decimal exponents in this range, scientific notation outside it.
const PLAIN_EXPONENTS: std::ops::Range<i32> = -4..6;

impl fmt::Display for Num {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let x = self.value;
        if x.is_nan() {
            return f.pad("NaN");
        }
        if x.is_infinite() {
            return f.pad(if x > 0.0 { "inf" } else { "-inf" });
        }
        if x == 0.0 {
            return f.pad(if x.is_sign_negative() { "-0" } else { "0" });
        }
        // `{:e}` rounds correctly (to the digits asked for, or to the shortest round trip); the
        // exponent is read after rounding, so 999999.7 at 6 digits is 1e6, not "1000000".
        let sci = match self.digits {
            Some(p) => format!("{:.*e}", p.max(1) - 1, x.abs()),
            None => format!("{:e}", x.abs()),
        };
        let sci = match self.digits {
            Some(p) if self.upward => round_up(&sci, x, p.max(1)),
            _ => sci,
        };
        let (mantissa, exponent) = sci.split_once('e').expect("`{:e}` writes an exponent");
        let exponent: i32 = exponent.parse().expect("`{:e}` writes an integer exponent");
        let digits: String = mantissa
            .chars()
            .filter(char::is_ascii_digit)
            .collect::<String>()
            .trim_end_matches('0')
            .to_string();
        let digits = if digits.is_empty() {
            "0".into()
        } else {
            digits
        };
        let sign = if x < 0.0 { "-" } else { "" };
        let body = if PLAIN_EXPONENTS.contains(&exponent) {
            plain(&digits, exponent)
        } else if digits.len() == 1 {
            format!("{digits}e{exponent}")
        } else {
            format!("{}.{}e{exponent}", &digits[..1], &digits[1..])
        };
        f.pad(&format!("{sign}{body}"))
    }
}

/// The decimal `0.d1d2... x 10^(exponent+1)` written without an exponent.
fn plain(digits: &str, exponent: i32) -> String {
    if exponent < 0 {
        let zeros = "0".repeat((-exponent - 1) as usize);
        return format!("0.{zeros}{digits}");
    }
    let int_len = exponent as usize + 1;
    if digits.len() <= int_len {
        format!("{digits}{}", "0".repeat(int_len - digits.len()))
    } else {
        format!("{}.{}", &digits[..int_len], &digits[int_len..])
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn upper_bounds_never_read_below_the_value() {
        assert_eq!(super::upper(1.0000001).to_string(), "1.00001");
        assert_eq!(super::upper(9.9999991).to_string(), "10");
        assert_eq!(super::upper(2.5).to_string(), "2.5");
        assert_eq!(super::upper(1.234564e300).to_string(), "1.23457e300");
        let mut x = 0.7f64;
        for _ in 0..2000 {
            x = x * 1.37 + 1e-3;
            if x > 1e200 {
                x = 0.3;
            }
            let shown: f64 = super::upper(x).to_string().parse().unwrap();
            assert!(shown >= x, "{x} shown as {shown}");
        }
    }

    use super::*;

    fn c(x: f64) -> String {
        compact(x).to_string()
    }

    fn e(x: f64) -> String {
        exact(x).to_string()
    }

    #[test]
    fn compact_keeps_six_significant_digits_and_switches_to_exponents_outside_1e_4_to_1e6() {
        assert_eq!(c(1e300), "1e300");
        assert_eq!(c(1e-300), "1e-300");
        assert_eq!(c(3.2605e273), "3.2605e273");
        assert_eq!(c(-3.2605123456e273), "-3.26051e273");
        assert_eq!(c(0.1 + 0.2), "0.3");
        assert_eq!(c(123456.789), "123457");
        assert_eq!(c(1e-5), "1e-5");
        assert_eq!(c(1.5e-5), "1.5e-5");
        assert_eq!(c(1e-4), "0.0001");
        assert_eq!(c(0.000123456789), "0.000123457");
        assert_eq!(c(999999.7), "1e6");
        assert_eq!(c(1e6), "1e6");
        assert_eq!(c(100.0), "100");
        assert_eq!(c(2.5), "2.5");
        assert_eq!(c(-7.0), "-7");
        assert_eq!(c(f64::MAX), "1.79769e308");
        assert_eq!(c(5e-324), "4.94066e-324");
    }

    #[test]
    fn special_values_are_named() {
        assert_eq!(c(f64::NAN), "NaN");
        assert_eq!(c(f64::INFINITY), "inf");
        assert_eq!(c(f64::NEG_INFINITY), "-inf");
        assert_eq!(c(0.0), "0");
        assert_eq!(c(-0.0), "-0");
        assert_eq!(e(-0.0), "-0");
        assert_eq!(e(f64::NAN), "NaN");
    }

    #[test]
    fn exact_round_trips_in_the_same_style() {
        assert_eq!(e(0.1 + 0.2), "0.30000000000000004");
        assert_eq!(e(1e300), "1e300");
        assert_eq!(e(1e-300), "1e-300");
        assert_eq!(e(123456.789), "123456.789");
        assert_eq!(e(1e-5), "1e-5");
        assert_eq!(e(1.0 - 1e-12), "0.999999999999");
        for x in [
            0.1 + 0.2,
            1.0 / 3.0,
            -2.0f64.sqrt() * 1e200,
            5e-324,
            f64::MAX,
            123456.789,
            1e-5,
            0.000123,
        ] {
            assert_eq!(e(x).parse::<f64>().unwrap(), x, "{x:e}");
        }
    }

    #[test]
    fn width_and_alignment_apply_to_the_whole_number() {
        assert_eq!(format!("{:>8}", compact(2.5)), "     2.5");
        assert_eq!(format!("{:<6}|", compact(f64::NAN)), "NaN   |");
    }
}
