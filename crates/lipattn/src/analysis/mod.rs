//! The whole-model analysis behind `lipattn analyze`: for every layer of a real checkpoint, its
//! attention sublayer and each head's contribution, on the domain fixed by the LayerNorm before
//! it (B6): certified bounds at each n, attained local constants on windows of real text over a
//! grid of n, the adversarial construction of Castin et al., the gaps, and power-law fits of
//! each curve against n. Attained values are lower bounds on the Lipschitz constant of the token
//! map on (B_R)^n; only the `certified` fields are proven upper bounds.

pub mod fit;
pub mod lipschitz;

pub use fit::{fit_power_law, PowerFit};
pub use lipschitz::{lipschitz, LipschitzOptions, LipschitzReport};

use crate::attention::AttentionLayer;
use crate::bounds::layer_norm::layer_norm_radius;
use crate::bounds::{certified_summaries, Domain};
use crate::derivatives::Linearization;
use crate::error::{Error, Result};
use crate::estimation::vecops::max_row_norm;
use crate::estimation::{
    adversarial_direction, adversarial_from_direction, lanczos, LanczosOptions,
};
use crate::models::{Model, ModelLayer, TextTokenizer};
use faer::{Mat, MatRef};
use rayon::prelude::*;
use serde::Serialize;
use std::path::PathBuf;
use std::time::Instant;

/// Castin et al. fit their curves over n up to about 100; the `*_small` fits use this range.
pub const SMALL_N_MAX: usize = 128;

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
        }
    }
}

/// The default real text: the GPL-3 licence, verbatim (see assets/README.md).
pub const DEFAULT_TEXT: &str = include_str!("../../assets/GPL-3.txt");
pub const DEFAULT_TEXT_SOURCE: &str = "GPL-3 licence text (embedded default)";

/// Real text as the model's sequence: prefix + (a window of) body + suffix.
#[derive(Clone, Debug)]
pub struct TextIds {
    pub prefix: Vec<u32>,
    pub body: Vec<u32>,
    pub suffix: Vec<u32>,
    /// Where the text came from, for the report.
    pub source: String,
}

impl TextIds {
    /// `text` tokenised by the model's own tokenizer; `source` names it in the report.
    pub fn from_text(tokenizer: &TextTokenizer, text: &str, source: &str) -> Result<Self> {
        let (prefix, body, suffix) = tokenizer.encode_parts(text)?;
        Ok(Self {
            prefix,
            body,
            suffix,
            source: source.to_string(),
        })
    }
}

