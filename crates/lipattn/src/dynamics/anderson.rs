//! Anderson acceleration (type II, the difference form used by torchdeq and SciPy): the next
//! iterate mixes the last `memory` iterates with the weights that minimise the regularised norm
//! of the combined residual. The least-squares system is m x m (m <= memory), solved with
//! faer's Cholesky; a singular system drops the history rather than failing.

use faer::linalg::solvers::Solve;
use faer::{Mat, Side};
use std::collections::VecDeque;

pub(crate) struct Anderson {
    memory: usize,
    regularisation: f64,
    mixing: f64,
    last: Option<(Vec<f64>, Vec<f64>)>,
    dx: VecDeque<Vec<f64>>,
    dg: VecDeque<Vec<f64>>,
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

impl Anderson {
    pub(crate) fn new(memory: usize, regularisation: f64, mixing: f64) -> Self {
        Self {
            memory,
            regularisation,
            mixing,
            last: None,
            dx: VecDeque::new(),
            dg: VecDeque::new(),
        }
    }

    /// The next iterate from x_k and T(x_k).
    pub(crate) fn step(&mut self, x: &[f64], fx: &[f64]) -> Vec<f64> {
        let g: Vec<f64> = fx.iter().zip(x).map(|(f, x)| f - x).collect();
        if let Some((px, pg)) = self.last.take() {
            self.dx
                .push_back(x.iter().zip(&px).map(|(a, b)| a - b).collect());
            self.dg
                .push_back(g.iter().zip(&pg).map(|(a, b)| a - b).collect());
            if self.dx.len() > self.memory {
                self.dx.pop_front();
                self.dg.pop_front();
            }
        }
        self.last = Some((x.to_vec(), g.clone()));
        let beta = self.mixing;
        let mut next: Vec<f64> = x.iter().zip(&g).map(|(x, g)| x + beta * g).collect();
        let m = self.dg.len();
        if m == 0 {
            return next;
        }
        let mut gram = Mat::<f64>::from_fn(m, m, |i, j| dot(&self.dg[i], &self.dg[j]));
        // Regularisation relative to the Gram matrix's scale keeps the method invariant under a
        // rescaling of the residual.
        let scale = (0..m).map(|i| gram[(i, i)]).fold(0.0, f64::max);
        if !(scale > 0.0 && scale.is_finite()) {
            self.dx.clear();
            self.dg.clear();
            return next;
        }
        for i in 0..m {
            gram[(i, i)] += self.regularisation * scale;
        }
        let rhs = Mat::<f64>::from_fn(m, 1, |i, _| dot(&self.dg[i], &g));
        let gamma = match gram.llt(Side::Lower) {
            Ok(llt) => llt.solve(&rhs),
            Err(_) => {
                self.dx.clear();
                self.dg.clear();
                return next;
            }
        };
        if (0..m).any(|i| !gamma[(i, 0)].is_finite()) {
            self.dx.clear();
            self.dg.clear();
            return next;
        }
        for j in 0..m {
            let c = gamma[(j, 0)];
            for ((v, dx), dg) in next.iter_mut().zip(&self.dx[j]).zip(&self.dg[j]) {
                *v -= c * (dx + beta * dg);
            }
        }
        next
    }
}
