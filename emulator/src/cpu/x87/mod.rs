//! The x87 FPU (SDM vol. 1 ch. 8; instruction pages in vol. 2).
//!
//! [`X87`] holds the architectural state. This module does everything that is
//! bookkeeping: the register stack (TOP, tags), stack overflow and underflow,
//! exception masking and the unmasked-exception state (ES, B, #MF at the next
//! waiting instruction), the instruction/data pointers, and the control
//! instructions. The arithmetic itself goes through [`ops::compute`], which on
//! x86-64 hosts runs the same instruction on the host FPU (bit-exact,
//! transcendentals included) and elsewhere uses an approximate software model
//! ([`soft`]).

#[macro_use]
#[cfg(target_arch = "x86_64")]
mod host;
mod ops;
#[cfg(any(test, not(target_arch = "x86_64")))]
mod soft;
#[cfg(test)]
mod tests;

use self::ops::{compute, HOp, F80};
use super::exec::{Handler, Insn};
use super::mmu::Access;
use super::{cr0, flags, vec, Cpu, Exc, CS, R};
use iced_x86::{Code, Instruction, OpKind, Register};

/// x87 FPU state (SDM vol. 1 §8.1). MMX registers alias the significands.
#[derive(Debug, Clone)]
pub struct X87 {
    /// Physical registers R0–R7 as 80-bit values: (significand bits 0–63, sign<<15 | exponent).
    pub regs: [(u64, u16); 8],
    /// TOP of stack (0–7), kept apart from the status word.
    pub top: u8,
    /// Control word (reset value 0x037f).
    pub cw: u16,
    /// Status word without the TOP field.
    pub sw: u16,
    /// Full tag word, 2 bits per physical register (11 = empty), reset 0xffff.
    pub tag: u16,
    /// Last instruction pointer (offset; linear address in real and virtual-8086 mode).
    pub fip: u64,
    /// Last instruction's code selector (always 0: FCS is deprecated, CPUID.(7,0):EBX bit 13).
    pub fcs: u16,
    /// Last data pointer (offset; linear address in real and virtual-8086 mode).
    pub fdp: u64,
    /// Last data selector (always 0: FDS is deprecated).
    pub fds: u16,
    /// Last opcode (11 bits).
    pub fop: u16,
}

impl Default for X87 {
    /// The state after FNINIT (SDM vol. 2 FINIT/FNINIT): control word 0x037f,
    /// everything else clear, all registers empty.
    fn default() -> Self {
        X87 {
            regs: [(0, 0); 8],
            top: 0,
            cw: 0x037f,
            sw: 0,
            tag: 0xffff,
            fip: 0,
            fcs: 0,
            fdp: 0,
            fds: 0,
            fop: 0,
        }
    }
}

/// Invalid operation.
const IE: u16 = 1 << 0;
/// Denormal operand.
const DE: u16 = 1 << 1;
/// Zero divide.
const ZE: u16 = 1 << 2;
/// Overflow.
const OE: u16 = 1 << 3;
/// Underflow.
const UE: u16 = 1 << 4;
/// Stack fault.
const SF: u16 = 1 << 6;
/// Exception summary.
const ES: u16 = 1 << 7;
/// Condition code bits.
const C0: u16 = 1 << 8;
const C1: u16 = 1 << 9;
const C2: u16 = 1 << 10;
const C3: u16 = 1 << 14;
/// Busy (mirrors ES).
const B: u16 = 1 << 15;
/// The six maskable exception flags.
const EXC: u16 = 0x3f;
/// The QNaN floating-point indefinite.
const INDEF: F80 = (0xc000_0000_0000_0000, 0xffff);

/// Tag (SDM vol. 1 §8.1.7) of a non-empty register holding `v`: 00 valid,
/// 01 zero, 10 special (NaN, infinity, denormal, unsupported).
fn tag_of(v: F80) -> u16 {
    let exp = v.1 & 0x7fff;
    if exp == 0 {
        if v.0 == 0 {
            1
        } else {
            2
        }
    } else if exp == 0x7fff || v.0 >> 63 == 0 {
        2
    } else {
        0
    }
}

impl X87 {
    /// The state after RESET (SDM vol. 3 table 9-1): control word 0x0040,
    /// all tags "zero" (0x5555), registers +0.0. (INIT leaves the FPU alone.)
    pub fn at_reset() -> Self {
        X87 {
            cw: 0x0040,
            tag: 0x5555,
            ..X87::default()
        }
    }

    /// Physical register number of ST(`i`).
    pub fn phys(&self, i: usize) -> usize {
        (self.top as usize + i) & 7
    }

    /// ST(`i`) (whatever it holds, empty or not).
    pub fn st(&self, i: usize) -> (u64, u16) {
        self.regs[self.phys(i)]
    }

    /// Writes ST(`i`) and tags it from its contents.
    pub fn set_st(&mut self, i: usize, v: (u64, u16)) {
        let p = self.phys(i);
        self.regs[p] = v;
        self.set_tag(p, tag_of(v));
    }

    /// True if ST(`i`) is empty.
    pub fn is_empty(&self, i: usize) -> bool {
        (self.tag >> (2 * self.phys(i))) & 3 == 3
    }

    fn set_tag(&mut self, p: usize, t: u16) {
        let sh = 2 * (p & 7);
        self.tag = (self.tag & !(3 << sh)) | ((t & 3) << sh);
    }

    /// Pushes `v` (no overflow check).
    pub fn push(&mut self, v: (u64, u16)) {
        self.top = self.top.wrapping_sub(1) & 7;
        self.set_st(0, v);
    }

    /// Pops: marks ST(0) empty and increments TOP.
    pub fn pop(&mut self) {
        self.set_tag(self.phys(0), 3);
        self.top = (self.top + 1) & 7;
    }

    /// The status word with TOP in bits 11–13.
    pub fn status(&self) -> u16 {
        (self.sw & !0x3800) | ((self.top as u16 & 7) << 11)
    }

    /// Loads the status word (TOP included); ES and B follow the flags and
    /// masks, as on FLDENV.
    pub fn set_status(&mut self, v: u16) {
        self.top = ((v >> 11) & 7) as u8;
        self.sw = v & !0x3800;
        self.update_es();
    }

    /// Loads the control word (reserved bits as the hardware keeps them).
    pub fn set_cw(&mut self, v: u16) {
        self.cw = (v & 0x1f3f) | 0x40;
        self.update_es();
    }

    /// The tag word as FSTENV/FSAVE store it: empty registers 11, the others
    /// classified from their contents.
    pub fn full_tag(&self) -> u16 {
        (0..8).fold(0, |t, p| {
            let v = if (self.tag >> (2 * p)) & 3 == 3 {
                3
            } else {
                tag_of(self.regs[p])
            };
            t | (v << (2 * p))
        })
    }

