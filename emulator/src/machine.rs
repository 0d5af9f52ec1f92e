//! The PC (QEMU's `pc` machine, i440FX + PIIX3): RAM plus the legacy
//! devices (PIC, PIT, RTC/CMOS, COM1, i8042, fw_cfg, port 0x92/0xcf9,
//! isa-debug-exit, POST code port), PCI bus 0 with the 440FX host bridge,
//! PIIX3 ISA bridge and IDE, the PIIX4 ACPI PM function and a standard
//! VGA, a local APIC per vCPU and an I/O APIC (described to the guest by
//! an MP table and ACPI). It boots a kernel directly or through SeaBIOS.

use crate::apic::{Apics, IsaIrq, Waker};
use crate::boot::firmware::Firmware;
use crate::bus::{lock, AddressSpace, BusError, SharedDevice};
use crate::cpu::{InterruptController, IrqState, SharedCode};
use crate::display::{Renderer, SharedSurface, Surface};
use crate::memory::{GuestRam, MemoryError};
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::RwLock;
use std::sync::{Arc, Mutex, OnceLock, Weak};
use thiserror::Error;
use vireo_devices::acpi_pm::{self, AcpiPm};
use vireo_devices::debug_exit::DebugExit;
use vireo_devices::debugcon::DebugCon;
use vireo_devices::fw_cfg::{key as fw_key, DmaMemory, FwCfg};
use vireo_devices::i8042::{I8042Port, I8042};
use vireo_devices::ide::Ide;
use vireo_devices::pci::{self, PciBus};
use vireo_devices::pic::{Pic, PicIrqLine, PicPorts};
use vireo_devices::pit::{Pit, PortB};
use vireo_devices::port92::Port92;
use vireo_devices::post_code::PostCode;
use vireo_devices::reset_control::ResetControl;
use vireo_devices::rtc::Rtc;
use vireo_devices::serial::Serial;
use vireo_devices::vga::{self, SharedVga, VbePorts, Vga, VgaPorts, VgaWindow};
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
    poweroff: AtomicBool,
    exit: AtomicBool,
    status: AtomicI32,
    engine: Arc<Waker>,
}

impl Control {
    fn new(engine: Arc<Waker>) -> Self {
        Control {
            reset: AtomicBool::new(false),
            poweroff: AtomicBool::new(false),
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

    /// Takes a pending power-off request (the guest entered S5).
    pub fn take_poweroff(&self) -> bool {
        self.poweroff.swap(false, Ordering::AcqRel)
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
    fn request_poweroff(&self) {
        self.poweroff.store(true, Ordering::Release);
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
    /// The standard VGA with Bochs VBE (00:02.0).
    pub vga: SharedVga,
    /// The 440FX host bridge (00:00.0: PAM, SMRAM).
    host_bridge: Arc<Mutex<pci::PlainFunction>>,
    /// The PIIX3 ISA bridge (00:01.0: PIRQ routing).
    isa_bridge: Arc<Mutex<pci::PlainFunction>>,
    /// The PIIX3 IDE controller (00:01.1).
    pub ide: Arc<Mutex<Ide>>,
    /// The PIIX4 ACPI power-management function (00:01.3).
    pub acpi_pm: Arc<Mutex<AcpiPm>>,
    /// Port 0xcf9.
    pub reset_control: Arc<Mutex<ResetControl>>,
    /// What the screen shows, rendered from the VGA by
    /// [`Machine::refresh_display`]; clients read it.
    pub surface: SharedSurface,
    renderer: Mutex<Renderer>,
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
    /// The system BIOS, when the machine boots through firmware.
    bios: Option<Arc<[u8]>>,
    /// Bytes COM1 sent since the last [`Machine::take_serial_output`].
    serial_out: Arc<Mutex<Vec<u8>>>,
    /// Bytes written to the debug console (port 0x402) not yet taken.
    debug_out: Arc<Mutex<Vec<u8>>>,
    clock: Arc<HostClock>,
}

/// CONFIG_DATA (0xcfc–0xcff) of the PCI bus registered at 0xcf8.
struct PciConfigData(Arc<Mutex<PciBus>>);

impl vireo_devices::BusDevice for PciConfigData {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        lock(&self.0).read(offset + 4, data)
    }
    fn write(&mut self, offset: u64, data: &[u8]) {
        lock(&self.0).write(offset + 4, data)
    }
}

/// The BIOS ROM where the processor starts (ending at 4 GiB): reads give
/// the image, writes are ignored.
struct Rom(Arc<[u8]>);

impl vireo_devices::BusDevice for Rom {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            *b = self.0.get(offset as usize + i).copied().unwrap_or(0xff);
        }
    }
    fn write(&mut self, offset: u64, _data: &[u8]) {
        vireo_devices::log_odd_access!("bios rom: write at {offset:#x} ignored");
    }
}

/// Where direct kernel boot puts the ACPI tables and the RSDP.
const ACPI_TABLES_ADDR: u64 = 0xe_0000;
const ACPI_RSDP_ADDR: u64 = 0xf_0000;

/// Where the last 128 KiB of the BIOS also appear (the "isa-bios" window
/// at 0xe0000–0xfffff that real-mode code runs from).
const BIOS_SHADOW: u64 = 0xe_0000;
const BIOS_SHADOW_LEN: usize = 0x2_0000;

/// Most debug-console bytes kept unread (firmware can print without end).
const DEBUG_OUT_MAX: usize = 1 << 20;

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
    /// Builds a machine with `memory` bytes of RAM and `vcpus` processors
    /// for direct kernel boot (no firmware).
    pub fn new(memory: u64, vcpus: usize) -> Result<Self, MachineError> {
        Self::with_firmware(memory, vcpus, None)
    }

