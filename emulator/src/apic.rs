//! The APIC wiring of a multiprocessor PC: one local APIC per vCPU, the I/O
//! APIC, the message routing between them (SDM vol. 3 §10.6 and §10.11, the
//! 82093AA datasheet), ISA IRQ lines that reach both the 8259 pair and the
//! I/O APIC, and each vCPU's view of its interrupt controller.
//!
//! Lock order: a local APIC's lock is a leaf (nothing is called while it is
//! held except setting atomics); the I/O APIC's lock may be held while
//! messages are routed to local APICs.

use crate::bus::lock;
use crate::cpu::{CpuEvent, InterruptController, IrqState};
use std::cell::Cell;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;
use vireo_devices::ioapic::IoApic;
use vireo_devices::lapic::{ApicMessage, DeliveryMode, LapicEffect, LocalApic};
use vireo_devices::pic::Pic;
use vireo_devices::{BusDevice, IrqLine};

thread_local! {
    /// Index of the vCPU the current thread runs (local APIC accesses go to
    /// that vCPU's APIC).
    static CURRENT_VCPU: Cell<usize> = const { Cell::new(0) };
}

/// Declares that the calling thread runs vCPU `index`.
pub fn set_current_vcpu(index: usize) {
    CURRENT_VCPU.with(|c| c.set(index));
}

fn current_vcpu() -> usize {
    CURRENT_VCPU.with(|c| c.get())
}

/// Wakes a thread waiting for work (a halted vCPU, the engine's timer loop).
#[derive(Default)]
pub struct Waker {
    flag: Mutex<bool>,
    cv: Condvar,
}

impl Waker {
    /// Wakes the waiter (or makes its next wait return at once).
    pub fn wake(&self) {
        *lock(&self.flag) = true;
        self.cv.notify_one();
    }

    /// Waits until woken or `timeout` passes.
    pub fn wait(&self, timeout: Duration) {
        let mut f = lock(&self.flag);
        if !*f {
            f = match self.cv.wait_timeout(f, timeout) {
                Ok((g, _)) => g,
                Err(p) => p.into_inner().0,
            };
        }
        *f = false;
    }
}

/// One vCPU's local APIC with what its CPU polls at every block boundary
/// kept in atomics (updated under the APIC's lock, so they never go stale).
pub struct ApicCell {
    lapic: Mutex<LocalApic>,
    /// What the CPU polls (the BSP's also carries the 8259's INTR).
    pub state: Arc<IrqState>,
    waker: Arc<Waker>,
}

impl ApicCell {
    fn new(lapic: LocalApic, waker: Arc<Waker>) -> Self {
        let cell = ApicCell {
            lapic: Mutex::new(lapic),
            state: Arc::new(IrqState::default()),
            waker,
        };
        cell.with(|_| ());
        cell
    }

    /// Runs `f` on the APIC, then refreshes the atomics and wakes the vCPU if
    /// it now has something to do.
    pub fn with<T>(&self, f: impl FnOnce(&mut LocalApic) -> T) -> T {
        let mut l = lock(&self.lapic);
        let r = f(&mut l);
        let mut v = 0;
        if l.has_interrupt() {
            v |= IrqState::APIC_INTR;
        }
        if l.has_event() {
            v |= IrqState::EVENT;
        }
        if l.pic_passthrough() {
            v |= IrqState::PASSTHROUGH;
        }
        let raised = self.state.update(
            IrqState::APIC_INTR | IrqState::EVENT | IrqState::PASSTHROUGH,
            v,
        );
        drop(l);
        // Only something newly pending can end a wait (a halted vCPU checks
        // what is already pending before it waits).
        if raised != 0 {
            self.waker.wake();
        }
        r
    }
}

/// Routes APIC messages (IPIs, I/O APIC interrupts) to the local APICs they
/// address (SDM vol. 3 §10.6.2).
pub struct ApicRouter {
    apics: Vec<Arc<ApicCell>>,
}

impl ApicRouter {
    /// Delivers `msg` to its destination(s).
    pub fn deliver(&self, msg: &ApicMessage) {
        if msg.mode == DeliveryMode::LowestPriority {
            // The addressed APIC with the lowest arbitration priority.
            let best = self
                .apics
                .iter()
                .filter_map(|a| {
                    let l = lock(&a.lapic);
                    l.is_addressed(msg)
                        .then(|| l.arbitration_priority())
                        .map(|p| (p, a))
                })
                .min_by_key(|(p, _)| *p);
            if let Some((_, a)) = best {
                a.with(|l| l.accept(msg));
            }
            return;
        }
        for a in &self.apics {
            a.with(|l| {
                if l.is_addressed(msg) {
                    l.accept(msg);
                }
            });
        }
    }

