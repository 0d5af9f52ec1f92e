//! Linear-address translation: segmentation to linear (done by callers),
//! paging (32-bit, PAE and 4-level; SDM vol. 3 ch. 4) and a software TLB of
//! linear page → host pointer translations.

use super::{cr0, cr4, efer, vec, Cpu, Exc, R};

/// Kind of memory access.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Data read.
    Read = 0,
    /// Data write.
    Write = 1,
    /// Instruction fetch.
    Exec = 2,
}

const TLB_BITS: u32 = 10;
/// Entries per TLB table.
pub(crate) const TLB_SIZE: usize = 1 << TLB_BITS;
const INVALID: u64 = u64::MAX;

#[derive(Clone, Copy)]
#[repr(C)]
pub(crate) struct TlbEntry {
    /// Linear page address, or INVALID.
    tag: u64,
    /// host pointer = linear + addend.
    addend: u64,
    /// Physical page address.
    phys: u64,
    /// Global page (survives CR3 writes).
    global: bool,
}

const EMPTY: TlbEntry = TlbEntry {
    tag: INVALID,
    addend: 0,
    phys: 0,
    global: false,
};

/// The software TLB: one direct-mapped table per (access kind, user/supervisor).
pub(crate) struct Tlb {
    e: Box<[[TlbEntry; TLB_SIZE]; 6]>,
    /// Entries filled since the last full flush (table × TLB_SIZE + index),
    /// so flushes visit those instead of all six tables: an OS switching
    /// address spaces flushes far more often than it fills the TLB.
    /// Non-global entries here, global ones in `globals` (so a CR3 write
    /// visits only the entries it drops).
    used: Vec<u16>,
    globals: Vec<u16>,
    /// `used` overflowed (entries refilled many times between flushes):
    /// the next flush visits every entry.
    overflow: bool,
}

/// Most fills `Tlb::used` records before flushes fall back to full scans.
const USED_MAX: usize = 2 * 6 * TLB_SIZE;

/// Where translated code finds things in the TLB: the offset of the tag and
/// addend in an entry, an entry's size, and the distance between the tables
/// of two slots.
pub(crate) mod layout {
    use super::{TlbEntry, TLB_SIZE};
    pub(crate) const TAG: i32 = std::mem::offset_of!(TlbEntry, tag) as i32;
    pub(crate) const ADDEND: i32 = std::mem::offset_of!(TlbEntry, addend) as i32;
    pub(crate) const ENTRY: i64 = std::mem::size_of::<TlbEntry>() as i64;
    pub(crate) const TABLE: i64 = ENTRY * TLB_SIZE as i64;
}

impl Tlb {
    pub(crate) fn new() -> Self {
        Tlb {
            e: Box::new([[EMPTY; TLB_SIZE]; 6]),
            used: Vec::with_capacity(USED_MAX),
            globals: Vec::new(),
            overflow: false,
        }
    }

    /// Fills entry `idx` of table `slot`.
    #[inline]
    fn fill(&mut self, slot: usize, idx: usize, entry: TlbEntry) {
        let e = &mut self.e[slot][idx];
        // A slot is listed for each kind of entry it held since the last
        // flush (a global entry replacing a non-global one, or the reverse,
        // lists it again).
        if e.tag == INVALID || e.global != entry.global {
            if self.used.len() + self.globals.len() < USED_MAX {
                let u = (slot * TLB_SIZE + idx) as u16;
                if entry.global {
                    self.globals.push(u);
                } else {
                    self.used.push(u);
                }
            } else {
                self.overflow = true;
            }
        }
        *e = entry;
    }

    /// Address of the table for `acc` and privilege (the write table
    /// follows the read table two tables on, see `layout`).
    pub(crate) fn table(&self, acc: Access, user: bool) -> usize {
        self.e[slot(acc, user)].as_ptr() as usize
    }

    fn entry_mut(&mut self, u: u16) -> &mut TlbEntry {
        let u = u as usize;
        &mut self.e[u / TLB_SIZE][u % TLB_SIZE]
    }

    /// Drops every entry.
    pub(crate) fn flush_all(&mut self) {
        if self.overflow {
            for t in self.e.iter_mut() {
                t.fill(EMPTY);
            }
            self.overflow = false;
        } else {
            let used = std::mem::take(&mut self.used);
            let globals = std::mem::take(&mut self.globals);
            for &u in used.iter().chain(&globals) {
                *self.entry_mut(u) = EMPTY;
            }
            self.used = used;
            self.globals = globals;
        }
        self.used.clear();
        self.globals.clear();
    }

