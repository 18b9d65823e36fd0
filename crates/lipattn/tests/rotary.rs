//! Rotary attention (docs/rotary.md) against an independent naive implementation (explicit 2x2
//! rotations, repeated K/V per query head, an explicit mask), its frequencies against values
//! transformers computed, relative-position properties, and its derivatives against finite
//! differences and each other.

use lipattn::attention::{QkNorm, Rope, RopeScaling, RotaryAttention};
use lipattn::linalg::SplitMix;
use lipattn::{Error, Mat};

mod common;
use common::rotary::{gauss, RotarySpec};

/// One layer configuration of the sweep.
#[derive(Clone, Debug)]
struct Case {
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    rotary_dim: usize,
    d: usize,
    d_out: usize,
    bias: bool,
    /// None, Some(false) (gain w), Some(true) (gain 1 + w).
    qk_norm: Option<bool>,
    softcap: Option<f64>,
    window: Option<usize>,
    scaling: RopeScaling,
    score_divisor_sq: usize,
}

fn scalings() -> Vec<RopeScaling> {
    vec![
        RopeScaling::Default,
        RopeScaling::Linear { factor: 2.5 },
        // max_position_embeddings is 16 below, so n = 33 stretches the base.
        RopeScaling::Dynamic {
            factor: 3.0,
            original_max_position_embeddings: 16,
        },
        RopeScaling::Llama3 {
            factor: 8.0,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_max_position_embeddings: 8,
        },
        RopeScaling::Yarn {
            factor: 4.0,
            original_max_position_embeddings: 8,
            beta_fast: 32.0,
            beta_slow: 1.0,
            mscale: None,
            mscale_all_dim: None,
            attention_factor: None,
            truncate: true,
        },
        RopeScaling::Yarn {
            factor: 40.0,
            original_max_position_embeddings: 12,
            beta_fast: 16.0,
            beta_slow: 2.0,
            mscale: Some(1.0),
            mscale_all_dim: Some(0.707),
            attention_factor: None,
            truncate: false,
        },
    ]
}

/// A sweep in which every value of every option appears several times, each combined with
/// varying others (the indices cycle with coprime periods).
fn cases(count: usize) -> Vec<Case> {
    let groupings = [(4, 4), (4, 2), (4, 1), (8, 2), (3, 1), (2, 2)];
    let qk = [None, Some(false), Some(true)];
    let caps = [None, Some(2.5)];
    let windows = [None, Some(1), Some(3), Some(64)];
    let scalings = scalings();
    (0..count)
        .map(|i| {
            let (heads, kv_heads) = groupings[i % groupings.len()];
            let head_dim = [4, 6, 8][i % 3];
            // Full rotation or a partial one (including no rotated pair at all).
            let rotary_dim = match i % 5 {
                0..=2 => head_dim,
                3 => 2,
                _ => head_dim - 2,
            };
            let scaling = scalings[i % scalings.len()].clone();
            // Dynamic's base exponent r / (r - 2) needs r != 2.
            let rotary_dim = if matches!(scaling, RopeScaling::Dynamic { .. }) && rotary_dim == 2 {
                head_dim
            } else {
                rotary_dim
            };
            Case {
                heads,
                kv_heads,
                head_dim,
                rotary_dim,
                d: 5 + i % 4,
                d_out: 3 + i % 5,
                bias: i % 2 == 1,
                qk_norm: qk[i % 7 % 3],
                softcap: caps[i % 11 % 2],
                window: windows[i % 13 % 4],
                scaling,
                score_divisor_sq: if i % 17 == 0 { 7 } else { head_dim },
            }
        })
        .collect()
}

fn build(c: &Case, seed: u64) -> RotaryAttention {
    common::rotary::build(
        &RotarySpec {
            heads: c.heads,
            kv_heads: c.kv_heads,
            head_dim: c.head_dim,
            rotary_dim: c.rotary_dim,
            d: c.d,
            d_out: c.d_out,
            qk_scale: 1.0 / (c.d as f64).sqrt(),
            v_scale: 1.0 / (c.d as f64).sqrt(),
            o_scale: 1.0 / ((c.heads * c.head_dim) as f64).sqrt(),
            bias: if c.bias { 0.3 } else { 0.0 },
            qk_norm: c.qk_norm.map(|unit_offset| (unit_offset, 1e-6, 0.5)),
            softcap: c.softcap,
            window: c.window,
            theta: 10000.0,
            max_position_embeddings: 16,
            scaling: c.scaling.clone(),
            score_divisor_sq: c.score_divisor_sq,
        },
        seed,
    )
}

fn rel_err(a: &Mat<f64>, b: &Mat<f64>) -> f64 {
    (a - b).norm_l2() / b.norm_l2().max(f64::MIN_POSITIVE)
}

fn affine_row(w: &Mat<f64>, b: &[f64], x: &[f64]) -> Vec<f64> {
    (0..w.nrows())
        .map(|r| b[r] + (0..w.ncols()).map(|c| w[(r, c)] * x[c]).sum::<f64>())
        .collect()
}

