//! The certificate's arguments `certify` and `robustness` share: the ball, Lemma P at the centre,
//! the chain's intervals and the attention state. Their defaults are `CertifyRequest`'s, which
//! `RobustnessRequest` takes over.

use crate::names::named;
use clap::Args;
use lipattn::bounds::ball::BallKind;
use lipattn::derivatives::AttentionMemory;
use lipattn::ops::certify::CertifyRequest;
use lipattn::ops::stack_ball::Intervals;

#[derive(Args)]
pub struct CertificateArgs {
    /// frobenius (||Y - X||_F <= eps) or tokens (every ||y_i - x_i|| <= eps).
    #[arg(long, value_parser = named::<BallKind>(), default_value_t = CertifyRequest::default().ball)]
    pub ball: BallKind,
    /// The certificate (and a radius certified with it) holds except with at most this
    /// probability (Lemma P at the centre).
    #[arg(long, default_value_t = CertifyRequest::default().failure_probability)]
    pub failure_probability: f64,
    /// Lanczos steps of the bound on the whole map at the centre.
    #[arg(long, default_value_t = CertifyRequest::default().upper_steps)]
    pub upper_steps: usize,
    /// Scopes other than attention: Lanczos steps of the bounds on the chain's steps and runs of
    /// steps at the centre.
    #[arg(long, default_value_t = CertifyRequest::default().interval_steps)]
    pub interval_steps: usize,
    /// Scopes block and model: the runs of steps bounded at the centre. blocks: prefixes,
    /// suffixes, runs inside a block and from one block boundary to another (about 4 runs a step).
    /// all: every run of two steps or more, far tighter at larger radii but k(k-1)/2 runs for k
    /// steps, time growing like the cube of the depth (MiniLM's whole model: about 2.4x blocks).
    #[arg(long, value_parser = named::<Intervals>(), default_value_t = CertifyRequest::default().intervals)]
    pub intervals: Intervals,
    /// The attention state of Lemma P's Lanczos runs, Lemma S's centres and the ascent (every
    /// scope, plain and rotary): dense n x n probabilities, streaming per-row statistics (memory
    /// linear in n, docs/streaming.md#certify), or auto (dense when it fits --max-memory).
    #[arg(long, value_parser = named::<AttentionMemory>(), default_value_t = CertifyRequest::default().attention)]
    pub attention: AttentionMemory,
}