    /// Builds a machine that boots `firmware` when given: its BIOS ROM
    /// ends at 4 GiB, and CMOS and fw_cfg carry what SeaBIOS reads.
    pub fn with_firmware(
        memory: u64,
        vcpus: usize,
        firmware: Option<&Firmware>,
    ) -> Result<Self, MachineError> {
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
        fw.add_item(
            fw_key::NOGRAPHIC,
            (firmware.is_none() as u16).to_le_bytes().to_vec(),
        );
        fw.add_item(fw_key::BOOT_MENU, 0u16.to_le_bytes().to_vec());
        let _ = fw.add_file("etc/e820", e820_table(&space.ram), false);
        let fw_cfg = Arc::new(Mutex::new(fw));
        space
            .pio
            .insert(0x510, 12, fw_cfg.clone() as SharedDevice)?;
        let mut bus = PciBus::new();
        let host_bridge = Arc::new(Mutex::new(pci::i440fx_host_bridge()));
        let isa_bridge = Arc::new(Mutex::new(pci::piix3_isa_bridge()));
        bus.attach(0, 0, host_bridge.clone());
        bus.attach(1, 0, isa_bridge.clone());
        let vga_dev: SharedVga = Arc::new(Mutex::new(Vga::new(
            firmware.and_then(|f| f.vgabios.clone()).unwrap_or_default(),
        )));
        bus.attach(2, 0, vga_dev.clone());
        space.pio.insert(
            vga::VGA_PORTS_BASE as u64,
            vga::VGA_PORTS_LEN as u64,
            Arc::new(Mutex::new(VgaPorts(vga_dev.clone()))),
        )?;
        space.pio.insert(
            vga::VBE_PORTS_BASE as u64,
            2,
            Arc::new(Mutex::new(VbePorts(vga_dev.clone()))),
        )?;
        space.mmio.insert(
            vga::VGA_WINDOW_BASE,
            vga::VGA_WINDOW_LEN,
            Arc::new(Mutex::new(VgaWindow(vga_dev.clone()))),
        )?;
        let ide = Arc::new(Mutex::new(Ide::new(dma.clone(), irq(14), irq(15))));
        for (base, len, port) in Ide::legacy_ports(&ide) {
            space.pio.insert(base, len, Arc::new(Mutex::new(port)))?;
        }
        bus.attach(1, 1, ide.clone());
        let pm = Arc::new(Mutex::new(AcpiPm::new(
            irq(9),
            clock.clone(),
            control.clone(),
        )));
        {
            let p = lock(&pm);
            space.pio.insert(
                acpi_pm::APM_PORT as u64,
                2,
                Arc::new(Mutex::new(p.apm_ports())),
            )?;
            space.pio.insert(
                acpi_pm::GPE0_PORT as u64,
                acpi_pm::GPE0_LEN as u64,
                Arc::new(Mutex::new(p.gpe0_block())),
            )?;
        }
        bus.attach(1, 3, pm.clone());
        let reset_control = Arc::new(Mutex::new(ResetControl::new(control.clone())));
        space.pio.insert(
            crate::acpi::RESET_PORT as u64,
            1,
            reset_control.clone() as SharedDevice,
        )?;
        if firmware.is_some() {
            let t = crate::acpi::build(vcpus);
            let mut f = lock(&fw_cfg);
            let _ = f.add_file(crate::acpi::TABLES_FILE, t.tables, false);
            let _ = f.add_file(crate::acpi::RSDP_FILE, t.rsdp, false);
            let _ = f.add_file(crate::acpi::LOADER_FILE, t.loader, false);
        }
        let port92 = Arc::new(Mutex::new(Port92::new(control.clone())));
        space.pio.insert(0x92, 1, port92.clone() as SharedDevice)?;
        space
            .pio
            .set_fallback(Arc::new(Mutex::new(bus.window(pci::Space::Io))));
        space
            .mmio
            .set_fallback(Arc::new(Mutex::new(bus.window(pci::Space::Memory))));
        let pci_bus = Arc::new(Mutex::new(bus));
        // CONFIG_ADDRESS is a dword at 0xcf8 whose byte 0xcf9 is the
        // reset control register; CONFIG_DATA is at 0xcfc.
        space
            .pio
            .insert(0xcf8, 1, pci_bus.clone() as SharedDevice)?;
        space.pio.insert(
            0xcfc,
            4,
            Arc::new(Mutex::new(PciConfigData(pci_bus.clone()))),
        )?;

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
        let debug_out = Arc::new(Mutex::new(Vec::new()));
        let sink = debug_out.clone();
        space.pio.insert(
            0x402,
            1,
            Arc::new(Mutex::new(DebugCon::new(Box::new(move |b: u8| {
                let mut out = lock(&sink);
                if out.len() < DEBUG_OUT_MAX {
                    out.push(b);
                }
            })))),
        )?;
        let bios: Option<Arc<[u8]>> = firmware.map(|f| Arc::from(f.bios.as_slice()));
        if let Some(b) = &bios {
            let len = b.len() as u64;
            space.mmio.insert(
                (4u64 << 30) - len,
                len,
                Arc::new(Mutex::new(Rom(b.clone()))),
            )?;
            fill_cmos(&mut lock(&rtc), &space.ram, vcpus);
        }
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
            vga: vga_dev,
            host_bridge,
            isa_bridge,
            ide,
            acpi_pm: pm,
            reset_control,
            surface: Arc::new(RwLock::new(Surface::new(720, 400))),
            renderer: Mutex::new(Renderer::new()),
            code,
            apics,
            control,
            engine_waker,
            vcpu_wakers,
            bios,
            serial_out,
            debug_out,
            clock: host_clock,
        })
    }

    /// Renders what changed on the VGA into [`Machine::surface`].
    pub fn refresh_display(&self) {
        let now_ms = self.clock.now_ns() / 1_000_000;
        lock(&self.renderer).render_shared(&self.surface, &self.vga, now_ms);
    }

    /// Puts the ACPI tables in RAM and turns the PM registers on, as
    /// firmware would, for a kernel booted directly: the RSDP at 0xf0000
    /// (reserved in the e820 map), the tables at 0xe0000.
    pub fn install_acpi(&self) -> Result<(), crate::acpi::AcpiError> {
        let ram = &self.space.ram;
        crate::acpi::install(
            |addr, data| ram.write_bytes(addr, data),
            self.vcpus(),
            ACPI_TABLES_ADDR,
            ACPI_RSDP_ADDR,
        )?;
        lock(&self.acpi_pm).enable_at(crate::acpi::PM_BASE);
        lock(&self.pci).invalidate_windows();
        Ok(())
    }

    /// True when the machine boots through firmware.
    pub fn has_firmware(&self) -> bool {
        self.bios.is_some()
    }

    /// Puts the BIOS's last 128 KiB at 0xe0000, as the chipset shows it
    /// after a reset (PAM registers at their reset value, see
    /// [`Machine::reset_devices`]), before firmware shadows itself in RAM.
    pub fn load_firmware(&self) {
        let Some(bios) = &self.bios else { return };
        let tail = &bios[bios.len().saturating_sub(BIOS_SHADOW_LEN)..];
        let at = BIOS_SHADOW + (BIOS_SHADOW_LEN - tail.len()) as u64;
        if self.space.ram.write_bytes(at, tail) {
            self.code.note_device_write(at, tail.len() as u64);
        }
    }

    /// Sets the firmware's boot order from QEMU-style `--boot` letters
    /// (`a` floppy, `c` first disk, `d` CD-ROM, `n` network), stored in
    /// CMOS where SeaBIOS reads it on QEMU machines (0x3d, 0x38).
    pub fn set_boot_order(&self, order: &str) {
        let code = |ch: char| match ch {
            'a' => Some(1u32),
            'c' => Some(2),
            'd' => Some(3),
            'n' => Some(4),
            _ => None,
        };
        let codes: Vec<u32> = order.chars().filter_map(code).take(3).collect();
        let mut v = 0u32;
        for (i, c) in codes.iter().enumerate() {
            v |= c << (4 * i);
        }
        let mut rtc = lock(&self.rtc);
        rtc.set_ram(0x3d, v as u8);
        // High nibble: third device; bit 0 clear: check floppy signatures.
        rtc.set_ram(0x38, ((v >> 4) & 0xf0) as u8);
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

    /// Drains what firmware wrote to the debug console (port 0x402).
    pub fn take_debug_output(&self) -> Vec<u8> {
        std::mem::take(&mut *lock(&self.debug_out))
    }

    /// Runs the timers; returns the next deadline in ns of machine time.
    pub fn poll_timers(&self) -> Option<u64> {
        let pit = lock(&self.pit).poll();
        let rtc = lock(&self.rtc).poll();
        let pm = lock(&self.acpi_pm).poll();
        let apic = self.apics.poll_timers();
        [pit, rtc, pm, apic].into_iter().flatten().min()
    }

    /// Resets the devices to their power-on state.
    pub fn reset_devices(&self) {
        lock(&self.pic).reset();
        lock(&self.serial).reset();
        lock(&self.pit).reset();
        lock(&self.i8042).reset();
        lock(&self.rtc).reset();
        lock(&self.port92).reset();
        lock(&self.reset_control).reset();
        // The chipset's configuration (PAM, SMRAM, PIRQ routing) back to
        // power-on values, so firmware shadows itself again.
        *lock(&self.host_bridge) = pci::i440fx_host_bridge();
        *lock(&self.isa_bridge) = pci::piix3_isa_bridge();
        lock(&self.ide).reset();
        lock(&self.acpi_pm).reset();
        lock(&self.pci).invalidate_windows();
        self.apics.reset();
    }
}