/// The sublayer written out with loops: per-token projections, the RMS norm, an explicit 2x2
/// rotation matrix per position and pair, K and V repeated for every query head, the mask as a
/// predicate, a max-shifted softmax.
fn naive(layer: &RotaryAttention, x: &Mat<f64>) -> Mat<f64> {
    let (n, hd, h_count) = (x.nrows(), layer.head_dim, layer.heads);
    let (inv_freq, att) = layer.rope.frequencies(n).unwrap();
    let r = layer.rope.rotary_dim;
    let half = r / 2;
    let rows: Vec<Vec<f64>> = (0..n)
        .map(|i| (0..x.ncols()).map(|c| x[(i, c)]).collect())
        .collect();
    let norm = |v: &[f64], w: &[f64], unit: bool, eps: f64| -> Vec<f64> {
        let ms = v.iter().map(|a| a * a).sum::<f64>() / v.len() as f64;
        let inv = 1.0 / (ms + eps).sqrt();
        v.iter()
            .zip(w)
            .map(|(a, w)| a * inv * if unit { 1.0 + w } else { *w })
            .collect()
    };
    // heads x tokens x head_dim, after norm and rotation.
    let prep = |w: &Mat<f64>, b: &[f64], heads: usize, gain: Option<&[f64]>| {
        let mut out = vec![vec![vec![0.0; hd]; n]; heads];
        for (i, row) in rows.iter().enumerate() {
            let p = affine_row(w, b, row);
            for (h, slot) in out.iter_mut().enumerate() {
                let mut v = p[h * hd..(h + 1) * hd].to_vec();
                if let (Some(g), Some(nrm)) = (gain, &layer.qk_norm) {
                    v = norm(&v, g, nrm.unit_offset, nrm.eps);
                }
                let mut rot = v.clone();
                for c in 0..half {
                    let a = i as f64 * inv_freq[c];
                    let m = [[a.cos(), -a.sin()], [a.sin(), a.cos()]];
                    let (x1, x2) = (v[c], v[c + half]);
                    rot[c] = att * (m[0][0] * x1 + m[0][1] * x2);
                    rot[c + half] = att * (m[1][0] * x1 + m[1][1] * x2);
                }
                slot[i] = rot;
            }
        }
        out
    };
    let qn = layer.qk_norm.as_ref();
    let q = prep(
        &layer.wq,
        &layer.bq,
        h_count,
        qn.map(|n| n.q_weight.as_slice()),
    );
    let k = prep(
        &layer.wk,
        &layer.bk,
        layer.kv_heads,
        qn.map(|n| n.k_weight.as_slice()),
    );
    let v: Vec<Vec<Vec<f64>>> = (0..layer.kv_heads)
        .map(|g| {
            rows.iter()
                .map(|row| affine_row(&layer.wv, &layer.bv, row)[g * hd..(g + 1) * hd].to_vec())
                .collect()
        })
        .collect();
    // repeat_kv: every query head gets its own copy.
    let group = h_count / layer.kv_heads;
    let k_rep: Vec<_> = (0..h_count).map(|h| k[h / group].clone()).collect();
    let v_rep: Vec<_> = (0..h_count).map(|h| v[h / group].clone()).collect();
    let scale = 1.0 / (layer.score_divisor_sq as f64).sqrt();
    let mut concat = vec![vec![0.0; h_count * hd]; n];
    for h in 0..h_count {
        for i in 0..n {
            let allowed = |j: usize| j <= i && layer.window.is_none_or(|w| i - j < w);
            let logits: Vec<Option<f64>> = (0..n)
                .map(|j| {
                    allowed(j).then(|| {
                        let s = scale * (0..hd).map(|c| q[h][i][c] * k_rep[h][j][c]).sum::<f64>();
                        match layer.softcap {
                            Some(cap) => cap * (s / cap).tanh(),
                            None => s,
                        }
                    })
                })
                .collect();
            let max = logits
                .iter()
                .flatten()
                .cloned()
                .fold(f64::NEG_INFINITY, f64::max);
            let e: Vec<f64> = logits
                .iter()
                .map(|l| l.map_or(0.0, |l| (l - max).exp()))
                .collect();
            let z: f64 = e.iter().sum();
            for c in 0..hd {
                concat[i][h * hd + c] = (0..n).map(|j| e[j] / z * v_rep[h][j][c]).sum();
            }
        }
    }
    Mat::from_fn(n, layer.wo.nrows(), |i, o| {
        affine_row(&layer.wo, &layer.bo, &concat[i])[o]
    })
}

#[test]
fn forward_matches_the_naive_implementation() {
    let mut worst = 0.0f64;
    for (idx, c) in cases(96).iter().enumerate() {
        let layer = build(c, idx as u64);
        // Past 64 tokens the forward pass forms the visible band in blocks of queries: a few
        // cases run there too, every window included.
        let long: &[usize] = if idx < 12 { &[150] } else { &[] };
        for &n in [1, 2, 7, 33].iter().chain(long) {
            let mut r = SplitMix::new(1000 + idx as u64 * 7 + n as u64);
            let x = gauss(&mut r, n, c.d, 1.0);
            let y = layer.forward(x.as_ref()).unwrap();
            let want = naive(&layer, &x);
            let e = rel_err(&y, &want);
            assert!(e <= 1e-12, "case {idx} {c:?} n={n}: rel err {e}");
            worst = worst.max(e);
        }
    }
    eprintln!("forward vs naive: max rel err {worst:e}");
}

