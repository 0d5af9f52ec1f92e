//! SSE and SSE2 (SDM vol. 1 ch. 10–11).

use super::exec::Handler;
use iced_x86::Instruction;

pub(super) fn lookup(_ins: &Instruction) -> Option<Handler> {
    None
}
