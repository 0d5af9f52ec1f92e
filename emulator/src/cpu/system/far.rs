//! Far control transfers: JMP/CALL far (direct, call gates, task
//! switches) and RETF (SDM vol. 2 CALL, JMP, RET; vol. 3 §5.8).

use super::super::exec::Insn;
use super::super::flags::size_mask;
use super::super::ops_basic::canonical;
use super::super::{attr, reg, Cpu, Exc, Segment, CS, R, SS};
use super::desc::{null_seg, sys, Check, Desc};
use super::sel_err;
use super::task::Reason;
use iced_x86::{Code, OpKind};

/// Target of a far JMP/CALL: (selector, offset, operand size in bytes).
fn far_target(c: &mut Cpu, d: &Insn) -> R<(u16, u64, u8)> {
    match d.ins.op0_kind() {
        OpKind::FarBranch16 => Ok((d.ins.far_branch_selector(), d.ins.far_branch16() as u64, 2)),
        OpKind::FarBranch32 => Ok((d.ins.far_branch_selector(), d.ins.far_branch32() as u64, 4)),
        OpKind::Memory => {
            let os = match d.ins.code() {
                Code::Jmp_m1616 | Code::Call_m1616 => 2,
                Code::Jmp_m1664 | Code::Call_m1664 => 8,
                _ => 4,
            };
            let (s, off) = (c.mem_seg(d), c.ea(d));
            let target = c.read_mem(s, off, os)?;
            let sel = c.read_mem(s, off.wrapping_add(os as u64) & d.amask, 2)? as u16;
            Ok((sel, target, os))
        }
        _ => Err(Exc::UD),
    }
}

/// Pushes onto a stack that is not (yet) the current one.
pub(super) struct NewStack {
    /// SS base (ignored for 64-bit stacks).
    pub base: u64,
    /// Stack pointer.
    pub sp: u64,
    /// Stack-pointer mask (16, 32 or 64 bits).
    pub mask: u64,
    /// Flat 64-bit addressing.
    pub flat: bool,
    /// Accesses are made at CPL 3.
    pub user: bool,
}

impl NewStack {
    /// The stack described by `ss` with pointer `sp`, accessed at `cpl`.
    pub fn new(ss: &Segment, sp: u64, flat: bool, cpl: u8) -> Self {
        let mask = if flat {
            u64::MAX
        } else if ss.attr & attr::DB != 0 {
            0xffff_ffff
        } else {
            0xffff
        };
        NewStack {
            base: ss.base,
            sp: sp & mask,
            mask,
            flat,
            user: cpl == 3,
        }
    }

    /// Byte size of the stack pointer.
    pub fn sp_size(&self) -> u8 {
        match self.mask {
            0xffff => 2,
            0xffff_ffff => 4,
            _ => 8,
        }
    }
}

impl Cpu {
    /// Pushes `size` bytes of `v` on `st`.
    pub(super) fn push_on(&mut self, st: &mut NewStack, size: u8, v: u64) -> R {
        st.sp = st.sp.wrapping_sub(size as u64) & st.mask;
        let lin = if st.flat {
            st.sp
        } else {
            st.base.wrapping_add(st.sp) & 0xffff_ffff
        };
        self.write_lin(lin, size, v & size_mask(size), st.user)
    }

    /// Makes `st` the current stack with `ss`.
    pub(super) fn switch_stack(&mut self, ss: Segment, st: &NewStack) {
        self.seg[SS] = ss;
        let size = st.sp_size();
        self.set_gpr_sized(reg::RSP, size, st.sp);
    }

    /// Checks a direct far JMP/CALL target code segment (SDM vol. 2 JMP):
    /// returns the new CS contents (RPL = CPL).
    fn direct_code_target(&mut self, sel: u16, mut desc: Desc) -> R<Segment> {
        let err = sel_err(sel);
        let rpl = (sel & 3) as u8;
        if desc.conforming() {
            if desc.dpl() > self.cpl {
                return Err(Exc::gp(err));
            }
        } else if rpl > self.cpl || desc.dpl() != self.cpl {
            return Err(Exc::gp(err));
        }
        if !desc.present() {
            return Err(Exc::np(err));
        }
        if self.long_mode() && desc.l_and_d() {
            return Err(Exc::gp(err));
        }
        self.set_accessed(&mut desc)?;
        Ok(desc.seg((sel & !3) | self.cpl as u16))
    }

    /// Checks that `off` is a valid instruction pointer in code segment `cs`.
    pub(super) fn check_target(&self, cs: &Segment, off: u64, err: u32) -> R<u64> {
        if self.is_64bit_cs(cs.attr) {
            if !canonical(off) {
                return Err(Exc::gp(err));
            }
            Ok(off)
        } else {
            let off = off & 0xffff_ffff;
            if off > cs.limit as u64 {
                return Err(Exc::gp(err));
            }
            Ok(off)
        }
    }