/// With a window w and frequencies that do not depend on n, token i sees tokens i-w+1..=i at
/// the same relative positions wherever the sequence starts: prepending tokens shifts the
/// outputs of every token with a full window.
#[test]
fn windowed_outputs_depend_on_relative_positions_only() {
    for (idx, scaling) in scalings().into_iter().enumerate() {
        if matches!(scaling, RopeScaling::Dynamic { .. }) {
            continue;
        }
        let c = Case {
            heads: 4,
            kv_heads: 2,
            head_dim: 8,
            rotary_dim: 8,
            d: 6,
            d_out: 5,
            bias: true,
            qk_norm: Some(true),
            softcap: Some(3.0),
            window: Some(3),
            scaling,
            score_divisor_sq: 8,
        };
        let layer = build(&c, 40 + idx as u64);
        let mut r = SplitMix::new(7 + idx as u64);
        let x = gauss(&mut r, 9, c.d, 1.0);
        let prefix = gauss(&mut r, 5, c.d, 1.0);
        let shifted = Mat::from_fn(
            14,
            c.d,
            |i, k| if i < 5 { prefix[(i, k)] } else { x[(i - 5, k)] },
        );
        let y = layer.forward(x.as_ref()).unwrap();
        let ys = layer.forward(shifted.as_ref()).unwrap();
        for i in 2..9 {
            for o in 0..c.d_out {
                let (a, b) = (y[(i, o)], ys[(i + 5, o)]);
                assert!(
                    (a - b).abs() <= 1e-12 * (1.0 + b.abs()),
                    "{idx}: token {i}: {a} vs {b}"
                );
            }
        }
        // And the first two tokens, whose windows are cut by the start, do change.
        assert!((y[(0, 0)] - ys[(5, 0)]).abs() > 1e-6);
    }
}

