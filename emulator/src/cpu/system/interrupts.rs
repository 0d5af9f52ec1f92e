//! Exception and interrupt delivery (SDM vol. 3 ch. 6, §20.3 for
//! virtual-8086 mode), INT n/INT3/INTO/INT1, IRET, and the I/O permission
//! check (vol. 1 §19.5).

use super::super::exec::Insn;
use super::super::flags::{self, size_mask};
use super::super::ops_basic::canonical;
use super::super::{attr, reg, vec, Cpu, Exc, CS, DS, ES, FS, GS, R, SS};
use super::desc::{null_seg, sys, v86_seg, Desc};
use super::far::NewStack;
use super::sel_err;
use super::task::Reason;
use iced_x86::Code;

/// Where an event comes from: decides the EXT bit, the gate DPL check and
/// the double-fault class.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Src {
    /// An exception raised by the processor.
    Exception,
    /// An external (hardware) interrupt.
    External,
    /// INT n.
    SoftInt,
    /// INT3 or INTO.
    SoftExc,
    /// INT1 (ICEBP): delivered like a hardware exception.
    Icebp,
}

/// An event to deliver.
#[derive(Debug, Clone, Copy)]
pub(super) struct Event {
    pub vector: u8,
    pub code: Option<u32>,
    pub src: Src,
}

impl Event {
    fn exception(e: Exc) -> Self {
        Event {
            vector: e.vector,
            code: e.code,
            src: Src::Exception,
        }
    }

    /// The EXT bit for error codes of faults during delivery (SDM §6.13).
    fn ext(&self) -> u32 {
        matches!(self.src, Src::Exception | Src::External | Src::Icebp) as u32
    }

    fn software(&self) -> bool {
        matches!(self.src, Src::SoftInt | Src::SoftExc)
    }

    /// The error code pushed for this event, if any.
    fn error_code(&self) -> Option<u32> {
        let has = matches!(self.vector, 8 | 10..=14 | 17 | 21);
        (self.src == Src::Exception && has).then(|| self.code.unwrap_or(0))
    }
}

/// Exception classes for double-fault detection (SDM vol. 3 table 6-4).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Class {
    Benign,
    Contributory,
    PageFault,
}

fn class(ev: &Event) -> Class {
    if ev.src != Src::Exception {
        return Class::Benign;
    }
    match ev.vector {
        vec::DE | vec::TS | vec::NP | vec::SS | vec::GP => Class::Contributory,
        vec::PF => Class::PageFault,
        _ => Class::Benign,
    }
}

impl Cpu {
    /// Delivers an exception raised by the instruction at `self.rip` (SDM
    /// vol. 3 §6.4–6.15).
    pub(crate) fn raise(&mut self, e: Exc) {
        self.last_exception = Some(e);
        self.deliver_event(Event::exception(e));
    }

    /// Delivers external interrupt `vector`; the CPU is between
    /// instructions at `self.rip`.
    pub(crate) fn external_interrupt(&mut self, vector: u8) {
        self.deliver_event(Event {
            vector,
            code: None,
            src: Src::External,
        });
    }

    /// Delivers `ev`, handling faults during delivery as double and triple
    /// faults (SDM vol. 3 table 6-5).
    fn deliver_event(&mut self, first: Event) {
        self.halted = false;
        self.stop_block = true;
        let mut ev = first;
        // Each step either succeeds, escalates toward a triple fault, or
        // turns into the nested fault; a bound stops pathological chains.
        for _ in 0..16 {
            self.delivering = Some(ev.vector);
            match self.deliver(ev) {
                Ok(None) => {
                    self.delivering = None;
                    return;
                }
                Ok(Some(e)) => {
                    // A fault in the context of a new task.
                    self.last_exception = Some(e);
                    ev = Event::exception(e);
                }
                Err(e2) => {
                    if ev.src == Src::Exception && ev.vector == vec::DF {
                        break;
                    }
                    let second = Event::exception(e2);
                    let (c1, c2) = (class(&ev), class(&second));
                    let double = (c1 == Class::Contributory && c2 == Class::Contributory)
                        || (c1 == Class::PageFault && c2 != Class::Benign);
                    ev = if double {
                        Event {
                            vector: vec::DF,
                            code: Some(0),
                            src: Src::Exception,
                        }
                    } else {
                        second
                    };
                }
            }
        }
        tracing::warn!(
            "triple fault at {:#x} (first exception {:?}, cr2 {:#x}): shutdown",
            self.rip,
            self.last_exception,
            self.cr2
        );
        let recent: Vec<String> = (0..16)
            .map(|i| format!("{:#x}", self.recent_blocks[(self.recent_pos + i) % 16]))
            .collect();
        tracing::debug!("last blocks before the triple fault: {}", recent.join(" "));
        self.delivering = None;
        self.shutdown = true;
    }

