//! Ball certificates of blocks and whole models (Lemma C over the steps of the scope's chain,
//! docs/bounds.md#lemma-c), shared by `certify` and `robustness`. What does not depend on the
//! radius is computed once at the centre: every step's input, the Lemma P bounds of the steps,
//! of prefixes and suffixes of the chain and of the whole scope, and the feed-forward norms.
//! Each radius then costs the per-step ball bounds (Lemma S for attention, Lemma N for the
//! rest) and Lemma C's arithmetic.

use super::scope_local::UPPER_SEED_OFFSET;
use crate::attention::{
    AttentionLayer, RotaryAttention, RotaryLinearization, StreamingRotaryLinearization,
};
use crate::bounds::ball::{check_rotary_covered, rows_bytes, BallKind, SlopeCentre};
use crate::bounds::chain_ball::{chain_balls, output_change, ChainBall, ChainCentre};
use crate::bounds::piece_ball::{
    compose, image, layer_norm_ball, mean_pool_bound, normalise_bound, rms_norm_ball,
    FeedForwardCentre, FeedForwardNorms, GatedFeedForwardNorms, PieceBall, PieceBound,
};
use crate::derivatives::streaming::{StreamingLinearization, DEFAULT_BLOCK};
use crate::derivatives::{AttentionMemory, Linearization};
use crate::error::Result;
use crate::estimation::centre_upper::{centre_upper, CentreUpper};
use crate::linalg::rounding::{add_up, mul_up};
use crate::models::stack::BlockWeights;
use crate::models::stack::{Links, Piece};
use crate::models::{Pool, StackWeights};
use faer::{Mat, MatRef};
use serde::Serialize;

/// Points of the Riemann sum behind the output-change bound (chain_ball::output_change).
const OUTPUT_CHANGE_POINTS: usize = 8;

crate::named_enum! {
    /// Which intervals (a, b) of the chain get their own Lemma P run at the centre (every other
    /// interval is bounded by the best product over splits, `ChainCentre::new`).
    pub enum Intervals as "intervals" {
        /// Prefixes, suffixes, runs inside a block and runs from one block boundary to another
        /// (`intervals_between`): about 4 runs a step (101 for MiniLM's 27 steps, pooled).
        Blocks = "blocks",
        /// Every interval of two steps or more (k(k-1)/2 - 1 runs besides the whole scope's):
        /// far tighter at larger radii, but the time grows like the cube of the depth (MiniLM's
        /// whole model: about 2.4x `blocks`).
        All = "all",
    }
}

/// Per step, what its ball bound needs beyond its input.
enum Extra {
    None,
    /// Attention read at the step's own input: Lemma S's part at X.
    Slope(SlopeCentre),
    /// The network's norms and its pre-activations at its input (after its LayerNorm, if any).
    FeedForward {
        norms: FeedForwardNorms,
        centre: FeedForwardCentre,
    },
    /// Pre-norm attention: Lemma P's bound and Lemma S's part at the attention's input LN(x).
    PreNormAttention {
        upper: f64,
        slope: SlopeCentre,
    },
    /// Rotary attention after its RMSNorm: Lemma P's bound and Lemma S's part at the attention's
    /// input, and (with an output norm) the attention's output, that norm's input.
    RotaryAttention {
        upper: f64,
        output: Option<Mat<f64>>,
        slope: SlopeCentre,
    },
    /// The gated network after its RMSNorm: its norms, its input and (with an output norm) its
    /// output.
    Gated {
        norms: GatedFeedForwardNorms,
        input: Mat<f64>,
        output: Option<Mat<f64>>,
    },
}

/// One Lemma P run of the certificate, for the report.
#[derive(Clone, Debug, Serialize)]
pub struct CentreRun {
    /// Which map: "step i", "steps a..b", "whole", "attention of step i".
    pub map: String,
    pub value: f64,
    pub ritz_sigma: f64,
    pub krylov_dimension: usize,
}

/// The centre of a block or model certificate.
pub struct StackCentre<'w> {
    links: Links<'w>,
    extras: Vec<Extra>,
    pub chain: ChainCentre,
    /// Lemma P for the whole scope (also prefix k and suffix 0).
    pub whole: CentreUpper,
    pub runs: Vec<CentreRun>,
    /// Sum of the runs' failure probabilities (union bound).
    pub failure_probability: f64,
    pub output: Mat<f64>,
    pub n: usize,
}

