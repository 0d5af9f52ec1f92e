//! The PIIX4 power-management function (Intel 82371AB data sheet, function
//! 3: PCI 8086:7113) as the ACPI fixed hardware of the PC machine (ACPI 6.0
//! chapter 4), with the two pieces QEMU-style firmware expects around it:
//! the APM control/status ports 0xb2/0xb3 (the FADT's SMI_CMD) and a GPE0
//! block at a fixed port ([`GPE0_PORT`]).
//!
//! The PM I/O window (64 bytes at PMBA, config register 0x40, decoded while
//! PMIOSE, bit 0 of config register 0x80, is set) holds:
//! - 0x00 PM1a_STS and 0x02 PM1a_EN (ACPI §4.8.3.1): timer carry, global
//!   lock release, power button, RTC alarm, wake status;
//! - 0x04 PM1a_CNT (§4.8.3.2): SCI_EN, BM_RLD, GBL_RLS, SLP_TYP, SLP_EN;
//!   SLP_EN with SLP_TYP = [`SLP_TYP_S5`] powers the machine off;
//! - 0x08 PM_TMR (§4.8.3.3): 3.579545 MHz, 24 bits (the FADT leaves
//!   TMR_VAL_EXT clear);
//! - 0x0c-0x3f: the PIIX4's other registers (GPSTS/GPEN, processor control,
//!   global and device control), kept as storage.
//!
//! SMM is not emulated: DEVACTB.APMC_EN (config 0x58 bit 25) reads as 1 so
//! firmware skips SMM setup, and a write of ACPI_ENABLE/ACPI_DISABLE to
//! port 0xb2 sets/clears SCI_EN directly, as the SMI handler would. The
//! SMBus registers (config 0x90, 0xd2-0xd5) are storage only: no SMBus
//! window is decoded.
//!
//! The SCI (ISA IRQ 9, level, active high) is asserted while SCI_EN is set
//! and any enabled PM1 or GPE0 status bit is set.

use crate::pci::{reg, ConfigSpace, PciFunction, PciRegion, Space};
use crate::{log_odd_access, BusDevice, Clock, IrqLine, Snapshot, SystemControl};
use std::sync::{Arc, Mutex, MutexGuard};

/// PCI vendor ID (Intel).
pub const VENDOR_ID: u16 = 0x8086;
/// PCI device ID of the 82371AB power-management function.
pub const DEVICE_ID: u16 = 0x7113;
/// Revision ID (PIIX4E).
pub const REVISION: u8 = 0x03;
/// Size of the PM I/O window at PMBA.
pub const PM_IO_LEN: u64 = 64;
/// The SMI command port (APMC); APMS, the status scratch byte, follows.
pub const APM_PORT: u16 = 0xb2;
/// Where the GPE0 block is (2 bytes of status, 2 of enable).
pub const GPE0_PORT: u16 = 0xafe0;
/// Length of the GPE0 block.
pub const GPE0_LEN: u8 = 4;
/// The value written to SMI_CMD to hand the hardware to OSPM (sets SCI_EN).
pub const ACPI_ENABLE: u8 = 0xf1;
/// The value written to SMI_CMD to give it back (clears SCI_EN).
pub const ACPI_DISABLE: u8 = 0xf0;
/// The SLP_TYP value of the soft-off state (the PIIX4's SUS_TYP 000b),
/// which the DSDT's `\_S5` package must give.
pub const SLP_TYP_S5: u8 = 0;
/// The ISA IRQ of the SCI.
pub const SCI_IRQ: u8 = 9;
/// PM timer frequency in Hz (§4.8.3.3).
pub const PM_TIMER_HZ: u64 = 3_579_545;

/// Configuration registers of the function (82371AB §3.3 / function 3).
mod cfg {
    /// PMBA: PM I/O base (bits 15:6), bit 0 hardwired to 1.
    pub const PMBA: usize = 0x40;
    /// DEVACTB, byte 3: bit 1 is APMC_EN (bit 25 of the dword).
    pub const DEVACTB_HI: usize = 0x5b;
    /// PMREGMISC: bit 0 PMIOSE.
    pub const PMREGMISC: usize = 0x80;
    /// SMBBA: SMBus I/O base.
    pub const SMBBA: usize = 0x90;
    /// SMBHSTCFG and the SMBus slave registers.
    pub const SMBHSTCFG: usize = 0xd2;
}

/// PM1 status/enable bits (§4.8.3.1.1, Tables 4-16 and 4-17).
mod pm1 {
    pub const TMR: u16 = 1 << 0;
    pub const BM_STS: u16 = 1 << 4;
    pub const GBL: u16 = 1 << 5;
    pub const PWRBTN: u16 = 1 << 8;
    pub const RTC: u16 = 1 << 10;
    /// Power button override (PIIX4 PWRBTNOR_STS).
    pub const PWRBTNOR_STS: u16 = 1 << 11;
    pub const WAK_STS: u16 = 1 << 15;
    /// Status bits that exist (write one to clear).
    pub const STS_MASK: u16 = TMR | BM_STS | GBL | PWRBTN | RTC | PWRBTNOR_STS | WAK_STS;
    /// Enable bits that exist.
    pub const EN_MASK: u16 = TMR | GBL | PWRBTN | RTC;
    /// Events that can raise the SCI.
    pub const EVENTS: u16 = TMR | GBL | PWRBTN | RTC;
}