    /// Delivers one event. `Ok(Some(e))`: delivered through a task switch
    /// that then faulted with `e` in the new task.
    fn deliver(&mut self, ev: Event) -> R<Option<Exc>> {
        if !self.protected() {
            self.deliver_real(ev)?;
            Ok(None)
        } else if self.long_mode() {
            self.deliver_long(ev)?;
            Ok(None)
        } else {
            self.deliver_prot(ev)
        }
    }

    /// Real-address mode: through the IVT (SDM vol. 3 §20.1.4).
    fn deliver_real(&mut self, ev: Event) -> R {
        let v = ev.vector as u64;
        if v * 4 + 3 > self.idtr.limit as u64 {
            return Err(Exc::gp(0));
        }
        let ent = self.read_sys(self.idtr.base.wrapping_add(v * 4) & 0xffff_ffff, 4)?;
        let mut st = NewStack::new(&self.seg[SS], self.gpr[reg::RSP], false, 0);
        let f = self.flags.get();
        let cs = self.seg[CS].selector as u64;
        self.push_on(&mut st, 2, f)?;
        self.push_on(&mut st, 2, cs)?;
        self.push_on(&mut st, 2, self.rip)?;
        let ss = self.seg[SS];
        self.switch_stack(ss, &st);
        self.load_seg_real(CS, (ent >> 16) as u16);
        self.rip = ent & 0xffff;
        self.flags
            .set_masked(0, flags::IF | flags::TF | flags::AC | flags::RF);
        self.stop_block = true;
        Ok(())
    }

    /// Reads the SS:ESP for privilege `cpl` from the current 16- or 32-bit
    /// TSS (SDM vol. 3 §7.2.1).
    pub(super) fn tss_stack(&mut self, cpl: u8, ext: u32) -> R<(u16, u64)> {
        let tr = self.tr;
        let err = Exc::ts(sel_err(tr.selector) | ext);
        if tr.attr & 8 != 0 {
            let off = 4 + 8 * cpl as u64;
            if off + 5 > tr.limit as u64 {
                return Err(err);
            }
            let sp = self.read_sys(self.wrap_lin(tr.base.wrapping_add(off)), 4)?;
            let ss = self.read_sys(self.wrap_lin(tr.base.wrapping_add(off + 4)), 2)?;
            Ok((ss as u16, sp))
        } else {
            let off = 2 + 4 * cpl as u64;
            if off + 3 > tr.limit as u64 {
                return Err(err);
            }
            let sp = self.read_sys(self.wrap_lin(tr.base.wrapping_add(off)), 2)?;
            let ss = self.read_sys(self.wrap_lin(tr.base.wrapping_add(off + 2)), 2)?;
            Ok((ss as u16, sp))
        }
    }

    /// Reads the 64-bit value at `off` in the 64-bit TSS (RSPn, ISTn).
    pub(super) fn tss64_read(&mut self, off: u64, ext: u32) -> R<u64> {
        let tr = self.tr;
        if off + 7 > tr.limit as u64 {
            return Err(Exc::ts(sel_err(tr.selector) | ext));
        }
        self.read_sys(tr.base.wrapping_add(off), 8)
    }

