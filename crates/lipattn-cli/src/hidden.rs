//! `lipattn hidden`: the hidden states of a real model on real text, entering a chosen layer.

use anyhow::{bail, Context, Result};
use clap::Args;
use lipattn::models::{Model, TextTokenizer};
use lipattn::npy::{write_ids, write_matrix};
use lipattn::output::StagedFile;
use std::path::PathBuf;

#[derive(Args)]
pub struct HiddenArgs {
    /// Hugging Face model directory: config.json, model.safetensors (or a sharded
    /// model.safetensors.index.json) and tokenizer.json. BERT, GPT-2, Llama, Mistral, Qwen2,
    /// Qwen3, Gemma and Gemma 2 families.
    #[arg(long)]
    model: PathBuf,
    /// UTF-8 text file, tokenised as one sequence with the model's own tokenizer.
    #[arg(long)]
    text: PathBuf,
    /// Which hidden state: the one entering layer L (0-based); L = number of layers gives the
    /// model's final output (after the final norm: GPT-2's ln_f, the rotary families' norm).
    #[arg(long)]
    layer: usize,
    /// Keep at most N tokens, special tokens included, cutting the end of the text.
    #[arg(long)]
    max_tokens: Option<usize>,
    /// Output .npy path: (n, d) float64.
    #[arg(long)]
    out: PathBuf,
    /// Also write the token ids as an (n,) int64 .npy array.
    #[arg(long)]
    ids_out: Option<PathBuf>,
}

pub fn run(a: HiddenArgs) -> Result<()> {
    let out = StagedFile::create(&a.out)?;
    let ids_out = a.ids_out.as_deref().map(StagedFile::create).transpose()?;
    let model = Model::open(&a.model)?;
    // Checked before tokenising or running anything, so a typo costs nothing.
    if a.layer > model.num_layers() {
        bail!(
            "--layer {} out of range: the model has {} layers, so hidden states exist for 0..={} ({} = the final output)",
            a.layer,
            model.num_layers(),
            model.num_layers(),
            model.num_layers()
        );
    }
    let tokenizer = TextTokenizer::from_dir(&a.model)?;
    let ids = tokenizer
        .encode_file(&a.text, a.max_tokens)
        .context("reading --text")?;
    let states = model.hidden_states_upto(&ids, a.layer)?;
    write_matrix(out.path(), states[a.layer].as_ref())?;
    if let Some(f) = ids_out {
        write_ids(f.path(), &ids)?;
        f.commit()?;
    }
    Ok(out.commit()?)
}
