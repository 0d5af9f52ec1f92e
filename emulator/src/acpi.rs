//! ACPI tables for the PC machine (i440FX + PIIX3 + the PIIX4 PM function of
//! [`vireo_devices::acpi_pm`]), built with the rust-vmm `acpi_tables` crate:
//! RSDP (revision 2), RSDT and XSDT, FADT (6.5 layout), FACS, MADT and a DSDT
//! (ACPI 6.0 chapter 5; AML, chapter 19-20).
//!
//! Two ways to hand them to the guest:
//! - [`build`] gives the fw_cfg files SeaBIOS links itself: the tables blob
//!   ([`TABLES_FILE`]), the RSDP ([`RSDP_FILE`]) and the linker/loader script
//!   ([`LOADER_FILE`]), whose pointers are offsets from the start of the
//!   file they point into;
//! - [`install`] lays the same bytes in guest RAM with absolute pointers and
//!   checksums, for direct kernel boot.
//!
//! What the tables describe:
//! - the fixed hardware at [`PM_BASE`] (the PMBA SeaBIOS programs when
//!   `etc/table-loader` exists), SCI on IRQ 9, SMI_CMD 0xb2, GPE0 at 0xafe0,
//!   a 24-bit PM timer, the reset register (port 0xcf9, value 6), a fixed
//!   power button and no sleep button; only S5 (`\_S5`, SLP_TYP
//!   [`SLP_TYP_S5`]) is offered;
//! - `\_SB.PCI0` (PNP0A03, `_BBN` 0) with its windows, the ISA devices under
//!   `\_SB.PCI0.ISA` (RTC, keyboard, mouse, COM1), processors as ACPI0007
//!   devices `\_SB.Cxxx`;
//! - PCI interrupts through the PIIX3 PIRQ routing registers (00:01.0 config
//!   0x60-0x63, reached through a PCI_Config operation region): link devices
//!   `\_SB.LNKA`-`LNKD` (PNP0C0F) report and program them (ISA IRQ 5, 10 or
//!   11, level, active high, shared). The `_PRT` follows the 440FX board
//!   wiring: device `d`, pin `p` (0 = INTA#) uses PIRQ[(p + d - 1) mod 4];
//! - the MADT: local APICs 0..n-1, the I/O APIC (ID n, 0xfec00000, GSI 0),
//!   overrides IRQ0→GSI2 and level/active-high IRQ 5, 9, 10, 11, LINT1 NMI.

use acpi_tables::aml::{
    self, AddressSpace, AddressSpaceCacheable, Device, EISAName, Field, FieldAccessType,
    FieldEntry, FieldLockRule, FieldUpdateRule, If, LessThan, Method, Name, OpRegion,
    OpRegionSpace, Package, Path, ResourceTemplate, Return, Scope, IO,
};
use acpi_tables::fadt::{FADTBuilder, Flags};
use acpi_tables::gas::{AccessSize, AddressSpace as GasSpace, GAS};
use acpi_tables::madt::{
    EnabledStatus, IoApic, LocalInterruptController, ProcessorLocalApic, MADT,
};
use acpi_tables::rsdp::Rsdp;
use acpi_tables::sdt::Sdt;
use acpi_tables::xsdt::XSDT;
use acpi_tables::{Aml, AmlSink};
use thiserror::Error;
use vireo_devices::acpi_pm::{
    ACPI_DISABLE, ACPI_ENABLE, APM_PORT, GPE0_LEN, GPE0_PORT, SCI_IRQ, SLP_TYP_S5,
};

/// fw_cfg file holding the tables.
pub const TABLES_FILE: &str = "etc/acpi/tables";
/// fw_cfg file holding the RSDP.
pub const RSDP_FILE: &str = "etc/acpi/rsdp";
/// fw_cfg file holding the linker/loader commands.
pub const LOADER_FILE: &str = "etc/table-loader";
/// Base of the PM I/O block the tables describe (PM1a_EVT; PM1a_CNT at +4,
/// PM_TMR at +8): what SeaBIOS writes to PMBA when it finds
/// [`LOADER_FILE`], and what direct boot must program
/// (`AcpiPm::enable_at(PM_BASE)`).
pub const PM_BASE: u16 = 0x600;
/// The reset register (the PIIX3 Reset Control Register, I/O port 0xcf9).
pub const RESET_PORT: u16 = 0xcf9;
/// The value written to [`RESET_PORT`] to reset (SYS_RST | RST_CPU).
pub const RESET_VALUE: u8 = 0x06;
/// Local APIC physical address.
pub const LAPIC_ADDR: u32 = 0xfee0_0000;
/// I/O APIC physical address.
pub const IOAPIC_ADDR: u32 = 0xfec0_0000;
/// The most processors the tables describe (APIC IDs 0..n-1, the I/O APIC
/// takes ID n; 0xff is the broadcast ID).
pub const MAX_VCPUS: usize = 254;
/// The ISA IRQs the PCI link devices may use.
pub const PCI_IRQS: [u32; 3] = [5, 10, 11];

const OEM_ID: [u8; 6] = *b"VIREO ";
const OEM_TABLE_ID: [u8; 8] = *b"VIREOPC ";
const OEM_REVISION: u32 = 1;
/// CMOS index of the RTC's century register.
const RTC_CENTURY: u8 = 0x32;
/// FACS alignment (ACPI §5.2.10).
const FACS_ALIGN: u32 = 64;
/// RSDP alignment (§5.2.5.1: on a 16-byte boundary).
const RSDP_ALIGN: u32 = 16;

/// The fw_cfg files of the ACPI tables.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcpiTables {
    /// Contents of [`TABLES_FILE`].
    pub tables: Vec<u8>,
    /// Contents of [`RSDP_FILE`].
    pub rsdp: Vec<u8>,
    /// Contents of [`LOADER_FILE`].
    pub loader: Vec<u8>,
}

