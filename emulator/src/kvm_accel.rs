//! KVM as an accelerator (placeholder until the KVM backend lands).

use crate::accel::Accelerator;
use crate::machine::Machine;

/// Creates a KVM accelerator for `machine`, or says why it can't.
pub fn create(_machine: &Machine) -> Result<Box<dyn Accelerator>, String> {
    Err("the KVM backend is not built in yet".to_string())
}