/// Best certified bounds of one operator on (B_R)^n (token map, Frobenius) and P(B_R) (W1, W2).
#[derive(Clone, Debug, Serialize)]
pub struct Certified {
    pub frobenius: Option<f64>,
    pub w1: Option<f64>,
    pub w2: Option<f64>,
    /// Castin et al.'s bound as recalled in docs/background.md#castin-et-al: for comparison, not
    /// certified by lipattn.
    pub anchor: Option<f64>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Point {
    pub n: usize,
    /// Attained local constant at each real-text window of length n.
    pub text: Vec<f64>,
    pub text_median: Option<f64>,
    pub text_max: Option<f64>,
    /// Attained at the adversarial construction (for the sublayer: the best head's input).
    pub adversarial: Option<f64>,
    pub certified: Certified,
    /// certified.frobenius / the largest attained value at this n.
    pub gap: Option<f64>,
}

#[derive(Clone, Debug, Serialize)]
pub struct OperatorReport {
    pub layer: usize,
    /// None: the whole attention sublayer (all heads, W_O and its bias).
    pub head: Option<usize>,
    /// Radius R of the ball holding every attention input (B6 on the LayerNorm before it).
    pub radius: f64,
    pub causal: bool,
    pub points: Vec<Point>,
    /// Fits of the text medians, the adversarial values and the certified bound against n.
    pub fit_text: Option<PowerFit>,
    pub fit_adversarial: Option<PowerFit>,
    pub fit_certified: Option<PowerFit>,
    /// The same over n <= SMALL_N_MAX, the range of Castin et al.'s fits.
    pub fit_text_small: Option<PowerFit>,
    pub fit_adversarial_small: Option<PowerFit>,
}

#[derive(Clone, Debug, Serialize)]
pub struct LayerDomain {
    pub layer: usize,
    /// B6: certified radius of the LayerNorm output read by the attention.
    pub radius: f64,
    /// Largest token norm seen in the real-text windows (must not exceed `radius`).
    pub observed_max_norm: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct ModelReport {
    pub model: PathBuf,
    pub family: &'static str,
    pub num_layers: usize,
    pub heads: usize,
    pub hidden: usize,
    pub head_dim: usize,
    pub causal: bool,
    pub dtype: &'static str,
    pub metric: &'static str,
    pub head_operator: &'static str,
    pub text_source: String,
    pub text_tokens: usize,
    pub ns: Vec<usize>,
    pub windows: usize,
    pub lanczos_tol: f64,
    pub domains: Vec<LayerDomain>,
    pub operators: Vec<OperatorReport>,
    pub notes: Vec<String>,
    pub seconds: f64,
}

/// Reported after each unit of work (one window or adversarial pass through one layer).
#[derive(Clone, Debug)]
pub struct Progress {
    pub done: usize,
    pub total: usize,
    pub stage: String,
}

struct LayerWork {
    index: usize,
    block: ModelLayer,
    radius: f64,
    /// The sublayer first, then the heads.
    ops: Vec<AttentionLayer<f64>>,
    /// Per head, the direction of the adversarial construction.
    directions: Vec<Vec<f64>>,
}

fn local_sigma(
    op: &AttentionLayer<f64>,
    x: MatRef<'_, f64>,
    causal: bool,
    opts: &LanczosOptions,
) -> Result<f64> {
    let lin = Linearization::new(op, x, None, causal)?;
    Ok(lanczos(&lin, opts, None)?.sigma)
}

fn median(v: &[f64]) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let m = s.len() / 2;
    Some(if s.len() % 2 == 1 {
        s[m]
    } else {
        0.5 * (s[m - 1] + s[m])
    })
}

fn check_options(opts: &AnalysisOptions, max_positions: usize, num_layers: usize) -> Result<()> {
    if opts.ns.is_empty() {
        return Err(Error::Empty {
            what: "grid of sequence lengths".into(),
        });
    }
    if let Some(&n) = opts.ns.iter().find(|&&n| n < 2 || n > max_positions) {
        return Err(Error::Invalid(format!(
            "sequence length {n} outside 2..={max_positions} (the model's position table)"
        )));
    }
    if let Some(layers) = &opts.layers {
        if layers.is_empty() {
            return Err(Error::Empty {
                what: "list of layers".into(),
            });
        }
        if let Some(&l) = layers.iter().find(|&&l| l >= num_layers) {
            return Err(Error::Invalid(format!(
                "layer {l} out of range: the model has {num_layers} layers (0..{num_layers})"
            )));
        }
    }
    if opts.windows == 0 && !opts.adversarial {
        return Err(Error::Invalid(
            "nothing to attain: no text windows and no adversarial inputs".into(),
        ));
    }
    Ok(())
}

/// Runs the analysis. `text` may be None (adversarial inputs and certified bounds only).
pub fn analyze(
    model: &Model,
    text: Option<&TextIds>,
    opts: &AnalysisOptions,
    progress: &mut dyn FnMut(&Progress),
) -> Result<ModelReport> {
    let t0 = Instant::now();
    let embeddings = model.embeddings()?;
    let num_layers = model.num_layers();
    check_options(opts, embeddings.max_positions(), num_layers)?;
    let mut ns = opts.ns.clone();
    ns.sort_unstable();
    ns.dedup();
    let mut selected: Vec<usize> = opts.layers.clone().unwrap_or((0..num_layers).collect());
    selected.sort_unstable();
    selected.dedup();
    let causal = model.is_causal();
    let mut notes = vec![];

    // Every block up to the deepest selected one is needed for the hidden states.
    let last = *selected.last().expect("checked non-empty");
    let blocks: Vec<ModelLayer> = (0..=last).map(|l| model.layer(l)).collect::<Result<_>>()?;
    let mut work: Vec<LayerWork> = vec![];
    for &l in &selected {
        let block = blocks[l].clone();
        let ln = &block.attention_input_norm;
        let radius = layer_norm_radius(&ln.gamma, &ln.beta)?;
        let mut ops = vec![block.attention.clone()];
        if opts.heads {
            for h in 0..block.attention.heads {
                ops.push(block.attention.head(h, false)?);
            }
        }
        let directions = if opts.adversarial {
            (0..block.attention.heads)
                .into_par_iter()
                .map(|h| adversarial_direction(&block.attention, h))
                .collect::<Result<_>>()?
        } else {
            vec![]
        };
        work.push(LayerWork {
            index: l,
            block,
            radius,
            ops,
            directions,
        });
    }
    let n_ops = work[0].ops.len();

    let windows: Vec<(usize, Vec<Vec<u32>>)> = ns
        .iter()
        .map(|&n| {
            let w = text.map_or(vec![], |t| {
                crate::models::tokenize::windows_of(&t.prefix, &t.body, &t.suffix, n, opts.windows)
            });
            (n, w)
        })
        .collect();
    if let Some(t) = text {
        let short: Vec<usize> = windows
            .iter()
            .filter(|(_, w)| w.is_empty())
            .map(|(n, _)| *n)
            .collect();
        if !short.is_empty() && opts.windows > 0 {
            notes.push(format!(
                "the text ({} tokens) is too short for n = {short:?}: no real-text values there",
                t.body.len() + t.prefix.len() + t.suffix.len()
            ));
        }
    }
    let total = windows.iter().map(|(_, w)| w.len()).sum::<usize>()
        + if opts.adversarial { ns.len() } else { 0 };
    let mut done = 0;

    // text[layer slot][op][n index] = values over windows
    let mut text_vals = vec![vec![vec![Vec::<f64>::new(); ns.len()]; n_ops]; work.len()];
    let mut observed = vec![0.0f64; work.len()];
    for (ni, (n, wins)) in windows.iter().enumerate() {
        for (wi, ids) in wins.iter().enumerate() {
            crate::cancel::check()?;
            progress(&Progress {
                done,
                total,
                stage: format!("real text, n = {n}, window {}/{}", wi + 1, wins.len()),
            });
            let mut h = embeddings.embed(ids)?;
            let mut slot = 0;
            for (l, block) in blocks.iter().enumerate() {
                if slot < work.len() && work[slot].index == l {
                    let x = block.attention_input(h.as_ref())?;
                    observed[slot] = observed[slot].max(max_row_norm(x.as_ref()));
                    let sig: Vec<f64> = work[slot]
                        .ops
                        .par_iter()
                        .map(|op| local_sigma(op, x.as_ref(), causal, &opts.lanczos))
                        .collect::<Result<_>>()?;
                    for (o, s) in sig.into_iter().enumerate() {
                        text_vals[slot][o][ni].push(s);
                    }
                    slot += 1;
                }
                if l < last {
                    h = block.forward(h.as_ref())?;
                }
            }
            done += 1;
        }
    }

    let mut adv_vals = vec![vec![vec![None::<f64>; ns.len()]; n_ops]; work.len()];
    if opts.adversarial {
        for (ni, &n) in ns.iter().enumerate() {
            progress(&Progress {
                done,
                total,
                stage: format!("adversarial inputs, n = {n}"),
            });
            for (slot, w) in work.iter().enumerate() {
                let att = &w.block.attention;
                let inputs: Vec<Mat<f64>> = w
                    .directions
                    .iter()
                    .map(|u| adversarial_from_direction(u, n, w.radius))
                    .collect::<Result<_>>()?;
                // Each head at its own construction; the sublayer at the construction of the head
                // whose contribution it amplifies most (one more evaluation, not one per head).
                let per_head: Vec<f64> = (0..att.heads)
                    .into_par_iter()
                    .map(|h| {
                        let op = if opts.heads {
                            w.ops[h + 1].clone()
                        } else {
                            att.head(h, false)?
                        };
                        local_sigma(&op, inputs[h].as_ref(), causal, &opts.lanczos)
                    })
                    .collect::<Result<_>>()?;
                let best = (0..att.heads)
                    .max_by(|&a, &b| per_head[a].total_cmp(&per_head[b]))
                    .expect("a layer has at least one head");
                adv_vals[slot][0][ni] = Some(local_sigma(
                    att,
                    inputs[best].as_ref(),
                    causal,
                    &opts.lanczos,
                )?);
                if opts.heads {
                    for (h, s) in per_head.into_iter().enumerate() {
                        adv_vals[slot][h + 1][ni] = Some(s);
                    }
                }
            }
            done += 1;
        }
    }
    progress(&Progress {
        done,
        total,
        stage: "certified bounds".into(),
    });

    let mut operators = vec![];
    let mut domains = vec![];
    for (slot, w) in work.iter().enumerate() {
        if text.is_some() && observed[slot] > w.radius {
            return Err(Error::Numerical(format!(
                "layer {}: a real-text token has norm {} above the LayerNorm radius {} (B6); the radius bound is violated",
                w.index, observed[slot], w.radius
            )));
        }
        domains.push(LayerDomain {
            layer: w.index,
            radius: w.radius,
            observed_max_norm: observed[slot],
        });
        let domains: Vec<Domain> = ns
            .iter()
            .map(|&n| Domain::new(w.radius, n, causal))
            .collect::<Result<_>>()?;
        let all: Vec<_> = w
            .ops
            .par_iter()
            .map(|op| certified_summaries(op, &domains))
            .collect::<Result<_>>()?;
        for (o, summaries) in all.into_iter().enumerate() {
            let mut points = vec![];
            for (ni, (&n, cs)) in ns.iter().zip(summaries).enumerate() {
                let vals = &text_vals[slot][o][ni];
                let text_max = vals.iter().copied().reduce(f64::max);
                let adv = adv_vals[slot][o][ni];
                let attained = match (text_max, adv) {
                    (Some(a), Some(b)) => Some(a.max(b)),
                    (a, b) => a.or(b),
                };
                let gap = match (cs.frobenius, attained) {
                    (Some(c), Some(a)) if a > 0.0 => Some(c / a),
                    _ => None,
                };
                points.push(Point {
                    n,
                    text: vals.clone(),
                    text_median: median(vals),
                    text_max,
                    adversarial: adv,
                    certified: Certified {
                        frobenius: cs.frobenius,
                        w1: cs.w1,
                        w2: cs.w2,
                        anchor: cs.anchor,
                    },
                    gap,
                });
            }
            let series = |f: &dyn Fn(&Point) -> Option<f64>| -> Vec<(usize, f64)> {
                points
                    .iter()
                    .filter_map(|p| f(p).map(|v| (p.n, v)))
                    .collect()
            };
            let text_s = series(&|p| p.text_median);
            let adv_s = series(&|p| p.adversarial);
            let cert_s = series(&|p| p.certified.frobenius);
            operators.push(OperatorReport {
                layer: w.index,
                head: if o == 0 { None } else { Some(o - 1) },
                radius: w.radius,
                causal,
                fit_text: fit_power_law(&text_s, 1, usize::MAX),
                fit_adversarial: fit_power_law(&adv_s, 1, usize::MAX),
                fit_certified: fit_power_law(&cert_s, 1, usize::MAX),
                fit_text_small: fit_power_law(&text_s, 1, SMALL_N_MAX),
                fit_adversarial_small: fit_power_law(&adv_s, 1, SMALL_N_MAX),
                points,
            });
        }
    }
    if causal {
        notes.push("causal (GPT-2 family): every attained value is for the masked operator the model computes; W1/W2 bounds are for unmasked measures and are not reported".into());
    }
    let cfg = model.config();
    Ok(ModelReport {
        model: model.dir().to_path_buf(),
        family: model.family().name(),
        num_layers,
        heads: cfg.num_attention_heads,
        hidden: model.hidden_size(),
        head_dim: cfg.head_dim(),
        causal,
        dtype: "f64",
        metric: "token map X -> f(X) on (B_R)^n, Frobenius to Frobenius (spectral norm of the Jacobian); W1/W2 for the measure map on P(B_R)",
        head_operator: "head h: its contribution W_O^h Gamma^h to the sublayer output, without the output bias",
        text_source: text.map_or("none".into(), |t| t.source.clone()),
        text_tokens: text.map_or(0, |t| t.prefix.len() + t.body.len() + t.suffix.len()),
        ns,
        windows: opts.windows,
        lanczos_tol: opts.lanczos.tol,
        domains,
        operators,
        notes,
        seconds: t0.elapsed().as_secs_f64(),
    })
}
