//! A branch of either kind, chosen at run time from a checkpoint's family: what the commands
//! that read `--model DIR --layer L` iterate, so that one code path serves BERT, GPT-2 and the
//! rotary families.

use super::branch::Branch;
use super::certify::Certificate;
use super::rotary_branch::RotaryBranch;
use crate::attention::{AttentionLayer, Kernel, RotaryLinearization};
use crate::derivatives::{Linearization, LinearizedMap};
use crate::error::Result;
use crate::operator::RotaryForm;
use faer::{Mat, MatRef};
use std::sync::Arc;

// Shared: the two kinds differ in size, and a frontend that already holds a layer (the Python
// bindings) wraps it without copying its weights.
#[derive(Clone, Debug)]
pub enum AnyBranch {
    Plain(Arc<AttentionLayer<f64>>),
    Rotary(Arc<RotaryBranch>),
}

pub enum AnyLinearization<'a> {
    Plain(Box<Linearization<'a, f64>>),
    Rotary(Box<RotaryLinearization<'a>>),
}

macro_rules! both {
    ($e:expr, $b:ident => $body:expr) => {
        match $e {
            AnyBranch::Plain($b) => {
                let $b = &**$b;
                $body
            }
            AnyBranch::Rotary($b) => {
                let $b = &**$b;
                $body
            }
        }
    };
}

macro_rules! both_lin {
    ($e:expr, $b:ident => $body:expr) => {
        match $e {
            AnyLinearization::Plain($b) => {
                let $b = &**$b;
                $body
            }
            AnyLinearization::Rotary($b) => {
                let $b = &**$b;
                $body
            }
        }
    };
}

impl Branch for AnyBranch {
    type Lin<'a> = AnyLinearization<'a>;

    fn d_in(&self) -> usize {
        both!(self, b => Branch::d_in(b))
    }
    fn d_out(&self) -> usize {
        both!(self, b => Branch::d_out(b))
    }
    fn forward(&self, x: MatRef<'_, f64>) -> Result<Mat<f64>> {
        both!(self, b => Branch::forward(b, x))
    }
    fn linearize<'a>(&'a self, x: MatRef<'_, f64>) -> Result<AnyLinearization<'a>> {
        Ok(match self {
            AnyBranch::Plain(b) => AnyLinearization::Plain(Box::new(Branch::linearize(&**b, x)?)),
            AnyBranch::Rotary(b) => AnyLinearization::Rotary(Box::new(b.linearize(x)?)),
        })
    }
    fn scaled(&self, s: f64) -> Self {
        match self {
            AnyBranch::Plain(b) => AnyBranch::Plain(Arc::new(Branch::scaled(&**b, s))),
            AnyBranch::Rotary(b) => AnyBranch::Rotary(Arc::new(b.scaled(s))),
        }
    }
    fn row_bound(&self) -> Result<(f64, f64)> {
        both!(self, b => b.row_bound())
    }
    fn token_lipschitz(&self, n: usize, radius: Option<f64>) -> Result<Option<Certificate>> {
        both!(self, b => b.token_lipschitz(n, radius))
    }
    fn needs_ball(&self, n: usize) -> Result<bool> {
        both!(self, b => b.needs_ball(n))
    }
    fn needs_ball_reason(&self) -> &'static str {
        both!(self, b => b.needs_ball_reason())
    }
    fn kernel(&self) -> Kernel {
        both!(self, b => Branch::kernel(b))
    }
    fn causal(&self) -> bool {
        both!(self, b => Branch::causal(b))
    }
    fn rotary_form(&self) -> Option<RotaryForm> {
        both!(self, b => b.rotary_form())
    }
    fn measure_map(&self) -> Result<&AttentionLayer<f64>> {
        both!(self, b => b.measure_map())
    }
}

impl LinearizedMap<f64> for AnyLinearization<'_> {
    type NormalData = Mat<f64>;

    fn n(&self) -> usize {
        both_lin!(self, l => l.n())
    }
    fn d_in(&self) -> usize {
        both_lin!(self, l => l.d_in())
    }
    fn d_out(&self) -> usize {
        both_lin!(self, l => l.d_out())
    }
    fn jvp(&self, t: MatRef<'_, f64>) -> Result<Mat<f64>> {
        both_lin!(self, l => l.jvp(t))
    }
    fn vjp(&self, y: MatRef<'_, f64>) -> Result<Mat<f64>> {
        both_lin!(self, l => l.vjp(y))
    }
    fn normal_data(&self) -> Mat<f64> {
        both_lin!(self, l => l.normal_data())
    }
    fn normal_step(&self, data: &Mat<f64>, u: MatRef<'_, f64>) -> Result<(Mat<f64>, Mat<f64>)> {
        both_lin!(self, l => l.normal_step(data, u))
    }
    fn image_output(&self, image: MatRef<'_, f64>) -> Mat<f64> {
        both_lin!(self, l => l.image_output(image))
    }
}
