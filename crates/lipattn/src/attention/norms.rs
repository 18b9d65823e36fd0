//! The normalisations of transformer blocks, one home each: LayerNorm (BERT, GPT-2) and RMSNorm
//! (Llama, Mistral, Qwen, Gemma).

use crate::error::{Error, Result};
use faer::{Mat, MatRef};

/// y = gamma * (x - mean) / sqrt(var + eps) + beta, per token.
#[derive(Clone, Debug, PartialEq)]
pub struct LayerNorm {
    pub gamma: Vec<f64>,
    pub beta: Vec<f64>,
    pub eps: f64,
}

impl LayerNorm {
    /// Normalises each row (token) with the biased variance, as torch.nn.LayerNorm does.
    pub fn apply(&self, x: MatRef<'_, f64>) -> Result<Mat<f64>> {
        let d = self.gamma.len();
        if x.ncols() != d || self.beta.len() != d {
            return Err(Error::shape(
                "LayerNorm input width",
                format!("{d} (gamma and beta length)"),
                format!("{} (beta {})", x.ncols(), self.beta.len()),
            ));
        }
        let mut out = Mat::<f64>::zeros(x.nrows(), d);
        let mut row = vec![0.0; d];
        for i in 0..x.nrows() {
            for (k, r) in row.iter_mut().enumerate() {
                *r = x[(i, k)];
            }
            let mean = row.iter().sum::<f64>() / d as f64;
            // Two passes: the one-pass E[x^2] - mean^2 cancels badly when |mean| >> std.
            let var = row.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / d as f64;
            let s = (var + self.eps).sqrt();
            if s.is_nan() || s <= 0.0 {
                return Err(Error::Numerical(format!(
                    "LayerNorm of token {i}: zero variance and eps = {}",
                    crate::fmt::exact(self.eps)
                )));
            }
            let inv = 1.0 / s;
            for k in 0..d {
                out[(i, k)] = self.gamma[k] * (row[k] - mean) * inv + self.beta[k];
            }
        }
        Ok(out)
    }
}

/// LayerNorm without affine parameters (gamma = 1, beta = 0) on tokens of width d.
pub fn standardise_rows(x: MatRef<'_, f64>, eps: f64) -> Result<Mat<f64>> {
    let d = x.ncols();
    LayerNorm {
        gamma: vec![1.0; d],
        beta: vec![0.0; d],
        eps,
    }
    .apply(x)
}

/// y = (x / sqrt(mean(x^2) + eps)) w per token (Llama's `LlamaRMSNorm`, T5's LayerNorm), or
/// (x / sqrt(mean(x^2) + eps)) (1 + w) with `unit_offset` (Gemma's `GemmaRMSNorm`, whose weights
/// are stored as offsets from 1 and initialised to 0).
#[derive(Clone, Debug, PartialEq)]
pub struct RmsNorm {
    pub weight: Vec<f64>,
    pub eps: f64,
    pub unit_offset: bool,
}

impl RmsNorm {
    /// Normalises each row (token). transformers casts to float32 first; here every step is in
    /// f64, so this is the same formula without that rounding.
    pub fn apply(&self, x: MatRef<'_, f64>) -> Result<Mat<f64>> {
        let d = self.weight.len();
        if x.ncols() != d {
            return Err(Error::shape(
                "RMSNorm input width",
                format!("{d} (weight length)"),
                x.ncols().to_string(),
            ));
        }
        let mut out = x.to_owned();
        super::rms::normalise(&mut out, d, &self.gain(), self.eps, "RMSNorm")?;
        Ok(out)
    }

    /// The gain multiplying the normalised coordinates: 1 + weight for Gemma's unit-offset norms.
    pub fn gain(&self) -> Vec<f64> {
        if self.unit_offset {
            self.weight.iter().map(|w| 1.0 + w).collect()
        } else {
            self.weight.clone()
        }
    }
}