    /// Reads a call gate's target code segment (SDM vol. 3 §5.8.4): checks
    /// shared by JMP and CALL. Returns the descriptor and selector.
    fn gate_code(&mut self, gate: &Desc) -> R<(u16, Desc)> {
        let csel = gate.gate_sel();
        if csel & 0xfffc == 0 {
            return Err(Exc::gp(0));
        }
        let err = sel_err(csel);
        let desc = self.read_desc(csel)?.ok_or(Exc::gp(err))?;
        if !desc.code() || desc.dpl() > self.cpl {
            return Err(Exc::gp(err));
        }
        if self.long_mode() && (desc.raw & (1 << 53) == 0 || desc.l_and_d()) {
            return Err(Exc::gp(err));
        }
        if !desc.present() {
            return Err(Exc::np(err));
        }
        Ok((csel, desc))
    }

    /// Reads and checks a gate or TSS named by a far JMP/CALL selector.
    /// Returns the descriptor (16 bytes for IA-32e call gates).
    fn far_system_desc(&mut self, sel: u16, desc: Desc) -> R<Desc> {
        let err = Exc::gp(sel_err(sel));
        let rpl = (sel & 3) as u8;
        let t = desc.typ();
        let valid = if self.long_mode() {
            t == sys::CALL
        } else {
            matches!(
                t,
                sys::CALL16 | sys::CALL | sys::TASK | sys::TSS | sys::TSS16
            )
        };
        if !valid || desc.dpl() < self.cpl || desc.dpl() < rpl {
            return Err(err);
        }
        if !desc.present() {
            return Err(Exc::np(sel_err(sel)));
        }
        if self.long_mode() {
            let d16 = self.read_sys_desc(sel)?.ok_or(err)?;
            if (d16.hi >> 40) & 0x1f != 0 {
                return Err(err);
            }
            return Ok(d16);
        }
        Ok(desc)
    }

    /// Task switch through a TSS or task gate named by a far JMP/CALL.
    fn far_task(&mut self, sel: u16, desc: Desc, reason: Reason) -> R {
        let (tsel, tdesc) = if desc.typ() == sys::TASK {
            let tsel = desc.gate_sel();
            let err = Exc::gp(sel_err(tsel));
            if tsel & 4 != 0 || tsel & 0xfffc == 0 {
                return Err(err);
            }
            let td = self.read_desc(tsel)?.ok_or(err)?;
            if td.s() || td.typ() != sys::TSS {
                return Err(err);
            }
            if !td.present() {
                return Err(Exc::np(sel_err(tsel)));
            }
            (tsel, td)
        } else {
            (sel, desc)
        };
        if tdesc.typ() != sys::TSS {
            // Busy, or a 16-bit TSS (not supported).
            return Err(Exc::gp(sel_err(tsel)));
        }
        if let Some(e) = self.task_switch(tsel, tdesc, reason, None, 0)? {
            self.raise(e);
        }
        Ok(())
    }

    /// Protected-mode far JMP.
    fn jmp_far_prot(&mut self, sel: u16, off: u64, os: u8) -> R {
        if sel & 0xfffc == 0 {
            return Err(Exc::gp(0));
        }
        let desc = self.read_desc(sel)?.ok_or(Exc::gp(sel_err(sel)))?;
        if desc.s() {
            if !desc.code() {
                return Err(Exc::gp(sel_err(sel)));
            }
            let cs = self.direct_code_target(sel, desc)?;
            let off = off & size_mask(os);
            let rip = self.check_target(&cs, off, 0)?;
            self.commit_cs(cs, self.cpl, rip);
            return Ok(());
        }
        let gate = self.far_system_desc(sel, desc)?;
        if matches!(gate.typ(), sys::TASK | sys::TSS | sys::TSS16) {
            return self.far_task(sel, gate, Reason::Jmp);
        }
        let (csel, mut cdesc) = self.gate_code(&gate)?;
        if !cdesc.conforming() && cdesc.dpl() != self.cpl {
            return Err(Exc::gp(sel_err(csel)));
        }
        self.set_accessed(&mut cdesc)?;
        let cs = cdesc.seg((csel & !3) | self.cpl as u16);
        let goff = if gate.typ() == sys::CALL16 {
            gate.gate_off() & 0xffff
        } else {
            gate.gate_off()
        };
        let rip = self.check_target(&cs, goff, 0)?;
        self.commit_cs(cs, self.cpl, rip);
        Ok(())
    }

