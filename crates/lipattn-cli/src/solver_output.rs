//! What `invert` and `fixed-point` write besides their JSON: the first solver's matrix
//! (`--save`) and a chart of every solver's residuals (`--plot`).

use crate::plot::{residual_series, Chart};
use anyhow::{Context, Result};
use faer::Mat;
use lipattn::output::{StagedDir, StagedFile};

/// Writes the first of `solutions` (the converged solvers' results, in request order) to `save`;
/// without one, nothing is written (the stage is dropped).
pub fn save_first(save: Option<StagedFile>, solutions: &[Mat<f64>]) -> Result<()> {
    if let (Some(f), Some(x)) = (save, solutions.first()) {
        lipattn::npy::write_matrix(f.path(), x.as_ref()).context("writing --save")?;
        f.commit()?;
    }
    Ok(())
}

/// The residual trace of every solver on a log scale, as `dir/stem.{png,svg,csv}`.
pub fn plot_residuals(
    dir: StagedDir,
    stem: &str,
    title: String,
    y_label: &str,
    traces: &[(String, Vec<f64>)],
) -> Result<()> {
    Chart {
        title,
        x_label: "iteration".into(),
        y_label: y_label.into(),
        log_x: false,
        log_y: true,
        series: residual_series(traces),
        vlines: vec![],
    }
    .write(&dir.path().join(stem))?;
    Ok(dir.commit()?)
}