/// PM1 control bits (§4.8.3.2.1, Table 4-18).
mod cnt {
    pub const SCI_EN: u16 = 1 << 0;
    pub const BM_RLD: u16 = 1 << 1;
    /// Write-only: releases the global lock to the BIOS.
    pub const GBL_RLS: u16 = 1 << 2;
    pub const SLP_TYP_SHIFT: u16 = 10;
    pub const SLP_TYP: u16 = 7 << SLP_TYP_SHIFT;
    /// Write-only: enters the sleeping state SLP_TYP names.
    pub const SLP_EN: u16 = 1 << 13;
    /// Bits that read back.
    pub const RW: u16 = SCI_EN | BM_RLD | SLP_TYP;
}

/// Offsets in the PM I/O window.
mod io {
    pub const PM1_STS: u64 = 0x00;
    pub const PM1_EN: u64 = 0x02;
    pub const PM1_CNT: u64 = 0x04;
    pub const PM_TMR: u64 = 0x08;
}

/// The 24-bit timer wraps at this many ticks; its top bit flips twice as often.
const TMR_BITS: u32 = 24;

/// Saved state of the ACPI hardware (the function and its ports).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AcpiPmState {
    /// The 256 bytes of configuration space.
    pub config: Vec<u8>,
    /// PM1a_STS.
    pub pm1_sts: u16,
    /// PM1a_EN.
    pub pm1_en: u16,
    /// PM1a_CNT (read-back bits).
    pub pm1_cnt: u16,
    /// GPE0 status.
    pub gpe0_sts: u16,
    /// GPE0 enable.
    pub gpe0_en: u16,
    /// APMC (port 0xb2), last written.
    pub apm_cnt: u8,
    /// APMS (port 0xb3).
    pub apm_sts: u8,
    /// The PIIX4 registers at PM I/O offsets 0x0c-0x3f.
    pub other: Vec<u8>,
}

/// The state the function and the two port devices share.
struct Core {
    pm1_sts: u16,
    pm1_en: u16,
    pm1_cnt: u16,
    gpe0_sts: u16,
    gpe0_en: u16,
    apm_cnt: u8,
    apm_sts: u8,
    /// PM I/O offsets 0x0c-0x3f (index = offset - 0x0c).
    other: [u8; 0x34],
    /// Timer ticks at the last carry check.
    tmr_checked: u64,
    sci_level: bool,
    clock: Arc<dyn Clock>,
    irq: Arc<dyn IrqLine>,
    control: Arc<dyn SystemControl>,
}

impl Core {
    /// The PM timer's ticks since machine start (not yet truncated).
    fn ticks(&self) -> u64 {
        (self.clock.now_ns() as u128 * PM_TIMER_HZ as u128 / 1_000_000_000) as u64
    }

    /// Latches TMR_STS if the timer's top bit flipped since the last check.
    fn check_carry(&mut self) -> u64 {
        let t = self.ticks();
        if t >> (TMR_BITS - 1) != self.tmr_checked >> (TMR_BITS - 1) {
            self.pm1_sts |= pm1::TMR;
        }
        self.tmr_checked = t;
        t
    }

    /// Drives the SCI from the status, enable and SCI_EN bits.
    fn update_sci(&mut self) {
        let level = self.pm1_cnt & cnt::SCI_EN != 0
            && (self.pm1_sts & self.pm1_en & pm1::EVENTS != 0 || self.gpe0_sts & self.gpe0_en != 0);
        if level != self.sci_level {
            self.sci_level = level;
            self.irq.set_level(level);
        }
    }

    fn reset(&mut self) {
        self.pm1_sts = 0;
        self.pm1_en = 0;
        self.pm1_cnt = 0;
        self.gpe0_sts = 0;
        self.gpe0_en = 0;
        self.apm_cnt = 0;
        self.apm_sts = 0;
        self.other = [0; 0x34];
        self.tmr_checked = self.ticks();
        self.update_sci();
    }

    /// One byte of the PM I/O window; `t` is the timer value of this access.
    fn io_read_byte(&self, off: u64, t: u64) -> u8 {
        let word = |v: u16, base: u64| v.to_le_bytes()[(off - base) as usize];
        match off {
            0..=1 => word(self.pm1_sts, io::PM1_STS),
            2..=3 => word(self.pm1_en, io::PM1_EN),
            4..=5 => word(self.pm1_cnt & cnt::RW, io::PM1_CNT),
            6..=7 => 0,
            8..=11 => {
                let v = (t & ((1 << TMR_BITS) - 1)) as u32;
                v.to_le_bytes()[(off - io::PM_TMR) as usize]
            }
            0x0c..=0x3f => self.other[(off - 0x0c) as usize],
            _ => 0xff,
        }
    }