    /// Protected-mode far CALL.
    fn call_far_prot(&mut self, sel: u16, off: u64, os: u8) -> R {
        if sel & 0xfffc == 0 {
            return Err(Exc::gp(0));
        }
        let desc = self.read_desc(sel)?.ok_or(Exc::gp(sel_err(sel)))?;
        if desc.s() {
            if !desc.code() {
                return Err(Exc::gp(sel_err(sel)));
            }
            let cs = self.direct_code_target(sel, desc)?;
            let rip = self.check_target(&cs, off & size_mask(os), 0)?;
            let mut st = NewStack::new(&self.seg[SS], self.gpr[reg::RSP], self.mode64(), self.cpl);
            let old_cs = self.seg[CS].selector as u64;
            self.push_on(&mut st, os, old_cs)?;
            self.push_on(&mut st, os, self.rip)?;
            let ss = self.seg[SS];
            self.switch_stack(ss, &st);
            self.commit_cs(cs, self.cpl, rip);
            return Ok(());
        }
        let gate = self.far_system_desc(sel, desc)?;
        if matches!(gate.typ(), sys::TASK | sys::TSS | sys::TSS16) {
            return self.far_task(sel, gate, Reason::Call);
        }
        let (csel, mut cdesc) = self.gate_code(&gate)?;
        let long = self.long_mode();
        let gsize: u8 = match gate.typ() {
            sys::CALL16 => 2,
            _ if long => 8,
            _ => 4,
        };
        let goff = if gsize == 2 {
            gate.gate_off() & 0xffff
        } else {
            gate.gate_off()
        };
        let old_cs = self.seg[CS].selector as u64;
        let ret = self.rip;
        if !cdesc.conforming() && cdesc.dpl() < self.cpl {
            // More privilege: the stack comes from the TSS (SDM vol. 3 §5.8.5).
            let ncpl = cdesc.dpl();
            let cs = cdesc.seg((csel & !3) | ncpl as u16);
            let rip = self.check_target(&cs, goff, 0)?;
            let (ss, mut st) = if long {
                let rsp = self.tss64_read(4 + 8 * ncpl as u64, 0)?;
                if !canonical(rsp) {
                    return Err(Exc::ss(0));
                }
                let ss = null_seg(ncpl as u16);
                let st = NewStack::new(&ss, rsp, true, ncpl);
                (ss, st)
            } else {
                let (ss_sel, sp) = self.tss_stack(ncpl, 0)?;
                let ss = self.check_tss_ss(ss_sel, ncpl, 0)?;
                let st = NewStack::new(&ss, sp, false, ncpl);
                (ss, st)
            };
            let old_ss = self.seg[SS].selector as u64;
            let old_sp = self.gpr[reg::RSP];
            self.push_on(&mut st, gsize, old_ss)?;
            self.push_on(&mut st, gsize, old_sp)?;
            if !long {
                // Copy the parameters from the caller's stack.
                let n = gate.gate_params();
                for i in (0..n).rev() {
                    let v = self.peek(i * gsize as u64, gsize)?;
                    self.push_on(&mut st, gsize, v)?;
                }
            }
            self.push_on(&mut st, gsize, old_cs)?;
            self.push_on(&mut st, gsize, ret)?;
            self.set_accessed(&mut cdesc)?;
            self.switch_stack(ss, &st);
            self.commit_cs(cs, ncpl, rip);
        } else {
            self.set_accessed(&mut cdesc)?;
            let cs = cdesc.seg((csel & !3) | self.cpl as u16);
            let rip = self.check_target(&cs, goff, 0)?;
            let mut st = NewStack::new(&self.seg[SS], self.gpr[reg::RSP], self.mode64(), self.cpl);
            self.push_on(&mut st, gsize, old_cs)?;
            self.push_on(&mut st, gsize, ret)?;
            let ss = self.seg[SS];
            self.switch_stack(ss, &st);
            self.commit_cs(cs, self.cpl, rip);
        }
        Ok(())
    }

    /// Checks the SS selector read from a TSS for a stack switch to `cpl`
    /// (#TS on failure, #SS when not present; `ext` is the EXT bit).
    pub(super) fn check_tss_ss(&mut self, sel: u16, cpl: u8, ext: u32) -> R<Segment> {
        if sel & 0xfffc == 0 {
            return Err(Exc::ts(ext));
        }
        let err = sel_err(sel) | ext;
        let mut d = self.read_desc(sel)?.ok_or(Exc::ts(err))?;
        if (sel & 3) as u8 != cpl || d.dpl() != cpl || !d.writable() {
            return Err(Exc::ts(err));
        }
        if !d.present() {
            return Err(Exc::ss(err));
        }
        self.set_accessed(&mut d)?;
        Ok(d.seg(sel))
    }

