//! `lipattn lipschitz`: certified upper bounds beside attained lower bounds, with the gap.

use crate::layer_arg::LayerArg;
use anyhow::Result;
use clap::Args;
use lipattn::analysis::lipschitz::{lipschitz, ratio, rotary_lipschitz, LipschitzOptions};
use lipattn::attention::RotaryAttention;
use lipattn::fmt::{compact, upper};
use lipattn::models::SublayerWeights;
use lipattn::operator::Mask;
use lipattn::output::{StagedDir, StagedFile};
use lipattn::Kernel;
use lipattn::LayerSource;
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
    #[arg(long, value_parser = crate::names::named::<Kernel>(), default_value_t = Kernel::Dot)]
    kernel: Kernel,
    /// Certify another mask than the model's own (GPT-2 family: causal; BERT: none); the output
    /// then says so.
    #[arg(long, value_parser = crate::names::named::<Mask>())]
    mask: Option<Mask>,
    /// Random starts of the ascent over (B_R)^n.
    #[arg(long, default_value_t = LipschitzOptions::DEFAULT_STARTS)]
    starts: usize,
    /// Ascent steps per start.
    #[arg(long, default_value_t = LipschitzOptions::DEFAULT_STEPS)]
    steps: usize,
    /// Atoms per measure in the W1 pair search.
    #[arg(long, default_value_t = LipschitzOptions::DEFAULT_ATOMS)]
    atoms: usize,
    /// Seed of the random searches.
    #[arg(long, default_value_t = LipschitzOptions::DEFAULT_SEED)]
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

impl LipschitzArgs {
    fn options(&self) -> LipschitzOptions {
        LipschitzOptions {
            radius: self.radius,
            n: self.n,
            starts: self.starts,
            steps: self.steps,
            atoms: self.atoms,
            seed: self.seed,
            causal: self.mask.map(Mask::causal),
        }
    }

    /// The report's JSON with what the command adds: model, layer, head, and the command's own
    /// time, loading included.
    fn annotate(&self, mut out: serde_json::Value, t0: Instant) -> serde_json::Value {
        out["model"] = json!(self.target.model);
        out["layer"] = json!(self.target.layer);
        out["head"] = json!(self.head);
        out["seconds"] = json!(t0.elapsed().as_secs_f64());
        out
    }
}

fn row(metric: &str, certified: String, attained: String, ratio: String) {
    println!("{metric:<34} {certified:>14} {attained:>14} {ratio:>10}");
}

fn num(x: Option<f64>) -> String {
    x.map_or("none".to_string(), |v| compact(v).to_string())
}

/// Certified upper bounds are shown rounded up, so the table never understates them.
fn up(x: Option<f64>) -> String {
    x.map_or("none".to_string(), |v| upper(v).to_string())
}

pub fn run(a: LipschitzArgs) -> Result<()> {
    let t0 = Instant::now();
    let save_input = a
        .save_input
        .as_deref()
        .map(StagedFile::create)
        .transpose()?;
    let (weights, source) = a.target.load_sublayer()?;
    if let SublayerWeights::Rotary { layer, family } = weights {
        return run_rotary(&a, &layer, family, &source, save_input, t0);
    }
    let save_pair = a.save_pair.as_deref().map(StagedDir::create).transpose()?;
    let (full, source) = a.target.load()?;
    let full = full.with_kernel(a.kernel);
    let (layer, source) = match a.head {
        Some(h) => (full.head(h, false)?, source.head(h)),
        None => (full, source),
    };
    if a.save_pair.is_some() && source.mask(a.mask.map(Mask::causal)) {
        anyhow::bail!("--save-pair: no W1 pair is searched under a causal mask (the masked map is a sequence operation, not a map of measures); add --mask none for the unmasked operator");
    }
    let report = lipschitz(&layer, &source, &a.options())?;
    if let Some(f) = save_input {
        lipattn::npy::write_matrix(f.path(), report.ascent.x.as_ref())?;
        f.commit()?;
    }
    // A causal run has no pair, and --save-pair was refused for it above.
    if let (Some(dir), Some(pairs)) = (save_pair, &report.pairs) {
        pairs.best.save(dir.path(), "w1_")?;
        dir.commit()?;
    }
    let (cert, att_f, att_w1) = (
        &report.certified,
        report.attained_frobenius(),
        report.attained_w1(),
    );
    let out = a.annotate(report.to_json(), t0);
    if a.json {
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        println!("operator: {}", report.operator.description);
        row(
            "metric",
            "certified".into(),
            "attained".into(),
            "ratio".into(),
        );
        row(
            "token map, Frobenius",
            up(cert.best.frobenius),
            num(att_f),
            num(ratio(cert.best.frobenius, att_f)),
        );
        row(
            "measures, W1",
            up(cert.best.w1),
            num(att_w1),
            num(ratio(cert.best.w1, att_w1)),
        );
        row(
            "anchor (Castin et al., not ours)",
            num(cert.best.anchor),
            String::new(),
            String::new(),
        );
        for n in &cert.notes {
            println!("note: {n}");
        }
    }
    Ok(())
}

/// `lipschitz` on a rotary sublayer: B7 beside the rotary ascent (no W1 pair search: the map
/// depends on positions).
fn run_rotary(
    a: &LipschitzArgs,
    full: &RotaryAttention,
    family: &'static str,
    source: &LayerSource,
    save_input: Option<StagedFile>,
    t0: Instant,
) -> Result<()> {
    if a.kernel != Kernel::Dot {
        anyhow::bail!("--kernel {}: the rotary families have dot-product attention only (model_type '{family}')", a.kernel.name());
    }
    if a.save_pair.is_some() {
        anyhow::bail!("--save-pair: rotary attention depends on positions, so no W1 measure pair is searched (model_type '{family}')");
    }
    let head_layer;
    let (layer, source) = match a.head {
        Some(h) => {
            head_layer = full.head(h)?;
            (&head_layer, source.head(h))
        }
        None => (full, source.clone()),
    };
    let report = rotary_lipschitz(layer, family, &source, &a.options())?;
    if let Some(f) = save_input {
        lipattn::npy::write_matrix(f.path(), report.ascent.x.as_ref())?;
        f.commit()?;
    }
    let out = a.annotate(report.to_json(), t0);
    if a.json {
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    let att = Some(report.ascent.sigma);
    let cert = report.certified.best.frobenius;
    println!("operator: {}", report.operator.description);
    row(
        "metric",
        "certified".into(),
        "attained".into(),
        "ratio".into(),
    );
    row(
        "token map, Frobenius",
        up(cert),
        num(att),
        num(ratio(cert, att)),
    );
    row(
        "(position, token) measures, W1",
        up(out["certified"]["position_w1"].as_f64()),
        String::new(),
        String::new(),
    );
    for n in &report.certified.notes {
        println!("note: {n}");
    }
    Ok(())
}