    /// The local APIC of vCPU `i`.
    pub fn apic(&self, i: usize) -> Option<&Arc<ApicCell>> {
        self.apics.get(i)
    }
}

/// The APICs of a machine.
pub struct Apics {
    /// Routing between the local APICs.
    pub router: Arc<ApicRouter>,
    /// The I/O APIC.
    pub ioapic: Arc<Mutex<IoApic>>,
    /// Called when a local APIC timer may fire earlier than planned.
    timer_changed: Arc<dyn Fn() + Send + Sync>,
}

impl Apics {
    /// Local APICs with IDs 0..`n` (vCPU 0 the BSP) woken through
    /// `wakers`, and an I/O APIC with ID `n` (as the MP table says).
    pub fn new(
        n: usize,
        clock: Arc<dyn vireo_devices::Clock>,
        wakers: &[Arc<Waker>],
        timer_changed: Arc<dyn Fn() + Send + Sync>,
    ) -> Self {
        let apics = (0..n)
            .map(|i| {
                Arc::new(ApicCell::new(
                    LocalApic::new(i as u8, i == 0, clock.clone()),
                    wakers[i].clone(),
                ))
            })
            .collect();
        Apics {
            router: Arc::new(ApicRouter { apics }),
            ioapic: Arc::new(Mutex::new(IoApic::new(n as u8))),
            timer_changed,
        }
    }

    /// Power-on state of every APIC.
    pub fn reset(&self) {
        for a in &self.router.apics {
            a.with(|l| l.reset());
        }
        lock(&self.ioapic).reset();
    }

    /// Fires due local APIC timers; returns the earliest next deadline.
    pub fn poll_timers(&self) -> Option<u64> {
        self.router
            .apics
            .iter()
            .filter_map(|a| a.with(|l| l.poll_timer()))
            .min()
    }

    /// Carries out what a local APIC register write asked for.
    fn effect(&self, e: LapicEffect) {
        match e {
            LapicEffect::None => {}
            LapicEffect::Ipi(m) => self.router.deliver(&m),
            LapicEffect::Eoi(v) => {
                let msgs = lock(&self.ioapic).eoi(v);
                for m in msgs {
                    self.router.deliver(&m);
                }
            }
        }
    }

    /// Writes a local APIC register of vCPU `i` and acts on the result.
    fn lapic_write(&self, i: usize, offset: u64, value: u32) {
        let Some(a) = self.router.apics.get(i) else {
            return;
        };
        let (e, before, after) = a.with(|l| {
            let before = l.timer_deadline();
            let e = l.write(offset, value);
            (e, before, l.timer_deadline())
        });
        if after.is_some() && after != before {
            (self.timer_changed)();
        }
        self.effect(e);
    }

    /// The MMIO window of the local APICs (each vCPU sees its own).
    pub fn lapic_mmio(self: &Arc<Self>) -> LapicMmio {
        LapicMmio(self.clone())
    }

    /// The MMIO window of the I/O APIC.
    pub fn ioapic_mmio(self: &Arc<Self>) -> IoApicMmio {
        IoApicMmio(self.clone())
    }

    /// Vcpu `i`'s interrupt controller; vCPU 0 also sees the 8259 pair
    /// through LINT0.
    pub fn vcpu_controller(
        self: &Arc<Self>,
        i: usize,
        pic: Option<Arc<Mutex<Pic>>>,
    ) -> Arc<dyn InterruptController> {
        Arc::new(VcpuInterrupts {
            apics: self.clone(),
            index: i,
            pic,
        })
    }
}

/// Copies the bytes of register value `v` that a read of `data.len()` bytes
/// at `offset` sees (the registers are 32-bit, 16-byte aligned).
fn read_bytes_of(v: u32, offset: u64, data: &mut [u8]) {
    let bytes = v.to_le_bytes();
    let sh = (offset & 3) as usize;
    for (k, b) in data.iter_mut().enumerate() {
        *b = bytes.get(sh + k).copied().unwrap_or(0);
    }
}

/// The value of an aligned 32-bit write; other writes are logged and
/// ignored (`None`).
fn dword_write(what: &str, offset: u64, data: &[u8]) -> Option<u32> {
    match <[u8; 4]>::try_from(data) {
        Ok(b) if offset & 3 == 0 => Some(u32::from_le_bytes(b)),
        _ => {
            vireo_devices::log_odd_access!("{what}: {}-byte write at {offset:#x}", data.len());
            None
        }
    }
}

/// The local APIC page at 0xfee00000: accesses go to the APIC of the vCPU
/// the accessing thread runs.
pub struct LapicMmio(Arc<Apics>);

