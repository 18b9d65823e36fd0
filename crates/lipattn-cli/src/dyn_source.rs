//! The layer and tokens the dynamics commands (invert, fixed-point, flow) work on: a model layer
//! (`--model DIR --layer L`) or a seeded synthetic one, and tokens from `--tokens X.npy` or
//! seeded Gaussian ones.

use anyhow::{anyhow, bail, Context, Result};
use clap::Args;
use lipattn::dynamics::synthetic::{random_layer, random_tokens};
use lipattn::npy::read_matrix;
use lipattn::{AttentionLayer, Kernel, Mat};
use serde_json::{json, Value};
use std::path::PathBuf;

#[derive(Args)]
pub struct SourceArgs {
    /// Hugging Face model directory (BERT family; with --layer). Without it a synthetic random
    /// layer is used.
    #[arg(long, requires = "layer")]
    pub model: Option<PathBuf>,
    /// Layer index (0-based) of --model.
    #[arg(long, requires = "model")]
    pub layer: Option<usize>,
    /// Synthetic layer: token width d.
    #[arg(long, default_value_t = 16)]
    pub d: usize,
    /// Synthetic layer: number of heads.
    #[arg(long, default_value_t = 2)]
    pub heads: usize,
    /// Synthetic layer: kernel, l2 (tied, W_V = U W_Q: certified on all of R^{n x d}) or dot
    /// (certified on a ball only).
    #[arg(long, default_value = "l2")]
    pub kernel: String,
    /// Synthetic layer: standard deviation of the biases.
    #[arg(long, default_value_t = 0.1)]
    pub bias: f64,
    /// Seed of the synthetic layer and of random tokens.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Tokens X, an (n, d) float32 or float64 .npy array; random Gaussian tokens otherwise.
    #[arg(long)]
    pub tokens: Option<PathBuf>,
    /// Number of random tokens.
    #[arg(long, default_value_t = 16)]
    pub n: usize,
    /// Standard deviation of random tokens.
    #[arg(long, default_value_t = 1.0)]
    pub token_scale: f64,
}

impl SourceArgs {
    /// The layer and a JSON description of where it came from.
    pub fn layer(&self) -> Result<(AttentionLayer<f64>, Value)> {
        match (&self.model, self.layer) {
            (Some(dir), Some(l)) => {
                let (layer, causal) = lipattn::models::load_attention_layer_masked(dir, l)?;
                if causal {
                    bail!("{} layer {l} is causal (GPT-2 family): the dynamics treat attention as an operator on measures, which a causal mask is not", dir.display());
                }
                let desc = json!({"source": "model", "model": dir.display().to_string(), "layer": l, "kernel": layer.kernel, "heads": layer.heads, "d": layer.d_in()});
                Ok((layer, desc))
            }
            _ => {
                let kernel: Kernel = self.kernel.parse()?;
                let layer = random_layer(self.d, self.heads, kernel, self.bias, self.seed)?;
                let desc = json!({"source": "synthetic", "kernel": kernel, "heads": self.heads, "d": self.d, "bias": self.bias, "seed": self.seed});
                Ok((layer, desc))
            }
        }
    }

    pub fn tokens(&self, d: usize) -> Result<Mat<f64>> {
        match &self.tokens {
            Some(p) => {
                let x = read_matrix(p).context("reading --tokens")?;
                if x.ncols() != d {
                    return Err(anyhow!(
                        "--tokens has width {}, the layer expects {d}",
                        x.ncols()
                    ));
                }
                Ok(x)
            }
            None => {
                if self.n == 0 {
                    bail!("--n must be at least 1");
                }
                if !(self.token_scale.is_finite() && self.token_scale > 0.0) {
                    bail!("--token-scale must be positive and finite");
                }
                Ok(random_tokens(
                    self.n,
                    d,
                    self.token_scale,
                    self.seed.wrapping_add(1),
                ))
            }
        }
    }
}

/// The solver names of `--solver`, expanded.
pub fn solvers(
    name: &str,
    memory: usize,
    regularisation: f64,
    broyden_memory: usize,
) -> Result<Vec<lipattn::dynamics::Solver>> {
    use lipattn::dynamics::Solver;
    let anderson = Solver::Anderson {
        memory,
        regularisation,
        mixing: 1.0,
    };
    let broyden = Solver::Broyden {
        memory: broyden_memory,
    };
    Ok(match name {
        "all" => vec![Solver::Picard, anderson, broyden],
        "anderson" => vec![anderson],
        "broyden" => vec![broyden],
        other => vec![other.parse()?],
    })
}

/// A solver's failure, reported beside the others and never as a result.
pub fn failure_json(solver: &str, e: &lipattn::Error) -> Value {
    match e {
        lipattn::Error::NoConvergence {
            reason,
            steps,
            best_residual,
            best_step,
            residuals,
            ..
        } => json!({
            "solver": solver,
            "status": "no_convergence",
            "reason": reason,
            "steps": steps,
            "lowest_residual": best_residual,
            "lowest_residual_step": best_step,
            "abs_trace": residuals,
        }),
        other => json!({"solver": solver, "status": "error", "reason": other.to_string()}),
    }
}
