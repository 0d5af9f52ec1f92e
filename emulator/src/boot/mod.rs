//! Boot loaders: put a guest kernel in memory and describe the CPU state it
//! starts in.

pub mod firmware;
pub mod linux;
pub mod mptable;
pub mod multiboot;

use crate::cpu::{DescriptorTable, Segment};

/// Register state a loader asks the accelerator to start with.
#[derive(Debug, Clone, Default)]
pub struct BootState {
    /// RAX..R15.
    pub gpr: [u64; 16],
    /// Entry point.
    pub rip: u64,
    /// RFLAGS.
    pub rflags: u64,
    /// ES, CS, SS, DS, FS, GS.
    pub seg: [Segment; 6],
    /// GDTR.
    pub gdtr: DescriptorTable,
    /// IDTR.
    pub idtr: DescriptorTable,
    /// CR0.
    pub cr0: u64,
    /// CR3.
    pub cr3: u64,
    /// CR4.
    pub cr4: u64,
    /// EFER.
    pub efer: u64,
}

impl BootState {
    /// Flat 32-bit protected mode, paging off, interrupts off (the state the
    /// Multiboot specification §3.2 defines).
    pub fn protected32(entry: u32) -> Self {
        let code = Segment::flat32(0x10, true);
        let data = Segment::flat32(0x18, false);
        BootState {
            rip: entry as u64,
            rflags: 2,
            seg: [data, code, data, data, data, data],
            cr0: crate::cpu::cr0::PE | crate::cpu::cr0::ET,
            ..Default::default()
        }
    }
}
