//! `certify` on the streaming attention state (docs/streaming.md#certify): on plain sublayers the
//! streaming certificate (Lemma P's Lanczos and the ball ascent through
//! `StreamingLinearization`, Lemma S's centre recomputed row by row) equals the dense one, and
//! `auto` streams exactly when the memory budget refuses the dense n x n state. The tests share
//! one lock: one of them sets the process-wide memory budget.

use lipattn::bounds::ball::{attention_ball_slope, attention_ball_slope_streaming, BallKind};
use lipattn::derivatives::AttentionMemory;
use lipattn::dynamics::synthetic::{random_layer, random_tokens};
use lipattn::models::SublayerWeights;
use lipattn::ops::certify::{self, CertifyReport, CertifyRequest};
use lipattn::{AttentionLayer, Kernel, LayerSource, Mat};
use std::sync::Mutex;

mod common;
use common::rotary::{build, RotarySpec};

static BUDGET: Mutex<()> = Mutex::new(());

fn certify(
    layer: &AttentionLayer<f64>,
    x: &Mat<f64>,
    causal: bool,
    req: &CertifyRequest,
) -> lipattn::Result<CertifyReport> {
    let source = LayerSource::new("random layer", causal, Kernel::Dot);
    let weights = SublayerWeights::Plain(Box::new(layer.clone()));
    certify::run(
        req,
        &weights,
        &source,
        "random",
        0,
        x.as_ref(),
        &mut lipattn::ops::silent,
    )
}

fn close(a: f64, b: f64, rel: f64) -> bool {
    (a - b).abs() <= rel * a.abs().max(b.abs())
}

fn assert_same(dense: &CertifyReport, streaming: &CertifyReport, rel: f64, what: &str) {
    let slope = |r: &CertifyReport| r.slope.as_ref().expect("attention scope").value;
    let mut worst = 0.0f64;
    for (name, a, b) in [
        ("certified", dense.certified, streaming.certified),
        ("slope", slope(dense), slope(streaming)),
        ("centre upper", dense.centre.value, streaming.centre.value),
        ("attained", dense.attained, streaming.attained),
        (
            "centre attained",
            dense.centre_attained,
            streaming.centre_attained,
        ),
        (
            "output change",
            dense.output_change,
            streaming.output_change,
        ),
    ] {
        assert!(close(a, b, rel), "{what}: {name} dense {a} streaming {b}");
        worst = worst.max((a - b).abs() / a.abs().max(b.abs()));
    }
    println!("{what}: largest relative difference dense/streaming {worst:e}");
}

/// Lemma S's centre recomputed row by row is the stored rows' bound bit for bit (the same
/// function computes every row in both).
#[test]
fn streaming_slope_equals_stored_rows_exactly() {
    let _lock = BUDGET.lock().unwrap_or_else(|e| e.into_inner());
    for seed in 0..6u64 {
        let layer = random_layer(16, 4, Kernel::Dot, 0.3, seed).expect("layer");
        let n = 40 + 37 * seed as usize;
        let x = random_tokens(n, 16, [0.5, 2.0, 4.0][seed as usize % 3], 100 + seed);
        for eps in [1e-3, 0.1] {
            let causal = seed % 2 == 1;
            let a = attention_ball_slope(&layer, x.as_ref(), causal, eps).expect("dense");
            let b =
                attention_ball_slope_streaming(&layer, x.as_ref(), causal, eps).expect("streaming");
            assert_eq!(
                a.value.to_bits(),
                b.value.to_bits(),
                "seed {seed} eps {eps}"
            );
            for (ha, hb) in a.heads.iter().zip(&b.heads) {
                assert_eq!(ha.contribution.to_bits(), hb.contribution.to_bits());
                assert_eq!(
                    ha.directional.map(f64::to_bits),
                    hb.directional.map(f64::to_bits)
                );
                assert_eq!(ha.column_sum.to_bits(), hb.column_sum.to_bits());
            }
        }
    }
}

/// Random plain layers, causal and not, n from 50 to 300 (tiles of 128 that do not divide n):
/// the streaming certificate's certified value, slope, centre bound and attained values equal
/// the dense run's to 1e-9 relative, with the same seeds.
#[test]
fn streaming_certificate_equals_dense() {
    let _lock = BUDGET.lock().unwrap_or_else(|e| e.into_inner());
    for (case, &n) in [50usize, 131, 200, 300].iter().enumerate() {
        let case = case as u64;
        let causal = case % 2 == 1;
        let layer = random_layer(16, 2, Kernel::Dot, 0.2, 40 + case).expect("layer");
        let x = random_tokens(n, 16, [1.0, 3.0][case as usize % 2], 50 + case);
        let req = |attention| CertifyRequest {
            epsilon: [1e-3, 1e-2][case as usize % 2],
            ball: if case == 2 {
                BallKind::Tokens
            } else {
                BallKind::Frobenius
            },
            upper_steps: 60,
            attack_starts: 1,
            attack_steps: 4,
            tol: 1e-10,
            seed: case,
            attention,
            ..Default::default()
        };
        let dense = certify(&layer, &x, causal, &req(AttentionMemory::Dense)).expect("dense");
        let streaming =
            certify(&layer, &x, causal, &req(AttentionMemory::Streaming)).expect("streaming");
        assert_eq!(dense.attention, AttentionMemory::Dense);
        assert_eq!(streaming.attention, AttentionMemory::Streaming);
        assert_same(
            &dense,
            &streaming,
            1e-9,
            &format!("n = {n}, causal {causal}"),
        );
        // The slope is the same function of the same rows.
        assert_eq!(
            dense.slope.as_ref().unwrap().value.to_bits(),
            streaming.slope.as_ref().unwrap().value.to_bits()
        );
        // Auto: dense while it fits.
        let auto = certify(&layer, &x, causal, &req(AttentionMemory::Auto)).expect("auto");
        assert_eq!(auto.attention, AttentionMemory::Dense);
        let json = lipattn::ops::to_json(&streaming).expect("json");
        assert_eq!(json["attention"], "streaming");
    }
}

