//! The GEMM floor of one JVP + VJP at MiniLM sizes (d = 384, 12 heads of 32, blocks of 128
//! queries): every matrix product of lipattn's step, each timed alone on one thread with warm
//! operands (median of 30), summed, and halved for 2 threads as if they scaled perfectly. No
//! softmax, no copies, no synchronisation: an optimistic bound on what any implementation built
//! on these GEMMs can reach, printed by bench/jvp_vjp/run.sh beside the measured steps.
use faer::linalg::matmul::matmul;
use faer::traits::ComplexField;
use faer::{Accum, Mat, Par};
use std::time::Instant;

/// Median seconds of dst += a b with a (m x k) and b (k x n), either stored transposed.
fn product<T: ComplexField + Copy>(
    m: usize,
    k: usize,
    n: usize,
    a_t: bool,
    b_t: bool,
    one: T,
) -> f64 {
    let a = if a_t {
        Mat::from_fn(k, m, |_, _| one)
    } else {
        Mat::from_fn(m, k, |_, _| one)
    };
    let b = if b_t {
        Mat::from_fn(n, k, |_, _| one)
    } else {
        Mat::from_fn(k, n, |_, _| one)
    };
    let mut c = Mat::<T>::from_fn(m, n, |_, _| one);
    let mut times: Vec<f64> = (0..30)
        .map(|_| {
            let t0 = Instant::now();
            let a = if a_t {
                a.as_ref().transpose()
            } else {
                a.as_ref()
            };
            let b = if b_t {
                b.as_ref().transpose()
            } else {
                b.as_ref()
            };
            matmul(c.as_mut(), Accum::Add, a, b, one, Par::Seq);
            t0.elapsed().as_secs_f64()
        })
        .collect();
    times.sort_by(f64::total_cmp);
    times[times.len() / 2]
}

fn floor<T: ComplexField + Copy>(dtype: &str, n: usize, one: T) {
    let (d, heads, dk) = (384, 12, 32);
    let block = 128.min(n);
    let per_block = heads * n.div_ceil(block);
    // (how many, m, k, n, a stored transposed, b stored transposed), as in jvp.rs and vjp.rs.
    let products = [
        (1, n, d, 3 * d, false, false), // JVP: tangent projections, all heads
        (per_block, n, 2 * dk, block, false, false), // dL^T = [K dK] [dQ Q]^T_blk
        (per_block, dk, n, block, false, false), // V^T dL^T
        (per_block, dk, n, block, false, false), // dV^T P^T_blk
        (1, n, d, d, true, true),       // dO W_O^T
        (1, n, d, d, false, false),     // VJP: Obar = Ybar W_O
        (per_block, n, block, dk, false, false), // Vbar += P^T_blk Obar_blk
        (per_block, n, dk, block, false, true), // Lbar^T = V Obar_blk^T
        (per_block, dk, n, block, false, false), // Qbar^T = K^T Lbar^T
        (per_block, n, block, dk, false, false), // Kbar += Lbar^T Q_blk
        (1, n, 3 * d, d, false, false), // Xbar = Dbar W_in
    ];
    let (mut secs, mut flops) = (0.0, 0.0);
    for (count, m, k, nn, a_t, b_t) in products {
        secs += count as f64 * product::<T>(m, k, nn, a_t, b_t, one);
        flops += (2 * count * m * k * nn) as f64;
    }
    println!(
        "{dtype:4} {n:4}  {:7.1} MFLOP  floor {:6.2} ms on 1 thread, {:6.2} ms on 2  ({:.1} GFLOP/s a core)",
        flops / 1e6,
        secs * 1e3,
        secs * 1e3 / 2.0,
        flops / secs / 1e9
    );
}

fn main() {
    let sizes: Vec<usize> = std::env::args()
        .skip(1)
        .map(|s| s.parse().expect("sequence lengths"))
        .collect();
    let sizes = if sizes.is_empty() {
        vec![128, 512]
    } else {
        sizes
    };
    for n in sizes {
        floor::<f32>("f32", n, 1.0);
        floor::<f64>("f64", n, 1.0);
    }
}