/// The memory map firmware reads from fw_cfg's "etc/e820" (ACPI 6.4
/// §15.1: 20-byte entries of base, length, type; type 1 is RAM).
fn e820_table(ram: &GuestRam) -> Vec<u8> {
    let mut t = Vec::new();
    let mut entry = |base: u64, len: u64, kind: u32| {
        t.extend_from_slice(&base.to_le_bytes());
        t.extend_from_slice(&len.to_le_bytes());
        t.extend_from_slice(&kind.to_le_bytes());
    };
    entry(0, ram.below_4g(), 1);
    if ram.above_4g() > 0 {
        entry(crate::memory::PCI_HOLE_END, ram.above_4g(), 1);
    }
    t
}

/// The CMOS bytes a PC BIOS reads for memory sizes, the vCPU count and
/// the equipment (the IBM AT CMOS map; 0x34/0x35, 0x5b–0x5d and 0x5f as
/// QEMU machines define them for SeaBIOS).
fn fill_cmos(rtc: &mut Rtc, ram: &GuestRam, vcpus: usize) {
    let below = ram.below_4g();
    // Base memory: 640 KiB.
    rtc.set_ram(0x15, 0x80);
    rtc.set_ram(0x16, 0x02);
    // Extended memory from 1 MiB, in KiB, at most 0xfc00 (63 MiB).
    let ext = (below.saturating_sub(1 << 20) >> 10).min(0xfc00) as u16;
    for (lo, hi) in [(0x17, 0x18), (0x30, 0x31)] {
        rtc.set_ram(lo, ext as u8);
        rtc.set_ram(hi, (ext >> 8) as u8);
    }
    // Memory above 16 MiB (below 4 GiB) in 64 KiB units.
    let ext2 = (below.saturating_sub(16 << 20) >> 16).min(0xffff) as u16;
    rtc.set_ram(0x34, ext2 as u8);
    rtc.set_ram(0x35, (ext2 >> 8) as u8);
    // Memory above 4 GiB in 64 KiB units.
    let high = ram.above_4g() >> 16;
    rtc.set_ram(0x5b, high as u8);
    rtc.set_ram(0x5c, (high >> 8) as u8);
    rtc.set_ram(0x5d, (high >> 16) as u8);
    rtc.set_ram(0x5f, (vcpus - 1) as u8);
    // Equipment: VGA/EGA display, a math coprocessor.
    rtc.set_ram(0x14, 0x06);
    // No floppy drives.
    rtc.set_ram(0x10, 0);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::{Cpu, CpuExit, Segment, CS};

    fn outw(m: &Machine, port: u64, v: u16) {
        m.space.pio.write(port, &v.to_le_bytes());
    }

    /// A reset puts the chipset's PAM and PIRQ registers back to their
    /// power-on values (firmware then shadows itself again).
    #[test]
    fn reset_restores_the_chipset_configuration() {
        let m = Machine::new(16 << 20, 1).expect("machine");
        let cfg = |m: &Machine, addr: u32| {
            m.space.pio.write(0xcf8, &addr.to_le_bytes());
            let mut d = [0u8; 4];
            m.space.pio.read(0xcfc, &mut d);
            u32::from_le_bytes(d)
        };
        m.space.pio.write(0xcf8, &0x8000_0058u32.to_le_bytes());
        m.space.pio.write(0xcfc, &0x3333_3300u32.to_le_bytes());
        m.space.pio.write(0xcf8, &0x8000_0860u32.to_le_bytes());
        m.space.pio.write(0xcfc, &0x0b0b_0a0au32.to_le_bytes());
        assert_eq!(cfg(&m, 0x8000_0058), 0x3333_3300);
        assert_eq!(cfg(&m, 0x8000_0860), 0x0b0b_0a0a);
        m.reset_devices();
        assert_eq!(cfg(&m, 0x8000_0058), 0);
        assert_eq!(cfg(&m, 0x8000_0860), 0x8080_8080);
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

    /// The legacy port ranges of the machine (base, length).
    const SPRAY_PORTS: &[(u64, u64)] = &[
        (0x20, 2),
        (0xa0, 2),
        (0x4d0, 2),
        (0x40, 4),
        (0x61, 1),
        (0x70, 2),
        (0x60, 1),
        (0x64, 1),
        (0x3f8, 8),
        (0x510, 12),
        (0xcf8, 8),
        (0x92, 1),
        (0xf4, 1),
        (0x80, 1),
        (0x402, 1),
        (0x3b0, 0x30),
        (0x1ce, 2),
        (0x1f0, 8),
        (0x3f6, 1),
        (0x170, 8),
        (0x376, 1),
        (0xb2, 2),
        (0xafe0, 4),
    ];

    /// A read or write of a random size (1, 2, 4) with a random value at
    /// a random port of `base..base + len`.
    fn spray_port(m: &Machine, rng: &mut impl rand::Rng, base: u64, len: u64) {
        let port = (base + rng.gen_range(0..len)) & 0xffff;
        let size = [1usize, 2, 4][rng.gen_range(0..3)];
        if rng.gen_bool(0.5) {
            m.space.pio.write_value(port, size, rng.gen());
        } else {
            m.space.pio.read_value(port, size);
        }
    }

    /// A read or write of a random size (1, 2, 4, 8) with a random value
    /// at a random physical address of `base..base + len`.
    fn spray_phys(m: &Machine, rng: &mut impl rand::Rng, base: u64, len: u64) {
        let addr = base.wrapping_add(rng.gen_range(0..len));
        let size = [1usize, 2, 4, 8][rng.gen_range(0..4)];
        if rng.gen_bool(0.5) {
            m.space.write_phys(addr, size, rng.gen());
        } else {
            m.space.read_phys(addr, size);
        }
    }

    fn cfg_addr(dev: u32, func: u32, reg: u32) -> u32 {
        0x8000_0000 | dev << 11 | func << 8 | (reg & 0xfc)
    }

    fn cfg_read32(m: &Machine, dev: u32, func: u32, reg: u32) -> u32 {
        m.space
            .pio
            .write_value(0xcf8, 4, cfg_addr(dev, func, reg) as u64);
        m.space.pio.read_value(0xcfc, 4) as u32
    }

    fn cfg_write(m: &Machine, dev: u32, func: u32, reg: u32, size: usize, v: u64) {
        m.space
            .pio
            .write_value(0xcf8, 4, cfg_addr(dev, func, reg) as u64);
        m.space.pio.write_value(0xcfc + (reg as u64 & 3), size, v);
    }

    /// Renders the VGA and checks the surface stays within the largest
    /// mode a guest can set.
    fn render_checked(m: &Machine) {
        m.refresh_display();
        let s = m.surface.read().unwrap_or_else(|e| e.into_inner());
        let (w, h) = (s.width(), s.height());
        assert!(
            w <= vga::VBE_MAX_XRES as u32 && h <= vga::VBE_MAX_YRES as u32,
            "the surface grew to {w}x{h}"
        );
        assert_eq!(s.pixels().len(), (w * h * 4) as usize);
    }

    /// Where the functions' BARs (and expansion ROMs) decode now:
    /// (is I/O, base).
    fn bar_bases(m: &Machine) -> Vec<(bool, u64)> {
        let mut v = Vec::new();
        for dev in 0..32 {
            for func in 0..8 {
                if cfg_read32(m, dev, func, 0) == 0xffff_ffff {
                    continue;
                }
                for reg in (0x10..=0x24).step_by(4).chain([0x30]) {
                    let b = cfg_read32(m, dev, func, reg);
                    if reg != 0x30 && b & 1 != 0 {
                        v.push((true, (b & !3 & 0xffff) as u64));
                    } else {
                        v.push((false, (b & !0xf) as u64));
                    }
                }
            }
        }
        // The PM window (PMBA, 00:01.3 register 0x40).
        v.push((true, (cfg_read32(m, 1, 3, 0x40) & 0xffc0) as u64));
        v
    }

    /// Issues an ATA or ATAPI command meant for DMA on `channel` with
    /// random parameters, points the bus master at a random PRD table and
    /// starts it.
    fn random_dma(m: &Machine, rng: &mut impl rand::Rng, bm: u64, channel: usize) {
        let ram_top = m.space.ram.below_4g();
        let cmd_base = [0x1f0u64, 0x170][channel];
        let bm = bm + 8 * channel as u64;
        // A PRD table at a random place in RAM (sometimes outside it).
        let table = if rng.gen_bool(0.9) {
            rng.gen_range(0..ram_top - 0x1_0000) as u32 & !3
        } else {
            rng.gen::<u32>() & !3
        };
        let entries = rng.gen_range(1..64);
        for i in 0..entries {
            let addr: u32 = if rng.gen_bool(0.8) {
                rng.gen_range(0..ram_top as u32)
            } else {
                rng.gen()
            };
            let count: u16 = rng.gen();
            let eot = if i == entries - 1 || rng.gen_bool(0.05) {
                0x80u8
            } else {
                rng.gen::<u8>() & 0x7f
            };
            let mut e = addr.to_le_bytes().to_vec();
            e.extend_from_slice(&count.to_le_bytes());
            e.extend_from_slice(&[rng.gen(), eot]);
            m.space.ram.write_bytes(table as u64 + 8 * i as u64, &e);
        }
        m.space.pio.write_value(bm, 1, 0); // stop
        m.space.pio.write_value(bm + 2, 1, 0x06); // clear ERR/INTR
        m.space.pio.write_value(bm + 4, 4, table as u64);
        let slot = rng.gen_range(0..2u8);
        m.space
            .pio
            .write_value(cmd_base + 6, 1, 0xe0 | (slot as u64) << 4);
        let cmd =
            [0xc8u8, 0xca, 0x25, 0x35, 0xa0, 0xa0, 0xc9, 0xcb, rng.gen()][rng.gen_range(0..9)];
        if cmd == 0xa0 {
            // PACKET with DMA, then a CDB (mostly READ(10)/READ(12)).
            m.space.pio.write_value(cmd_base + 1, 1, 1);
            m.space.pio.write_value(cmd_base + 4, 1, rng.gen());
            m.space.pio.write_value(cmd_base + 5, 1, rng.gen());
            m.space.pio.write_value(cmd_base + 7, 1, 0xa0);
            let mut cdb: [u8; 12] = rng.gen();
            cdb[0] = [0x28, 0xa8, 0x28, 0xbe, cdb[0]][rng.gen_range(0..5)];
            if rng.gen_bool(0.5) {
                // A small transfer near the start of the medium.
                cdb[2..6].copy_from_slice(&rng.gen_range(0..300u32).to_be_bytes());
                cdb[6..10].copy_from_slice(&[0, 0, 0, rng.gen_range(0..40)]);
            }
            for w in cdb.chunks(2) {
                m.space
                    .pio
                    .write_value(cmd_base, 2, u16::from_le_bytes([w[0], w[1]]) as u64);
            }
        } else {
            let ext = matches!(cmd, 0x25 | 0x35);
            for _ in 0..if ext { 2 } else { 1 } {
                m.space.pio.write_value(cmd_base + 2, 1, rng.gen());
                let lba: u32 = if rng.gen_bool(0.7) {
                    rng.gen_range(0..3000)
                } else {
                    rng.gen()
                };
                m.space.pio.write_value(cmd_base + 3, 1, lba as u64 & 0xff);
                m.space
                    .pio
                    .write_value(cmd_base + 4, 1, (lba >> 8) as u64 & 0xff);
                m.space
                    .pio
                    .write_value(cmd_base + 5, 1, (lba >> 16) as u64 & 0xff);
            }
            m.space.pio.write_value(cmd_base + 7, 1, cmd as u64);
        }
        // Start, in a random direction (sometimes the wrong one).
        let dir = if rng.gen_bool(0.5) { 0x08 } else { 0 };
        m.space.pio.write_value(bm, 1, dir | 1);
        m.space.pio.read_value(bm + 2, 1);
        m.space.pio.read_value(cmd_base + 7, 1);
        m.space.pio.write_value(bm, 1, dir);
    }

    /// A guest spraying random I/O at every device never panics: random
    /// port reads and writes of every size over every device's ports,
    /// random PCI configuration writes (BARs moved to random places),
    /// random MMIO over the VGA window, the APICs, the PCI hole and the
    /// BARs, random VGA/VBE modes rendered, fw_cfg and IDE bus-master DMA
    /// from random descriptors. The surface stays within 2560x1600, and
    /// afterwards RAM, fw_cfg and PCI still answer.
    #[test]
    fn a_guest_spraying_random_io_at_every_device_never_panics() {
        use rand::{Rng, SeedableRng};
        use vireo_devices::block::MemBackend;
        use vireo_devices::ide::Drive;

        let mut vgabios = vec![0u8; 0x8000];
        vgabios[..3].copy_from_slice(&[0x55, 0xaa, 0x40]);
        let fw = Firmware {
            bios_path: "spray-bios.bin".into(),
            bios: vec![0; 0x1_0000],
            vgabios: Some(vgabios),
        };
        let m = Machine::with_firmware(64 << 20, 2, Some(&fw)).expect("machine");
        // SPRAY_SEED=N tries another sequence.
        let seed = std::env::var("SPRAY_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(0x5eed_f1e5u64);
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        {
            let mut ide = lock(&m.ide);
            let disk: Vec<u8> = (0..1 << 20).map(|_| rng.gen()).collect();
            ide.attach(0, 0, Drive::disk(Box::new(MemBackend(disk))));
            ide.attach(0, 1, Drive::disk(Box::new(MemBackend(vec![0x5a; 4096]))));
            let cd: Vec<u8> = (0..256 * 2048).map(|i| (i / 2048) as u8).collect();
            ide.attach(1, 0, Drive::cdrom(Some(Box::new(MemBackend(cd)))));
            ide.attach(1, 1, Drive::cdrom(None));
        }
        let ram_top = m.space.ram.below_4g();
        let tick = |m: &Machine, i: usize| {
            if i.is_multiple_of(512) {
                m.poll_timers();
            }
            if i.is_multiple_of(4096) {
                render_checked(m);
            }
        };

        // 1. Every device's ports, then anywhere in the I/O space.
        let mut i = 0;
        for &(base, len) in SPRAY_PORTS {
            for _ in 0..30_000 {
                spray_port(&m, &mut rng, base, len);
                tick(&m, i);
                i += 1;
            }
        }
        for _ in 0..50_000 {
            spray_port(&m, &mut rng, 0, 0x1_0000);
            tick(&m, i);
            i += 1;
        }

        // 2. PCI configuration space of every device/function: random
        // writes everywhere, then the BARs and command registers, with the
        // windows they decode sprayed after each round.
        for round in 0..40u32 {
            for dev in 0..32 {
                for func in 0..8 {
                    for _ in 0..8 {
                        let reg = rng.gen_range(0..0x100u32);
                        let size = [1usize, 2, 4][rng.gen_range(0..3)];
                        cfg_write(&m, dev, func, reg, size, rng.gen());
                    }
                }
            }
            for (dev, func) in [(0, 0), (1, 0), (1, 1), (1, 3), (2, 0)] {
                for reg in (0x10..=0x24).step_by(4).chain([0x30]) {
                    let v: u32 = match rng.gen_range(0..4) {
                        0 => rng.gen(),
                        1 => 0xffff_ffff,
                        2 => rng.gen_range(0xe000_0000..=0xffff_ffffu32),
                        _ => rng.gen_range(0x1000..0x1_0000u32) | 1,
                    };
                    cfg_write(&m, dev, func, reg, 4, v as u64);
                }
                cfg_write(&m, dev, func, 4, 2, 0x7);
            }
            // The PM window on, at a random place.
            cfg_write(&m, 1, 3, 0x40, 4, rng.gen_range(0..0x1_0000u64) | 1);
            cfg_write(&m, 1, 3, 0x80, 1, 1);
            for (io, base) in bar_bases(&m) {
                if base == 0 {
                    continue;
                }
                for _ in 0..200 {
                    if io {
                        spray_port(&m, &mut rng, base, 0x40);
                    } else {
                        spray_phys(&m, &mut rng, base, 0x1_0000);
                    }
                    tick(&m, i);
                    i += 1;
                }
            }
            if round.is_multiple_of(8) {
                render_checked(&m);
            }
        }

        // 3. MMIO: the VGA window (in random VGA modes), the APICs, the
        // PCI hole, the BIOS ROM, and a few absurd addresses.
        for _ in 0..60_000 {
            let (base, len) = match rng.gen_range(0..10) {
                0..=3 => (vga::VGA_WINDOW_BASE, vga::VGA_WINDOW_LEN),
                4 => (vireo_devices::lapic::APIC_DEFAULT_BASE, 0x1000),
                5 => (vireo_devices::ioapic::IOAPIC_DEFAULT_BASE, 0x1000),
                6 | 7 => (0xe000_0000, 0x2000_0000),
                8 => (ram_top - 16, 32),
                _ => (rng.gen(), 1),
            };
            spray_phys(&m, &mut rng, base, len);
            if rng.gen_bool(0.01) {
                spray_port(&m, &mut rng, 0x3c0, 0x20);
            }
            tick(&m, i);
            i += 1;
        }

        // 4. VGA and VBE registers as index/data pairs, rendered often.
        // Huge VBE resolutions are refused; the largest mode, with virtual
        // size and offsets pushed out, is as far as the surface grows.
        let dispi = |index: u16, v: u16| {
            m.space.pio.write_value(0x1ce, 2, index as u64);
            m.space.pio.write_value(0x1cf, 2, v as u64);
        };
        dispi(vga::dispi::ENABLE, 0);
        dispi(vga::dispi::XRES, 0xffff);
        dispi(vga::dispi::YRES, 0xffff);
        m.space.pio.write_value(0x1ce, 2, vga::dispi::XRES as u64);
        assert!(m.space.pio.read_value(0x1cf, 2) <= vga::VBE_MAX_XRES as u64);
        m.space.pio.write_value(0x1ce, 2, vga::dispi::YRES as u64);
        assert!(m.space.pio.read_value(0x1cf, 2) <= vga::VBE_MAX_YRES as u64);
        dispi(vga::dispi::XRES, vga::VBE_MAX_XRES);
        dispi(vga::dispi::YRES, vga::VBE_MAX_YRES);
        dispi(vga::dispi::BPP, 32);
        dispi(vga::dispi::ENABLE, 0xc1);
        for index in vga::dispi::VIRT_WIDTH..=vga::dispi::Y_OFFSET {
            dispi(index, 0xffff);
        }
        render_checked(&m);
        {
            let s = m.surface.read().expect("surface");
            assert_eq!(
                (s.width(), s.height()),
                (vga::VBE_MAX_XRES as u32, vga::VBE_MAX_YRES as u32)
            );
        }
        for n in 0..20_000u32 {
            match rng.gen_range(0..6) {
                0 => {
                    m.space.pio.write_value(0x1ce, 2, rng.gen_range(0..12));
                    let v: u16 = match rng.gen_range(0..3) {
                        0 => rng.gen(),
                        1 => [0xffff, 0, 1, 2560, 2561, 1600, 4096][rng.gen_range(0..7)],
                        _ => [8, 15, 16, 24, 32, 0x41, 0xc1, 0x61][rng.gen_range(0..8)],
                    };
                    m.space.pio.write_value(0x1cf, 2, v as u64);
                }
                1 => {
                    m.space.pio.write_value(0x3c4, 1, rng.gen_range(0..8));
                    m.space.pio.write_value(0x3c5, 1, rng.gen());
                }
                2 => {
                    m.space.pio.write_value(0x3ce, 1, rng.gen_range(0..10));
                    m.space.pio.write_value(0x3cf, 1, rng.gen());
                }
                3 => {
                    m.space.pio.write_value(0x3d4, 1, rng.gen_range(0..0x20));
                    m.space.pio.write_value(0x3d5, 1, rng.gen());
                }
                4 => {
                    m.space.pio.read_value(0x3da, 1);
                    m.space.pio.write_value(0x3c0, 1, rng.gen_range(0..0x40));
                    m.space.pio.write_value(0x3c0, 1, rng.gen());
                }
                _ => spray_phys(&m, &mut rng, 0xa0000, 0x20000),
            }
            if n.is_multiple_of(64) {
                render_checked(&m);
            }
        }

        // 5. DMA: fw_cfg descriptors and IDE bus-master transfers from
        // random tables, with the BMDMA window at a known place.
        for _ in 0..300 {
            let at = rng.gen_range(0..ram_top - 16) & !0xf;
            let control: u32 = (rng.gen::<u32>() & 0xffff_001f) | (rng.gen_range(0..0x40) << 16);
            let len: u32 = if rng.gen_bool(0.9) {
                rng.gen_range(0..0x2_0000)
            } else {
                rng.gen()
            };
            let dst = if rng.gen_bool(0.9) {
                rng.gen_range(0..ram_top)
            } else {
                rng.gen()
            };
            let mut d = control.to_be_bytes().to_vec();
            d.extend_from_slice(&len.to_be_bytes());
            d.extend_from_slice(&dst.to_be_bytes());
            m.space.ram.write_bytes(at, &d);
            m.space.pio.write_value(0x514, 4, 0);
            m.space
                .pio
                .write_value(0x518, 4, (at as u32).swap_bytes() as u64);
        }
        cfg_write(&m, 1, 1, 0x20, 4, 0xc001);
        cfg_write(&m, 1, 1, 4, 2, 0x5);
        for n in 0..3000 {
            random_dma(&m, &mut rng, 0xc000, n % 2);
            if n.is_multiple_of(16) {
                // Random register traffic between transfers too.
                for _ in 0..16 {
                    let (base, len) =
                        [(0x1f0, 8), (0x170, 8), (0xc000, 16), (0x3f6, 1)][rng.gen_range(0..4)];
                    spray_port(&m, &mut rng, base, len);
                }
                m.poll_timers();
            }
        }

        // Debug-exit, the reset register and the rest only set flags.
        m.poll_timers();
        render_checked(&m);
        assert!(m.control.exit_status().is_some(), "debug-exit never fired");
        assert!(m.control.take_reset(), "no reset was requested");
        m.control.take_poweroff();
        m.take_serial_output();
        assert!(m.take_debug_output().len() <= DEBUG_OUT_MAX);

        // The machine still works, before and after a device reset.
        for pass in 0..2 {
            m.space.write_phys(0x20_0000, 4, 0xdead_beef);
            assert_eq!(m.space.read_phys(0x20_0000, 4), 0xdead_beef);
            let mut b = [0u8; 4];
            assert!(m.space.ram.read_bytes(0x20_0000, &mut b));
            assert_eq!(u32::from_le_bytes(b), 0xdead_beef);
            outw(&m, 0x510, fw_key::SIGNATURE);
            let sig: Vec<u8> = (0..4)
                .map(|_| m.space.pio.read_value(0x511, 1) as u8)
                .collect();
            assert_eq!(sig, b"QEMU", "fw_cfg signature (pass {pass})");
            assert_eq!(cfg_read32(&m, 0, 0, 0), 0x1237_8086);
            assert_eq!(cfg_read32(&m, 1, 1, 0), 0x7010_8086);
            m.reset_devices();
        }
        // The VGA draws text again once VBE is off and mode 3 programmed.
        m.space.pio.write_value(0x1ce, 2, vga::dispi::ENABLE as u64);
        m.space.pio.write_value(0x1cf, 2, 0);
        vga::modes::program(&mut lock(&m.vga), &vga::modes::MODE_03);
        render_checked(&m);
        assert_eq!(
            {
                let s = m.surface.read().expect("surface");
                (s.width(), s.height())
            },
            (720, 400)
        );
    }
}
