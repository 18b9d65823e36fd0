//! The flags of the layer and tokens the dynamics commands (invert, fixed-point, flow) work on:
//! a model layer (`--model DIR --layer L`) or a seeded synthetic one, and tokens from
//! `--tokens X.npy` or seeded random ones (the library's `ops::source`).

use clap::Args;
use lipattn::ops::solvers::{SolverChoice, SolverRequest};
use lipattn::ops::source::SourceRequest;
use lipattn::Kernel;
use std::path::PathBuf;

#[derive(Args)]
pub struct SourceArgs {
    /// Hugging Face model directory (with --layer): BERT, or a rotary family (llama, mistral,
    /// qwen2, qwen3, gemma, gemma2: the sublayer on positions 0..n-1 with its own mask, certified
    /// by B7; invert and fixed-point in token space). Without it a synthetic random layer is used.
    #[arg(long, requires = "layer")]
    pub model: Option<PathBuf>,
    /// Layer index (0-based) of --model.
    #[arg(long, requires = "model")]
    pub layer: Option<usize>,
    /// Synthetic layer: token width d.
    #[arg(long, default_value_t = SourceRequest::default().d, conflicts_with = "model")]
    pub d: usize,
    /// Synthetic layer: number of heads.
    #[arg(long, default_value_t = SourceRequest::default().heads, conflicts_with = "model")]
    pub heads: usize,
    /// Synthetic layer: kernel, l2 (tied, W_V = U W_Q exactly: certified on all of R^{n x d}) or
    /// dot (certified on a ball only).
    #[arg(long, value_parser = crate::names::named::<Kernel>(), default_value_t = SourceRequest::default().kernel, conflicts_with = "model")]
    pub kernel: Kernel,
    /// Synthetic layer: standard deviation of the biases.
    #[arg(long, default_value_t = SourceRequest::default().bias, conflicts_with = "model")]
    pub bias: f64,
    /// Seed of the synthetic layer, of random tokens and of the command's own draws.
    #[arg(long, default_value_t = SourceRequest::default().seed)]
    pub seed: u64,
    /// Tokens X, an (n, d) float32 or float64 .npy array; random tokens otherwise.
    #[arg(long)]
    pub tokens: Option<PathBuf>,
    /// Number of random tokens.
    #[arg(long, default_value_t = SourceRequest::default().n)]
    pub n: usize,
    /// Standard deviation of random Gaussian tokens.
    #[arg(long, default_value_t = SourceRequest::default().token_scale)]
    pub token_scale: f64,
}

impl From<&SourceArgs> for SourceRequest {
    fn from(a: &SourceArgs) -> Self {
        Self {
            model: a.model.clone(),
            layer: a.layer,
            d: a.d,
            heads: a.heads,
            kernel: a.kernel,
            bias: a.bias,
            seed: a.seed,
            tokens: a.tokens.clone(),
            n: a.n,
            token_scale: a.token_scale,
        }
    }
}

/// The solver flags of invert and fixed-point; `max_iter` has a default per command, so it is
/// the command's own flag.
#[derive(Args)]
pub struct SolverArgs {
    /// picard, anderson, broyden or all.
    #[arg(long, value_parser = crate::names::named::<SolverChoice>(), default_value_t = SolverRequest::default().solver)]
    pub solver: SolverChoice,
    /// Stop at residual <= atol.
    #[arg(long, default_value_t = SolverRequest::default().atol)]
    pub atol: f64,
    #[arg(long, default_value_t = SolverRequest::default().anderson_memory)]
    pub anderson_memory: usize,
    #[arg(long, default_value_t = SolverRequest::default().anderson_reg)]
    pub anderson_reg: f64,
    /// Anderson: mixing in (0, 1].
    #[arg(long, default_value_t = SolverRequest::default().anderson_mixing)]
    pub anderson_mixing: f64,
    /// Broyden: secant updates stored before a restart.
    #[arg(long, default_value_t = SolverRequest::default().broyden_memory)]
    pub broyden_memory: usize,
}

impl SolverArgs {
    /// The request with the command's iteration cap and relative tolerance.
    pub fn request(&self, max_iter: usize, rtol: f64) -> SolverRequest {
        SolverRequest {
            solver: self.solver,
            atol: self.atol,
            rtol,
            max_iter: Some(max_iter),
            anderson_memory: self.anderson_memory,
            anderson_reg: self.anderson_reg,
            anderson_mixing: self.anderson_mixing,
            broyden_memory: self.broyden_memory,
        }
    }
}
