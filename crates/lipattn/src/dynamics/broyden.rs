//! Broyden's ("good") method on G(x) = T(x) - x = 0 with a limited-memory inverse-Jacobian
//! estimate H = -I + sum_i u_i v_i^T, updated by Sherman-Morrison so that H y = s for the last
//! secant pair. H starts at -I, which makes the first step (and each step after a restart) the
//! Picard step x + G(x) = T(x).

pub(crate) struct Broyden {
    memory: usize,
    u: Vec<Vec<f64>>,
    v: Vec<Vec<f64>>,
    last: Option<(Vec<f64>, Vec<f64>)>,
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

impl Broyden {
    pub(crate) fn new(memory: usize) -> Self {
        Self {
            memory,
            u: vec![],
            v: vec![],
            last: None,
        }
    }

    fn apply_h(&self, z: &[f64]) -> Vec<f64> {
        let mut out: Vec<f64> = z.iter().map(|x| -x).collect();
        for (u, v) in self.u.iter().zip(&self.v) {
            let c = dot(v, z);
            for (o, ui) in out.iter_mut().zip(u) {
                *o += c * ui;
            }
        }
        out
    }

    fn apply_ht(&self, z: &[f64]) -> Vec<f64> {
        let mut out: Vec<f64> = z.iter().map(|x| -x).collect();
        for (u, v) in self.u.iter().zip(&self.v) {
            let c = dot(u, z);
            for (o, vi) in out.iter_mut().zip(v) {
                *o += c * vi;
            }
        }
        out
    }

    pub(crate) fn step(&mut self, x: &[f64], fx: &[f64]) -> Vec<f64> {
        let g: Vec<f64> = fx.iter().zip(x).map(|(f, x)| f - x).collect();
        if let Some((px, pg)) = self.last.take() {
            let s: Vec<f64> = x.iter().zip(&px).map(|(a, b)| a - b).collect();
            let y: Vec<f64> = g.iter().zip(&pg).map(|(a, b)| a - b).collect();
            if self.u.len() >= self.memory {
                self.u.clear();
                self.v.clear();
            }
            let hy = self.apply_h(&y);
            let hts = self.apply_ht(&s);
            let denom = dot(&s, &hy);
            // A vanishing denominator means the secant pair carries no information that H can
            // absorb stably; skipping the update keeps H bounded.
            if denom.abs() > 1e-14 * dot(&s, &s).sqrt() * dot(&hy, &hy).sqrt() && denom.is_finite()
            {
                self.u
                    .push(s.iter().zip(&hy).map(|(a, b)| (a - b) / denom).collect());
                self.v.push(hts);
            }
        }
        self.last = Some((x.to_vec(), g.clone()));
        let hg = self.apply_h(&g);
        x.iter().zip(&hg).map(|(a, b)| a - b).collect()
    }
}
