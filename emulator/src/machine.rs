//! The PC machine for direct kernel boot: RAM plus the legacy devices
//! (PIC, PIT, COM1, i8042, isa-debug-exit, POST code port) on their usual
//! ports.

use crate::bus::{lock, AddressSpace, BusError, SharedDevice};
use crate::cpu::InterruptController;
use crate::memory::{GuestRam, MemoryError};
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::{Arc, Mutex};
use thiserror::Error;
use vireo_devices::debug_exit::DebugExit;
use vireo_devices::i8042::{I8042Port, I8042};
use vireo_devices::pic::{Pic, PicIrqLine, PicPorts};
use vireo_devices::pit::{Pit, PortB};
use vireo_devices::post_code::PostCode;
use vireo_devices::serial::Serial;
use vireo_devices::{Clock, HostClock, IrqLine, SystemControl};

/// Errors building a machine.
#[derive(Debug, Error)]
pub enum MachineError {
    /// Guest RAM could not be created.
    #[error(transparent)]
    Memory(#[from] MemoryError),
    /// Two devices claim the same addresses (a bug in the machine layout).
    #[error("Device layout: {0}")]
    Bus(#[from] BusError),
}

/// Requests from devices to the engine (reset, exit), and the vCPU kick.
pub struct Control {
    reset: AtomicBool,
    exit: AtomicBool,
    status: AtomicI32,
    kick: Mutex<Option<crate::accel::Kick>>,
}

impl Control {
    fn new() -> Self {
        Control {
            reset: AtomicBool::new(false),
            exit: AtomicBool::new(false),
            status: AtomicI32::new(0),
            kick: Mutex::new(None),
        }
    }

    /// Sets how to make the running vCPU return.
    pub fn set_kick(&self, kick: crate::accel::Kick) {
        *lock(&self.kick) = Some(kick);
    }

    fn kick(&self) {
        if let Some(k) = lock(&self.kick).as_ref() {
            k();
        }
    }

    /// Takes a pending reset request.
    pub fn take_reset(&self) -> bool {
        self.reset.swap(false, Ordering::AcqRel)
    }

    /// A pending exit request's status.
    pub fn exit_status(&self) -> Option<i32> {
        self.exit
            .load(Ordering::Acquire)
            .then(|| self.status.load(Ordering::Acquire))
    }
}

impl SystemControl for Control {
    fn request_reset(&self) {
        self.reset.store(true, Ordering::Release);
        self.kick();
    }
    fn request_exit(&self, status: i32) {
        self.status.store(status, Ordering::Release);
        self.exit.store(true, Ordering::Release);
        self.kick();
    }
}

/// The PIC's INTR output, mirrored in an atomic so the CPU can poll it for
/// free at every block boundary.
struct IntrLine(AtomicBool);

impl IrqLine for IntrLine {
    fn set_level(&self, level: bool) {
        self.0.store(level, Ordering::Release);
    }
}

/// The 8259 pair as the CPU's interrupt controller.
pub struct PicController {
    pic: Arc<Mutex<Pic>>,
    intr: Arc<IntrLine>,
}

impl InterruptController for PicController {
    #[inline]
    fn has_interrupt(&self) -> bool {
        self.intr.0.load(Ordering::Acquire)
    }
    fn acknowledge(&self) -> Option<u8> {
        let mut pic = lock(&self.pic);
        pic.has_interrupt().then(|| pic.acknowledge())
    }
}

/// A PC with the legacy devices.
pub struct Machine {
    /// RAM and buses.
    pub space: Arc<AddressSpace>,
    /// The 8259 pair.
    pub pic: Arc<Mutex<Pic>>,
    /// The 8254.
    pub pit: Arc<Mutex<Pit>>,
    /// COM1.
    pub serial: Arc<Mutex<Serial>>,
    /// The keyboard controller.
    pub i8042: Arc<Mutex<I8042>>,
    /// Reset/exit requests.
    pub control: Arc<Control>,
    /// Bytes COM1 sent since the last [`Machine::take_serial_output`].
    serial_out: Arc<Mutex<Vec<u8>>>,
    intc: Arc<PicController>,
    clock: Arc<dyn Clock>,
}

impl Machine {
    /// Builds a machine with `memory` bytes of RAM.
    pub fn new(memory: u64) -> Result<Self, MachineError> {
        let ram = GuestRam::new(memory)?;
        let mut space = AddressSpace::new(ram);
        let control = Arc::new(Control::new());
        let clock: Arc<dyn Clock> = Arc::new(HostClock::new());

        let pic = Arc::new(Mutex::new(Pic::new()));
        let intr = Arc::new(IntrLine(AtomicBool::new(false)));
        lock(&pic).set_intr_output(intr.clone());
        let irq = |n: u8| -> Arc<dyn IrqLine> { Arc::new(PicIrqLine::new(pic.clone(), n)) };

        let serial_out = Arc::new(Mutex::new(Vec::new()));
        let sink = serial_out.clone();
        let serial = Arc::new(Mutex::new(Serial::new(
            irq(4),
            Box::new(move |b: u8| lock(&sink).push(b)),
        )));
        let pit = Arc::new(Mutex::new(Pit::new(clock.clone(), irq(0))));
        let i8042 = Arc::new(Mutex::new(I8042::new(control.clone(), irq(1), irq(12))));
        let debug_exit = Arc::new(Mutex::new(DebugExit::new(control.clone())));

        space
            .pio
            .insert(0x20, 2, Arc::new(Mutex::new(PicPorts::master(pic.clone()))))?;
        space
            .pio
            .insert(0xa0, 2, Arc::new(Mutex::new(PicPorts::slave(pic.clone()))))?;
        space
            .pio
            .insert(0x4d0, 2, Arc::new(Mutex::new(PicPorts::elcr(pic.clone()))))?;
        space.pio.insert(0x40, 4, pit.clone() as SharedDevice)?;
        space
            .pio
            .insert(0x61, 1, Arc::new(Mutex::new(PortB::new(pit.clone()))))?;
        space.pio.insert(
            0x60,
            1,
            Arc::new(Mutex::new(I8042Port::data(i8042.clone()))),
        )?;
        space.pio.insert(
            0x64,
            1,
            Arc::new(Mutex::new(I8042Port::command(i8042.clone()))),
        )?;
        space.pio.insert(0x3f8, 8, serial.clone() as SharedDevice)?;
        space.pio.insert(0xf4, 1, debug_exit as SharedDevice)?;
        space
            .pio
            .insert(0x80, 1, Arc::new(Mutex::new(PostCode::new())))?;

        let intc = Arc::new(PicController {
            pic: pic.clone(),
            intr,
        });
        Ok(Machine {
            space: Arc::new(space),
            pic,
            pit,
            serial,
            i8042,
            control,
            serial_out,
            intc,
            clock,
        })
    }

    /// The interrupt controller the vCPU takes interrupts from.
    pub fn interrupt_controller(&self) -> Arc<dyn InterruptController> {
        self.intc.clone()
    }

    /// True when the interrupt controller asserts INTR.
    pub fn has_interrupt(&self) -> bool {
        self.intc.has_interrupt()
    }

    /// Machine time in ns: the clock the timers' deadlines are given in.
    pub fn now_ns(&self) -> u64 {
        self.clock.now_ns()
    }

    /// Drains what the guest wrote to COM1.
    pub fn take_serial_output(&self) -> Vec<u8> {
        std::mem::take(&mut *lock(&self.serial_out))
    }

    /// Runs the timers; returns the next deadline in ns of machine time.
    pub fn poll_timers(&self) -> Option<u64> {
        lock(&self.pit).poll()
    }

    /// Resets the devices to their power-on state.
    pub fn reset_devices(&self) {
        lock(&self.pic).reset();
        lock(&self.serial).reset();
        lock(&self.pit).reset();
        lock(&self.i8042).reset();
    }
}
