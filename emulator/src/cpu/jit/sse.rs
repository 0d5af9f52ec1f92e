//! SSE/SSE2 integer and move instructions in translated code (SDM vol. 2),
//! the ones C libraries' string and memory functions are made of: 128-bit
//! moves, bitwise logic, lane-wise add/subtract/compare/min/max, byte masks,
//! shuffles and GPR↔XMM moves, on XMM registers only (MMX forms go to the
//! interpreter).
//!
//! Each runs as the interpreter does or leaves the block for it: the
//! checks of SDM vol. 3 Table 13-1 (#UD for CR0.EM or !CR4.OSFXSR, #NM for
//! CR0.TS) are made at run time before the first such instruction of a
//! straight run, and a misaligned operand of an instruction that needs 16-byte
//! alignment (#GP) leaves the block before it, as does any access the TLB
//! does not map.

use super::{is_imm, is_mem, Tx, XMM};
use crate::cpu::exec::Insn;
use crate::cpu::{cr0, cr4};
use cranelift_codegen::ir::{
    condcodes::IntCC, types, ConstantData, Endianness, InstBuilder, MemFlagsData, Type, Value,
};
use iced_x86::{Mnemonic as M, OpKind, Register};

/// Offset in `Cpu` of XMM register `r`.
fn xmm_off(r: Register) -> i32 {
    XMM + 16 * (r as i32 - Register::XMM0 as i32)
}

fn is_xmm(d: &Insn, i: u32) -> bool {
    d.ins.op_kind(i) == OpKind::Register && d.ins.op_register(i).is_xmm()
}

fn xmm_or_mem(d: &Insn, i: u32) -> bool {
    is_xmm(d, i) || (is_mem(d.ins.op_kind(i)) && d.ins.memory_size().size() == 16)
}

/// The lane type of a lane-wise operation.
fn lanes(m: M) -> Type {
    use M::*;
    match m {
        Paddb | Psubb | Pcmpeqb | Pcmpgtb | Pminub | Pmaxub => types::I8X16,
        Paddw | Psubw | Pcmpeqw | Pcmpgtw | Pminsw | Pmaxsw => types::I16X8,
        Paddd | Psubd | Pcmpeqd | Pcmpgtd => types::I32X4,
        _ => types::I64X2,
    }
}

/// Whether the translator emits SSE instruction `d` itself.
pub(super) fn native(d: &Insn) -> bool {
    use M::*;
    let ins = &d.ins;
    if ins.has_lock_prefix() || ins.encoding() != iced_x86::EncodingKind::Legacy {
        return false;
    }
    let n = ins.op_count();
    match ins.mnemonic() {
        Movdqa | Movdqu | Movaps | Movups | Movapd | Movupd => {
            n == 2 && ((is_xmm(d, 0) && xmm_or_mem(d, 1)) || (xmm_or_mem(d, 0) && is_xmm(d, 1)))
        }
        Pxor | Por | Pand | Pandn | Xorps | Xorpd | Orps | Orpd | Andps | Andpd | Andnps
        | Andnpd | Paddb | Paddw | Paddd | Paddq | Psubb | Psubw | Psubd | Psubq | Pcmpeqb
        | Pcmpeqw | Pcmpeqd | Pcmpgtb | Pcmpgtw | Pcmpgtd | Pminub | Pmaxub | Pminsw | Pmaxsw
        | Punpcklbw | Punpcklwd | Punpckldq | Punpcklqdq | Punpckhbw | Punpckhwd | Punpckhdq
        | Punpckhqdq => n == 2 && is_xmm(d, 0) && xmm_or_mem(d, 1),
        Pshufd => n == 3 && is_xmm(d, 0) && xmm_or_mem(d, 1) && is_imm(ins.op2_kind()),
        Pslldq | Psrldq => n == 2 && is_xmm(d, 0) && is_imm(ins.op1_kind()),
        Pmovmskb => n == 2 && super::gpr_op(d, 0) && is_xmm(d, 1),
        Movd | Movq => {
            n == 2
                && ((is_xmm(d, 0) && super::gpr_op(d, 1))
                    || (super::gpr_op(d, 0) && is_xmm(d, 1))
                    || (ins.mnemonic() == Movq && is_xmm(d, 0) && is_xmm(d, 1)))
        }
        _ => false,
    }
}

/// Needs its 16-byte memory operand aligned (SDM vol. 1 §11.4.1: every
/// legacy SSE instruction but the unaligned moves).
fn needs_alignment(m: M) -> bool {
    !matches!(m, M::Movdqu | M::Movups | M::Movupd)
}

