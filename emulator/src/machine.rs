//! The PC machine for direct kernel boot: RAM plus the legacy devices
//! (PIC, PIT, RTC/CMOS, COM1, i8042, fw_cfg, PCI bus 0 with the 440FX and
//! PIIX3 bridges, isa-debug-exit, POST code port) on their usual
//! ports, a local APIC per vCPU and an I/O APIC (described to the guest by
//! an MP table).

use crate::apic::{Apics, IsaIrq, Waker};
use crate::bus::{lock, AddressSpace, BusError, SharedDevice};
use crate::cpu::{InterruptController, IrqState, SharedCode};
use crate::memory::{GuestRam, MemoryError};
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use thiserror::Error;
use vireo_devices::debug_exit::DebugExit;
use vireo_devices::fw_cfg::{key as fw_key, DmaMemory, FwCfg};
use vireo_devices::i8042::{I8042Port, I8042};
use vireo_devices::pci::{self, PciBus};
use vireo_devices::pic::{Pic, PicIrqLine, PicPorts};
use vireo_devices::pit::{Pit, PortB};
use vireo_devices::port92::Port92;
use vireo_devices::post_code::PostCode;
use vireo_devices::rtc::Rtc;
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
    /// Unsupported vCPU count.
    #[error("--smp {0}: must be between 1 and {max}", max = MAX_VCPUS)]
    Vcpus(usize),
}

/// Most vCPUs a machine can have (what the MP table can describe).
pub const MAX_VCPUS: usize = crate::boot::mptable::MAX_CPUS as usize;

/// Requests from devices to the engine (reset, exit); they wake the
/// engine's control loop.
pub struct Control {
    reset: AtomicBool,
    exit: AtomicBool,
    status: AtomicI32,
    engine: Arc<Waker>,
}

impl Control {
    fn new(engine: Arc<Waker>) -> Self {
        Control {
            reset: AtomicBool::new(false),
            exit: AtomicBool::new(false),
            status: AtomicI32::new(0),
            engine,
        }
    }

    fn kick(&self) {
        self.engine.wake();
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

/// The PIC's INTR output, mirrored in the BSP's interrupt state so the CPU
/// can poll it for free at every block boundary; raising it wakes the BSP.
struct IntrLine {
    state: Arc<IrqState>,
    bsp: Arc<Waker>,
}

impl IrqLine for IntrLine {
    fn set_level(&self, level: bool) {
        let raised = self.state.update(
            IrqState::PIC_INTR,
            if level { IrqState::PIC_INTR } else { 0 },
        );
        if raised != 0 {
            self.bsp.wake();
        }
    }
}

/// A PC with the legacy devices and APICs.
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
    /// The MC146818 RTC and CMOS RAM (ports 0x70/0x71, IRQ 8).
    pub rtc: Arc<Mutex<Rtc>>,
    /// PCI bus 0 (configuration mechanism #1 at 0xcf8): the 440FX host
    /// bridge at 00:00.0 and the PIIX3 ISA bridge at 00:01.0.
    pub pci: Arc<Mutex<PciBus>>,
    /// System Control Port A (0x92): A20 gate and fast reset.
    pub port92: Arc<Mutex<Port92>>,
    /// QEMU's firmware configuration device (ports 0x510–0x51b).
    pub fw_cfg: Arc<Mutex<FwCfg>>,
    /// Which RAM pages hold code the software vCPUs decoded (shared by
    /// them; device DMA into RAM goes through it).
    pub code: Arc<SharedCode>,
    /// The local and I/O APICs.
    pub apics: Arc<Apics>,
    /// Reset/exit requests.
    pub control: Arc<Control>,
    /// Wakes the engine's control loop.
    pub engine_waker: Arc<Waker>,
    /// Wakes each vCPU's thread when it halted.
    pub vcpu_wakers: Vec<Arc<Waker>>,
    /// Bytes COM1 sent since the last [`Machine::take_serial_output`].
    serial_out: Arc<Mutex<Vec<u8>>>,
    clock: Arc<HostClock>,
}

/// Guest RAM as devices reach it by DMA: writes make the vCPUs drop code
/// they decoded from the pages written.
struct DmaRam {
    /// Set once the address space is built (a weak link: the space owns the
    /// devices that own this).
    space: OnceLock<Weak<AddressSpace>>,
    code: Arc<SharedCode>,
}

impl DmaMemory for DmaRam {
    fn read(&self, addr: u64, buf: &mut [u8]) -> bool {
        match self.space.get().and_then(Weak::upgrade) {
            Some(s) => s.ram.read_bytes(addr, buf),
            None => false,
        }
    }