    fn io_read(&mut self, offset: u64, data: &mut [u8]) {
        let t = self.check_carry();
        for (i, b) in data.iter_mut().enumerate() {
            let off = offset.saturating_add(i as u64);
            *b = self.io_read_byte(off, t);
            if off >= PM_IO_LEN {
                log_odd_access!("acpi pm: read at {off:#x}");
            }
        }
        self.update_sci();
    }

    fn io_write(&mut self, offset: u64, data: &[u8]) {
        self.check_carry();
        for (i, &v) in data.iter().enumerate() {
            let off = offset.saturating_add(i as u64);
            let shift = 8 * (off & 1);
            let v16 = (v as u16) << shift;
            let lane = 0xffu16 << shift;
            match off {
                0..=1 => self.pm1_sts &= !(v16 & pm1::STS_MASK),
                2..=3 => self.pm1_en = (self.pm1_en & !lane) | (v16 & pm1::EN_MASK),
                4..=5 => self.write_cnt(v16, lane),
                // Reserved and the read-only timer.
                6..=11 => log_odd_access!("acpi pm: write of {v:#x} at {off:#x}"),
                0x0c..=0x3f => {
                    // GPSTS (0x0c-0x0d) is write-one-to-clear; the rest is
                    // storage (GPIREG, 0x30-0x33, is input: read-only).
                    let slot = &mut self.other[(off - 0x0c) as usize];
                    match off {
                        0x0c..=0x0d => *slot &= !v,
                        0x30..=0x33 => {}
                        _ => *slot = v,
                    }
                }
                _ => log_odd_access!("acpi pm: write of {v:#x} at {off:#x}"),
            }
        }
        self.update_sci();
    }

    /// A write of the byte lane `lane` of PM1a_CNT.
    fn write_cnt(&mut self, v16: u16, lane: u16) {
        self.pm1_cnt = (self.pm1_cnt & !(lane & cnt::RW)) | (v16 & lane & cnt::RW);
        if v16 & lane & cnt::GBL_RLS != 0 {
            log_odd_access!("acpi pm: GBL_RLS written (no BIOS global lock owner)");
        }
        if v16 & lane & cnt::SLP_EN != 0 {
            let typ = ((self.pm1_cnt & cnt::SLP_TYP) >> cnt::SLP_TYP_SHIFT) as u8;
            if typ == SLP_TYP_S5 {
                self.control.request_poweroff();
            } else {
                // Only S5 is advertised in the DSDT; other states would
                // need wake-up support. The guest resumes at once.
                log_odd_access!("acpi pm: sleep type {typ} not supported");
                self.pm1_sts |= pm1::WAK_STS;
            }
        }
    }

    fn gpe_read(&mut self, offset: u64, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            *b = match offset.saturating_add(i as u64) {
                0 => self.gpe0_sts as u8,
                1 => (self.gpe0_sts >> 8) as u8,
                2 => self.gpe0_en as u8,
                3 => (self.gpe0_en >> 8) as u8,
                off => {
                    log_odd_access!("acpi gpe0: read at {off:#x}");
                    0xff
                }
            };
        }
    }

    fn gpe_write(&mut self, offset: u64, data: &[u8]) {
        for (i, &v) in data.iter().enumerate() {
            match offset.saturating_add(i as u64) {
                0 => self.gpe0_sts &= !(v as u16),
                1 => self.gpe0_sts &= !((v as u16) << 8),
                2 => self.gpe0_en = (self.gpe0_en & 0xff00) | v as u16,
                3 => self.gpe0_en = (self.gpe0_en & 0x00ff) | (v as u16) << 8,
                off => log_odd_access!("acpi gpe0: write of {v:#x} at {off:#x}"),
            }
        }
        self.update_sci();
    }
}

fn lock(core: &Mutex<Core>) -> MutexGuard<'_, Core> {
    core.lock().unwrap_or_else(|e| e.into_inner())
}

/// The PIIX4 power-management function (attach it at 00:01.3).
pub struct AcpiPm {
    cfg: ConfigSpace,
    core: Arc<Mutex<Core>>,
}

impl AcpiPm {
    /// The function at its reset state (PM I/O window off), raising the SCI
    /// on `sci` (ISA IRQ 9), counting the PM timer on `clock` and asking
    /// `control` to power off on an S5 request.
    pub fn new(
        sci: Arc<dyn IrqLine>,
        clock: Arc<dyn Clock>,
        control: Arc<dyn SystemControl>,
    ) -> Self {
        let mut core = Core {
            pm1_sts: 0,
            pm1_en: 0,
            pm1_cnt: 0,
            gpe0_sts: 0,
            gpe0_en: 0,
            apm_cnt: 0,
            apm_sts: 0,
            other: [0; 0x34],
            tmr_checked: 0,
            sci_level: false,
            clock,
            irq: sci,
            control,
        };
        core.reset();
        AcpiPm {
            cfg: Self::reset_config(),
            core: Arc::new(Mutex::new(core)),
        }
    }

