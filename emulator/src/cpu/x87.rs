//! The x87 FPU and MMX (SDM vol. 1 ch. 8–9).

use super::exec::Handler;
use iced_x86::Instruction;

/// x87 FPU state.
#[derive(Debug, Clone)]
pub struct X87 {
    /// Physical registers R0–R7: (significand, sign|exponent).
    pub regs: [(u64, u16); 8],
    /// Top-of-stack pointer.
    pub top: u8,
    /// Control word.
    pub cw: u16,
    /// Status word without TOP.
    pub sw: u16,
    /// Full tag word (2 bits per physical register).
    pub tag: u16,
    /// Last instruction pointer.
    pub fip: u64,
    /// Last instruction code selector.
    pub fcs: u16,
    /// Last data pointer.
    pub fdp: u64,
    /// Last data selector.
    pub fds: u16,
    /// Last opcode.
    pub fop: u16,
}

impl Default for X87 {
    fn default() -> Self {
        X87 {
            regs: [(0, 0); 8],
            top: 0,
            cw: 0x037f,
            sw: 0,
            tag: 0xffff,
            fip: 0,
            fcs: 0,
            fdp: 0,
            fds: 0,
            fop: 0,
        }
    }
}

pub(super) fn lookup(_ins: &Instruction) -> Option<Handler> {
    None
}