/// n = 1,500: the dense state (2 heads x 1,500^2 probabilities, twice) needs 72 MB; under a
/// 24 MB budget it is refused before anything is allocated, `auto` streams, and the streaming
/// certificate equals the dense one computed without the budget.
#[test]
fn auto_streams_under_a_budget_that_refuses_the_dense_state() {
    let _lock = BUDGET.lock().unwrap_or_else(|e| e.into_inner());
    let layer = random_layer(16, 2, Kernel::Dot, 0.0, 5).expect("layer");
    let x = random_tokens(1500, 16, 1.0, 6);
    let req = |attention| CertifyRequest {
        epsilon: 1e-3,
        upper_steps: 30,
        attack_starts: 1,
        attack_steps: 2,
        tol: 1e-9,
        attention,
        ..Default::default()
    };
    lipattn::budget::set_max_memory(Some(24 << 20));
    let dense = certify(&layer, &x, false, &req(AttentionMemory::Dense));
    let auto = certify(&layer, &x, false, &req(AttentionMemory::Auto));
    lipattn::budget::set_max_memory(None);
    assert!(
        matches!(dense, Err(lipattn::Error::Budget { .. })),
        "the dense state must be refused under 24 MB"
    );
    let auto = auto.expect("auto under the budget");
    assert_eq!(auto.attention, AttentionMemory::Streaming);
    let reference = certify(&layer, &x, false, &req(AttentionMemory::Dense)).expect("dense");
    assert_same(&reference, &auto, 1e-9, "n = 1500 under the budget");
    // 100 MB: the dense state (72 MB) passes its own check, but the dense certificate's search
    // (4 x 2 heads x 1,500^2 f64 = 144 MB) would not: auto streams all the same.
    lipattn::budget::set_max_memory(Some(100 << 20));
    let auto = certify(&layer, &x, false, &req(AttentionMemory::Auto));
    lipattn::budget::set_max_memory(None);
    assert_eq!(auto.expect("auto").attention, AttentionMemory::Streaming);
}

/// `streaming` is accepted for every scope (the block and model scopes certify on the
/// streaming chain: tests/stack_streaming.rs).
#[test]
fn streaming_is_accepted_for_every_scope() {
    for scope in [lipattn::models::Scope::Block, lipattn::models::Scope::Model] {
        let req = CertifyRequest {
            scope,
            epsilon: 1e-3,
            attention: AttentionMemory::Streaming,
            ..Default::default()
        };
        req.check().expect("accepted");
    }
}

/// A rotary sublayer's certificate (grouped queries, with and without a sliding window) on the
/// streaming state (`StreamingRotaryLinearization`, `SlopeCentre::rotary_streaming`) equals the
/// dense one, the slope bit for bit; `auto` runs dense where it fits.
#[test]
fn rotary_sublayer_certifies_on_the_streaming_state() {
    for (window, n) in [(None, 6), (None, 140), (Some(29), 140)] {
        let spec = RotarySpec {
            heads: 2,
            kv_heads: 1,
            head_dim: 4,
            rotary_dim: 4,
            d: 6,
            d_out: 6,
            qk_scale: 0.6,
            v_scale: 0.5,
            o_scale: 0.5,
            bias: 0.0,
            qk_norm: None,
            softcap: None,
            window,
            theta: 100.0,
            max_position_embeddings: 256,
            scaling: lipattn::attention::RopeScaling::Default,
            score_divisor_sq: 4,
        };
        let weights = SublayerWeights::Rotary {
            layer: Box::new(build(&spec, 7)),
            family: "llama",
        };
        let source = LayerSource::new("random rotary layer", true, Kernel::Dot);
        let x = random_tokens(n, 6, 1.0, 8);
        let req = |attention| CertifyRequest {
            epsilon: 1e-3,
            upper_steps: 20,
            attack_starts: 1,
            attack_steps: 2,
            attention,
            ..Default::default()
        };
        let run = |attention| {
            certify::run(
                &req(attention),
                &weights,
                &source,
                "llama",
                3,
                x.as_ref(),
                &mut lipattn::ops::silent,
            )
            .expect("certificate")
        };
        let (dense, streaming, auto) = (
            run(AttentionMemory::Dense),
            run(AttentionMemory::Streaming),
            run(AttentionMemory::Auto),
        );
        assert_eq!(streaming.attention, AttentionMemory::Streaming);
        assert_eq!(auto.attention, AttentionMemory::Dense);
        assert_eq!(
            dense.slope.as_ref().unwrap().value,
            streaming.slope.as_ref().unwrap().value
        );
        assert_same(
            &dense,
            &streaming,
            1e-9,
            &format!("rotary, window {window:?}, n = {n}"),
        );
    }
}

