//! Atomic execution of LOCK-prefixed instructions (and XCHG with memory) on
//! a multiprocessor (SDM vol. 3 §8.1.2.2): the instruction runs against a
//! snapshot of its memory operand, and its result is committed with one host
//! compare-and-swap; if another vCPU changed the operand meanwhile, the
//! registers and flags are restored and the instruction runs again. That
//! makes it atomic against every other access, plain stores included (the
//! approach of QEMU's MTTCG, written anew).

use super::exec::Insn;
use super::flags::size_mask;
use super::mmu::Access;
use super::{Cpu, R};
use iced_x86::{Instruction, Mnemonic as M, OpKind};
use std::sync::atomic::{AtomicU16, AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::Mutex;

/// The memory operand of the instruction being executed atomically: reads
/// inside it see `old`; writes go to `new`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct LockCell {
    pub lin: u64,
    pub size: u64,
    pub old: u128,
    pub new: u128,
    pub written: bool,
}

impl LockCell {
    /// Bytes `lin..lin+size` of the cell, if the access lies inside it.
    #[inline]
    pub(crate) fn read(&self, lin: u64, size: u64) -> Option<u64> {
        let off = lin.wrapping_sub(self.lin);
        (off < self.size && off + size <= self.size)
            .then(|| ((self.new >> (8 * off)) as u64) & size_mask(size as u8))
    }

    /// Stores into the cell; false if the access is not inside it.
    #[inline]
    pub(crate) fn write(&mut self, lin: u64, size: u64, v: u64) -> bool {
        let off = lin.wrapping_sub(self.lin);
        if off >= self.size || off + size > self.size {
            return false;
        }
        let mask = (size_mask(size as u8) as u128) << (8 * off);
        self.new = (self.new & !mask) | (((v as u128) << (8 * off)) & mask);
        self.written = true;
        true
    }
}

/// Serializes locked accesses that cannot use a host atomic (split across
/// cache lines or pages, device memory, pages holding code).
static FALLBACK: Mutex<()> = Mutex::new(());

/// True for instructions that must run atomically on a multiprocessor.
pub(super) fn is_locked(ins: &Instruction) -> bool {
    let mem = (0..ins.op_count()).any(|i| ins.op_kind(i) == OpKind::Memory);
    mem && (ins.has_lock_prefix() || ins.mnemonic() == M::Xchg)
}

/// Offset of the memory operand as the instruction will access it, and its
/// size in bytes.
fn operand(c: &Cpu, d: &Insn) -> (usize, u64, u64) {
    let seg = c.mem_seg(d);
    let mut ea = c.ea(d);
    let mut size = d.osize as u64;
    match d.ins.mnemonic() {
        M::Cmpxchg8b => size = 8,
        M::Cmpxchg16b => size = 16,
        M::Bts | M::Btr | M::Btc if d.ins.op1_kind() == OpKind::Register => {
            // A register bit offset addresses whole operands around the
            // memory operand (as in `bit_test`).
            let s = d.osize;
            let w = 8 * s as u64;
            let off = c.get_reg(d.ins.op1_register());
            let sh = 64 - w as u32;
            let off = ((off << sh) as i64) >> sh;
            let units = off >> w.trailing_zeros();
            ea = ea.wrapping_add((units as u64).wrapping_mul(s as u64)) & d.amask;
        }
        _ => {}
    }
    if size == 0 {
        size = d.ins.memory_size().size() as u64;
    }
    (seg, ea, size)
}

/// Loads `size` bytes at `p` (the commit validates it, so tearing of the
/// 16-byte case is harmless).
///
/// # Safety
/// `p` must point to `size` readable bytes aligned to `size`.
unsafe fn load(p: *mut u8, size: u64) -> u128 {
    // SAFETY: per the contract; atomics need the alignment checked by the
    // caller.
    unsafe {
        match size {
            1 => (*(p as *const AtomicU8)).load(Ordering::SeqCst) as u128,
            2 => (*(p as *const AtomicU16)).load(Ordering::SeqCst) as u128,
            4 => (*(p as *const AtomicU32)).load(Ordering::SeqCst) as u128,
            8 => (*(p as *const AtomicU64)).load(Ordering::SeqCst) as u128,
            _ => {
                let lo = (*(p as *const AtomicU64)).load(Ordering::SeqCst) as u128;
                let hi = (*(p.add(8) as *const AtomicU64)).load(Ordering::SeqCst) as u128;
                lo | (hi << 64)
            }
        }
    }
}

