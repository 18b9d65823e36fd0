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
    let x = random_tokens(1200, 16, 1.0, 12);
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

    // Each budget check compares one need with the budget: the streaming state's (about 17
    // basis vectors here) and the basis's, k vectors of 1200 x 16 after k steps. At a tolerance
    // of 1e-30 the uncapped run goes on until sigma stops moving in f64 (more than 20 steps):
    // a budget above the state and 4 vectors but below that basis refuses the uncapped run
    // only, and the capped one still ends at the converged sigma.
    let vector = 1200 * 16 * 8;
    let state = lipattn::derivatives::streaming::memory_estimate(
        &layer,
        1200,
        lipattn::derivatives::streaming::DEFAULT_BLOCK,
    )
    .expect("fits u64");
    let budget = state.max(4 * vector) + vector;
    let long = |max_basis| LocalRequest {
        tol: 1e-30,
        max_iter: Some(60),
        ..req(AttentionMemory::Streaming, max_basis)
    };
    lipattn::budget::set_max_memory(Some(budget));
    let uncapped = run(&long(None));
    let capped = run(&long(Some(4)));
    lipattn::budget::set_max_memory(None);
    let e = match uncapped {
        Ok(r) => panic!(
            "the uncapped basis must be refused: {} iterations, converged {}",
            r.iterations, r.converged
        ),
        Err(e) => e,
    };
    assert!(e.to_string().contains("the Lanczos basis after"), "{e}");
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