/// One pass over the rows for several radii (`SlopeCentre::at_radii`, what a block or model
/// certificate reads at its ball and its output change's Riemann points) gives at each radius
/// exactly what a read at that radius alone gives: every head's terms bit for bit, on stored and
/// streamed rows, for random plain layers (causal and not) and rotary layers (grouped queries,
/// with and without a sliding window). Radii that repeat or are 0 are read like any other; a
/// radius that is not finite and >= 0 gets `at`'s error and leaves the others' results alone.
#[test]
fn batched_reads_equal_single_reads() {
    use lipattn::bounds::ball::{BallSlope, SlopeCentre};
    let radii = [1e-3, 0.0, 0.3, f64::NAN, 1e-3, 2.5e-5, -1.0, 0.07, 1.0];
    let same = |a: &BallSlope, b: &BallSlope, what: &str| {
        assert_eq!(a.value.to_bits(), b.value.to_bits(), "{what}");
        assert_eq!(a.token_radius.to_bits(), b.token_radius.to_bits(), "{what}");
        assert_eq!(a.heads.len(), b.heads.len());
        for (ha, hb) in a.heads.iter().zip(&b.heads) {
            let bits = |h: &lipattn::bounds::ball::HeadSlope| {
                [
                    h.key_spread,
                    h.query_norm,
                    h.value_spread,
                    h.score_slope,
                    h.slope_spread,
                    h.column_sum,
                    h.off_peak_mass,
                    h.off_peak_column_sum,
                    h.score_change,
                    h.value,
                    h.directional.unwrap_or(-1.0),
                    h.contribution,
                ]
                .map(f64::to_bits)
            };
            assert_eq!(bits(ha), bits(hb), "{what}");
        }
    };
    let check = |centres: [SlopeCentre; 2], what: &str| {
        for (c, centre) in centres.iter().enumerate() {
            let batched = centre.at_radii(&radii);
            assert_eq!(batched.len(), radii.len());
            for (k, (&r, got)) in radii.iter().zip(&batched).enumerate() {
                let what = format!("{what}, centre {c}, radius {k} ({r})");
                match (centre.at(r), got) {
                    (Ok(single), Ok(got)) => same(&single, got, &what),
                    (Err(a), Err(b)) => assert_eq!(a.to_string(), b.to_string(), "{what}"),
                    (a, b) => panic!("{what}: single {:?} batched {:?}", a.is_ok(), b.is_ok()),
                }
            }
            // The stored and the streamed rows agree bit for bit too.
            for (a, b) in batched.iter().zip(centres[1 - c].at_radii(&radii)) {
                if let (Ok(a), Ok(b)) = (a, &b) {
                    same(a, b, &format!("{what}: stored against streamed"));
                }
            }
        }
    };
    for seed in 0..4u64 {
        let layer = random_layer(12, 3, Kernel::Dot, 0.3, 40 + seed).expect("layer");
        let n = 30 + 23 * seed as usize;
        let x = random_tokens(n, 12, [0.5, 2.0, 4.0, 1.0][seed as usize], 200 + seed);
        let causal = seed % 2 == 1;
        check(
            [
                SlopeCentre::plain(&layer, x.as_ref(), causal).expect("stored"),
                SlopeCentre::plain_streaming(&layer, x.as_ref(), causal).expect("streamed"),
            ],
            &format!("plain seed {seed}, causal {causal}"),
        );
    }
    for (window, n) in [(None, 9), (None, 70), (Some(13), 70)] {
        let spec = RotarySpec {
            heads: 4,
            kv_heads: 2,
            head_dim: 4,
            rotary_dim: 4,
            d: 8,
            d_out: 8,
            qk_scale: 0.8,
            v_scale: 0.5,
            o_scale: 0.5,
            bias: 0.1,
            qk_norm: None,
            softcap: None,
            window,
            theta: 100.0,
            max_position_embeddings: 256,
            scaling: lipattn::attention::RopeScaling::Default,
            score_divisor_sq: 4,
        };
        let layer = build(&spec, 11);
        let x = random_tokens(n, 8, 1.5, 12);
        check(
            [
                SlopeCentre::rotary(&layer, x.as_ref()).expect("stored"),
                SlopeCentre::rotary_streaming(&layer, x.as_ref()).expect("streamed"),
            ],
            &format!("rotary, window {window:?}, n = {n}"),
        );
    }
}