/// inv_freq and the attention factor against transformers 5.25's rope init functions
/// (scripts/rope_reference.py; transformers computes them in float32, hence 2e-6).
#[test]
fn frequencies_match_transformers() {
    #[rustfmt::skip]
    let expected: &[(&str, usize, f64, &[f64])] = &[
        ("default", 10, 1.0, &[1.0, 0.3162277638912201, 0.10000000149011612, 0.03162277862429619, 0.009999999776482582, 0.003162277862429619, 0.0010000000474974513, 0.0003162277862429619]),
        ("linear", 10, 1.0, &[0.25, 0.07905694097280502, 0.02500000037252903, 0.007905694656074047, 0.0024999999441206455, 0.0007905694656074047, 0.0002500000118743628, 7.905694656074047e-05]),
        ("dynamic_short", 10, 1.0, &[1.0, 0.3162277638912201, 0.10000000149011612, 0.03162277862429619, 0.009999999776482582, 0.003162277862429619, 0.0010000000474974513, 0.0003162277862429619]),
        ("dynamic_long", 200, 1.0, &[1.0, 0.24952846765518188, 0.06226445361971855, 0.015536753460764885, 0.0038768628146499395, 0.0009673875174485147, 0.0002413907350273803, 6.0233862313907593e-05]),
        ("llama3", 10, 1.0, &[1.0, 0.8146172165870667, 0.663601279258728, 0.5405809879302979, 0.44036662578582764, 0.3587302267551422, 0.2922278344631195, 0.2380538135766983, 0.193922758102417, 0.1579728126525879, 0.12868738174438477, 0.10483095049858093, 0.08539710193872452, 0.06956595182418823, 0.05666961893439293, 0.046164050698280334, 0.03760603070259094, 0.030634520575404167, 0.02495540864765644, 0.020329104736447334, 0.016560440883040428, 0.013490419834852219, 0.010989529080688953, 0.008952259086072445, 0.00729266507551074, 0.005940730683505535, 0.00483942124992609, 0.003942275885492563, 0.0032114461064338684, 0.0021665706299245358, 0.0013718936825171113, 0.0008567514596506953, 0.0005248460220173001, 0.0003126936499029398, 0.0001785077911335975, 9.556212171446532e-05, 7.784655463183299e-05, 6.341514381347224e-05, 5.165906986803748e-05, 4.208236714475788e-05, 3.428102354519069e-05, 2.7925909307668917e-05, 2.2748929040972143e-05, 1.8531669411459006e-05, 1.5096217794052791e-05, 1.2297638932068367e-05, 1.0017868589784484e-05, 8.160727702488657e-06, 6.647869668086059e-06, 5.415469331637723e-06, 4.411534519022098e-06, 3.593711880967021e-06, 2.927499735960737e-06, 2.3847917418606812e-06, 1.9426925064180978e-06, 1.5825507944100536e-06, 1.289173155782919e-06, 1.050182618200779e-06, 8.554969213037111e-07, 6.969025321268418e-07, 5.677088097399974e-07, 4.6246537976912805e-07, 3.76732259610435e-07, 3.068925877869333e-07]),
        ("yarn", 10, 1.138629436111989, &[1.0, 0.42175596952438354, 0.15811388194561005, 0.04445698484778404, 0.02500000037252903, 0.014058532193303108, 0.007905694656074047, 0.004445698577910662, 0.0024999999441206455, 0.0014058533124625683, 0.0007905694656074047, 0.00044456985779106617, 0.0002500000118743628, 0.00014058532542549074, 7.905694656074047e-05, 4.4456985051510856e-05]),
        ("yarn_mscale", 10, 1.0857263992561355, &[1.0, 0.7498942017555237, 0.5623413324356079, 0.4216965138912201, 0.3162277638912201, 0.23713736236095428, 0.17782793939113617, 0.1333521455526352, 0.10000000149011612, 0.07498941570520401, 0.05623412877321243, 0.039006926119327545, 0.026879360899329185, 0.01837814413011074, 0.012447956018149853, 0.0083345090970397, 0.005500000435858965, 0.0035619973205029964, 0.002249365206807852, 0.0013705134624615312, 0.0007905694073997438, 0.0004149904125370085, 0.00017782794020604342, 3.333803397254087e-05, 2.499999936844688e-05, 1.8747354260995053e-05, 1.4058532542549074e-05, 1.0542412383074407e-05, 7.905694474175107e-06, 5.928434347879374e-06, 4.445698323252145e-06, 3.3338035336782923e-06]),
        ("yarn_notrunc_att", 10, 1.25, &[1.0, 0.6493816375732422, 0.4216965138912201, 0.2738419771194458, 0.17782793939113617, 0.11547820270061493, 0.07498941570520401, 0.04869675263762474, 0.03162277862429619, 0.02053525112569332, 0.01333521492779255, 0.00865964312106371, 0.005517270416021347, 0.003241634927690029, 0.001883502583950758, 0.0010792376706376672, 0.000607408001087606, 0.0003337683738209307, 0.0001773442345438525, 8.957924728747457e-05, 4.4456985051510856e-05, 2.8869548259535804e-05, 1.8747356079984456e-05, 1.2174188668723218e-05, 7.905693564680405e-06, 5.133812464919174e-06, 3.3338035336782923e-06, 2.1649109385180054e-06, 1.405853367941745e-06, 9.129353202297352e-07, 5.928434347879374e-07, 3.8498163235090033e-07]),
        ("yarn_partial", 10, 1.0693147180559945, &[1.0, 0.23717081546783447, 0.05000000074505806, 0.015811389312148094, 0.004999999888241291, 0.0015811389312148094, 0.0005000000237487257, 0.00015811389312148094]),
    ];
    let rope = |theta: f64, rotary_dim: usize, max: usize, scaling: RopeScaling| Rope {
        theta,
        rotary_dim,
        max_position_embeddings: max,
        scaling,
    };
    let yarn = |factor,
                original,
                beta_fast,
                beta_slow,
                mscale,
                mscale_all_dim,
                attention_factor,
                truncate| {
        RopeScaling::Yarn {
            factor,
            original_max_position_embeddings: original,
            beta_fast,
            beta_slow,
            mscale,
            mscale_all_dim,
            attention_factor,
            truncate,
        }
    };
    let dynamic = RopeScaling::Dynamic {
        factor: 2.0,
        original_max_position_embeddings: 64,
    };
    for &(name, n, att, inv) in expected {
        let r = match name {
            "default" => rope(1e4, 16, 64, RopeScaling::Default),
            "linear" => rope(1e4, 16, 64, RopeScaling::Linear { factor: 4.0 }),
            "dynamic_short" | "dynamic_long" => rope(1e4, 16, 64, dynamic.clone()),
            "llama3" => rope(
                5e5,
                128,
                131072,
                RopeScaling::Llama3 {
                    factor: 8.0,
                    low_freq_factor: 1.0,
                    high_freq_factor: 4.0,
                    original_max_position_embeddings: 8192,
                },
            ),
            "yarn" => rope(
                1e4,
                32,
                128,
                yarn(4.0, 32, 32.0, 1.0, None, None, None, true),
            ),
            "yarn_mscale" => rope(
                1e4,
                64,
                163840,
                yarn(40.0, 4096, 32.0, 1.0, Some(1.0), Some(0.707), None, true),
            ),
            "yarn_notrunc_att" => rope(
                1e6,
                64,
                131072,
                yarn(4.0, 32768, 32.0, 1.0, None, None, Some(1.25), false),
            ),
            // head_dim 32 with partial_rotary_factor 0.5.
            "yarn_partial" => rope(
                1e4,
                16,
                256,
                yarn(2.0, 64, 16.0, 2.0, None, None, None, true),
            ),
            other => panic!("no rope for {other}"),
        };
        let (got, got_att) = r.frequencies(n).unwrap();
        assert_eq!(got.len(), inv.len(), "{name}");
        assert!(
            (got_att - att).abs() <= 1e-12 * att,
            "{name}: attention factor {got_att} vs {att}"
        );
        for (c, (g, w)) in got.iter().zip(inv.iter()).enumerate() {
            assert!(
                (g - w).abs() <= 2e-6 * w,
                "{name}: inv_freq[{c}] = {g}, transformers {w}"
            );
        }
    }
}

/// Values that need no reference: theta^(-2c/r) exactly for powers of ten, and dynamic scaling
/// inactive up to max_position_embeddings and active beyond it.
#[test]
fn frequencies_by_hand() {
    let mut r = Rope {
        theta: 100.0,
        rotary_dim: 4,
        max_position_embeddings: 8,
        scaling: RopeScaling::Default,
    };
    assert_eq!(r.frequencies(3).unwrap(), (vec![1.0, 0.1], 1.0));
    r.scaling = RopeScaling::Linear { factor: 2.0 };
    assert_eq!(r.frequencies(3).unwrap(), (vec![0.5, 0.05], 1.0));
    r.scaling = RopeScaling::Dynamic {
        factor: 2.0,
        original_max_position_embeddings: 8,
    };
    assert_eq!(r.frequencies(8).unwrap(), (vec![1.0, 0.1], 1.0));
    // n = 16: base 100 (2 * 16/8 - 1)^(4/2) = 900, so inv_freq_1 = 1/30.
    let (f, _) = r.frequencies(16).unwrap();
    assert!((f[1] - 1.0 / 30.0).abs() < 1e-15, "{f:?}");
}

