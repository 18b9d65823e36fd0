//! `lipattn reproduce`: the figures of docs/reproductions.md, computed by `lipattn_repro` and
//! written here, each as CSV + SVG + PNG, with one JSON summary.

use crate::plot::{Chart, Series, Style};
use anyhow::{Context, Result};
use clap::Args;
use lipattn::fmt::exact;
use lipattn_repro::{CurveKind, Figure, Plot, ReproduceRequest};
use serde_json::json;
use std::path::{Path, PathBuf};

#[derive(Args)]
pub struct ReproduceArgs {
    /// Output directory (created if missing).
    #[arg(long)]
    out: PathBuf,
    /// MiniLM model directory for figure (c); defaults to $LIPATTN_MINILM, skipped when neither.
    #[arg(long)]
    model: Option<PathBuf>,
    /// Tiny configuration (for tests): few n, N and heads.
    #[arg(long)]
    quick: bool,
    /// Print the JSON summary instead of a text summary.
    #[arg(long)]
    json: bool,
}

fn chart(plot: &Plot) -> Chart {
    Chart {
        title: plot.title.clone(),
        x_label: plot.x_label.clone(),
        y_label: plot.y_label.clone(),
        log_x: plot.log_x,
        log_y: plot.log_y,
        series: plot
            .curves
            .iter()
            .map(|c| {
                let style = match c.kind {
                    CurveKind::Measured => Style::LinePoints,
                    CurveKind::Reference => Style::Reference,
                };
                Series::new(c.label.clone(), c.points.clone(), style)
            })
            .collect(),
        vlines: plot.vlines.clone(),
    }
}

/// `NAME.csv`, `NAME.svg` and `NAME.png` in `out`.
fn write_figure(out: &Path, figure: &Figure) -> Result<()> {
    let path = out.join(format!("{}.csv", figure.name));
    std::fs::write(&path, &figure.csv).with_context(|| format!("writing {}", path.display()))?;
    chart(&figure.plot).write(&out.join(figure.name))
}

pub fn run(a: ReproduceArgs) -> Result<()> {
    let stage = lipattn::output::StagedDir::create(&a.out)?;
    let out = stage.path();
    let start = std::time::Instant::now();
    let request = ReproduceRequest {
        model: a
            .model
            .clone()
            // An empty variable is unset (it was read as the path "" and failed with
            // ": model directory not found").
            .or_else(|| {
                std::env::var_os("LIPATTN_MINILM")
                    .filter(|v| !v.is_empty())
                    .map(PathBuf::from)
            }),
        quick: a.quick,
    };
    let done = lipattn_repro::run(&request, &mut |figure| write_figure(out, figure))?;
    // A violation would be a bug in a proof or in its code: say so loudly, with the witness,
    // rather than let it pass as a ratio below 1.
    for (k, c) in done.checks.iter().filter(|c| !c.holds()).enumerate() {
        let prefix = format!("violation{k}_");
        c.witness.save(out, &prefix)?;
        eprintln!(
            "VIOLATION of {} (head {:?}, R {}): attained {} > certified {}; witness saved as {}/{prefix}*.npy",
            c.bound,
            c.head,
            exact(c.radius),
            // Every digit: the two may differ in the last ones only.
            exact(c.attained),
            exact(c.certified),
            a.out.display()
        );
    }
    let mut summary = done.summary;
    summary.insert("seconds".into(), json!(start.elapsed().as_secs_f64()));
    let summary = serde_json::Value::Object(summary);
    let path = out.join("summary.json");
    std::fs::write(&path, serde_json::to_string_pretty(&summary)?)
        .with_context(|| format!("writing {}", path.display()))?;
    stage.commit()?;
    if a.json {
        println!("{}", serde_json::to_string(&summary)?);
    } else {
        for c in summary["saturation"]["curves"].as_array().unwrap() {
            println!(
                "saturation R={}: small-n slope {:.3}, peak sigma {:.3} at n={}, n*={:.1}",
                c["R"],
                c["small_n_slope"].as_f64().unwrap_or(f64::NAN),
                c["peak_sigma"].as_f64().unwrap_or(f64::NAN),
                c["peak_n"],
                c["n_star"].as_f64().unwrap_or(f64::NAN)
            );
        }
        println!("l2 fit: {}", summary["l2_attention"]["fit"]);
        println!(
            "minilm: {}",
            summary["minilm_ratios"]
                .get("skipped")
                .unwrap_or(&summary["minilm_ratios"]["median_ratios"])
        );
        if let Some(r) = summary["minilm_all_bounds"].get("ratios") {
            for (name, v) in r.as_object().into_iter().flatten() {
                println!(
                    "{name}: certified/attained median {:.3e} (min {:.3e}, max {:.3e})",
                    v["all"]["median"].as_f64().unwrap_or(f64::NAN),
                    v["all"]["min"].as_f64().unwrap_or(f64::NAN),
                    v["all"]["max"].as_f64().unwrap_or(f64::NAN)
                );
            }
        }
        println!(
            "wrote {} in {:.1}s",
            a.out.display(),
            start.elapsed().as_secs_f64()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn tmp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("lipattn-repro-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn assert_files(d: &Path, stem: &str) {
        for ext in ["csv", "svg", "png"] {
            let p = d.join(format!("{stem}.{ext}"));
            let len = std::fs::metadata(&p).unwrap().len();
            assert!(len > 100, "{} has {len} bytes", p.display());
        }
    }

    /// Figures (c) and (d) on the synthetic stand-in for MiniLM are written in full; their
    /// soundness is tested in lipattn-repro.
    #[test]
    fn figures_c_d_write_every_file() {
        let d = tmp("cd");
        let layer = lipattn_repro::fixtures::synthetic_layer();
        let (c, _, _) = lipattn_repro::minilm_ratios::minilm_ratios(&layer, true).unwrap();
        write_figure(&d, &c).unwrap();
        let (f, _, _) = lipattn_repro::minilm_all_bounds::minilm_all_bounds(&layer, true).unwrap();
        write_figure(&d, &f).unwrap();
        assert_files(&d, "minilm_ratios");
        assert_files(&d, "minilm_all_bounds");
        let csv = std::fs::read_to_string(d.join("minilm_ratios.csv")).unwrap();
        assert!(csv.starts_with("head,R,attained_cheap,attained,gain,"));
        std::fs::remove_dir_all(d).ok();
    }

    #[test]
    fn quick_run_writes_every_file() {
        let d = tmp("run");
        run(ReproduceArgs {
            out: d.clone(),
            model: None,
            quick: true,
            json: true,
        })
        .unwrap();
        for stem in ["saturation", "l2_attention"] {
            for ext in ["csv", "svg", "png"] {
                let p = d.join(format!("{stem}.{ext}"));
                let len = std::fs::metadata(&p).unwrap().len();
                assert!(len > 100, "{} has {len} bytes", p.display());
            }
        }
        let png = std::fs::read(d.join("saturation.png")).unwrap();
        assert_eq!(&png[..4], b"\x89PNG");
        let s: Value =
            serde_json::from_str(&std::fs::read_to_string(d.join("summary.json")).unwrap())
                .unwrap();
        assert!(s["saturation"]["curves"].is_array());
        std::fs::remove_dir_all(d).ok();
    }
}
