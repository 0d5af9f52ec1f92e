//! The x87 FPU and MMX (SDM vol. 1 ch. 8–9).

use super::exec::Handler;
use iced_x86::Instruction;

/// x87 FPU state.
#[derive(Debug, Clone, Default)]
pub struct X87 {}

pub(super) fn lookup(_ins: &Instruction) -> Option<Handler> {
    None
}
