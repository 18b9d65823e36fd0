//! `lipattn lipschitz`: certified upper bounds beside attained lower bounds, with the gap.

use crate::layer_arg::LayerArg;
use anyhow::Result;
use clap::Args;
use lipattn::bounds::{certified_summary, Domain};
use lipattn::estimation::adversarial::{ascent, AscentOptions};
use lipattn::estimation::layer_pair_seeds;
use lipattn::estimation::measure_pairs::{search_pairs, PairSearchOptions};
use lipattn::Kernel;
use serde_json::json;
use std::path::PathBuf;
use std::time::Instant;

#[derive(Args)]
pub struct LipschitzArgs {
    #[command(flatten)]
    target: LayerArg,
    /// Analyse one head (its contribution W_O^h Gamma^h) instead of the whole sublayer.
    #[arg(long)]
    head: Option<usize>,
    /// Radius R of the ball B_R holding every token (e.g. from the preceding LayerNorm).
    #[arg(long)]
    radius: f64,
    /// Sequence length n for the token-map bound and the attained search.
    #[arg(long)]
    n: usize,
    /// Score kernel: dot (the model's own) or l2 (tied to the query projection).
    #[arg(long, default_value = "dot")]
    kernel: Kernel,
    /// Random starts of the ascent over (B_R)^n.
    #[arg(long, default_value_t = 2)]
    starts: usize,
    /// Ascent steps per start.
    #[arg(long, default_value_t = 10)]
    steps: usize,
    /// Atoms per measure in the W1 pair search.
    #[arg(long, default_value_t = 8)]
    atoms: usize,
    /// Seed of the random searches.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Save the input attaining the Frobenius lower bound as .npy.
    #[arg(long)]
    save_input: Option<PathBuf>,
    /// Save the measure pair attaining the W1 lower bound as .npy files in this directory
    /// (w1_mu_points.npy, w1_mu_weights.npy, w1_nu_points.npy, w1_nu_weights.npy).
    #[arg(long)]
    save_pair: Option<PathBuf>,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
}

fn ratio(c: Option<f64>, a: Option<f64>) -> Option<f64> {
    match (c, a) {
        (Some(c), Some(a)) if a > 0.0 => Some(c / a),
        _ => None,
    }
}

pub fn run(a: LipschitzArgs) -> Result<()> {
    let t0 = Instant::now();
    let (full, causal) = a.target.load()?;
    if causal {
        anyhow::bail!(
            "layer {} of {} is causal (GPT-2 family): the attained searches of `lipschitz` handle unmasked attention only so far; use `lipattn local` for attained values of causal layers",
            a.target.layer,
            a.target.model.display()
        );
    }
    let full = full.with_kernel(a.kernel);
    let layer = match a.head {
        Some(h) => full.head(h, false)?,
        None => full.clone(),
    };
    let domain = Domain::new(a.radius, a.n, false)?;
    let cert = certified_summary(&layer, &domain)?;
    let asc = ascent(
        &layer,
        a.n,
        None,
        &AscentOptions {
            radius: a.radius,
            random_starts: a.starts,
            steps: a.steps,
            seed: a.seed,
            ..AscentOptions::default()
        },
    )?;
    if let Some(p) = &a.save_input {
        lipattn::npy::write_matrix(p, asc.x.as_ref())?;
    }
    // Starts built from the weights of each head involved (dot kernel): random pairs in d = 384
    // almost never line up with the directions where B2's constant is made.
    let seeds = layer_pair_seeds(&layer, a.radius)?;
    let seed_count = seeds.len();
    let pairs = search_pairs(
        &layer,
        &PairSearchOptions {
            radius: a.radius,
            atoms: a.atoms,
            seeds,
            seed: a.seed,
            ..PairSearchOptions::default()
        },
    )?;
    if let Some(dir) = &a.save_pair {
        std::fs::create_dir_all(dir)
            .map_err(|e| anyhow::anyhow!("creating {}: {e}", dir.display()))?;
        pairs.best.save(dir, "w1_")?;
    }
    let att_f = Some(asc.sigma);
    let att_w1 = Some(pairs.best.ratio);
    let out = json!({
        "model": a.target.model,
        "layer": a.target.layer,
        "head": a.head,
        "kernel": layer.kernel,
        "domain": {
            "radius": a.radius,
            "n": a.n,
            "dtype": "f64",
            "frobenius": "token map X -> f(X) on (B_R)^n, Frobenius norm, uniform weights, no mask",
            "w1": "F(mu) = (Gamma_mu)_# mu on probability measures supported in B_R, Wasserstein-1",
        },
        "certified": {
            "frobenius": cert.frobenius,
            "w1": cert.w1,
            "w2": cert.w2,
            "anchor": cert.anchor,
            "anchor_code": cert.anchor_code,
        },
        "attained": {
            "frobenius": att_f,
            "w1": att_w1,
            "frobenius_construction": asc.construction_sigma,
            "w1_pair": {"w1_in": pairs.best.w1_in, "w1_out": pairs.best.w1_out, "phase": pairs.phase,
                        "structured_starts": seed_count},
        },
        "ratio": {
            "frobenius": ratio(cert.frobenius, att_f),
            "w1": ratio(cert.w1, att_w1),
            "anchor_frobenius": ratio(cert.anchor, att_f),
        },
        "bounds": cert.bounds,
        "notes": cert.notes,
        "seconds": t0.elapsed().as_secs_f64(),
    });
    if a.json {
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        let f = |x: Option<f64>| x.map_or("none".to_string(), |v| format!("{v:.6e}"));
        println!(
            "layer {}{} kernel {:?}, tokens in B_R with R = {}, n = {}, f64",
            a.target.layer,
            a.head.map_or(String::new(), |h| format!(" head {h}")),
            layer.kernel,
            a.radius,
            a.n
        );
        println!(
            "{:<34} {:>14} {:>14} {:>10}",
            "metric", "certified", "attained", "ratio"
        );
        println!(
            "{:<34} {:>14} {:>14} {:>10}",
            "token map, Frobenius",
            f(cert.frobenius),
            f(att_f),
            f(ratio(cert.frobenius, att_f))
        );
        println!(
            "{:<34} {:>14} {:>14} {:>10}",
            "measures, W1",
            f(cert.w1),
            f(att_w1),
            f(ratio(cert.w1, att_w1))
        );
        println!(
            "{:<34} {:>14} {:>14} {:>10}",
            "anchor (Castin et al., not ours)",
            f(cert.anchor),
            "",
            ""
        );
        for n in &cert.notes {
            println!("note: {n}");
        }
    }
    Ok(())
}
