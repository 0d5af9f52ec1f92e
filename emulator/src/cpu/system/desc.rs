//! Descriptors and segment loads (SDM vol. 3 ch. 3 and §5.2–5.10), the
//! descriptor-table registers and the descriptor-inspecting instructions.

use super::super::exec::Insn;
use super::super::flags::{size_mask, ZF};
use super::super::{attr, reg, Cpu, DescriptorTable, Exc, Segment, CS, DS, ES, FS, GS, R, SS};
use super::{sel_err, sreg, stack_op_size, store_word_operand};
use iced_x86::{Code, Mnemonic as M, OpKind};

/// System descriptor types (SDM vol. 3 §3.5, table 3-2).
pub(super) mod sys {
    /// 16-bit TSS (available).
    pub const TSS16: u8 = 1;
    /// LDT.
    pub const LDT: u8 = 2;
    /// 16-bit call gate.
    pub const CALL16: u8 = 4;
    /// Task gate.
    pub const TASK: u8 = 5;
    /// 16-bit interrupt gate.
    pub const INT16: u8 = 6;
    /// 16-bit trap gate.
    pub const TRAP16: u8 = 7;
    /// 32/64-bit TSS (available).
    pub const TSS: u8 = 9;
    /// 32/64-bit TSS (busy).
    pub const TSS_BUSY: u8 = 0xb;
    /// 32/64-bit call gate.
    pub const CALL: u8 = 0xc;
    /// 32/64-bit interrupt gate.
    pub const INT: u8 = 0xe;
    /// 32/64-bit trap gate.
    pub const TRAP: u8 = 0xf;
}

/// A descriptor read from the GDT, LDT or IDT.
#[derive(Debug, Clone, Copy)]
pub(super) struct Desc {
    /// Low 8 bytes.
    pub raw: u64,
    /// High 8 bytes of a 16-byte (IA-32e system) descriptor, else 0.
    pub hi: u64,
    /// Linear address of the descriptor.
    pub addr: u64,
}

impl Desc {
    /// Attributes in [`Segment::attr`] layout.
    pub fn attr(&self) -> u16 {
        ((self.raw >> 40) & 0xf0ff) as u16
    }
    /// Type field (4 bits).
    pub fn typ(&self) -> u8 {
        ((self.raw >> 40) & 0xf) as u8
    }
    /// Code or data (S = 1).
    pub fn s(&self) -> bool {
        self.raw & (1 << 44) != 0
    }
    /// Descriptor privilege level.
    pub fn dpl(&self) -> u8 {
        ((self.raw >> 45) & 3) as u8
    }
    /// Present.
    pub fn present(&self) -> bool {
        self.raw & (1 << 47) != 0
    }
    /// Code segment.
    pub fn code(&self) -> bool {
        self.s() && self.typ() & 8 != 0
    }
    /// Data segment.
    pub fn data(&self) -> bool {
        self.s() && self.typ() & 8 == 0
    }
    /// Conforming code segment.
    pub fn conforming(&self) -> bool {
        self.code() && self.typ() & 4 != 0
    }
    /// Readable: data, or code with R set.
    pub fn readable(&self) -> bool {
        self.data() || (self.code() && self.typ() & 2 != 0)
    }
    /// Writable data segment.
    pub fn writable(&self) -> bool {
        self.data() && self.typ() & 2 != 0
    }
    /// Base address (with the upper 32 bits of a 16-byte descriptor).
    pub fn base(&self) -> u64 {
        ((self.raw >> 16) & 0xff_ffff) | ((self.raw >> 32) & 0xff00_0000) | (self.hi << 32)
    }
    /// Limit in bytes, granularity applied.
    pub fn limit(&self) -> u32 {
        let l = ((self.raw & 0xffff) | ((self.raw >> 32) & 0xf_0000)) as u32;
        if self.raw & (1 << 55) != 0 {
            (l << 12) | 0xfff
        } else {
            l
        }
    }
    /// The segment register contents for selector `sel`.
    pub fn seg(&self, sel: u16) -> Segment {
        Segment {
            selector: sel,
            base: self.base(),
            limit: self.limit(),
            attr: self.attr(),
        }
    }
    /// Gate: target selector.
    pub fn gate_sel(&self) -> u16 {
        (self.raw >> 16) as u16
    }
    /// Gate: target offset (64-bit gates include the high dword).
    pub fn gate_off(&self) -> u64 {
        (self.raw & 0xffff) | ((self.raw >> 32) & 0xffff_0000) | ((self.hi & 0xffff_ffff) << 32)
    }
    /// Call gate: parameter count.
    pub fn gate_params(&self) -> u64 {
        (self.raw >> 32) & 0x1f
    }
    /// IA-32e interrupt gate: IST index.
    pub fn ist(&self) -> u64 {
        (self.raw >> 32) & 7
    }
    /// True for a 64-bit code segment with D set (invalid in IA-32e mode).
    pub fn l_and_d(&self) -> bool {
        self.raw & (3 << 53) == 3 << 53
    }
}

