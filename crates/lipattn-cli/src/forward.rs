//! `lipattn forward`: the attention sublayer's output for each token of a .npy sequence.

use crate::layer_arg::LayerArg;
use anyhow::{Context, Result};
use clap::Args;
use lipattn::npy::{read_matrix, read_vector, write_matrix};
use lipattn::output::StagedFile;
use lipattn::Kernel;
use std::path::PathBuf;

#[derive(Args)]
pub struct ForwardArgs {
    #[command(flatten)]
    target: LayerArg,
    /// Tokens, an (n, d) float32 or float64 .npy array in C order.
    #[arg(long)]
    tokens: PathBuf,
    /// Context weights, an (n,) .npy array of positive masses summing to 1 (default uniform).
    #[arg(long)]
    weights: Option<PathBuf>,
    /// Query i attends to tokens 0..=i only (always on for causal models such as GPT-2).
    #[arg(long)]
    causal: bool,
    /// Score kernel: dot (the model's own) or l2 (tied to the query projection).
    #[arg(long, default_value = "dot")]
    kernel: Kernel,
    /// Output .npy path: (n, d) float64, all heads, output projection and its bias, no residual
    /// and no LayerNorm.
    #[arg(long)]
    out: PathBuf,
}

pub fn run(a: ForwardArgs) -> Result<()> {
    let out = StagedFile::create(&a.out)?;
    // GPT-2-family layers are always causal; --causal masks any other layer too.
    let (layer, source) = a.target.load()?;
    let layer = layer.with_kernel(a.kernel);
    let x = read_matrix(&a.tokens).context("reading --tokens")?;
    let w = match &a.weights {
        Some(p) => Some(read_vector(p).context("reading --weights")?),
        None => None,
    };
    let y = layer.forward(
        x.as_ref(),
        w.as_deref(),
        source.mask(a.causal.then_some(true)),
    )?;
    write_matrix(out.path(), y.as_ref())?;
    Ok(out.commit()?)
}