    /// The interrupt-gate target code segment (checks of SDM vol. 2 INT).
    fn int_code_seg(&mut self, gate: &Desc, ext: u32) -> R<(u16, Desc)> {
        let csel = gate.gate_sel();
        if csel & 0xfffc == 0 {
            return Err(Exc::gp(ext));
        }
        let err = sel_err(csel) | ext;
        let mut cd = self.read_desc(csel)?.ok_or(Exc::gp(err))?;
        if !cd.code() || cd.dpl() > self.cpl {
            return Err(Exc::gp(err));
        }
        if self.long_mode() && (cd.raw & (1 << 53) == 0 || cd.l_and_d()) {
            return Err(Exc::gp(err));
        }
        if !cd.present() {
            return Err(Exc::np(err));
        }
        self.set_accessed(&mut cd)?;
        Ok((csel, cd))
    }

    /// Protected mode (and virtual-8086 mode): through the IDT with 8-byte
    /// gates (SDM vol. 3 §6.10–6.12).
    fn deliver_prot(&mut self, ev: Event) -> R<Option<Exc>> {
        let v = ev.vector as u64;
        let ext = ev.ext();
        let idt_err = ((v as u32) << 3) | 2 | ext;
        if v * 8 + 7 > self.idtr.limit as u64 {
            return Err(Exc::gp(idt_err));
        }
        let addr = self.wrap_lin(self.idtr.base.wrapping_add(v * 8));
        let gate = Desc {
            raw: self.read_sys(addr, 8)?,
            hi: 0,
            addr,
        };
        let t = gate.typ();
        let valid = !gate.s()
            && matches!(
                t,
                sys::TASK | sys::INT16 | sys::TRAP16 | sys::INT | sys::TRAP
            );
        if !valid {
            return Err(Exc::gp(idt_err));
        }
        if ev.software() && gate.dpl() < self.cpl {
            return Err(Exc::gp(idt_err));
        }
        if !gate.present() {
            return Err(Exc::np(idt_err));
        }
        if t == sys::TASK {
            let tsel = gate.gate_sel();
            let err = Exc::gp(sel_err(tsel) | ext);
            if tsel & 4 != 0 || tsel & 0xfffc == 0 {
                return Err(err);
            }
            let td = self.read_desc(tsel)?.ok_or(err)?;
            if td.s() || td.typ() != sys::TSS {
                return Err(err);
            }
            if !td.present() {
                return Err(Exc::np(sel_err(tsel) | ext));
            }
            return self.task_switch(tsel, td, Reason::Int, ev.error_code(), ext);
        }
        let (csel, cd) = self.int_code_seg(&gate, ext)?;
        let gate32 = t & 8 != 0;
        let psz: u8 = if gate32 { 4 } else { 2 };
        let off = if gate32 {
            gate.gate_off()
        } else {
            gate.gate_off() & 0xffff
        };
        let inner = !cd.conforming() && cd.dpl() < self.cpl;
        let from_v86 = self.v86();
        if from_v86 && (!inner || cd.dpl() != 0) {
            return Err(Exc::gp(sel_err(csel) | ext));
        }
        let ncpl = if inner { cd.dpl() } else { self.cpl };
        let cs = cd.seg((csel & !3) | ncpl as u16);
        if off > cs.limit as u64 {
            return Err(Exc::gp(ext));
        }
        let old_flags = self.flags.get();
        let old_cs = self.seg[CS].selector as u64;
        let old_ss = self.seg[SS].selector as u64;
        let old_sp = self.gpr[reg::RSP];
        let (ss, mut st) = if inner {
            let (ss_sel, sp) = self.tss_stack(ncpl, ext)?;
            let ss = self.check_tss_ss(ss_sel, ncpl, ext)?;
            let st = NewStack::new(&ss, sp, false, ncpl);
            (ss, st)
        } else {
            let ss = self.seg[SS];
            (ss, NewStack::new(&ss, old_sp, false, ncpl))
        };
        if from_v86 {
            for s in [GS, FS, DS, ES] {
                let sel = self.seg[s].selector as u64;
                self.push_on(&mut st, psz, sel)?;
            }
        }
        if inner {
            self.push_on(&mut st, psz, old_ss)?;
            self.push_on(&mut st, psz, old_sp)?;
        }
        self.push_on(&mut st, psz, old_flags)?;
        self.push_on(&mut st, psz, old_cs)?;
        self.push_on(&mut st, psz, self.rip)?;
        if let Some(code) = ev.error_code() {
            self.push_on(&mut st, psz, code as u64)?;
        }
        // Commit.
        self.switch_stack(ss, &st);
        if from_v86 {
            for s in [GS, FS, DS, ES] {
                self.seg[s] = null_seg(0);
            }
        }
        self.commit_cs(cs, ncpl, off);
        self.enter_handler_flags(t & 1 == 0);
        Ok(None)
    }