    /// Loads a tag word: only "empty" is taken from it, the rest is derived
    /// from the register contents (FLDENV, FRSTOR).
    pub fn set_full_tag(&mut self, t: u16) {
        for p in 0..8 {
            let v = if (t >> (2 * p)) & 3 == 3 {
                3
            } else {
                tag_of(self.regs[p])
            };
            self.set_tag(p, v);
        }
    }

    /// The abridged tag byte of FXSAVE: bit n set if physical register n is
    /// not empty.
    pub fn abridged_tag(&self) -> u8 {
        (0..8).fold(0, |t, p| {
            t | ((((self.tag >> (2 * p)) & 3 != 3) as u8) << p)
        })
    }

    /// Loads the abridged tag byte (FXRSTOR).
    pub fn set_abridged_tag(&mut self, t: u8) {
        self.set_full_tag((0..8).fold(0, |w, p| {
            w | (if t & (1 << p) != 0 { 0 } else { 3 } << (2 * p))
        }));
    }

    /// Sets ES and B from the exception flags and masks (SDM vol. 1 §8.1.3.1).
    fn update_es(&mut self) {
        if self.sw & !self.cw & EXC != 0 {
            self.sw |= ES | B;
        } else {
            self.sw &= !(ES | B);
        }
    }

    /// Raises exception flags `f`; true if one of them is unmasked.
    fn signal(&mut self, f: u16) -> bool {
        self.sw |= f & (EXC | SF);
        let unmasked = f & !self.cw & EXC != 0;
        if unmasked {
            self.sw |= ES | B;
        }
        unmasked
    }

    /// Sets the condition code bits in `mask` to those of `v`.
    fn set_cc(&mut self, mask: u16, v: u16) {
        self.sw = (self.sw & !mask) | (v & mask);
    }

    /// Stack underflow (SDM vol. 1 §8.5.1.1): IE and SF with C1 = 0. Returns
    /// true when masked (the instruction goes on with the indefinite).
    fn underflow(&mut self) -> bool {
        self.sw &= !C1;
        !self.signal(IE | SF)
    }

    /// Stack overflow: IE and SF with C1 = 1; true when masked.
    fn overflow(&mut self) -> bool {
        self.sw |= C1;
        !self.signal(IE | SF)
    }

    /// FNINIT.
    fn init(&mut self) {
        *self = X87 {
            regs: self.regs,
            ..X87::default()
        };
    }

    /// Takes the status word of an operation: its exception flags and the
    /// condition codes in `cc`. Returns (unmasked, completed): whether an
    /// unmasked exception was raised, and whether the result is to be
    /// written (no unmasked invalid-operation, denormal or zero-divide
    /// exception, SDM vol. 1 §8.5).
    fn take(&mut self, sw: u16, cc: u16) -> (bool, bool) {
        self.set_cc(cc, sw);
        let f = sw & EXC;
        let unmasked = self.signal(f);
        (unmasked, !blocked(self.cw, f))
    }
}

/// ST(i) index named by an instruction's register operands (the highest).
fn sti(d: &Insn) -> usize {
    let mut i = 0;
    for k in 0..d.ins.op_count() {
        if d.ins.op_kind(k) == OpKind::Register && d.ins.op_register(k).is_st() {
            i = i.max(d.ins.op_register(k) as usize - Register::ST0 as usize);
        }
    }
    i & 7
}

fn has_mem(d: &Insn) -> bool {
    (0..d.ins.op_count()).any(|k| d.ins.op_kind(k) == OpKind::Memory)
}

/// True in real-address and virtual-8086 mode (real-mode image layouts,
/// linear instruction and data pointers).
fn real_layout(c: &Cpu) -> bool {
    !c.protected() || c.v86()
}

/// #NM and pending-exception checks done before an x87 instruction
/// (SDM vol. 3 §2.5 CR0.EM/TS and table 2-2; vol. 1 §8.7): `waiting`
/// instructions raise #MF for a pending unmasked exception when CR0.NE is
/// set.
fn check(c: &mut Cpu, waiting: bool) -> R {
    if c.cr0 & (cr0::EM | cr0::TS) != 0 {
        return Err(Exc::NM);
    }
    if waiting {
        pending(c)?;
    }
    Ok(())
}

/// #MF for a pending unmasked exception (with CR0.NE = 0 the FERR#/IRQ 13
/// path of PC-compatible boards is not modelled: execution goes on as if
/// IGNNE# were asserted).
fn pending(c: &mut Cpu) -> R {
    if c.x87.sw & ES != 0 && c.cr0 & cr0::NE != 0 {
        return Err(Exc {
            vector: vec::MF,
            code: None,
        });
    }
    Ok(())
}

/// The 11-bit opcode (SDM vol. 1 §8.1.9): low 3 bits of the ESC byte and
/// the ModR/M byte, read back from the code.
fn opcode(c: &mut Cpu, d: &Insn) -> u16 {
    let user = c.user();
    let mut prev: Option<u8> = None;
    for k in 0..d.ins.len() as u64 {
        let lin = c.wrap_lin(c.lin(CS, d.ins.ip().wrapping_add(k) & c.ip_mask()));
        let Ok(b) = c.read_lin(lin, 1, Access::Exec, user) else {
            return 0;
        };
        let b = b as u8;
        if let Some(p) = prev {
            return (((p & 7) as u16) << 8) | b as u16;
        }
        if (0xd8..=0xdf).contains(&b) {
            prev = Some(b);
        }
    }
    0
}

/// Pointer bookkeeping after a non-control instruction (SDM vol. 1 §8.1.8–9):
/// FIP always; FOP and FDP only when the instruction raised an unmasked
/// exception (processors reporting CPUID.(EAX=7,ECX=0):EBX bit 6); FCS and FDS
/// read as 0 (EBX bit 13).
fn fin(c: &mut Cpu, d: &Insn, unmasked: bool) {
    let real = real_layout(c);
    let ip = d.ins.ip();
    c.x87.fip = if real {
        c.seg[CS].base.wrapping_add(ip) & 0xffff_ffff
    } else {
        ip
    };
    c.x87.fcs = 0;
    if unmasked {
        c.x87.fop = opcode(c, d);
        if has_mem(d) {
            let (s, off) = (c.mem_seg(d), c.ea(d));
            c.x87.fdp = if real {
                c.seg[s].base.wrapping_add(off) & 0xffff_ffff
            } else {
                off
            };
        }
        c.x87.fds = 0;
    }
}

/// Reads the `len`-byte memory operand.
fn read_op(c: &mut Cpu, d: &Insn, len: usize) -> R<[u8; 10]> {
    let (s, off) = (c.mem_seg(d), c.ea(d));
    let mut b = [0u8; 10];
    match len {
        0 => {}
        2 | 4 | 8 => {
            let v = c.read_mem(s, off, len as u8)?;
            b[..len].copy_from_slice(&v.to_le_bytes()[..len]);
        }
        _ => {
            let lo = c.read_mem(s, off, 8)?;
            let hi = c.read_mem(s, off.wrapping_add(8) & d.amask, 2)?;
            b[..8].copy_from_slice(&lo.to_le_bytes());
            b[8..].copy_from_slice(&(hi as u16).to_le_bytes());
        }
    }
    Ok(b)
}

