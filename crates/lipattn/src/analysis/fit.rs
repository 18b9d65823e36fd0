//! Power laws sigma ~ c n^alpha fitted by least squares on log-log axes, the form in which
//! Castin, Ablin and Peyre report growth of local constants with the sequence length.

use serde::Serialize;

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PowerFit {
    /// alpha in c n^alpha.
    pub exponent: f64,
    /// c in c n^alpha.
    pub coefficient: f64,
    /// Coefficient of determination of the log-log fit.
    pub r2: f64,
    /// c of the fit with the exponent held at 1/2 (the adversarial law sqrt(n)).
    pub sqrt_coefficient: f64,
    pub n_min: usize,
    pub n_max: usize,
    pub points: usize,
}

/// Fits over the points with n in [n_min, n_max] and a positive finite value; None with fewer
/// than two distinct n.
pub fn fit_power_law(points: &[(usize, f64)], n_min: usize, n_max: usize) -> Option<PowerFit> {
    let kept: Vec<(usize, f64)> = points
        .iter()
        .copied()
        .filter(|&(n, y)| n >= n_min && n <= n_max && n > 0 && y.is_finite() && y > 0.0)
        .collect();
    let lo = kept.iter().map(|p| p.0).min()?;
    let hi = kept.iter().map(|p| p.0).max()?;
    if lo == hi {
        return None;
    }
    let pts: Vec<(f64, f64)> = kept
        .iter()
        .map(|&(n, y)| ((n as f64).ln(), y.ln()))
        .collect();
    let m = pts.len() as f64;
    let line = crate::linalg::least_squares(&pts)?;
    let (slope, intercept, r2) = (line.slope, line.intercept, line.r2);
    let sqrt_c = (pts.iter().map(|p| p.1 - 0.5 * p.0).sum::<f64>() / m).exp();
    Some(PowerFit {
        exponent: slope,
        coefficient: intercept.exp(),
        r2,
        sqrt_coefficient: sqrt_c,
        n_min: lo,
        n_max: hi,
        points: pts.len(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recovers_an_exact_power_law() {
        let pts: Vec<(usize, f64)> = [8usize, 16, 32, 64, 128]
            .iter()
            .map(|&n| (n, 14.0 * (n as f64).powf(0.24)))
            .collect();
        let f = fit_power_law(&pts, 1, 1000).unwrap();
        assert!((f.exponent - 0.24).abs() < 1e-12, "{f:?}");
        assert!((f.coefficient - 14.0).abs() < 1e-10, "{f:?}");
        assert!((f.r2 - 1.0).abs() < 1e-12);
        assert_eq!((f.n_min, f.n_max, f.points), (8, 128, 5));
    }

    #[test]
    fn sqrt_coefficient_is_exact_for_sqrt_data_and_range_filters() {
        let pts: Vec<(usize, f64)> = [2usize, 4, 8, 1000]
            .iter()
            .map(|&n| {
                (
                    n,
                    if n == 1000 {
                        1.0
                    } else {
                        4.4 * (n as f64).sqrt()
                    },
                )
            })
            .collect();
        let f = fit_power_law(&pts, 2, 8).unwrap();
        assert!((f.sqrt_coefficient - 4.4).abs() < 1e-12);
        assert!((f.exponent - 0.5).abs() < 1e-12);
        assert!(fit_power_law(&pts, 3, 5).is_none());
        assert!(fit_power_law(&[(4, 1.0), (4, 2.0), (8, f64::NAN)], 1, 9).is_none());
    }
}
