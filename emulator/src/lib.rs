//! The Vireo engine: guest memory and buses, accelerators (the software CPU
//! and KVM), machines, boot loaders, and the engine thread driven through an
//! [`engine::EngineHandle`].
#![deny(missing_docs)]

pub mod accel;
pub mod acpi;
pub mod apic;
pub mod boot;
pub mod bus;
pub mod cpu;
pub mod display;
pub mod engine;
pub mod keycodes;
pub mod kvm;
pub mod kvm_accel;
pub mod machine;
pub mod memory;
pub mod qmp;
pub mod qmp_engine;