/// Checks that `len` bytes at `seg:off` can be written, before writing any.
fn probe_write(c: &mut Cpu, s: usize, off: u64, len: u64, amask: u64) -> R {
    let user = c.user();
    for o in [off, off.wrapping_add(len - 1) & amask] {
        let lin = c.wrap_lin(c.lin(s, o));
        c.translate(lin, Access::Write, user)?;
    }
    Ok(())
}

/// Writes the `len`-byte memory operand.
fn write_op(c: &mut Cpu, d: &Insn, b: &[u8; 10], len: usize) -> R {
    let (s, off) = (c.mem_seg(d), c.ea(d));
    let mut q = [0u8; 8];
    match len {
        2 | 4 | 8 => {
            q[..len].copy_from_slice(&b[..len]);
            c.write_mem(s, off, len as u8, u64::from_le_bytes(q))
        }
        _ => {
            probe_write(c, s, off, 10, d.amask)?;
            q.copy_from_slice(&b[..8]);
            c.write_mem(s, off, 8, u64::from_le_bytes(q))?;
            let hi = u16::from_le_bytes([b[8], b[9]]) as u64;
            c.write_mem(s, off.wrapping_add(8) & d.amask, 2, hi)
        }
    }
}

fn f80_bytes(v: F80) -> [u8; 10] {
    let mut b = [0u8; 10];
    b[..8].copy_from_slice(&v.0.to_le_bytes());
    b[8..].copy_from_slice(&v.1.to_le_bytes());
    b
}

fn bytes_f80(b: &[u8]) -> F80 {
    let mut q = [0u8; 8];
    q.copy_from_slice(&b[..8]);
    (u64::from_le_bytes(q), u16::from_le_bytes([b[8], b[9]]))
}

const ZERO: F80 = (0, 0);
const NOMEM: [u8; 10] = [0; 10];

// ---------------------------------------------------------------------------
// Loads.

/// Pushes the result of a load (FLD m32/m64, FILD, FBLD, FLD1…): stack
/// overflow leaves the indefinite when masked (SDM vol. 2 FLD).
fn load(c: &mut Cpu, d: &Insn, op: HOp) -> R {
    check(c, true)?;
    let mem = read_op(c, d, op.mem_len())?;
    let x = &mut c.x87;
    let um = if !x.is_empty(7) {
        let masked = x.overflow();
        if masked {
            x.push(INDEF);
        }
        !masked
    } else {
        let o = compute(op, x.cw, ZERO, ZERO, &mem);
        let (um, _) = x.take(o.sw, C1);
        // An unmasked denormal-operand exception does not stop the load.
        if o.sw & !x.cw & IE == 0 {
            x.push(o.r0);
        }
        um
    };
    fin(c, d, um);
    Ok(())
}

/// FLD m80fp: an exact copy.
fn fld_m80(c: &mut Cpu, d: &Insn) -> R {
    check(c, true)?;
    let mem = read_op(c, d, 10)?;
    let um = push_value(c, bytes_f80(&mem), false);
    fin(c, d, um);
    Ok(())
}

/// Pushes `v` (or the indefinite if `src_empty`), with the stack checks.
fn push_value(c: &mut Cpu, v: F80, src_empty: bool) -> bool {
    let x = &mut c.x87;
    if src_empty {
        let masked = x.underflow();
        if masked {
            x.push(INDEF);
        }
        !masked
    } else if !x.is_empty(7) {
        let masked = x.overflow();
        if masked {
            x.push(INDEF);
        }
        !masked
    } else {
        x.sw &= !C1;
        x.push(v);
        false
    }
}

/// FLD ST(i).
fn fld_sti(c: &mut Cpu, d: &Insn) -> R {
    check(c, true)?;
    let i = sti(d);
    let (v, e) = (c.x87.st(i), c.x87.is_empty(i));
    let um = push_value(c, v, e);
    fin(c, d, um);
    Ok(())
}

// ---------------------------------------------------------------------------
// Stores.

/// Stores ST(0) to memory through `op` (FST m32/m64, FIST, FISTTP, FBSTP),
/// popping if `pop` (SDM vol. 2 FST/FIST/FISTTP/FBSTP). A masked stack
/// underflow stores the indefinite of the destination format.
fn store(c: &mut Cpu, d: &Insn, op: HOp, pop: bool) -> R {
    check(c, true)?;
    let len = op.mem_len();
    let cw = c.x87.cw;
    let um = if c.x87.is_empty(0) {
        let masked = cw & IE != 0;
        if masked {
            let o = compute(op, cw | EXC, INDEF, ZERO, &NOMEM);
            write_op(c, d, &o.mem, len)?;
        }
        let x = &mut c.x87;
        x.underflow();
        if masked && pop {
            x.pop();
        }
        !masked
    } else {
        let o = compute(op, cw, c.x87.st(0), ZERO, &NOMEM);
        let f = o.sw & EXC;
        let write = f & !cw & (IE | OE | UE) == 0;
        if write {
            write_op(c, d, &o.mem, len)?;
        }
        let x = &mut c.x87;
        let (um, _) = x.take(o.sw, C1);
        if write && pop {
            x.pop();
        }
        um
    };
    fin(c, d, um);
    Ok(())
}

/// FSTP m80fp: an exact copy.
fn fstp_m80(c: &mut Cpu, d: &Insn) -> R {
    check(c, true)?;
    let empty = c.x87.is_empty(0);
    let masked = c.x87.cw & IE != 0;
    if !empty || masked {
        let v = if empty { INDEF } else { c.x87.st(0) };
        write_op(c, d, &f80_bytes(v), 10)?;
    }
    let x = &mut c.x87;
    let um = if empty {
        !x.underflow()
    } else {
        x.sw &= !C1;
        false
    };
    if !um {
        x.pop();
    }
    fin(c, d, um);
    Ok(())
}

/// FST/FSTP ST(i).
fn fst_sti(c: &mut Cpu, d: &Insn, pop: bool) -> R {
    check(c, true)?;
    let i = sti(d);
    let x = &mut c.x87;
    let um = if x.is_empty(0) {
        let masked = x.underflow();
        if masked {
            x.set_st(i, INDEF);
        }
        !masked
    } else {
        x.sw &= !C1;
        let v = x.st(0);
        x.set_st(i, v);
        false
    };
    if !um && pop {
        x.pop();
    }
    fin(c, d, um);
    Ok(())
}

/// FSTP1 ST(i) (undocumented D9 D8+i): like FSTP ST(i), but an empty ST(0)
/// is no fault: nothing is stored and the stack is popped.
fn fstp1(c: &mut Cpu, d: &Insn) -> R {
    check(c, true)?;
    let i = sti(d);
    let x = &mut c.x87;
    if !x.is_empty(0) {
        let v = x.st(0);
        x.set_st(i, v);
    }
    x.sw &= !C1;
    x.pop();
    fin(c, d, false);
    Ok(())
}