    /// Drops non-global entries (a CR3 write with CR4.PGE set).
    pub(crate) fn flush_nonglobal(&mut self) {
        if self.overflow {
            self.used.clear();
            self.globals.clear();
            self.overflow = false;
            for (ti, t) in self.e.iter_mut().enumerate() {
                for (i, e) in t.iter_mut().enumerate() {
                    if !e.global {
                        *e = EMPTY;
                    } else if e.tag != INVALID {
                        self.globals.push((ti * TLB_SIZE + i) as u16);
                    }
                }
            }
            return;
        }
        let used = std::mem::take(&mut self.used);
        for &u in &used {
            let e = self.entry_mut(u);
            if e.tag == INVALID {
                continue;
            }
            if e.global {
                // Now holds a global entry: listed there already.
                continue;
            }
            *e = EMPTY;
        }
        self.used = used;
        self.used.clear();
        // Global entries listed twice (refilled after an INVLPG) stay
        // listed twice: harmless, and bounded by USED_MAX.
    }

    /// Drops the entries for one linear page (INVLPG).
    #[allow(dead_code)] // INVLPG, in the system module
    pub(crate) fn flush_page(&mut self, lin: u64) {
        let idx = ((lin >> 12) as usize) & (TLB_SIZE - 1);
        for t in self.e.iter_mut() {
            if t[idx].tag == lin & !0xfff {
                t[idx] = EMPTY;
            }
        }
    }

    /// Removes and returns the read and write entries for linear page
    /// `lin` (so every access to it takes the slow path for a while).
    pub(crate) fn take_page(&mut self, lin: u64) -> [TlbEntry; 4] {
        let idx = ((lin >> 12) as usize) & (TLB_SIZE - 1);
        let mut out = [EMPTY; 4];
        for (o, t) in out.iter_mut().zip(self.e[..4].iter_mut()) {
            *o = std::mem::replace(&mut t[idx], EMPTY);
        }
        out
    }

    /// Puts back what [`Tlb::take_page`] removed.
    pub(crate) fn restore_page(&mut self, lin: u64, saved: [TlbEntry; 4]) {
        let idx = ((lin >> 12) as usize) & (TLB_SIZE - 1);
        for (slot, s) in saved.into_iter().enumerate() {
            if s.tag != INVALID {
                self.fill(slot, idx, s);
            }
        }
    }

    /// Drops write entries that map physical page `phys` (it now holds code).
    pub(crate) fn flush_phys_writes(&mut self, phys: u64) {
        if self.overflow {
            for t in self.e[2..4].iter_mut() {
                for e in t.iter_mut() {
                    if e.tag != INVALID && e.phys == phys {
                        *e = EMPTY;
                    }
                }
            }
            return;
        }
        let writes = 2 * TLB_SIZE..4 * TLB_SIZE;
        for i in 0..self.used.len() + self.globals.len() {
            let u = match self.used.get(i) {
                Some(&u) => u,
                None => self.globals[i - self.used.len()],
            };
            if writes.contains(&(u as usize)) {
                let e = self.entry_mut(u);
                if e.tag != INVALID && e.phys == phys {
                    *e = EMPTY;
                }
            }
        }
    }
}

#[inline(always)]
fn slot(acc: Access, user: bool) -> usize {
    (acc as usize) * 2 + user as usize
}

/// Page-fault error code bits (SDM vol. 3 §4.7).
mod pf {
    pub const P: u32 = 1;
    pub const W: u32 = 2;
    pub const U: u32 = 4;
    pub const RSVD: u32 = 8;
    pub const I: u32 = 16;
}

const PTE_P: u64 = 1;
const PTE_W: u64 = 2;
const PTE_U: u64 = 4;
const PTE_A: u64 = 1 << 5;
const PTE_D: u64 = 1 << 6;
const PTE_PS: u64 = 1 << 7;
const PTE_G: u64 = 1 << 8;
const PTE_NX: u64 = 1 << 63;
const ADDR_MASK: u64 = 0x000f_ffff_ffff_f000;

struct Walk {
    phys: u64,
    global: bool,
}

