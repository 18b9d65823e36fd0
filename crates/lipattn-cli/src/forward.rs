//! `lipattn forward`: the attention sublayer's output for each token of a .npy sequence.

use crate::layer_arg::LayerArg;
use anyhow::{Context, Result};
use clap::Args;
use lipattn::npy::{read_matrix, read_vector, write_matrix};
use lipattn::ops::forward::{self, ForwardRequest};
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
    /// Query i attends to tokens 0..=i only (always on for causal models: GPT-2 and the rotary
    /// families, whose sliding windows apply too).
    #[arg(long)]
    causal: bool,
    /// Score kernel: dot (the model's own) or l2 (tied to the query projection; BERT and GPT-2).
    #[arg(long, value_parser = crate::names::named::<Kernel>(), default_value_t = ForwardRequest::default().kernel)]
    kernel: Kernel,
    /// Output .npy path: (n, d) float64, all heads, output projection and its bias, no residual
    /// and no LayerNorm/RMSNorm (rotary families: tokens at positions 0..n-1).
    #[arg(long)]
    out: PathBuf,
}

pub fn run(a: ForwardArgs) -> Result<()> {
    let out = StagedFile::create(&a.out)?;
    let (sublayer, source) = a.target.load_sublayer()?;
    let x = read_matrix(&a.tokens).context("reading --tokens")?;
    let w = match &a.weights {
        Some(p) => Some(read_vector(p).context("reading --weights")?),
        None => None,
    };
    let req = ForwardRequest {
        causal: a.causal,
        kernel: a.kernel,
    };
    let y = forward::run(&req, &sublayer, &source, x.as_ref(), w.as_deref())?;
    write_matrix(out.path(), y.as_ref())?;
    Ok(out.commit()?)
}