    /// The configuration header at reset (82371AB function 3 defaults).
    fn reset_config() -> ConfigSpace {
        let mut c = ConfigSpace::new(VENDOR_ID, DEVICE_ID, REVISION, [0x06, 0x80, 0x00]);
        c.set(reg::STATUS, &[0x80, 0x02]); // fast back-to-back, medium DEVSEL
        c.set(reg::INTERRUPT_PIN, &[0x01]); // INTA#
        c.set(cfg::PMBA, &[0x01, 0, 0, 0]);
        c.set_writable(cfg::PMBA, &[0xc0, 0xff, 0, 0]);
        // CNTA..DEVRESJ: storage, except APMC_EN which stays set (no SMM).
        c.set_writable(0x44, &[0xff; 0x3c]);
        c.set(cfg::DEVACTB_HI, &[0x02]);
        c.set_writable(cfg::DEVACTB_HI, &[0xfd]);
        c.set_writable(cfg::PMREGMISC, &[0x01]);
        c.set(cfg::SMBBA, &[0x01, 0, 0, 0]);
        c.set_writable(cfg::SMBBA, &[0xf0, 0xff, 0, 0]);
        c.set_writable(cfg::SMBHSTCFG, &[0x0f, 0xff, 0xff, 0xff]);
        c
    }

    /// Back to the power-on state (configuration and PM registers).
    pub fn reset(&mut self) {
        self.cfg = Self::reset_config();
        lock(&self.core).reset();
    }

    /// Programs PMBA to `base` (a multiple of 64) and turns the PM I/O window
    /// on, with interrupt line 9, as firmware would: for direct kernel boot.
    /// The machine must then invalidate the PCI bus's windows.
    pub fn enable_at(&mut self, base: u16) {
        self.cfg.write(cfg::PMBA, &u32::from(base).to_le_bytes());
        self.cfg.write(cfg::PMREGMISC, &[0x01]);
        self.cfg.write(reg::INTERRUPT_LINE, &[SCI_IRQ]);
    }

    /// Where the PM I/O window is decoded now, if it is.
    pub fn pm_base(&self) -> Option<u16> {
        let base =
            u16::from_le_bytes([self.cfg.byte(cfg::PMBA), self.cfg.byte(cfg::PMBA + 1)]) & 0xffc0;
        (self.cfg.byte(cfg::PMREGMISC) & 1 != 0 && base != 0).then_some(base)
    }

    /// The APM control and status ports: register at [`APM_PORT`] for 2
    /// bytes.
    pub fn apm_ports(&self) -> ApmPorts {
        ApmPorts {
            core: self.core.clone(),
        }
    }

    /// The GPE0 block: register at [`GPE0_PORT`] for [`GPE0_LEN`] bytes.
    pub fn gpe0_block(&self) -> Gpe0Block {
        Gpe0Block {
            core: self.core.clone(),
        }
    }

    /// A handle for the host's buttons and event sources.
    pub fn events(&self) -> AcpiEvents {
        AcpiEvents {
            core: self.core.clone(),
        }
    }

    /// Runs the timer-carry event; returns the machine time (ns) of the next
    /// carry when TMR_EN is set (for the machine's timer loop).
    pub fn poll(&mut self) -> Option<u64> {
        let mut c = lock(&self.core);
        let t = c.check_carry();
        c.update_sci();
        if c.pm1_en & pm1::TMR == 0 {
            return None;
        }
        let half = 1u64 << (TMR_BITS - 1);
        let next = (t / half + 1) * half;
        // The first nanosecond at which the tick count reaches `next`.
        Some((next as u128 * 1_000_000_000).div_ceil(PM_TIMER_HZ as u128) as u64)
    }
}

/// The host's side of the fixed-feature events.
#[derive(Clone)]
pub struct AcpiEvents {
    core: Arc<Mutex<Core>>,
}

impl AcpiEvents {
    /// A press of the fixed-feature power button (§4.8.2.2.1.1): sets
    /// PWRBTN_STS; returns true when that raised the SCI (PWRBTN_EN and
    /// SCI_EN set, i.e. an ACPI OS is listening). When it returns false
    /// the machine may fall back to a hard power-off.
    pub fn power_button(&self) -> bool {
        let mut c = lock(&self.core);
        c.pm1_sts |= pm1::PWRBTN;
        c.update_sci();
        c.pm1_en & pm1::PWRBTN != 0 && c.pm1_cnt & cnt::SCI_EN != 0
    }

    /// Sets status bit `bit` (0-15) of GPE0 (§4.8.4.1), for a future event
    /// source; the SCI follows if the guest enabled it.
    pub fn raise_gpe(&self, bit: u8) {
        let mut c = lock(&self.core);
        c.gpe0_sts |= 1u16.checked_shl(bit.into()).unwrap_or(0);
        c.update_sci();
    }

