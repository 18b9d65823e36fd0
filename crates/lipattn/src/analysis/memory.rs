//! The attention state of every operator at every n, decided once in the plan by the one rule
//! of `derivatives::AttentionMemory` (`auto`: dense where the dense n x n probabilities pass
//! their memory budget check, streaming otherwise), and the estimate of a run's time and peak
//! memory that `analyze` makes before its first measurement (docs/streaming.md#analyze).
//!
//! The estimate's memory is the sum of the same per-buffer estimates the budget checks use
//! (`AttentionLayer::state_bytes` for the dense state, `streaming::memory_estimate` for the
//! streaming one, `RotaryAttention::state_bytes` and the streaming rotary estimate, and
//! Lanczos's basis per step),
//! plus the model's parameters in f64. Its time is a cost model: the flops of one JVP + VJP and
//! of one linearisation scale as a n^2 + b n with n, and the seconds per flop are measured at
//! the start of the run on this machine, by a linearisation and a few Lanczos steps of the first
//! selected sublayer on each attention state the plan uses. Both are estimates, labelled so.

use super::plan::Plan;
use super::request::AnalysisOptions;
use super::sublayer::Op;
use crate::attention::{RotaryLinearization, StreamingRotaryLinearization};
use crate::derivatives::streaming::{StreamingLinearization, DEFAULT_BLOCK};
use crate::derivatives::{AttentionMemory, Linearization};
use crate::error::Result;
use crate::estimation::{lanczos, LanczosOptions};
use crate::linalg::SplitMix;
use crate::models::Model;
use serde::Serialize;
use std::borrow::Cow;
use std::time::Instant;

/// Per operator (the sublayer, then head h at h + 1, whether or not the options ask for the
/// heads' curves: the adversarial pass measures them all) and per n of `ns`, the attention state
/// it holds when the options ask for `asked`.
pub(super) fn attention_paths(
    sublayer: &Op,
    ns: &[usize],
    asked: AttentionMemory,
) -> Result<Vec<Vec<AttentionMemory>>> {
    (0..=sublayer.heads())
        .map(|o| {
            let op = match o {
                0 => Cow::Borrowed(sublayer),
                _ => Cow::Owned(sublayer.head(o - 1)?),
            };
            ns.iter().map(|&n| op.attention_at(n, asked)).collect()
        })
        .collect()
}

/// Lanczos steps assumed per local constant in the estimate (each one JVP and one VJP). The
/// analysis runs Lanczos to a relative accuracy of 1e-4; on MiniLM's real text and structured
/// inputs that takes about this many steps (docs/streaming.md#analyze compares the estimate
/// with the measured time of the main job).
pub const LANCZOS_STEPS_ASSUMED: usize = 12;

/// Sequence length of the calibration run (or the largest n of the grid, if smaller).
const PROBE_N: usize = 512;

/// Steps of the calibration run.
const PROBE_STEPS: usize = 3;

/// What `analyze` expects the run to cost, before it starts. Every figure is an estimate.
#[derive(Clone, Debug, Serialize)]
pub struct RunEstimate {
    /// Always "estimate": none of these figures is a measurement of this run.
    pub kind: &'static str,
    /// Wall time of the measurements (text and adversarial passes).
    pub seconds: f64,
    /// The largest memory in use at once: the parameters in f64, and at the largest n the
    /// attention states and Lanczos storage (`LANCZOS_STEPS_ASSUMED` steps) of as many
    /// operators as there are threads, the largest first.
    pub peak_bytes: u64,
    /// The same with every Lanczos run at its iteration cap (`max_iter` steps): what the budget
    /// checks would need if no run converged early.
    pub peak_bytes_at_iteration_cap: u64,
    /// The model's parameters in f64 (all layers: an upper estimate when the analysis stops
    /// before the last).
    pub weights_bytes: u64,
    /// Local constants the run computes (text windows x operators, and the structured inputs).
    pub local_constants: usize,
    pub lanczos_steps_assumed: usize,
    pub threads: usize,
    /// The measured calibration runs the time model scales.
    pub calibration: Vec<Calibration>,
    /// Per n: the sublayer's attention state and its bytes, and the time and memory there.
    pub per_n: Vec<EstimateAtN>,
    pub method: &'static str,
}