/// The arguments of `RotaryAttention::new`, to break one at a time.
#[derive(Clone)]
struct Parts {
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    wq: Mat<f64>,
    bq: Vec<f64>,
    wk: Mat<f64>,
    bk: Vec<f64>,
    wv: Mat<f64>,
    bv: Vec<f64>,
    wo: Mat<f64>,
    bo: Vec<f64>,
    score_divisor_sq: usize,
    rope: Rope,
    qk_norm: Option<QkNorm>,
    softcap: Option<f64>,
    window: Option<usize>,
}

impl Parts {
    fn valid() -> Self {
        let l = build(&cases(4)[1], 3);
        let qk_norm = Some(QkNorm {
            q_weight: vec![1.0; l.head_dim],
            k_weight: vec![1.0; l.head_dim],
            eps: 1e-6,
            unit_offset: false,
        });
        Parts {
            heads: l.heads,
            kv_heads: l.kv_heads,
            head_dim: l.head_dim,
            wq: l.wq,
            bq: l.bq,
            wk: l.wk,
            bk: l.bk,
            wv: l.wv,
            bv: l.bv,
            wo: l.wo,
            bo: l.bo,
            score_divisor_sq: l.score_divisor_sq,
            rope: l.rope,
            qk_norm,
            softcap: Some(5.0),
            window: Some(4),
        }
    }

    fn make(self) -> lipattn::Result<RotaryAttention> {
        RotaryAttention::new(
            self.heads,
            self.kv_heads,
            self.head_dim,
            self.wq,
            self.bq,
            self.wk,
            self.bk,
            self.wv,
            self.bv,
            self.wo,
            self.bo,
            self.score_divisor_sq,
            self.rope,
            self.qk_norm,
            self.softcap,
            self.window,
        )
    }
}

