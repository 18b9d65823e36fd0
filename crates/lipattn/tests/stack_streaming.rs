//! Blocks and whole models on the streaming attention state (docs/streaming.md#blocks-and-models):
//! on small random BERT-like (post-norm), GPT-2-like (pre-norm, causal) and rotary (GQA, sliding
//! window) stacks, the chain linearised on the streaming state equals the dense one (JVP, VJP,
//! the local constant of `local --scope block|model`) and so does the Lemma C certificate of
//! `certify --scope block|model`; under a small memory budget the dense chain is refused before
//! anything is allocated and `auto` streams. The tests share one lock: some set the process-wide
//! memory budget.

mod common;

use common::rotary::{build, RotarySpec};
use lipattn::attention::{AttentionLayer, Kernel, RmsNorm, RopeScaling};
use lipattn::bounds::ball::BallKind;
use lipattn::derivatives::{AttentionMemory, LinearizedMap};
use lipattn::dynamics::synthetic::{random_layer, random_tokens};
use lipattn::linalg::SplitMix;
use lipattn::models::{
    Activation, BlockWeights, FeedForward, FinalNorm, GatedFeedForward, LayerNormParams,
    ModelLayer, NormPlacement, Pool, RotaryBlock, Scope, StackWeights,
};
use lipattn::ops::certify::{run_stack, CertifyReport, CertifyRequest};
use lipattn::ops::local::LocalRequest;
use lipattn::ops::scope_local::{run_scope, ScopeRequest};
use lipattn::Mat;
use std::sync::Mutex;

static BUDGET: Mutex<()> = Mutex::new(());

const D: usize = 12;
const FFN: usize = 20;

fn gauss(r: &mut SplitMix, rows: usize, cols: usize, scale: f64) -> Mat<f64> {
    Mat::from_fn(rows, cols, |_, _| scale * r.gauss())
}

fn gauss_vec(r: &mut SplitMix, len: usize, centre: f64, scale: f64) -> Vec<f64> {
    (0..len).map(|_| centre + scale * r.gauss()).collect()
}

fn layer_norm(r: &mut SplitMix) -> LayerNormParams {
    LayerNormParams {
        gamma: gauss_vec(r, D, 1.0, 0.1),
        beta: gauss_vec(r, D, 0.0, 0.1),
        eps: 1e-5,
    }
}

fn rms_norm(r: &mut SplitMix) -> RmsNorm {
    RmsNorm {
        weight: gauss_vec(r, D, 1.0, 0.1),
        eps: 1e-6,
        unit_offset: false,
    }
}

/// A BERT-like (post-norm, bidirectional) or GPT-2-like (pre-norm, causal) block.
fn plain_block(index: usize, placement: NormPlacement, seed: u64) -> BlockWeights {
    let mut r = SplitMix::new(seed);
    let attention: AttentionLayer<f64> =
        random_layer(D, 3, Kernel::Dot, 0.1, seed + 1).expect("layer");
    let s = 1.0 / (D as f64).sqrt();
    BlockWeights::Plain(Box::new(ModelLayer {
        index,
        placement,
        attention,
        causal: placement == NormPlacement::Pre,
        attention_input_norm: layer_norm(&mut r),
        attention_norm: layer_norm(&mut r),
        feed_forward_norm: layer_norm(&mut r),
        feed_forward: FeedForward {
            w_in: gauss(&mut r, FFN, D, s),
            b_in: gauss_vec(&mut r, FFN, 0.0, 0.1),
            w_out: gauss(&mut r, D, FFN, 1.0 / (FFN as f64).sqrt()),
            b_out: gauss_vec(&mut r, D, 0.0, 0.1),
            activation: Activation::GeluErf,
        },
    }))
}

