//! Rotary position embeddings: the frequencies of each scaling type and the rotation they define
//! (formulas and sources in docs/rotary.md).

use crate::error::{check_positive, Error, Result};
use crate::scalar::Scalar;
use faer::reborrow::ReborrowMut;
use faer::MatMut;

/// How the base frequencies theta^(-2c/r) are rescaled for context extension.
#[derive(Clone, Debug, PartialEq)]
pub enum RopeScaling {
    /// No rescaling (RoFormer).
    Default,
    /// Position interpolation: every frequency divided by `factor`.
    Linear { factor: f64 },
    /// NTK-aware scaling whose base grows with the sequence length once it passes
    /// `Rope::max_position_embeddings`. transformers reads that length, not
    /// `original_max_position_embeddings`, in this formula, and so do we: the field records the
    /// config's value and must be positive, nothing more.
    Dynamic {
        factor: f64,
        original_max_position_embeddings: usize,
    },
    /// Llama 3.1's piecewise rescaling by wavelength.
    Llama3 {
        factor: f64,
        low_freq_factor: f64,
        high_freq_factor: f64,
        original_max_position_embeddings: usize,
    },
    /// YaRN (Peng et al. 2023): a ramp between interpolated and original frequencies, and an
    /// attention factor multiplying cos and sin.
    Yarn {
        factor: f64,
        original_max_position_embeddings: usize,
        beta_fast: f64,
        beta_slow: f64,
        mscale: Option<f64>,
        mscale_all_dim: Option<f64>,
        attention_factor: Option<f64>,
        truncate: bool,
    },
}

/// The rotary embedding of one attention layer.
#[derive(Clone, Debug, PartialEq)]
pub struct Rope {
    /// rope_theta, the base of the frequencies.
    pub theta: f64,
    /// Even, at most head_dim: the first `rotary_dim` coordinates of each head rotate, coordinate
    /// c with c + rotary_dim/2; the rest pass through unchanged.
    pub rotary_dim: usize,
    pub max_position_embeddings: usize,
    pub scaling: RopeScaling,
}

impl RopeScaling {
    /// The `rope_type` of a Hugging Face config that selects this scaling.
    pub fn name(&self) -> &'static str {
        match self {
            RopeScaling::Default => "default",
            RopeScaling::Linear { .. } => "linear",
            RopeScaling::Dynamic { .. } => "dynamic",
            RopeScaling::Llama3 { .. } => "llama3",
            RopeScaling::Yarn { .. } => "yarn",
        }
    }
}