// ---------------------------------------------------------------------------
// Arithmetic.

/// Two-operand register arithmetic: `op` is the host form computing
/// ST(0) op ST(1) (`dst_sti` false) or ST(1) op ST(0) into ST(1) (true);
/// the guest operands are ST(0) and ST(i).
fn arith_reg(c: &mut Cpu, d: &Insn, op: HOp, dst_sti: bool, pop: bool) -> R {
    check(c, true)?;
    let i = sti(d);
    let dst = if dst_sti { i } else { 0 };
    let x = &mut c.x87;
    let um = if x.is_empty(0) || x.is_empty(i) {
        let masked = x.underflow();
        if masked {
            x.set_st(dst, INDEF);
            if pop {
                x.pop();
            }
        }
        !masked
    } else {
        let o = compute(op, x.cw, x.st(0), x.st(i), &NOMEM);
        let (um, ok) = x.take(o.sw, C1);
        if ok {
            x.set_st(dst, if dst_sti { o.r1 } else { o.r0 });
            if pop {
                x.pop();
            }
        }
        um
    };
    fin(c, d, um);
    Ok(())
}

/// ST(0) = ST(0) op memory (FADD m32fp, FIADD m16int, …).
fn arith_mem(c: &mut Cpu, d: &Insn, op: HOp) -> R {
    check(c, true)?;
    let mem = read_op(c, d, op.mem_len())?;
    let x = &mut c.x87;
    let um = if x.is_empty(0) {
        let masked = x.underflow();
        if masked {
            x.set_st(0, INDEF);
        }
        !masked
    } else {
        let o = compute(op, x.cw, x.st(0), ZERO, &mem);
        let (um, ok) = x.take(o.sw, C1);
        if ok {
            x.set_st(0, o.r0);
        }
        um
    };
    fin(c, d, um);
    Ok(())
}

/// ST(0) = f(ST(0)) (FSQRT, FRNDINT, FSIN, FCOS, F2XM1). FSIN and FCOS set
/// C2 and leave ST(0) alone for an out-of-range operand.
fn unary(c: &mut Cpu, d: &Insn, op: HOp, cc: u16) -> R {
    check(c, true)?;
    let x = &mut c.x87;
    let um = if x.is_empty(0) {
        x.sw &= !(cc & C2);
        let masked = x.underflow();
        if masked {
            x.set_st(0, INDEF);
        }
        !masked
    } else {
        let o = compute(op, x.cw, x.st(0), ZERO, &NOMEM);
        let (um, ok) = x.take(o.sw, cc);
        if ok && o.sw & cc & C2 == 0 {
            x.set_st(0, o.r0);
        }
        um
    };
    fin(c, d, um);
    Ok(())
}

/// ST(0) = f(ST(0), ST(1)) (FPREM, FPREM1, FSCALE).
fn binary01(c: &mut Cpu, d: &Insn, op: HOp, cc: u16) -> R {
    check(c, true)?;
    let x = &mut c.x87;
    let um = if x.is_empty(0) || x.is_empty(1) {
        x.sw &= !(cc & C2);
        let masked = x.underflow();
        if masked {
            x.set_st(0, INDEF);
        }
        !masked
    } else {
        let o = compute(op, x.cw, x.st(0), x.st(1), &NOMEM);
        // Without a numeric result (NaN, or stopped by an unmasked
        // exception) FPREM only clears C1 and C2.
        let nan = o.r0.1 & 0x7fff == 0x7fff && o.r0.0 << 1 != 0;
        let cc = if blocked(x.cw, o.sw) || nan {
            cc & (C1 | C2)
        } else {
            cc
        };
        let (um, ok) = x.take(o.sw, cc);
        if ok {
            x.set_st(0, o.r0);
        }
        um
    };
    fin(c, d, um);
    Ok(())
}

/// True if an operation's status word `sw` shows an unmasked exception that
/// stops it from writing its result.
fn blocked(cw: u16, sw: u16) -> bool {
    sw & !cw & (IE | DE | ZE) != 0
}

/// ST(1) = f(ST(1), ST(0)) and pop (FPATAN, FYL2X, FYL2XP1).
fn binary_pop(c: &mut Cpu, d: &Insn, op: HOp) -> R {
    check(c, true)?;
    let x = &mut c.x87;
    let um = if x.is_empty(0) || x.is_empty(1) {
        let masked = x.underflow();
        if masked {
            x.set_st(1, INDEF);
            x.pop();
        }
        !masked
    } else {
        let o = compute(op, x.cw, x.st(0), x.st(1), &NOMEM);
        let (um, ok) = x.take(o.sw, C1);
        if ok {
            x.set_st(1, o.r0);
            x.pop();
        }
        um
    };
    fin(c, d, um);
    Ok(())
}

/// Replaces ST(0) and pushes a second result (FPTAN, FSINCOS, FXTRACT).
fn two_results(c: &mut Cpu, d: &Insn, op: HOp, cc: u16) -> R {
    check(c, true)?;
    let x = &mut c.x87;
    let um = if x.is_empty(0) || !x.is_empty(7) {
        x.sw &= !(cc & C2);
        let masked = if x.is_empty(0) {
            x.underflow()
        } else {
            x.overflow()
        };
        if masked {
            x.set_st(0, INDEF);
            x.push(INDEF);
        }
        !masked
    } else {
        let o = compute(op, x.cw, x.st(0), ZERO, &NOMEM);
        let (um, ok) = x.take(o.sw, cc);
        if ok && o.sw & cc & C2 == 0 {
            x.set_st(0, o.r1);
            x.push(o.r0);
        }
        um
    };
    fin(c, d, um);
    Ok(())
}

/// FCHS / FABS.
fn sign_op(c: &mut Cpu, d: &Insn, abs: bool) -> R {
    check(c, true)?;
    let x = &mut c.x87;
    let um = if x.is_empty(0) {
        let masked = x.underflow();
        if masked {
            x.set_st(0, INDEF);
        }
        !masked
    } else {
        let (m, se) = x.st(0);
        x.set_st(0, (m, if abs { se & 0x7fff } else { se ^ 0x8000 }));
        x.sw &= !C1;
        false
    };
    fin(c, d, um);
    Ok(())
}

// ---------------------------------------------------------------------------
// Comparisons.

/// What a comparison does with its result.
#[derive(Clone, Copy, PartialEq, Eq)]
enum CmpTo {
    /// C3, C2, C0 (FCOM, FUCOM, FICOM, FTST).
    Cc,
    /// ZF, PF, CF (FCOMI, FUCOMI).
    Eflags,
}