impl Cpu {
    /// True when paging is on.
    #[inline(always)]
    pub fn paging(&self) -> bool {
        self.cr0 & cr0::PG != 0 && self.cr0 & cr0::PE != 0
    }

    fn page_fault(&mut self, lin: u64, code: u32) -> Exc {
        self.cr2 = lin;
        Exc {
            vector: vec::PF,
            code: Some(code),
        }
    }

    fn read_pte(&self, addr: u64, wide: bool) -> u64 {
        self.space.read_phys(addr, if wide { 8 } else { 4 })
    }

    /// Walks the page tables for `lin` (SDM vol. 3 §4.3–4.5), setting
    /// accessed/dirty bits, and checks permissions.
    fn walk(&mut self, lin: u64, acc: Access, user: bool) -> R<Walk> {
        // Another vCPU may change an entry between our read and the A/D
        // update: walk again (a guest cannot make this recurse or spin
        // forever: after many tries the update is done non-atomically).
        for _ in 0..64 {
            if let Some(w) = self.walk_once(lin, acc, user, true)? {
                return Ok(w);
            }
        }
        self.walk_once(lin, acc, user, false)?
            .ok_or_else(|| self.page_fault(lin, 0))
    }

    /// One page walk; `Ok(None)` when an atomic A/D update lost a race.
    fn walk_once(&mut self, lin: u64, acc: Access, user: bool, atomic: bool) -> R<Option<Walk>> {
        let write = acc == Access::Write;
        let nxe = self.efer & efer::NXE != 0;
        let wp = self.cr0 & cr0::WP != 0;
        let mut code = if write { pf::W } else { 0 } | if user { pf::U } else { 0 };
        if acc == Access::Exec && nxe && self.cr4 & cr4::PAE != 0 {
            code |= pf::I;
        }
        // (entry address, entry value, wide) of each level, for A/D updates.
        let mut chain: [(u64, u64, bool); 4] = [(0, 0, false); 4];
        let mut depth = 0;
        let mut allow_w = true;
        let mut allow_u = true;
        let mut nx = false;
        let (phys, global, leaf_size);
        if self.cr4 & cr4::PAE == 0 {
            // 32-bit paging.
            let lin32 = lin & 0xffff_ffff;
            let pde_addr = (self.cr3 & 0xffff_f000) + ((lin32 >> 22) << 2);
            let pde = self.read_pte(pde_addr, false);
            if pde & PTE_P == 0 {
                return Err(self.page_fault(lin, code));
            }
            chain[depth] = (pde_addr, pde, false);
            depth += 1;
            allow_w &= pde & PTE_W != 0;
            allow_u &= pde & PTE_U != 0;
            if pde & PTE_PS != 0 && self.cr4 & cr4::PSE != 0 {
                // 4 MiB page; bits 13..20 hold physical address bits 32..39.
                let base = (pde & 0xffc0_0000) | ((pde & 0x001f_e000) << 19);
                phys = base | (lin32 & 0x3f_ffff);
                global = pde & PTE_G != 0;
                leaf_size = 22;
            } else {
                let pte_addr = (pde & 0xffff_f000) + (((lin32 >> 12) & 0x3ff) << 2);
                let pte = self.read_pte(pte_addr, false);
                if pte & PTE_P == 0 {
                    return Err(self.page_fault(lin, code));
                }
                chain[depth] = (pte_addr, pte, false);
                depth += 1;
                allow_w &= pte & PTE_W != 0;
                allow_u &= pte & PTE_U != 0;
                phys = (pte & 0xffff_f000) | (lin32 & 0xfff);
                global = pte & PTE_G != 0;
                leaf_size = 12;
            }
        } else {
            let long = self.long_mode();
            let (mut table, levels) = if long {
                (self.cr3 & ADDR_MASK, 4)
            } else {
                // PAE: the PDPTE selected by bits 30..31.
                let pdpte_addr = (self.cr3 & 0xffff_ffe0) + (((lin >> 30) & 3) << 3);
                let pdpte = self.read_pte(pdpte_addr, true);
                if pdpte & PTE_P == 0 {
                    return Err(self.page_fault(lin, code));
                }
                (pdpte & ADDR_MASK, 2)
            };
            let mut found = None;
            for level in (0..levels).rev() {
                let shift = 12 + 9 * level as u32;
                let addr = table + (((lin >> shift) & 0x1ff) << 3);
                let e = self.read_pte(addr, true);
                if e & PTE_P == 0 {
                    return Err(self.page_fault(lin, code));
                }
                if e & PTE_NX != 0 && !nxe {
                    return Err(self.page_fault(lin, code | pf::P | pf::RSVD));
                }
                chain[depth] = (addr, e, true);
                depth += 1;
                allow_w &= e & PTE_W != 0;
                allow_u &= e & PTE_U != 0;
                nx |= e & PTE_NX != 0;
                let is_leaf = level == 0 || (e & PTE_PS != 0 && level <= 2);
                if is_leaf {
                    if level == 2 && !long {
                        return Err(self.page_fault(lin, code | pf::P | pf::RSVD));
                    }
                    let mask = (1u64 << shift) - 1;
                    let base = if level == 0 {
                        e & ADDR_MASK
                    } else {
                        e & ADDR_MASK & !mask
                    };
                    found = Some((base | (lin & mask), e & PTE_G != 0, shift));
                    break;
                }
                table = e & ADDR_MASK;
            }
            let Some((p, g, s)) = found else {
                return Err(self.page_fault(lin, code));
            };
            phys = p;
            global = g;
            leaf_size = s;
        }
        let _ = leaf_size;
        // Permission checks (SDM vol. 3 §4.6).
        let denied = (user && !allow_u)
            || (write && !allow_w && (user || wp))
            || (acc == Access::Exec && nx && nxe);
        if denied {
            return Err(self.page_fault(lin, code | pf::P));
        }
        // Accessed bits on every level, dirty on the leaf for writes.
        for (i, &(addr, e, wide)) in chain[..depth].iter().enumerate() {
            let leaf = i == depth - 1;
            let mut ne = e | PTE_A;
            if leaf && write {
                ne |= PTE_D;
            }
            if ne != e && !self.set_pte_bits(addr, wide, e, ne, atomic) {
                // Another vCPU changed the entry since it was read.
                return Ok(None);
            }
        }
        Ok(Some(Walk {
            phys,
            global: global && self.cr4 & cr4::PGE != 0,
        }))
    }

