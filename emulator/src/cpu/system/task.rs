//! The hardware task switch with 32-bit TSSs (SDM vol. 3 ch. 7): task gates
//! in the IDT, far JMP/CALL to a TSS or task gate, IRET with NT.

use super::super::flags::{self};
use super::super::mmu::Access;
use super::super::{cr0, reg, Cpu, Exc, Segment, CS, R, SS};
use super::desc::{null_seg, sys, v86_seg, Check, Desc};
use super::far::NewStack;
use super::sel_err;

/// What started a task switch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Reason {
    /// JMP far.
    Jmp,
    /// CALL far: nests (back link, NT).
    Call,
    /// IRET with NT: returns to the back-linked task.
    Iret,
    /// Interrupt or exception through a task gate: nests.
    Int,
}

/// Register state read from a 32-bit TSS.
struct TssImage {
    cr3: u64,
    eip: u64,
    eflags: u64,
    gpr: [u64; 8],
    sel: [u16; 6],
    ldt: u16,
}

/// TSS field offsets.
const EIP: u64 = 0x20;
const EFLAGS: u64 = 0x24;
const GPRS: u64 = 0x28;
const SEGS: u64 = 0x48;
const LDT: u64 = 0x60;

impl Cpu {
    fn read_tss(&mut self, base: u64) -> R<TssImage> {
        let rd =
            |c: &mut Cpu, off: u64, size: u8| c.read_sys(c.wrap_lin(base.wrapping_add(off)), size);
        let cr3 = rd(self, 0x1c, 4)?;
        let eip = rd(self, EIP, 4)?;
        let eflags = rd(self, EFLAGS, 4)?;
        let mut gpr = [0; 8];
        for (i, g) in gpr.iter_mut().enumerate() {
            *g = rd(self, GPRS + 4 * i as u64, 4)?;
        }
        let mut sel = [0; 6];
        for (i, s) in sel.iter_mut().enumerate() {
            *s = rd(self, SEGS + 4 * i as u64, 2)? as u16;
        }
        let ldt = rd(self, LDT, 2)? as u16;
        Ok(TssImage {
            cr3,
            eip,
            eflags,
            gpr,
            sel,
            ldt,
        })
    }

    /// Switches to the task whose TSS is `sel`/`desc` (SDM vol. 3 §7.3).
    /// Faults before the switch commits are returned as `Err` (old task
    /// context); faults while loading the new task's segments come back as
    /// `Ok(Some(e))`, to be delivered in the new task. `err`: an error code
    /// to push on the new task's stack.
    pub(super) fn task_switch(
        &mut self,
        sel: u16,
        desc: Desc,
        reason: Reason,
        err: Option<u32>,
        ext: u32,
    ) -> R<Option<Exc>> {
        let e = sel_err(sel) | ext;
        let want = if reason == Reason::Iret {
            sys::TSS_BUSY
        } else {
            sys::TSS
        };
        if desc.s() || desc.typ() != want {
            return Err(if reason == Reason::Iret {
                Exc::ts(e)
            } else {
                Exc::gp(e)
            });
        }
        if !desc.present() {
            return Err(Exc::np(e));
        }
        let mut new = desc.seg(sel);
        if new.limit < 0x67 {
            return Err(Exc::ts(e));
        }
        let img = self.read_tss(new.base)?;
        let old = self.tr;
        if old.limit < 0x5f {
            return Err(Exc::ts(sel_err(old.selector) | ext));
        }
        // Make sure the old TSS is writable before changing anything.
        for off in [EIP, SEGS + 0x17] {
            let lin = self.wrap_lin(old.base.wrapping_add(off));
            self.translate(lin, Access::Write, false)?;
        }
        if matches!(reason, Reason::Call | Reason::Int) {
            let lin = self.wrap_lin(new.base);
            self.translate(lin, Access::Write, false)?;
        }
        if matches!(reason, Reason::Jmp | Reason::Iret) {
            self.set_tss_busy(old.selector, false)?;
        }
        let mut fl = self.flags.get();
        if reason == Reason::Iret {
            fl &= !flags::NT;
        }
        // Save the current task.
        let ob = old.base;
        let wr = |c: &mut Cpu, off: u64, size: u8, v: u64| {
            let lin = c.wrap_lin(ob.wrapping_add(off));
            c.write_sys(lin, size, v)
        };
        wr(self, EIP, 4, self.rip & 0xffff_ffff)?;
        wr(self, EFLAGS, 4, fl & 0xffff_ffff)?;
        for i in 0..8 {
            wr(self, GPRS + 4 * i as u64, 4, self.gpr[i] & 0xffff_ffff)?;
        }
        for i in 0..6 {
            wr(self, SEGS + 4 * i as u64, 2, self.seg[i].selector as u64)?;
        }
        if matches!(reason, Reason::Call | Reason::Int) {
            let lin = self.wrap_lin(new.base);
            self.write_sys(lin, 2, old.selector as u64)?;
        }
        if reason != Reason::Iret {
            self.set_tss_busy(sel, true)?;
        }
        // Load the new task's registers.
        new.attr |= 2;
        self.tr = new;
        self.cr0 |= cr0::TS;
        if self.paging() {
            self.cr3 = img.cr3;
            self.flush_tlb(false);
        }
        let mut nfl = img.eflags;
        if matches!(reason, Reason::Call | Reason::Int) {
            nfl |= flags::NT;
        }
        self.flags.set(nfl);
        self.rip = img.eip;
        for i in 0..8 {
            self.gpr[i] = img.gpr[i];
        }
        for i in 0..6 {
            self.seg[i] = null_seg(img.sel[i]);
        }
        self.ldtr = null_seg(img.ldt);
        self.stop_block = true;
        let v86 = nfl & flags::VM != 0;
        self.cpl = if v86 { 3 } else { (img.sel[CS] & 3) as u8 };
        if let Err(e) = self.load_task_segments(&img, v86) {
            return Ok(Some(e));
        }
        if let Some(code) = err {
            let mut st = NewStack::new(&self.seg[SS], self.gpr[reg::RSP], false, self.cpl);
            if let Err(e) = self.push_on(&mut st, 4, code as u64) {
                return Ok(Some(e));
            }
            let ss = self.seg[SS];
            self.switch_stack(ss, &st);
        }
        Ok(None)
    }