/// Compare-and-swap of `size` bytes at `p`.
///
/// # Safety
/// As for [`load`], and writable.
unsafe fn cas(p: *mut u8, size: u64, old: u128, new: u128) -> bool {
    // SAFETY: per the contract.
    unsafe {
        match size {
            1 => (*(p as *const AtomicU8))
                .compare_exchange(old as u8, new as u8, Ordering::SeqCst, Ordering::SeqCst)
                .is_ok(),
            2 => (*(p as *const AtomicU16))
                .compare_exchange(old as u16, new as u16, Ordering::SeqCst, Ordering::SeqCst)
                .is_ok(),
            4 => (*(p as *const AtomicU32))
                .compare_exchange(old as u32, new as u32, Ordering::SeqCst, Ordering::SeqCst)
                .is_ok(),
            8 => (*(p as *const AtomicU64))
                .compare_exchange(old as u64, new as u64, Ordering::SeqCst, Ordering::SeqCst)
                .is_ok(),
            _ => cas16(p, old, new),
        }
    }
}

/// 16-byte compare-and-swap (CMPXCHG16B on the host).
///
/// # Safety
/// `p` must be 16-byte aligned and writable.
#[cfg(target_arch = "x86_64")]
unsafe fn cas16(p: *mut u8, old: u128, new: u128) -> bool {
    let ok: u8;
    // SAFETY: the caller guarantees alignment and validity; RBX is reserved
    // by the compiler, so the new low half is swapped in and out around the
    // instruction (every operand has a fixed register, so none can be RBX).
    unsafe {
        std::arch::asm!(
            "xchg rsi, rbx",
            "lock cmpxchg16b xmmword ptr [rdi]",
            "sete r8b",
            "xchg rsi, rbx",
            in("rdi") p,
            inout("rsi") new as u64 => _,
            out("r8b") ok,
            in("rcx") (new >> 64) as u64,
            inout("rax") old as u64 => _,
            inout("rdx") (old >> 64) as u64 => _,
            options(nostack),
        );
    }
    ok != 0
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn cas16(p: *mut u8, old: u128, new: u128) -> bool {
    let _g = crate::bus::lock(&FALLBACK);
    // SAFETY: per the contract; serialized with other 16-byte CASes only.
    unsafe {
        let q = p as *mut u128;
        if q.read_unaligned() == old {
            q.write_unaligned(new);
            true
        } else {
            false
        }
    }
}

/// Runs a locked instruction atomically with respect to the other vCPUs.
pub(super) fn locked(c: &mut Cpu, d: &Insn) -> R {
    let (seg, off, size) = operand(c, d);
    c.check_segment(seg, off, size.min(8) as u8, true)?;
    let lin = c.lin(seg, off);
    c.check_canonical(seg, lin)?;
    if !size.is_power_of_two() || !lin.is_multiple_of(size) {
        return fallback(c, d);
    }
    let user = c.user();
    let pa = c.translate(lin, Access::Write, user)?;
    let page = pa & !0xfff;
    if c.space.mmio.overlaps(page, 0x1000) || c.code.is_code_page(page) {
        return fallback(c, d);
    }
    let Some(host) = c.space.ram.ptr(pa, size) else {
        return fallback(c, d);
    };
    let saved = c.tlb.take_page(lin);
    let (gpr, flags) = (c.gpr, c.flags);
    let result = loop {
        // SAFETY: `host` points at `size` bytes of guest RAM (checked by
        // `ptr`), aligned to `size` (RAM is page-aligned and `lin`, hence
        // `pa`, is a multiple of `size`).
        let old = unsafe { load(host, size) };
        c.lock_cell = Some(LockCell {
            lin,
            size,
            old,
            new: old,
            written: false,
        });
        let r = (d.inner)(c, d);
        let cell = c.lock_cell.take();
        match (r, cell) {
            (Err(e), _) => break Err(e),
            (Ok(()), Some(cell)) if cell.written => {
                // SAFETY: as for `load`.
                if unsafe { cas(host, size, cell.old, cell.new) } {
                    break Ok(());
                }
                c.gpr = gpr;
                c.flags = flags;
            }
            (Ok(()), _) => break Ok(()),
        }
    };
    c.tlb.restore_page(lin, saved);
    result
}

/// Locked instructions the host cannot do with one atomic: serialized with
/// each other (not with plain accesses of other vCPUs, which real programs
/// do not mix with split locks).
fn fallback(c: &mut Cpu, d: &Insn) -> R {
    let _g = crate::bus::lock(&FALLBACK);
    (d.inner)(c, d)
}