    /// Stores page-table entry `addr` (8 bytes if `wide`, else 4) as `new`
    /// if it still holds `old`; false if another vCPU changed it.
    fn set_pte_bits(&mut self, addr: u64, wide: bool, old: u64, new: u64, atomic: bool) -> bool {
        use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
        let size = if wide { 8 } else { 4 };
        match self.space.ram.ptr(addr, size) {
            Some(p) if addr.is_multiple_of(size) && self.smp && atomic => {
                // SAFETY: `ptr` checked the range; the entry is naturally
                // aligned (checked), as the atomics require.
                unsafe {
                    if wide {
                        (*(p as *const AtomicU64))
                            .compare_exchange(old, new, Ordering::SeqCst, Ordering::SeqCst)
                            .is_ok()
                    } else {
                        (*(p as *const AtomicU32))
                            .compare_exchange(
                                old as u32,
                                new as u32,
                                Ordering::SeqCst,
                                Ordering::SeqCst,
                            )
                            .is_ok()
                    }
                }
            }
            _ => {
                self.space.write_phys(
                    addr,
                    size as usize,
                    new & if wide { u64::MAX } else { 0xffff_ffff },
                );
                true
            }
        }
    }

    /// Translates linear `lin` to physical, filling the TLB.
    pub fn translate(&mut self, lin: u64, acc: Access, user: bool) -> R<u64> {
        let (phys, global) = if self.paging() {
            let w = self.walk(lin, acc, user)?;
            (w.phys, w.global)
        } else {
            (lin & 0xffff_ffff, false)
        };
        let page = phys & !0xfff;
        let code_write = acc == Access::Write && self.code.is_code_page(page);
        let cacheable = !code_write && !self.space.mmio.overlaps(page, 0x1000);
        if cacheable {
            if let Some(host) = self.space.ram.ptr(page, 0x1000) {
                let idx = ((lin >> 12) as usize) & (TLB_SIZE - 1);
                self.tlb.fill(
                    slot(acc, user),
                    idx,
                    TlbEntry {
                        tag: lin & !0xfff,
                        addend: (host as u64).wrapping_sub(lin & !0xfff),
                        phys: page,
                        global,
                    },
                );
            }
        }
        Ok(phys)
    }