impl Rope {
    /// Checks every parameter the frequencies need, naming the offending one.
    pub fn validate(&self) -> Result<()> {
        check_positive("rope theta", self.theta)?;
        if !self.rotary_dim.is_multiple_of(2) {
            return Err(Error::invalid(format!(
                "rope rotary_dim must be even (coordinate c pairs with c + rotary_dim/2), got {}",
                self.rotary_dim
            )));
        }
        crate::error::check_at_least(
            "rope max_position_embeddings",
            self.max_position_embeddings,
            1,
        )?;
        match &self.scaling {
            RopeScaling::Default => {}
            RopeScaling::Linear { factor } => {
                check_positive("rope scaling factor", *factor)?;
            }
            RopeScaling::Dynamic {
                factor,
                original_max_position_embeddings,
            } => {
                check_positive("rope scaling factor", *factor)?;
                crate::error::check_at_least(
                    "rope scaling original_max_position_embeddings",
                    *original_max_position_embeddings,
                    1,
                )?;
                // The base's exponent is r / (r - 2).
                if self.rotary_dim == 2 {
                    return Err(Error::invalid(
                        "dynamic rope scaling needs rotary_dim other than 2 (its base is raised to rotary_dim / (rotary_dim - 2))",
                    ));
                }
            }
            RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings,
            } => {
                check_positive("rope scaling factor", *factor)?;
                check_positive("rope scaling low_freq_factor", *low_freq_factor)?;
                check_positive("rope scaling high_freq_factor", *high_freq_factor)?;
                // The smoothing divides by their difference.
                if high_freq_factor <= low_freq_factor {
                    return Err(Error::invalid(format!(
                        "rope scaling high_freq_factor ({high_freq_factor}) must be greater than low_freq_factor ({low_freq_factor})"
                    )));
                }
                crate::error::check_at_least(
                    "rope scaling original_max_position_embeddings",
                    *original_max_position_embeddings,
                    1,
                )?;
            }
            RopeScaling::Yarn {
                factor,
                original_max_position_embeddings,
                beta_fast,
                beta_slow,
                mscale,
                mscale_all_dim,
                attention_factor,
                truncate: _,
            } => {
                check_positive("rope scaling factor", *factor)?;
                crate::error::check_at_least(
                    "rope scaling original_max_position_embeddings",
                    *original_max_position_embeddings,
                    1,
                )?;
                check_positive("rope scaling beta_fast", *beta_fast)?;
                check_positive("rope scaling beta_slow", *beta_slow)?;
                for (name, v) in [("mscale", mscale), ("mscale_all_dim", mscale_all_dim)] {
                    if let Some(v) = v {
                        crate::error::check_finite(&format!("rope scaling {name}"), [*v])?;
                    }
                }
                if let Some(a) = attention_factor {
                    check_positive("rope scaling attention_factor", *a)?;
                }
                // The correction range divides by ln(theta).
                if self.theta == 1.0 {
                    return Err(Error::invalid(
                        "yarn rope scaling needs rope theta other than 1 (its correction range divides by ln theta)",
                    ));
                }
            }
        }
        Ok(())
    }

    /// inv_freq (rotary_dim/2 entries) and the attention scaling factor that multiplies cos and
    /// sin, for a sequence of n tokens at positions 0..n, as transformers' rope init functions
    /// define them, evaluated in f64 (docs/rotary.md#frequencies).
    pub fn frequencies(&self, n: usize) -> Result<(Vec<f64>, f64)> {
        self.validate()?;
        let r = self.rotary_dim;
        let base_freqs = |base: f64| -> Vec<f64> {
            (0..r / 2)
                .map(|c| 1.0 / base.powf((2 * c) as f64 / r as f64))
                .collect()
        };
        Ok(match &self.scaling {
            RopeScaling::Default => (base_freqs(self.theta), 1.0),
            RopeScaling::Linear { factor } => (
                base_freqs(self.theta).iter().map(|f| f / factor).collect(),
                1.0,
            ),
            RopeScaling::Dynamic { factor, .. } => {
                let max = self.max_position_embeddings as f64;
                // transformers: seq_len = max(n, max_position_embeddings), positions 0..n.
                let len = (n as f64).max(max);
                let stretch = factor * len / max - (factor - 1.0);
                let base = self.theta * stretch.powf(r as f64 / (r as f64 - 2.0));
                (base_freqs(base), 1.0)
            }
            RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings,
            } => {
                let old = *original_max_position_embeddings as f64;
                let low_wavelen = old / low_freq_factor;
                let high_wavelen = old / high_freq_factor;
                let freqs = base_freqs(self.theta)
                    .into_iter()
                    .map(|f| {
                        let wavelen = 2.0 * std::f64::consts::PI / f;
                        if wavelen > low_wavelen {
                            f / factor
                        } else if wavelen < high_wavelen {
                            f
                        } else {
                            let smooth = (old / wavelen - low_freq_factor)
                                / (high_freq_factor - low_freq_factor);
                            (1.0 - smooth) * f / factor + smooth * f
                        }
                    })
                    .collect();
                (freqs, 1.0)
            }
            RopeScaling::Yarn {
                factor,
                original_max_position_embeddings,
                beta_fast,
                beta_slow,
                mscale,
                mscale_all_dim,
                attention_factor,
                truncate,
            } => {
                let att = match (attention_factor, mscale, mscale_all_dim) {
                    (Some(a), _, _) => *a,
                    // transformers tests both for truthiness: a zero counts as absent.
                    (None, Some(m), Some(ma)) if *m != 0.0 && *ma != 0.0 => {
                        yarn_mscale(*factor, *m) / yarn_mscale(*factor, *ma)
                    }
                    _ => yarn_mscale(*factor, 1.0),
                };
                let (dim, base) = (r as f64, self.theta);
                let old = *original_max_position_embeddings as f64;
                let correction_dim = |rotations: f64| {
                    dim * (old / (rotations * 2.0 * std::f64::consts::PI)).ln() / (2.0 * base.ln())
                };
                let (mut low, mut high) = (correction_dim(*beta_fast), correction_dim(*beta_slow));
                if *truncate {
                    low = low.floor();
                    high = high.ceil();
                }
                let low = low.max(0.0);
                let mut high = high.min(dim - 1.0);
                if low == high {
                    // transformers' guard against a zero-width ramp.
                    high += 0.001;
                }
                let freqs = (0..r / 2)
                    .map(|c| {
                        let pos = base.powf((2 * c) as f64 / dim);
                        let ramp = ((c as f64 - low) / (high - low)).clamp(0.0, 1.0);
                        let extrapolation = 1.0 - ramp;
                        (1.0 / (factor * pos)) * (1.0 - extrapolation) + (1.0 / pos) * extrapolation
                    })
                    .collect();
                (freqs, att)
            }
        })
    }

    /// An upper bound of the norm of every rotation R_i the code applies to a sequence of n
    /// tokens (docs/bounds.md#b7-rotary): the stored entries are C = fl(a c), S = fl(a s) with c,
    /// s the platform's cos and sin, each within `SIN_COS_ABS_ERROR` =: delta of the exact value
    /// at the computed angle, so C^2 + S^2 <= a^2 (1 + u)^2 ((|cos| + delta)^2 + (|sin| + delta)^2)
    /// <= (|a| (1 + u) (1 + 2 delta))^2.
    pub fn rotation_norm_up(&self, n: usize) -> Result<f64> {
        use crate::linalg::rounding::{add_up, mul_up, SIN_COS_ABS_ERROR, UNIT_ROUNDOFF};
        let (_, att) = self.frequencies(n)?;
        Ok(mul_up(
            mul_up(att.abs(), add_up(1.0, UNIT_ROUNDOFF)),
            add_up(1.0, mul_up(2.0, SIN_COS_ABS_ERROR)),
        ))
    }

    /// The cos and sin of every position's angles, each multiplied by the attention factor;
    /// computed in f64 and rounded once to T, so an f32 table is the f64 one correctly rounded.
    pub(crate) fn table<T: Scalar>(&self, n: usize) -> Result<RopeTable<T>> {
        let (inv_freq, att) = self.frequencies(n)?;
        let half = inv_freq.len();
        let mut cos = vec![T::of(0.0); half * n];
        let mut sin = vec![T::of(0.0); half * n];
        for (c, &f) in inv_freq.iter().enumerate() {
            for i in 0..n {
                let (s, co) = (i as f64 * f).sin_cos();
                cos[c * n + i] = T::of(att * co);
                sin[c * n + i] = T::of(att * s);
            }
        }
        Ok(RopeTable { n, half, cos, sin })
    }
}