    /// Sets RTC_STS (the RTC alarm's fixed event).
    pub fn rtc_alarm(&self) {
        let mut c = lock(&self.core);
        c.pm1_sts |= pm1::RTC;
        c.update_sci();
    }

    /// True while the guest's ACPI mode is on (SCI_EN).
    pub fn acpi_enabled(&self) -> bool {
        lock(&self.core).pm1_cnt & cnt::SCI_EN != 0
    }
}

impl PciFunction for AcpiPm {
    fn config_read(&mut self, offset: usize, data: &mut [u8]) {
        self.cfg.read(offset, data);
    }

    fn config_write(&mut self, offset: usize, data: &[u8]) {
        self.cfg.write(offset, data);
    }

    fn regions(&self, out: &mut Vec<PciRegion>) {
        self.cfg.active_regions(out);
        if let Some(base) = self.pm_base() {
            out.push(PciRegion {
                space: Space::Io,
                base: base.into(),
                len: PM_IO_LEN,
                index: 0,
            });
        }
    }

    fn region_read(&mut self, index: usize, offset: u64, data: &mut [u8]) {
        if index != 0 {
            data.fill(0xff);
            log_odd_access!("acpi pm: read of region {index}");
            return;
        }
        lock(&self.core).io_read(offset, data);
    }

    fn region_write(&mut self, index: usize, offset: u64, data: &[u8]) {
        if index != 0 {
            log_odd_access!("acpi pm: write to region {index}");
            return;
        }
        lock(&self.core).io_write(offset, data);
    }
}

impl Snapshot for AcpiPm {
    type State = AcpiPmState;

    fn snapshot(&self) -> AcpiPmState {
        let mut config = vec![0u8; 256];
        self.cfg.read(0, &mut config);
        let c = lock(&self.core);
        AcpiPmState {
            config,
            pm1_sts: c.pm1_sts,
            pm1_en: c.pm1_en,
            pm1_cnt: c.pm1_cnt,
            gpe0_sts: c.gpe0_sts,
            gpe0_en: c.gpe0_en,
            apm_cnt: c.apm_cnt,
            apm_sts: c.apm_sts,
            other: c.other.to_vec(),
        }
    }

    fn restore(&mut self, state: AcpiPmState) {
        // Through the write masks, so a bad file cannot change the IDs.
        self.cfg = Self::reset_config();
        for (off, chunk) in state.config.chunks(4).enumerate().take(64) {
            self.cfg.write(off * 4, chunk);
        }
        let mut c = lock(&self.core);
        c.pm1_sts = state.pm1_sts & pm1::STS_MASK;
        c.pm1_en = state.pm1_en & pm1::EN_MASK;
        c.pm1_cnt = state.pm1_cnt & cnt::RW;
        c.gpe0_sts = state.gpe0_sts;
        c.gpe0_en = state.gpe0_en;
        c.apm_cnt = state.apm_cnt;
        c.apm_sts = state.apm_sts;
        c.other = [0; 0x34];
        for (d, s) in c.other.iter_mut().zip(state.other.iter()) {
            *d = *s;
        }
        c.tmr_checked = c.ticks();
        c.update_sci();
    }
}

/// APMC (offset 0, port 0xb2) and APMS (offset 1, port 0xb3): the FADT's
/// SMI_CMD (ACPI 6.0 §5.2.9, FADT fields SMI_CMD, ACPI_ENABLE and
/// ACPI_DISABLE): [`ACPI_ENABLE`] sets SCI_EN and [`ACPI_DISABLE`] clears
/// it, as the SMI handler would; other commands are only stored.
pub struct ApmPorts {
    core: Arc<Mutex<Core>>,
}

impl BusDevice for ApmPorts {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let c = lock(&self.core);
        for (i, b) in data.iter_mut().enumerate() {
            *b = match offset.saturating_add(i as u64) {
                0 => c.apm_cnt,
                1 => c.apm_sts,
                off => {
                    log_odd_access!("apm: read at {off:#x}");
                    0xff
                }
            };
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let mut c = lock(&self.core);
        for (i, &v) in data.iter().enumerate() {
            match offset.saturating_add(i as u64) {
                0 => {
                    c.apm_cnt = v;
                    match v {
                        ACPI_ENABLE => c.pm1_cnt |= cnt::SCI_EN,
                        ACPI_DISABLE => c.pm1_cnt &= !cnt::SCI_EN,
                        _ => log_odd_access!("apm: command {v:#x} (no SMM)"),
                    }
                }
                1 => c.apm_sts = v,
                off => log_odd_access!("apm: write of {v:#x} at {off:#x}"),
            }
        }
        c.update_sci();
    }
}

/// The GPE0 block (§4.8.4.1): status (write one to clear) at offsets 0-1,
/// enable at 2-3.
pub struct Gpe0Block {
    core: Arc<Mutex<Core>>,
}