/// The intervals (a, b) of the chain whose norm at the centre Lemma P bounds, [`intervals_between`]
/// the block boundaries: the steps before which a block (its attention residual) or the pooling
/// starts; with [`Intervals::All`] every interval of two steps or more ([`intervals_all`]).
fn intervals(pieces: &[Piece<'_>], set: Intervals) -> Vec<(usize, usize)> {
    let k = pieces.len();
    if set == Intervals::All {
        return intervals_all(k);
    }
    let inner = (1..k).filter(|&i| {
        matches!(
            pieces[i],
            Piece::AttentionResidual { .. }
                | Piece::RotaryAttentionResidual { .. }
                | Piece::MeanPool
        )
    });
    let bounds: Vec<usize> = std::iter::once(0).chain(inner).chain([k]).collect();
    intervals_between(k, &bounds)
}

/// For a chain of k steps with block boundaries `bounds` (0 and k included, increasing): every
/// prefix and every suffix, inside each block every run of two steps or more, and every run from
/// one boundary to another two or more blocks on. Products of the steps' own norms are far above
/// the norms of their compositions (MiniLM block 0: a LayerNorm of norm 3.8 followed by a
/// feed-forward residual of norm 39 composes to about 35, not 146; MiniLM's blocks 1-4 from the
/// input embeddings' LayerNorm compose to 16-21, where the product of their norms is about 1e3),
/// and Lemma C reads prefix norms squared and the middle intervals in its terms of second order;
/// any other interval is bounded by a product of at most three of these (a run to its block's end,
/// one across whole blocks, a run from a block's start).
fn intervals_between(k: usize, bounds: &[usize]) -> Vec<(usize, usize)> {
    let mut out: Vec<(usize, usize)> = (2..k).map(|b| (0, b)).collect();
    out.extend((1..k - 1).map(|a| (a, k)));
    for w in bounds.windows(2) {
        for a in w[0]..w[1] {
            for b in a + 2..w[1] + 1 {
                if a != 0 && b != k {
                    out.push((a, b));
                }
            }
        }
    }
    for (p, &a) in bounds.iter().enumerate().filter(|&(_, &a)| a != 0) {
        out.extend(
            bounds
                .iter()
                .skip(p + 2)
                .filter(|&&b| b != k)
                .map(|&b| (a, b)),
        );
    }
    out
}

/// Every interval (a, b) of a chain of k steps with b >= a + 2, but (0, k) (the whole scope's
/// own run): k(k-1)/2 - 1 of them, the prefixes first.
fn intervals_all(k: usize) -> Vec<(usize, usize)> {
    (0..k)
        .flat_map(|a| (a + 2..=k).map(move |b| (a, b)))
        .filter(|&ab| ab != (0, k))
        .collect()
}

impl<'w> StackCentre<'w> {
    /// Everything at X that the certificate on any ball needs, its attention steps (their
    /// linearisations and Lemma S centres) on the state `attention` asks for
    /// ([`StackWeights::resolve_attention`] counting [`certificate_bytes`] beside the chain).
    /// The Lemma P runs share `failure_probability` equally; `intervals` picks the runs of
    /// steps bounded at the centre besides the steps and the whole scope.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        weights: &'w StackWeights,
        x: MatRef<'_, f64>,
        attention: AttentionMemory,
        failure_probability: f64,
        steps: usize,
        interval_steps: usize,
        intervals: Intervals,
        seed: u64,
    ) -> Result<Self> {
        let n = x.nrows();
        let attention = weights.resolve_attention(n, attention, true, &|state| {
            certificate_bytes(weights, n, state)
        })?;
        let (output, links) = weights.links(x, true, attention)?;
        let streaming = links.attention == AttentionMemory::Streaming;
        let plain_slope = |layer: &AttentionLayer<f64>, x: MatRef<'_, f64>, causal: bool| {
            if streaming {
                SlopeCentre::plain_streaming(layer, x, causal)
            } else {
                SlopeCentre::plain(layer, x, causal)
            }
        };
        let rotary_slope = |layer: &RotaryAttention, x: MatRef<'_, f64>| {
            if streaming {
                SlopeCentre::rotary_streaming(layer, x)
            } else {
                SlopeCentre::rotary(layer, x)
            }
        };
        let k = links.pieces.len();
        // What no radius can certify is refused before any Lemma P run (and never read as a
        // radius too large by the robustness search).
        for p in &links.pieces {
            if let Piece::RotaryAttention(layer) | Piece::RotaryAttentionResidual { layer, .. } = p
            {
                check_rotary_covered(layer)?;
            }
        }
        let spans = self::intervals(&links.pieces, intervals);
        let needs_run = |p: &Piece<'_>| {
            matches!(
                p,
                Piece::Attention { .. }
                    | Piece::AttentionResidual { .. }
                    | Piece::FeedForwardResidual { .. }
                    | Piece::RotaryAttention(_)
                    | Piece::RotaryAttentionResidual { .. }
                    | Piece::GatedFeedForwardResidual { .. }
            )
        };
        let pre_norm_attention = |p: &Piece<'_>| {
            matches!(
                p,
                Piece::AttentionResidual { norm: Some(_), .. }
                    | Piece::RotaryAttentionResidual { .. }
            )
        };
        let count = 1
            + links.pieces.iter().filter(|p| needs_run(p)).count()
            + links
                .pieces
                .iter()
                .filter(|p| pre_norm_attention(p))
                .count()
            + spans.len();
        let delta = failure_probability / count as f64;
        let mut runs = Vec::with_capacity(count);
        let mut total_failure = 0.0;
        let mut next_seed = seed.wrapping_add(UPPER_SEED_OFFSET);
        let mut upper = |lin: &dyn UpperMap, map: String, steps: usize| -> Result<CentreUpper> {
            let u = lin.upper(steps, delta, next_seed)?;
            next_seed = next_seed.wrapping_add(1);
            total_failure += delta;
            runs.push(CentreRun {
                map,
                value: u.value,
                ritz_sigma: u.ritz_sigma,
                krylov_dimension: u.krylov_dimension,
            });
            Ok(u)
        };
        let pooled_from = links
            .pieces
            .iter()
            .position(|p| matches!(p, Piece::MeanPool))
            .unwrap_or(k);
        let rows = |i: usize| if i > pooled_from { 1 } else { n };
        let d = weights.d;
        let slice = |a: usize, b: usize| links.chain.slice(a..b, rows(a), rows(b), d);
        let whole = upper(&slice(0, k), "whole".into(), steps)?;
        let mut centre = Vec::with_capacity(k);
        let mut extras = Vec::with_capacity(k);
        for (i, piece) in links.pieces.iter().enumerate() {
            let input = links.inputs[i].as_ref();
            let (u, extra) = match *piece {
                Piece::LayerNorm(ln) => (
                    layer_norm_ball(ln, input, PieceBall::centre())?.sup,
                    Extra::None,
                ),
                Piece::MeanPool => (mean_pool_bound(n).sup, Extra::None),
                Piece::Normalise => (normalise_bound(input, 0.0)?.sup, Extra::None),
                Piece::Attention { layer, causal } => (
                    upper(&slice(i, i + 1), format!("step {i}"), interval_steps)?.value,
                    Extra::Slope(plain_slope(layer, input, causal)?),
                ),
                Piece::AttentionResidual {
                    norm,
                    layer,
                    causal,
                } => {
                    let u = upper(&slice(i, i + 1), format!("step {i}"), interval_steps)?.value;
                    let extra = match norm {
                        None => Extra::Slope(plain_slope(layer, input, causal)?),
                        Some(ln) => {
                            let inner = ln.apply(input)?;
                            let what = format!("attention of step {i}");
                            let a = if streaming {
                                let lin = StreamingLinearization::new(
                                    layer,
                                    inner.as_ref(),
                                    None,
                                    causal,
                                    DEFAULT_BLOCK,
                                )?;
                                upper(&lin, what, interval_steps)?
                            } else {
                                let lin = Linearization::new(layer, inner.as_ref(), None, causal)?;
                                upper(&lin, what, interval_steps)?
                            }
                            .value;
                            Extra::PreNormAttention {
                                slope: plain_slope(layer, inner.as_ref(), causal)?,
                                upper: a,
                            }
                        }
                    };
                    (u, extra)
                }
                Piece::FeedForwardResidual { ff, norm } => {
                    let norms = FeedForwardNorms::of(ff)?;
                    let centre = match norm {
                        None => norms.centre(ff, input)?,
                        Some(ln) => norms.centre(ff, ln.apply(input)?.as_ref())?,
                    };
                    (
                        upper(&slice(i, i + 1), format!("step {i}"), interval_steps)?.value,
                        Extra::FeedForward { norms, centre },
                    )
                }
                Piece::RmsNorm(rn) => (
                    rms_norm_ball(rn, input, PieceBall::centre())?.sup,
                    Extra::None,
                ),
                Piece::RotaryAttention(layer) => (
                    upper(&slice(i, i + 1), format!("step {i}"), interval_steps)?.value,
                    Extra::Slope(rotary_slope(layer, input)?),
                ),
                Piece::RotaryAttentionResidual {
                    norm,
                    layer,
                    output_norm,
                } => {
                    let u = upper(&slice(i, i + 1), format!("step {i}"), interval_steps)?.value;
                    let inner = norm.apply(input)?;
                    let what = format!("attention of step {i}");
                    let (a, out) = if streaming {
                        let lin = StreamingRotaryLinearization::new(
                            layer,
                            inner.as_ref(),
                            DEFAULT_BLOCK,
                        )?;
                        (upper(&lin, what, interval_steps)?, lin.output())
                    } else {
                        let lin = RotaryLinearization::new(layer, inner.as_ref())?;
                        (upper(&lin, what, interval_steps)?, lin.output())
                    };
                    let a = a.value;
                    let output = output_norm.map(|_| out);
                    (
                        u,
                        Extra::RotaryAttention {
                            slope: rotary_slope(layer, inner.as_ref())?,
                            upper: a,
                            output,
                        },
                    )
                }
                Piece::GatedFeedForwardResidual {
                    norm,
                    ff,
                    output_norm,
                } => {
                    let u = upper(&slice(i, i + 1), format!("step {i}"), interval_steps)?.value;
                    let inner = norm.apply(input)?;
                    let output = output_norm
                        .map(|_| ff.forward(inner.as_ref()))
                        .transpose()?;
                    (
                        u,
                        Extra::Gated {
                            norms: GatedFeedForwardNorms::of(ff)?,
                            input: inner,
                            output,
                        },
                    )
                }
            };
            centre.push(u);
            extras.push(extra);
        }
        let mut known = vec![(0, k, whole.value)];
        for &(a, b) in &spans {
            let u = upper(&slice(a, b), format!("steps {a}..{b}"), interval_steps)?;
            known.push((a, b, u.value));
        }
        Ok(Self {
            links,
            extras,
            chain: ChainCentre::new(&centre, &known),
            whole,
            runs,
            failure_probability: total_failure.min(failure_probability),
            output,
            n,
        })
    }

    /// The attention state the certificate's chain holds (resolved: dense or streaming).
    pub fn attention(&self) -> AttentionMemory {
        self.links.attention
    }

    /// The Lemma S centre step i reads on `ball` around its input, and the token radius it
    /// reads it at (that of the ball around the attention's own input); None for steps that
    /// read none.
    fn read_radius(&self, i: usize, ball: PieceBall) -> Result<Option<(&SlopeCentre, f64)>> {
        let input = self.links.inputs[i].as_ref();
        Ok(match (self.links.pieces[i], &self.extras[i]) {
            (_, Extra::Slope(centre)) => Some((centre, ball.token)),
            (
                Piece::AttentionResidual { norm: Some(ln), .. },
                Extra::PreNormAttention { slope, .. },
            ) => {
                let norm = layer_norm_ball(ln, input, ball)?;
                Some((slope, image(ball, &norm).token))
            }
            (Piece::RotaryAttentionResidual { norm, .. }, Extra::RotaryAttention { slope, .. }) => {
                let nb = rms_norm_ball(norm, input, ball)?;
                Some((slope, image(ball, &nb).token))
            }
            _ => None,
        })
    }

    /// Step i's bounds on each ball of `balls` around its input: an attention step reads its
    /// Lemma S centre once for all of them ([`SlopeCentre::at_radii`]: one pass over the rows,
    /// each radius's sums apart), so each bound equals the step's bound on its ball alone.
    fn step_bounds(&self, i: usize, balls: &[PieceBall]) -> Vec<Result<PieceBound>> {
        let reads: Vec<Result<Option<(&SlopeCentre, f64)>>> =
            balls.iter().map(|&b| self.read_radius(i, b)).collect();
        let radii: Vec<f64> = reads
            .iter()
            .filter_map(|r| match r {
                Ok(Some((_, radius))) => Some(*radius),
                _ => None,
            })
            .collect();
        let centre = reads.iter().find_map(|r| match r {
            Ok(Some((centre, _))) => Some(*centre),
            _ => None,
        });
        let mut slopes = centre
            .map_or_else(Vec::new, |c| c.at_radii(&radii))
            .into_iter();
        reads
            .into_iter()
            .zip(balls)
            .map(|(read, &b)| {
                let slope = match read? {
                    Some(_) => Some(slopes.next().expect("one slope per read")?.value),
                    None => None,
                };
                self.step_bound(i, b, slope)
            })
            .collect()
    }

    /// Step i's bound on `ball` around its input, with `read` the slope its Lemma S centre gives
    /// at the radius [`StackCentre::read_radius`] names (None for steps that read none).
    fn step_bound(&self, i: usize, ball: PieceBall, read: Option<f64>) -> Result<PieceBound> {
        let read = || read.expect("an attention step's slope is read before its bound");
        let input = self.links.inputs[i].as_ref();
        let u = self.chain.interval[i][i + 1];
        let r = ball.frobenius;
        let around = |slope: f64| add_up(u, mul_up(r, slope));
        Ok(match (self.links.pieces[i], &self.extras[i]) {
            (Piece::LayerNorm(ln), _) => layer_norm_ball(ln, input, ball)?,
            (Piece::MeanPool, _) => mean_pool_bound(self.n),
            (Piece::Normalise, _) => normalise_bound(input, r)?,
            (Piece::Attention { .. }, Extra::Slope(_))
            | (Piece::AttentionResidual { norm: None, .. }, Extra::Slope(_))
            | (Piece::RotaryAttention(_), Extra::Slope(_)) => {
                let slope = read();
                PieceBound {
                    sup: around(slope),
                    slope,
                    token_gain: f64::INFINITY,
                }
            }
            (
                Piece::AttentionResidual { norm: Some(ln), .. },
                Extra::PreNormAttention { upper, .. },
            ) => {
                let norm = layer_norm_ball(ln, input, ball)?;
                let b = image(ball, &norm);
                let slope = read();
                let attention = PieceBound {
                    sup: add_up(*upper, mul_up(b.frobenius, slope)),
                    slope,
                    token_gain: f64::INFINITY,
                };
                residual(compose(attention, norm), around)
            }
            (Piece::FeedForwardResidual { norm, .. }, Extra::FeedForward { norms, centre }) => {
                let branch = match norm {
                    None => norms.local_bound(centre, ball)?,
                    Some(ln) => {
                        let nb = layer_norm_ball(ln, input, ball)?;
                        compose(norms.local_bound(centre, image(ball, &nb))?, nb)
                    }
                };
                residual(branch, around)
            }
            (Piece::RmsNorm(rn), _) => rms_norm_ball(rn, input, ball)?,
            (
                Piece::RotaryAttentionResidual {
                    norm, output_norm, ..
                },
                Extra::RotaryAttention { upper, output, .. },
            ) => {
                let nb = rms_norm_ball(norm, input, ball)?;
                let b = image(ball, &nb);
                let slope = read();
                let attention = PieceBound {
                    sup: add_up(*upper, mul_up(b.frobenius, slope)),
                    slope,
                    token_gain: f64::INFINITY,
                };
                let mut branch = compose(attention, nb);
                if let (Some(on), Some(out)) = (output_norm, output) {
                    let ob = image(b, &attention);
                    branch = compose(rms_norm_ball(on, out.as_ref(), ob)?, branch);
                }
                residual(branch, around)
            }
            (
                Piece::GatedFeedForwardResidual {
                    norm,
                    ff,
                    output_norm,
                },
                Extra::Gated {
                    norms,
                    input: inner,
                    output,
                },
            ) => {
                let nb = rms_norm_ball(norm, input, ball)?;
                let b = image(ball, &nb);
                let fb = norms.bound(ff, inner.as_ref(), b)?;
                let mut branch = compose(fb, nb);
                if let (Some(on), Some(out)) = (output_norm, output) {
                    let ob = image(b, &fb);
                    branch = compose(rms_norm_ball(on, out.as_ref(), ob)?, branch);
                }
                residual(branch, around)
            }
            _ => unreachable!("every step's extra is set with it"),
        })
    }

    /// Lemma C on the ball of radius `eps` (of kind `ball`) around X, and the bound on
    /// ||f(Y) - f(X)||_F over it. The full ball and the output change's Riemann points (the ball
    /// scaled by t = j / m) are walked together ([`chain_balls`]), so each attention step reads
    /// its Lemma S centre once for all m balls: one pass over its rows per certificate radius.
    pub fn at(&self, ball: BallKind, eps: f64) -> Result<(ChainBall, f64)> {
        let rho = ball.frobenius_radius(eps, self.n);
        let shape = |t: f64| PieceBall {
            frobenius: mul_up(rho, t),
            token: mul_up(if ball == BallKind::Tokens { eps } else { rho }, t),
        };
        let m = OUTPUT_CHANGE_POINTS;
        let points: Vec<f64> = (1..m).map(|j| j as f64 / m as f64).collect();
        let balls: Vec<PieceBall> = std::iter::once(1.0)
            .chain(points.iter().copied())
            .map(shape)
            .collect();
        let mut chains = chain_balls(&self.chain, &balls, |i, bs| self.step_bounds(i, bs))?;
        let scaled: Vec<f64> = chains.drain(1..).map(|c| c.sup).collect();
        let full = chains.pop().expect("the full ball's chain");
        let change = output_change(rho, &full, m, |t| {
            let j = points
                .iter()
                .position(|&p| p == t)
                .expect("output_change reads the points t = j / m");
            Ok(scaled[j])
        })?;
        Ok((full, change))
    }

    /// What each step is, for reports.
    pub fn step_names(&self) -> Vec<String> {
        self.links
            .pieces
            .iter()
            .map(|p| match p {
                Piece::Attention { .. } => "attention".to_string(),
                Piece::AttentionResidual { norm: None, .. } => "h + attention(h)".into(),
                Piece::AttentionResidual { .. } => "h + attention(LN(h))".into(),
                Piece::FeedForwardResidual { norm: None, .. } => "a + FFN(a)".into(),
                Piece::FeedForwardResidual { .. } => "a + FFN(LN(a))".into(),
                Piece::LayerNorm(_) => "LayerNorm".into(),
                Piece::MeanPool => "mean pooling".into(),
                Piece::Normalise => "l2 normalisation".into(),
                Piece::RotaryAttention(_) => "rotary attention".into(),
                Piece::RotaryAttentionResidual {
                    output_norm: None, ..
                } => "h + attention(RMSNorm(h))".into(),
                Piece::RotaryAttentionResidual { .. } => {
                    "h + RMSNorm(attention(RMSNorm(h)))".into()
                }
                Piece::GatedFeedForwardResidual {
                    output_norm: None, ..
                } => "a + gated FFN(RMSNorm(a))".into(),
                Piece::GatedFeedForwardResidual { .. } => {
                    "a + RMSNorm(gated FFN(RMSNorm(a)))".into()
                }
                Piece::RmsNorm(_) => "RMSNorm".into(),
            })
            .collect()
    }
}