/// A Llama-like block with grouped queries (4 heads, 2 kv heads) and a sliding window;
/// `output_norms`: Gemma 2's norms after the attention and the feed-forward network.
fn rotary_block(
    index: usize,
    window: Option<usize>,
    output_norms: bool,
    seed: u64,
) -> BlockWeights {
    let spec = RotarySpec {
        heads: 4,
        kv_heads: 2,
        head_dim: 4,
        rotary_dim: 4,
        d: D,
        d_out: D,
        qk_scale: 0.4,
        v_scale: 0.4,
        o_scale: 0.3,
        bias: 0.05,
        qk_norm: None,
        softcap: None,
        window,
        theta: 1000.0,
        max_position_embeddings: 4096,
        scaling: RopeScaling::Default,
        score_divisor_sq: 4,
    };
    let mut r = SplitMix::new(seed);
    let s = 1.0 / (D as f64).sqrt();
    BlockWeights::Rotary(Box::new(RotaryBlock {
        index,
        attention_norm: rms_norm(&mut r),
        attention: build(&spec, seed + 1),
        attention_output_norm: output_norms.then(|| rms_norm(&mut r)),
        feed_forward_norm: rms_norm(&mut r),
        feed_forward: GatedFeedForward {
            gate: gauss(&mut r, FFN, D, s),
            b_gate: vec![0.0; FFN],
            up: gauss(&mut r, FFN, D, s),
            b_up: vec![0.0; FFN],
            down: gauss(&mut r, D, FFN, 1.0 / (FFN as f64).sqrt()),
            b_down: vec![0.0; D],
            activation: Activation::Silu,
        },
        feed_forward_output_norm: output_norms.then(|| rms_norm(&mut r)),
    }))
}

#[derive(Clone, Copy, Debug)]
enum Kind {
    Bert,
    Gpt2,
    Rotary,
    Gemma2,
}

/// `scope` (one block, or two blocks from the input with the final norm and `pool`) of `kind`.
fn stack(kind: Kind, scope: Scope, pool: Pool, seed: u64) -> StackWeights {
    let mut r = SplitMix::new(seed + 100);
    let block = |i: usize| match kind {
        Kind::Bert => plain_block(i, NormPlacement::Post, seed + 10 * i as u64),
        Kind::Gpt2 => plain_block(i, NormPlacement::Pre, seed + 10 * i as u64),
        Kind::Rotary => rotary_block(i, Some(37), false, seed + 10 * i as u64),
        Kind::Gemma2 => rotary_block(i, None, true, seed + 10 * i as u64),
    };
    let whole = scope == Scope::Model;
    let blocks = if whole {
        vec![block(0), block(1)]
    } else {
        vec![block(0)]
    };
    let (input_norm, final_norm) = match (whole, kind) {
        (false, _) => (None, None),
        (true, Kind::Bert) => (Some(layer_norm(&mut r)), None),
        (true, Kind::Gpt2) => (None, Some(FinalNorm::Layer(layer_norm(&mut r)))),
        (true, _) => (None, Some(FinalNorm::Rms(rms_norm(&mut r)))),
    };
    StackWeights {
        scope,
        first_layer: 0,
        input_norm,
        blocks,
        half: scope == Scope::SublayerResidualNorm,
        final_norm,
        pool,
        d: D,
    }
}

fn rel(a: f64, b: f64) -> f64 {
    (a - b).abs() / a.abs().max(b.abs()).max(f64::MIN_POSITIVE)
}

fn mat_rel(a: &Mat<f64>, b: &Mat<f64>) -> f64 {
    let diff = a - b;
    lipattn::linalg::frobenius(diff.as_ref()) / lipattn::linalg::frobenius(a.as_ref())
}

const CASES: [(Kind, Scope, Pool); 10] = [
    (Kind::Bert, Scope::Block, Pool::None),
    (Kind::Bert, Scope::SublayerResidualNorm, Pool::None),
    (Kind::Bert, Scope::Model, Pool::MeanNormalised),
    (Kind::Gpt2, Scope::Block, Pool::None),
    (Kind::Gpt2, Scope::Model, Pool::None),
    (Kind::Rotary, Scope::Block, Pool::None),
    (Kind::Rotary, Scope::Model, Pool::Mean),
    (Kind::Gemma2, Scope::Block, Pool::None),
    (Kind::Rotary, Scope::Attention, Pool::None),
    (Kind::Bert, Scope::Attention, Pool::None),
];

