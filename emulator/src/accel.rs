//! Accelerators: what runs guest code. The software CPU runs everywhere; KVM
//! where the host can run unmodified guests.

use crate::boot::BootState;
use crate::cpu::{Cpu, CpuExit, InterruptController};
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// Makes a running accelerator return from [`Accelerator::run`] soon; callable
/// from any thread.
pub type Kick = Arc<dyn Fn() + Send + Sync>;

/// Which accelerator the user asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AccelKind {
    /// KVM if it can run the guest, else the software CPU.
    #[default]
    Auto,
    /// The software CPU.
    Soft,
    /// KVM, or fail.
    Kvm,
}

/// Why an accelerator stopped running guest code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccelExit {
    /// The time or instruction slice ended; call again.
    Slice,
    /// The vCPU executed HLT and waits for an interrupt.
    Halted,
    /// Triple fault: the machine resets.
    Shutdown,
    /// Another thread asked it to stop.
    Kicked,
    /// The backend failed and cannot continue (the reason, one line).
    Failed(String),
}

/// Runs a vCPU of a machine (the cloud-hypervisor `hypervisor` crate idea:
/// one trait for every backend, one device model for all).
pub trait Accelerator: Send {
    /// Short name ("soft", "kvm").
    fn name(&self) -> &'static str;
    /// Puts the vCPU in its power-on state.
    fn reset(&mut self);
    /// Sets the register state a boot loader prepared.
    fn load_boot_state(&mut self, state: &BootState);
    /// Runs guest code for a slice.
    fn run(&mut self) -> AccelExit;
    /// Ends a running [`Accelerator::run`] early, from any thread.
    fn kicker(&self) -> Kick;
    /// Instructions retired so far, when the backend counts them.
    fn instructions(&self) -> Option<u64>;
    /// After [`AccelExit::Halted`]: true when an interrupt or event would
    /// let the vCPU continue (its thread waits until then).
    fn can_wake(&self) -> bool;
    /// Puts an application processor in its power-on state: waiting for
    /// INIT and a start-up IPI.
    fn reset_as_ap(&mut self);
}

/// The software CPU as an accelerator.
pub struct SoftAccel {
    cpu: Cpu,
    slice: u64,
}

impl SoftAccel {
    /// Wraps a CPU running against `space`, taking interrupts from `intc`.
    pub fn new(space: Arc<crate::bus::AddressSpace>, intc: Arc<dyn InterruptController>) -> Self {
        let mut cpu = Cpu::new(space);
        cpu.set_interrupt_controller(intc);
        SoftAccel {
            cpu,
            slice: 200_000,
        }
    }

    /// vCPU `index` of `machine`, sharing `code` with the other vCPUs.
    pub fn for_vcpu(
        machine: &crate::machine::Machine,
        index: usize,
        code: Arc<crate::cpu::SharedCode>,
    ) -> Self {
        let mut cpu = Cpu::new_vcpu(machine.space.clone(), code, index, machine.clock_origin());
        cpu.set_interrupt_controller(machine.interrupt_controller(index));
        SoftAccel {
            cpu,
            slice: 200_000,
        }
    }

    /// The CPU (for tests and diagnostics).
    pub fn cpu(&mut self) -> &mut Cpu {
        &mut self.cpu
    }
}

impl Accelerator for SoftAccel {
    fn name(&self) -> &'static str {
        "soft"
    }

    fn reset(&mut self) {
        self.cpu.reset();
    }

    fn load_boot_state(&mut self, s: &BootState) {
        let c = &mut self.cpu;
        c.gpr = s.gpr;
        c.rip = s.rip;
        c.flags.set(s.rflags);
        c.seg = s.seg;
        c.gdtr = s.gdtr;
        c.idtr = s.idtr;
        c.cr0 = s.cr0;
        c.cr3 = s.cr3;
        c.cr4 = s.cr4;
        c.efer = s.efer;
        c.cpl = (s.seg[crate::cpu::CS].selector & 3) as u8;
        c.flush_tlb(false);
    }

    fn run(&mut self) -> AccelExit {
        match self.cpu.run(self.slice) {
            CpuExit::Budget => AccelExit::Slice,
            CpuExit::Halted => AccelExit::Halted,
            CpuExit::Shutdown => AccelExit::Shutdown,
            CpuExit::Requested => AccelExit::Kicked,
        }
    }

    fn kicker(&self) -> Kick {
        let flag = self.cpu.exit_request.clone();
        Arc::new(move || flag.store(true, Ordering::Release))
    }

    fn instructions(&self) -> Option<u64> {
        Some(self.cpu.icount)
    }

    fn can_wake(&self) -> bool {
        self.cpu.can_wake()
    }

    fn reset_as_ap(&mut self) {
        self.cpu.reset();
        self.cpu.wait_sipi = true;
    }
}