#[test]
fn invalid_layers_are_errors_naming_the_field() {
    assert!(Parts::valid().make().is_ok());
    type Break = Box<dyn Fn(&mut Parts)>;
    fn yarn(p: &mut Parts) -> &mut RopeScaling {
        p.rope.scaling = RopeScaling::Yarn {
            factor: 4.0,
            original_max_position_embeddings: 8,
            beta_fast: 32.0,
            beta_slow: 1.0,
            mscale: None,
            mscale_all_dim: None,
            attention_factor: None,
            truncate: true,
        };
        &mut p.rope.scaling
    }
    let llama3 = |p: &mut Parts, low: f64, high: f64| {
        p.rope.scaling = RopeScaling::Llama3 {
            factor: 8.0,
            low_freq_factor: low,
            high_freq_factor: high,
            original_max_position_embeddings: 8,
        }
    };
    let breaks: Vec<(&str, Break)> = vec![
        ("heads", Box::new(|p| p.heads = 0)),
        ("kv_heads", Box::new(|p| p.kv_heads = 0)),
        ("kv_heads", Box::new(|p| p.kv_heads = 3)),
        ("head_dim", Box::new(|p| p.head_dim = 0)),
        ("score_divisor_sq", Box::new(|p| p.score_divisor_sq = 0)),
        (
            "score_divisor_sq",
            Box::new(|p| p.score_divisor_sq = (1 << 53) + 1),
        ),
        ("wq", Box::new(|p| p.wq = Mat::zeros(p.wq.nrows(), 0))),
        (
            "wq",
            Box::new(|p| p.wq = Mat::zeros(p.wq.nrows() + 1, p.wq.ncols())),
        ),
        (
            "wk",
            Box::new(|p| p.wk = Mat::zeros(p.wk.nrows(), p.wk.ncols() + 1)),
        ),
        (
            "wv",
            Box::new(|p| p.wv = Mat::zeros(p.wv.nrows() - 1, p.wv.ncols())),
        ),
        (
            "wo",
            Box::new(|p| p.wo = Mat::zeros(p.wo.nrows(), p.wo.ncols() + 2)),
        ),
        ("wo", Box::new(|p| p.wo = Mat::zeros(0, p.wo.ncols()))),
        ("bq", Box::new(|p| p.bq.push(0.0))),
        ("bk", Box::new(|p| p.bk.pop().map(|_| ()).unwrap())),
        ("bv", Box::new(|p| p.bv.clear())),
        ("bo", Box::new(|p| p.bo.push(1.0))),
        ("wq", Box::new(|p| p.wq[(1, 2)] = f64::NAN)),
        ("wk", Box::new(|p| p.wk[(0, 0)] = f64::INFINITY)),
        ("wv", Box::new(|p| p.wv[(2, 1)] = f64::NEG_INFINITY)),
        ("wo", Box::new(|p| p.wo[(0, 1)] = f64::NAN)),
        ("bq", Box::new(|p| p.bq[0] = f64::NAN)),
        ("bk", Box::new(|p| p.bk[1] = f64::NAN)),
        ("bv", Box::new(|p| p.bv[0] = f64::INFINITY)),
        ("bo", Box::new(|p| p.bo[0] = f64::NAN)),
        (
            "q_weight",
            Box::new(|p| p.qk_norm.as_mut().unwrap().q_weight.push(1.0)),
        ),
        (
            "k_weight",
            Box::new(|p| p.qk_norm.as_mut().unwrap().k_weight.clear()),
        ),
        (
            "q_weight",
            Box::new(|p| p.qk_norm.as_mut().unwrap().q_weight[0] = f64::NAN),
        ),
        (
            "k_weight",
            Box::new(|p| p.qk_norm.as_mut().unwrap().k_weight[1] = f64::NAN),
        ),
        ("eps", Box::new(|p| p.qk_norm.as_mut().unwrap().eps = -1e-6)),
        (
            "eps",
            Box::new(|p| p.qk_norm.as_mut().unwrap().eps = f64::NAN),
        ),
        ("softcap", Box::new(|p| p.softcap = Some(0.0))),
        ("softcap", Box::new(|p| p.softcap = Some(f64::NAN))),
        ("window", Box::new(|p| p.window = Some(0))),
        (
            "rotary_dim",
            Box::new(|p| p.rope.rotary_dim = p.head_dim + 2),
        ),
        ("rotary_dim", Box::new(|p| p.rope.rotary_dim = 3)),
        ("theta", Box::new(|p| p.rope.theta = 0.0)),
        ("theta", Box::new(|p| p.rope.theta = f64::INFINITY)),
        (
            "max_position_embeddings",
            Box::new(|p| p.rope.max_position_embeddings = 0),
        ),
        (
            "factor",
            Box::new(|p| p.rope.scaling = RopeScaling::Linear { factor: -1.0 }),
        ),
        (
            "factor",
            Box::new(|p| {
                p.rope.scaling = RopeScaling::Dynamic {
                    factor: f64::NAN,
                    original_max_position_embeddings: 8,
                }
            }),
        ),
        (
            "original_max_position_embeddings",
            Box::new(|p| {
                p.rope.scaling = RopeScaling::Dynamic {
                    factor: 2.0,
                    original_max_position_embeddings: 0,
                }
            }),
        ),
        (
            "rotary_dim",
            Box::new(|p| {
                p.rope.rotary_dim = 2;
                p.rope.scaling = RopeScaling::Dynamic {
                    factor: 2.0,
                    original_max_position_embeddings: 8,
                }
            }),
        ),
        ("high_freq_factor", Box::new(move |p| llama3(p, 2.0, 2.0))),
        ("low_freq_factor", Box::new(move |p| llama3(p, 0.0, 2.0))),
        (
            "high_freq_factor",
            Box::new(move |p| llama3(p, 1.0, f64::NAN)),
        ),
        (
            "beta_fast",
            Box::new(move |p| {
                if let RopeScaling::Yarn { beta_fast, .. } = yarn(p) {
                    *beta_fast = 0.0;
                }
            }),
        ),
        (
            "beta_slow",
            Box::new(move |p| {
                if let RopeScaling::Yarn { beta_slow, .. } = yarn(p) {
                    *beta_slow = -1.0;
                }
            }),
        ),
        (
            "mscale",
            Box::new(move |p| {
                if let RopeScaling::Yarn { mscale, .. } = yarn(p) {
                    *mscale = Some(f64::NAN);
                }
            }),
        ),
        (
            "mscale_all_dim",
            Box::new(move |p| {
                if let RopeScaling::Yarn { mscale_all_dim, .. } = yarn(p) {
                    *mscale_all_dim = Some(f64::INFINITY);
                }
            }),
        ),
        (
            "attention_factor",
            Box::new(move |p| {
                if let RopeScaling::Yarn {
                    attention_factor, ..
                } = yarn(p)
                {
                    *attention_factor = Some(0.0);
                }
            }),
        ),
        (
            "original_max_position_embeddings",
            Box::new(move |p| {
                if let RopeScaling::Yarn {
                    original_max_position_embeddings,
                    ..
                } = yarn(p)
                {
                    *original_max_position_embeddings = 0;
                }
            }),
        ),
        (
            "theta",
            Box::new(move |p| {
                yarn(p);
                p.rope.theta = 1.0;
            }),
        ),
    ];
    for (field, brk) in &breaks {
        let mut p = Parts::valid();
        brk(&mut p);
        let e = p.make().expect_err(field).to_string();
        assert!(e.contains(field), "breaking {field}: {e}");
    }
}