    /// Checks a return CS (RETF, IRET): returns the descriptor's segment.
    pub(super) fn return_code_seg(&mut self, sel: u16) -> R<Segment> {
        if sel & 0xfffc == 0 {
            return Err(Exc::gp(0));
        }
        let err = sel_err(sel);
        let rpl = (sel & 3) as u8;
        if rpl < self.cpl {
            return Err(Exc::gp(err));
        }
        let mut desc = self.read_desc(sel)?.ok_or(Exc::gp(err))?;
        if !desc.code() {
            return Err(Exc::gp(err));
        }
        if desc.conforming() {
            if desc.dpl() > rpl {
                return Err(Exc::gp(err));
            }
        } else if desc.dpl() != rpl {
            return Err(Exc::gp(err));
        }
        if !desc.present() {
            return Err(Exc::np(err));
        }
        if self.long_mode() && desc.l_and_d() {
            return Err(Exc::gp(err));
        }
        self.set_accessed(&mut desc)?;
        Ok(desc.seg(sel))
    }

    /// Checks the SS popped by a return to privilege `rpl` (RETF, IRET).
    pub(super) fn return_stack_seg(&mut self, sel: u16, rpl: u8, code64: bool) -> R<Segment> {
        if sel & 0xfffc == 0 && !(code64 && rpl < 3 && (sel & 3) as u8 == rpl) {
            return Err(Exc::gp(0));
        }
        self.check_seg(SS, sel, rpl, code64, Check::Load)
    }
}

/// JMP far.
pub(super) fn jmp_far(c: &mut Cpu, d: &Insn) -> R {
    let (sel, off, os) = far_target(c, d)?;
    if !c.protected() || c.v86() {
        let off = off & size_mask(os);
        if off > c.seg[CS].limit as u64 && !c.v86() {
            return Err(Exc::gp(0));
        }
        c.load_seg_real(CS, sel);
        c.rip = off;
        c.stop_block = true;
        return Ok(());
    }
    c.jmp_far_prot(sel, off, os)
}

/// CALL far.
pub(super) fn call_far(c: &mut Cpu, d: &Insn) -> R {
    let (sel, off, os) = far_target(c, d)?;
    if !c.protected() || c.v86() {
        let off = off & size_mask(os);
        let sp = c.gpr[reg::RSP];
        let old_cs = c.seg[CS].selector as u64;
        let ret = c.rip;
        c.push(os, old_cs)?;
        if let Err(e) = c.push(os, ret) {
            c.gpr[reg::RSP] = sp;
            return Err(e);
        }
        c.load_seg_real(CS, sel);
        c.rip = off;
        c.stop_block = true;
        return Ok(());
    }
    c.call_far_prot(sel, off, os)
}

/// RETF [imm16].
pub(super) fn retf(c: &mut Cpu, d: &Insn) -> R {
    let os: u8 = match d.ins.code() {
        Code::Retfw | Code::Retfw_imm16 => 2,
        Code::Retfq | Code::Retfq_imm16 => 8,
        _ => 4,
    };
    let imm = if d.ins.op_count() > 0 {
        d.ins.immediate(0) & 0xffff
    } else {
        0
    };
    let ip = c.peek(0, os)?;
    let sel = c.peek(os as u64, 2)? as u16;
    let ssz = c.stack_size();
    let after = c.gpr[reg::RSP].wrapping_add(2 * os as u64 + imm);
    if !c.protected() || c.v86() {
        if ip > c.seg[CS].limit as u64 && !c.v86() {
            return Err(Exc::gp(0));
        }
        c.load_seg_real(CS, sel);
        c.set_gpr_sized(reg::RSP, ssz, after);
        c.rip = ip;
        c.stop_block = true;
        return Ok(());
    }
    let cs = c.return_code_seg(sel)?;
    let rpl = (sel & 3) as u8;
    let code64 = c.is_64bit_cs(cs.attr);
    if rpl == c.cpl {
        let rip = c.check_target(&cs, ip, 0)?;
        c.set_gpr_sized(reg::RSP, ssz, after);
        c.commit_cs(cs, rpl, rip);
        return Ok(());
    }
    // Return to an outer privilege level.
    let base = 2 * os as u64 + imm;
    let nsp = c.peek(base, os)?;
    let nss_sel = c.peek(base + os as u64, 2)? as u16;
    let rip = c.check_target(&cs, ip, 0)?;
    let ss = c.return_stack_seg(nss_sel, rpl, code64)?;
    c.seg[SS] = ss;
    c.commit_cs(cs, rpl, rip);
    let nsz = c.stack_size();
    c.set_gpr_sized(reg::RSP, nsz, nsp.wrapping_add(imm));
    c.null_inaccessible_segs();
    Ok(())
}