impl Tx<'_> {
    /// Leaves for the interpreter before the current instruction unless
    /// SSE instructions may run (once per straight run of them).
    fn sse_guard(&mut self, ip: u64) {
        if self.sse_ok {
            return;
        }
        let t = MemFlagsData::trusted();
        let c0 = self.b.ins().load(types::I64, t, self.cpu, super::CR0);
        let c4 = self.b.ins().load(types::I64, t, self.cpu, super::CR4);
        let bad0 = self.b.ins().band_imm_s(c0, (cr0::EM | cr0::TS) as i64);
        let ok4 = self.b.ins().band_imm_s(c4, cr4::OSFXSR as i64);
        let bad4 = self.b.ins().icmp_imm_s(IntCC::Equal, ok4, 0);
        let bad0 = self.b.ins().icmp_imm_s(IntCC::NotEqual, bad0, 0);
        let bad = self.b.ins().bor(bad0, bad4);
        self.exit_if(bad, ip);
        self.sse_ok = true;
    }

    fn xmm_get(&mut self, r: Register, ty: Type) -> Value {
        let f = MemFlagsData::new().with_notrap();
        self.b.ins().load(ty, f, self.cpu, xmm_off(r))
    }

    fn xmm_set(&mut self, r: Register, v: Value) {
        let f = MemFlagsData::new().with_notrap();
        self.b.ins().store(f, v, self.cpu, xmm_off(r));
    }

    /// Leaves before the instruction at `ip` unless `lin` is 16-byte
    /// aligned.
    fn align16(&mut self, lin: Value, ip: u64) {
        let low = self.b.ins().band_imm_s(lin, 15);
        self.exit_if(low, ip);
    }

    /// Operand `i` (an XMM register or 16 bytes of memory) as `ty`.
    fn xmm_src(&mut self, d: &Insn, i: u32, ty: Type) -> Value {
        if is_xmm(d, i) {
            return self.xmm_get(d.ins.op_register(i), ty);
        }
        let lin = self.mem(d);
        if needs_alignment(d.ins.mnemonic()) {
            self.align16(lin, d.ins.ip());
        }
        let host = self.host_address(self.tlb_r, lin, 16, d.ins.ip());
        let v = self
            .b
            .ins()
            .load(types::I8X16, MemFlagsData::new().with_notrap(), host, 0);
        self.cast(v, ty)
    }

    fn cast(&mut self, v: Value, ty: Type) -> Value {
        if self.b.func.dfg.value_type(v) == ty {
            v
        } else {
            let f = MemFlagsData::new().with_endianness(Endianness::Little);
            self.b.ins().bitcast(ty, f, v)
        }
    }

    /// A 16-byte shuffle of `a` (indices 0–15) and `b` (16–31).
    fn shuffle(&mut self, a: Value, b: Value, idx: [u8; 16]) -> Value {
        let a = self.cast(a, types::I8X16);
        let b = self.cast(b, types::I8X16);
        let imm = self
            .b
            .func
            .dfg
            .immediates
            .push(ConstantData::from(idx.to_vec()));
        self.b.ins().shuffle(a, b, imm)
    }

    /// Emits SSE instruction `d` (see [`native`]).
    pub(super) fn sse(&mut self, d: &Insn) {
        use M::*;
        let ins = &d.ins;
        let ip = ins.ip();
        self.sse_guard(ip);
        let m = ins.mnemonic();
        match m {
            Movdqa | Movdqu | Movaps | Movups | Movapd | Movupd => {
                if is_xmm(d, 0) {
                    let v = self.xmm_src(d, 1, types::I8X16);
                    self.xmm_set(ins.op0_register(), v);
                } else {
                    let lin = self.mem(d);
                    if needs_alignment(m) {
                        self.align16(lin, ip);
                    }
                    let host = self.host_address(self.tlb_w, lin, 16, ip);
                    let v = self.xmm_get(ins.op1_register(), types::I8X16);
                    self.b
                        .ins()
                        .store(MemFlagsData::new().with_notrap(), v, host, 0);
                }
            }
            Pxor | Por | Pand | Pandn | Xorps | Xorpd | Orps | Orpd | Andps | Andpd | Andnps
            | Andnpd => {
                let ty = types::I64X2;
                let s = self.xmm_src(d, 1, ty);
                let r = ins.op0_register();
                let a = self.xmm_get(r, ty);
                let v = match m {
                    Pxor | Xorps | Xorpd => self.b.ins().bxor(a, s),
                    Por | Orps | Orpd => self.b.ins().bor(a, s),
                    Pand | Andps | Andpd => self.b.ins().band(a, s),
                    _ => self.b.ins().band_not(s, a),
                };
                self.xmm_set(r, v);
            }
            Paddb | Paddw | Paddd | Paddq | Psubb | Psubw | Psubd | Psubq | Pcmpeqb | Pcmpeqw
            | Pcmpeqd | Pcmpgtb | Pcmpgtw | Pcmpgtd | Pminub | Pmaxub | Pminsw | Pmaxsw => {
                let ty = lanes(m);
                let s = self.xmm_src(d, 1, ty);
                let r = ins.op0_register();
                let a = self.xmm_get(r, ty);
                let v = match m {
                    Paddb | Paddw | Paddd | Paddq => self.b.ins().iadd(a, s),
                    Psubb | Psubw | Psubd | Psubq => self.b.ins().isub(a, s),
                    Pcmpeqb | Pcmpeqw | Pcmpeqd => self.b.ins().icmp(IntCC::Equal, a, s),
                    Pcmpgtb | Pcmpgtw | Pcmpgtd => {
                        self.b.ins().icmp(IntCC::SignedGreaterThan, a, s)
                    }
                    Pminub => self.b.ins().umin(a, s),
                    Pmaxub => self.b.ins().umax(a, s),
                    Pminsw => self.b.ins().smin(a, s),
                    _ => self.b.ins().smax(a, s),
                };
                self.xmm_set(r, v);
            }
            Punpcklbw | Punpcklwd | Punpckldq | Punpcklqdq | Punpckhbw | Punpckhwd | Punpckhdq
            | Punpckhqdq => {
                let s = self.xmm_src(d, 1, types::I8X16);
                let r = ins.op0_register();
                let a = self.xmm_get(r, types::I8X16);
                let w = match m {
                    Punpcklbw | Punpckhbw => 1,
                    Punpcklwd | Punpckhwd => 2,
                    Punpckldq | Punpckhdq => 4,
                    _ => 8,
                };
                let high = matches!(m, Punpckhbw | Punpckhwd | Punpckhdq | Punpckhqdq);
                let from = if high { 8 } else { 0 };
                // Elements of the destination and the source alternate.
                let idx: [u8; 16] = std::array::from_fn(|k| {
                    let (e, byte) = (k / w, k % w);
                    let src = e % 2 == 1;
                    let at = from + (e / 2) * w + byte;
                    (at + if src { 16 } else { 0 }) as u8
                });
                let v = self.shuffle(a, s, idx);
                self.xmm_set(r, v);
            }
            Pshufd => {
                let s = self.xmm_src(d, 1, types::I8X16);
                let imm = ins.immediate(2) as usize;
                let idx: [u8; 16] = std::array::from_fn(|k| {
                    let sel = (imm >> (2 * (k / 4))) & 3;
                    (sel * 4 + k % 4) as u8
                });
                let v = self.shuffle(s, s, idx);
                self.xmm_set(ins.op0_register(), v);
            }
            Pslldq | Psrldq => {
                let r = ins.op0_register();
                let a = self.xmm_get(r, types::I8X16);
                let z = self.b.ins().iconst(types::I64, 0);
                let z = self.b.ins().splat(types::I64X2, z);
                let n = (ins.immediate(1) as usize).min(16);
                // Index 16 reads the zero vector.
                let idx: [u8; 16] = std::array::from_fn(|k| {
                    if m == Pslldq {
                        if k >= n {
                            (k - n) as u8
                        } else {
                            16
                        }
                    } else if k + n < 16 {
                        (k + n) as u8
                    } else {
                        16
                    }
                });
                let v = self.shuffle(a, z, idx);
                self.xmm_set(r, v);
            }
            Pmovmskb => {
                let v = self.xmm_get(ins.op1_register(), types::I8X16);
                let bits = self.b.ins().vhigh_bits(types::I64, v);
                self.set_reg(ins.op0_register(), bits);
            }
            _ => {
                // MOVD/MOVQ between a GPR and an XMM register, or MOVQ
                // between XMM registers (the upper half cleared).
                if is_xmm(d, 0) {
                    let (ty, v) = if is_xmm(d, 1) {
                        let v = self.xmm_get(ins.op1_register(), types::I64X2);
                        (types::I64X2, self.b.ins().extractlane(v, 0))
                    } else {
                        let r = ins.op1_register();
                        let v = self.reg(r);
                        if r.size() == 8 {
                            (types::I64X2, v)
                        } else {
                            (types::I32X4, self.b.ins().ireduce(types::I32, v))
                        }
                    };
                    let lane = if ty == types::I64X2 {
                        types::I64
                    } else {
                        types::I32
                    };
                    let z = self.b.ins().iconst(lane, 0);
                    let z = self.b.ins().splat(ty, z);
                    let v = self.b.ins().insertlane(z, v, 0);
                    self.xmm_set(ins.op0_register(), v);
                } else {
                    let r = ins.op0_register();
                    let v = if r.size() == 8 {
                        let x = self.xmm_get(ins.op1_register(), types::I64X2);
                        self.b.ins().extractlane(x, 0)
                    } else {
                        let x = self.xmm_get(ins.op1_register(), types::I32X4);
                        let l = self.b.ins().extractlane(x, 0);
                        self.b.ins().uextend(types::I64, l)
                    };
                    self.set_reg(r, v);
                }
            }
        }
    }
}