impl BusDevice for Gpe0Block {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        lock(&self.core).gpe_read(offset, data);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        lock(&self.core).gpe_write(offset, data);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pci::PciBus;
    use crate::testing::{spray, RecordingControl, RecordingIrq, XorShift};
    use crate::ManualClock;

    struct Rig {
        pm: AcpiPm,
        irq: Arc<RecordingIrq>,
        clock: Arc<ManualClock>,
        control: Arc<RecordingControl>,
    }

    fn rig() -> Rig {
        let irq = RecordingIrq::new();
        let clock = Arc::new(ManualClock::default());
        let control = RecordingControl::new();
        let pm = AcpiPm::new(irq.clone(), clock.clone(), control.clone());
        Rig {
            pm,
            irq,
            clock,
            control,
        }
    }

    fn rd16(pm: &mut AcpiPm, off: u64) -> u16 {
        let mut b = [0u8; 2];
        pm.region_read(0, off, &mut b);
        u16::from_le_bytes(b)
    }

    fn wr16(pm: &mut AcpiPm, off: u64, v: u16) {
        pm.region_write(0, off, &v.to_le_bytes());
    }

    fn rd32(pm: &mut AcpiPm, off: u64) -> u32 {
        let mut b = [0u8; 4];
        pm.region_read(0, off, &mut b);
        u32::from_le_bytes(b)
    }

    fn cfg32(pm: &mut AcpiPm, off: usize) -> u32 {
        let mut b = [0u8; 4];
        pm.config_read(off, &mut b);
        u32::from_le_bytes(b)
    }

    #[test]
    fn config_header_and_pm_window_follow_pmba_and_pmiose() {
        let mut r = rig();
        assert_eq!(cfg32(&mut r.pm, 0), 0x7113_8086);
        assert_eq!(cfg32(&mut r.pm, 8), 0x0680_0003);
        assert_eq!((cfg32(&mut r.pm, 0x3c) >> 8) & 0xff, 1);
        assert_eq!(cfg32(&mut r.pm, 0x40), 1);
        // APMC_EN reads as set and stays set.
        assert_ne!(cfg32(&mut r.pm, 0x58) & 1 << 25, 0);
        r.pm.config_write(0x58, &0u32.to_le_bytes());
        assert_ne!(cfg32(&mut r.pm, 0x58) & 1 << 25, 0);
        let mut out = Vec::new();
        r.pm.regions(&mut out);
        assert!(out.is_empty());
        // PMBA keeps bits 15:6 and bit 0.
        r.pm.config_write(0x40, &0xffff_ffffu32.to_le_bytes());
        assert_eq!(cfg32(&mut r.pm, 0x40), 0xffc1);
        r.pm.config_write(0x40, &0x0601u32.to_le_bytes());
        r.pm.regions(&mut out);
        assert!(out.is_empty(), "PMIOSE is still clear");
        r.pm.config_write(0x80, &[0x01]);
        r.pm.regions(&mut out);
        assert_eq!(
            out,
            vec![PciRegion {
                space: Space::Io,
                base: 0x600,
                len: 64,
                index: 0
            }]
        );
        assert_eq!(r.pm.pm_base(), Some(0x600));
        r.pm.reset();
        assert_eq!(r.pm.pm_base(), None);
        r.pm.enable_at(0xb000);
        assert_eq!(r.pm.pm_base(), Some(0xb000));
        assert_eq!(cfg32(&mut r.pm, 0x3c) & 0xff, 9);
    }

    #[test]
    fn decoded_through_the_pci_bus() {
        let r = rig();
        let pm = Arc::new(Mutex::new(r.pm));
        let mut bus = PciBus::new();
        bus.attach(1, 3, pm.clone());
        let mut io = bus.window(Space::Io);
        let cfg = |bus: &mut PciBus, reg: u32, v: &[u8]| {
            bus.write(0, &(0x8000_0000u32 | 1 << 11 | 3 << 8 | reg).to_le_bytes());
            bus.write(4, v);
        };
        cfg(&mut bus, 0x40, &0x601u32.to_le_bytes());
        cfg(&mut bus, 0x80, &[1]);
        r.clock.set(1_000_000_000);
        let mut b = [0u8; 4];
        io.read(0x608, &mut b);
        assert_eq!(u32::from_le_bytes(b), 3_579_545);
        io.write(0x602, &0x0100u16.to_le_bytes());
        io.read(0x602, &mut b[..2]);
        assert_eq!(b[..2], [0x00, 0x01]);
        // PMIOSE off: the window goes away.
        cfg(&mut bus, 0x80, &[0]);
        io.read(0x608, &mut b);
        assert_eq!(b, [0xff; 4]);
    }

