//! Intel MultiProcessor Specification 1.4 tables (MP spec chapter 4), the
//! oldest way an OS finds the processors and the I/O APIC without ACPI.
//!
//! The floating pointer structure (§4.1) is followed directly by the
//! configuration table (§4.2): a header, then the base entries in the order
//! the specification requires (§4.3): processors, the ISA bus, the I/O
//! APIC, I/O interrupt assignments for ISA IRQs 0-15 and local interrupt
//! assignments for LINT0 (ExtINT) and LINT1 (NMI). The machine is in
//! virtual-wire mode (IMCR absent, §3.6.2.2).

use crate::memory::GuestRam;
use thiserror::Error;

/// Where the machine puts its MP table: the last KiB of base memory, which
/// the e820 map reserves and Linux searches (MP spec §4).
pub const MPTABLE_ADDR: u64 = 0x9fc00;
/// The room the floating pointer and configuration table may take.
pub const MPTABLE_MAX_SIZE: usize = 1024;
/// The most processors whose table fits in [`MPTABLE_MAX_SIZE`]: 212 bytes
/// of fixed structures plus 20 per processor.
pub const MAX_CPUS: u8 = ((MPTABLE_MAX_SIZE - FIXED_SIZE) / PROCESSOR_ENTRY_SIZE) as u8;
/// Physical address of the I/O APIC the table describes.
pub const IOAPIC_ADDR: u32 = 0xfec0_0000;
/// Physical address of the local APICs.
pub const LAPIC_ADDR: u32 = 0xfee0_0000;
/// Local APIC version reported for each processor.
pub const LAPIC_VERSION: u8 = 0x14;
/// I/O APIC version reported.
pub const IOAPIC_VERSION: u8 = 0x20;

const FLOATING_SIZE: usize = 16;
const HEADER_SIZE: usize = 44;
const PROCESSOR_ENTRY_SIZE: usize = 20;
const SMALL_ENTRY_SIZE: usize = 8;
/// ISA IRQs routed to the I/O APIC: 0-15 without the cascade, IRQ 2.
const ISA_IRQS: usize = 15;
/// Everything but the processor entries: floating pointer, header, bus,
/// I/O APIC, I/O interrupts, two local interrupts.
const FIXED_SIZE: usize = FLOATING_SIZE + HEADER_SIZE + SMALL_ENTRY_SIZE * (2 + ISA_IRQS + 2);

// Entry types (§4.3, Table 4-3).
const ENTRY_PROCESSOR: u8 = 0;
const ENTRY_BUS: u8 = 1;
const ENTRY_IOAPIC: u8 = 2;
const ENTRY_IO_INTERRUPT: u8 = 3;
const ENTRY_LOCAL_INTERRUPT: u8 = 4;

// Interrupt types (§4.3.4, Table 4-8).
const INT_VECTORED: u8 = 0;
const INT_NMI: u8 = 1;
const INT_EXTINT: u8 = 3;

// Processor entry CPU flags (§4.3.1, Table 4-5).
const CPU_ENABLED: u8 = 1;
const CPU_BSP: u8 = 2;
/// CPU signature: family 6 (what the software CPU's CPUID leaf 1 says).
const CPU_SIGNATURE: u32 = 0x600;
/// Feature flags: FPU, APIC (CPUID.1:EDX bits 0 and 9).
const CPU_FEATURES: u32 = (1 << 0) | (1 << 9);

const ISA_BUS_ID: u8 = 0;

/// Errors writing an MP table.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum MpTableError {
    /// A machine needs at least one processor.
    #[error("An MP table needs at least one processor")]
    NoCpus,
    /// The table would not fit in its 1 KiB.
    #[error("{cpus} processors do not fit in the MP table: at most {max}")]
    TooManyCpus {
        /// Processors asked for.
        cpus: u8,
        /// The most that fit.
        max: u8,
    },
    /// The floating pointer must be 16-byte aligned (§4.1).
    #[error("The MP floating pointer address {0:#x} is not 16-byte aligned")]
    Misaligned(u64),
    /// The table does not fit in guest RAM below 4 GiB.
    #[error("The MP table at {0:#x} does not fit in guest memory")]
    OutOfMemory(u64),
}

