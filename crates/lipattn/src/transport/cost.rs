//! Ground costs: the dense cost matrix every solver reads, and the Euclidean cost
//! `||x - y||^p` between the atoms of two measures.

use crate::error::{check_finite, Error, Result};
use crate::measure::Measure;
use faer::{Mat, MatRef};

/// A dense ground-cost matrix stored row-major (`data[i * m + j] = C_ij`), the layout the
/// simplex scans: one row of a source atom is contiguous.
#[derive(Clone, Debug)]
pub struct CostMatrix {
    n: usize,
    m: usize,
    data: Vec<f64>,
}

impl CostMatrix {
    /// Validates shape and finiteness.
    pub fn from_row_major(n: usize, m: usize, data: Vec<f64>) -> Result<Self> {
        if n == 0 || m == 0 {
            return Err(Error::Empty {
                what: format!("cost matrix ({n} x {m})"),
            });
        }
        if data.len() != n * m {
            return Err(Error::shape(
                "cost matrix",
                format!("{n} x {m} = {} entries", n * m),
                data.len().to_string(),
            ));
        }
        check_finite("cost matrix (row-major index)", data.iter().copied())?;
        Ok(Self { n, m, data })
    }

    pub fn from_mat(cost: MatRef<'_, f64>) -> Result<Self> {
        let (n, m) = (cost.nrows(), cost.ncols());
        let data = (0..n)
            .flat_map(|i| (0..m).map(move |j| cost[(i, j)]))
            .collect();
        Self::from_row_major(n, m, data)
    }

    pub fn nrows(&self) -> usize {
        self.n
    }

    pub fn ncols(&self) -> usize {
        self.m
    }

    pub fn as_slice(&self) -> &[f64] {
        &self.data
    }

    #[inline]
    pub fn get(&self, i: usize, j: usize) -> f64 {
        self.data[i * self.m + j]
    }

    pub fn to_mat(&self) -> Mat<f64> {
        Mat::from_fn(self.n, self.m, |i, j| self.get(i, j))
    }

    pub(super) fn transposed(&self) -> CostMatrix {
        let mut data = vec![0.0; self.n * self.m];
        for i in 0..self.n {
            for j in 0..self.m {
                data[j * self.n + i] = self.data[i * self.m + j];
            }
        }
        CostMatrix {
            n: self.m,
            m: self.n,
            data,
        }
    }

    pub(super) fn max_abs(&self) -> f64 {
        self.data.iter().fold(0.0f64, |acc, c| acc.max(c.abs()))
    }
}

/// Checks that `p` is a supported Euclidean exponent for the general solvers.
pub fn check_p(p: u32) -> Result<()> {
    if p == 1 || p == 2 {
        Ok(())
    } else {
        Err(Error::invalid(format!(
            "ground cost exponent p = {p} is not supported; the general solvers take p = 1 (||x - y||) or p = 2 (||x - y||^2); the 1-D sorted solver takes any real p >= 1"
        )))
    }
}

fn check_same_dim(a: &Measure, b: &Measure) -> Result<()> {
    if a.dim() != b.dim() {
        return Err(Error::shape(
            "second measure (dimension must match the first)",
            format!("d = {}", a.dim()),
            format!("d = {}", b.dim()),
        ));
    }
    Ok(())
}

/// The ground cost `C_ij = ||x_i - y_j||^p` (p = 1 or 2) between the atoms of two measures.
///
/// Large dimensions go through the Gram matrix (one matrix product) for speed; because
/// `|x|^2 + |y|^2 - 2 x.y` loses all accuracy for nearby points, entries that are small relative
/// to `|x|^2 + |y|^2` are recomputed from coordinate differences, so duplicate points get an
/// exact zero and every entry keeps near full relative accuracy.
pub fn ground_cost(a: &Measure, b: &Measure, p: u32) -> Result<CostMatrix> {
    check_p(p)?;
    check_same_dim(a, b)?;
    let (x, y) = (a.points(), b.points());
    let (n, m, d) = (x.nrows(), y.nrows(), x.ncols());
    crate::budget::check(
        || format!("the {n} x {m} ground cost matrix"),
        crate::budget::bytes_of(&[n, m], 8),
    )?;
    let xr: Vec<f64> = (0..n)
        .flat_map(|i| (0..d).map(move |k| x[(i, k)]))
        .collect();
    let yr: Vec<f64> = (0..m)
        .flat_map(|j| (0..d).map(move |k| y[(j, k)]))
        .collect();
    let direct = |i: usize, j: usize| -> f64 {
        let (xi, yj) = (&xr[i * d..(i + 1) * d], &yr[j * d..(j + 1) * d]);
        xi.iter().zip(yj).map(|(s, t)| (s - t) * (s - t)).sum()
    };
    let mut data = vec![0.0; n * m];
    if d <= 16 {
        for i in 0..n {
            for j in 0..m {
                data[i * m + j] = direct(i, j);
            }
        }
    } else {
        let nx: Vec<f64> = (0..n)
            .map(|i| xr[i * d..(i + 1) * d].iter().map(|v| v * v).sum())
            .collect();
        let ny: Vec<f64> = (0..m)
            .map(|j| yr[j * d..(j + 1) * d].iter().map(|v| v * v).sum())
            .collect();
        // y x^T is m x n column-major, i.e. x y^T in row-major order.
        let g: Mat<f64> = y * x.transpose();
        for i in 0..n {
            let gi = g.col_as_slice(i);
            for j in 0..m {
                let scale = nx[i] + ny[j];
                let r = scale - 2.0 * gi[j];
                data[i * m + j] = if r < 1e-4 * scale { direct(i, j) } else { r };
            }
        }
    }
    if p == 1 {
        data.iter_mut().for_each(|c| *c = c.sqrt());
    }
    CostMatrix::from_row_major(n, m, data)
}
