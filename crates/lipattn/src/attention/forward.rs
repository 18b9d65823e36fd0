//! The forward operator: Gamma_mu at query points, self- and cross-attention on measures.

use super::layer::{AttentionLayer, Kernel};
use super::softmax::softmax_columns;
use crate::error::{Error, Result};
use crate::measure::Measure;
use crate::scalar::Scalar;
use faer::{Mat, MatRef, Par};
use rayon::prelude::*;

pub(crate) use crate::linalg::gemm::{gemm, gemm_blocks_rayon, par_for};

/// x W^T + 1 b^T for the rows of x.
pub(crate) fn affine<T: Scalar>(x: MatRef<'_, T>, w: MatRef<'_, T>, b: &[T]) -> Mat<T> {
    let mut out = Mat::<T>::zeros(x.nrows(), w.nrows());
    gemm(
        out.as_mut(),
        false,
        x,
        w.transpose(),
        T::of(1.0),
        par_for(x.nrows(), w.nrows(), x.ncols()),
    );
    for (j, &bj) in b.iter().enumerate() {
        for v in out.col_as_slice_mut(j) {
            *v += bj;
        }
    }
    out
}

/// P_h^T (keys x queries) for one head from its query and key projections, with s the layer's
/// score scale (1/sqrt(dk) by default).
/// Dot: logits = s q_i.k_j. L2 (tied): -s ||q_i - k_j||^2, whose term in q_i alone cancels in
/// the softmax, leaving s (2 q_i.k_j - ||k_j||^2).
pub(crate) fn head_probabilities_t<T: Scalar>(
    kernel: Kernel,
    s: T,
    q: MatRef<'_, T>,
    k: MatRef<'_, T>,
    log_w: &[T],
    causal: bool,
) -> Result<Mat<T>> {
    let mut lt = Mat::<T>::zeros(k.nrows(), q.nrows());
    match kernel {
        Kernel::Dot => gemm(lt.as_mut(), false, k, q.transpose(), s, Par::Seq),
        Kernel::L2 => {
            gemm(lt.as_mut(), false, k, q.transpose(), s + s, Par::Seq);
            let norms: Vec<T> = (0..k.nrows())
                .map(|j| {
                    let mut acc = T::of(0.0);
                    for c in 0..k.ncols() {
                        acc += k[(j, c)] * k[(j, c)];
                    }
                    acc * s
                })
                .collect();
            for i in 0..lt.ncols() {
                for (l, &nj) in lt.col_as_slice_mut(i).iter_mut().zip(&norms) {
                    *l -= nj;
                }
            }
        }
    }
    softmax_columns(lt.as_mut(), log_w, causal)?;
    Ok(lt)
}

/// Checks a token matrix: width d, at least one row, finite entries.
pub(crate) fn check_tokens<T: Scalar>(what: &str, x: MatRef<'_, T>, d: usize) -> Result<()> {
    if x.nrows() == 0 {
        return Err(Error::Empty {
            what: format!("{what} (no tokens)"),
        });
    }
    if x.ncols() != d {
        return Err(Error::shape(
            format!("{what} width"),
            format!("{d} (the layer's input dimension)"),
            x.ncols().to_string(),
        ));
    }
    for j in 0..x.ncols() {
        // Fast path: a finite sum of squares proves the column finite (a vectorised pass; the
        // element scan below runs only if it overflowed or met NaN/inf).
        if let Some(col) = x.col(j).try_as_col_major() {
            if super::softmax::dot(col.as_slice(), col.as_slice()).is_finite() {
                continue;
            }
        }
        for i in 0..x.nrows() {
            let v = x[(i, j)];
            if !v.is_finite() {
                return Err(Error::NonFinite {
                    what: format!("{what} (row {i}, column {j})"),
                    index: i * x.ncols() + j,
                    value: v.f64(),
                });
            }
        }
    }
    Ok(())
}

/// log w for a context of n atoms: uniform when `weights` is None.
pub(crate) fn log_weights<T: Scalar>(weights: Option<&[f64]>, n: usize) -> Result<Vec<T>> {
    match weights {
        None => Ok(vec![T::of(-(n as f64).ln()); n]),
        Some(w) => {
            crate::measure::validate_weights("context weights", w, n)?;
            let sum: f64 = w.iter().sum();
            if (sum - 1.0).abs() > crate::measure::WEIGHT_SUM_TOL {
                return Err(Error::NotNormalised {
                    what: "context weights".into(),
                    sum,
                    tol: crate::measure::WEIGHT_SUM_TOL,
                });
            }
            Ok(w.iter().map(|&x| T::of(x.ln())).collect())
        }
    }
}