/// Compares ST(0) with ST(i) (`reg`), the memory operand, or zero, then pops
/// `pops` times (SDM vol. 2 FCOM/FUCOM/FICOM/FTST/FCOMI).
fn compare(c: &mut Cpu, d: &Insn, op: HOp, reg: bool, pops: u8, to: CmpTo) -> R {
    check(c, true)?;
    let mem = read_op(c, d, op.mem_len())?;
    let i = match (reg, d.ins.op_count()) {
        (false, _) => 0,
        (true, 0) => 1,
        (true, _) => sti(d),
    };
    let x = &mut c.x87;
    let (um, done, res) = if x.is_empty(0) || (reg && x.is_empty(i)) {
        let masked = x.underflow();
        (!masked, masked, C3 | C2 | C0)
    } else {
        let o = compute(op, x.cw, x.st(0), x.st(i), &mem);
        // FCOMI and FUCOMI leave the condition codes alone.
        let cc = if to == CmpTo::Cc {
            C0 | C1 | C2 | C3
        } else {
            0
        };
        let (um, ok) = x.take(o.sw, cc);
        (um, ok, o.sw & (C0 | C2 | C3))
    };
    match to {
        CmpTo::Cc => x.set_cc(C0 | C2 | C3, res),
        CmpTo::Eflags => {
            let mut f = 0;
            if res & C3 != 0 {
                f |= flags::ZF;
            }
            if res & C2 != 0 {
                f |= flags::PF;
            }
            if res & C0 != 0 {
                f |= flags::CF;
            }
            c.flags.set_masked(f, flags::ARITH);
        }
    }
    if done {
        for _ in 0..pops {
            c.x87.pop();
        }
    }
    fin(c, d, um);
    Ok(())
}

/// FXAM: classifies ST(0) into C3, C2, C0 with the sign in C1
/// (SDM vol. 2 FXAM).
fn fxam(c: &mut Cpu, d: &Insn) -> R {
    check(c, true)?;
    let x = &mut c.x87;
    let (m, se) = x.st(0);
    let exp = se & 0x7fff;
    let class = if x.is_empty(0) {
        C3 | C0
    } else if exp == 0 {
        if m == 0 {
            C3
        } else {
            C3 | C2
        }
    } else if m >> 63 == 0 {
        0 // unnormal, pseudo-NaN, pseudo-infinity: unsupported
    } else if exp == 0x7fff {
        if m << 1 == 0 {
            C2 | C0
        } else {
            C0
        }
    } else {
        C2
    };
    let sign = if se & 0x8000 != 0 { C1 } else { 0 };
    x.set_cc(C0 | C1 | C2 | C3, class | sign);
    fin(c, d, false);
    Ok(())
}

// ---------------------------------------------------------------------------
// Register moves and stack control.

/// FXCH ST(i): a masked underflow exchanges the indefinite for the empty
/// register(s).
fn fxch(c: &mut Cpu, d: &Insn) -> R {
    check(c, true)?;
    let i = sti(d);
    let x = &mut c.x87;
    let (e0, ei) = (x.is_empty(0), x.is_empty(i));
    let um = if e0 || ei {
        let masked = x.underflow();
        if masked {
            let a = if e0 { INDEF } else { x.st(0) };
            let b = if ei { INDEF } else { x.st(i) };
            x.set_st(0, b);
            x.set_st(i, a);
        }
        !masked
    } else {
        let (a, b) = (x.st(0), x.st(i));
        x.set_st(0, b);
        x.set_st(i, a);
        x.sw &= !C1;
        false
    };
    fin(c, d, um);
    Ok(())
}

/// FCMOVcc ST(0), ST(i).
fn fcmov(c: &mut Cpu, d: &Insn) -> R {
    check(c, true)?;
    let i = sti(d);
    let f = &c.flags;
    let cond = match d.ins.code() {
        Code::Fcmovb_st0_sti => f.cf(),
        Code::Fcmove_st0_sti => f.zf(),
        Code::Fcmovbe_st0_sti => f.cf() || f.zf(),
        Code::Fcmovu_st0_sti => f.pf(),
        Code::Fcmovnb_st0_sti => !f.cf(),
        Code::Fcmovne_st0_sti => !f.zf(),
        Code::Fcmovnbe_st0_sti => !f.cf() && !f.zf(),
        _ => !f.pf(),
    };
    let x = &mut c.x87;
    let um = if x.is_empty(0) || x.is_empty(i) {
        let masked = x.underflow();
        if masked {
            x.set_st(0, INDEF);
        }
        !masked
    } else {
        if cond {
            let v = x.st(i);
            x.set_st(0, v);
        }
        false
    };
    fin(c, d, um);
    Ok(())
}

/// FFREE ST(i) (and the undocumented FFREEP, which also pops).
fn ffree(c: &mut Cpu, d: &Insn, pop: bool) -> R {
    check(c, true)?;
    let x = &mut c.x87;
    let p = x.phys(sti(d));
    x.set_tag(p, 3);
    x.sw &= !C1;
    if pop {
        x.pop();
    }
    fin(c, d, false);
    Ok(())
}

/// FINCSTP / FDECSTP.
fn incdec(c: &mut Cpu, d: &Insn, inc: bool) -> R {
    check(c, true)?;
    let x = &mut c.x87;
    x.top = if inc {
        x.top + 1
    } else {
        x.top.wrapping_sub(1)
    } & 7;
    x.sw &= !C1;
    fin(c, d, false);
    Ok(())
}

/// FNOP. (The 8087/287 leftovers FENI, FDISI and FSETPM are no-ops since
/// the 387 and, like control instructions, leave the pointers alone.)
fn fnop(c: &mut Cpu, d: &Insn) -> R {
    check(c, true)?;
    fin(c, d, false);
    Ok(())
}

// ---------------------------------------------------------------------------
// Control instructions (they leave the pointers alone).

/// WAIT/FWAIT: #NM if CR0.MP and CR0.TS (SDM vol. 3 table 2-2), then #MF for
/// a pending unmasked exception.
fn fwait(c: &mut Cpu, _: &Insn) -> R {
    if c.cr0 & (cr0::MP | cr0::TS) == cr0::MP | cr0::TS {
        return Err(Exc::NM);
    }
    pending(c)
}

/// The WAIT folded into FINIT, FCLEX, FSTSW… (9B prefix).
fn wait_prefix(c: &mut Cpu, d: &Insn) -> R {
    if d.ins.code() != Code::INVALID && is_waiting_form(d.ins.code()) {
        fwait(c, d)?;
    }
    Ok(())
}

fn is_waiting_form(code: Code) -> bool {
    matches!(
        code,
        Code::Finit
            | Code::Fclex
            | Code::Fstsw_AX
            | Code::Fstsw_m2byte
            | Code::Fstcw_m2byte
            | Code::Fstenv_m14byte
            | Code::Fstenv_m28byte
            | Code::Fsave_m94byte
            | Code::Fsave_m108byte
            | Code::Feni
            | Code::Fdisi
            | Code::Fsetpm
    )
}

/// FINIT/FNINIT.
fn finit(c: &mut Cpu, d: &Insn) -> R {
    wait_prefix(c, d)?;
    check(c, false)?;
    c.x87.init();
    Ok(())
}

