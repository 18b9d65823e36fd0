//! `local` on the streaming attention state (docs/streaming.md): `attention: streaming` gives the
//! dense path's local constant (f64 and the refined f32 run), and `auto` falls back to streaming
//! exactly when the memory budget refuses the dense n x n probabilities, saying so in the report.
//! One test in its own binary: it sets the process-wide memory budget.

use lipattn::dynamics::synthetic::{random_layer, random_tokens};
use lipattn::ops::local::{self, AttentionMemory, LocalDtype, LocalInputs, LocalRequest};
use lipattn::{Kernel, LayerSource};

#[test]
fn streaming_local_constant_equals_dense_and_auto_falls_back_under_the_budget() {
    let source = LayerSource::new("random layer", false, Kernel::Dot);
    let run = |layer: &lipattn::AttentionLayer<f64>, x: &lipattn::Mat<f64>, req: &LocalRequest| {
        local::run(
            req,
            LocalInputs {
                layer,
                x: x.as_ref(),
                weights: None,
                causal: Some(true),
                source: &source,
            },
            &mut lipattn::ops::silent,
        )
        .expect("local")
    };
    for (kernel, dtype) in [
        (Kernel::Dot, LocalDtype::F64),
        (Kernel::L2, LocalDtype::F64),
        (Kernel::Dot, LocalDtype::F32),
    ] {
        let layer = random_layer(16, 2, kernel, 0.2, 3).expect("layer");
        let x = random_tokens(150, 16, 1.0, 4);
        let req = |attention| LocalRequest {
            tol: 1e-10,
            dtype,
            attention,
            ..Default::default()
        };
        let dense = run(&layer, &x, &req(AttentionMemory::Dense));
        let streaming = run(&layer, &x, &req(AttentionMemory::Streaming));
        assert_eq!(dense.attention, AttentionMemory::Dense);
        assert_eq!(streaming.attention, AttentionMemory::Streaming);
        let tol = if dtype == LocalDtype::F32 { 1e-6 } else { 1e-9 };
        assert!(
            (dense.sigma - streaming.sigma).abs() <= tol * dense.sigma,
            "{kernel:?} {dtype:?}: dense {} streaming {}",
            dense.sigma,
            streaming.sigma
        );
        // Auto: dense while it fits.
        assert_eq!(
            run(&layer, &x, &req(AttentionMemory::Auto)).attention,
            AttentionMemory::Dense
        );
    }
    // n = 3000: the dense state (2 heads x 3000^2 probabilities, twice) needs about 290 MB; a
    // 64 MB budget refuses it before allocating, and auto streams (a few MB).
    let layer = random_layer(16, 2, Kernel::Dot, 0.0, 5).expect("layer");
    let x = random_tokens(3000, 16, 1.0, 6);
    lipattn::budget::set_max_memory(Some(64 << 20));
    let req = |attention| LocalRequest {
        tol: 1e-8,
        attention,
        ..Default::default()
    };
    let dense = local::run(
        &req(AttentionMemory::Dense),
        LocalInputs {
            layer: &layer,
            x: x.as_ref(),
            weights: None,
            causal: Some(false),
            source: &source,
        },
        &mut lipattn::ops::silent,
    );
    assert!(
        matches!(dense, Err(lipattn::Error::Budget { .. })),
        "the dense state must be refused under 64 MB"
    );
    let auto = run(&layer, &x, &req(AttentionMemory::Auto));
    assert_eq!(auto.attention, AttentionMemory::Streaming);
    lipattn::budget::set_max_memory(None);
    let reference = run(&layer, &x, &req(AttentionMemory::Dense));
    assert!((auto.sigma - reference.sigma).abs() <= 1e-7 * reference.sigma);
}
