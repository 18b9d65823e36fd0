//! The full forward pass of a `Model` on token ids: embeddings, then every block in the
//! family's LayerNorm placement, in f64 throughout.

use super::model::Model;
use crate::error::{Error, Result};
use faer::Mat;

impl Model {
    /// Hidden states entering blocks 0..=`last`; index `num_layers()` is the model's final
    /// output (after `ln_f` for GPT-2, as `output_hidden_states` reports it in transformers).
    /// Blocks after `last` are neither loaded nor run.
    pub fn hidden_states_upto(&self, ids: &[u32], last: usize) -> Result<Vec<Mat<f64>>> {
        let n = self.num_layers();
        if last > n {
            return Err(Error::invalid(format!(
                "layer {last} out of range: the model in {} has {n} layers; hidden states exist for 0..={n} ({n} = the final output)",
                self.dir().display()
            )));
        }
        let mut states = Vec::with_capacity(last + 1);
        states.push(self.embeddings()?.embed(ids)?);
        for l in 0..last.min(n) {
            let block = self.layer(l)?;
            let next = block.forward(states[l].as_ref())?;
            states.push(next);
        }
        if last == n {
            if let Some(ln) = self.final_norm()? {
                let out = ln.apply(states[n].as_ref())?;
                states[n] = out;
            }
        }
        Ok(states)
    }

    /// Hidden states entering every block, plus the final output (length `num_layers() + 1`).
    pub fn hidden_states(&self, ids: &[u32]) -> Result<Vec<Mat<f64>>> {
        self.hidden_states_upto(ids, self.num_layers())
    }
}