/// YaRN's magnitude correction 0.1 m ln(s) + 1 (Peng et al. 2023, eq. 21), 1 for s <= 1.
fn yarn_mscale(scale: f64, m: f64) -> f64 {
    if scale <= 1.0 {
        1.0
    } else {
        0.1 * m * scale.ln() + 1.0
    }
}

/// a cos(theta_ic) and a sin(theta_ic) for positions i < n and pairs c < rotary_dim/2, pair-major
/// (entry c n + i), so that rotating one column pair reads two contiguous runs.
pub(crate) struct RopeTable<T: Scalar = f64> {
    n: usize,
    half: usize,
    cos: Vec<T>,
    sin: Vec<T>,
}

impl<T: Scalar> RopeTable<T> {
    /// In place on the head blocks of `m` (n x heads*head_dim, tokens as rows): each head's
    /// coordinates (c, c + r/2) of token i become R_i (x_c, x_{c+r/2}), or R_i^T with
    /// `transpose` (the VJP), R_i = a [[cos, -sin], [sin, cos]].
    pub fn rotate(&self, mut m: MatMut<'_, T>, head_dim: usize, transpose: bool) {
        debug_assert_eq!(m.nrows(), self.n);
        let heads = m.ncols() / head_dim;
        let sign = T::of(if transpose { -1.0 } else { 1.0 });
        for h in 0..heads {
            let block = m.rb_mut().subcols_mut(h * head_dim, 2 * self.half);
            let (mut lo, mut hi) = block.split_at_col_mut(self.half);
            for c in 0..self.half {
                let a = lo
                    .rb_mut()
                    .col_mut(c)
                    .try_as_col_major_mut()
                    .expect("column-major")
                    .as_slice_mut();
                let b = hi
                    .rb_mut()
                    .col_mut(c)
                    .try_as_col_major_mut()
                    .expect("column-major")
                    .as_slice_mut();
                let cos = &self.cos[c * self.n..(c + 1) * self.n];
                let sin = &self.sin[c * self.n..(c + 1) * self.n];
                for i in 0..self.n {
                    let (x, y) = (a[i], b[i]);
                    let s = sign * sin[i];
                    a[i] = x * cos[i] - y * s;
                    b[i] = y * cos[i] + x * s;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use faer::Mat;

    /// RoFormer's defining property: <R_i q, R_j k> = a^2 <q, R_{j-i} k>, so scores depend on
    /// positions through j - i only; and R_i^T undoes R_i up to a^2.
    #[test]
    fn rotation_is_relative_and_orthogonal_up_to_the_factor() {
        let rope = Rope {
            theta: 50.0,
            rotary_dim: 6,
            max_position_embeddings: 8,
            scaling: RopeScaling::Yarn {
                factor: 4.0,
                original_max_position_embeddings: 4,
                beta_fast: 8.0,
                beta_slow: 1.0,
                mscale: None,
                mscale_all_dim: None,
                attention_factor: None,
                truncate: true,
            },
        };
        let (n, hd) = (12, 8);
        let (_, a) = rope.frequencies(n).unwrap();
        assert!(a > 1.0, "yarn's factor is part of what is checked");
        let table = rope.table(n).unwrap();
        let mut rng = crate::linalg::SplitMix::new(5);
        let q: Vec<f64> = (0..hd).map(|_| rng.gauss()).collect();
        let k: Vec<f64> = (0..hd).map(|_| rng.gauss()).collect();
        // Every row the same vector, so that row i of the rotated matrix is R_i q.
        let rotated = |v: &[f64]| {
            let mut m = Mat::from_fn(n, hd, |_, c| v[c]);
            table.rotate(m.as_mut(), hd, false);
            m
        };
        let (rq, rk) = (rotated(&q), rotated(&k));
        // The pass-through coordinates are not scaled by a, so compare the rotated part only.
        let dot_rot =
            |a: &[f64], b: &Mat<f64>, j: usize| -> f64 { (0..6).map(|c| a[c] * b[(j, c)]).sum() };
        for i in 0..n {
            for j in i..n {
                let rq_i: Vec<f64> = (0..hd).map(|c| rq[(i, c)]).collect();
                let lhs = dot_rot(&rq_i, &rk, j);
                let rhs = a * dot_rot(&q, &rk, j - i);
                assert!((lhs - rhs).abs() <= 1e-12 * (1.0 + lhs.abs()), "{i} {j}");
            }
        }
        let mut back = rq.clone();
        table.rotate(back.as_mut(), hd, true);
        for i in 0..n {
            for c in 0..hd {
                let want = if c < 6 { a * a * q[c] } else { q[c] };
                assert!((back[(i, c)] - want).abs() <= 1e-12, "{i} {c}");
            }
            assert_eq!(rq[(i, 7)], q[7], "pass-through coordinates are untouched");
        }
    }
}
