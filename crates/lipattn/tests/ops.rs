//! The command layer: requests (defaults, names, serde), the dispatch of each command against
//! the library functions it wraps, and how failures are reported.

use lipattn::dynamics::synthetic::{random_layer, random_tokens};
use lipattn::estimation::{local_norm, LanczosOptions, Method};
use lipattn::names::Named;
use lipattn::ops::fixed_point::{self, FixedPointInputs, FixedPointRequest, Space, VariantName};
use lipattn::ops::flow::{self, FlowInputs, FlowRequest};
use lipattn::ops::invert::{self, InvertInputs, InvertRequest};
use lipattn::ops::local::{self, LocalDtype, LocalInputs, LocalMethod, LocalRequest};
use lipattn::ops::solvers::{SolverChoice, SolverRequest};
use lipattn::ops::transport::{self, TransportInputs, TransportMethod, TransportRequest};
use lipattn::ops::{silent, to_json};
use lipattn::{Error, Kernel, LayerSource, Mat, Measure};

fn option_message(e: Error) -> String {
    match e {
        Error::Option(m) => m,
        other => panic!("expected an option error, got {other:?}"),
    }
}

#[test]
fn requests_round_trip_through_json_and_reject_unknown_fields() {
    let t = TransportRequest::default();
    let back: TransportRequest = serde_json::from_value(to_json(&t).unwrap()).unwrap();
    assert_eq!(to_json(&back).unwrap(), to_json(&t).unwrap());
    // Absent fields take the defaults; names parse through the one mapping.
    let r: TransportRequest =
        serde_json::from_str(r#"{"method": "sinkhorn", "eps": 0.1}"#).unwrap();
    assert_eq!(
        (r.method, r.eps, r.tol),
        (TransportMethod::Sinkhorn, Some(0.1), t.tol)
    );
    let e = serde_json::from_str::<TransportRequest>(r#"{"epsilon": 0.1}"#).unwrap_err();
    assert!(e.to_string().contains("unknown field `epsilon`"), "{e}");
    let e = serde_json::from_str::<TransportRequest>(r#"{"method": "greedy"}"#).unwrap_err();
    assert!(
        e.to_string()
            .contains("unknown `method` 'greedy' (expected 'exact', 'sorted' or 'sinkhorn')"),
        "{e}"
    );
    let f: FixedPointRequest =
        serde_json::from_str(r#"{"solve": {"solver": "fixed-point"}}"#).unwrap();
    assert_eq!(f.solve.solver, SolverChoice::Picard);
    assert_eq!(
        f.solve.max_iter,
        FixedPointRequest::default().solve.max_iter
    );
    for req in [
        to_json(&LocalRequest::default()),
        to_json(&InvertRequest::default()),
        to_json(&FlowRequest::default()),
    ] {
        assert!(req.unwrap().is_object());
    }
}

#[test]
fn names_parse_print_and_list_their_aliases() {
    for &(name, v) in SolverChoice::NAMES {
        assert_eq!(name.parse::<SolverChoice>().unwrap(), v);
    }
    assert_eq!(SolverChoice::Picard.to_string(), "picard");
    assert_eq!("l2".parse::<Kernel>().unwrap(), Kernel::L2);
    let m = option_message("cosine".parse::<Kernel>().unwrap_err());
    assert_eq!(m, "unknown `kernel` 'cosine' (expected 'dot' or 'l2')");
    assert_eq!(serde_json::to_value(Space::Measure).unwrap(), "measure");
}

#[test]
fn single_solver_requests_refuse_all() {
    let all = SolverRequest::default();
    assert_eq!(all.solvers().len(), 3);
    assert!(option_message(all.single().unwrap_err()).contains("runs several solvers"));
    let one = SolverRequest {
        solver: SolverChoice::Broyden,
        ..SolverRequest::default()
    };
    assert_eq!(one.single().unwrap().name(), "broyden");
    assert_eq!(one.options(7).unwrap().max_evals, 8);
}

fn points(seed: u64, n: usize, d: usize) -> Mat<f64> {
    random_tokens(n, d, 1.0, seed)
}

#[test]
fn transport_dispatches_to_the_solvers_and_checks_options() {
    let (a, b) = (points(1, 7, 3), points(2, 5, 3));
    let inputs = || TransportInputs {
        source: Measure::uniform(a.clone()).unwrap(),
        target: Measure::uniform(b.clone()).unwrap(),
        cost: None,
    };
    let exact = lipattn::transport::exact(&inputs().source, &inputs().target, 2).unwrap();
    let req = TransportRequest {
        p: 2.0,
        ..Default::default()
    };
    let r = transport::run(&req, inputs(), &mut silent).unwrap();
    assert_eq!(
        (r.cost, r.distance, r.gap),
        (exact.cost, exact.distance, Some(exact.gap))
    );
    assert_eq!(r.plan_nonzeros, exact.plan.len());
    let sk = TransportRequest {
        method: TransportMethod::Sinkhorn,
        eps: Some(0.5),
        ..req.clone()
    };
    let r = transport::run(&sk, inputs(), &mut silent).unwrap();
    let dense = r.plan.dense(7, 5);
    assert_eq!(r.plan_nonzeros, dense.iter().filter(|&&f| f != 0.0).count());
    assert!((dense.iter().sum::<f64>() - 1.0).abs() < 1e-6);
    assert_eq!((r.gap, r.infeasibility), (None, None));
    let cases = [
        (
            TransportRequest {
                eps: Some(0.1),
                ..req.clone()
            },
            "`eps` only applies",
        ),
        (
            TransportRequest {
                p: 3.0,
                ..req.clone()
            },
            "`p` = 3 is not supported",
        ),
        (
            TransportRequest {
                method: TransportMethod::Sinkhorn,
                ..req.clone()
            },
            "needs `eps`",
        ),
    ];
    for (bad, needle) in cases {
        let m = option_message(
            transport::run(&bad, inputs(), &mut silent)
                .map(|_| ())
                .unwrap_err(),
        );
        assert!(m.contains(needle), "{m}");
    }
    let with_cost = TransportInputs {
        cost: Some(Mat::zeros(4, 5)),
        ..inputs()
    };
    let m = option_message(
        transport::run(&req, with_cost, &mut silent)
            .map(|_| ())
            .unwrap_err(),
    );
    assert!(m.contains("cost matrix is 4 x 5, expected 7 x 5"), "{m}");
}

/// A Sinkhorn run stopped by `max_iter` is no answer unless asked for, and then says so; its
/// marginal error is that of the plan returned (it once stayed infinite after one sweep).
#[test]
fn sinkhorn_that_stops_short_is_an_error_unless_accepted() {
    let (a, b) = (points(1, 7, 3), points(2, 5, 3));
    let inputs = || TransportInputs {
        source: Measure::uniform(a.clone()).unwrap(),
        target: Measure::uniform(b.clone()).unwrap(),
        cost: None,
    };
    for max_iter in [1, 3] {
        let req = TransportRequest {
            method: TransportMethod::Sinkhorn,
            eps: Some(0.05),
            max_iter,
            ..Default::default()
        };
        match transport::run(&req, inputs(), &mut silent) {
            Err(Error::NoConvergence {
                solver,
                steps,
                best_residual,
                ..
            }) => {
                assert_eq!((solver.as_str(), steps), ("sinkhorn", max_iter));
                assert!(best_residual.is_finite() && best_residual > req.tol);
            }
            other => panic!("expected no convergence, got {:?}", other.map(|r| r.cost)),
        }
        let accepted = TransportRequest {
            accept_unconverged: true,
            ..req
        };
        let r = transport::run(&accepted, inputs(), &mut silent).unwrap();
        assert!(!r.converged && r.iterations == max_iter as u64);
        // The reported error is the plan's own L1 row error (columns are exact after a sweep).
        let dense = r.plan.dense(7, 5);
        let row_err: f64 = (0..7)
            .map(|i| ((0..5).map(|j| dense[i * 5 + j]).sum::<f64>() - 1.0 / 7.0).abs())
            .sum();
        assert!(
            (row_err - r.marginal_error).abs() <= 1e-12 * (1.0 + row_err),
            "{row_err} vs {}",
            r.marginal_error
        );
        let v = lipattn::ops::to_json(&r).unwrap();
        assert_eq!(v["converged"], serde_json::Value::Bool(false));
    }
}

#[test]
fn local_reports_the_estimator_with_its_domain() {
    let layer = random_layer(6, 2, Kernel::Dot, 0.1, 3).unwrap();
    // A causal model's layer: the default mask is causal, and an explicit `causal: false` is named.
    let source = LayerSource::new("test layer", true, Kernel::Dot);
    let x = points(4, 5, 6);
    let mut events = 0;
    let r = local::run(
        &LocalRequest::default(),
        LocalInputs {
            layer: &layer,
            x: x.as_ref(),
            weights: None,
            causal: Some(false),
            source: &source,
        },
        &mut |_| events += 1,
    )
    .unwrap();
    assert!(events >= 2);
    let direct = local_norm(
        &layer,
        x.as_ref(),
        None,
        false,
        &Method::Lanczos(LanczosOptions::default()),
    )
    .unwrap();
    assert_eq!(r.sigma, direct.top.sigma);
    assert_eq!(r.radius, lipattn::linalg::max_row_norm(x.as_ref()));
    assert_eq!((r.tol, r.dtype, r.weights), (Some(1e-6), "f64", "uniform"));
    let op = &to_json(&r).unwrap()["operator"];
    assert_eq!(
        (op["mask"].as_str(), op["model_mask"].as_str()),
        (Some("none"), Some("causal"))
    );
    let text = op["description"].as_str().unwrap();
    assert!(text.contains("not the model's causal one"), "{text}");
    let head = local::run(
        &LocalRequest {
            method: LocalMethod::Power,
            head: Some(1),
            ..Default::default()
        },
        LocalInputs {
            layer: &layer,
            x: x.as_ref(),
            weights: None,
            causal: None,
            source: &source,
        },
        &mut silent,
    )
    .unwrap();
    let h = layer.head(1, false).unwrap();
    let method = LocalRequest {
        method: LocalMethod::Power,
        ..Default::default()
    }
    .estimator();
    assert_eq!(
        head.sigma,
        local_norm(&h, x.as_ref(), None, true, &method)
            .unwrap()
            .top
            .sigma
    );
    assert_eq!((head.tol, head.head, head.causal), (None, Some(1), true));
    assert!(head.operator.overrides.is_empty());
    assert!(
        head.operator.layer.contains("head 1"),
        "{}",
        head.operator.layer
    );
}

#[test]
fn invert_reports_every_solver_and_failures_are_not_results() {
    let layer = random_layer(6, 2, Kernel::L2, 0.1, 5).unwrap();
    let origin = LayerSource::new("a random layer", false, layer.kernel);
    let x = points(6, 5, 6);
    let inputs = || InvertInputs {
        layer: &layer,
        x: x.as_ref(),
        source: None,
        origin: &origin,
    };
    let r = invert::run(&InvertRequest::default(), inputs(), &mut silent).unwrap();
    assert_eq!(r.status, "converged");
    assert_eq!(r.solvers.len(), 3);
    assert_eq!(r.reconstructions.len(), 3);
    let p = r.primary.as_ref().unwrap();
    assert_eq!(p.solver, "picard");
    // Random tied L2 layers factor exactly: g is certified on all of R^(n x d).
    assert_eq!(
        r.operator.domain,
        Some(lipattn::domain::CertifiedDomain::All)
    );
    assert_eq!((r.operator.n, r.operator.scale), (Some(5), r.scale));
    assert!(p.reconstruction_error <= p.error_bound.unwrap() + 1e-12);
    assert!(r.attained_local_lipschitz <= r.certified_lipschitz);
    let starved = InvertRequest {
        solve: SolverRequest {
            max_iter: Some(1),
            ..InvertRequest::default().solve
        },
        ..Default::default()
    };
    let r = invert::run(&starved, inputs(), &mut silent).unwrap();
    assert_eq!(r.status, "no_convergence");
    assert!(r.primary.is_none() && r.reconstructions.is_empty());
    let json = to_json(&r).unwrap();
    assert!(json["solvers"]
        .as_array()
        .unwrap()
        .iter()
        .all(|s| s["status"] == "no_convergence"));
    assert!(json.get("residual").is_none());
}

#[test]
fn fixed_point_checks_its_options_before_solving() {
    let layer = random_layer(6, 2, Kernel::L2, 0.1, 7).unwrap();
    let origin = LayerSource::new("a random layer", false, layer.kernel);
    let x = points(8, 5, 6);
    let run = |req: FixedPointRequest, weights: Option<Vec<f64>>| {
        fixed_point::run(
            &req,
            FixedPointInputs {
                layer: &layer,
                x: x.as_ref(),
                input: None,
                weights,
                source: None,
                origin: &origin,
            },
            &mut silent,
        )
    };
    let bad = [
        (
            FixedPointRequest {
                space: Space::Measure,
                variant: VariantName::Damped,
                ..Default::default()
            },
            None,
            "iterates mu = F(mu) only",
        ),
        (
            FixedPointRequest::default(),
            Some(vec![0.2; 5]),
            "`weights` apply to `space` 'measure' only",
        ),
        (
            FixedPointRequest {
                space: Space::Measure,
                ..Default::default()
            },
            Some(vec![0.25; 4]),
            "expected 5 entries",
        ),
        (
            FixedPointRequest {
                contract: Some(1.0),
                ..Default::default()
            },
            None,
            "`contract` must lie in (0, 1)",
        ),
    ];
    for (req, w, needle) in bad {
        let m = option_message(run(req, w).map(|_| ()).unwrap_err());
        assert!(m.contains(needle), "{m}");
    }
    let r = run(
        FixedPointRequest {
            contract: Some(0.5),
            ..Default::default()
        },
        None,
    )
    .unwrap();
    assert_eq!(r.status, "converged");
    assert!(r.certified_contraction.unwrap() <= 0.5);
    assert_eq!(r.solutions.len(), 3);
}

#[test]
fn flow_draws_its_gronwall_perturbation_from_the_offset_seed() {
    let layer = random_layer(3, 1, Kernel::Dot, 0.0, 9).unwrap();
    let origin = LayerSource::new("a random layer", false, layer.kernel);
    let x =
        lipattn::dynamics::flow::sphere_sample(6, 3, &mut lipattn::estimation::SplitMix::new(1));
    let req = FlowRequest {
        t: 0.5,
        gronwall: Some(1e-3),
        seed: 4,
        ..Default::default()
    };
    let run = |tokens: Option<Mat<f64>>| {
        flow::run(
            &req,
            FlowInputs {
                map: (&layer).into(),
                x: x.as_ref(),
                weights: None,
                gronwall_tokens: tokens,
                source: None,
                origin: &origin,
            },
            &mut silent,
        )
        .unwrap()
    };
    let by_seed = run(None);
    let mut rng = lipattn::estimation::SplitMix::new(lipattn::ops::source::gronwall_seed(4));
    let nu = Mat::from_fn(6, 3, |i, k| x[(i, k)] + 1e-3 * rng.gauss());
    let given = run(Some(nu));
    assert_eq!(
        to_json(&by_seed.gronwall).unwrap(),
        to_json(&given.gronwall).unwrap()
    );
    assert_eq!(by_seed.states.len(), by_seed.times.len());
    let m = option_message(
        flow::run(
            &FlowRequest {
                cluster_threshold: f64::NAN,
                ..Default::default()
            },
            FlowInputs {
                map: (&layer).into(),
                x: x.as_ref(),
                weights: None,
                gronwall_tokens: None,
                source: None,
                origin: &origin,
            },
            &mut silent,
        )
        .map(|_| ())
        .unwrap_err(),
    );
    assert!(m.contains("`cluster_threshold`"), "{m}");
}

/// `dtype` f32 on a plain layer: f32 Lanczos refined in f64 agrees with the f64 run to the
/// requested 1e-6 and says f32.
#[test]
fn local_f32_is_refined_to_the_f64_value_on_plain_layers() {
    let source = LayerSource::new("test layer", false, Kernel::Dot);
    for kernel in [Kernel::Dot, Kernel::L2] {
        let layer = random_layer(12, 3, kernel, 0.3, 7).unwrap();
        let x = points(8, 20, 12);
        let run = |dtype| {
            local::run(
                &LocalRequest {
                    dtype,
                    ..Default::default()
                },
                LocalInputs {
                    layer: &layer,
                    x: x.as_ref(),
                    weights: None,
                    causal: None,
                    source: &source,
                },
                &mut silent,
            )
            .unwrap()
        };
        let (r32, r64) = (run(LocalDtype::F32), run(LocalDtype::F64));
        assert_eq!((r32.dtype, r64.dtype), ("f32", "f64"));
        assert!(r32.converged && r32.rel_error <= 1e-6, "{}", r32.rel_error);
        let rel = (r32.sigma - r64.sigma).abs() / r64.sigma;
        assert!(
            rel <= 1e-6,
            "{kernel:?}: {} vs {}: {rel}",
            r32.sigma,
            r64.sigma
        );
    }
}
