//! Stage 1: everything decided before any measurement. The options are checked against the
//! model, the selected layers get their radius (B6 on a LayerNorm, the RMSNorm radius of the
//! rotary families), their operators (the sublayer, then each head) and, for the adversarial
//! pass, one direction per head; the text is cut into windows.

use super::memory::attention_paths;
use super::request::{check_options, AnalysisOptions};
use super::sublayer::{Block, Op};
use super::text::TextIds;
use crate::derivatives::AttentionMemory;
use crate::domain::Domain;
use crate::error::Result;
use crate::estimation::TransitionGeometry;
use crate::models::{Embeddings, Model};
use crate::operator::RotaryForm;
use rayon::prelude::*;

/// One selected layer.
pub(super) struct LayerWork {
    pub index: usize,
    /// Per n of the plan's grid, in its order: the ball of this layer's radius and the model's
    /// mask.
    pub domains: Vec<Domain>,
    /// The sublayer first, then the heads (when the options ask for them).
    pub ops: Vec<Op>,
    /// The rotary sublayer's form (rotary families only), for every operator's report.
    pub rotary: Option<RotaryForm>,
    /// Per head, the direction of the adversarial construction.
    pub directions: Vec<Vec<f64>>,
    /// Per head, the transition start's geometry on this layer's ball (None: the head has
    /// none); each n takes its start from it.
    pub transitions: Vec<Option<TransitionGeometry>>,
    /// [operator: the sublayer, then head h at h + 1][n index]: the attention state its local
    /// constants run on (`memory::attention_paths`).
    pub attention: Vec<Vec<AttentionMemory>>,
}

pub(super) struct Plan {
    pub embeddings: Embeddings,
    /// The grid of n, sorted, without repeats.
    pub ns: Vec<usize>,
    pub causal: bool,
    /// Every block up to the deepest selected one: the hidden states pass through them all.
    pub blocks: Vec<Block>,
    /// The selected layers, in increasing order.
    pub work: Vec<LayerWork>,
    /// Per n, the real-text windows of that length (none without text or when it is too short).
    pub windows: Vec<(usize, Vec<Vec<u32>>)>,
    /// Units of work for progress: one per window, one per n of the adversarial pass.
    pub total: usize,
    pub notes: Vec<String>,
}

impl LayerWork {
    /// R of the layer's ball, the same at every n.
    pub fn radius(&self) -> f64 {
        self.domains[0].radius
    }

    /// The whole sublayer.
    pub fn sublayer(&self) -> &Op {
        &self.ops[0]
    }

    /// Head h's operator: the one measured on text when the options ask for heads, else built.
    pub fn head(&self, h: usize) -> Result<std::borrow::Cow<'_, Op>> {
        Ok(match self.ops.get(h + 1) {
            Some(op) => std::borrow::Cow::Borrowed(op),
            None => std::borrow::Cow::Owned(self.sublayer().head(h)?),
        })
    }
}

impl Plan {
    /// Operators per layer: the same for every selected layer.
    pub fn n_ops(&self) -> usize {
        self.work[0].ops.len()
    }
}

/// What the report needs of a plan: the grid, each selected layer's radius and rotary form, the
/// notes. `tasks::merge` builds it without the plan's operators and structured inputs.
pub(super) struct Frame {
    pub ns: Vec<usize>,
    pub causal: bool,
    pub layers: Vec<FrameLayer>,
    pub notes: Vec<String>,
}

pub(super) struct FrameLayer {
    pub index: usize,
    pub radius: f64,
    pub rotary: Option<RotaryForm>,
    /// As `LayerWork::attention`.
    pub attention: Vec<Vec<AttentionMemory>>,
}

impl Plan {
    pub fn into_frame(self) -> Frame {
        Frame {
            ns: self.ns,
            causal: self.causal,
            layers: self
                .work
                .iter()
                .map(|w| FrameLayer {
                    index: w.index,
                    radius: w.radius(),
                    rotary: w.rotary.clone(),
                    attention: w.attention.clone(),
                })
                .collect(),
            notes: self.notes,
        }
    }
}

/// The options checked against the model; the grid of n and the selected layers, each sorted and
/// without repeats.
pub(super) fn grid(
    model: &Model,
    embeddings: &Embeddings,
    opts: &AnalysisOptions,
) -> Result<(Vec<usize>, Vec<usize>)> {
    let num_layers = model.num_layers();
    let max_positions = embeddings.max_positions().unwrap_or(usize::MAX);
    check_options(opts, max_positions, num_layers)?;
    let mut ns = opts.ns.clone();
    ns.sort_unstable();
    ns.dedup();
    let mut selected: Vec<usize> = opts.layers.clone().unwrap_or((0..num_layers).collect());
    selected.sort_unstable();
    selected.dedup();
    Ok((ns, selected))
}