    /// Physical address of an instruction fetch at `lin`, from the TLB when
    /// it can.
    #[inline(always)]
    pub(crate) fn fetch_phys(&mut self, lin: u64, user: bool) -> R<u64> {
        let idx = ((lin >> 12) as usize) & (TLB_SIZE - 1);
        let e = &self.tlb.e[slot(Access::Exec, user)][idx];
        if e.tag == lin & !0xfff {
            return Ok(e.phys | (lin & 0xfff));
        }
        self.translate(lin, Access::Exec, user)
    }

    /// Physical address of an instruction fetch at `lin` if the TLB has it.
    #[inline(always)]
    pub(crate) fn fetch_phys_cached(&self, lin: u64, user: bool) -> Option<u64> {
        let idx = ((lin >> 12) as usize) & (TLB_SIZE - 1);
        let e = &self.tlb.e[slot(Access::Exec, user)][idx];
        (e.tag == lin & !0xfff).then_some(e.phys | (lin & 0xfff))
    }

    /// Host pointer for an access of `size` bytes at `lin` that hits the TLB
    /// and stays within one page.
    #[inline(always)]
    fn tlb_hit(&self, lin: u64, size: u64, acc: Access, user: bool) -> Option<*mut u8> {
        let idx = ((lin >> 12) as usize) & (TLB_SIZE - 1);
        let e = &self.tlb.e[slot(acc, user)][idx];
        if e.tag == lin & !0xfff && (lin & 0xfff) + size <= 0x1000 {
            Some(lin.wrapping_add(e.addend) as *mut u8)
        } else {
            None
        }
    }

    /// Reads `size` (1, 2, 4, 8) bytes at linear `lin`.
    #[inline(always)]
    pub fn read_lin(&mut self, lin: u64, size: u8, acc: Access, user: bool) -> R<u64> {
        if let Some(p) = self.tlb_hit(lin, size as u64, acc, user) {
            // SAFETY: a TLB hit points into guest RAM with `size` bytes left in
            // the page; unaligned reads are fine on x86 hosts.
            unsafe {
                return Ok(match size {
                    1 => *p as u64,
                    2 => (p as *const u16).read_unaligned() as u64,
                    4 => (p as *const u32).read_unaligned() as u64,
                    _ => (p as *const u64).read_unaligned(),
                });
            }
        }
        self.read_lin_slow(lin, size, acc, user)
    }

    #[inline(never)]
    fn read_lin_slow(&mut self, lin: u64, size: u8, acc: Access, user: bool) -> R<u64> {
        let size = size.min(8);
        if let Some(cell) = &self.lock_cell {
            if let Some(v) = cell.read(lin, size as u64) {
                return Ok(v);
            }
        }
        let first = 0x1000 - (lin & 0xfff);
        if (size as u64) <= first {
            let pa = self.translate(lin, acc, user)?;
            return Ok(self.space.read_phys(pa, size as usize));
        }
        // Crosses a page: translate both pages before reading either.
        let pa0 = self.translate(lin, acc, user)?;
        let lin1 = lin.wrapping_add(first);
        let pa1 = self.translate(self.wrap_lin(lin1), acc, user)?;
        let mut v = 0u64;
        for i in 0..size as u64 {
            let pa = if i < first {
                pa0 + i
            } else {
                pa1 + (i - first)
            };
            v |= self.space.read_phys(pa, 1) << (8 * i);
        }
        Ok(v)
    }

    /// Writes the low `size` bytes of `v` at linear `lin`.
    #[inline(always)]
    pub fn write_lin(&mut self, lin: u64, size: u8, v: u64, user: bool) -> R {
        if let Some(p) = self.tlb_hit(lin, size as u64, Access::Write, user) {
            // SAFETY: as in `read_lin`; write entries never map code pages.
            unsafe {
                match size {
                    1 => *p = v as u8,
                    2 => (p as *mut u16).write_unaligned(v as u16),
                    4 => (p as *mut u32).write_unaligned(v as u32),
                    _ => (p as *mut u64).write_unaligned(v),
                }
            }
            return Ok(());
        }
        self.write_lin_slow(lin, size, v, user)
    }

