//! Integration tests for Vireo and the CPU differential tester ([`diff`]).

pub mod diff;
pub mod screen;