/// A null (unusable) segment with selector `sel`.
pub(super) fn null_seg(sel: u16) -> Segment {
    Segment {
        selector: sel,
        base: 0,
        limit: 0,
        attr: 0,
    }
}

/// A virtual-8086 mode segment (SDM vol. 3 §20.1.1).
pub(super) fn v86_seg(sel: u16, code: bool) -> Segment {
    Segment {
        selector: sel,
        base: (sel as u64) << 4,
        limit: 0xffff,
        attr: attr::P | attr::S | (3 << 5) | if code { 0xb } else { 0x3 },
    }
}

/// Which exceptions a segment-load check raises.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Check {
    /// Ordinary loads: #GP, #NP, #SS.
    Load,
    /// During a task switch: #TS instead of #GP.
    Task,
}

impl Check {
    fn gp(self, code: u32) -> Exc {
        match self {
            Check::Load => Exc::gp(code),
            Check::Task => Exc::ts(code),
        }
    }
}

impl Cpu {
    /// Reads the 8-byte descriptor for `sel`; `None` when the selector lies
    /// outside its table (or names the LDT while none is loaded).
    pub(super) fn read_desc(&mut self, sel: u16) -> R<Option<Desc>> {
        self.read_desc_n(sel, false)
    }

    /// Reads a system descriptor: 16 bytes in IA-32e mode.
    pub(super) fn read_sys_desc(&mut self, sel: u16) -> R<Option<Desc>> {
        let wide = self.long_mode();
        self.read_desc_n(sel, wide)
    }

    fn read_desc_n(&mut self, sel: u16, wide: bool) -> R<Option<Desc>> {
        let (base, limit) = if sel & 4 != 0 {
            if self.ldtr.selector & 0xfffc == 0 || self.ldtr.attr & attr::P == 0 {
                return Ok(None);
            }
            (self.ldtr.base, self.ldtr.limit as u64)
        } else {
            (self.gdtr.base, self.gdtr.limit as u64)
        };
        let off = (sel & !7) as u64;
        if off + if wide { 15 } else { 7 } > limit {
            return Ok(None);
        }
        let addr = self.wrap_lin(base.wrapping_add(off));
        let raw = self.read_sys(addr, 8)?;
        let hi = if wide {
            self.read_sys(self.wrap_lin(addr.wrapping_add(8)), 8)?
        } else {
            0
        };
        Ok(Some(Desc { raw, hi, addr }))
    }

    /// Sets the accessed bit of a code/data descriptor in memory.
    pub(super) fn set_accessed(&mut self, d: &mut Desc) -> R {
        if d.raw & (1 << 40) == 0 {
            d.raw |= 1 << 40;
            let a = self.wrap_lin(d.addr.wrapping_add(5));
            self.write_sys(a, 1, (d.raw >> 40) & 0xff)?;
        }
        Ok(())
    }

    /// Sets or clears the busy bit of the TSS descriptor for `sel` in the GDT.
    pub(super) fn set_tss_busy(&mut self, sel: u16, busy: bool) -> R {
        let addr = self.wrap_lin(self.gdtr.base.wrapping_add((sel & !7) as u64 + 5));
        let b = self.read_sys(addr, 1)?;
        let nb = if busy { b | 2 } else { b & !2 };
        if nb != b {
            self.write_sys(addr, 1, nb)?;
        }
        Ok(())
    }

