//! Primal network simplex for the balanced transportation problem on the complete bipartite
//! graph (sources `0..n`, sinks `n..n+m`), in the form of LEMON's `NetworkSimplex` (the solver
//! behind POT's `ot.emd`): an artificial root joined to every node, a spanning tree stored as
//! parent / thread / reverse-thread / subtree-size / last-successor arrays, block search pricing,
//! and Cunningham's leaving-arc rule, which keeps the tree strongly feasible and so prevents
//! cycling on degenerate pivots.
//!
//! Differences from LEMON, all for f64 supplies and certification:
//! * flows live on tree nodes (the arc to the parent); off-tree flows are zero by definition,
//!   so memory is `O(nm)` bytes of arc state plus `O(n + m)` floats;
//! * the artificial cost is `2 max|C|` (enough on a complete bipartite graph, where any source
//!   reaches any sink directly) rather than LEMON's `(max C + 1)(n + m)`, which keeps potentials at
//!   the scale of the costs and reduced costs accurate;
//! * pricing ignores reduced costs above `-tol` (rounding noise), and at the end the potentials are
//!   recomputed from the tree and pricing rerun until clean, so drift cannot hide a negative arc;
//! * flows are recomputed from the tree and the supplies at the end, and the source potentials
//!   are replaced by the c-transform of the sink potentials, which makes them dual feasible up to
//!   one rounding.

use super::CostMatrix;
use crate::error::{Error, Result};

pub(crate) const DEFAULT_MAX_PIVOTS: u64 = u64::MAX;

const NONE: usize = usize::MAX;

pub(crate) struct Solution {
    pub plan: Vec<(usize, usize, f64)>,
    pub u: Vec<f64>,
    pub v: Vec<f64>,
    pub iterations: u64,
}

pub(crate) fn solve(a: &[f64], b: &[f64], cost: &CostMatrix, max_pivots: u64) -> Result<Solution> {
    let (sa, sb): (f64, f64) = (a.iter().sum(), b.iter().sum());
    // The root must absorb (never supply) the rounding mismatch of the totals, so that excess mass
    // sits on zero-cost artificial arcs; transposing makes the source side the heavier one.
    if sb > sa {
        let t = cost.transposed();
        let s = Simplex::new(b, a, &t).run(max_pivots)?;
        let mut plan: Vec<_> = s.plan.into_iter().map(|(j, i, f)| (i, j, f)).collect();
        plan.sort_unstable_by_key(|&(i, j, _)| (i, j));
        return Ok(Solution {
            plan,
            u: s.v,
            v: s.u,
            iterations: s.iterations,
        });
    }
    Simplex::new(a, b, cost).run(max_pivots)
}

struct Simplex<'c> {
    n: usize,
    m: usize,
    cost: &'c [f64],
    art_cost: f64,
    tol: f64,
    /// 1 for arcs at their lower bound (candidates), 0 for tree arcs.
    state: Vec<u8>,
    supply: Vec<f64>,
    parent: Vec<usize>,
    /// Arc to the parent: `e < n m` is the real arc `(e / m, e % m)`, `n m + u` the artificial arc of `u`.
    pred: Vec<usize>,
    /// True when the arc to the parent points from the node to the parent.
    up: Vec<bool>,
    /// Flow on the arc to the parent.
    flow: Vec<f64>,
    thread: Vec<usize>,
    rev_thread: Vec<usize>,
    succ_num: Vec<usize>,
    last_succ: Vec<usize>,
    pi: Vec<f64>,
    dirty_revs: Vec<usize>,
    next_arc: usize,
    block: usize,
}