    fn write(&self, addr: u64, data: &[u8]) -> bool {
        match self.space.get().and_then(Weak::upgrade) {
            Some(s) => {
                let ok = s.ram.write_bytes(addr, data);
                if ok {
                    self.code.note_device_write(addr, data.len() as u64);
                }
                ok
            }
            None => false,
        }
    }
}

impl Machine {
    /// Builds a machine with `memory` bytes of RAM and `vcpus` processors.
    pub fn new(memory: u64, vcpus: usize) -> Result<Self, MachineError> {
        if vcpus == 0 || vcpus > MAX_VCPUS {
            return Err(MachineError::Vcpus(vcpus));
        }
        let ram = GuestRam::new(memory)?;
        let mut space = AddressSpace::new(ram);
        let engine_waker = Arc::new(Waker::default());
        let vcpu_wakers: Vec<Arc<Waker>> = (0..vcpus).map(|_| Arc::new(Waker::default())).collect();
        let control = Arc::new(Control::new(engine_waker.clone()));
        let host_clock = Arc::new(HostClock::new());
        let clock: Arc<dyn Clock> = host_clock.clone();

        let timer_waker = engine_waker.clone();
        let apics = Arc::new(Apics::new(
            vcpus,
            clock.clone(),
            &vcpu_wakers,
            Arc::new(move || timer_waker.wake()),
        ));

        let pic = Arc::new(Mutex::new(Pic::new()));
        let bsp_state = match apics.router.apic(0) {
            Some(a) => a.state.clone(),
            None => return Err(MachineError::Vcpus(vcpus)),
        };
        lock(&pic).set_intr_output(Arc::new(IntrLine {
            state: bsp_state,
            bsp: vcpu_wakers[0].clone(),
        }));
        let irq = |n: u8| -> Arc<dyn IrqLine> {
            Arc::new(IsaIrq::new(
                n,
                Arc::new(PicIrqLine::new(pic.clone(), n)),
                apics.clone(),
            ))
        };

        let serial_out = Arc::new(Mutex::new(Vec::new()));
        let sink = serial_out.clone();
        let out_waker = engine_waker.clone();
        let serial = Arc::new(Mutex::new(Serial::new(
            irq(4),
            Box::new(move |b: u8| {
                let mut out = lock(&sink);
                out.push(b);
                if out.len() == 1 {
                    out_waker.wake();
                }
            }),
        )));
        let pit = Arc::new(Mutex::new(Pit::new(clock.clone(), irq(0))));
        let i8042 = Arc::new(Mutex::new(I8042::new(control.clone(), irq(1), irq(12))));
        let debug_exit = Arc::new(Mutex::new(DebugExit::new(control.clone())));
        let rtc = Arc::new(Mutex::new(Rtc::with_host_time(clock.clone(), irq(8))));
        space.pio.insert(0x70, 2, rtc.clone() as SharedDevice)?;
        let code = SharedCode::new(space.ram.phys_end(), vcpus);
        let dma = Arc::new(DmaRam {
            space: OnceLock::new(),
            code: code.clone(),
        });
        let mut fw = FwCfg::new(dma.clone());
        fw.add_item(fw_key::RAM_SIZE, memory.to_le_bytes().to_vec());
        fw.add_item(fw_key::NB_CPUS, (vcpus as u16).to_le_bytes().to_vec());
        fw.add_item(fw_key::MAX_CPUS, (vcpus as u16).to_le_bytes().to_vec());
        fw.add_item(fw_key::NOGRAPHIC, 1u16.to_le_bytes().to_vec());
        let fw_cfg = Arc::new(Mutex::new(fw));
        space
            .pio
            .insert(0x510, 12, fw_cfg.clone() as SharedDevice)?;
        let mut bus = PciBus::new();
        bus.attach(0, 0, Arc::new(Mutex::new(pci::i440fx_host_bridge())));
        bus.attach(1, 0, Arc::new(Mutex::new(pci::piix3_isa_bridge())));
        let port92 = Arc::new(Mutex::new(Port92::new(control.clone())));
        space.pio.insert(0x92, 1, port92.clone() as SharedDevice)?;
        space
            .pio
            .set_fallback(Arc::new(Mutex::new(bus.window(pci::Space::Io))));
        space
            .mmio
            .set_fallback(Arc::new(Mutex::new(bus.window(pci::Space::Memory))));
        let pci_bus = Arc::new(Mutex::new(bus));
        space
            .pio
            .insert(0xcf8, 8, pci_bus.clone() as SharedDevice)?;

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
        space.mmio.insert(
            vireo_devices::lapic::APIC_DEFAULT_BASE,
            0x1000,
            Arc::new(Mutex::new(apics.lapic_mmio())),
        )?;
        space.mmio.insert(
            vireo_devices::ioapic::IOAPIC_DEFAULT_BASE,
            0x1000,
            Arc::new(Mutex::new(apics.ioapic_mmio())),
        )?;

        let space = Arc::new(space);
        let _ = dma.space.set(Arc::downgrade(&space));
        Ok(Machine {
            space,
            pic,
            pit,
            serial,
            i8042,
            rtc,
            pci: pci_bus,
            port92,
            fw_cfg,
            code,
            apics,
            control,
            engine_waker,
            vcpu_wakers,
            serial_out,
            clock: host_clock,
        })
    }