    /// Flag changes on entering a handler: TF, NT, RF, VM cleared; IF too
    /// through an interrupt gate.
    fn enter_handler_flags(&mut self, interrupt_gate: bool) {
        let mut clear = flags::TF | flags::NT | flags::RF | flags::VM;
        if interrupt_gate {
            clear |= flags::IF;
        }
        self.flags.set_masked(0, clear);
    }

    /// IA-32e mode: 16-byte gates, 64-bit pushes, IST (SDM vol. 3 §6.14).
    fn deliver_long(&mut self, ev: Event) -> R {
        let v = ev.vector as u64;
        let ext = ev.ext();
        let idt_err = ((v as u32) << 3) | 2 | ext;
        if v * 16 + 15 > self.idtr.limit as u64 {
            return Err(Exc::gp(idt_err));
        }
        let addr = self.idtr.base.wrapping_add(v * 16);
        let gate = Desc {
            raw: self.read_sys(addr, 8)?,
            hi: self.read_sys(addr.wrapping_add(8), 8)?,
            addr,
        };
        if gate.s() || !matches!(gate.typ(), sys::INT | sys::TRAP) {
            return Err(Exc::gp(idt_err));
        }
        if ev.software() && gate.dpl() < self.cpl {
            return Err(Exc::gp(idt_err));
        }
        if !gate.present() {
            return Err(Exc::np(idt_err));
        }
        let (csel, cd) = self.int_code_seg(&gate, ext)?;
        let off = gate.gate_off();
        if !canonical(off) {
            return Err(Exc::gp(ext));
        }
        let inner = !cd.conforming() && cd.dpl() < self.cpl;
        let ncpl = if inner { cd.dpl() } else { self.cpl };
        let ist = gate.ist();
        let rsp = if ist != 0 {
            self.tss64_read(0x24 + 8 * (ist - 1), ext)?
        } else if inner {
            self.tss64_read(4 + 8 * ncpl as u64, ext)?
        } else {
            self.gpr[reg::RSP]
        };
        let rsp = rsp & !0xf;
        if !canonical(rsp) {
            return Err(Exc::ss(ext));
        }
        let ss = if inner {
            null_seg(ncpl as u16)
        } else {
            self.seg[SS]
        };
        let mut st = NewStack::new(&ss, rsp, true, ncpl);
        let old_ss = self.seg[SS].selector as u64;
        let old_rsp = self.gpr[reg::RSP];
        let old_flags = self.flags.get();
        let old_cs = self.seg[CS].selector as u64;
        self.push_on(&mut st, 8, old_ss)?;
        self.push_on(&mut st, 8, old_rsp)?;
        self.push_on(&mut st, 8, old_flags)?;
        self.push_on(&mut st, 8, old_cs)?;
        self.push_on(&mut st, 8, self.rip)?;
        if let Some(code) = ev.error_code() {
            self.push_on(&mut st, 8, code as u64)?;
        }
        self.seg[SS] = ss;
        self.gpr[reg::RSP] = st.sp;
        let cs = cd.seg((csel & !3) | ncpl as u16);
        self.commit_cs(cs, ncpl, off);
        self.enter_handler_flags(gate.typ() == sys::INT);
        Ok(())
    }

    /// A software interrupt or INT3/INTO/INT1 executed by an instruction:
    /// `self.rip` already holds the return address.
    fn soft_interrupt(&mut self, vector: u8, src: Src) -> R {
        let ev = Event {
            vector,
            code: None,
            src,
        };
        self.halted = false;
        self.stop_block = true;
        if let Some(e) = self.deliver(ev)? {
            self.raise(e);
        }
        Ok(())
    }