#[test]
fn bad_tokens_are_refused() {
    let layer = Parts::valid().make().unwrap();
    let d = layer.d_in();
    let mut x = Mat::<f64>::from_fn(5, d, |i, j| (i + j) as f64 * 0.1);
    x[(3, 1)] = f64::NAN;
    assert!(matches!(
        layer.forward(x.as_ref()),
        Err(Error::NonFinite { .. })
    ));
    assert!(matches!(
        layer.forward(Mat::<f64>::zeros(0, d).as_ref()),
        Err(Error::Empty { .. })
    ));
    assert!(matches!(
        layer.forward(Mat::<f64>::zeros(3, d + 1).as_ref()),
        Err(Error::Shape { .. })
    ));
    // Scores beyond f64 are an error, softcap or not, never a NaN or a silently capped value.
    let huge = Mat::<f64>::from_fn(4, d, |_, _| 1e200);
    let e = layer.forward(huge.as_ref()).unwrap_err().to_string();
    assert!(e.contains("qk_norm") && e.contains("overflow"), "{e}");
    let mut plain = layer.clone();
    plain.qk_norm = None;
    let e = plain.forward(huge.as_ref()).unwrap_err().to_string();
    assert!(e.contains("score") && e.contains("overflow"), "{e}");
    plain.window = None;
    let e = plain.forward(huge.as_ref()).unwrap_err().to_string();
    assert!(e.contains("score") && e.contains("overflow"), "{e}");
    // A zero query with eps = 0 has no direction to normalise.
    let mut no_eps = layer.clone();
    no_eps.qk_norm.as_mut().unwrap().eps = 0.0;
    no_eps.bq.fill(0.0);
    let e = no_eps
        .forward(Mat::<f64>::zeros(2, d).as_ref())
        .unwrap_err()
        .to_string();
    assert!(e.contains("eps"), "{e}");
    // A public field changed after `new` to an inconsistent value is an error too, not a panic.
    let mut broken = layer.clone();
    broken.kv_heads = 3;
    assert!(broken.forward(x.as_ref()).is_err());
}

fn inner(a: &Mat<f64>, b: &Mat<f64>) -> f64 {
    (0..a.nrows())
        .flat_map(|i| (0..a.ncols()).map(move |j| (i, j)))
        .map(|(i, j)| a[(i, j)] * b[(i, j)])
        .sum()
}

/// The JVP against central differences of the forward pass (step 1e-5: truncation about 1e-10,
/// rounding about 1e-11 relative), and the VJP against the JVP by adjointness
/// <dy, J dx> = <J^T dy, dx>, over the forward sweep's configurations.
#[test]
fn derivatives_match_finite_differences_and_each_other() {
    let (mut worst_fd, mut worst_adj, mut worst_out) = (0.0f64, 0.0f64, 0.0f64);
    for (idx, c) in cases(48).iter().enumerate() {
        let layer = build(c, 500 + idx as u64);
        let long: &[usize] = if idx < 8 { &[100] } else { &[] };
        for &n in [1, 2, 7, 33].iter().chain(long) {
            let mut r = SplitMix::new(9000 + idx as u64 * 13 + n as u64);
            let x = gauss(&mut r, n, c.d, 1.0);
            let dx = gauss(&mut r, n, c.d, 1.0);
            let dy = gauss(&mut r, n, c.d_out, 1.0);
            let (y, jdx) = layer.jvp(x.as_ref(), dx.as_ref()).unwrap();
            let e_out = rel_err(&y, &layer.forward(x.as_ref()).unwrap());
            assert!(e_out <= 1e-15, "case {idx} n={n}: JVP's output {e_out}");
            worst_out = worst_out.max(e_out);
            let h = 1e-5;
            let plus = layer.forward((&x + &dx * faer::Scale(h)).as_ref()).unwrap();
            let minus = layer.forward((&x - &dx * faer::Scale(h)).as_ref()).unwrap();
            let fd = (&plus - &minus) * faer::Scale(0.5 / h);
            let e_fd = rel_err(&jdx, &fd);
            assert!(
                e_fd <= 1e-6,
                "case {idx} {c:?} n={n}: JVP vs differences {e_fd}"
            );
            worst_fd = worst_fd.max(e_fd);
            let jtdy = layer.vjp(x.as_ref(), dy.as_ref()).unwrap();
            let (a, b) = (inner(&dy, &jdx), inner(&jtdy, &dx));
            let size = dy.norm_l2() * jdx.norm_l2() + jtdy.norm_l2() * dx.norm_l2();
            let e_adj = (a - b).abs() / size;
            assert!(
                e_adj <= 1e-12,
                "case {idx} {c:?} n={n}: <dy, J dx> {a} vs <J^T dy, dx> {b}"
            );
            worst_adj = worst_adj.max(e_adj);
        }
    }
    eprintln!(
        "JVP vs central differences: max rel err {worst_fd:e}; adjointness: max rel gap {worst_adj:e}; JVP output vs forward {worst_out:e}"
    );
}

/// Tangents and cotangents of the wrong shape or with NaN are refused like the input tokens.
#[test]
fn bad_tangents_are_refused() {
    let layer = Parts::valid().make().unwrap();
    let (n, d) = (4, layer.d_in());
    let x = Mat::<f64>::from_fn(n, d, |i, j| (i * j) as f64 * 0.1);
    let mut dx = Mat::<f64>::zeros(n, d);
    assert!(matches!(
        layer.jvp(x.as_ref(), Mat::<f64>::zeros(n + 1, d).as_ref()),
        Err(Error::Shape { .. })
    ));
    dx[(1, 1)] = f64::NAN;
    assert!(matches!(
        layer.jvp(x.as_ref(), dx.as_ref()),
        Err(Error::NonFinite { .. })
    ));
    let mut dy = Mat::<f64>::zeros(n, layer.d_out());
    assert!(matches!(
        layer.vjp(x.as_ref(), Mat::<f64>::zeros(n, layer.d_out() + 1).as_ref()),
        Err(Error::Shape { .. })
    ));
    dy[(0, 0)] = f64::INFINITY;
    assert!(matches!(
        layer.vjp(x.as_ref(), dy.as_ref()),
        Err(Error::NonFinite { .. })
    ));
}