    /// Loads LDTR and the segment registers of a new task (SDM vol. 3
    /// §7.3 step 12; faults are #TS/#NP/#SS in the new task).
    fn load_task_segments(&mut self, img: &TssImage, v86: bool) -> R {
        let ldt = img.ldt;
        if ldt & 0xfffc != 0 {
            let e = Exc::ts(sel_err(ldt));
            if ldt & 4 != 0 {
                return Err(e);
            }
            let d = self.read_sys_desc(ldt)?.ok_or(e)?;
            if d.s() || d.typ() != sys::LDT || !d.present() {
                return Err(e);
            }
            self.ldtr = d.seg(ldt);
        }
        if v86 {
            for (i, &s) in img.sel.iter().enumerate() {
                self.seg[i] = v86_seg(s, i == CS);
            }
            self.rip &= 0xffff;
            return Ok(());
        }
        let cpl = self.cpl;
        // CS.
        let csel = img.sel[CS];
        let e = sel_err(csel);
        if csel & 0xfffc == 0 {
            return Err(Exc::ts(e));
        }
        let mut cd = self.read_desc(csel)?.ok_or(Exc::ts(e))?;
        if !cd.code()
            || (cd.conforming() && cd.dpl() > cpl)
            || (!cd.conforming() && cd.dpl() != cpl)
        {
            return Err(Exc::ts(e));
        }
        if !cd.present() {
            return Err(Exc::np(e));
        }
        self.set_accessed(&mut cd)?;
        let cs: Segment = cd.seg(csel);
        self.seg[CS] = cs;
        let ss = self.check_seg(SS, img.sel[SS], cpl, false, Check::Task)?;
        self.seg[SS] = ss;
        for s in [0, 3, 4, 5] {
            let seg = self.check_seg(s, img.sel[s], cpl, false, Check::Task)?;
            self.seg[s] = seg;
        }
        if self.rip > cs.limit as u64 {
            return Err(Exc::gp(0));
        }
        Ok(())
    }

    /// IRET with NT set: return to the task in the back link.
    pub(super) fn task_return(&mut self) -> R {
        let link = self.read_sys(self.tr.base & 0xffff_ffff, 2)? as u16;
        let e = Exc::ts(sel_err(link));
        if link & 4 != 0 || link & 0xfffc == 0 {
            return Err(e);
        }
        let d = self.read_desc(link)?.ok_or(e)?;
        if let Some(x) = self.task_switch(link, d, Reason::Iret, None, 0)? {
            self.raise(x);
        }
        Ok(())
    }
}