/// Bytes a block or model certificate keeps beside its chain (`StackWeights::chain_bytes`) with
/// its attention on the (resolved) state `attention`: every attention step's Lemma S centre
/// (`bounds::ball::rows_bytes`: 4 H n^2 stored on the dense state, linear in n streamed, with
/// one radius's read), the sums of the other radii one step's read keeps at once (the
/// certificate reads one step at a time, at the 8 radii of [`StackCentre::at`]), one more
/// sublayer state for the pre-norm Lemma P runs, and the ball ascent's chain at the point it
/// evaluates with its 16 n x d search matrices. None: beyond u64.
pub fn certificate_bytes(
    weights: &StackWeights,
    n: usize,
    attention: AttentionMemory,
) -> Option<u64> {
    let streaming = attention == AttentionMemory::Streaming;
    let mut parts = vec![
        weights.chain_bytes(n, false, attention),
        crate::budget::bytes_of(&[16, n, weights.d], 8),
    ];
    let max = |a: Option<u64>, b: Option<u64>| match (a, b) {
        (Some(a), Some(b)) => Some(a.max(b)),
        _ => None,
    };
    let (mut largest_state, mut largest_read) = (Some(0u64), Some(0u64));
    for b in &weights.blocks {
        let (heads, width, state) = match b {
            BlockWeights::Plain(l) => {
                let a = &l.attention;
                (a.heads, a.dk.max(a.dv), attention.state_bytes(a, n))
            }
            BlockWeights::Rotary(r) => {
                let a = &r.attention;
                (a.heads, a.head_dim, attention.state_bytes(a, n))
            }
        };
        let centre = rows_bytes(heads, width, n, streaming, 1);
        let read = rows_bytes(heads, width, n, streaming, OUTPUT_CHANGE_POINTS);
        parts.push(centre);
        largest_read = max(largest_read, read.zip(centre).map(|(r, c)| r - c));
        largest_state = max(largest_state, state);
    }
    parts.push(largest_read);
    parts.push(largest_state);
    crate::budget::total(&parts)
}

