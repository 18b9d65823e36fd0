//! Lanczos with a capped Krylov basis (`LocalRequest::max_basis`, `local --max-basis K`,
//! `estimation::lanczos_restarted`): the restarted run gives the uncapped run's local constant
//! to 1e-9 relative on the dense and the streaming state, stores at most K vectors (it runs under
//! a budget that refuses the uncapped basis), and bad caps are named.

use lipattn::dynamics::synthetic::{random_layer, random_tokens};
use lipattn::ops::local::{
    self, AttentionMemory, LocalDtype, LocalInputs, LocalMethod, LocalRequest,
};
use lipattn::{Kernel, LayerSource};

#[test]
fn capped_basis_equals_uncapped_and_fits_where_uncapped_does_not() {
    let source = LayerSource::new("random layer", false, Kernel::Dot);
    let layer = random_layer(16, 2, Kernel::Dot, 0.2, 11).expect("layer");
    let x = random_tokens(400, 16, 1.0, 12);
    let run = |req: &LocalRequest| {
        local::run(
            req,
            LocalInputs {
                layer: &layer,
                x: x.as_ref(),
                weights: None,
                causal: Some(false),
                source: &source,
            },
            &mut lipattn::ops::silent,
        )
    };
    let req = |attention, max_basis| LocalRequest {
        tol: 1e-12,
        max_iter: Some(2000),
        attention,
        max_basis,
        ..Default::default()
    };
    let full = run(&req(AttentionMemory::Dense, None)).expect("uncapped");
    assert!(full.converged);
    for attention in [AttentionMemory::Dense, AttentionMemory::Streaming] {
        for k in [4, 10] {
            let capped = run(&req(attention, Some(k))).expect("capped");
            assert!(capped.converged, "k = {k}");
            let rel = (capped.sigma - full.sigma).abs() / full.sigma;
            assert!(
                rel <= 1e-9,
                "{attention:?} k = {k}: {} vs {} ({rel:e})",
                capped.sigma,
                full.sigma
            );
            assert!(capped.iterations >= full.iterations.min(k));
        }
    }

    // Each budget check compares one need with the budget: the streaming state's (about 1 MB)
    // and the basis's, k pairs of a 400 x 16 vector and its image after k steps. A budget above
    // the state and 4 pairs but below the uncapped run's basis refuses the uncapped run only.
    let pair = 2 * 400 * 16 * 8;
    let state = lipattn::derivatives::streaming::memory_estimate(
        &layer,
        400,
        lipattn::derivatives::streaming::DEFAULT_BLOCK,
    )
    .expect("fits u64");
    let budget = state.max(4 * pair) + pair;
    assert!(
        (full.iterations as u64) * pair > budget,
        "{} iterations",
        full.iterations
    );
    lipattn::budget::set_max_memory(Some(budget));
    let uncapped = run(&req(AttentionMemory::Streaming, None));
    let capped = run(&req(AttentionMemory::Streaming, Some(4)));
    lipattn::budget::set_max_memory(None);
    let e = uncapped.err().expect("the uncapped basis must be refused");
    assert!(
        e.to_string().contains("the Lanczos basis and images"),
        "{e}"
    );
    let capped = capped.expect("the capped basis fits");
    assert!((capped.sigma - full.sigma).abs() <= 1e-9 * full.sigma);

    for (bad, what) in [
        (
            LocalRequest {
                max_basis: Some(1),
                ..req(AttentionMemory::Dense, None)
            },
            "max_basis",
        ),
        (
            LocalRequest {
                method: LocalMethod::Power,
                ..req(AttentionMemory::Dense, Some(4))
            },
            "`max_basis` caps the basis of f64 Lanczos",
        ),
        (
            LocalRequest {
                dtype: LocalDtype::F32,
                ..req(AttentionMemory::Dense, Some(4))
            },
            "`max_basis` caps the basis of f64 Lanczos",
        ),
    ] {
        let e = run(&bad).err().expect("refused").to_string();
        assert!(e.contains(what), "{e}");
    }
}
