//! Stage 5: the report. Each operator gets one point per n (its text values, adversarial value,
//! certified bounds and their gap) and power-law fits of each curve against n.

use super::adversarial_pass::AdversarialValues;
use super::certify::CertifiedValues;
use super::fit::{fit_power_law, PowerFit};
use super::memory::RunEstimate;
use super::plan::Frame;
use super::request::AnalysisOptions;
use super::text::TextIds;
use super::text_pass::TextValues;
use crate::bounds::Certified;
use crate::derivatives::AttentionMemory;
use crate::models::Model;
use crate::operator::{LayerSource, Operator, RotaryForm};
use serde::ser::{SerializeStruct, Serializer};
use serde::Serialize;

/// Castin et al. fit their curves over n up to about 100; the `*_small` fits use this range.
pub const SMALL_N_MAX: usize = 128;

/// The report's `certified` keeps the four keys it has always had: `anchor_code` is reported by
/// `lipattn lipschitz` only, and the analysis outputs (JSON, Python dicts) are compared across
/// versions.
fn without_anchor_code<S: Serializer>(c: &Certified, s: S) -> Result<S::Ok, S::Error> {
    let mut st = s.serialize_struct("Certified", 4)?;
    st.serialize_field("frobenius", &c.frobenius)?;
    st.serialize_field("w1", &c.w1)?;
    st.serialize_field("w2", &c.w2)?;
    st.serialize_field("anchor", &c.anchor)?;
    st.end()
}

#[derive(Clone, Debug, Serialize)]
pub struct Point {
    pub n: usize,
    /// Attained local constant at each real-text window of length n.
    pub text: Vec<f64>,
    pub text_median: Option<f64>,
    pub text_max: Option<f64>,
    /// Attained at the adversarial construction of Castin et al. (for the sublayer: the best
    /// head's input).
    pub adversarial: Option<f64>,
    /// Attained at the transition start (docs/background.md#transition-starts; for the
    /// sublayer: the best head's); None where no head has one (n < 3).
    pub transition: Option<f64>,
    /// Best certified bounds of the operator on (B_R)^n (token map, Frobenius) and P(B_R) (W1, W2).
    #[serde(serialize_with = "without_anchor_code")]
    pub certified: Certified,
    /// certified.frobenius / the largest attained value at this n.
    pub gap: Option<f64>,
    /// The attention state every local constant of this operator at this n ran on: "dense"
    /// (n x n probabilities) or "streaming" (per-row statistics, docs/streaming.md).
    pub attention: AttentionMemory,
}