/// JVP, VJP and the output of the chain agree on both states to 1e-12 relative, and
/// `local --scope` (Lanczos to 1e-12) gives the same local constant, at n spanning several
/// tiles (128 tokens a tile).
#[test]
fn chain_and_local_constant_stream_like_dense() {
    let _g = BUDGET.lock().unwrap_or_else(|e| e.into_inner());
    for (c, &(kind, scope, pool)) in CASES.iter().enumerate() {
        let w = stack(kind, scope, pool, 11 + c as u64);
        for n in [5, 130, 300] {
            let x = random_tokens(n, D, 1.0, 3 + n as u64);
            let (yd, ld) = w
                .linearize_with(x.as_ref(), AttentionMemory::Dense)
                .unwrap();
            let (ys, ls) = w
                .linearize_with(x.as_ref(), AttentionMemory::Streaming)
                .unwrap();
            assert_eq!(ld.attention, AttentionMemory::Dense);
            assert_eq!(ls.attention, AttentionMemory::Streaming);
            let what = format!("{kind:?} {scope:?} {pool:?} n = {n}");
            assert!(
                mat_rel(&yd, &ys) < 1e-13,
                "{what}: output {}",
                mat_rel(&yd, &ys)
            );
            let t = random_tokens(n, D, 1.0, 99);
            let (jd, js) = (ld.jvp(t.as_ref()).unwrap(), ls.jvp(t.as_ref()).unwrap());
            assert!(
                mat_rel(&jd, &js) < 1e-12,
                "{what}: jvp {}",
                mat_rel(&jd, &js)
            );
            let y = random_tokens(yd.nrows(), D, 1.0, 98);
            let (vd, vs) = (ld.vjp(y.as_ref()).unwrap(), ls.vjp(y.as_ref()).unwrap());
            assert!(
                mat_rel(&vd, &vs) < 1e-12,
                "{what}: vjp {}",
                mat_rel(&vd, &vs)
            );
            if n == 5 {
                continue;
            }
            let scope_req = ScopeRequest {
                scope,
                pool,
                ..Default::default()
            };
            let local = |attention| {
                let req = LocalRequest {
                    tol: 1e-12,
                    attention,
                    ..Default::default()
                };
                run_scope(
                    &req,
                    &scope_req,
                    &w,
                    "random",
                    x.as_ref(),
                    &mut lipattn::ops::silent,
                )
                .unwrap()
            };
            let (d, s, a) = (
                local(AttentionMemory::Dense),
                local(AttentionMemory::Streaming),
                local(AttentionMemory::Auto),
            );
            assert_eq!(
                (d.attention, s.attention, a.attention),
                (
                    AttentionMemory::Dense,
                    AttentionMemory::Streaming,
                    AttentionMemory::Dense
                )
            );
            assert!(
                rel(d.sigma, s.sigma) < 1e-12,
                "{what}: {} vs {}",
                d.sigma,
                s.sigma
            );
            assert_eq!(d.sigma, a.sigma, "{what}");
        }
    }
}

fn certify(
    w: &StackWeights,
    x: &Mat<f64>,
    ball: BallKind,
    attention: AttentionMemory,
) -> lipattn::Result<CertifyReport> {
    let req = CertifyRequest {
        scope: w.scope,
        pool: w.pool,
        epsilon: 1e-3,
        ball,
        upper_steps: 30,
        interval_steps: 10,
        attack_starts: 1,
        attack_steps: 2,
        tol: 1e-8,
        attention,
        ..Default::default()
    };
    run_stack(&req, w, "random", x.as_ref(), &mut lipattn::ops::silent)
}

