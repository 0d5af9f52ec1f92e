//! Guest-visible device models for Vireo.
//!
//! Each device is a plain state machine that knows neither the bus it sits on
//! nor the accelerator running the guest (the `vm-superio` model): it is read
//! and written at offsets relative to its base, raises interrupts through an
//! [`IrqLine`], reads time from a [`Clock`], asks the machine for resets or
//! exits through a [`SystemControl`], and can save and restore its state
//! ([`Snapshot`]).
#![deny(missing_docs)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

pub mod acpi_pm;
pub mod block;
pub mod debug_exit;
pub mod debugcon;
pub mod fw_cfg;
pub mod i8042;
pub mod ide;
pub mod ioapic;
pub mod lapic;
pub mod pci;
pub mod pic;
pub mod pit;
pub mod port92;
pub mod post_code;
pub mod reset_control;
pub mod rtc;
pub mod serial;
pub mod vga;

#[cfg(test)]
mod testing;

/// A device on a port-I/O or MMIO bus. Offsets are relative to the base the
/// device was registered at; `data.len()` is the access width (1, 2, 4 or 8).
///
/// Accesses a device does not implement must be ignored (reads return all
/// ones) and may be logged with [`log_odd_access`]: guests are hostile.
pub trait BusDevice: Send {
    /// Handles a guest read of `data.len()` bytes at `offset`.
    fn read(&mut self, offset: u64, data: &mut [u8]);
    /// Handles a guest write of `data` at `offset`.
    fn write(&mut self, offset: u64, data: &[u8]);
}

/// An interrupt request line from a device to an interrupt controller.
pub trait IrqLine: Send + Sync {
    /// Sets the line's level (edge-triggered receivers act on 0→1).
    fn set_level(&self, level: bool);
    /// Raises then lowers the line (an edge).
    fn pulse(&self) {
        self.set_level(true);
        self.set_level(false);
    }
}

/// An [`IrqLine`] connected to nothing.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoIrq;

impl IrqLine for NoIrq {
    fn set_level(&self, _level: bool) {}
}

/// Guest time source in nanoseconds since machine start.
pub trait Clock: Send + Sync {
    /// The current time in nanoseconds.
    fn now_ns(&self) -> u64;
}

/// A [`Clock`] that follows the host's monotonic clock.
#[derive(Debug, Clone)]
pub struct HostClock {
    start: std::time::Instant,
}

impl HostClock {
    /// A clock starting at 0 now.
    pub fn new() -> Self {
        Self {
            start: std::time::Instant::now(),
        }
    }
}

impl Default for HostClock {
    fn default() -> Self {
        Self::new()
    }
}

impl HostClock {
    /// The instant this clock counts from.
    pub fn origin(&self) -> std::time::Instant {
        self.start
    }
}

impl Clock for HostClock {
    fn now_ns(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }
}

/// A [`Clock`] moved by hand, for tests.
#[derive(Debug, Default)]
pub struct ManualClock(AtomicU64);

impl ManualClock {
    /// Sets the time.
    pub fn set(&self, ns: u64) {
        self.0.store(ns, Ordering::SeqCst)
    }
    /// Moves the time forward.
    pub fn advance(&self, ns: u64) {
        self.0.fetch_add(ns, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ns(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
}

impl<T: Clock + ?Sized> Clock for Arc<T> {
    fn now_ns(&self) -> u64 {
        (**self).now_ns()
    }
}

/// What a device may ask of the machine as a whole.
pub trait SystemControl: Send + Sync {
    /// A system reset (keyboard-controller pulse, triple fault, ...).
    fn request_reset(&self);
    /// Ends the machine with the given process exit status (`isa-debug-exit`).
    fn request_exit(&self, status: i32);
    /// A soft power-off (ACPI S5, `SLP_EN` with the `\_S5` sleep type):
    /// by default, ends the machine with status 0.
    fn request_poweroff(&self) {
        self.request_exit(0)
    }
}

/// Devices whose guest-visible state can be saved and restored.
pub trait Snapshot {
    /// The saved state: plain data, serializable.
    type State: serde::Serialize + serde::de::DeserializeOwned;
    /// Captures the state.
    fn snapshot(&self) -> Self::State;
    /// Restores a state captured by [`Snapshot::snapshot`].
    fn restore(&mut self, state: Self::State);
}

/// Logs an access a device does not implement, at most a few times a second
/// per call site, so a guest cannot flood the log.
#[macro_export]
macro_rules! log_odd_access {
    ($($arg:tt)*) => {{
        static LAST: ::std::sync::atomic::AtomicU64 = ::std::sync::atomic::AtomicU64::new(0);
        static COUNT: ::std::sync::atomic::AtomicU64 = ::std::sync::atomic::AtomicU64::new(0);
        if $crate::rate_limit_ok(&LAST, &COUNT) {
            ::tracing::debug!($($arg)*);
        }
    }};
}

/// Rate limiter used by [`log_odd_access!`]: at most 10 messages per second
/// per call site.
#[doc(hidden)]
pub fn rate_limit_ok(last: &AtomicU64, count: &AtomicU64) -> bool {
    static EPOCH: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    let now = EPOCH
        .get_or_init(std::time::Instant::now)
        .elapsed()
        .as_secs()
        + 1;
    if last.swap(now, Ordering::Relaxed) != now {
        count.store(0, Ordering::Relaxed);
    }
    count.fetch_add(1, Ordering::Relaxed) < 10
}