/// transformers' own attention modules (Llama with llama3 scaling and biases, Mistral with
/// dynamic scaling past max_position_embeddings and a window, Qwen3 with qk-norm, YaRN,
/// multi-query and a window, Gemma 2 with softcap, query_pre_attn_scalar and a window, Gemma 3
/// with its 1 + w qk-norm and linear scaling), run in
/// float64 by scripts/rotary_reference.py. transformers' rope (and qk-norm) is float32 inside,
/// hence the 1e-6 tolerance (5e-8 seen); a wrong pairing, order or mask is off by O(1).
#[test]
fn transformers_attention_modules() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/rotary_transformers.json");
    let cases: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let mat = |v: &serde_json::Value| -> Mat<f64> {
        let rows = v.as_array().unwrap();
        let cols = rows[0].as_array().unwrap().len();
        Mat::from_fn(rows.len(), cols, |i, j| rows[i][j].as_f64().unwrap())
    };
    let vec = |v: &serde_json::Value| -> Vec<f64> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap())
            .collect()
    };
    let cases = cases.as_array().unwrap();
    assert_eq!(cases.len(), 5);
    for c in cases {
        let name = c["name"].as_str().unwrap();
        let w = &c["weights"];
        let (heads, kv_heads, hd) = (
            c["heads"].as_u64().unwrap() as usize,
            c["kv_heads"].as_u64().unwrap() as usize,
            c["head_dim"].as_u64().unwrap() as usize,
        );
        let bias = |key: &str, len: usize| {
            if w.get(key).is_some() {
                vec(&w[key])
            } else {
                vec![0.0; len]
            }
        };
        let r = &c["rope"];
        let f = |k: &str| r[k].as_f64().unwrap();
        let u = |k: &str| r[k].as_u64().unwrap() as usize;
        let scaling = match r["type"].as_str().unwrap() {
            "default" => RopeScaling::Default,
            "linear" => RopeScaling::Linear {
                factor: f("factor"),
            },
            "dynamic" => RopeScaling::Dynamic {
                factor: f("factor"),
                original_max_position_embeddings: u("original"),
            },
            "llama3" => RopeScaling::Llama3 {
                factor: f("factor"),
                low_freq_factor: f("low"),
                high_freq_factor: f("high"),
                original_max_position_embeddings: u("original"),
            },
            "yarn" => RopeScaling::Yarn {
                factor: f("factor"),
                original_max_position_embeddings: u("original"),
                beta_fast: f("beta_fast"),
                beta_slow: f("beta_slow"),
                mscale: None,
                mscale_all_dim: None,
                attention_factor: None,
                truncate: true,
            },
            other => panic!("{other}"),
        };
        let qk_norm = w.get("q_norm.weight").map(|q| QkNorm {
            q_weight: vec(q),
            k_weight: vec(&w["k_norm.weight"]),
            eps: c["eps"].as_f64().unwrap(),
            unit_offset: c.get("unit_offset").is_some(),
        });
        let wo = mat(&w["o_proj.weight"]);
        let bo = bias("o_proj.bias", wo.nrows());
        let layer = RotaryAttention::new(
            heads,
            kv_heads,
            hd,
            mat(&w["q_proj.weight"]),
            bias("q_proj.bias", heads * hd),
            mat(&w["k_proj.weight"]),
            bias("k_proj.bias", kv_heads * hd),
            mat(&w["v_proj.weight"]),
            bias("v_proj.bias", kv_heads * hd),
            wo,
            bo,
            c["score_divisor_sq"].as_u64().unwrap() as usize,
            Rope {
                theta: f("theta"),
                rotary_dim: hd,
                max_position_embeddings: u("max_pos"),
                scaling,
            },
            qk_norm,
            c["softcap"].as_f64(),
            c["window"].as_u64().map(|w| w as usize),
        )
        .unwrap();
        let x = mat(&c["x"]);
        let y = layer.forward(x.as_ref()).unwrap();
        let e = rel_err(&y, &mat(&c["y"]));
        eprintln!("{name}: rel err against transformers {e:e}");
        assert!(e <= 1e-6, "{name}: rel err {e}");
        // With transformers' float32 steps in float64 (all but Gemma 3): the output and the
        // derivatives torch.func takes of it agree to rounding.
        if c.get("y64").is_none() {
            assert!(name.starts_with("gemma3"), "{name}: no float64 reference");
            continue;
        }
        let e = rel_err(&y, &mat(&c["y64"]));
        let (y2, t) = layer.jvp(x.as_ref(), mat(&c["dx"]).as_ref()).unwrap();
        let ej = rel_err(&t, &mat(&c["jvp"]));
        let xbar = layer.vjp(x.as_ref(), mat(&c["dy"]).as_ref()).unwrap();
        let ev = rel_err(&xbar, &mat(&c["vjp"]));
        eprintln!("{name}: float64 reference: forward {e:e}, jvp {ej:e}, vjp {ev:e}");
        assert!(
            rel_err(&y2, &y) <= 1e-15,
            "{name}: jvp's output differs from forward"
        );
        for (what, err) in [("forward", e), ("jvp", ej), ("vjp", ev)] {
            assert!(
                err <= 1e-10,
                "{name}: {what} rel err {err:e} against float64 transformers"
            );
        }
    }
}