/// x + branch(x) where the branch satisfies `branch`: ||J|| <= 1 + M, or the step's own centre
/// bound grown by its slope (`around`).
fn residual(branch: PieceBound, around: impl Fn(f64) -> f64) -> PieceBound {
    PieceBound {
        sup: add_up(1.0, branch.sup).min(around(branch.slope)),
        slope: branch.slope,
        token_gain: add_up(1.0, branch.token_gain),
    }
}

/// Lemma P on any linearised map (object-safe, so that slices and sublayers share one closure).
trait UpperMap {
    fn upper(&self, steps: usize, delta: f64, seed: u64) -> Result<CentreUpper>;
}

impl<L: crate::derivatives::LinearizedMap<f64>> UpperMap for L {
    fn upper(&self, steps: usize, delta: f64, seed: u64) -> Result<CentreUpper> {
        centre_upper(self, steps, delta, seed)
    }
}

/// Whether a pooled output is a unit vector (cosine floors translate to distances exactly).
pub fn normalised(pool: Pool) -> bool {
    pool == Pool::MeanNormalised
}

#[cfg(test)]
mod tests {
    use super::{intervals_all, intervals_between};

    #[test]
    fn intervals_cover_prefixes_suffixes_blocks_and_runs_across_blocks() {
        // MiniLM's whole model, pooled and normalised: the embeddings' LayerNorm, six blocks of
        // four steps, mean pooling, normalisation.
        let (k, bounds) = (27, [0, 1, 5, 9, 13, 17, 21, 25, 27]);
        let got = intervals_between(k, &bounds);
        let mut sorted = got.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), got.len(), "no interval twice");
        assert!(got
            .iter()
            .all(|&(a, b)| a + 2 <= b && b <= k && (a, b) != (0, k)));
        for b in 2..k {
            assert!(got.contains(&(0, b)) && got.contains(&(k - b, k)));
        }
        // Inside block 2 (steps 9..13): every run of two steps or more.
        for (a, b) in [(9, 11), (9, 13), (10, 12), (10, 13), (11, 13)] {
            assert!(got.contains(&(a, b)), "({a}, {b})");
        }
        // Across blocks: boundary to boundary, two blocks or more.
        for (a, b) in [(1, 9), (1, 25), (5, 13), (9, 25), (17, 25)] {
            assert!(got.contains(&(a, b)), "({a}, {b})");
        }
        assert!(!got.contains(&(10, 14)) && !got.contains(&(2, 9)));
        // 25 prefixes, 25 suffixes, 36 runs inside the six blocks (the pooling's two steps are a
        // suffix), 15 across (5 + 4 + 3 + 2 + 1).
        assert_eq!(got.len(), 25 + 25 + 36 + 15);
    }

    #[test]
    fn all_intervals_are_every_run_of_two_steps_or_more_once() {
        for k in 1..30 {
            let got = intervals_all(k);
            let mut sorted = got.clone();
            sorted.sort();
            sorted.dedup();
            assert_eq!(sorted.len(), got.len(), "k = {k}: no interval twice");
            // Pairs a < b with b - a >= 2: k(k - 1) / 2, less the whole scope's (0, k).
            let expected = (k * k.saturating_sub(1) / 2).saturating_sub(1);
            assert_eq!(got.len(), expected, "k = {k}");
            for a in 0..k {
                for b in a + 2..=k {
                    assert_eq!(
                        got.contains(&(a, b)),
                        (a, b) != (0, k),
                        "k = {k}: ({a}, {b})"
                    );
                }
            }
        }
        // MiniLM's whole model, pooled: 350 runs of steps against the 101 of `blocks`, which
        // they contain.
        let (k, bounds) = (27, [0, 1, 5, 9, 13, 17, 21, 25, 27]);
        let all = intervals_all(k);
        assert_eq!(all.len(), 350);
        assert!(intervals_between(k, &bounds)
            .iter()
            .all(|ab| all.contains(ab)));
    }
}