impl<'c> Simplex<'c> {
    fn new(a: &[f64], b: &[f64], cost: &'c CostMatrix) -> Self {
        let (n, m) = (a.len(), b.len());
        let nodes = n + m;
        let root = nodes;
        let cmax = cost.max_abs();
        let art_cost = if cmax > 0.0 { 2.0 * cmax } else { 1.0 };
        let (sa, sb): (f64, f64) = (a.iter().sum(), b.iter().sum());
        let mut supply: Vec<f64> = a.iter().copied().chain(b.iter().map(|&w| -w)).collect();
        supply.push(sb - sa);
        let mut s = Simplex {
            n,
            m,
            cost: cost.as_slice(),
            art_cost,
            tol: 64.0 * f64::EPSILON * cmax,
            state: vec![1; n * m],
            supply,
            parent: vec![root; nodes + 1],
            pred: (0..=nodes).map(|u| n * m + u).collect(),
            up: vec![true; nodes + 1],
            flow: vec![0.0; nodes + 1],
            thread: (1..=nodes + 1).collect(),
            rev_thread: vec![0; nodes + 1],
            succ_num: vec![1; nodes + 1],
            last_succ: (0..=nodes).collect(),
            pi: vec![0.0; nodes + 1],
            dirty_revs: Vec::new(),
            next_arc: 0,
            block: ((((n * m) as f64).sqrt()) as usize).max(10).min(n * m),
        };
        s.parent[root] = NONE;
        s.thread[root] = 0;
        for u in 1..=nodes {
            s.rev_thread[u] = u - 1;
        }
        s.rev_thread[0] = root;
        s.succ_num[root] = nodes + 1;
        s.last_succ[root] = nodes - 1;
        for u in 0..nodes {
            // Nodes with supply >= 0 (sources, and sinks of zero weight) send it to the root at
            // cost 0; sinks are fed from the root at the artificial cost. Every zero-flow arc then
            // points toward the root, along which flow can always be pushed (no capacities): the
            // initial tree is strongly feasible.
            if s.supply[u] >= 0.0 {
                s.up[u] = true;
                s.flow[u] = s.supply[u];
                s.pi[u] = 0.0;
            } else {
                s.up[u] = false;
                s.flow[u] = -s.supply[u];
                s.pi[u] = art_cost;
            }
        }
        s
    }

    #[inline]
    fn arc_cost(&self, e: usize, u: usize) -> f64 {
        if e < self.n * self.m {
            self.cost[e]
        } else if self.up[u] {
            0.0
        } else {
            self.art_cost
        }
    }

    /// Block search (LEMON/POT): scan blocks of about sqrt(nm) arcs, cyclically from where the
    /// last search stopped, and take the most negative reduced cost of the first block that has one.
    fn find_entering(&mut self) -> Option<usize> {
        let (n, m) = (self.n, self.m);
        let total = n * m;
        let (pi_src, pi_dst) = self.pi.split_at(n);
        let pi_dst = &pi_dst[..m];
        let mut best = -self.tol;
        let mut found = NONE;
        let mut e = self.next_arc;
        let mut remaining = total;
        let mut left_in_block = self.block;
        while remaining > 0 {
            let i = e / m;
            let j0 = e - i * m;
            let len = (m - j0).min(left_in_block).min(remaining);
            let pi_i = pi_src[i];
            let row = &self.cost[e..e + len];
            let st = &self.state[e..e + len];
            let pd = &pi_dst[j0..j0 + len];
            for (k, ((&c, &s), &p)) in row.iter().zip(st).zip(pd).enumerate() {
                let r = c + pi_i - p;
                if r < best && s != 0 {
                    best = r;
                    found = e + k;
                }
            }
            e += len;
            if e == total {
                e = 0;
            }
            remaining -= len;
            left_in_block -= len;
            if left_in_block == 0 {
                if found != NONE {
                    break;
                }
                left_in_block = self.block;
            }
        }
        self.next_arc = e;
        (found != NONE).then_some(found)
    }