/// Errors from [`install`].
#[derive(Debug, Error, PartialEq, Eq)]
pub enum AcpiError {
    /// The tables must start on a 64-byte boundary (for the FACS) and end
    /// below 4 GiB (the RSDT and FADT hold 32-bit pointers).
    #[error("ACPI tables cannot go at {0:#x}")]
    BadTablesAddress(u64),
    /// The RSDP must be on a 16-byte boundary in 0xe0000-0xfffff.
    #[error("the RSDP cannot go at {0:#x}")]
    BadRsdpAddress(u64),
    /// The two areas overlap.
    #[error("the RSDP and the tables overlap")]
    Overlap,
    /// Guest RAM refused the write.
    #[error("could not write ACPI tables at {0:#x}")]
    RamWrite(u64),
}

/// Which file a pointer or checksum is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum File {
    Tables,
    Rsdp,
}

impl File {
    fn name(self) -> &'static str {
        match self {
            File::Tables => TABLES_FILE,
            File::Rsdp => RSDP_FILE,
        }
    }
}

/// A pointer field of `size` bytes at `offset` in `file`, holding an offset
/// into `target` until linked.
#[derive(Debug, Clone, Copy)]
struct Pointer {
    file: File,
    offset: u32,
    size: u8,
    target: File,
}

/// A checksum byte at `at` in `file` over `start..start + len`.
#[derive(Debug, Clone, Copy)]
struct Checksum {
    file: File,
    at: u32,
    start: u32,
    len: u32,
}

/// The unlinked files and what linking them takes.
struct Unlinked {
    tables: Vec<u8>,
    rsdp: Vec<u8>,
    pointers: Vec<Pointer>,
    checksums: Vec<Checksum>,
}

/// Bytes already in AML form.
struct Raw(Vec<u8>);

impl Aml for Raw {
    fn to_aml_bytes(&self, sink: &mut dyn AmlSink) {
        sink.vec(&self.0);
    }
}

fn raw(x: &dyn Aml) -> Raw {
    let mut v = Vec::new();
    x.to_aml_bytes(&mut v);
    Raw(v)
}

/// Small IRQ descriptor without flags (§6.4.2.1: edge, active high).
struct IrqNoFlags(u8);

impl Aml for IrqNoFlags {
    fn to_aml_bytes(&self, sink: &mut dyn AmlSink) {
        let mask = 1u16 << (self.0 & 15);
        sink.byte(0x22);
        sink.word(mask);
    }
}

/// Extended interrupt descriptor (§6.4.3.6) listing `irqs`: resource
/// consumer, level triggered, active high, shared.
struct LevelIrqs(Vec<u32>);

impl Aml for LevelIrqs {
    fn to_aml_bytes(&self, sink: &mut dyn AmlSink) {
        sink.byte(0x89);
        sink.word(2 + 4 * self.0.len() as u16);
        sink.byte(0x09); // shared | consumer (level, high: bits clear)
        sink.byte(self.0.len() as u8);
        for &irq in &self.0 {
            sink.dword(irq);
        }
    }
}

/// The bytes of an AML object or table.
fn serialize(table: &dyn Aml) -> Vec<u8> {
    let mut v = Vec::new();
    table.to_aml_bytes(&mut v);
    v
}

fn put_u32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

/// `Device (name) { children }`, serialized.
fn device(name: &str, children: &[&dyn Aml]) -> Raw {
    raw(&Device::new(Path::new(name), children.to_vec()))
}

/// `Name (name, value)`, serialized.
fn name(name: &str, value: &dyn Aml) -> Raw {
    raw(&Name::new(Path::new(name), value))
}

/// `Method (name, args, [Not]Serialized) { body }`, serialized.
fn method(name: &str, args: u8, serialized: bool, body: &[&dyn Aml]) -> Raw {
    raw(&Method::new(
        Path::new(name),
        args,
        serialized,
        body.to_vec(),
    ))
}

/// `ResourceTemplate () { items }`, serialized.
fn template(items: &[&dyn Aml]) -> Raw {
    raw(&ResourceTemplate::new(items.to_vec()))
}

/// `Package () { items }`, serialized.
fn package(items: &[&dyn Aml]) -> Raw {
    raw(&Package::new(items.to_vec()))
}

