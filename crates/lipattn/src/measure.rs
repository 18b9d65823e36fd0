//! Discrete probability measures mu = sum_j w_j delta_{x_j} on R^d.

use crate::error::{check_finite, Error, Result};
use faer::{Mat, MatRef};

/// Default tolerance on |sum w - 1| accepted by [`Measure::new`].
pub const WEIGHT_SUM_TOL: f64 = 1e-9;

/// A weighted discrete probability measure: rows of `points` are atoms, `weights` their masses.
/// Invariants (checked on construction): n >= 1, d >= 1, finite coordinates, positive finite
/// weights summing to 1 within [`WEIGHT_SUM_TOL`].
#[derive(Clone, Debug)]
pub struct Measure {
    points: Mat<f64>,
    weights: Vec<f64>,
}

impl Measure {
    /// Validates and builds; weights must already sum to 1 within [`WEIGHT_SUM_TOL`].
    pub fn new(points: Mat<f64>, weights: Vec<f64>) -> Result<Self> {
        Self::with_tolerance(points, weights, WEIGHT_SUM_TOL)
    }

    pub fn with_tolerance(points: Mat<f64>, weights: Vec<f64>, tol: f64) -> Result<Self> {
        validate_points("measure points", points.as_ref())?;
        validate_weights("measure weights", &weights, points.nrows())?;
        let sum: f64 = weights.iter().sum();
        if (sum - 1.0).abs() > tol {
            return Err(Error::NotNormalised {
                what: "measure weights".into(),
                sum,
                tol,
            });
        }
        Ok(Self { points, weights })
    }

    /// Rescales positive weights to sum to 1. The only constructor that changes the weights.
    pub fn normalised(points: Mat<f64>, mut weights: Vec<f64>) -> Result<Self> {
        validate_points("measure points", points.as_ref())?;
        validate_weights("measure weights", &weights, points.nrows())?;
        // Divided by the largest first, so that weights near f64::MAX do not sum to infinity
        // (which would turn every weight into 0) and tiny ones do not lose their digits.
        let max = weights.iter().copied().fold(0.0, f64::max);
        weights.iter_mut().for_each(|w| *w /= max);
        let sum: f64 = weights.iter().sum();
        weights.iter_mut().for_each(|w| *w /= sum);
        Ok(Self { points, weights })
    }

    /// `points` with `weights` (uniform when absent), rescaled to total mass 1 when `normalise`
    /// and validated as given otherwise.
    pub fn with_weights(
        points: Mat<f64>,
        weights: Option<Vec<f64>>,
        normalise: bool,
    ) -> Result<Self> {
        match weights {
            None => Self::uniform(points),
            Some(w) if normalise => Self::normalised(points, w),
            Some(w) => Self::new(points, w),
        }
    }

    /// The empirical measure of a token sequence: weight 1/n on each row.
    pub fn uniform(points: Mat<f64>) -> Result<Self> {
        validate_points("tokens", points.as_ref())?;
        let n = points.nrows();
        Ok(Self {
            points,
            weights: vec![1.0 / n as f64; n],
        })
    }

    pub fn len(&self) -> usize {
        self.points.nrows()
    }

    pub fn is_empty(&self) -> bool {
        self.points.nrows() == 0
    }

    pub fn dim(&self) -> usize {
        self.points.ncols()
    }

    pub fn points(&self) -> MatRef<'_, f64> {
        self.points.as_ref()
    }

    pub fn weights(&self) -> &[f64] {
        &self.weights
    }

    pub fn log_weights(&self) -> Vec<f64> {
        self.weights.iter().map(|w| w.ln()).collect()
    }

    pub fn point(&self, i: usize) -> Vec<f64> {
        (0..self.dim()).map(|k| self.points[(i, k)]).collect()
    }

    /// Merges atoms at identical coordinates (bitwise equal after normalising -0.0 to 0.0),
    /// summing their weights; atoms keep the order of first appearance.
    pub fn merge_duplicates(&self) -> Measure {
        let d = self.dim();
        let mut index: std::collections::HashMap<Vec<u64>, usize> = Default::default();
        let mut rows: Vec<Vec<f64>> = Vec::new();
        let mut weights: Vec<f64> = Vec::new();
        for i in 0..self.len() {
            let row = self.point(i);
            let key: Vec<u64> = row.iter().map(|v| (v + 0.0).to_bits()).collect();
            match index.get(&key) {
                Some(&k) => weights[k] += self.weights[i],
                None => {
                    index.insert(key, rows.len());
                    rows.push(row);
                    weights.push(self.weights[i]);
                }
            }
        }
        let points = Mat::from_fn(rows.len(), d, |i, k| rows[i][k]);
        Measure { points, weights }
    }

    /// Reads atoms from an (n, d) .npy file and weights from an (n,) .npy file (uniform when None).
    /// Weights are validated, not rescaled: use `normalise = true` to rescale them explicitly.
    pub fn from_npy(
        points: &std::path::Path,
        weights: Option<&std::path::Path>,
        normalise: bool,
    ) -> Result<Self> {
        let x = crate::npy::read_matrix(points)?;
        match weights {
            None => Self::uniform(x),
            Some(w) => {
                let w = crate::npy::read_vector(w)?;
                if normalise {
                    Self::normalised(x, w)
                } else {
                    Self::new(x, w)
                }
            }
        }
    }

    /// Writes atoms and weights as f64 .npy files.
    pub fn to_npy(&self, points: &std::path::Path, weights: &std::path::Path) -> Result<()> {
        crate::npy::write_matrix(points, self.points())?;
        crate::npy::write_vector(weights, &self.weights)
    }

    /// Writes each named measure as `dir/{prefix}{name}_points.npy` and `..._weights.npy`.
    pub fn save_named(
        dir: &std::path::Path,
        prefix: &str,
        named: &[(&str, &Measure)],
    ) -> Result<()> {
        for (name, m) in named {
            m.to_npy(
                &dir.join(format!("{prefix}{name}_points.npy")),
                &dir.join(format!("{prefix}{name}_weights.npy")),
            )?;
        }
        Ok(())
    }

    /// Consumes the measure, returning (points, weights).
    pub fn into_parts(self) -> (Mat<f64>, Vec<f64>) {
        (self.points, self.weights)
    }
}

