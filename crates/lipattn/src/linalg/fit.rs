//! Least-squares lines, the one fit behind every power law the library reports (growth
//! exponents of local constants in n, mean-field rates).

/// y = intercept + slope x fitted by least squares.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LineFit {
    pub slope: f64,
    pub intercept: f64,
    /// Coefficient of determination (1 when every y is equal).
    pub r2: f64,
}

/// The least-squares line through `points`; None with fewer than two distinct x.
pub fn least_squares(points: &[(f64, f64)]) -> Option<LineFit> {
    let m = points.len() as f64;
    let mx = points.iter().map(|p| p.0).sum::<f64>() / m;
    let my = points.iter().map(|p| p.1).sum::<f64>() / m;
    let sxx = points.iter().map(|p| (p.0 - mx).powi(2)).sum::<f64>();
    if sxx.is_nan() || sxx <= 0.0 {
        return None;
    }
    let sxy = points.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum::<f64>();
    let syy = points.iter().map(|p| (p.1 - my).powi(2)).sum::<f64>();
    let slope = sxy / sxx;
    let intercept = my - slope * mx;
    let sse = points
        .iter()
        .map(|p| (p.1 - intercept - slope * p.0).powi(2))
        .sum::<f64>();
    let r2 = if syy > 0.0 { 1.0 - sse / syy } else { 1.0 };
    Some(LineFit {
        slope,
        intercept,
        r2,
    })
}

/// The least-squares line of log y against log x over the points with x, y > 0 (a power law
/// y = e^intercept x^slope); None with fewer than two distinct such x.
pub fn loglog(points: impl IntoIterator<Item = (f64, f64)>) -> Option<LineFit> {
    let logs: Vec<(f64, f64)> = points
        .into_iter()
        .filter(|&(x, y)| x > 0.0 && y > 0.0 && x.is_finite() && y.is_finite())
        .map(|(x, y)| (x.ln(), y.ln()))
        .collect();
    least_squares(&logs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recovers_a_power_law_and_refuses_a_single_abscissa() {
        let pts: Vec<(f64, f64)> = [2.0, 4.0, 8.0, 16.0]
            .iter()
            .map(|&n: &f64| (n, 3.0 * n.powf(0.25)))
            .collect();
        let f = loglog(pts).unwrap();
        assert!((f.slope - 0.25).abs() < 1e-12 && (f.intercept.exp() - 3.0).abs() < 1e-12);
        assert!((f.r2 - 1.0).abs() < 1e-12);
        assert!(loglog([(4.0, 1.0), (4.0, 2.0), (0.0, 1.0)]).is_none());
    }
}