    fn pivot(&mut self, in_arc: usize) -> Result<()> {
        let (n, m) = (self.n, self.m);
        let src = in_arc / m;
        let dst = n + in_arc % m;

        // Join node: the first common ancestor.
        let (mut u, mut v) = (src, dst);
        while u != v {
            if self.succ_num[u] < self.succ_num[v] {
                u = self.parent[u];
            } else {
                v = self.parent[v];
            }
        }
        let join = u;

        // Leaving arc: the last blocking arc in the cycle's orientation (strict on the first
        // path, non-strict on the second), which keeps the tree strongly feasible.
        let (first, second) = (src, dst);
        let mut delta = f64::INFINITY;
        let mut u_out = NONE;
        let mut result = 0;
        let mut u = first;
        while u != join {
            if self.up[u] && self.flow[u] < delta {
                delta = self.flow[u];
                u_out = u;
                result = 1;
            }
            u = self.parent[u];
        }
        let mut u = second;
        while u != join {
            if !self.up[u] && self.flow[u] <= delta {
                delta = self.flow[u];
                u_out = u;
                result = 2;
            }
            u = self.parent[u];
        }
        if result == 0 {
            return Err(Error::Numerical(
                "network simplex: unbounded cycle (invalid cost matrix?)".into(),
            ));
        }
        let (u_in, v_in) = if result == 1 {
            (first, second)
        } else {
            (second, first)
        };

        // Augment; monotone f64 subtraction keeps every flow >= 0 and zeroes the leaving arc.
        if delta > 0.0 {
            let mut u = first;
            while u != join {
                if self.up[u] {
                    self.flow[u] -= delta;
                } else {
                    self.flow[u] += delta;
                }
                u = self.parent[u];
            }
            let mut u = second;
            while u != join {
                if self.up[u] {
                    self.flow[u] += delta;
                } else {
                    self.flow[u] -= delta;
                }
                u = self.parent[u];
            }
        }
        self.state[in_arc] = 0;
        let out_arc = self.pred[u_out];
        if out_arc < n * m {
            self.state[out_arc] = 1;
        }

        self.update_tree(in_arc, src, join, u_in, v_in, u_out, delta);

        // Shift the potentials of the moved subtree so that the entering arc has reduced cost 0.
        let c = self.cost[in_arc];
        let sigma = self.pi[v_in] - self.pi[u_in] - if self.up[u_in] { c } else { -c };
        let end = self.thread[self.last_succ[u_in]];
        let mut u = u_in;
        while u != end {
            self.pi[u] += sigma;
            u = self.thread[u];
        }
        Ok(())
    }