/// The DSDT's AML body (§5.2.11.1).
fn dsdt_aml(vcpus: usize) -> Vec<u8> {
    // The ISA bridge with the PIIX3 PIRQ routing registers.
    let pirq_region = OpRegion::new("PIRQ".into(), OpRegionSpace::PCIConfig, &0x60u8, &4u8);
    let pirq_fields = Field::new(
        "PIRQ".into(),
        FieldAccessType::Byte,
        FieldLockRule::NoLock,
        FieldUpdateRule::Preserve,
        vec![
            FieldEntry::Named(*b"PRQ0", 8),
            FieldEntry::Named(*b"PRQ1", 8),
            FieldEntry::Named(*b"PRQ2", 8),
            FieldEntry::Named(*b"PRQ3", 8),
        ],
    );
    let rtc = device(
        "RTC_",
        &[
            &name("_HID", &EISAName::new("PNP0B00")),
            &name(
                "_CRS",
                &template(&[&IO::new(0x70, 0x70, 1, 2), &IrqNoFlags(8)]),
            ),
        ],
    );
    let kbd = device(
        "KBD_",
        &[
            &name("_HID", &EISAName::new("PNP0303")),
            &name(
                "_CRS",
                &template(&[
                    &IO::new(0x60, 0x60, 1, 1),
                    &IO::new(0x64, 0x64, 1, 1),
                    &IrqNoFlags(1),
                ]),
            ),
        ],
    );
    let mou = device(
        "MOU_",
        &[
            &name("_HID", &EISAName::new("PNP0F13")),
            &name("_CRS", &template(&[&IrqNoFlags(12)])),
        ],
    );
    let com1 = device(
        "COM1",
        &[
            &name("_HID", &EISAName::new("PNP0501")),
            &name("_UID", &1u8),
            &name(
                "_CRS",
                &template(&[&IO::new(0x3f8, 0x3f8, 0, 8), &IrqNoFlags(4)]),
            ),
        ],
    );
    let isa = device(
        "ISA_",
        &[
            &name("_ADR", &0x0001_0000u32),
            &pirq_region,
            &pirq_fields,
            &rtc,
            &kbd,
            &mou,
            &com1,
        ],
    );

    // The root bridge's windows (§6.4.3.5): buses, the configuration
    // mechanism's ports, the I/O ports around them, VGA memory and the
    // 32-bit PCI hole.
    let pci_crs = template(&[
        &AddressSpace::<u16>::new_bus_number(0, 0xff),
        &IO::new(0xcf8, 0xcf8, 1, 8),
        &AddressSpace::<u16>::new_io(0, 0xcf7, None),
        &AddressSpace::<u16>::new_io(0xd00, 0xffff, None),
        &AddressSpace::<u32>::new_memory(
            AddressSpaceCacheable::Cacheable,
            true,
            0xa_0000,
            0xb_ffff,
            None,
        ),
        &AddressSpace::<u32>::new_memory(
            AddressSpaceCacheable::NotCacheable,
            true,
            0xe000_0000,
            0xfebf_ffff,
            None,
        ),
    ]);

    // _PRT (§6.2.13): every slot's four pins to the link devices.
    let links = ["\\_SB_.LNKA", "\\_SB_.LNKB", "\\_SB_.LNKC", "\\_SB_.LNKD"];
    let prt_entries: Vec<Raw> = (0..32u32)
        .flat_map(|dev| (0..4u32).map(move |pin| (dev, pin)))
        .map(|(dev, pin)| {
            let addr = dev << 16 | 0xffff;
            let link = Path::new(links[((pin + dev + 3) % 4) as usize]);
            package(&[&addr, &(pin as u8), &link, &aml::ZERO])
        })
        .collect();
    let prt_refs: Vec<&dyn Aml> = prt_entries.iter().map(|e| e as &dyn Aml).collect();

    let pci0 = device(
        "PCI0",
        &[
            // No _ADR beside the _HID (§6.1: one or the other).
            &name("_HID", &EISAName::new("PNP0A03")),
            &name("_UID", &aml::ZERO),
            &name("_BBN", &aml::ZERO),
            &name("_CRS", &pci_crs),
            &name("_PRT", &package(&prt_refs)),
            &isa,
        ],
    );

    // The link devices (§6.2.13, PNP0C0F) over PRQ0-PRQ3.
    let link_devs: Vec<Raw> = (0..4u8).map(link_device).collect();

    // Processors (§8.4, ACPI0007), _UID = the MADT's processor UID.
    let cpus: Vec<Raw> = (0..vcpus)
        .map(|i| {
            device(
                &format!("C{i:03X}"),
                &[&name("_HID", &"ACPI0007"), &name("_UID", &(i as u32))],
            )
        })
        .collect();

    let mut sb_children: Vec<&dyn Aml> = vec![&pci0];
    sb_children.extend(link_devs.iter().map(|d| d as &dyn Aml));
    sb_children.extend(cpus.iter().map(|d| d as &dyn Aml));
    let sb = Scope::new("\\_SB_".into(), sb_children);

    // \_S5 (§7.4.2): SLP_TYPa, SLP_TYPb, reserved.
    let s5 = name(
        "\\_S5_",
        &package(&[&SLP_TYP_S5, &SLP_TYP_S5, &aml::ZERO, &aml::ZERO]),
    );

    let mut out = Vec::new();
    sb.to_aml_bytes(&mut out);
    s5.to_aml_bytes(&mut out);
    out
}

/// Link device `LNK{A+i}` over PIIX3 routing register PRQ`i`: bit 7 set
/// means disabled, bits 3:0 the ISA IRQ.
fn link_device(i: u8) -> Raw {
    let prq = Path::new(&format!("\\_SB_.PCI0.ISA_.PRQ{i}"));
    let is_on = LessThan::new(&prq, &0x80u8);
    // _STA: present and enabled (0x0b) while routing is on, else 0x09.
    let sta = method(
        "_STA",
        0,
        false,
        &[
            &raw(&If::new(&is_on, vec![&Return::new(&0x0bu8)])),
            &Return::new(&0x09u8),
        ],
    );
    // _DIS: set the disable bit.
    let dis = method("_DIS", 0, false, &[&aml::Or::new(&prq, &prq, &0x80u8)]);
    // _CRS: the routed IRQ (0 while disabled) in the descriptor's first
    // interrupt number, byte 5.
    let res = Path::new("RES_");
    let irqv = Path::new("IRQV");
    let crs = method(
        "_CRS",
        0,
        true,
        &[
            &name("RES_", &template(&[&LevelIrqs(vec![0])])),
            &aml::CreateDWordField::new(&irqv, &res, &5u8),
            &raw(&If::new(&is_on, vec![&aml::And::new(&irqv, &prq, &0x0fu8)])),
            &Return::new(&res),
        ],
    );
    // _SRS: write the requested IRQ (bit 7 clear: routing on).
    let irqw = Path::new("IRQW");
    let srs = method(
        "_SRS",
        1,
        true,
        &[
            &aml::CreateDWordField::new(&irqw, &aml::Arg(0), &5u8),
            &aml::Store::new(&prq, &irqw),
        ],
    );
    device(
        &format!("LNK{}", (b'A' + i) as char),
        &[
            &name("_HID", &EISAName::new("PNP0C0F")),
            &name("_UID", &i),
            &name("_PRS", &template(&[&LevelIrqs(PCI_IRQS.to_vec())])),
            &sta,
            &dis,
            &crs,
            &srs,
        ],
    )
}