/// The Lemma C certificate of blocks and models on the streaming state equals the dense one:
/// certified value, Lemma P at the centre, output change, every step's bounds and the ascent.
#[test]
fn chain_certificate_streams_like_dense() {
    let _g = BUDGET.lock().unwrap_or_else(|e| e.into_inner());
    for (c, &(kind, scope, pool)) in CASES.iter().enumerate() {
        if scope == Scope::Attention {
            continue;
        }
        let w = stack(kind, scope, pool, 21 + c as u64);
        let n = if scope == Scope::Model { 70 } else { 140 };
        let x = random_tokens(n, D, 1.0, 5 + c as u64);
        let ball = if c % 2 == 0 {
            BallKind::Frobenius
        } else {
            BallKind::Tokens
        };
        let d = certify(&w, &x, ball, AttentionMemory::Dense).unwrap();
        let s = certify(&w, &x, ball, AttentionMemory::Streaming).unwrap();
        let a = certify(&w, &x, ball, AttentionMemory::Auto).unwrap();
        let what = format!("{kind:?} {scope:?} {pool:?}");
        assert_eq!(
            (d.attention, s.attention, a.attention),
            (
                AttentionMemory::Dense,
                AttentionMemory::Streaming,
                AttentionMemory::Dense
            ),
            "{what}"
        );
        let mut worst = 0.0f64;
        for (name, p, q) in [
            ("certified", d.certified, s.certified),
            ("centre", d.centre.value, s.centre.value),
            ("output change", d.output_change, s.output_change),
            ("attained", d.attained, s.attained),
        ] {
            assert!(rel(p, q) < 1e-10, "{what}: {name} {p} vs {q}");
            worst = worst.max(rel(p, q));
        }
        let (cd, cs) = (d.chain.as_ref().unwrap(), s.chain.as_ref().unwrap());
        for (a, b) in cd.steps.iter().zip(&cs.steps) {
            assert_eq!(a.step, b.step);
            for (p, q) in [(a.centre, b.centre), (a.sup, b.sup), (a.slope, b.slope)] {
                assert!(rel(p, q) < 1e-10, "{what}: step {} {p} vs {q}", a.step);
                worst = worst.max(rel(p, q));
            }
        }
        assert_eq!(d.certified, a.certified, "{what}");
        eprintln!(
            "{what}: certified {} (worst rel. difference {worst:.1e})",
            d.certified
        );
    }
}

/// Under a budget the dense chain does not fit, `dense` is refused before anything is allocated
/// (naming the dense attention state), `auto` streams and equals the unbudgeted dense run, for
/// `local` and `certify` at block and model scope, plain and rotary.
#[test]
fn auto_streams_where_the_dense_chain_is_refused() {
    let _g = BUDGET.lock().unwrap_or_else(|e| e.into_inner());
    let n = 1_500;
    for (kind, scope, pool) in [
        (Kind::Bert, Scope::Block, Pool::None),
        // No window: the dense rotary state keeps the whole causal triangle.
        (Kind::Gemma2, Scope::Model, Pool::None),
    ] {
        let w = stack(kind, scope, pool, 31);
        let x = random_tokens(n, D, 1.0, 8);
        let scope_req = ScopeRequest {
            scope,
            pool,
            ..Default::default()
        };
        let local = |attention| {
            let req = LocalRequest {
                tol: 1e-10,
                attention,
                ..Default::default()
            };
            run_scope(
                &req,
                &scope_req,
                &w,
                "random",
                x.as_ref(),
                &mut lipattn::ops::silent,
            )
        };
        let unbudgeted = local(AttentionMemory::Dense).unwrap();
        lipattn::budget::set_max_memory(Some(40 << 20));
        let dense = local(AttentionMemory::Dense);
        let auto = local(AttentionMemory::Auto);
        lipattn::budget::set_max_memory(None);
        let err = dense.err().expect("dense refused").to_string();
        assert!(
            err.contains("dense attention state") && err.contains("budget"),
            "{err}"
        );
        let auto = auto.expect("auto streams");
        assert_eq!(auto.attention, AttentionMemory::Streaming);
        assert!(
            rel(auto.sigma, unbudgeted.sigma) < 1e-9,
            "{} vs {}",
            auto.sigma,
            unbudgeted.sigma
        );
    }
    // The certificate: a plain block at n = 1,000 under 60 MB.
    let n = 1_000;
    let w = stack(Kind::Bert, Scope::Block, Pool::None, 41);
    let x = random_tokens(n, D, 1.0, 9);
    let unbudgeted = certify(&w, &x, BallKind::Frobenius, AttentionMemory::Dense).unwrap();
    lipattn::budget::set_max_memory(Some(60 << 20));
    let dense = certify(&w, &x, BallKind::Frobenius, AttentionMemory::Dense);
    let auto = certify(&w, &x, BallKind::Frobenius, AttentionMemory::Auto);
    lipattn::budget::set_max_memory(None);
    let err = dense.err().expect("dense refused").to_string();
    assert!(
        err.contains("dense attention state") && err.contains("budget"),
        "{err}"
    );
    let auto = auto.expect("auto streams");
    assert_eq!(auto.attention, AttentionMemory::Streaming);
    assert!(
        rel(auto.certified, unbudgeted.certified) < 1e-9,
        "{} vs {}",
        auto.certified,
        unbudgeted.certified
    );
}