/// The frame of `plan(model, text, opts)`, loading one selected block at a time for its radius
/// and rotary form.
pub(super) fn frame(
    model: &Model,
    text: Option<&TextIds>,
    opts: &AnalysisOptions,
) -> Result<Frame> {
    let embeddings = model.embeddings()?;
    let (ns, selected) = grid(model, &embeddings, opts)?;
    let layers = selected
        .iter()
        .map(|&l| {
            let block = Block::load(model, l)?;
            let rotary = match block.attention() {
                Op::Rotary(layer) => Some(RotaryForm::of(model.family().name(), &layer)),
                Op::Plain(_) => None,
            };
            Ok(FrameLayer {
                index: l,
                radius: block.radius()?,
                rotary,
                attention: attention_paths(&block.attention(), &ns, opts.attention)?,
            })
        })
        .collect::<Result<_>>()?;
    let notes = window_notes(text, &windows(text, &ns, opts.windows));
    Ok(Frame {
        ns,
        causal: model.is_causal(),
        layers,
        notes,
    })
}

/// Per n, the real-text windows of that length.
fn windows(text: Option<&TextIds>, ns: &[usize], count: usize) -> Vec<(usize, Vec<Vec<u32>>)> {
    ns.iter()
        .map(|&n| {
            let w = text.map_or(vec![], |t| {
                crate::models::tokenize::windows_of(&t.prefix, &t.body, &t.suffix, n, count)
            });
            (n, w)
        })
        .collect()
}

/// The notes on the n that get no real-text values.
fn window_notes(text: Option<&TextIds>, windows: &[(usize, Vec<Vec<u32>>)]) -> Vec<String> {
    let mut notes = vec![];
    if let Some(t) = text {
        let specials = t.prefix.len() + t.suffix.len();
        let (no_room, short): (Vec<usize>, Vec<usize>) = windows
            .iter()
            .filter(|(_, w)| w.is_empty())
            .map(|(n, _)| *n)
            .partition(|&n| n <= specials);
        if !no_room.is_empty() {
            notes.push(format!(
                "n = {no_room:?} holds no more than the model's {specials} special tokens, so no text fits: no real-text values there"
            ));
        }
        if !short.is_empty() {
            notes.push(format!(
                "the text ({} tokens) is too short for n = {short:?}: no real-text values there",
                t.body.len() + t.prefix.len() + t.suffix.len()
            ));
        }
    }
    notes
}

pub(super) fn plan(model: &Model, text: Option<&TextIds>, opts: &AnalysisOptions) -> Result<Plan> {
    let embeddings = model.embeddings()?;
    let (ns, selected) = grid(model, &embeddings, opts)?;
    let causal = model.is_causal();

    let last = *selected.last().expect("checked non-empty");
    let blocks: Vec<Block> = (0..=last)
        .map(|l| Block::load(model, l))
        .collect::<Result<_>>()?;
    let mut work: Vec<LayerWork> = vec![];
    for &l in &selected {
        let block = &blocks[l];
        let radius = block.radius()?;
        let domains = ns
            .iter()
            .map(|&n| Domain::new(radius, n, causal))
            .collect::<Result<_>>()?;
        let sublayer = block.attention();
        let heads = sublayer.heads();
        let rotary = match &sublayer {
            Op::Rotary(layer) => Some(RotaryForm::of(model.family().name(), layer)),
            Op::Plain(_) => None,
        };
        let mut ops = vec![sublayer];
        if opts.heads {
            for h in 0..heads {
                ops.push(ops[0].head(h)?);
            }
        }
        let directions = if opts.adversarial {
            (0..heads)
                .into_par_iter()
                .map(|h| ops[0].adversarial_direction(h))
                .collect::<Result<_>>()?
        } else {
            vec![]
        };
        let transitions = if opts.adversarial {
            (0..heads)
                .into_par_iter()
                .map(|h| ops[0].transition(h, radius))
                .collect::<Result<_>>()?
        } else {
            vec![]
        };
        let attention = attention_paths(&ops[0], &ns, opts.attention)?;
        work.push(LayerWork {
            index: l,
            domains,
            ops,
            rotary,
            directions,
            transitions,
            attention,
        });
    }

    let windows = windows(text, &ns, opts.windows);
    let notes = window_notes(text, &windows);
    let total = windows.iter().map(|(_, w)| w.len()).sum::<usize>()
        + if opts.adversarial { ns.len() } else { 0 };
    Ok(Plan {
        embeddings,
        ns,
        causal,
        blocks,
        work,
        windows,
        total,
        notes,
    })
}