/// Per-head state of attention from `queries` to a context: projections and P^T per head.
pub(crate) struct AttentionState<T: Scalar> {
    /// Query projections, (nq x H dk).
    pub q: Mat<T>,
    /// Key projections, (nc x H dk); for the tied L2 kernel the context's query projections.
    pub k: Mat<T>,
    /// Value projections, (nc x H dv).
    pub v: Mat<T>,
    /// P_h^T, (nc x nq) per head.
    pub p_t: Vec<Mat<T>>,
    /// Concatenated head outputs, (nq x H dv).
    pub o: Mat<T>,
}

impl<T: Scalar> AttentionLayer<T> {
    pub(crate) fn state(
        &self,
        queries: MatRef<'_, T>,
        context: MatRef<'_, T>,
        weights: Option<&[f64]>,
        causal: bool,
        same_points: bool,
    ) -> Result<AttentionState<T>> {
        let d = self.d_in();
        check_tokens("queries", queries, d)?;
        if !same_points {
            check_tokens("context", context, d)?;
        }
        let (nq, nc) = (queries.nrows(), context.nrows());
        if causal && nq != nc {
            return Err(Error::invalid(format!(
                "a causal mask needs as many queries as context tokens (found {nq} and {nc})"
            )));
        }
        self.check_state_budget(nq, nc)?;
        let log_w = log_weights::<T>(weights, nc)?;
        let q = affine(queries, self.wq.as_ref(), &self.bq);
        let k = match (self.kernel, same_points) {
            (Kernel::Dot, _) => affine(context, self.wk.as_ref(), &self.bk),
            (Kernel::L2, true) => q.clone(),
            (Kernel::L2, false) => affine(context, self.wq.as_ref(), &self.bq),
        };
        let v = affine(context, self.wv.as_ref(), &self.bv);
        let (dk, dv) = (self.dk, self.dv);
        let kernel = self.kernel;
        let s = self.score_scale::<T>();
        let p_t: Vec<Mat<T>> = (0..self.heads)
            .into_par_iter()
            .map(|h| {
                head_probabilities_t(
                    kernel,
                    s,
                    q.as_ref().subcols(h * dk, dk),
                    k.as_ref().subcols(h * dk, dk),
                    &log_w,
                    causal,
                )
            })
            .collect::<Result<_>>()?;
        let mut o = Mat::<T>::zeros(nq, self.heads * dv);
        o.as_mut()
            .par_col_chunks_mut(dv)
            .enumerate()
            .for_each(|(h, oh)| {
                gemm(
                    oh,
                    false,
                    p_t[h].transpose(),
                    v.as_ref().subcols(h * dv, dv),
                    T::of(1.0),
                    Par::Seq,
                );
            });
        Ok(AttentionState { q, k, v, p_t, o })
    }

    /// The output projection: O W_O^T + 1 b_O^T.
    pub(crate) fn output(&self, o: MatRef<'_, T>) -> Mat<T> {
        affine(o, self.wo.as_ref(), &self.bo)
    }

    /// Gamma_mu at each row of `queries`, for the context mu with atoms `context` and masses
    /// `weights` (uniform when None): rows of the result are Gamma_mu(query_i), width d_out.
    /// With `causal`, query i sees context atoms 0..=i only (sequences; not a measure operation).
    pub fn gamma(
        &self,
        queries: MatRef<'_, T>,
        context: MatRef<'_, T>,
        weights: Option<&[f64]>,
        causal: bool,
    ) -> Result<Mat<T>> {
        let st = self.state(queries, context, weights, causal, false)?;
        Ok(self.output(st.o.as_ref()))
    }

    /// The attention sublayer on a token sequence X (uniform weights): row i of the result is
    /// Gamma_mu(x_i) with mu the empirical measure of X; this equals standard attention.
    /// Bytes of the dense attention state of `nq` queries over `nc` tokens: one nq x nc
    /// probability matrix per head, and as much again while it is formed (None: beyond u64).
    /// The one formula behind the dense state's budget check, the `auto` choice of
    /// `derivatives::AttentionMemory` and `analyze`'s estimate.
    pub fn state_bytes(&self, nq: usize, nc: usize) -> Option<u64> {
        crate::budget::bytes_of(&[2, self.heads, nq, nc], std::mem::size_of::<T>() as u64)
    }