    #[test]
    fn pm_timer_counts_at_3_58_mhz_in_24_bits_and_latches_carry() {
        let mut r = rig();
        assert_eq!(rd32(&mut r.pm, 8), 0);
        r.clock.set(1_000_000); // 1 ms
        assert_eq!(rd32(&mut r.pm, 8), 3579);
        // Byte reads see the same counter.
        let mut b = [0u8; 1];
        r.pm.region_read(0, 9, &mut b);
        assert_eq!(b[0], (3579 >> 8) as u8);
        assert_eq!(rd16(&mut r.pm, 0) & pm1::TMR, 0);
        // Past 2^23 ticks (about 2.34 s): carry status, and 24-bit wrap.
        r.clock.set(2_400_000_000);
        let t = rd32(&mut r.pm, 8);
        assert_eq!(
            t,
            ((2_400_000_000u64 * PM_TIMER_HZ / 1_000_000_000) & 0xff_ffff) as u32
        );
        assert_ne!(rd16(&mut r.pm, 0) & pm1::TMR, 0);
        wr16(&mut r.pm, 0, pm1::TMR);
        assert_eq!(rd16(&mut r.pm, 0) & pm1::TMR, 0);
        r.clock.set(5_000_000_000);
        assert!(rd32(&mut r.pm, 8) < 1 << 24);
        // The timer ignores writes.
        r.pm.region_write(0, 8, &[0; 4]);
        assert_ne!(rd32(&mut r.pm, 8), 0);
        // With TMR_EN and SCI_EN the carry interrupts; poll gives the next one.
        wr16(&mut r.pm, 0, 0xffff);
        wr16(&mut r.pm, 4, cnt::SCI_EN);
        assert_eq!(r.pm.poll(), None);
        wr16(&mut r.pm, 2, pm1::TMR);
        let next = r.pm.poll().unwrap();
        assert!(!r.irq.level());
        r.clock.set(next - 1);
        r.pm.poll();
        assert!(!r.irq.level());
        r.clock.set(next);
        r.pm.poll();
        assert!(r.irq.level());
        wr16(&mut r.pm, 0, pm1::TMR);
        assert!(!r.irq.level());
    }

    #[test]
    fn s5_request_powers_off_and_other_sleep_types_do_not() {
        let mut r = rig();
        // Linux: SLP_TYP first, then SLP_TYP | SLP_EN.
        wr16(&mut r.pm, 4, cnt::SCI_EN | 5 << 10);
        assert_eq!(rd16(&mut r.pm, 4), cnt::SCI_EN | 5 << 10);
        wr16(&mut r.pm, 4, cnt::SCI_EN | 1 << 10 | cnt::SLP_EN);
        assert_eq!(r.control.exits.load(std::sync::atomic::Ordering::SeqCst), 0);
        assert_ne!(rd16(&mut r.pm, 0) & pm1::WAK_STS, 0);
        // SLP_EN reads as 0.
        assert_eq!(rd16(&mut r.pm, 4), cnt::SCI_EN | 1 << 10);
        wr16(&mut r.pm, 4, cnt::SCI_EN | u16::from(SLP_TYP_S5) << 10);
        assert_eq!(r.control.last_exit(), None);
        // A byte write of the high half carries SLP_TYP and SLP_EN together.
        r.pm.region_write(
            0,
            5,
            &[((u16::from(SLP_TYP_S5) << 10 | cnt::SLP_EN) >> 8) as u8],
        );
        assert_eq!(r.control.last_exit(), Some(0));
    }

    #[test]
    fn power_button_raises_sci_only_when_enabled_and_in_acpi_mode() {
        let mut r = rig();
        let ev = r.pm.events();
        let mut apm = r.pm.apm_ports();
        // No ACPI OS: the status latches, no SCI.
        assert!(!ev.power_button());
        assert!(!r.irq.level());
        assert_ne!(rd16(&mut r.pm, 0) & pm1::PWRBTN, 0);
        wr16(&mut r.pm, 0, pm1::PWRBTN);
        assert_eq!(rd16(&mut r.pm, 0), 0);
        // The OS enables ACPI through SMI_CMD, then the button event.
        apm.write(0, &[ACPI_ENABLE]);
        assert!(ev.acpi_enabled());
        assert_eq!(rd16(&mut r.pm, 4) & cnt::SCI_EN, cnt::SCI_EN);
        assert!(!ev.power_button(), "PWRBTN_EN still clear");
        assert!(!r.irq.level());
        // Enabling a pending event raises the SCI at once.
        wr16(&mut r.pm, 2, pm1::PWRBTN);
        assert!(r.irq.level());
        wr16(&mut r.pm, 0, pm1::PWRBTN);
        assert!(!r.irq.level());
        assert!(ev.power_button());
        assert!(r.irq.level());
        assert_eq!(r.irq.take_edges(), 2);
        // Leaving ACPI mode drops the SCI; the status stays.
        apm.write(0, &[ACPI_DISABLE]);
        assert!(!r.irq.level());
        assert!(!ev.acpi_enabled());
        let mut b = [0u8; 2];
        apm.read(0, &mut b);
        assert_eq!(b, [ACPI_DISABLE, 0]);
        apm.write(1, &[0x5a]);
        apm.read(1, &mut b[..1]);
        assert_eq!(b[0], 0x5a);
        ev.rtc_alarm();
        assert_ne!(rd16(&mut r.pm, 0) & pm1::RTC, 0);
    }