    #[inline(never)]
    fn write_lin_slow(&mut self, lin: u64, size: u8, v: u64, user: bool) -> R {
        let size = size.min(8);
        if let Some(cell) = &mut self.lock_cell {
            if cell.write(lin, size as u64, v) {
                return Ok(());
            }
        }
        let first = 0x1000 - (lin & 0xfff);
        if (size as u64) <= first {
            let pa = self.translate(lin, Access::Write, user)?;
            self.note_code_write(pa, size as u64);
            self.space.write_phys(pa, size as usize, v);
            return Ok(());
        }
        let pa0 = self.translate(lin, Access::Write, user)?;
        let lin1 = lin.wrapping_add(first);
        let pa1 = self.translate(self.wrap_lin(lin1), Access::Write, user)?;
        self.note_code_write(pa0, first);
        self.note_code_write(pa1, size as u64 - first);
        for i in 0..size as u64 {
            let pa = if i < first {
                pa0 + i
            } else {
                pa1 + (i - first)
            };
            self.space.write_phys(pa, 1, (v >> (8 * i)) & 0xff);
        }
        Ok(())
    }

    /// Invalidates cached code on the page of `pa` if the `len` bytes
    /// written there (within the page) overlap code. With one vCPU, a write
    /// next to code (data sharing its page) keeps the blocks; with several,
    /// another vCPU may have decoded those bytes, so the page is dropped.
    #[inline]
    pub(crate) fn note_code_write(&mut self, pa: u64, len: u64) {
        let page = pa & !0xfff;
        if self.code.is_code_page(page) && (self.smp || self.cache.overlaps_code(pa, len)) {
            self.invalidate_code_page(page);
            self.stop_block = true;
        }
    }

    /// Truncates a linear address outside 64-bit mode.
    #[inline(always)]
    pub fn wrap_lin(&self, lin: u64) -> u64 {
        if self.long_mode() {
            lin
        } else {
            lin & 0xffff_ffff
        }
    }

    /// Linear address of `seg:off`.
    #[inline(always)]
    pub fn lin(&self, seg: usize, off: u64) -> u64 {
        if self.mode64() {
            if seg >= super::FS {
                self.seg[seg].base.wrapping_add(off)
            } else {
                off
            }
        } else {
            self.seg[seg].base.wrapping_add(off) & 0xffff_ffff
        }
    }

    /// Segment limit and type checks outside 64-bit mode (SDM vol. 3 §5.3,
    /// §5.4.1): #SS(0) for SS, #GP(0) otherwise.
    #[inline(always)]
    pub(crate) fn check_segment(&self, seg: usize, off: u64, size: u8, write: bool) -> R {
        let s = &self.seg[seg];
        // Present, writable, expand-up data spanning 4 GiB: nothing to check.
        if self.mode64() || s.limit == u32::MAX && s.attr & 0x9e == 0x92 {
            return Ok(());
        }
        self.check_segment_slow(seg, off, size, write)
    }

    #[inline(never)]
    fn check_segment_slow(&self, seg: usize, off: u64, size: u8, write: bool) -> R {
        use super::attr;
        let s = &self.seg[seg];
        let fault = || {
            if seg == super::SS {
                Exc::ss(0)
            } else {
                Exc::gp(0)
            }
        };
        let last = off.wrapping_add(size as u64 - 1);
        if !self.protected() || self.v86() {
            // Real and virtual-8086 mode: the limit only.
            return if last > s.limit as u64 || last < off {
                Err(fault())
            } else {
                Ok(())
            };
        }
        if s.attr & attr::P == 0 || s.attr & attr::S == 0 {
            return Err(fault());
        }
        let code = s.attr & attr::CODE != 0;
        let rw = s.attr & 2 != 0;
        // Writes need writable data; reads of code need the readable bit.
        let allowed = if write { !code && rw } else { !code || rw };
        if !allowed {
            return Err(fault());
        }
        if !code && s.attr & 4 != 0 {
            // Expand-down: valid offsets are limit+1 ..= 0xffff or 0xffffffff.
            let upper = if s.attr & attr::DB != 0 {
                0xffff_ffff
            } else {
                0xffff
            };
            if off <= s.limit as u64 || last > upper || last < off {
                return Err(fault());
            }
        } else if last > s.limit as u64 || last < off {
            return Err(fault());
        }
        Ok(())
    }