#[derive(Clone, Debug, Serialize)]
pub struct Calibration {
    pub attention: AttentionMemory,
    pub n: usize,
    /// Measured: one linearisation of the first selected sublayer at n tokens.
    pub seconds_linearise: f64,
    /// Measured: one Lanczos step (JVP + VJP) there.
    pub seconds_per_step: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct EstimateAtN {
    pub n: usize,
    /// The attention state of the (first selected) sublayer at this n.
    pub attention: AttentionMemory,
    /// Bytes of the sublayer's dense state at this n: the need its budget check names.
    pub dense_state_bytes: Option<u64>,
    /// Bytes of the state it holds (dense or streaming).
    pub state_bytes: Option<u64>,
    pub peak_bytes: u64,
    pub seconds: f64,
}

const METHOD: &str = "memory: the budget checks' own size formulas (attention state per operator, Lanczos basis per step) for as many operators at once as threads, plus the parameters in f64; time: flops of one linearisation and one JVP + VJP (a n^2 + b n) scaled from a calibration run of the first selected sublayer on this machine, times the local constants and the Lanczos steps assumed";

/// Flops of one JVP + VJP of `op` at n tokens (one linearisation costs about half).
fn step_flops(op: &Op, n: usize) -> f64 {
    let (h, dkdv, d_in, d_out, width) = op.shape();
    let (n, h) = (n as f64, h as f64);
    4.0 * n * n * h * dkdv as f64
        + 4.0 * n * d_in as f64 * h * width as f64
        + 2.0 * n * h * dkdv as f64 * d_out as f64
}

/// Bytes of Lanczos's basis after `steps` steps at n tokens (the formula of its budget check).
fn lanczos_bytes(op: &Op, n: usize, steps: usize) -> u64 {
    let (_, _, d_in, _, _) = op.shape();
    crate::budget::bytes_of(&[steps, n, d_in], 8).unwrap_or(u64::MAX)
}

fn weights_bytes(model: &Model) -> u64 {
    let t = model.tensors();
    t.names()
        .iter()
        .filter_map(|name| t.shape(name).ok())
        .map(|s| s.iter().product::<usize>() as u64 * 8)
        .sum()
}

/// One linearisation and `PROBE_STEPS` Lanczos steps of `op` at n tokens on `attention`, timed.
fn calibrate(op: &Op, n: usize, radius: f64, attention: AttentionMemory) -> Result<Calibration> {
    let (_, _, d_in, _, _) = op.shape();
    let mut x = SplitMix::new(0x5eed).gauss_mat(n, d_in);
    for i in 0..n {
        let norm = (0..d_in).map(|j| x[(i, j)] * x[(i, j)]).sum::<f64>().sqrt();
        for j in 0..d_in {
            x[(i, j)] *= 0.5 * radius / norm.max(1e-300);
        }
    }
    let opts = LanczosOptions {
        tol: 1e-15,
        max_iter: PROBE_STEPS,
        seed: 0,
    };
    let t0 = Instant::now();
    let (t_lin, steps) = match (op, attention) {
        (Op::Plain(l), AttentionMemory::Streaming) => {
            let lin = StreamingLinearization::new(l, x.as_ref(), None, false, DEFAULT_BLOCK)?;
            let t = t0.elapsed().as_secs_f64();
            (t, lanczos(&lin, &opts, None)?.iterations)
        }
        (Op::Plain(l), _) => {
            let lin = Linearization::new(l, x.as_ref(), None, false)?;
            let t = t0.elapsed().as_secs_f64();
            (t, lanczos(&lin, &opts, None)?.iterations)
        }
        (Op::Rotary(l), AttentionMemory::Streaming) => {
            let lin = StreamingRotaryLinearization::new(l, x.as_ref(), DEFAULT_BLOCK)?;
            let t = t0.elapsed().as_secs_f64();
            (t, lanczos(&lin, &opts, None)?.iterations)
        }
        (Op::Rotary(l), _) => {
            let lin = RotaryLinearization::new(l, x.as_ref())?;
            let t = t0.elapsed().as_secs_f64();
            (t, lanczos(&lin, &opts, None)?.iterations)
        }
    };
    let t_steps = t0.elapsed().as_secs_f64() - t_lin;
    Ok(Calibration {
        attention,
        n,
        seconds_linearise: t_lin,
        seconds_per_step: t_steps / steps.max(1) as f64,
    })
}

/// The estimate of the run `plan` describes.
pub(super) fn estimate(model: &Model, plan: &Plan, opts: &AnalysisOptions) -> Result<RunEstimate> {
    let w0 = &plan.work[0];
    let sublayer = w0.sublayer();
    let heads = sublayer.heads();
    let ops: Vec<Op> = std::iter::once(Ok(sublayer.clone()))
        .chain((0..heads).map(|h| sublayer.head(h)))
        .collect::<Result<_>>()?;
    let mut calibration: Vec<Calibration> = vec![];
    for path in [AttentionMemory::Dense, AttentionMemory::Streaming] {
        if !w0.attention.iter().flatten().any(|&p| p == path) {
            continue;
        }
        // At the largest n up to PROBE_N the budget admits: the estimate is made (and shown)
        // even for a run whose own states the budget will refuse.
        let mut probe_n = plan.ns.last().copied().unwrap_or(2).min(PROBE_N);
        loop {
            match calibrate(sublayer, probe_n, w0.radius(), path) {
                Ok(c) => {
                    calibration.push(c);
                    break;
                }
                Err(
                    crate::error::Error::Budget { .. } | crate::error::Error::OutOfMemory { .. },
                ) if probe_n > 16 => probe_n /= 2,
                Err(e) => return Err(e),
            }
        }
    }
    let seconds_of = |op: &Op, n: usize, path: AttentionMemory, steps: usize| -> f64 {
        let c = calibration
            .iter()
            .find(|c| c.attention == path)
            .or(calibration.first())
            .expect("one calibration per path in use");
        let scale = step_flops(op, n) / step_flops(sublayer, c.n);
        scale * (c.seconds_linearise + steps as f64 * c.seconds_per_step)
    };
    let threads = rayon::current_num_threads().max(1);
    let weights = weights_bytes(model);
    let layers = plan.work.len();
    let structured_ops = if opts.adversarial { 2 * (heads + 1) } else { 0 };
    let mut per_n = vec![];
    let mut local_constants = 0;
    let (mut seconds, mut peak, mut peak_cap) = (0.0, weights, weights);
    for (ni, &n) in plan.ns.iter().enumerate() {
        let windows = plan.windows[ni].1.len();
        let path = |o: usize| w0.attention[o][ni];
        // Text: every window through the blocks (one forward each, about one linearisation)
        // and every operator measured; structured inputs: every head and the sublayer, twice.
        let mut t = 0.0;
        for (o, op) in ops.iter().enumerate().take(plan.n_ops()) {
            t += windows as f64 * seconds_of(op, n, path(o), LANCZOS_STEPS_ASSUMED);
        }
        t += (windows * plan.blocks.len()) as f64 * seconds_of(sublayer, n, path(0), 0)
            / layers as f64;
        if opts.adversarial {
            for (o, op) in ops.iter().enumerate() {
                t += 2.0 * seconds_of(op, n, path(o), LANCZOS_STEPS_ASSUMED);
            }
        }
        t *= layers as f64;
        local_constants += layers * (windows * plan.n_ops() + structured_ops);
        let need = |steps: usize| -> u64 {
            let mut each: Vec<u64> = ops
                .iter()
                .enumerate()
                .map(|(o, op)| {
                    op.state_bytes(n, path(o))
                        .unwrap_or(u64::MAX)
                        .saturating_add(lanczos_bytes(op, n, steps))
                })
                .collect();
            each.sort_unstable_by(|a, b| b.cmp(a));
            each.iter()
                .take(threads)
                .fold(weights, |a, &b| a.saturating_add(b))
        };
        let (at_n, at_cap) = (need(LANCZOS_STEPS_ASSUMED), need(opts.lanczos.max_iter));
        peak = peak.max(at_n);
        peak_cap = peak_cap.max(at_cap);
        seconds += t;
        let dense_state_bytes = sublayer.state_bytes(n, AttentionMemory::Dense);
        per_n.push(EstimateAtN {
            n,
            attention: path(0),
            dense_state_bytes,
            state_bytes: sublayer.state_bytes(n, path(0)),
            peak_bytes: at_n,
            seconds: t,
        });
    }
    Ok(RunEstimate {
        kind: "estimate",
        seconds,
        peak_bytes: peak,
        peak_bytes_at_iteration_cap: peak_cap,
        weights_bytes: weights,
        local_constants,
        lanczos_steps_assumed: LANCZOS_STEPS_ASSUMED,
        threads,
        calibration,
        per_n,
        method: METHOD,
    })
}

impl RunEstimate {
    /// One line for a terminal, before the run.
    pub fn summary(&self) -> String {
        let last = self.per_n.last();
        format!(
            "estimate (a cost model calibrated on this machine, not a measurement): about {} and {} of memory at peak for {} local constants{}",
            duration(self.seconds),
            crate::budget::human(self.peak_bytes),
            self.local_constants,
            last.map_or(String::new(), |p| format!(
                "; at n = {} the sublayer's attention is {} ({}; dense would need {})",
                p.n,
                p.attention.name(),
                p.state_bytes.map_or("beyond 18 EB".into(), crate::budget::human),
                p.dense_state_bytes.map_or("beyond 18 EB".into(), crate::budget::human),
            ))
        )
    }
}

/// "40 s", "12 min", "3.1 h".
fn duration(s: f64) -> String {
    if s < 120.0 {
        format!("{s:.0} s")
    } else if s < 7200.0 {
        format!("{:.0} min", s / 60.0)
    } else {
        format!("{:.1} h", s / 3600.0)
    }
}