    #[test]
    fn gpe0_block_drives_the_sci() {
        let r = rig();
        let ev = r.pm.events();
        let mut gpe = r.pm.gpe0_block();
        r.pm.apm_ports().write(0, &[ACPI_ENABLE]);
        ev.raise_gpe(3);
        ev.raise_gpe(200); // out of range: ignored
        let mut b = [0u8; 4];
        gpe.read(0, &mut b);
        assert_eq!(b, [0x08, 0, 0, 0]);
        assert!(!r.irq.level());
        gpe.write(2, &[0x08, 0x00]);
        assert!(r.irq.level());
        gpe.read(0, &mut b);
        assert_eq!(b, [0x08, 0, 0x08, 0]);
        gpe.write(0, &[0x08]);
        assert!(!r.irq.level());
        gpe.read(4, &mut b[..1]);
        assert_eq!(b[0], 0xff);
    }

    #[test]
    fn other_piix4_registers_are_storage() {
        let mut r = rig();
        r.pm.region_write(0, 0x28, &0x0000_0001u32.to_le_bytes()); // GLBCTL
        assert_eq!(rd32(&mut r.pm, 0x28), 1);
        r.pm.region_write(0, 0x0c, &[0xff, 0xff]); // GPSTS: W1C
        assert_eq!(rd16(&mut r.pm, 0x0c), 0);
        r.pm.region_write(0, 0x30, &[0xff; 4]); // GPIREG: input
        assert_eq!(rd32(&mut r.pm, 0x30), 0);
        // Reserved and out-of-window bytes.
        assert_eq!(rd16(&mut r.pm, 6), 0);
        let mut b = [0u8; 2];
        r.pm.region_read(0, 0x3f, &mut b);
        assert_eq!(b, [0, 0xff]);
        r.pm.region_read(1, 0, &mut b);
        assert_eq!(b, [0xff; 2]);
    }

    #[test]
    fn snapshot_round_trip() {
        let mut r = rig();
        r.pm.enable_at(0x600);
        r.pm.apm_ports().write(0, &[ACPI_ENABLE]);
        wr16(&mut r.pm, 2, pm1::PWRBTN);
        r.pm.events().power_button();
        r.pm.gpe0_block().write(2, &[0x01]);
        r.pm.region_write(0, 0x2c, &[0x12]);
        let s = r.pm.snapshot();
        let mut q = rig();
        q.pm.restore(s.clone());
        assert_eq!(q.pm.snapshot(), s);
        assert!(q.irq.level());
        assert_eq!(q.pm.pm_base(), Some(0x600));
        // A hostile state cannot change the IDs nor panic on odd lengths.
        let mut bad = s;
        bad.config = vec![0xff; 7];
        bad.other = vec![0xff; 1000];
        bad.pm1_cnt = 0xffff;
        q.pm.restore(bad);
        assert_eq!(cfg32(&mut q.pm, 0), 0x7113_8086);
        assert_eq!(rd16(&mut q.pm, 4), cnt::RW);
    }

    #[test]
    fn hostile_accesses_never_panic() {
        let mut r = rig();
        let mut rng = XorShift::new(0xac91);
        for i in 0..20_000u64 {
            r.clock.advance(rng.next_u64() % 10_000_000);
            let off = rng.next_u64() % 80;
            let len = [0usize, 1, 2, 3, 4, 8][(rng.next_u64() % 6) as usize];
            let v = rng.next_u64().to_le_bytes();
            let index = (rng.next_u64() % 8) as usize;
            match i % 4 {
                0 => r.pm.region_write(index, off, &v[..len]),
                1 => {
                    let mut d = [0u8; 8];
                    r.pm.region_read(index, off, &mut d[..len]);
                }
                2 => r.pm.config_write((off * 4) as usize, &v[..len]),
                _ => {
                    let mut d = [0u8; 8];
                    r.pm.config_read((off * 4) as usize, &mut d[..len]);
                }
            }
            if i % 1000 == 0 {
                r.pm.events().power_button();
                r.pm.poll();
            }
        }
        r.pm.region_read(0, u64::MAX, &mut [0u8; 8]);
        r.pm.region_write(0, u64::MAX - 1, &[0xff; 8]);
        spray(&mut r.pm.apm_ports(), 1, 50);
        spray(&mut r.pm.gpe0_block(), 2, 50);
        // Whatever happened, the SCI follows its equation.
        let c = lock(&r.pm.core);
        let expected = c.pm1_cnt & cnt::SCI_EN != 0
            && (c.pm1_sts & c.pm1_en & pm1::EVENTS != 0 || c.gpe0_sts & c.gpe0_en != 0);
        assert_eq!(r.irq.level(), expected);
        assert_eq!(c.pm1_cnt & !cnt::RW, 0);
        assert_eq!(r.control.resets(), 0);
    }
}