    /// Checks the I/O permission for `size` bytes at `port` (SDM vol. 1
    /// §19.5): with CPL > IOPL or in virtual-8086 mode the TSS I/O bitmap
    /// decides.
    pub(crate) fn check_io(&mut self, port: u16, size: u8) -> R {
        if !self.protected() || (!self.v86() && self.cpl <= self.iopl()) {
            return Ok(());
        }
        let tr = self.tr;
        let t = tr.attr & attr::TYPE;
        if tr.attr & attr::S != 0 || (t != sys::TSS as u16 && t != sys::TSS_BUSY as u16) {
            return Err(Exc::gp(0));
        }
        if tr.limit < 0x67 {
            return Err(Exc::gp(0));
        }
        let map = self.read_sys(self.wrap_lin(tr.base.wrapping_add(0x66)), 2)?;
        let byte = map + (port as u64 >> 3);
        if byte + 1 > tr.limit as u64 {
            return Err(Exc::gp(0));
        }
        let bits = self.read_sys(self.wrap_lin(tr.base.wrapping_add(byte)), 2)?;
        let want = ((1u64 << size.min(4)) - 1) << (port & 7);
        if bits & want != 0 {
            return Err(Exc::gp(0));
        }
        Ok(())
    }

    /// Protected-mode flag update of IRET (SDM vol. 2 IRET): `cpl` is the
    /// privilege before the return.
    fn iret_flags(&mut self, v: u64, os: u8, cpl: u8, iopl: u8) {
        let mut mask = flags::ARITH | flags::TF | flags::DF | flags::NT;
        if os >= 4 {
            mask |= flags::RF | flags::AC | flags::ID;
        }
        if cpl <= iopl {
            mask |= flags::IF;
        }
        if cpl == 0 {
            mask |= flags::IOPL;
            if os >= 4 {
                mask |= flags::VIF | flags::VIP;
            }
        }
        if os == 2 {
            mask &= 0xffff;
        }
        self.flags.set_masked(v, mask);
    }

    /// IRET in protected mode or IA-32e mode (not a task return).
    fn iret_prot(&mut self, os: u8) -> R {
        let o = os as u64;
        let ip = self.peek(0, os)?;
        let sel = self.peek(o, 2)? as u16;
        let fl = self.peek(2 * o, os)?;
        let in64 = self.mode64();
        if !self.long_mode() && fl & flags::VM != 0 && self.cpl == 0 && os == 4 {
            return self.iret_to_v86(ip, sel, fl);
        }
        let cs = self.return_code_seg(sel)?;
        let rpl = (sel & 3) as u8;
        let code64 = self.is_64bit_cs(cs.attr);
        let rip = self.check_target(&cs, ip, 0)?;
        let (old_cpl, iopl) = (self.cpl, self.iopl());
        let fl = fl & !flags::VM;
        if rpl > self.cpl || in64 {
            // Pop SS:(E/R)SP too: always in 64-bit mode.
            let nsp = self.peek(3 * o, os)?;
            let nss_sel = self.peek(4 * o, 2)? as u16;
            let ss = self.return_stack_seg(nss_sel, rpl, code64)?;
            self.seg[SS] = ss;
            self.commit_cs(cs, rpl, rip);
            self.iret_flags(fl, os, old_cpl, iopl);
            let nsz = self.stack_size();
            self.set_gpr_sized(reg::RSP, nsz, nsp);
            if rpl > old_cpl {
                self.null_inaccessible_segs();
            }
        } else {
            let ssz = self.stack_size();
            let sp = self.gpr[reg::RSP].wrapping_add(3 * o);
            self.set_gpr_sized(reg::RSP, ssz, sp);
            self.commit_cs(cs, rpl, rip);
            self.iret_flags(fl, os, old_cpl, iopl);
        }
        Ok(())
    }