impl BusDevice for LapicMmio {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let i = current_vcpu();
        let v = match self.0.router.apics.get(i) {
            Some(a) => a.with(|l| l.read(offset & !3)),
            None => 0,
        };
        read_bytes_of(v, offset, data);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let Some(v) = dword_write("local APIC", offset, data) {
            self.0.lapic_write(current_vcpu(), offset, v);
        }
    }
}

/// The I/O APIC's MMIO window at 0xfec00000.
pub struct IoApicMmio(Arc<Apics>);

impl BusDevice for IoApicMmio {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let v = lock(&self.0.ioapic).read(offset & !3);
        read_bytes_of(v, offset, data);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let Some(v) = dword_write("I/O APIC", offset, data) else {
            return;
        };
        let msgs = lock(&self.0.ioapic).write(offset, v);
        for m in msgs {
            self.0.router.deliver(&m);
        }
    }
}

/// An ISA interrupt line: to the 8259 pair and to an I/O APIC pin (ISA IRQ
/// 0 is wired to pin 2 on a PC, as the MP table says).
pub struct IsaIrq {
    pic: Arc<dyn IrqLine>,
    apics: Arc<Apics>,
    pin: usize,
}

impl IsaIrq {
    /// ISA IRQ `irq`, whose 8259 input is `pic`.
    pub fn new(irq: u8, pic: Arc<dyn IrqLine>, apics: Arc<Apics>) -> Self {
        IsaIrq {
            pic,
            apics,
            pin: if irq == 0 { 2 } else { irq as usize },
        }
    }
}

impl IrqLine for IsaIrq {
    fn set_level(&self, level: bool) {
        self.pic.set_level(level);
        let msg = lock(&self.apics.ioapic).set_irq(self.pin, level);
        if let Some(m) = msg {
            self.apics.router.deliver(&m);
        }
    }
}

/// What one vCPU sees: its local APIC, and for the BSP the 8259 pair's
/// INTR through LINT0 (virtual-wire mode, MP spec §3.6.2.2).
struct VcpuInterrupts {
    apics: Arc<Apics>,
    index: usize,
    pic: Option<Arc<Mutex<Pic>>>,
}

impl VcpuInterrupts {
    fn cell(&self) -> &ApicCell {
        &self.apics.router.apics[self.index]
    }
}

/// MSR numbers the local APIC implements.
const MSR_APIC_BASE: u32 = 0x1b;
const MSR_TSC_DEADLINE: u32 = 0x6e0;

impl InterruptController for VcpuInterrupts {
    #[inline]
    fn has_interrupt(&self) -> bool {
        self.cell().state.pending() & crate::cpu::PENDING_INTR != 0
    }

    #[inline]
    fn has_event(&self) -> bool {
        self.cell().state.pending() & crate::cpu::PENDING_EVENT != 0
    }

    #[inline]
    fn pending(&self) -> u8 {
        self.cell().state.pending()
    }

    fn irq_state(&self) -> Option<Arc<IrqState>> {
        Some(self.cell().state.clone())
    }

    fn acknowledge(&self) -> Option<u8> {
        let c = self.cell();
        if c.state.has(IrqState::APIC_INTR) {
            if let Some(v) = c.with(|l| l.acknowledge()) {
                return Some(v);
            }
            // An ExtINT message: the vector comes from the 8259 pair.
        } else if !c.state.has(IrqState::PIC_INTR) || !c.state.has(IrqState::PASSTHROUGH) {
            return None;
        }
        let pic = self.pic.as_ref()?;
        let mut pic = lock(pic);
        pic.has_interrupt().then(|| pic.acknowledge())
    }

    fn take_event(&self) -> Option<CpuEvent> {
        self.cell().with(|l| {
            if l.take_init() {
                l.init_reset();
                Some(CpuEvent::Init)
            } else if l.take_nmi() {
                Some(CpuEvent::Nmi)
            } else {
                l.take_sipi().map(CpuEvent::Sipi)
            }
        })
    }

    fn read_msr(&self, msr: u32, tsc_offset: u64) -> Option<u64> {
        match msr {
            MSR_APIC_BASE => Some(self.cell().with(|l| l.base_msr())),
            MSR_TSC_DEADLINE => Some(self.cell().with(|l| match l.tsc_deadline() {
                0 => 0,
                d => d.wrapping_add(tsc_offset),
            })),
            _ => None,
        }
    }

    fn write_msr(&self, msr: u32, value: u64, tsc_offset: u64) -> bool {
        match msr {
            MSR_APIC_BASE => {
                self.cell().with(|l| l.set_base_msr(value));
                true
            }
            MSR_TSC_DEADLINE => {
                let ns = match value {
                    0 => 0,
                    v => v.wrapping_sub(tsc_offset).max(1),
                };
                let armed = self.cell().with(|l| {
                    l.set_tsc_deadline(ns);
                    l.timer_deadline().is_some()
                });
                if armed {
                    (self.apics.timer_changed)();
                }
                true
            }
            _ => false,
        }
    }