pub(crate) fn validate_points(what: &str, points: MatRef<'_, f64>) -> Result<()> {
    if points.nrows() == 0 {
        return Err(Error::Empty {
            what: format!("{what} (no atoms)"),
        });
    }
    if points.ncols() == 0 {
        return Err(Error::Empty {
            what: format!("{what} (dimension 0)"),
        });
    }
    let d = points.ncols();
    for i in 0..points.nrows() {
        for k in 0..d {
            let v = points[(i, k)];
            if !v.is_finite() {
                return Err(Error::NonFinite {
                    what: format!("{what} (row {i}, column {k})"),
                    index: i * d + k,
                    value: v,
                });
            }
        }
    }
    Ok(())
}

pub(crate) fn validate_weights(what: &str, weights: &[f64], n: usize) -> Result<()> {
    if weights.len() != n {
        return Err(Error::shape(
            what,
            format!("[{n}]"),
            format!("[{}]", weights.len()),
        ));
    }
    check_finite(what, weights.iter().copied())?;
    for (index, &value) in weights.iter().enumerate() {
        if value <= 0.0 {
            return Err(Error::NegativeWeight {
                what: what.into(),
                index,
                value,
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_bad_weights() {
        let p = Mat::from_fn(3, 2, |i, k| (i + k) as f64);
        assert!(matches!(
            Measure::new(p.clone(), vec![0.5, 0.5, 0.5]),
            Err(Error::NotNormalised { .. })
        ));
        assert!(matches!(
            Measure::new(p.clone(), vec![1.5, -0.5, 0.0]),
            Err(Error::NegativeWeight { .. })
        ));
        assert!(matches!(
            Measure::new(p.clone(), vec![0.5, 0.5]),
            Err(Error::Shape { .. })
        ));
        assert!(matches!(
            Measure::new(p.clone(), vec![f64::NAN, 0.5, 0.5]),
            Err(Error::NonFinite { .. })
        ));
        let m = Measure::normalised(p, vec![1.0, 1.0, 2.0]).unwrap();
        assert_eq!(m.weights(), &[0.25, 0.25, 0.5]);
    }

    #[test]
    fn rejects_bad_points() {
        let mut p = Mat::from_fn(3, 2, |i, k| (i + k) as f64);
        p[(1, 1)] = f64::INFINITY;
        let e = Measure::uniform(p).unwrap_err().to_string();
        assert!(e.contains("row 1, column 1"), "{e}");
        assert!(matches!(
            Measure::uniform(Mat::zeros(0, 3)),
            Err(Error::Empty { .. })
        ));
        assert!(matches!(
            Measure::uniform(Mat::zeros(3, 0)),
            Err(Error::Empty { .. })
        ));
    }

    #[test]
    fn npy_round_trip() {
        let dir = std::env::temp_dir().join(format!("lipattn-measure-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let m = Measure::new(
            Mat::from_fn(3, 2, |i, k| (i * 2 + k) as f64 * 0.5),
            vec![0.2, 0.3, 0.5],
        )
        .unwrap();
        let (p, w) = (dir.join("p.npy"), dir.join("w.npy"));
        m.to_npy(&p, &w).unwrap();
        let r = Measure::from_npy(&p, Some(&w), false).unwrap();
        assert_eq!(r.points(), m.points());
        assert_eq!(r.weights(), m.weights());
        crate::npy::write_vector(&w, &[1.0, 1.0, 2.0]).unwrap();
        assert!(matches!(
            Measure::from_npy(&p, Some(&w), false),
            Err(Error::NotNormalised { .. })
        ));
        assert_eq!(
            Measure::from_npy(&p, Some(&w), true).unwrap().weights(),
            &[0.25, 0.25, 0.5]
        );
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn merges_duplicates() {
        let p = Mat::from_fn(4, 2, |i, k| if i == 2 { k as f64 } else { (i + k) as f64 });
        // rows: [0,1], [1,2], [0,1], [3,4]
        let m = Measure::uniform(p).unwrap().merge_duplicates();
        assert_eq!(m.len(), 3);
        assert_eq!(m.weights(), &[0.5, 0.25, 0.25]);
        assert_eq!(m.point(2), vec![3.0, 4.0]);
    }
}
