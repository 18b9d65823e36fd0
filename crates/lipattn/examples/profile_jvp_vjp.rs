//! Quick timing of one JVP plus one VJP at MiniLM size with random weights (no model needed).
//! Usage: [STREAM=1] cargo run --release --example profile_jvp_vjp -- [n] [f32|f64] [repeats]
use lipattn::derivatives::streaming::{StreamingLinearization, DEFAULT_BLOCK};
use lipattn::derivatives::LinearizedMap;
use lipattn::{AttentionLayer, Kernel, Linearization, Mat, Scalar};
use std::time::Instant;

fn lcg(state: &mut u64) -> f64 {
    *state = state
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    ((*state >> 11) as f64 / (1u64 << 53) as f64) * 2.0 - 1.0
}

/// CPU seconds used by this process so far (all threads), from /proc/self/stat: unlike wall time
/// it is not inflated when other processes compete for the cores.
fn cpu_seconds() -> f64 {
    let s = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = s.rsplit(')').next().unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

/// One JVP + VJP at a fixed linearisation: (J g, J^T J g, milliseconds of the JVP).
type Step<'a, T> = dyn Fn(&Mat<T>) -> (Mat<T>, Mat<T>, f64) + 'a;

fn timed<'a, T: Scalar, L: LinearizedMap<T> + 'a>(lin: L) -> Box<Step<'a, T>> {
    Box::new(move |g: &Mat<T>| {
        let t0 = Instant::now();
        let y = lin.jvp(g.as_ref()).unwrap();
        let t1 = t0.elapsed().as_secs_f64() * 1e3;
        let w = lin.vjp(y.as_ref()).unwrap();
        (y, w, t1)
    })
}

fn run<T: Scalar>(n: usize, reps: usize) {
    let (d, h) = (384, 12);
    let mut s = 42u64;
    let mut m =
        |r: usize, c: usize, sc: f64| Mat::<T>::from_fn(r, c, |_, _| T::of(sc * lcg(&mut s)));
    let layer = AttentionLayer::<T>::new(
        h,
        Kernel::Dot,
        m(d, d, 0.1),
        vec![T::of(0.01); d],
        m(d, d, 0.1),
        vec![T::of(0.01); d],
        m(d, d, 0.1),
        vec![T::of(0.0); d],
        m(d, d, 0.1),
        vec![T::of(0.0); d],
    )
    .unwrap();
    let x = m(n, d, 1.7);
    if std::env::var("DBG").is_ok() {
        let l64 = layer.cast::<f64>();
        let x64 = Mat::from_fn(n, d, |i, k| x[(i, k)].f64());
        let sc = l64.scores(0, x64.as_ref(), x64.as_ref()).unwrap();
        let (mut lo, mut hi) = (f64::MAX, f64::MIN);
        for i in 0..n {
            for j in 0..n {
                lo = lo.min(sc[(i, j)]);
                hi = hi.max(sc[(i, j)]);
            }
        }
        println!("scores in [{lo}, {hi}]");
    }
    let g = m(n, d, 1.0);
    // STREAM=1: the streaming linearisation (docs/streaming.md) instead of the dense one.
    let streaming = std::env::var("STREAM").is_ok_and(|v| v == "1");
    let linearize = || -> Box<Step<'_, T>> {
        if streaming {
            timed(
                StreamingLinearization::new(&layer, x.as_ref(), None, false, DEFAULT_BLOCK)
                    .unwrap(),
            )
        } else {
            timed(Linearization::new(&layer, x.as_ref(), None, false).unwrap())
        }
    };
    let step = linearize();
    let mut times = Vec::new();
    let cpu0 = cpu_seconds();
    let (mut tj, mut tv) = (Vec::new(), Vec::new());
    for _ in 0..reps {
        let t0 = Instant::now();
        let (_, _, jvp_ms) = step(&g);
        let total = t0.elapsed().as_secs_f64() * 1e3;
        tj.push(jvp_ms);
        tv.push(total - jvp_ms);
        times.push(total);
    }
    let med = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let cpu_per_iter = (cpu_seconds() - cpu0) / reps as f64 * 1e3;
    drop(step);
    let t0 = Instant::now();
    drop(linearize());
    let tl = t0.elapsed().as_secs_f64() * 1e3;
    println!(
        "{} n={n} {}: jvp+vjp median {:.3} ms (jvp {:.3}, vjp {:.3}); cpu {:.3} ms/iter; linearize {:.3} ms",
        T::NAME,
        if streaming { "streaming" } else { "dense" },
        med(&mut times),
        med(&mut tj),
        med(&mut tv),
        cpu_per_iter,
        tl
    );
}

fn main() {
    let a: Vec<String> = std::env::args().collect();
    let n: usize = a.get(1).and_then(|s| s.parse().ok()).unwrap_or(128);
    let reps: usize = a.get(3).and_then(|s| s.parse().ok()).unwrap_or(30);
    match a.get(2).map(|s| s.as_str()) {
        Some("f32") => run::<f32>(n, reps),
        _ => run::<f64>(n, reps),
    }
}

#[allow(dead_code)]
fn dbg_scores() {}
