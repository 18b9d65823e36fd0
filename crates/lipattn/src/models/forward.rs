//! The full forward pass of a `Model` on token ids: embeddings, then every block in the
//! family's norm placement, then the final norm (GPT-2's `ln_f`, the rotary families'
//! `norm`), in f64 throughout.

use super::model::Model;
use crate::error::{Error, Result};
use faer::Mat;

impl Model {
    /// Hidden states entering blocks 0..=`last`; index `num_layers()` is the model's final
    /// output (after `ln_f` for GPT-2 and `norm` for the rotary families, as `output_hidden_states` reports it in transformers).
    /// Blocks after `last` are neither loaded nor run.
    pub fn hidden_states_upto(&self, ids: &[u32], last: usize) -> Result<Vec<Mat<f64>>> {
        let n = self.num_layers();
        if last > n {
            return Err(Error::invalid(format!(
                "layer {last} out of range: the model in {} has {n} layers; hidden states exist for 0..={n} ({n} = the final output)",
                self.origin()
            )));
        }
        let mut states = Vec::with_capacity(last + 1);
        states.push(self.embeddings()?.embed(ids)?);
        let rotary = self.family().is_rotary();
        for l in 0..last.min(n) {
            let next = if rotary {
                self.rotary_layer(l)?.forward(states[l].as_ref())?
            } else {
                self.layer(l)?.forward(states[l].as_ref())?
            };
            states.push(next);
        }
        if last == n {
            let out = if rotary {
                Some(self.final_rms_norm()?.apply(states[n].as_ref())?)
            } else {
                self.final_norm()?
                    .map(|ln| ln.apply(states[n].as_ref()))
                    .transpose()?
            };
            if let Some(out) = out {
                states[n] = out;
            }
        }
        for (l, s) in states.iter().enumerate() {
            self.check_state(l, s)?;
        }
        Ok(states)
    }

    /// Finite weights can still overflow (a LayerNorm gain of 1e308 made the final output -inf,
    /// found by tests/fuzz_parsers.rs): an infinite or NaN hidden state is an error, never a
    /// result.
    fn check_state(&self, l: usize, s: &Mat<f64>) -> Result<()> {
        for j in 0..s.ncols() {
            if let Some((i, v)) = s
                .col_as_slice(j)
                .iter()
                .enumerate()
                .find(|(_, v)| !v.is_finite())
            {
                return Err(Error::Numerical(format!(
                    "hidden state {l} of the model in {} is {v} at token {i}, feature {j}: its weights overflow in f64",
                    self.origin()
                )));
            }
        }
        Ok(())
    }

    /// Hidden states entering every block, plus the final output (length `num_layers() + 1`).
    pub fn hidden_states(&self, ids: &[u32]) -> Result<Vec<Mat<f64>>> {
        self.hidden_states_upto(ids, self.num_layers())
    }
}