    /// Checks `sel` for loading into data segment register `s` (ES, DS, FS,
    /// GS) or SS at privilege `cpl` and returns the new register contents,
    /// setting the descriptor's accessed bit (SDM vol. 2 MOV; vol. 3 §5.6,
    /// §5.7). `code64` says the code that will run is 64-bit (null SS
    /// allowed below ring 3).
    pub(super) fn check_seg(
        &mut self,
        s: usize,
        sel: u16,
        cpl: u8,
        code64: bool,
        chk: Check,
    ) -> R<Segment> {
        let rpl = (sel & 3) as u8;
        if sel & 0xfffc == 0 {
            if s == SS && !(code64 && cpl < 3 && rpl == cpl) {
                return Err(chk.gp(if chk == Check::Task { sel_err(sel) } else { 0 }));
            }
            return Ok(null_seg(sel));
        }
        let err = sel_err(sel);
        let mut d = self.read_desc(sel)?.ok_or(chk.gp(err))?;
        if s == SS {
            if rpl != cpl || !d.writable() || d.dpl() != cpl {
                return Err(chk.gp(err));
            }
            if !d.present() {
                return Err(Exc::ss(err));
            }
        } else {
            if !d.readable() {
                return Err(chk.gp(err));
            }
            if !d.conforming() && (rpl > d.dpl() || cpl > d.dpl()) {
                return Err(chk.gp(err));
            }
            if !d.present() {
                return Err(Exc::np(err));
            }
        }
        self.set_accessed(&mut d)?;
        Ok(d.seg(sel))
    }

    /// Loads segment register `s` (not CS) with `sel` as MOV/POP/LxS do, with
    /// protection checks in protected mode.
    pub(super) fn load_seg(&mut self, s: usize, sel: u16) -> R {
        if !self.protected() || self.v86() {
            self.load_seg_real(s, sel);
            return Ok(());
        }
        let seg = self.check_seg(s, sel, self.cpl, self.mode64(), Check::Load)?;
        self.seg[s] = seg;
        Ok(())
    }

    /// Real-address and virtual-8086 mode load: base = selector × 16. Real
    /// mode keeps the cached limit and attributes (so "unreal mode" works).
    pub(super) fn load_seg_real(&mut self, s: usize, sel: u16) {
        if self.v86() {
            self.seg[s] = v86_seg(sel, s == CS);
            return;
        }
        let seg = &mut self.seg[s];
        seg.selector = sel;
        seg.base = (sel as u64) << 4;
        if seg.attr & attr::P == 0 {
            seg.limit = 0xffff;
            seg.attr = attr::P | attr::S | 0x3;
        }
        if s == CS {
            seg.attr |= attr::P | attr::S | attr::CODE | attr::ACCESSED;
        }
    }

    /// After a return to an outer privilege level: data segment registers the
    /// new CPL may not use are nulled (SDM vol. 2 RET, IRET).
    pub(super) fn null_inaccessible_segs(&mut self) {
        for s in [ES, DS, FS, GS] {
            let a = self.seg[s].attr;
            let conforming_code = a & attr::S != 0 && a & 0xc == 0xc;
            if self.seg[s].selector & 0xfffc != 0 && !conforming_code && attr::dpl(a) < self.cpl {
                // The base is kept: in 64-bit mode FS/GS bases come from MSRs.
                self.seg[s].selector = 0;
                self.seg[s].attr = 0;
            }
        }
    }
}

/// MOV Sreg, r/m16.
pub(super) fn mov_to_sreg(c: &mut Cpu, d: &Insn) -> R {
    let s = sreg(d, 0);
    if s == CS {
        return Err(Exc::UD);
    }
    let sel = c.rd(d, 1, 2)? as u16;
    c.load_seg(s, sel)?;
    if s == SS {
        // MOV SS inhibits interrupts until after the next instruction.
        c.irq_inhibit = true;
        c.stop_block = true;
    }
    Ok(())
}

/// MOV r/m, Sreg.
pub(super) fn mov_from_sreg(c: &mut Cpu, d: &Insn) -> R {
    let v = c.seg[sreg(d, 1)].selector as u64;
    store_word_operand(c, d, v)
}

/// POP Sreg.
pub(super) fn pop_sreg(c: &mut Cpu, d: &Insn) -> R {
    let s = sreg(d, 0);
    let size = stack_op_size(d);
    let ss = c.stack_size();
    let sel = c.peek(0, size)? as u16;
    c.load_seg(s, sel)?;
    let sp = c.gpr[reg::RSP].wrapping_add(size as u64);
    c.set_gpr_sized(reg::RSP, ss, sp);
    if s == SS {
        c.irq_inhibit = true;
        c.stop_block = true;
    }
    Ok(())
}