    /// Number of vCPUs.
    pub fn vcpus(&self) -> usize {
        self.vcpu_wakers.len()
    }

    /// The interrupt controller vCPU `i` takes interrupts from.
    pub fn interrupt_controller(&self, i: usize) -> Arc<dyn InterruptController> {
        let pic = (i == 0).then(|| self.pic.clone());
        self.apics.vcpu_controller(i, pic)
    }

    /// Machine time in ns: the clock the timers' deadlines are given in.
    pub fn now_ns(&self) -> u64 {
        self.clock.now_ns()
    }

    /// The instant machine time counts from (the vCPUs' TSC origin).
    pub fn clock_origin(&self) -> std::time::Instant {
        self.clock.origin()
    }

    /// Drains what the guest wrote to COM1.
    pub fn take_serial_output(&self) -> Vec<u8> {
        std::mem::take(&mut *lock(&self.serial_out))
    }

    /// Runs the timers; returns the next deadline in ns of machine time.
    pub fn poll_timers(&self) -> Option<u64> {
        let pit = lock(&self.pit).poll();
        let rtc = lock(&self.rtc).poll();
        let apic = self.apics.poll_timers();
        [pit, rtc, apic].into_iter().flatten().min()
    }

    /// Resets the devices to their power-on state.
    pub fn reset_devices(&self) {
        lock(&self.pic).reset();
        lock(&self.serial).reset();
        lock(&self.pit).reset();
        lock(&self.i8042).reset();
        lock(&self.rtc).reset();
        lock(&self.port92).reset();
        self.apics.reset();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::{Cpu, CpuExit, Segment, CS};

    fn outw(m: &Machine, port: u64, v: u16) {
        m.space.pio.write(port, &v.to_le_bytes());
    }

    /// fw_cfg and PCI answer on their ports, and a DMA transfer into RAM that holds
    /// decoded code makes the vCPU run the new code.
    #[test]
    fn fw_cfg_dma_into_code_is_seen_by_the_cpu() {
        let m = Machine::new(16 << 20, 1).expect("machine");
        outw(&m, 0x510, fw_key::SIGNATURE);
        let mut sig = [0u8; 4];
        for b in sig.iter_mut() {
            let mut x = [0u8];
            m.space.pio.read(0x511, &mut x);
            *b = x[0];
        }
        assert_eq!(&sig, b"QEMU");
        outw(&m, 0x510, fw_key::NB_CPUS);
        let mut x = [0u8];
        m.space.pio.read(0x511, &mut x);
        assert_eq!(x[0], 1);
        // PCI: the host bridge at 00:00.0.
        m.space.pio.write(0xcf8, &0x8000_0000u32.to_le_bytes());
        let mut id = [0u8; 4];
        m.space.pio.read(0xcfc, &mut id);
        assert_eq!(u32::from_le_bytes(id), 0x1237_8086);
        // Port 0x92: A20 reads back; bit 0 asks for a reset.
        m.space.pio.write(0x92, &[0x02]);
        let mut p92 = [0u8];
        m.space.pio.read(0x92, &mut p92);
        assert_eq!(p92[0], 0x02);
        assert!(!m.control.take_reset());
        m.space.pio.write(0x92, &[0x03]);
        assert!(m.control.take_reset());

        // Real mode at 0:1000: mov al, 1; hlt.
        m.space.ram.write_bytes(0x1000, &[0xb0, 0x01, 0xf4]);
        let mut cpu = Cpu::new_vcpu(m.space.clone(), m.code.clone(), 0, m.clock_origin());
        cpu.seg[CS] = Segment::real(0);
        cpu.rip = 0x1000;
        assert_eq!(cpu.run(100), CpuExit::Halted);
        assert_eq!(cpu.gpr[0] & 0xff, 1);

        // DMA "mov al, 2; hlt" over it from a fw_cfg file.
        let k = crate::bus::lock(&m.fw_cfg)
            .add_file("test/code", vec![0xb0, 0x02, 0xf4], false)
            .expect("file");
        let control: u32 = 0x08 | 0x02 | ((k as u32) << 16);
        let mut d = control.to_be_bytes().to_vec();
        d.extend_from_slice(&3u32.to_be_bytes());
        d.extend_from_slice(&0x1000u64.to_be_bytes());
        m.space.ram.write_bytes(0x2000, &d);
        m.space.pio.write(0x514, &0u32.to_be_bytes());
        m.space.pio.write(0x518, &0x2000u32.to_be_bytes());
        let mut status = [0u8; 4];
        m.space.ram.read_bytes(0x2000, &mut status);
        assert_eq!(status, [0; 4], "DMA reported an error");

        cpu.halted = false;
        cpu.rip = 0x1000;
        assert_eq!(cpu.run(100), CpuExit::Halted);
        assert_eq!(cpu.gpr[0] & 0xff, 2);
    }
}
