//! The Vireo engine: guest memory and buses, accelerators (the software CPU
//! and KVM), machines, boot loaders, and the engine thread driven through an
//! [`engine::EngineHandle`].
#![deny(missing_docs)]

pub mod bus;
pub mod cpu;
pub mod kvm;
pub mod memory;
