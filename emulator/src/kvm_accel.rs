//! KVM as an [`Accelerator`]: the same machine and devices as the software
//! CPU, with guest code running on the host's hardware virtualization.

use crate::accel::{AccelExit, Accelerator, Kick};
use crate::boot::BootState;
use crate::kvm::{self, KvmExit, KvmState, KvmVcpu};
use crate::machine::Machine;
use std::sync::Arc;
use std::time::Duration;

/// The time slice after which `run` returns to let the engine poll.
const SLICE: Duration = Duration::from_millis(10);

/// One KVM vCPU of a machine.
pub struct KvmAccel {
    vcpu: KvmVcpu,
    intc: Option<Arc<dyn crate::cpu::InterruptController>>,
}

/// Creates a KVM accelerator for `machine`, or says in one line why KVM
/// can't run it here.
///
/// `allow_paravirtual` accepts a paravirtual KVM (PVM), which runs real-mode
/// and simple protected-mode code but not full operating systems: for tests.
pub fn create(machine: &Machine, allow_paravirtual: bool) -> Result<Box<dyn Accelerator>, String> {
    if !allow_paravirtual {
        kvm::probe().map_err(|e| e.to_string())?;
    }
    let mut vcpu = KvmVcpu::new(&machine.space, allow_paravirtual).map_err(|e| e.to_string())?;
    let intc = machine.interrupt_controller(0);
    vcpu.set_interrupt_controller(intc.clone());
    Ok(Box::new(KvmAccel {
        vcpu,
        intc: Some(intc),
    }))
}

impl KvmAccel {
    /// Wraps a vCPU made by the caller (tests use this to run real-mode
    /// code on paravirtual KVM).
    pub fn from_vcpu(vcpu: KvmVcpu) -> Self {
        KvmAccel { vcpu, intc: None }
    }
}

impl Accelerator for KvmAccel {
    fn name(&self) -> &'static str {
        "kvm"
    }

    fn reset(&mut self) {
        if let Err(e) = self.vcpu.set_state(&KvmState::reset()) {
            tracing::error!("kvm: reset failed: {e}");
        }
    }

    fn load_boot_state(&mut self, s: &BootState) {
        let st = KvmState {
            gpr: s.gpr,
            rip: s.rip,
            rflags: s.rflags,
            seg: s.seg,
            gdtr: s.gdtr,
            idtr: s.idtr,
            cr0: s.cr0,
            cr3: s.cr3,
            cr4: s.cr4,
            efer: s.efer,
            ..KvmState::reset()
        };
        if let Err(e) = self.vcpu.set_state(&st) {
            tracing::error!("kvm: cannot load the boot state: {e}");
        }
    }

    fn run(&mut self) -> AccelExit {
        match self.vcpu.run(SLICE) {
            Ok(KvmExit::Halted) => AccelExit::Halted,
            Ok(KvmExit::Shutdown) => AccelExit::Shutdown,
            Ok(KvmExit::TimeSlice) | Ok(KvmExit::InterruptWindow) => AccelExit::Slice,
            Ok(KvmExit::SystemEvent(ev)) => AccelExit::Failed(format!("KVM system event {ev}")),
            Ok(other) => AccelExit::Failed(format!("{other:?}")),
            Err(e) => AccelExit::Failed(e.to_string()),
        }
    }

    fn kicker(&self) -> Kick {
        let k = self.vcpu.kicker();
        Arc::new(move || k.kick())
    }

    fn instructions(&self) -> Option<u64> {
        None
    }

    fn can_wake(&self) -> bool {
        self.intc.as_ref().is_none_or(|i| i.has_interrupt())
    }

    fn reset_as_ap(&mut self) {
        // One vCPU only on KVM for now.
        self.reset();
    }
}