/// LDS/LES/LFS/LGS/LSS: load a far pointer.
pub(super) fn load_far_pointer(c: &mut Cpu, d: &Insn) -> R {
    let s = match d.ins.mnemonic() {
        M::Lds => DS,
        M::Les => ES,
        M::Lfs => FS,
        M::Lgs => GS,
        _ => SS,
    };
    if d.ins.op1_kind() != OpKind::Memory {
        return Err(Exc::UD);
    }
    let r = d.ins.op0_register();
    let size = r.size() as u8;
    let (seg, off) = (c.mem_seg(d), c.ea(d));
    let v = c.read_mem(seg, off, size)?;
    let sel = c.read_mem(seg, off.wrapping_add(size as u64) & d.amask, 2)? as u16;
    c.load_seg(s, sel)?;
    c.set_reg(r, v);
    Ok(())
}

/// LGDT/LIDT (SDM vol. 2).
pub(super) fn lgdt_lidt(c: &mut Cpu, d: &Insn) -> R {
    if c.cpl != 0 {
        return Err(Exc::gp(0));
    }
    if d.ins.op0_kind() != OpKind::Memory {
        return Err(Exc::UD);
    }
    let (s, off) = (c.mem_seg(d), c.ea(d));
    let limit = c.read_mem(s, off, 2)? as u16;
    let boff = off.wrapping_add(2) & d.amask;
    let base = if c.mode64() {
        let b = c.read_mem(s, boff, 8)?;
        if !super::super::ops_basic::canonical(b) {
            return Err(Exc::gp(0));
        }
        b
    } else {
        let b = c.read_mem(s, boff, 4)?;
        match d.ins.code() {
            Code::Lgdt_m1632_16 | Code::Lidt_m1632_16 => b & 0xff_ffff,
            _ => b,
        }
    };
    let t = DescriptorTable { base, limit };
    if d.ins.mnemonic() == M::Lgdt {
        c.gdtr = t;
    } else {
        c.idtr = t;
    }
    Ok(())
}

/// SGDT/SIDT.
pub(super) fn sgdt_sidt(c: &mut Cpu, d: &Insn) -> R {
    if d.ins.op0_kind() != OpKind::Memory {
        return Err(Exc::UD);
    }
    let t = if d.ins.mnemonic() == M::Sgdt {
        c.gdtr
    } else {
        c.idtr
    };
    let (s, off) = (c.mem_seg(d), c.ea(d));
    let boff = off.wrapping_add(2) & d.amask;
    if c.mode64() {
        c.write_mem(s, boff, 8, t.base)?;
    } else {
        c.write_mem(s, boff, 4, t.base & 0xffff_ffff)?;
    }
    c.write_mem(s, off, 2, t.limit as u64)
}

/// Checks shared by LLDT and LTR: protected mode, CPL 0.
fn check_lldt_ltr(c: &Cpu) -> R {
    if !c.protected() || c.v86() {
        return Err(Exc::UD);
    }
    if c.cpl != 0 {
        return Err(Exc::gp(0));
    }
    Ok(())
}

/// LLDT.
pub(super) fn lldt(c: &mut Cpu, d: &Insn) -> R {
    check_lldt_ltr(c)?;
    let sel = c.rd(d, 0, 2)? as u16;
    if sel & 0xfffc == 0 {
        c.ldtr = null_seg(sel);
        return Ok(());
    }
    let err = Exc::gp(sel_err(sel));
    if sel & 4 != 0 {
        return Err(err);
    }
    let desc = c.read_sys_desc(sel)?.ok_or(err)?;
    if desc.s() || desc.typ() != sys::LDT {
        return Err(err);
    }
    if !desc.present() {
        return Err(Exc::np(sel_err(sel)));
    }
    let seg = desc.seg(sel);
    if c.long_mode() && !super::super::ops_basic::canonical(seg.base) {
        return Err(err);
    }
    c.ldtr = seg;
    Ok(())
}

/// LTR: loads the task register and marks the TSS busy.
pub(super) fn ltr(c: &mut Cpu, d: &Insn) -> R {
    check_lldt_ltr(c)?;
    let sel = c.rd(d, 0, 2)? as u16;
    if sel & 0xfffc == 0 {
        return Err(Exc::gp(0));
    }
    let err = Exc::gp(sel_err(sel));
    if sel & 4 != 0 {
        return Err(err);
    }
    let desc = c.read_sys_desc(sel)?.ok_or(err)?;
    let ok_type = desc.typ() == sys::TSS || (desc.typ() == sys::TSS16 && !c.long_mode());
    if desc.s() || !ok_type {
        return Err(err);
    }
    if !desc.present() {
        return Err(Exc::np(sel_err(sel)));
    }
    let mut seg = desc.seg(sel);
    if c.long_mode() && !super::super::ops_basic::canonical(seg.base) {
        return Err(err);
    }
    c.set_tss_busy(sel, true)?;
    seg.attr |= 2;
    c.tr = seg;
    Ok(())
}