    /// LEMON's `updateTreeStructure`, carrying the node-held flows along with `pred`.
    #[allow(clippy::too_many_arguments)]
    fn update_tree(
        &mut self,
        in_arc: usize,
        src: usize,
        join: usize,
        u_in: usize,
        v_in: usize,
        u_out: usize,
        delta: f64,
    ) {
        let old_rev_thread = self.rev_thread[u_out];
        let old_succ_num = self.succ_num[u_out];
        let old_last_succ = self.last_succ[u_out];
        let v_out = self.parent[u_out];

        if u_in == u_out {
            self.parent[u_in] = v_in;
            self.pred[u_in] = in_arc;
            self.up[u_in] = u_in == src;
            self.flow[u_in] = delta;
            if self.thread[v_in] != u_out {
                let mut after = self.thread[old_last_succ];
                self.thread[old_rev_thread] = after;
                self.rev_thread[after] = old_rev_thread;
                after = self.thread[v_in];
                self.thread[v_in] = u_out;
                self.rev_thread[u_out] = v_in;
                self.thread[old_last_succ] = after;
                self.rev_thread[after] = old_last_succ;
            }
        } else {
            let thread_continue = if old_rev_thread == v_in {
                self.thread[old_last_succ]
            } else {
                self.thread[v_in]
            };
            let mut stem = u_in;
            let mut par_stem = v_in;
            let mut last = self.last_succ[u_in];
            let mut after = self.thread[last];
            self.thread[v_in] = u_in;
            self.dirty_revs.clear();
            self.dirty_revs.push(v_in);
            while stem != u_out {
                let next_stem = self.parent[stem];
                self.thread[last] = next_stem;
                self.dirty_revs.push(last);
                let before = self.rev_thread[stem];
                self.thread[before] = after;
                self.rev_thread[after] = before;
                self.parent[stem] = par_stem;
                par_stem = stem;
                stem = next_stem;
                last = if self.last_succ[stem] == self.last_succ[par_stem] {
                    self.rev_thread[par_stem]
                } else {
                    self.last_succ[stem]
                };
                after = self.thread[last];
            }
            self.parent[u_out] = par_stem;
            self.thread[last] = thread_continue;
            self.rev_thread[thread_continue] = last;
            self.last_succ[u_out] = last;
            if old_rev_thread != v_in {
                self.thread[old_rev_thread] = after;
                self.rev_thread[after] = old_rev_thread;
            }
            for k in 0..self.dirty_revs.len() {
                let u = self.dirty_revs[k];
                let t = self.thread[u];
                self.rev_thread[t] = u;
            }
            let mut tmp_sc = 0usize;
            let tmp_ls = self.last_succ[u_out];
            let mut u = u_out;
            while u != u_in {
                let p = self.parent[u];
                self.pred[u] = self.pred[p];
                self.up[u] = !self.up[p];
                self.flow[u] = self.flow[p];
                tmp_sc = tmp_sc + self.succ_num[u] - self.succ_num[p];
                self.succ_num[u] = tmp_sc;
                self.last_succ[p] = tmp_ls;
                u = p;
            }
            self.pred[u_in] = in_arc;
            self.up[u_in] = u_in == src;
            self.flow[u_in] = delta;
            self.succ_num[u_in] = old_succ_num;
        }

        let up_limit_out = if self.last_succ[join] == v_in {
            join
        } else {
            NONE
        };
        let last_succ_out = self.last_succ[u_out];
        let mut u = v_in;
        while u != NONE && self.last_succ[u] == v_in {
            self.last_succ[u] = last_succ_out;
            u = self.parent[u];
        }
        if join != old_rev_thread && v_in != old_rev_thread {
            let mut u = v_out;
            while u != up_limit_out && self.last_succ[u] == old_last_succ {
                self.last_succ[u] = old_rev_thread;
                u = self.parent[u];
            }
        } else if last_succ_out != old_last_succ {
            let mut u = v_out;
            while u != up_limit_out && self.last_succ[u] == old_last_succ {
                self.last_succ[u] = last_succ_out;
                u = self.parent[u];
            }
        }
        let mut u = v_in;
        while u != join {
            self.succ_num[u] += old_succ_num;
            u = self.parent[u];
        }
        let mut u = v_out;
        while u != join {
            self.succ_num[u] -= old_succ_num;
            u = self.parent[u];
        }
    }

    /// Potentials from the tree alone (root 0, preorder), discarding accumulated drift.
    fn recompute_potentials(&mut self) {
        let root = self.n + self.m;
        self.pi[root] = 0.0;
        let mut u = self.thread[root];
        while u != root {
            let p = self.parent[u];
            let c = self.arc_cost(self.pred[u], u);
            self.pi[u] = if self.up[u] {
                self.pi[p] - c
            } else {
                self.pi[p] + c
            };
            u = self.thread[u];
        }
    }

    /// Flows from the tree and the supplies alone: the arc above `u` carries the net supply of
    /// the subtree of `u`. Children precede parents in reverse preorder.
    fn recompute_flows(&mut self) {
        let root = self.n + self.m;
        let mut sub = self.supply.clone();
        let mut u = self.rev_thread[root];
        while u != root {
            let p = self.parent[u];
            self.flow[u] = if self.up[u] { sub[u] } else { -sub[u] };
            sub[p] += sub[u];
            u = self.rev_thread[u];
        }
    }