    /// The budget check of the dense state (`state_bytes`), made before any of it is allocated.
    pub fn check_state_budget(&self, nq: usize, nc: usize) -> Result<()> {
        crate::budget::check(
            || {
                format!(
                    "attention of {nq} queries over {nc} tokens with {} heads (the score matrices)",
                    self.heads
                )
            },
            self.state_bytes(nq, nc),
        )
    }

    pub fn forward(
        &self,
        x: MatRef<'_, T>,
        weights: Option<&[f64]>,
        causal: bool,
    ) -> Result<Mat<T>> {
        let st = self.state(x, x, weights, causal, true)?;
        Ok(self.output(st.o.as_ref()))
    }
}

impl AttentionLayer<f64> {
    /// The attention kernel of head `h` as a row-stochastic matrix: P_ij = w_j e^{s_ij} / Z_i
    /// (nq x nc), the discrete K_mu(x_i, dy) of docs/background.md#notation.
    pub fn probabilities(
        &self,
        h: usize,
        queries: MatRef<'_, f64>,
        context: MatRef<'_, f64>,
        weights: Option<&[f64]>,
        causal: bool,
    ) -> Result<Mat<f64>> {
        let single = self.head(h, false)?;
        let st = single.state(queries, context, weights, causal, false)?;
        Ok(st.p_t[0].transpose().to_owned())
    }

    /// Scores s(x_i, y_j) of head `h` (nq x nc), before log-weights and softmax; for L2 the full
    /// -||W_Q x - W_Q y||^2 / sqrt(dk).
    pub fn scores(
        &self,
        h: usize,
        queries: MatRef<'_, f64>,
        context: MatRef<'_, f64>,
    ) -> Result<Mat<f64>> {
        let single = self.head(h, false)?;
        check_tokens("queries", queries, self.d_in())?;
        check_tokens("context", context, self.d_in())?;
        let q = affine(queries, single.wq.as_ref(), &single.bq);
        let (kw, kb) = match self.kernel {
            Kernel::Dot => (&single.wk, &single.bk),
            Kernel::L2 => (&single.wq, &single.bq),
        };
        let k = affine(context, kw.as_ref(), kb);
        let s = self.score_scale::<f64>();
        Ok(Mat::from_fn(q.nrows(), k.nrows(), |i, j| {
            let qi = q.row(i);
            let kj = k.row(j);
            match self.kernel {
                Kernel::Dot => s * (0..self.dk).map(|c| qi[c] * kj[c]).sum::<f64>(),
                Kernel::L2 => -s * (0..self.dk).map(|c| (qi[c] - kj[c]).powi(2)).sum::<f64>(),
            }
        }))
    }

    /// Self-attention as a map on measures: F(mu) = (Gamma_mu)_# mu.
    pub fn self_attention(&self, mu: &Measure) -> Result<Measure> {
        let y = self.forward(mu.points(), Some(mu.weights()), false)?;
        Measure::new(y, mu.weights().to_vec())
    }

    /// Cross-attention: C(mu, nu) = (Gamma_nu)_# mu (queries from mu, keys and values from nu).
    pub fn cross_attention(&self, mu: &Measure, nu: &Measure) -> Result<Measure> {
        let y = self.gamma(mu.points(), nu.points(), Some(nu.weights()), false)?;
        Measure::new(y, mu.weights().to_vec())
    }

    /// Gamma_mu at arbitrary query points.
    pub fn gamma_measure(&self, queries: MatRef<'_, f64>, context: &Measure) -> Result<Mat<f64>> {
        self.gamma(queries, context.points(), Some(context.weights()), false)
    }
}

/// Exact shape and finiteness check of a tangent or cotangent.
pub(crate) fn check_shape<T: Scalar>(
    what: &str,
    m: MatRef<'_, T>,
    rows: usize,
    cols: usize,
) -> Result<()> {
    check_dims(what, m.nrows(), m.ncols(), rows, cols)?;
    check_tokens(what, m, cols)
}

/// The shape alone, for buffers that are about to be overwritten.
pub(crate) fn check_dims(
    what: &str,
    nrows: usize,
    ncols: usize,
    rows: usize,
    cols: usize,
) -> Result<()> {
    if nrows != rows || ncols != cols {
        return Err(Error::shape(
            what,
            format!("{rows}x{cols}"),
            format!("{nrows}x{ncols}"),
        ));
    }
    Ok(())
}