    /// IRET from ring 0 to virtual-8086 mode (SDM vol. 2 IRET,
    /// RETURN-TO-VIRTUAL-8086-MODE).
    fn iret_to_v86(&mut self, ip: u64, cs_sel: u16, fl: u64) -> R {
        let esp = self.peek(12, 4)?;
        let mut sels = [0u16; 5];
        for (i, s) in sels.iter_mut().enumerate() {
            *s = self.peek(16 + 4 * i as u64, 2)? as u16;
        }
        let [ss, es, ds, fs, gs] = sels;
        self.flags.set(fl);
        self.seg[CS] = v86_seg(cs_sel, true);
        self.seg[SS] = v86_seg(ss, false);
        self.seg[ES] = v86_seg(es, false);
        self.seg[DS] = v86_seg(ds, false);
        self.seg[FS] = v86_seg(fs, false);
        self.seg[GS] = v86_seg(gs, false);
        self.gpr[reg::RSP] = esp & 0xffff_ffff;
        self.cpl = 3;
        self.rip = ip & 0xffff;
        self.stop_block = true;
        Ok(())
    }
}

/// INT n.
pub(super) fn int_n(c: &mut Cpu, d: &Insn) -> R {
    if c.v86() && c.iopl() < 3 {
        return Err(Exc::gp(0));
    }
    c.soft_interrupt(d.ins.immediate8(), Src::SoftInt)
}

/// INT3.
pub(super) fn int3(c: &mut Cpu, _: &Insn) -> R {
    c.soft_interrupt(vec::BP, Src::SoftExc)
}

/// INTO: #OF if OF is set.
pub(super) fn into(c: &mut Cpu, _: &Insn) -> R {
    if c.mode64() {
        return Err(Exc::UD);
    }
    if c.flags.of() {
        c.soft_interrupt(vec::OF, Src::SoftExc)
    } else {
        Ok(())
    }
}

/// INT1 (ICEBP): a #DB trap delivered as a hardware event.
pub(super) fn int1(c: &mut Cpu, _: &Insn) -> R {
    c.soft_interrupt(vec::DB, Src::Icebp)
}

/// IRET/IRETD/IRETQ (SDM vol. 2 IRET).
pub(super) fn iret(c: &mut Cpu, d: &Insn) -> R {
    let os: u8 = match d.ins.code() {
        Code::Iretw => 2,
        Code::Iretq => 8,
        _ => 4,
    };
    c.stop_block = true;
    c.nmi_blocked = false;
    if !c.protected() {
        let ip = c.peek(0, os)?;
        let cs = c.peek(os as u64, 2)? as u16;
        let fl = c.peek(2 * os as u64, os)?;
        if ip & size_mask(os) > c.seg[CS].limit as u64 {
            return Err(Exc::gp(0));
        }
        let ssz = c.stack_size();
        let sp = c.gpr[reg::RSP].wrapping_add(3 * os as u64);
        c.set_gpr_sized(reg::RSP, ssz, sp);
        c.load_seg_real(CS, cs);
        c.rip = ip & size_mask(os);
        let mask = if os == 2 { 0xffff } else { 0x25_7fd5 };
        c.flags.set_masked(fl, mask);
        return Ok(());
    }
    if c.v86() {
        if c.iopl() < 3 {
            return Err(Exc::gp(0));
        }
        let ip = c.peek(0, os)?;
        let cs = c.peek(os as u64, 2)? as u16;
        let fl = c.peek(2 * os as u64, os)?;
        let sp = c.gpr[reg::RSP].wrapping_add(3 * os as u64);
        c.set_gpr_sized(reg::RSP, 2, sp);
        c.load_seg_real(CS, cs);
        c.rip = ip & 0xffff;
        let mut mask = flags::ARITH | flags::TF | flags::IF | flags::DF | flags::NT;
        if os == 4 {
            mask |= flags::RF | flags::AC | flags::ID;
        }
        c.flags.set_masked(fl, mask);
        return Ok(());
    }
    if c.flags.sys(flags::NT) {
        if c.long_mode() {
            return Err(Exc::gp(0));
        }
        return c.task_return();
    }
    c.iret_prot(os)
}