    fn run(mut self, max_pivots: u64) -> Result<Solution> {
        let mut iterations = 0u64;
        let mut clean = false;
        loop {
            // A cheap thread-local read; pivots cost far more.
            crate::cancel::check()?;
            match self.find_entering() {
                Some(e) => {
                    if iterations >= max_pivots {
                        return Err(Error::Numerical(format!(
                            "network simplex: pivot limit {max_pivots} reached"
                        )));
                    }
                    self.pivot(e)?;
                    iterations += 1;
                    clean = false;
                }
                None if clean => break,
                None => {
                    self.recompute_potentials();
                    clean = true;
                }
            }
        }
        self.recompute_flows();
        Ok(self.extract(iterations))
    }

    fn extract(&self, iterations: u64) -> Solution {
        let (n, m) = (self.n, self.m);
        let mut plan = Vec::with_capacity(n + m);
        for u in 0..n + m {
            let e = self.pred[u];
            // Degenerate tree arcs can come out at -1 ulp from the recomputation; they carry no mass.
            if e < n * m && self.flow[u] > 0.0 {
                plan.push((e / m, e % m, self.flow[u]));
            }
        }
        plan.sort_unstable_by_key(|&(i, j, _)| (i, j));
        let v: Vec<f64> = self.pi[n..n + m].to_vec();
        // u_i = min_j (C_ij - v_j): the best source potentials for these sink potentials. Equal to
        // -pi_i up to rounding when the basis is optimal, and dual feasible by construction.
        let u: Vec<f64> = (0..n)
            .map(|i| {
                let row = &self.cost[i * m..(i + 1) * m];
                row.iter()
                    .zip(&v)
                    .fold(f64::INFINITY, |acc, (&c, &vj)| acc.min(c - vj))
            })
            .collect();
        Solution {
            plan,
            u,
            v,
            iterations,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Thread is a preorder of the tree, subtree sizes and last successors agree with it, and
    /// the tree is strongly feasible: every node can push flow to the root, i.e. no zero-flow
    /// arc points away from it.
    fn check_tree(s: &Simplex) {
        let root = s.n + s.m;
        let mut order = vec![root];
        let mut u = s.thread[root];
        while u != root {
            order.push(u);
            u = s.thread[u];
        }
        assert_eq!(
            order.len(),
            root + 1,
            "thread does not visit every node once"
        );
        let mut pos = vec![0; root + 1];
        for (k, &u) in order.iter().enumerate() {
            pos[u] = k;
            assert_eq!(s.thread[s.rev_thread[u]], u);
        }
        for &u in &order {
            let last = s.last_succ[u];
            assert_eq!(pos[last] + 1 - pos[u], s.succ_num[u], "subtree of {u}");
            if u != root {
                let p = s.parent[u];
                assert!(pos[p] < pos[u] && pos[u] <= pos[s.last_succ[p]]);
                assert!(s.flow[u] >= 0.0);
                assert!(
                    s.up[u] || s.flow[u] > 0.0,
                    "zero-flow arc away from the root at {u}"
                );
            }
        }
    }

    #[test]
    fn tree_invariants_hold_through_degenerate_pivots() {
        // Integer costs and equal weights: most pivots are degenerate.
        for (n, m, zero) in [(6, 6, false), (5, 9, false), (9, 4, true)] {
            let c: Vec<f64> = (0..n * m).map(|e| ((e * 7919) % 5) as f64).collect();
            let cost = CostMatrix::from_row_major(n, m, c).unwrap();
            let (mut a, mut b) = (vec![1.0 / n as f64; n], vec![1.0 / m as f64; m]);
            if zero {
                // Empty atoms on both sides.
                (a[0], a[1], b[0], b[1]) = (0.0, 2.0 / n as f64, 0.0, 2.0 / m as f64);
            }
            let mut s = Simplex::new(&a, &b, &cost);
            check_tree(&s);
            let mut pivots = 0;
            while let Some(e) = s.find_entering() {
                s.pivot(e).unwrap();
                check_tree(&s);
                pivots += 1;
                assert!(pivots < 10_000, "cycling");
            }
        }
    }
}
