//! More integer instructions: shifts and rotates, multiply/divide, string
//! operations, BCD, bit operations, atomics (SDM vol. 2).

use super::exec::Handler;
use iced_x86::Instruction;

pub(super) fn lookup(_ins: &Instruction) -> Option<Handler> {
    None
}