    fn tpr(&self) -> Option<u8> {
        Some(self.cell().with(|l| l.tpr()))
    }

    fn set_tpr(&self, tpr: u8) {
        self.cell().with(|l| l.set_tpr(tpr));
    }

    fn apic_id(&self) -> Option<u8> {
        Some(self.cell().with(|l| l.id()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use vireo_devices::ManualClock;

    fn apics(n: usize) -> (Arc<Apics>, Vec<Arc<Waker>>) {
        let wakers: Vec<Arc<Waker>> = (0..n).map(|_| Arc::new(Waker::default())).collect();
        let clock = Arc::new(ManualClock::default());
        (
            Arc::new(Apics::new(n, clock, &wakers, Arc::new(|| {}))),
            wakers,
        )
    }

    /// Fixed IPI from vCPU 0 to vCPU 1 through the ICR (SDM vol. 3
    /// §10.6.1), delivered and acknowledged on the target.
    #[test]
    fn ipi_reaches_the_target_vcpu() {
        let (a, _) = apics(2);
        let mut mmio = a.lapic_mmio();
        set_current_vcpu(1);
        mmio.write(0xf0, &0x1ffu32.to_le_bytes()); // SVR: enable
        set_current_vcpu(0);
        mmio.write(0xf0, &0x1ffu32.to_le_bytes());
        mmio.write(0x310, &(1u32 << 24).to_le_bytes()); // destination APIC 1
        mmio.write(0x300, &0x0000_0040u32.to_le_bytes()); // fixed, vector 0x40
        let c1 = a.vcpu_controller(1, None);
        assert!(c1.has_interrupt());
        assert_eq!(c1.acknowledge(), Some(0x40));
        assert!(!a.vcpu_controller(0, None).has_interrupt());
        // INIT then SIPI to all but self.
        mmio.write(0x300, &0x000c_4500u32.to_le_bytes());
        mmio.write(0x300, &0x000c_4608u32.to_le_bytes());
        assert_eq!(c1.take_event(), Some(CpuEvent::Init));
        assert_eq!(c1.take_event(), Some(CpuEvent::Sipi(8)));
        set_current_vcpu(0);
    }

    /// An ISA IRQ reaches the CPU both through the 8259 (virtual wire) and,
    /// once the guest programs it, through the I/O APIC.
    #[test]
    fn isa_irq_routes_through_the_ioapic() {
        let (a, _) = apics(1);
        let mut io = a.ioapic_mmio();
        set_current_vcpu(0);
        a.lapic_mmio().write(0xf0, &0x1ffu32.to_le_bytes());
        // Pin 4 (COM1) → vector 0x34, fixed, physical destination 0.
        io.write(0, &0x18u32.to_le_bytes());
        io.write(0x10, &0x34u32.to_le_bytes());
        io.write(0, &0x19u32.to_le_bytes());
        io.write(0x10, &0u32.to_le_bytes());
        let line = IsaIrq::new(4, Arc::new(vireo_devices::NoIrq), a.clone());
        line.pulse();
        let c = a.vcpu_controller(0, None);
        assert_eq!(c.acknowledge(), Some(0x34));
    }

    /// Hostile guests: random accesses to both APIC windows from several
    /// vCPUs never panic or deadlock.
    #[test]
    fn random_apic_accesses_are_harmless() {
        let (a, _) = apics(3);
        let threads: Vec<_> = (0..3)
            .map(|t| {
                let a = a.clone();
                std::thread::spawn(move || {
                    set_current_vcpu(t);
                    let mut rng = rand::rngs::StdRng::seed_from_u64(t as u64);
                    let mut l = a.lapic_mmio();
                    let mut io = a.ioapic_mmio();
                    let c = a.vcpu_controller(t, None);
                    for _ in 0..20_000 {
                        let off = rng.gen_range(0..0x1000u64);
                        let len = [1usize, 2, 4, 8][rng.gen_range(0..4)];
                        let mut buf = vec![0u8; len];
                        rng.fill(&mut buf[..]);
                        match rng.gen_range(0..6) {
                            0 => l.read(off, &mut buf),
                            1 => l.write(off & !3, &rng.gen::<u32>().to_le_bytes()),
                            2 => io.write(off & 0x50, &rng.gen::<u32>().to_le_bytes()),
                            3 => io.read(off, &mut buf),
                            4 => {
                                let _ = c.acknowledge();
                                let _ = c.take_event();
                            }
                            _ => {
                                let _ = a.poll_timers();
                            }
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().expect("no panic");
        }
    }
}
