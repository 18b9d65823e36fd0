//! What the caller passes to `analyze`: the options, with their defaults and validation, and the
//! shape of a progress report.

use crate::derivatives::AttentionMemory;
use crate::error::{check_at_least, check_index, Error, Result};
use crate::estimation::LanczosOptions;

#[derive(Clone, Debug)]
pub struct AnalysisOptions {
    /// Sequence lengths (special tokens included). Lengths beyond the model's position table
    /// are an error; lengths the text is too short for get no real-text values.
    pub ns: Vec<usize>,
    /// Real-text windows per n, evenly spaced over the text.
    pub windows: usize,
    /// Layers to analyse (default: all).
    pub layers: Option<Vec<usize>>,
    /// Also analyse each head's contribution W_O^h Gamma^h.
    pub heads: bool,
    /// Evaluate the adversarial construction at every n.
    pub adversarial: bool,
    pub lanczos: LanczosOptions,
    /// The attention state of the local constants (plain sublayers): `auto` holds the dense
    /// n x n probabilities where they fit the memory budget and streams otherwise, per operator
    /// and n (each point of the report says which ran).
    pub attention: AttentionMemory,
}

impl Default for AnalysisOptions {
    fn default() -> Self {
        Self {
            ns: vec![8, 16, 32, 64, 128, 256, 512],
            windows: 2,
            layers: None,
            heads: true,
            adversarial: true,
            lanczos: LanczosOptions {
                tol: 1e-4,
                max_iter: 200,
                seed: 0,
            },
            attention: AttentionMemory::Auto,
        }
    }
}

/// Reported after each unit of work (one window or adversarial pass through one layer).
#[derive(Clone, Debug)]
pub struct Progress {
    pub done: usize,
    pub total: usize,
    pub stage: String,
    /// Sent once, before the first measurement: what the run is expected to cost.
    pub estimate: Option<super::memory::RunEstimate>,
}

pub(super) fn check_options(
    opts: &AnalysisOptions,
    max_positions: usize,
    num_layers: usize,
) -> Result<()> {
    if opts.ns.is_empty() {
        return Err(Error::Empty {
            what: "grid of sequence lengths".into(),
        });
    }
    if let Some(&n) = opts.ns.iter().find(|&&n| n < 2) {
        return Err(Error::invalid(format!(
            "sequence length {n} is below 2: attention over fewer than two tokens has nothing to compare"
        )));
    }
    // BERT and GPT-2 read absolute positions from a table; the rotary families have none (the
    // caller passes usize::MAX) and go as far as the text.
    if let Some(&n) = opts.ns.iter().find(|&&n| n > max_positions) {
        return Err(Error::invalid(format!(
            "sequence length {n} exceeds the model's position table: max_position_embeddings = {max_positions} (the longest sequence the model reads)"
        )));
    }
    if let Some(layers) = &opts.layers {
        if layers.is_empty() {
            return Err(Error::Empty {
                what: "list of layers".into(),
            });
        }
        for &l in layers {
            check_index("layer", l, num_layers, || "the model".into())?;
        }
    }
    // Zero windows would drop every real-text value without a word in the report.
    check_at_least("windows", opts.windows, 1)?;
    Ok(())
}