/// The MADT (§5.2.12).
fn madt(vcpus: usize) -> Vec<u8> {
    let mut m = MADT::new(
        OEM_ID,
        OEM_TABLE_ID,
        OEM_REVISION,
        LocalInterruptController::Address(LAPIC_ADDR),
    );
    for i in 0..vcpus {
        m.add_structure(ProcessorLocalApic::new(
            i as u8,
            i as u8,
            EnabledStatus::Enabled,
        ));
    }
    m.add_structure(IoApic::new(vcpus as u8, IOAPIC_ADDR, 0));
    let mut b = serialize(&m);
    // Flags: PCAT_COMPAT (dual 8259s present).
    put_u32(&mut b, 40, 1);
    // Interrupt source overrides (§5.2.12.5): bus 0 (ISA), source, GSI,
    // flags (polarity bits 1:0, trigger bits 3:2; 0 = bus default).
    let level_high: u16 = 0b01 | 0b11 << 2;
    let mut overrides = vec![(0u8, 2u32, 0u16), (SCI_IRQ, SCI_IRQ.into(), level_high)];
    overrides.extend(PCI_IRQS.iter().map(|&i| (i as u8, i, level_high)));
    for (src, gsi, flags) in overrides {
        b.extend_from_slice(&[2, 10, 0, src]);
        b.extend_from_slice(&gsi.to_le_bytes());
        b.extend_from_slice(&flags.to_le_bytes());
    }
    // Local APIC NMI (§5.2.12.7): all processors, LINT1, bus-default flags.
    b.extend_from_slice(&[4, 6, 0xff, 0, 0, 1]);
    let len = b.len() as u32;
    put_u32(&mut b, 4, len);
    b
}

/// The FADT (§5.2.9); pointer fields are left at offsets in the tables
/// file and listed by the caller.
fn fadt(facs: u32, dsdt: u32) -> Vec<u8> {
    let base = u32::from(PM_BASE);
    let io = |bits: u8, access: AccessSize, addr: u32| {
        GAS::new(GasSpace::SystemIo, bits, 0, access, addr.into())
    };
    let mut f = FADTBuilder::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION)
        .flag(Flags::Wbinvd)
        .flag(Flags::ProcC1)
        .flag(Flags::SlpButton)
        .flag(Flags::FixRtc)
        .flag(Flags::ResetRegSup);
    f.firmware_ctrl = facs.into();
    f.dsdt = dsdt.into();
    f.x_dsdt = u64::from(dsdt).into();
    f.sci_int = u16::from(SCI_IRQ).into();
    f.smi_cmd = u32::from(APM_PORT).into();
    f.acpi_enable = ACPI_ENABLE;
    f.acpi_disable = ACPI_DISABLE;
    f.pm1a_evt_blk = base.into();
    f.pm1a_cnt_blk = (base + 4).into();
    f.pm_tmr_blk = (base + 8).into();
    f.gpe0_blk = u32::from(GPE0_PORT).into();
    f.pm1_evt_len = 4;
    f.pm1_cnt_len = 2;
    f.pm_tmr_len = 4;
    f.gpe0_blk_len = GPE0_LEN;
    // C2 and C3 unsupported (latencies above 100 and 1000 µs).
    f.p_lvl2_lat = 0x0fffu16.into();
    f.p_lvl3_lat = 0x0fffu16.into();
    f.century = RTC_CENTURY;
    // IA-PC boot architecture: legacy devices, 8042.
    f.iapc_boot_arch = 0x0003u16.into();
    f.reset_reg = io(8, AccessSize::ByteAccess, RESET_PORT.into());
    f.reset_value = RESET_VALUE;
    f.x_pm1a_evt_blk = io(32, AccessSize::WordAccess, base);
    f.x_pm1a_cnt_blk = io(16, AccessSize::WordAccess, base + 4);
    f.x_pm_tmr_blk = io(32, AccessSize::DwordAccess, base + 8);
    f.x_gpe0_blk = io(8 * GPE0_LEN, AccessSize::ByteAccess, GPE0_PORT.into());
    serialize(&f.finalize())
}

/// FADT offsets of the pointer fields (§5.2.9, Table 5-34).
const FADT_FIRMWARE_CTRL: u32 = 36;
const FADT_DSDT: u32 = 40;
const FADT_X_DSDT: u32 = 140;

fn align_to(v: &mut Vec<u8>, align: usize) {
    while !v.len().is_multiple_of(align) {
        v.push(0);
    }
}

