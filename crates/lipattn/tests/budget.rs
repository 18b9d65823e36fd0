//! The memory budget end to end: requests sized beyond it are errors naming the sizes, before
//! anything is allocated. A test binary of its own, because the budget is process-wide.

use lipattn::budget::{max_memory, set_max_memory};
use lipattn::dynamics::flow::{integrate, FlowOptions, Integrator, Projection};
use lipattn::dynamics::synthetic::{random_layer, random_tokens};
use lipattn::ops::transport::{self, TransportInputs, TransportRequest};
use lipattn::{Error, Kernel, Measure};

fn is_budget(r: Result<(), Error>, needle: &str) {
    match r {
        Err(e @ Error::Budget { .. }) => {
            let m = e.to_string();
            assert!(
                m.contains(needle) && m.contains("budget of 1.049 MB"),
                "{m}"
            );
        }
        other => panic!("expected a budget error naming {needle}, got {other:?}"),
    }
}

#[test]
fn requests_beyond_the_budget_stop_before_allocating() {
    set_max_memory(Some(1 << 20));
    assert_eq!(max_memory().unwrap().0, 1 << 20);
    // Four 400 x 400 weight matrices: 5.1 MB.
    is_budget(
        random_layer(400, 4, Kernel::Dot, 0.1, 0).map(|_| ()),
        "width d = 400",
    );
    let layer = random_layer(16, 2, Kernel::Dot, 0.1, 0).unwrap();
    // Two heads of 300 x 300 probabilities, twice: 2.9 MB.
    let x = random_tokens(300, 16, 1.0, 1);
    is_budget(
        layer.forward(x.as_ref(), None, false).map(|_| ()),
        "300 queries",
    );
    let small = random_tokens(30, 16, 1.0, 1);
    assert!(layer.forward(small.as_ref(), None, false).is_ok());
    // 6 x 200 x 200 doubles: 1.9 MB.
    let m = || Measure::uniform(random_tokens(200, 3, 1.0, 2)).unwrap();
    let r = transport::run(
        &TransportRequest::default(),
        TransportInputs {
            source: m(),
            target: m(),
            cost: None,
        },
        &mut lipattn::ops::silent,
    );
    is_budget(r.map(|_| ()), "between 200 and 200 atoms");
    // 2e4 records of a 30 x 16 state: 77 MB.
    let opts = FlowOptions {
        projection: Projection::None,
        integrator: Integrator::Rk4 { dt: 0.1 },
        t_end: 1e4,
        record_every: 0.5,
        max_steps: 10_000_000,
    };
    is_budget(
        integrate(&layer, small.as_ref(), None, &opts).map(|_| ()),
        "final time / record interval",
    );
    // Beyond 64 bits: named as such, not wrapped around.
    let e = lipattn::budget::check(
        || "huge".into(),
        lipattn::budget::bytes_of(&[usize::MAX, 2], 8),
    )
    .unwrap_err();
    assert!(e.to_string().contains("more than 18 EB"), "{e}");
    // Rotary attention: at least one head's probabilities on the causal band of 500 tokens
    // (140688 entries in blocks of 64 queries), 1.1 MB (all heads' for the derivatives and the
    // cached linearisation).
    let w = |rows: usize| lipattn::Mat::from_fn(rows, 16, |i, j| ((i * 7 + j) % 5) as f64 * 0.1);
    let rotary = lipattn::attention::RotaryAttention::new(
        2,
        1,
        4,
        w(8),
        vec![0.0; 8],
        w(4),
        vec![0.0; 4],
        w(4),
        vec![0.0; 4],
        lipattn::Mat::from_fn(16, 8, |i, j| ((i + j) % 3) as f64 * 0.1),
        vec![0.0; 16],
        4,
        lipattn::attention::Rope {
            theta: 1e4,
            rotary_dim: 4,
            max_position_embeddings: 64,
            scaling: lipattn::attention::RopeScaling::Default,
        },
        None,
        None,
        None,
    )
    .unwrap();
    let x = random_tokens(500, 16, 1.0, 1);
    is_budget(rotary.forward(x.as_ref()).map(|_| ()), "500 tokens");
    is_budget(rotary.jvp(x.as_ref(), x.as_ref()).map(|_| ()), "500 tokens");
    is_budget(
        lipattn::attention::RotaryLinearization::new(&rotary, x.as_ref()).map(|_| ()),
        "500 tokens",
    );
    is_budget(
        rotary
            .vjp(x.as_ref(), random_tokens(500, 16, 1.0, 3).as_ref())
            .map(|_| ()),
        "500 tokens",
    );
    assert!(rotary.jvp(small.as_ref(), small.as_ref()).is_ok());
    set_max_memory(None);
    assert!(layer.forward(x.as_ref(), None, false).is_ok());
}

/// A budget error naming `needle`, whatever the budget in force.
fn is_over_budget(r: Result<(), Error>, needle: &str) {
    match r {
        Err(e @ Error::Budget { .. }) => assert!(e.to_string().contains(needle), "{e}"),
        other => panic!("expected a budget error naming {needle}, got {other:?}"),
    }
}

/// Sizes of the searches and dynamics that the fuzzer of the Python functions found allocating
/// unchecked (tests/python_bindings/test_fuzz_py.py): each aborted or panicked with an allocation
/// failure (n, atoms, d, reference = 2^31 and up), and is now a budget error before anything is
/// allocated. 2^40 tokens need terabytes: refused under any budget, so this test leaves the
/// process-wide budget alone.
#[test]
fn searches_and_dynamics_sizes_stop_before_allocating() {
    use lipattn::dynamics::flow::{identity_layer, mean_field};
    use lipattn::estimation::{
        adversarial_input, ascent, search_pairs, AscentOptions, PairSearchOptions,
    };
    let layer = random_layer(4, 2, Kernel::Dot, 0.1, 0).unwrap();
    let big = 1usize << 40;
    is_over_budget(
        adversarial_input(&layer, 0, big, 1.0).map(|_| ()),
        "adversarial input of 1099511627776 tokens",
    );
    is_over_budget(
        ascent(&layer, big, None, &AscentOptions::default()).map(|_| ()),
        "search over 1099511627776 tokens",
    );
    let pairs = PairSearchOptions {
        atoms: big,
        ..PairSearchOptions::default()
    };
    is_over_budget(
        search_pairs(&layer, &pairs).map(|_| ()),
        "search over 1099511627776 tokens",
    );
    is_over_budget(
        identity_layer(big, 1.0).map(|_| ()),
        "identity layer of width d = 1099511627776",
    );
    let opts = FlowOptions {
        projection: Projection::Sphere,
        integrator: Integrator::Rk4 { dt: 0.1 },
        t_end: 0.5,
        record_every: 0.5,
        max_steps: 100,
    };
    is_over_budget(
        mean_field(&layer, &[4, 8], big, 1, &opts, 0).map(|_| ()),
        "mean-field reference of 1099511627776 tokens",
    );
}