/// FCLEX/FNCLEX: clears the exception flags, SF, ES and B.
fn fclex(c: &mut Cpu, d: &Insn) -> R {
    wait_prefix(c, d)?;
    check(c, false)?;
    c.x87.sw &= !(EXC | SF | ES | B);
    Ok(())
}

/// FSTSW/FNSTSW to AX or memory.
fn fstsw(c: &mut Cpu, d: &Insn) -> R {
    wait_prefix(c, d)?;
    check(c, false)?;
    let v = c.x87.status() as u64;
    if has_mem(d) {
        let (s, off) = (c.mem_seg(d), c.ea(d));
        c.write_mem(s, off, 2, v)
    } else {
        c.set_gpr_sized(0, 2, v);
        Ok(())
    }
}

/// FSTCW/FNSTCW.
fn fstcw(c: &mut Cpu, d: &Insn) -> R {
    wait_prefix(c, d)?;
    check(c, false)?;
    let (s, off) = (c.mem_seg(d), c.ea(d));
    c.write_mem(s, off, 2, c.x87.cw as u64)
}

/// FLDCW: a newly unmasked pending exception sets ES (the #MF comes with the
/// next waiting instruction).
fn fldcw(c: &mut Cpu, d: &Insn) -> R {
    check(c, true)?;
    let (s, off) = (c.mem_seg(d), c.ea(d));
    let v = c.read_mem(s, off, 2)? as u16;
    c.x87.set_cw(v);
    Ok(())
}

/// Layout of FSTENV/FSAVE images (SDM vol. 1 §8.1.10, figures 8-9 to 8-12).
struct EnvFormat {
    /// 32-bit operand size (28-byte environment) rather than 16-bit (14).
    wide: bool,
    /// Real-address / virtual-8086 layout.
    real: bool,
}

impl EnvFormat {
    fn of(c: &Cpu, d: &Insn) -> Self {
        let wide = !matches!(
            d.ins.code(),
            Code::Fnstenv_m14byte
                | Code::Fstenv_m14byte
                | Code::Fldenv_m14byte
                | Code::Fnsave_m94byte
                | Code::Fsave_m94byte
                | Code::Frstor_m94byte
        );
        EnvFormat {
            wide,
            real: real_layout(c),
        }
    }

    fn len(&self) -> usize {
        if self.wide {
            28
        } else {
            14
        }
    }
}

/// The environment image.
fn env_image(x: &X87, f: &EnvFormat) -> [u8; 28] {
    let mut b = [0u8; 28];
    let (cw, sw, tw) = (x.cw as u32, x.status() as u32, x.full_tag() as u32);
    let (ip, dp, op) = (x.fip as u32, x.fdp as u32, (x.fop & 0x7ff) as u32);
    let words: [u32; 7] = match (f.wide, f.real) {
        (true, false) => [
            cw | 0xffff_0000,
            sw | 0xffff_0000,
            tw | 0xffff_0000,
            ip,
            x.fcs as u32 | (op << 16),
            dp,
            x.fds as u32 | 0xffff_0000,
        ],
        (true, true) => [
            cw | 0xffff_0000,
            sw | 0xffff_0000,
            tw | 0xffff_0000,
            (ip & 0xffff) | 0xffff_0000,
            ((ip >> 16) << 12) | op,
            (dp & 0xffff) | 0xffff_0000,
            (dp >> 16) << 12,
        ],
        (false, false) => [
            cw,
            sw,
            tw,
            ip & 0xffff,
            x.fcs as u32,
            dp & 0xffff,
            x.fds as u32,
        ],
        (false, true) => [
            cw,
            sw,
            tw,
            ip & 0xffff,
            (((ip >> 16) & 0xf) << 12) | op,
            dp & 0xffff,
            ((dp >> 16) & 0xf) << 12,
        ],
    };
    for (k, w) in words.iter().enumerate() {
        if f.wide {
            b[4 * k..4 * k + 4].copy_from_slice(&w.to_le_bytes());
        } else {
            b[2 * k..2 * k + 2].copy_from_slice(&(*w as u16).to_le_bytes());
        }
    }
    b
}

/// Loads an environment image.
fn load_env(x: &mut X87, b: &[u8], f: &EnvFormat) {
    let w = |k: usize| -> u32 {
        if f.wide {
            u32::from_le_bytes([b[4 * k], b[4 * k + 1], b[4 * k + 2], b[4 * k + 3]])
        } else {
            u16::from_le_bytes([b[2 * k], b[2 * k + 1]]) as u32
        }
    };
    x.cw = ((w(0) as u16) & 0x1f3f) | 0x40;
    let (ip, dp, op) = match (f.wide, f.real) {
        (true, false) => (w(3), w(5), w(4) >> 16),
        (true, true) => (
            (w(3) & 0xffff) | (((w(4) >> 12) & 0xffff) << 16),
            (w(5) & 0xffff) | (((w(6) >> 12) & 0xffff) << 16),
            w(4),
        ),
        (false, false) => (w(3), w(5), 0),
        (false, true) => (
            w(3) | ((w(4) >> 12) << 16),
            w(5) | ((w(6) >> 12) << 16),
            w(4),
        ),
    };
    x.fip = ip as u64;
    x.fdp = dp as u64;
    x.fop = (op & 0x7ff) as u16;
    x.fcs = 0;
    x.fds = 0;
    x.set_full_tag(w(2) as u16);
    x.set_status(w(1) as u16);
}

/// FSTENV/FNSTENV and FSAVE/FNSAVE: checks the whole area is writable, then
/// stores; FSTENV then masks all exceptions, FSAVE reinitializes the FPU.
fn fstenv(c: &mut Cpu, d: &Insn, save: bool) -> R {
    wait_prefix(c, d)?;
    check(c, false)?;
    let f = EnvFormat::of(c, d);
    let mut img = [0u8; 108];
    let n = f.len();
    img[..n].copy_from_slice(&env_image(&c.x87, &f)[..n]);
    let mut len = n;
    if save {
        for i in 0..8 {
            img[n + 10 * i..n + 10 * i + 10].copy_from_slice(&f80_bytes(c.x87.st(i)));
        }
        len += 80;
    }
    let (s, off) = (c.mem_seg(d), c.ea(d));
    probe_write(c, s, off, len as u64, d.amask)?;
    for k in (0..len).step_by(2) {
        let v = u16::from_le_bytes([img[k], img[k + 1]]) as u64;
        c.write_mem(s, off.wrapping_add(k as u64) & d.amask, 2, v)?;
    }
    if save {
        c.x87.init();
    } else {
        c.x87.cw |= EXC;
        c.x87.update_es();
    }
    Ok(())
}

