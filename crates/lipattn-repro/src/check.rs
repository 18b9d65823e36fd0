//! An attained value beside the certified bound it must not exceed, with the input it was
//! reached at, so that a violation (a bug in a proof or in its code) can be replayed.

use anyhow::Result;
use faer::Mat;
use lipattn::Measure;
use std::path::Path;

/// The input an attained value was reached at, printed by the tests and saved by the command
/// when a check fails, so that a violation can be replayed.
#[derive(Clone, Debug)]
pub enum Witness {
    Tokens(Mat<f64>),
    Measures(Vec<Measure>),
}

impl Witness {
    /// Writes the input as float64 .npy files `{prefix}x.npy` or `{prefix}{k}_points.npy` and
    /// `{prefix}{k}_weights.npy`, so that a violation can be replayed.
    pub fn save(&self, dir: &Path, prefix: &str) -> Result<()> {
        match self {
            Witness::Tokens(x) => {
                lipattn::npy::write_matrix(&dir.join(format!("{prefix}x.npy")), x.as_ref())?
            }
            Witness::Measures(ms) => {
                for (k, m) in ms.iter().enumerate() {
                    m.to_npy(
                        &dir.join(format!("{prefix}{k}_points.npy")),
                        &dir.join(format!("{prefix}{k}_weights.npy")),
                    )?;
                }
            }
        }
        Ok(())
    }
}

/// One attained value beside one certified bound of the same metric and domain.
#[derive(Clone, Debug)]
pub struct Check {
    pub bound: String,
    pub head: Option<usize>,
    pub radius: f64,
    pub certified: f64,
    pub attained: f64,
    pub witness: Witness,
}

impl Check {
    pub fn holds(&self) -> bool {
        self.attained <= self.certified
    }
}