/// Builds every table, unlinked.
fn unlinked(vcpus: usize) -> Unlinked {
    let vcpus = vcpus.clamp(1, MAX_VCPUS);
    let mut tables = Vec::new();
    let mut pointers = Vec::new();
    let mut checksums = Vec::new();
    let mut add_table = |tables: &mut Vec<u8>, bytes: &[u8]| -> u32 {
        align_to(tables, 8);
        let start = tables.len() as u32;
        tables.extend_from_slice(bytes);
        // The checksum byte is computed when linking.
        tables[start as usize + 9] = 0;
        checksums.push(Checksum {
            file: File::Tables,
            at: start + 9,
            start,
            len: bytes.len() as u32,
        });
        start
    };
    let ptr = |offset: u32, size: u8| Pointer {
        file: File::Tables,
        offset,
        size,
        target: File::Tables,
    };

    // FACS first: it alone needs 64-byte alignment.
    let facs = 0u32;
    tables.extend_from_slice(&serialize(&acpi_tables::facs::FACS::new()));

    let mut dsdt = Sdt::new(*b"DSDT", 36, 2, OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    dsdt.append_slice(&dsdt_aml(vcpus));
    let dsdt = add_table(&mut tables, dsdt.as_slice());

    let fadt = add_table(&mut tables, &fadt(facs, dsdt));
    pointers.push(ptr(fadt + FADT_FIRMWARE_CTRL, 4));
    pointers.push(ptr(fadt + FADT_DSDT, 4));
    pointers.push(ptr(fadt + FADT_X_DSDT, 8));

    let madt = add_table(&mut tables, &madt(vcpus));

    let entries = [fadt, madt];
    let mut rsdt = Sdt::new(*b"RSDT", 36, 1, OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    for e in entries {
        rsdt.append_slice(&e.to_le_bytes());
    }
    let rsdt = add_table(&mut tables, rsdt.as_slice());
    for i in 0..entries.len() as u32 {
        pointers.push(ptr(rsdt + 36 + 4 * i, 4));
    }

    let mut xsdt = XSDT::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    for e in entries {
        xsdt.add_entry(e.into());
    }
    let xsdt = add_table(&mut tables, &serialize(&xsdt));
    for i in 0..entries.len() as u32 {
        pointers.push(ptr(xsdt + 36 + 8 * i, 8));
    }

    // The RSDP (§5.2.5.3): RsdtAddress at 16, XsdtAddress at 24; the first
    // checksum covers 20 bytes, the extended one all 36 (after it).
    let mut rsdp = serialize(&Rsdp::new(OEM_ID, xsdt.into()));
    rsdp[16..20].copy_from_slice(&rsdt.to_le_bytes());
    rsdp[8] = 0;
    rsdp[32] = 0;
    for (offset, size) in [(16, 4), (24, 8)] {
        pointers.push(Pointer {
            file: File::Rsdp,
            offset,
            size,
            target: File::Tables,
        });
    }
    checksums.push(Checksum {
        file: File::Rsdp,
        at: 8,
        start: 0,
        len: 20,
    });
    checksums.push(Checksum {
        file: File::Rsdp,
        at: 32,
        start: 0,
        len: rsdp.len() as u32,
    });

    Unlinked {
        tables,
        rsdp,
        pointers,
        checksums,
    }
}

/// Size of one linker/loader command.
pub const LOADER_ENTRY_LEN: usize = 128;
/// Length of a file name field in a loader command (NUL padded).
const LOADER_NAME_LEN: usize = 56;
const CMD_ALLOCATE: u32 = 1;
const CMD_ADD_POINTER: u32 = 2;
const CMD_ADD_CHECKSUM: u32 = 3;
const ZONE_HIGH: u8 = 1;
const ZONE_FSEG: u8 = 2;

/// One loader command: the command word, then its fields at their offsets.
fn loader_entry(cmd: u32, fields: &[(usize, &[u8])]) -> [u8; LOADER_ENTRY_LEN] {
    let mut e = [0u8; LOADER_ENTRY_LEN];
    e[..4].copy_from_slice(&cmd.to_le_bytes());
    for (at, bytes) in fields {
        e[*at..*at + bytes.len()].copy_from_slice(bytes);
    }
    e
}

/// The linker/loader script (the format of SeaBIOS's romfile_loader):
/// allocate both files, add the files' addresses to the pointers, then fix
/// the checksums.
fn loader(u: &Unlinked) -> Vec<u8> {
    let mut out = Vec::new();
    let name = |f: File| f.name().as_bytes();
    for (file, align, zone) in [
        (File::Rsdp, RSDP_ALIGN, ZONE_FSEG),
        (File::Tables, FACS_ALIGN, ZONE_HIGH),
    ] {
        out.extend_from_slice(&loader_entry(
            CMD_ALLOCATE,
            &[(4, name(file)), (60, &align.to_le_bytes()), (64, &[zone])],
        ));
    }
    for p in &u.pointers {
        out.extend_from_slice(&loader_entry(
            CMD_ADD_POINTER,
            &[
                (4, name(p.file)),
                (4 + LOADER_NAME_LEN, name(p.target)),
                (4 + 2 * LOADER_NAME_LEN, &p.offset.to_le_bytes()),
                (4 + 2 * LOADER_NAME_LEN + 4, &[p.size]),
            ],
        ));
    }
    for c in &u.checksums {
        out.extend_from_slice(&loader_entry(
            CMD_ADD_CHECKSUM,
            &[
                (4, name(c.file)),
                (60, &c.at.to_le_bytes()),
                (64, &c.start.to_le_bytes()),
                (68, &c.len.to_le_bytes()),
            ],
        ));
    }
    out
}

/// The ACPI tables of a machine with `vcpus` processors (1 to
/// [`MAX_VCPUS`]; clamped), as fw_cfg files for SeaBIOS.
pub fn build(vcpus: usize) -> AcpiTables {
    let u = unlinked(vcpus);
    let loader = loader(&u);
    AcpiTables {
        tables: u.tables,
        rsdp: u.rsdp,
        loader,
    }
}

/// How many bytes [`install`] writes at `tables_at` for `vcpus` processors.
pub fn tables_len(vcpus: usize) -> usize {
    unlinked(vcpus).tables.len()
}

/// Writes the tables for `vcpus` processors into guest RAM through
/// `ram_write(address, bytes)` (false: not RAM), linked for the tables at
/// `tables_at` (64-byte aligned, below 4 GiB; [`tables_len`] bytes, to be
/// reserved as ACPI data in the e820 map) and the RSDP at `rsdp_at` (16-byte
/// aligned in 0xe0000-0xfffff, where an OS scans for it).
pub fn install(
    mut ram_write: impl FnMut(u64, &[u8]) -> bool,
    vcpus: usize,
    tables_at: u64,
    rsdp_at: u64,
) -> Result<(), AcpiError> {
    let mut u = unlinked(vcpus);
    let tables_end = tables_at.checked_add(u.tables.len() as u64);
    if !tables_at.is_multiple_of(FACS_ALIGN.into()) || tables_end.is_none_or(|e| e > 1 << 32) {
        return Err(AcpiError::BadTablesAddress(tables_at));
    }
    let rsdp_end = rsdp_at.saturating_add(u.rsdp.len() as u64);
    if !rsdp_at.is_multiple_of(RSDP_ALIGN.into()) || rsdp_at < 0xe_0000 || rsdp_end > 0x10_0000 {
        return Err(AcpiError::BadRsdpAddress(rsdp_at));
    }
    if rsdp_at < tables_end.unwrap_or(u64::MAX) && tables_at < rsdp_end {
        return Err(AcpiError::Overlap);
    }
    link(&mut u, tables_at, rsdp_at);
    if !ram_write(tables_at, &u.tables) {
        return Err(AcpiError::RamWrite(tables_at));
    }
    if !ram_write(rsdp_at, &u.rsdp) {
        return Err(AcpiError::RamWrite(rsdp_at));
    }
    Ok(())
}

/// What the firmware's loader does: pointers, then checksums.
fn link(u: &mut Unlinked, tables_at: u64, rsdp_at: u64) {
    let base = |f: File| match f {
        File::Tables => tables_at,
        File::Rsdp => rsdp_at,
    };
    for p in u.pointers.clone() {
        let file = match p.file {
            File::Tables => &mut u.tables,
            File::Rsdp => &mut u.rsdp,
        };
        let field = &mut file[p.offset as usize..(p.offset + u32::from(p.size)) as usize];
        let mut v = [0u8; 8];
        v[..field.len()].copy_from_slice(field);
        let linked = u64::from_le_bytes(v).wrapping_add(base(p.target));
        field.copy_from_slice(&linked.to_le_bytes()[..field.len()]);
    }
    for c in u.checksums.clone() {
        let file = match c.file {
            File::Tables => &mut u.tables,
            File::Rsdp => &mut u.rsdp,
        };
        let sum = file[c.start as usize..(c.start + c.len) as usize]
            .iter()
            .fold(0u8, |a, &b| a.wrapping_add(b));
        file[c.at as usize] = file[c.at as usize].wrapping_sub(sum);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn sum(b: &[u8]) -> u8 {
        b.iter().fold(0u8, |a, &x| a.wrapping_add(x))
    }

    fn u32_at(b: &[u8], at: usize) -> u32 {
        u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
    }

    fn u64_at(b: &[u8], at: usize) -> u64 {
        u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
    }

    const TABLES_AT: u64 = 0x7ffe_0000;
    const RSDP_AT: u64 = 0xf_5a40;

    /// Guest memory as written by `install`.
    fn installed(vcpus: usize) -> BTreeMap<u64, Vec<u8>> {
        let mut mem = BTreeMap::new();
        install(
            |at, b| {
                mem.insert(at, b.to_vec());
                true
            },
            vcpus,
            TABLES_AT,
            RSDP_AT,
        )
        .unwrap();
        mem
    }

    /// Reads a table at a guest address from the installed memory.
    fn table_at(mem: &BTreeMap<u64, Vec<u8>>, addr: u64) -> Vec<u8> {
        let (base, blob) = mem.range(..=addr).next_back().unwrap();
        let off = (addr - base) as usize;
        let len = u32_at(blob, off + 4) as usize;
        blob[off..off + len].to_vec()
    }

    /// Follows RSDP → XSDT/RSDT → tables, checking every checksum; returns
    /// the tables by signature.
    fn walk(mem: &BTreeMap<u64, Vec<u8>>) -> BTreeMap<String, Vec<u8>> {
        let rsdp = &mem[&RSDP_AT];
        assert_eq!(&rsdp[..8], b"RSD PTR ");
        assert_eq!(rsdp[15], 2, "revision");
        assert_eq!(sum(&rsdp[..20]), 0);
        assert_eq!(sum(&rsdp[..36]), 0);
        let mut out = BTreeMap::new();
        let xsdt = table_at(mem, u64_at(rsdp, 24));
        let rsdt = table_at(mem, u32_at(rsdp, 16).into());
        assert_eq!(&xsdt[..4], b"XSDT");
        assert_eq!(&rsdt[..4], b"RSDT");
        let x_entries: Vec<u64> = (36..xsdt.len())
            .step_by(8)
            .map(|o| u64_at(&xsdt, o))
            .collect();
        let r_entries: Vec<u64> = (36..rsdt.len())
            .step_by(4)
            .map(|o| u32_at(&rsdt, o).into())
            .collect();
        assert_eq!(x_entries, r_entries);
        for t in [xsdt, rsdt] {
            assert_eq!(sum(&t), 0, "{}", String::from_utf8_lossy(&t[..4]));
            out.insert(String::from_utf8_lossy(&t[..4]).into_owned(), t);
        }
        for a in x_entries {
            let t = table_at(mem, a);
            assert_eq!(sum(&t), 0, "{}", String::from_utf8_lossy(&t[..4]));
            out.insert(String::from_utf8_lossy(&t[..4]).into_owned(), t);
        }
        let fadt = out["FACP"].clone();
        let dsdt_addr = u32_at(&fadt, 40) as u64;
        assert_eq!(u64_at(&fadt, 140), dsdt_addr, "X_DSDT = DSDT");
        let dsdt = table_at(mem, dsdt_addr);
        assert_eq!(&dsdt[..4], b"DSDT");
        assert_eq!(sum(&dsdt), 0);
        out.insert("DSDT".into(), dsdt);
        let facs_addr = u32_at(&fadt, 36) as u64;
        assert_eq!(facs_addr % 64, 0);
        let (base, blob) = mem.range(..=facs_addr).next_back().unwrap();
        let facs = &blob[(facs_addr - base) as usize..][..64];
        assert_eq!(&facs[..4], b"FACS");
        assert_eq!(u32_at(facs, 4), 64);
        out
    }

    #[test]
    fn installed_tables_have_valid_checksums_and_pointers() {
        for vcpus in [1, 2, 4, 64] {
            let mem = installed(vcpus);
            let t = walk(&mem);
            assert_eq!(
                t.keys().cloned().collect::<Vec<_>>(),
                ["APIC", "DSDT", "FACP", "RSDT", "XSDT"]
            );
            assert_eq!(mem[&TABLES_AT].len(), tables_len(vcpus));
        }
    }

    #[test]
    fn fadt_describes_the_piix4_pm_hardware() {
        let t = walk(&installed(2));
        let f = &t["FACP"];
        assert_eq!(f.len(), 276);
        assert_eq!(u16::from_le_bytes([f[46], f[47]]), 9, "SCI_INT");
        assert_eq!(u32_at(f, 48), 0xb2, "SMI_CMD");
        assert_eq!((f[52], f[53]), (0xf1, 0xf0));
        assert_eq!(u32_at(f, 56), 0x600, "PM1a_EVT_BLK");
        assert_eq!(u32_at(f, 64), 0x604, "PM1a_CNT_BLK");
        assert_eq!(u32_at(f, 76), 0x608, "PM_TMR_BLK");
        assert_eq!(u32_at(f, 80), 0xafe0, "GPE0_BLK");
        assert_eq!(&f[88..93], &[4, 2, 0, 4, 4], "block lengths");
        let flags = u32_at(f, 112);
        assert_eq!(flags & 1, 1, "WBINVD");
        assert_eq!(flags & 4, 4, "PROC_C1");
        assert_eq!(flags & 1 << 4, 0, "fixed power button");
        assert_eq!(flags & 1 << 5, 1 << 5, "no sleep button");
        assert_eq!(flags & 1 << 8, 0, "24-bit timer");
        assert_eq!(flags & 1 << 10, 1 << 10, "RESET_REG_SUP");
        // Reset register: system I/O, 8 bits at 0xcf9, value 6.
        assert_eq!(&f[116..120], &[1, 8, 0, 1]);
        assert_eq!(u64_at(f, 120), 0xcf9);
        assert_eq!(f[128], 6);
        // X_PM1a_EVT_BLK, X_PM1a_CNT_BLK, X_PM_TMR_BLK, X_GPE0_BLK.
        for (at, bits, addr) in [
            (148, 32, 0x600),
            (172, 16, 0x604),
            (208, 32, 0x608),
            (220, 32, 0xafe0),
        ] {
            assert_eq!((f[at], f[at + 1]), (1, bits), "GAS at {at}");
            assert_eq!(u64_at(f, at + 4), addr, "GAS at {at}");
        }
    }

    #[test]
    fn madt_lists_cpus_ioapic_overrides_and_nmi() {
        let t = walk(&installed(3));
        let m = &t["APIC"];
        assert_eq!(u32_at(m, 36), 0xfee0_0000);
        assert_eq!(u32_at(m, 40), 1, "PCAT_COMPAT");
        let mut entries = Vec::new();
        let mut at = 44;
        while at < m.len() {
            let len = m[at + 1] as usize;
            assert!(len >= 2);
            entries.push(m[at..at + len].to_vec());
            at += len;
        }
        assert_eq!(at, m.len());
        let lapics: Vec<_> = entries.iter().filter(|e| e[0] == 0).collect();
        assert_eq!(lapics.len(), 3);
        for (i, e) in lapics.iter().enumerate() {
            assert_eq!((e[2], e[3]), (i as u8, i as u8));
            assert_eq!(u32_at(e, 4), 1, "enabled");
        }
        let ioapic = entries.iter().find(|e| e[0] == 1).unwrap();
        assert_eq!(ioapic[2], 3, "I/O APIC ID after the CPUs'");
        assert_eq!(u32_at(ioapic, 4), 0xfec0_0000);
        assert_eq!(u32_at(ioapic, 8), 0);
        let isos: Vec<(u8, u32, u16)> = entries
            .iter()
            .filter(|e| e[0] == 2)
            .map(|e| (e[3], u32_at(e, 4), u16::from_le_bytes([e[8], e[9]])))
            .collect();
        assert_eq!(
            isos,
            vec![
                (0, 2, 0),
                (9, 9, 0xd),
                (5, 5, 0xd),
                (10, 10, 0xd),
                (11, 11, 0xd)
            ]
        );
        let nmi = entries.iter().find(|e| e[0] == 4).unwrap();
        assert_eq!(nmi.as_slice(), &[4, 6, 0xff, 0, 0, 1]);
    }

    #[test]
    fn dsdt_names_what_firmware_and_os_look_for() {
        let t = walk(&installed(2));
        let d = &t["DSDT"];
        let has = |needle: &[u8]| d.windows(needle.len()).any(|w| w == needle);
        for name in [
            &b"_S5_"[..],
            b"PCI0",
            b"ISA_",
            b"RTC_",
            b"KBD_",
            b"MOU_",
            b"COM1",
            b"LNKA",
            b"LNKD",
            b"_PRT",
            b"C000",
            b"C001",
            b"ACPI0007",
        ] {
            assert!(has(name), "{}", String::from_utf8_lossy(name));
        }
        assert!(!has(b"C002"));
        // SeaBIOS finds the keyboard by its EISA ID's encoding (PNP0303).
        assert!(has(&[
            0x08, b'_', b'H', b'I', b'D', 0x0c, 0x41, 0xd0, 0x03, 0x03
        ]));
        // \_S5 = Package(4) {0, 0, 0, 0}.
        assert!(has(&[
            b'\\', b'_', b'S', b'5', b'_', 0x12, 0x06, 0x04, 0, 0, 0, 0
        ]));
    }

    /// A loader command's NUL-terminated file name at `at`.
    fn entry_name(e: &[u8], at: usize) -> String {
        let f = &e[at..at + LOADER_NAME_LEN];
        assert_eq!(f[LOADER_NAME_LEN - 1], 0);
        let end = f.iter().position(|&b| b == 0).unwrap();
        String::from_utf8(f[..end].to_vec()).unwrap()
    }

    #[test]
    fn loader_script_links_to_the_same_bytes_as_install() {
        for vcpus in [1, 5] {
            let t = build(vcpus);
            assert_eq!(t.loader.len() % LOADER_ENTRY_LEN, 0);
            let mut files: BTreeMap<String, Vec<u8>> = BTreeMap::new();
            files.insert(TABLES_FILE.into(), t.tables.clone());
            files.insert(RSDP_FILE.into(), t.rsdp.clone());
            // Allocation addresses, as the firmware would choose them.
            let mut addr: BTreeMap<String, u64> = BTreeMap::new();
            let mut counts = [0usize; 4];
            for e in t.loader.chunks(LOADER_ENTRY_LEN) {
                let cmd = u32_at(e, 0);
                counts[cmd as usize] += 1;
                match cmd {
                    CMD_ALLOCATE => {
                        let name = entry_name(e, 4);
                        assert!(files.contains_key(&name));
                        assert!(!addr.contains_key(&name), "allocated once");
                        let align = u32_at(e, 60) as u64;
                        assert!(align.is_power_of_two());
                        let (at, zone) = if name == RSDP_FILE {
                            (RSDP_AT, ZONE_FSEG)
                        } else {
                            (TABLES_AT, ZONE_HIGH)
                        };
                        assert_eq!(e[64], zone);
                        assert_eq!(at % align, 0);
                        addr.insert(name, at);
                    }
                    CMD_ADD_POINTER => {
                        let dest = entry_name(e, 4);
                        let src = entry_name(e, 60);
                        let off = u32_at(e, 116) as usize;
                        let size = e[120] as usize;
                        assert!([1, 2, 4, 8].contains(&size));
                        let base = addr[&src];
                        let f = files.get_mut(&dest).unwrap();
                        assert!(off + size <= f.len());
                        let mut v = [0u8; 8];
                        v[..size].copy_from_slice(&f[off..off + size]);
                        let target = u64::from_le_bytes(v);
                        assert!(target < t.tables.len() as u64, "offset into the file");
                        let p = target + base;
                        f[off..off + size].copy_from_slice(&p.to_le_bytes()[..size]);
                    }
                    CMD_ADD_CHECKSUM => {
                        let name = entry_name(e, 4);
                        assert!(addr.contains_key(&name));
                        let f = files.get_mut(&name).unwrap();
                        let (at, start, len) = (
                            u32_at(e, 60) as usize,
                            u32_at(e, 64) as usize,
                            u32_at(e, 68) as usize,
                        );
                        assert!(at < f.len() && start + len <= f.len());
                        assert!((start..start + len).contains(&at));
                        let s = sum(&f[start..start + len]);
                        f[at] = f[at].wrapping_sub(s);
                    }
                    c => panic!("unexpected command {c}"),
                }
            }
            assert_eq!(counts[CMD_ALLOCATE as usize], 2);
            assert_eq!(counts[CMD_ADD_POINTER as usize], 9);
            assert_eq!(counts[CMD_ADD_CHECKSUM as usize], 7);
            let mem = installed(vcpus);
            assert_eq!(mem[&TABLES_AT], files[TABLES_FILE]);
            assert_eq!(mem[&RSDP_AT], files[RSDP_FILE]);
        }
    }

    #[test]
    fn install_rejects_bad_addresses() {
        let ok = |_: u64, _: &[u8]| true;
        assert_eq!(
            install(ok, 1, 0x1000_0010, RSDP_AT),
            Err(AcpiError::BadTablesAddress(0x1000_0010))
        );
        assert_eq!(
            install(ok, 1, 0xffff_ffc0, RSDP_AT),
            Err(AcpiError::BadTablesAddress(0xffff_ffc0))
        );
        assert_eq!(
            install(ok, 1, 0x1000_0000, 0xf_5a48),
            Err(AcpiError::BadRsdpAddress(0xf_5a48))
        );
        assert_eq!(
            install(ok, 1, 0x1000_0000, 0xd_0000),
            Err(AcpiError::BadRsdpAddress(0xd_0000))
        );
        assert_eq!(
            install(ok, 1, 0x1000_0000, 0xf_fff0),
            Err(AcpiError::BadRsdpAddress(0xf_fff0))
        );
        assert_eq!(install(ok, 1, 0xe_0000, 0xe_0040), Err(AcpiError::Overlap));
        assert_eq!(
            install(|_, _| false, 1, 0x1000_0000, RSDP_AT),
            Err(AcpiError::RamWrite(0x1000_0000))
        );
        // Out-of-range processor counts are clamped, not a panic.
        assert!(install(ok, 0, 0x1000_0000, RSDP_AT).is_ok());
        assert!(install(ok, 100_000, 0x1000_0000, RSDP_AT).is_ok());
    }

    /// Disassembles the DSDT with `iasl` when it is installed (Debian
    /// package acpica-tools).
    #[test]
    fn iasl_disassembles_the_dsdt() {
        let have = std::process::Command::new("iasl")
            .arg("-v")
            .output()
            .is_ok_and(|o| o.status.success());
        if !have {
            eprintln!("iasl not installed (acpica-tools): DSDT disassembly test skipped");
            return;
        }
        let t = walk(&installed(2));
        let dir = std::env::temp_dir().join(format!("vireo-acpi-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut names = Vec::new();
        for sig in ["DSDT", "FACP", "APIC"] {
            let path = dir.join(format!("{}.dat", sig.to_lowercase()));
            std::fs::write(&path, &t[sig]).unwrap();
            names.push(path);
        }
        let mut dsl = BTreeMap::new();
        for path in &names {
            let out = std::process::Command::new("iasl")
                .arg("-d")
                .arg(path)
                .current_dir(&dir)
                .output()
                .unwrap();
            let log = String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr);
            assert!(out.status.success(), "{log}");
            assert!(!log.to_lowercase().contains("error"), "{log}");
            let text = std::fs::read_to_string(path.with_extension("dsl")).unwrap();
            dsl.insert(
                path.file_stem().unwrap().to_string_lossy().into_owned(),
                text,
            );
        }
        let d = &dsl["dsdt"];
        for needle in [
            "Name (\\_S5, Package (0x04)",
            "Device (PCI0)",
            "EisaId (\"PNP0A03\")",
            "Device (ISA)",
            "EisaId (\"PNP0B00\")",
            "EisaId (\"PNP0303\")",
            "EisaId (\"PNP0F13\")",
            "EisaId (\"PNP0501\")",
            "EisaId (\"PNP0C0F\")",
            "OperationRegion (PIRQ, PCI_Config, 0x60, 0x04)",
            "Name (_PRT, Package (0x80)",
            "\"ACPI0007\"",
        ] {
            assert!(d.contains(needle), "{needle} missing in:\n{d}");
        }
        // Compiling the disassembly back must succeed without errors.
        let out = std::process::Command::new("iasl")
            .arg("-p")
            .arg(dir.join("recompiled"))
            .arg(dir.join("dsdt.dsl"))
            .current_dir(&dir)
            .output()
            .unwrap();
        let log = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{log}");
        assert!(log.contains("0 Errors, 0 Warnings"), "{log}");
        let f = &dsl["facp"];
        assert!(f.contains("Revision : 06"), "{f}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