/// SLDT.
pub(super) fn sldt(c: &mut Cpu, d: &Insn) -> R {
    if !c.protected() || c.v86() {
        return Err(Exc::UD);
    }
    let v = c.ldtr.selector as u64;
    store_word_operand(c, d, v)
}

/// STR.
pub(super) fn str_(c: &mut Cpu, d: &Insn) -> R {
    if !c.protected() || c.v86() {
        return Err(Exc::UD);
    }
    let v = c.tr.selector as u64;
    store_word_operand(c, d, v)
}

/// The descriptor for LAR/LSL/VERR/VERW's selector operand if it is visible
/// at the current privilege (`sys_ok` says which system types qualify).
fn inspect(c: &mut Cpu, sel: u16, sys_ok: fn(u8, bool) -> bool) -> R<Option<Desc>> {
    if sel & 0xfffc == 0 {
        return Ok(None);
    }
    let Some(desc) = c.read_desc(sel)? else {
        return Ok(None);
    };
    if !desc.s() && !sys_ok(desc.typ(), c.long_mode()) {
        return Ok(None);
    }
    let rpl = (sel & 3) as u8;
    if !desc.conforming() && (desc.dpl() < c.cpl || desc.dpl() < rpl) {
        return Ok(None);
    }
    Ok(Some(desc))
}

fn check_inspect(c: &Cpu) -> R {
    if !c.protected() || c.v86() {
        Err(Exc::UD)
    } else {
        Ok(())
    }
}

/// LAR: load access rights.
pub(super) fn lar(c: &mut Cpu, d: &Insn) -> R {
    check_inspect(c)?;
    let sel = c.rd(d, 1, 2)? as u16;
    let desc = inspect(c, sel, |t, long| {
        if long {
            matches!(t, sys::LDT | sys::TSS | sys::TSS_BUSY | sys::CALL)
        } else {
            matches!(t, 1..=5 | sys::TSS | sys::TSS_BUSY | sys::CALL)
        }
    })?;
    c.flags.set_bit(ZF, desc.is_some());
    if let Some(desc) = desc {
        let r = d.ins.op0_register();
        // Bits 19:16 (limit) come along, as on real processors.
        let mask = if r.size() == 2 { 0xff00 } else { 0x00ff_ff00 };
        c.set_reg(r, (desc.raw >> 32) & mask);
    }
    Ok(())
}

/// LSL: load segment limit.
pub(super) fn lsl(c: &mut Cpu, d: &Insn) -> R {
    check_inspect(c)?;
    let sel = c.rd(d, 1, 2)? as u16;
    let desc = inspect(c, sel, |t, long| {
        if long {
            matches!(t, sys::LDT | sys::TSS | sys::TSS_BUSY)
        } else {
            matches!(t, 1..=3 | sys::TSS | sys::TSS_BUSY)
        }
    })?;
    c.flags.set_bit(ZF, desc.is_some());
    if let Some(desc) = desc {
        let r = d.ins.op0_register();
        c.set_reg(r, desc.limit() as u64 & size_mask(r.size() as u8));
    }
    Ok(())
}

/// VERR/VERW: verify a segment for reading or writing.
pub(super) fn verr_verw(c: &mut Cpu, d: &Insn) -> R {
    check_inspect(c)?;
    let sel = c.rd(d, 0, 2)? as u16;
    let desc = inspect(c, sel, |_, _| false)?;
    let ok = desc.is_some_and(|desc| {
        if d.ins.mnemonic() == M::Verr {
            desc.readable()
        } else {
            desc.writable()
        }
    });
    c.flags.set_bit(ZF, ok);
    Ok(())
}

/// ARPL: adjust RPL.
pub(super) fn arpl(c: &mut Cpu, d: &Insn) -> R {
    check_inspect(c)?;
    let dst = c.rd(d, 0, 2)?;
    let src = c.get_reg(d.ins.op1_register());
    if dst & 3 < src & 3 {
        c.wr(d, 0, 2, (dst & !3) | (src & 3))?;
        c.flags.set_bit(ZF, true);
    } else {
        c.flags.set_bit(ZF, false);
    }
    Ok(())
}