/// Writes an MP floating pointer structure and configuration table at
/// `addr` describing `cpus` processors with APIC IDs 0..cpus (CPU 0 the
/// BSP), one ISA bus, one I/O APIC with ID `cpus`, ISA IRQ routing (IRQ 0 to
/// pin 2, the others to their own pin, IRQ 2 skipped) and LINT0 = ExtINT,
/// LINT1 = NMI on every local APIC.
pub fn write(ram: &GuestRam, addr: u64, cpus: u8) -> Result<(), MpTableError> {
    let table = build(addr, cpus)?;
    let end = addr.checked_add(table.len() as u64);
    if end.is_none_or(|end| end > 1 << 32) || !ram.write_bytes(addr, &table) {
        return Err(MpTableError::OutOfMemory(addr));
    }
    Ok(())
}

/// Sets `table[at]` so the bytes of `table[range]` sum to 0.
fn fix_checksum(table: &mut [u8], range: std::ops::Range<usize>, at: usize) {
    table[at] = 0;
    let sum = table[range].iter().fold(0u8, |s, &b| s.wrapping_add(b));
    table[at] = sum.wrapping_neg();
}

/// The table's bytes for placement at `addr`.
fn build(addr: u64, cpus: u8) -> Result<Vec<u8>, MpTableError> {
    if cpus == 0 {
        return Err(MpTableError::NoCpus);
    }
    if cpus > MAX_CPUS {
        return Err(MpTableError::TooManyCpus {
            cpus,
            max: MAX_CPUS,
        });
    }
    if !addr.is_multiple_of(16) {
        return Err(MpTableError::Misaligned(addr));
    }
    let config_addr = addr
        .checked_add(FLOATING_SIZE as u64)
        .and_then(|a| u32::try_from(a).ok())
        .ok_or(MpTableError::OutOfMemory(addr))?;

    let mut entries = Vec::new();
    // Processor entries (§4.3.1).
    for id in 0..cpus {
        entries.push(ENTRY_PROCESSOR);
        entries.push(id);
        entries.push(LAPIC_VERSION);
        entries.push(CPU_ENABLED | if id == 0 { CPU_BSP } else { 0 });
        entries.extend_from_slice(&CPU_SIGNATURE.to_le_bytes());
        entries.extend_from_slice(&CPU_FEATURES.to_le_bytes());
        entries.extend_from_slice(&[0; 8]);
    }
    // Bus entry (§4.3.2).
    entries.push(ENTRY_BUS);
    entries.push(ISA_BUS_ID);
    entries.extend_from_slice(b"ISA   ");
    // I/O APIC entry (§4.3.3).
    let ioapic_id = cpus;
    entries.extend_from_slice(&[ENTRY_IOAPIC, ioapic_id, IOAPIC_VERSION, 1]);
    entries.extend_from_slice(&IOAPIC_ADDR.to_le_bytes());
    // I/O interrupt assignments (§4.3.4): conforming polarity and trigger
    // (flags 0), as ISA's active-high edge.
    for irq in (0..16u8).filter(|&irq| irq != 2) {
        let pin = if irq == 0 { 2 } else { irq };
        entries.extend_from_slice(&[
            ENTRY_IO_INTERRUPT,
            INT_VECTORED,
            0,
            0,
            ISA_BUS_ID,
            irq,
            ioapic_id,
            pin,
        ]);
    }
    // Local interrupt assignments (§4.3.5): to all local APICs (0xff).
    for (kind, lint) in [(INT_EXTINT, 0), (INT_NMI, 1)] {
        entries.extend_from_slice(&[ENTRY_LOCAL_INTERRUPT, kind, 0, 0, ISA_BUS_ID, 0, 0xff, lint]);
    }
    let entry_count = usize::from(cpus) + 2 + ISA_IRQS + 2;

    let mut table = vec![0u8; FLOATING_SIZE + HEADER_SIZE];
    // Floating pointer structure (§4.1, Table 4-1).
    table[0..4].copy_from_slice(b"_MP_");
    table[4..8].copy_from_slice(&config_addr.to_le_bytes());
    table[8] = 1; // length in 16-byte units
    table[9] = 4; // specification revision 1.4
                  // Feature byte 1 = 0: a configuration table is present; feature byte 2
                  // bit 7 (IMCRP) = 0: virtual-wire mode.
    fix_checksum(&mut table, 0..FLOATING_SIZE, 10);

    // Configuration table header (§4.2, Table 4-2).
    let base_length = HEADER_SIZE + entries.len();
    let h = FLOATING_SIZE;
    table[h..h + 4].copy_from_slice(b"PCMP");
    table[h + 4..h + 6].copy_from_slice(&(base_length as u16).to_le_bytes());
    table[h + 6] = 4;
    table[h + 8..h + 16].copy_from_slice(b"VIREO   ");
    table[h + 16..h + 28].copy_from_slice(b"PC          ");
    // OEM table pointer and size stay 0.
    table[h + 34..h + 36].copy_from_slice(&(entry_count as u16).to_le_bytes());
    table[h + 36..h + 40].copy_from_slice(&LAPIC_ADDR.to_le_bytes());
    // No extended entries: length and checksum 0.
    table.extend_from_slice(&entries);
    fix_checksum(&mut table, h..h + base_length, h + 7);

    debug_assert!(table.len() <= MPTABLE_MAX_SIZE);
    Ok(table)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sum(bytes: &[u8]) -> u8 {
        bytes.iter().fold(0u8, |s, &b| s.wrapping_add(b))
    }

    fn u16_at(b: &[u8], off: usize) -> u16 {
        u16::from_le_bytes([b[off], b[off + 1]])
    }

    fn u32_at(b: &[u8], off: usize) -> u32 {
        u32::from_le_bytes([b[off], b[off + 1], b[off + 2], b[off + 3]])
    }

    /// Writes a table into RAM and reads the floating pointer and the
    /// configuration table back, checking the structures' framing.
    fn written(cpus: u8) -> (Vec<u8>, Vec<u8>) {
        let ram = GuestRam::new(1 << 20).unwrap();
        write(&ram, MPTABLE_ADDR, cpus).unwrap();
        // Find the floating pointer the way an OS does: a 16-byte aligned
        // signature with a valid checksum in the search area.
        let mut area = vec![0u8; 1024];
        assert!(ram.read_bytes(0x9fc00, &mut area));
        let at = (0..area.len())
            .step_by(16)
            .find(|&i| &area[i..i + 4] == b"_MP_" && sum(&area[i..i + 16]) == 0)
            .expect("floating pointer");
        let fp = area[at..at + 16].to_vec();
        assert_eq!(fp[8], 1);
        assert_eq!(fp[9], 4);
        assert_eq!(fp[11], 0, "configuration table present");
        assert_eq!(fp[12], 0, "virtual-wire mode");
        let config = u64::from(u32_at(&fp, 4));
        let mut header = vec![0u8; 44];
        assert!(ram.read_bytes(config, &mut header));
        assert_eq!(&header[0..4], b"PCMP");
        let mut table = vec![0u8; usize::from(u16_at(&header, 4))];
        assert!(ram.read_bytes(config, &mut table));
        assert_eq!(sum(&table), 0, "configuration table checksum");
        assert!(config + table.len() as u64 <= 0xa0000);
        assert_eq!(table[6], 4);
        assert_eq!(u32_at(&table, 36), 0xfee0_0000);
        assert_eq!(u16_at(&table, 40), 0, "no extended table");
        (fp, table)
    }

    /// Entries as (type, bytes), walked by their type's length.
    fn entries(table: &[u8]) -> Vec<(u8, Vec<u8>)> {
        let count = u16_at(table, 34);
        let mut out = Vec::new();
        let mut off = HEADER_SIZE;
        for _ in 0..count {
            let len = if table[off] == ENTRY_PROCESSOR { 20 } else { 8 };
            out.push((table[off], table[off..off + len].to_vec()));
            off += len;
        }
        assert_eq!(off, table.len(), "entries fill the base table");
        out
    }

    #[test]
    fn one_processor_table() {
        let (_, table) = written(1);
        let e = entries(&table);
        assert_eq!(e.len(), 1 + 1 + 1 + 15 + 2);
        let (kind, cpu) = &e[0];
        assert_eq!(*kind, ENTRY_PROCESSOR);
        assert_eq!(cpu[1], 0);
        assert_eq!(cpu[2], 0x14);
        assert_eq!(cpu[3], CPU_ENABLED | CPU_BSP);
        assert_eq!(e[1].1, [1, 0, b'I', b'S', b'A', b' ', b' ', b' ']);
        assert_eq!(e[2].1, [2, 1, 0x20, 1, 0x00, 0x00, 0xc0, 0xfe]);
    }

    #[test]
    fn entries_are_in_spec_order_with_the_right_contents() {
        let cpus = 4;
        let (_, table) = written(cpus);
        let e = entries(&table);
        assert_eq!(e.len(), usize::from(cpus) + 1 + 1 + 15 + 2);
        let kinds: Vec<u8> = e.iter().map(|(k, _)| *k).collect();
        assert!(kinds.windows(2).all(|w| w[0] <= w[1]), "sorted by type");
        for (i, (_, cpu)) in e.iter().take(usize::from(cpus)).enumerate() {
            assert_eq!(cpu[1], i as u8, "APIC ID");
            let bsp = if i == 0 { CPU_BSP } else { 0 };
            assert_eq!(cpu[3], CPU_ENABLED | bsp);
            assert_eq!(u32_at(cpu, 4), CPU_SIGNATURE);
            assert_eq!(u32_at(cpu, 8) & (1 << 9), 1 << 9, "APIC feature");
        }
        let ioapic = &e[usize::from(cpus) + 1].1;
        assert_eq!(ioapic[0], ENTRY_IOAPIC);
        assert_eq!(ioapic[1], cpus, "I/O APIC ID after the CPUs'");
        assert_eq!(u32_at(ioapic, 4), 0xfec0_0000);
        // ISA IRQ routing.
        let routes: Vec<(u8, u8)> = e
            .iter()
            .filter(|(k, _)| *k == ENTRY_IO_INTERRUPT)
            .map(|(_, b)| {
                assert_eq!(b[1], INT_VECTORED);
                assert_eq!(u16_at(b, 2), 0, "conforming");
                assert_eq!(b[4], 0, "ISA bus");
                assert_eq!(b[6], cpus, "to the I/O APIC");
                (b[5], b[7])
            })
            .collect();
        let expected: Vec<(u8, u8)> = (0..16u8)
            .filter(|&i| i != 2)
            .map(|i| (i, if i == 0 { 2 } else { i }))
            .collect();
        assert_eq!(routes, expected);
        // LINT0 ExtINT, LINT1 NMI, to all local APICs.
        let locals: Vec<&Vec<u8>> = e
            .iter()
            .filter(|(k, _)| *k == ENTRY_LOCAL_INTERRUPT)
            .map(|(_, b)| b)
            .collect();
        assert_eq!(locals.len(), 2);
        assert_eq!(
            (locals[0][1], locals[0][6], locals[0][7]),
            (INT_EXTINT, 0xff, 0)
        );
        assert_eq!(
            (locals[1][1], locals[1][6], locals[1][7]),
            (INT_NMI, 0xff, 1)
        );
    }

    #[test]
    fn the_largest_table_fits_in_one_kib() {
        assert_eq!(MAX_CPUS, 40);
        let (_, table) = written(MAX_CPUS);
        assert!(16 + table.len() <= MPTABLE_MAX_SIZE);
        assert_eq!(entries(&table).len(), usize::from(MAX_CPUS) + 19);
        let ram = GuestRam::new(1 << 20).unwrap();
        assert_eq!(
            write(&ram, MPTABLE_ADDR, MAX_CPUS + 1),
            Err(MpTableError::TooManyCpus {
                cpus: MAX_CPUS + 1,
                max: MAX_CPUS
            })
        );
    }

    #[test]
    fn bad_arguments_are_errors() {
        let ram = GuestRam::new(1 << 20).unwrap();
        assert_eq!(write(&ram, MPTABLE_ADDR, 0), Err(MpTableError::NoCpus));
        assert_eq!(
            write(&ram, MPTABLE_ADDR + 4, 1),
            Err(MpTableError::Misaligned(MPTABLE_ADDR + 4))
        );
        assert_eq!(
            write(&ram, (1 << 20) - 16, 1),
            Err(MpTableError::OutOfMemory((1 << 20) - 16))
        );
        let small = GuestRam::new(0x1000).unwrap();
        assert_eq!(
            write(&small, MPTABLE_ADDR, 1),
            Err(MpTableError::OutOfMemory(MPTABLE_ADDR))
        );
    }
}