    /// In 64-bit mode a non-canonical address raises #SS(0) for stack
    /// accesses and #GP(0) otherwise (SDM vol. 3 §3.3.7.1).
    #[inline(always)]
    pub(crate) fn check_canonical(&self, seg: usize, lin: u64) -> R {
        if self.mode64() && ((lin as i64) << 16 >> 16) as u64 != lin {
            return Err(if seg == super::SS {
                Exc::ss(0)
            } else {
                Exc::gp(0)
            });
        }
        Ok(())
    }

    /// True for accesses checked as user-mode (CPL 3).
    #[inline(always)]
    pub fn user(&self) -> bool {
        self.cpl == 3
    }

    /// Reads `size` bytes at `seg:off` with the current privilege.
    #[inline(always)]
    pub fn read_mem(&mut self, seg: usize, off: u64, size: u8) -> R<u64> {
        self.check_segment(seg, off, size, false)?;
        let lin = self.lin(seg, off);
        self.check_canonical(seg, lin)?;
        let user = self.user();
        self.read_lin(lin, size, Access::Read, user)
    }

    /// Writes `size` bytes at `seg:off` with the current privilege.
    #[inline(always)]
    pub fn write_mem(&mut self, seg: usize, off: u64, size: u8, v: u64) -> R {
        self.check_segment(seg, off, size, true)?;
        let lin = self.lin(seg, off);
        self.check_canonical(seg, lin)?;
        let user = self.user();
        self.write_lin(lin, size, v, user)
    }

    /// Supervisor-mode (implicit) read at linear `lin`: descriptor tables, TSS.
    pub fn read_sys(&mut self, lin: u64, size: u8) -> R<u64> {
        self.read_lin(lin, size, Access::Read, false)
    }

    /// Supervisor-mode (implicit) write at linear `lin`.
    pub fn write_sys(&mut self, lin: u64, size: u8, v: u64) -> R {
        self.write_lin(lin, size, v, false)
    }

    /// Reads `buf.len()` bytes at linear `lin` (any alignment).
    pub fn read_lin_bytes(&mut self, lin: u64, buf: &mut [u8], acc: Access) -> R {
        let user = self.user();
        for (i, b) in buf.iter_mut().enumerate() {
            *b = self.read_lin(self.wrap_lin(lin.wrapping_add(i as u64)), 1, acc, user)? as u8;
        }
        Ok(())
    }

    /// Flushes the TLB after CR0/CR3/CR4 changes (SDM vol. 3 §4.10.4).
    pub fn flush_tlb(&mut self, keep_global: bool) {
        self.cache.jmp_clear();
        if keep_global && self.cr4 & cr4::PGE != 0 {
            self.tlb.flush_nonglobal();
        } else {
            self.tlb.flush_all();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(page: u64, global: bool) -> TlbEntry {
        TlbEntry {
            tag: page << 12,
            addend: 0,
            phys: page << 12,
            global,
        }
    }

    /// A CR3 write drops exactly the non-global entries, whatever kind of
    /// entry each slot held before (slots change kind between flushes).
    #[test]
    fn flush_nonglobal_keeps_exactly_the_global_entries() {
        let mut t = Tlb::new();
        let mut want = vec![None; 6 * TLB_SIZE];
        let mut x = 0x1234_5678u64;
        for round in 0..200 {
            for _ in 0..300 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let slot = (x % 6) as usize;
                let idx = ((x >> 8) as usize) % 64;
                let global = (x >> 20) & 1 == 1;
                if (x >> 21).is_multiple_of(16) {
                    t.flush_page((idx as u64) << 12);
                    for s in 0..6 {
                        want[s * TLB_SIZE + idx] = None;
                    }
                    continue;
                }
                t.fill(slot, idx, entry(idx as u64, global));
                want[slot * TLB_SIZE + idx] = Some(global);
            }
            if round % 10 == 9 {
                t.flush_all();
                want.fill(None);
            } else {
                t.flush_nonglobal();
                for w in want.iter_mut() {
                    if *w == Some(false) {
                        *w = None;
                    }
                }
            }
            for (u, w) in want.iter().enumerate() {
                let e = &t.e[u / TLB_SIZE][u % TLB_SIZE];
                let got = (e.tag != INVALID).then_some(e.global);
                assert_eq!(got, *w, "round {round}, entry {u}");
            }
        }
    }
}
