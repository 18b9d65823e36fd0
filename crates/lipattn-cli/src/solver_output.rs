//! What `invert` and `fixed-point` write besides their JSON: the first solver's matrix
//! (`--save`) and a chart of every solver's residuals (`--plot`).

use crate::plot::{residual_series, Chart};
use anyhow::{Context, Result};
use faer::Mat;
use std::path::{Path, PathBuf};

/// Writes the first of `solutions` (the converged solvers' results, in request order) to `save`.
pub fn save_first(save: &Option<PathBuf>, solutions: &[Mat<f64>]) -> Result<()> {
    if let (Some(p), Some(x)) = (save, solutions.first()) {
        lipattn::npy::write_matrix(p, x.as_ref())
            .with_context(|| format!("writing --save {}", p.display()))?;
    }
    Ok(())
}

/// The residual trace of every solver on a log scale, as `dir/stem.{png,svg,csv}`.
pub fn plot_residuals(
    dir: &Path,
    stem: &str,
    title: String,
    y_label: &str,
    traces: &[(String, Vec<f64>)],
) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    Chart {
        title,
        x_label: "iteration".into(),
        y_label: y_label.into(),
        log_x: false,
        log_y: true,
        series: residual_series(traces),
        vlines: vec![],
    }
    .write(&dir.join(stem))
}