/// FLDENV and FRSTOR: reads the whole image before changing anything.
fn fldenv(c: &mut Cpu, d: &Insn, rstor: bool) -> R {
    check(c, true)?;
    let f = EnvFormat::of(c, d);
    let n = f.len();
    let len = if rstor { n + 80 } else { n };
    let (s, off) = (c.mem_seg(d), c.ea(d));
    let mut img = [0u8; 108];
    for k in (0..len).step_by(2) {
        let v = c.read_mem(s, off.wrapping_add(k as u64) & d.amask, 2)?;
        img[k..k + 2].copy_from_slice(&(v as u16).to_le_bytes());
    }
    let x = &mut c.x87;
    if rstor {
        let top = (u16::from_le_bytes(if f.wide {
            [img[4], img[5]]
        } else {
            [img[2], img[3]]
        }) >> 11) as usize
            & 7;
        for i in 0..8 {
            x.regs[(top + i) & 7] = bytes_f80(&img[n + 10 * i..n + 10 * i + 10]);
        }
    }
    load_env(x, &img[..n], &f);
    Ok(())
}

// ---------------------------------------------------------------------------
// Dispatch.

pub(super) fn lookup(ins: &Instruction) -> Option<Handler> {
    use Code as K;
    use HOp as H;
    Some(match ins.code() {
        // Loads.
        K::Fld_m32fp => |c, d| load(c, d, H::LD_M32),
        K::Fld_m64fp => |c, d| load(c, d, H::LD_M64),
        K::Fld_m80fp => fld_m80,
        K::Fld_sti => fld_sti,
        K::Fild_m16int => |c, d| load(c, d, H::ILD_M16),
        K::Fild_m32int => |c, d| load(c, d, H::ILD_M32),
        K::Fild_m64int => |c, d| load(c, d, H::ILD_M64),
        K::Fbld_m80bcd => |c, d| load(c, d, H::BLD),
        K::Fld1 => |c, d| load(c, d, H::LD1),
        K::Fldl2t => |c, d| load(c, d, H::LDL2T),
        K::Fldl2e => |c, d| load(c, d, H::LDL2E),
        K::Fldpi => |c, d| load(c, d, H::LDPI),
        K::Fldlg2 => |c, d| load(c, d, H::LDLG2),
        K::Fldln2 => |c, d| load(c, d, H::LDLN2),
        K::Fldz => |c, d| load(c, d, H::LDZ),
        // Stores.
        K::Fst_m32fp => |c, d| store(c, d, H::ST_M32, false),
        K::Fst_m64fp => |c, d| store(c, d, H::ST_M64, false),
        K::Fstp_m32fp => |c, d| store(c, d, H::ST_M32, true),
        K::Fstp_m64fp => |c, d| store(c, d, H::ST_M64, true),
        K::Fstp_m80fp => fstp_m80,
        K::Fst_sti => |c, d| fst_sti(c, d, false),
        K::Fstp_sti | K::Fstp_sti_DFD0 | K::Fstp_sti_DFD8 => |c, d| fst_sti(c, d, true),
        K::Fstpnce_sti => fstp1,
        K::Fist_m16int => |c, d| store(c, d, H::IST_M16, false),
        K::Fist_m32int => |c, d| store(c, d, H::IST_M32, false),
        K::Fistp_m16int => |c, d| store(c, d, H::IST_M16, true),
        K::Fistp_m32int => |c, d| store(c, d, H::IST_M32, true),
        K::Fistp_m64int => |c, d| store(c, d, H::ISTP_M64, true),
        K::Fisttp_m16int => |c, d| store(c, d, H::ISTTP_M16, true),
        K::Fisttp_m32int => |c, d| store(c, d, H::ISTTP_M32, true),
        K::Fisttp_m64int => |c, d| store(c, d, H::ISTTP_M64, true),
        K::Fbstp_m80bcd => |c, d| store(c, d, H::BSTP, true),
        // Register arithmetic.
        K::Fadd_st0_sti => |c, d| arith_reg(c, d, H::ADD0, false, false),
        K::Fmul_st0_sti => |c, d| arith_reg(c, d, H::MUL0, false, false),
        K::Fsub_st0_sti => |c, d| arith_reg(c, d, H::SUB0, false, false),
        K::Fsubr_st0_sti => |c, d| arith_reg(c, d, H::SUBR0, false, false),
        K::Fdiv_st0_sti => |c, d| arith_reg(c, d, H::DIV0, false, false),
        K::Fdivr_st0_sti => |c, d| arith_reg(c, d, H::DIVR0, false, false),
        K::Fadd_sti_st0 => |c, d| arith_reg(c, d, H::ADD1, true, false),
        K::Fmul_sti_st0 => |c, d| arith_reg(c, d, H::MUL1, true, false),
        K::Fsub_sti_st0 => |c, d| arith_reg(c, d, H::SUB1, true, false),
        K::Fsubr_sti_st0 => |c, d| arith_reg(c, d, H::SUBR1, true, false),
        K::Fdiv_sti_st0 => |c, d| arith_reg(c, d, H::DIV1, true, false),
        K::Fdivr_sti_st0 => |c, d| arith_reg(c, d, H::DIVR1, true, false),
        K::Faddp_sti_st0 => |c, d| arith_reg(c, d, H::ADD1, true, true),
        K::Fmulp_sti_st0 => |c, d| arith_reg(c, d, H::MUL1, true, true),
        K::Fsubp_sti_st0 => |c, d| arith_reg(c, d, H::SUB1, true, true),
        K::Fsubrp_sti_st0 => |c, d| arith_reg(c, d, H::SUBR1, true, true),
        K::Fdivp_sti_st0 => |c, d| arith_reg(c, d, H::DIV1, true, true),
        K::Fdivrp_sti_st0 => |c, d| arith_reg(c, d, H::DIVR1, true, true),
        // Memory arithmetic.
        K::Fadd_m32fp => |c, d| arith_mem(c, d, H::ADD_M32),
        K::Fmul_m32fp => |c, d| arith_mem(c, d, H::MUL_M32),
        K::Fsub_m32fp => |c, d| arith_mem(c, d, H::SUB_M32),
        K::Fsubr_m32fp => |c, d| arith_mem(c, d, H::SUBR_M32),
        K::Fdiv_m32fp => |c, d| arith_mem(c, d, H::DIV_M32),
        K::Fdivr_m32fp => |c, d| arith_mem(c, d, H::DIVR_M32),
        K::Fadd_m64fp => |c, d| arith_mem(c, d, H::ADD_M64),
        K::Fmul_m64fp => |c, d| arith_mem(c, d, H::MUL_M64),
        K::Fsub_m64fp => |c, d| arith_mem(c, d, H::SUB_M64),
        K::Fsubr_m64fp => |c, d| arith_mem(c, d, H::SUBR_M64),
        K::Fdiv_m64fp => |c, d| arith_mem(c, d, H::DIV_M64),
        K::Fdivr_m64fp => |c, d| arith_mem(c, d, H::DIVR_M64),
        K::Fiadd_m16int => |c, d| arith_mem(c, d, H::IADD_M16),
        K::Fimul_m16int => |c, d| arith_mem(c, d, H::IMUL_M16),
        K::Fisub_m16int => |c, d| arith_mem(c, d, H::ISUB_M16),
        K::Fisubr_m16int => |c, d| arith_mem(c, d, H::ISUBR_M16),
        K::Fidiv_m16int => |c, d| arith_mem(c, d, H::IDIV_M16),
        K::Fidivr_m16int => |c, d| arith_mem(c, d, H::IDIVR_M16),
        K::Fiadd_m32int => |c, d| arith_mem(c, d, H::IADD_M32),
        K::Fimul_m32int => |c, d| arith_mem(c, d, H::IMUL_M32),
        K::Fisub_m32int => |c, d| arith_mem(c, d, H::ISUB_M32),
        K::Fisubr_m32int => |c, d| arith_mem(c, d, H::ISUBR_M32),
        K::Fidiv_m32int => |c, d| arith_mem(c, d, H::IDIV_M32),
        K::Fidivr_m32int => |c, d| arith_mem(c, d, H::IDIVR_M32),
        // Other arithmetic.
        K::Fsqrt => |c, d| unary(c, d, H::SQRT, C1),
        K::Frndint => |c, d| unary(c, d, H::RNDINT, C1),
        K::F2xm1 => |c, d| unary(c, d, H::F2XM1, C1),
        K::Fsin => |c, d| unary(c, d, H::SIN, C1 | C2),
        K::Fcos => |c, d| unary(c, d, H::COS, C1 | C2),
        K::Fsincos => |c, d| two_results(c, d, H::SINCOS, C1 | C2),
        K::Fptan => |c, d| two_results(c, d, H::PTAN, C1 | C2),
        K::Fxtract => |c, d| two_results(c, d, H::XTRACT, C1),
        K::Fprem => |c, d| binary01(c, d, H::PREM, C0 | C1 | C2 | C3),
        K::Fprem1 => |c, d| binary01(c, d, H::PREM1, C0 | C1 | C2 | C3),
        K::Fscale => |c, d| binary01(c, d, H::SCALE, C1),
        K::Fpatan => |c, d| binary_pop(c, d, H::PATAN),
        K::Fyl2x => |c, d| binary_pop(c, d, H::YL2X),
        K::Fyl2xp1 => |c, d| binary_pop(c, d, H::YL2XP1),
        K::Fchs => |c, d| sign_op(c, d, false),
        K::Fabs => |c, d| sign_op(c, d, true),
        // Comparisons.
        K::Fcom_st0_sti | K::Fcom_st0_sti_DCD0 => |c, d| compare(c, d, H::COM, true, 0, CmpTo::Cc),
        K::Fcomp_st0_sti | K::Fcomp_st0_sti_DCD8 | K::Fcomp_st0_sti_DED0 => {
            |c, d| compare(c, d, H::COM, true, 1, CmpTo::Cc)
        }
        K::Fcompp => |c, d| compare(c, d, H::COM, true, 2, CmpTo::Cc),
        K::Fucom_st0_sti => |c, d| compare(c, d, H::UCOM, true, 0, CmpTo::Cc),
        K::Fucomp_st0_sti => |c, d| compare(c, d, H::UCOM, true, 1, CmpTo::Cc),
        K::Fucompp => |c, d| compare(c, d, H::UCOM, true, 2, CmpTo::Cc),
        K::Fcom_m32fp => |c, d| compare(c, d, H::COM_M32, false, 0, CmpTo::Cc),
        K::Fcom_m64fp => |c, d| compare(c, d, H::COM_M64, false, 0, CmpTo::Cc),
        K::Fcomp_m32fp => |c, d| compare(c, d, H::COM_M32, false, 1, CmpTo::Cc),
        K::Fcomp_m64fp => |c, d| compare(c, d, H::COM_M64, false, 1, CmpTo::Cc),
        K::Ficom_m16int => |c, d| compare(c, d, H::ICOM_M16, false, 0, CmpTo::Cc),
        K::Ficom_m32int => |c, d| compare(c, d, H::ICOM_M32, false, 0, CmpTo::Cc),
        K::Ficomp_m16int => |c, d| compare(c, d, H::ICOM_M16, false, 1, CmpTo::Cc),
        K::Ficomp_m32int => |c, d| compare(c, d, H::ICOM_M32, false, 1, CmpTo::Cc),
        K::Ftst => |c, d| compare(c, d, H::TST, false, 0, CmpTo::Cc),
        K::Fcomi_st0_sti => |c, d| compare(c, d, H::COM, true, 0, CmpTo::Eflags),
        K::Fcomip_st0_sti => |c, d| compare(c, d, H::COM, true, 1, CmpTo::Eflags),
        K::Fucomi_st0_sti => |c, d| compare(c, d, H::UCOM, true, 0, CmpTo::Eflags),
        K::Fucomip_st0_sti => |c, d| compare(c, d, H::UCOM, true, 1, CmpTo::Eflags),
        K::Fxam => fxam,
        // Register moves and stack control.
        K::Fxch_st0_sti | K::Fxch_st0_sti_DDC8 | K::Fxch_st0_sti_DFC8 => fxch,
        K::Fcmovb_st0_sti
        | K::Fcmove_st0_sti
        | K::Fcmovbe_st0_sti
        | K::Fcmovu_st0_sti
        | K::Fcmovnb_st0_sti
        | K::Fcmovne_st0_sti
        | K::Fcmovnbe_st0_sti
        | K::Fcmovnu_st0_sti => fcmov,
        K::Ffree_sti => |c, d| ffree(c, d, false),
        K::Ffreep_sti => |c, d| ffree(c, d, true),
        K::Fincstp => |c, d| incdec(c, d, true),
        K::Fdecstp => |c, d| incdec(c, d, false),
        K::Fnop => fnop,
        K::Fneni | K::Fndisi | K::Fnsetpm | K::Feni | K::Fdisi | K::Fsetpm => |c, d| {
            wait_prefix(c, d)?;
            check(c, false)
        },
        // Control.
        K::Wait => fwait,
        K::Fninit | K::Finit => finit,
        K::Fnclex | K::Fclex => fclex,
        K::Fnstsw_AX | K::Fstsw_AX | K::Fnstsw_m2byte | K::Fstsw_m2byte => fstsw,
        K::Fnstcw_m2byte | K::Fstcw_m2byte => fstcw,
        K::Fldcw_m2byte => fldcw,
        K::Fnstenv_m14byte | K::Fnstenv_m28byte | K::Fstenv_m14byte | K::Fstenv_m28byte => {
            |c, d| fstenv(c, d, false)
        }
        K::Fnsave_m94byte | K::Fnsave_m108byte | K::Fsave_m94byte | K::Fsave_m108byte => {
            |c, d| fstenv(c, d, true)
        }
        K::Fldenv_m14byte | K::Fldenv_m28byte => |c, d| fldenv(c, d, false),
        K::Frstor_m94byte | K::Frstor_m108byte => |c, d| fldenv(c, d, true),
        _ => return None,
    })
}
