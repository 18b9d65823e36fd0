//! The input arguments `certify` and `robustness` share: a model, the scope's layer and X (an
//! array, or what the model computes at the scope's input on a text).

use anyhow::{Context, Result};
use clap::Args;
use faer::Mat;
use lipattn::models::{Model, Pool, Scope, TextTokenizer};
use lipattn::npy::read_matrix;
use std::path::PathBuf;

#[derive(Args)]
pub struct ScopeInputArgs {
    /// Hugging Face model directory (BERT or GPT-2 family: dot-product attention).
    #[arg(long)]
    pub model: PathBuf,
    /// Layer index (0-based) for the one-layer scopes; none for --scope model.
    #[arg(long)]
    pub layer: Option<usize>,
    /// Input X, an (n, d) float32 or float64 .npy array in C order: the scope's input (the
    /// attention sublayer's, the block's, or the input embeddings for --scope model).
    #[arg(long, required_unless_present = "text", conflicts_with = "text")]
    pub tokens: Option<PathBuf>,
    /// UTF-8 text file: X is what the model computes at the scope's input on this text.
    #[arg(long)]
    pub text: Option<PathBuf>,
    /// With --text: keep at most N tokens, special tokens included.
    #[arg(long, requires = "text")]
    pub max_tokens: Option<usize>,
}

impl ScopeInputArgs {
    /// The model, the checked layer and X for `scope` followed by `pool`.
    pub fn load(&self, scope: Scope, pool: Pool) -> Result<(Model, Option<usize>, Mat<f64>)> {
        let layer = scope.check(self.layer, pool)?;
        let model = Model::open(&self.model)?;
        let x = match (&self.tokens, &self.text) {
            (Some(t), _) => read_matrix(t).context("reading --tokens")?,
            (None, Some(t)) => {
                let ids = TextTokenizer::from_dir(&self.model)?
                    .encode_file(t, self.max_tokens)
                    .context("reading --text")?;
                let stack = model.stack(scope, layer, pool)?;
                model.stack_input(&stack, &ids)?
            }
            _ => unreachable!("clap requires --tokens or --text"),
        };
        Ok((model, layer, x))
    }
}