#[derive(Clone, Debug, Serialize)]
pub struct OperatorReport {
    /// What every point certifies and measures (each point names its n).
    pub operator: Operator,
    pub layer: usize,
    /// None: the whole attention sublayer (all heads, W_O and its bias).
    pub head: Option<usize>,
    /// Radius R of the ball holding every attention input (B6 on the LayerNorm before it; for
    /// the rotary families the radius of the RMSNorm before it).
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
    /// Certified radius of the norm's output read by the attention (B6 for a LayerNorm, the
    /// RMSNorm radius for the rotary families).
    pub radius: f64,
    /// Largest token norm seen in the real-text windows (must not exceed `radius`).
    pub observed_max_norm: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct ModelReport {
    /// The checkpoint directory, or the label of a model made from parts in memory.
    pub model: String,
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
    /// What differs for the rotary families (absent for BERT and GPT-2, whose reports keep
    /// their keys).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rotary: Option<RotaryAnalysis>,
    /// What the run was expected to cost before it started (time and peak memory; estimates,
    /// docs/streaming.md#analyze); absent where no estimate was made (merged task results).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub estimate: Option<RunEstimate>,
}

/// The rotary families' analysis in words and numbers: the grouping of heads, where R comes
/// from, which bound is certified and how the structured inputs are built. Each operator's
/// `operator.rotary` carries its layer's form (rope, window, qk-norm, softcap).
#[derive(Clone, Debug, Serialize)]
pub struct RotaryAnalysis {
    pub kv_heads: usize,
    /// Query heads per kv head.
    pub group: usize,
    pub radius: &'static str,
    pub certified: &'static str,
    pub text: &'static str,
    pub adversarial: &'static str,
    pub transition: &'static str,
    /// The context limit, or its absence.
    pub positions: &'static str,
}

const ROTARY_RADIUS: &str = "R = sqrt(d) max_k |g_k| of the attention input RMSNorm (g = w, or 1 + w for Gemma), every output of which lies in B_R (docs/bounds.md#b7-rms-radius)";
const ROTARY_CERTIFIED: &str = "B7: the best certified Frobenius bound of the rotary sublayer (or query head) on (B_R)^n at positions 0..n-1, causal with the layer's window (docs/bounds.md#b7-rotary)";
const ROTARY_TEXT: &str = "Lanczos on the rotary linearisation at the RMSNorm output the sublayer reads, the text tokenised by the model's own tokenizer (its BOS as lipattn hidden adds it) and run through the blocks before the layer";
const ROTARY_ADVERSARIAL: &str = "Castin et al.'s construction for query head h read without rotation, qk-norm or softcap (its unrotated head), evaluated on the rotary head at positions 0..n-1; the sublayer at the best head's input";
const ROTARY_TRANSITION: &str = "the transition start of query head h read without rotation (its unrotated head), evaluated on the rotary head at positions 0..n-1; the sublayer at the best head's input";
const ROTARY_POSITIONS: &str = "rotary positions set no length limit (max_position_embeddings only parametrises dynamic, llama3 and yarn rope), so every n of the grid is analysed";

/// What the three measuring stages produced, indexed [layer slot][operator][n index].
pub(super) struct Measured {
    pub text: TextValues,
    pub adversarial: AdversarialValues,
    pub transition: AdversarialValues,
    pub certified: CertifiedValues,
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

/// One point per n of operator `o` of layer slot `slot`.
fn points(frame: &Frame, measured: &Measured, slot: usize, o: usize) -> Vec<Point> {
    let certified = &measured.certified[slot][o];
    let mut points = vec![];
    for (ni, (&n, cs)) in frame.ns.iter().zip(certified).enumerate() {
        let vals = &measured.text.sigma[slot][o][ni];
        let text_max = vals.iter().copied().reduce(f64::max);
        let adv = measured.adversarial[slot][o][ni];
        let transition = measured.transition[slot][o][ni];
        let attained = [text_max, adv, transition]
            .into_iter()
            .flatten()
            .reduce(f64::max);
        let gap = match (cs.best.frobenius, attained) {
            (Some(c), Some(a)) if a > 0.0 => Some(c / a),
            _ => None,
        };
        points.push(Point {
            n,
            text: vals.clone(),
            text_median: median(vals),
            text_max,
            adversarial: adv,
            transition,
            certified: cs.best,
            gap,
            attention: frame.layers[slot].attention[o][ni],
        });
    }
    points
}

fn operator_report(
    layer: usize,
    source: &LayerSource,
    rotary: Option<&RotaryForm>,
    o: usize,
    radius: f64,
    causal: bool,
    points: Vec<Point>,
) -> OperatorReport {
    let head = if o == 0 { None } else { Some(o - 1) };
    let source = head.map_or_else(|| source.clone(), |h| source.head(h));
    let series = |f: &dyn Fn(&Point) -> Option<f64>| -> Vec<(usize, f64)> {
        points
            .iter()
            .filter_map(|p| f(p).map(|v| (p.n, v)))
            .collect()
    };
    let text_s = series(&|p| p.text_median);
    let adv_s = series(&|p| p.adversarial);
    let cert_s = series(&|p| p.certified.frobenius);
    let operator = Operator::token_map_sweep(&source, source.kernel, radius, causal);
    let operator = match rotary {
        Some(form) => operator.with_rotary(form.clone()),
        None => operator,
    };
    OperatorReport {
        operator,
        layer,
        head,
        radius,
        causal,
        fit_text: fit_power_law(&text_s, 1, usize::MAX),
        fit_adversarial: fit_power_law(&adv_s, 1, usize::MAX),
        fit_certified: fit_power_law(&cert_s, 1, usize::MAX),
        fit_text_small: fit_power_law(&text_s, 1, SMALL_N_MAX),
        fit_adversarial_small: fit_power_law(&adv_s, 1, SMALL_N_MAX),
        points,
    }
}

pub(super) fn report(
    model: &Model,
    text: Option<&TextIds>,
    opts: &AnalysisOptions,
    frame: Frame,
    measured: &Measured,
    seconds: f64,
) -> ModelReport {
    let causal = frame.causal;
    let mut operators = vec![];
    let mut domains = vec![];
    for (slot, w) in frame.layers.iter().enumerate() {
        domains.push(LayerDomain {
            layer: w.index,
            radius: w.radius,
            observed_max_norm: measured.text.observed[slot],
        });
        let source = model.layer_source(w.index);
        for o in 0..measured.certified[slot].len() {
            let points = points(&frame, measured, slot, o);
            operators.push(operator_report(
                w.index,
                &source,
                w.rotary.as_ref(),
                o,
                w.radius,
                causal,
                points,
            ));
        }
    }
    let rotary = frame.layers[0].rotary.as_ref().map(|f| RotaryAnalysis {
        kv_heads: f.kv_heads,
        group: f.heads / f.kv_heads,
        radius: ROTARY_RADIUS,
        certified: ROTARY_CERTIFIED,
        text: ROTARY_TEXT,
        adversarial: ROTARY_ADVERSARIAL,
        transition: ROTARY_TRANSITION,
        positions: ROTARY_POSITIONS,
    });
    let head_dim = frame.layers[0]
        .rotary
        .as_ref()
        .map_or(model.config().head_dim(), |f| f.head_dim);
    let mut notes = frame.notes;
    if rotary.is_some() {
        notes.push(format!("causal ({} family, rotary): every value is for the operator the model computes, at positions 0..n-1 with the layer's sliding window where it has one; B7 certifies the Frobenius norm; W1/W2 over measures on B_R do not apply to a map that depends on positions and are not reported", model.family().display_name()));
    } else if causal {
        notes.push("causal (GPT-2 family): every attained value is for the masked operator the model computes; W1/W2 bounds are for unmasked measures and are not reported".into());
    }
    let cfg = model.config();
    ModelReport {
        model: model.origin().to_string(),
        family: model.family().name(),
        num_layers: model.num_layers(),
        heads: cfg.num_attention_heads,
        hidden: model.hidden_size(),
        head_dim,
        causal,
        dtype: "f64",
        metric: if rotary.is_some() {
            "token map X -> f(X) on (B_R)^n at positions 0..n-1, Frobenius to Frobenius (spectral norm of the Jacobian)"
        } else {
            "token map X -> f(X) on (B_R)^n, Frobenius to Frobenius (spectral norm of the Jacobian); W1/W2 for the measure map on P(B_R)"
        },
        head_operator: if rotary.is_some() {
            "head h: query head h with its kv head and its columns of W_O (its contribution to the sublayer output), without the output bias"
        } else {
            "head h: its contribution W_O^h Gamma^h to the sublayer output, without the output bias"
        },
        text_source: text.map_or("none".into(), |t| t.source.clone()),
        text_tokens: text.map_or(0, |t| t.prefix.len() + t.body.len() + t.suffix.len()),
        ns: frame.ns,
        windows: opts.windows,
        lanczos_tol: opts.lanczos.tol,
        domains,
        operators,
        notes,
        seconds,
        rotary,
        estimate: None,
    }
}
