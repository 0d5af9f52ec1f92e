//! Core integer instructions: moves, arithmetic and logic, stack, near
//! branches, flags, I/O (SDM vol. 2).

use super::exec::{Handler, Insn};
use super::flags::{self, sign_bit, size_mask, CF, DF, IF, IOPL};
use super::{reg, Cpu, Exc, R};
use iced_x86::{Instruction, Mnemonic as M, OpKind};

/// Jcc, SETcc and CMOVcc, in condition-code order (Jcc's low nibble).
pub(crate) const JCC: [M; 16] = [
    M::Jo,
    M::Jno,
    M::Jb,
    M::Jae,
    M::Je,
    M::Jne,
    M::Jbe,
    M::Ja,
    M::Js,
    M::Jns,
    M::Jp,
    M::Jnp,
    M::Jl,
    M::Jge,
    M::Jle,
    M::Jg,
];
/// SETcc, as [`JCC`].
pub(crate) const SETCC: [M; 16] = [
    M::Seto,
    M::Setno,
    M::Setb,
    M::Setae,
    M::Sete,
    M::Setne,
    M::Setbe,
    M::Seta,
    M::Sets,
    M::Setns,
    M::Setp,
    M::Setnp,
    M::Setl,
    M::Setge,
    M::Setle,
    M::Setg,
];
/// CMOVcc, as [`JCC`].
pub(crate) const CMOVCC: [M; 16] = [
    M::Cmovo,
    M::Cmovno,
    M::Cmovb,
    M::Cmovae,
    M::Cmove,
    M::Cmovne,
    M::Cmovbe,
    M::Cmova,
    M::Cmovs,
    M::Cmovns,
    M::Cmovp,
    M::Cmovnp,
    M::Cmovl,
    M::Cmovge,
    M::Cmovle,
    M::Cmovg,
];

pub(super) fn lookup(ins: &Instruction) -> Option<Handler> {
    Some(match ins.mnemonic() {
        M::Mov => {
            // Moves to/from segment, control and debug registers are system
            // instructions.
            for i in 0..2 {
                if ins.op_kind(i) == OpKind::Register {
                    let r = ins.op_register(i);
                    if r.is_segment_register() || r.is_cr() || r.is_dr() || r.is_tr() {
                        return None;
                    }
                }
            }
            mov
        }
        M::Movzx => movzx,
        M::Movsx | M::Movsxd => movsx,
        M::Lea => lea,
        M::Add => add,
        M::Adc => adc,
        M::Sub => sub,
        M::Sbb => sbb,
        M::Cmp => cmp,
        M::And => and,
        M::Or => or,
        M::Xor => xor,
        M::Test => test,
        M::Inc => inc,
        M::Dec => dec,
        M::Neg => neg,
        M::Not => not,
        M::Push => {
            if ins.op0_kind() == OpKind::Register && ins.op0_register().is_segment_register() {
                push_seg
            } else {
                push
            }
        }
        M::Pop => {
            if ins.op0_kind() == OpKind::Register && ins.op0_register().is_segment_register() {
                return None;
            }
            pop
        }
        M::Jmp => match ins.op0_kind() {
            OpKind::NearBranch16 | OpKind::NearBranch32 | OpKind::NearBranch64 => jmp_rel,
            OpKind::Register => jmp_ind,
            OpKind::Memory if !ins.is_jmp_far_indirect() => jmp_ind,
            _ => return None,
        },
        M::Call => match ins.op0_kind() {
            OpKind::NearBranch16 | OpKind::NearBranch32 | OpKind::NearBranch64 => call_rel,
            OpKind::Register => call_ind,
            OpKind::Memory if !ins.is_call_far_indirect() => call_ind,
            _ => return None,
        },
        M::Ret => ret_near,
        m if JCC.contains(&m) => jcc,
        m if SETCC.contains(&m) => setcc,
        m if CMOVCC.contains(&m) => cmovcc,
        M::Loop | M::Loope | M::Loopne => loop_,
        M::Jcxz | M::Jecxz | M::Jrcxz => jcxz,
        M::Xchg => xchg,
        M::Nop
        | M::Pause
        | M::Prefetchnta
        | M::Prefetcht0
        | M::Prefetcht1
        | M::Prefetcht2
        | M::Prefetchw
        | M::Lfence
        | M::Sfence
        | M::Clflush
        | M::Clflushopt => nop,
        M::Mfence => |_, _| {
            std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
            Ok(())
        },
        M::Clc => |c, _| set_flag(c, CF, false),
        M::Stc => |c, _| set_flag(c, CF, true),
        M::Cmc => |c, _| {
            let cf = c.flags.cf();
            set_flag(c, CF, !cf)
        },
        M::Cld => |c, _| set_flag(c, DF, false),
        M::Std => |c, _| set_flag(c, DF, true),
        M::Cli => cli,
        M::Sti => sti,
        M::Hlt => hlt,
        M::In => in_,
        M::Out => out,
        M::Lahf => lahf,
        M::Sahf => sahf,
        M::Pushf | M::Pushfd | M::Pushfq => pushf,
        M::Popf | M::Popfd | M::Popfq => popf,
        M::Cbw | M::Cwde | M::Cdqe => cbw,
        M::Cwd | M::Cdq | M::Cqo => cwd,
        M::Leave => leave,
        _ => return None,
    })
}

fn nop(_: &mut Cpu, _: &Insn) -> R {
    Ok(())
}

fn set_flag(c: &mut Cpu, bit: u64, on: bool) -> R {
    c.flags.set_bit(bit, on);
    Ok(())
}

fn mov(c: &mut Cpu, d: &Insn) -> R {
    let s = d.osize;
    let v = c.rd(d, 1, s)?;
    c.wr(d, 0, s, v)
}

fn movzx(c: &mut Cpu, d: &Insn) -> R {
    let src_size = src_size(d);
    let v = c.rd(d, 1, src_size)? & size_mask(src_size);
    c.wr(d, 0, d.osize, v)
}

fn src_size(d: &Insn) -> u8 {
    match d.ins.op1_kind() {
        OpKind::Register => d.ins.op1_register().size() as u8,
        _ => d.ins.memory_size().size() as u8,
    }
}

fn sext(v: u64, size: u8) -> u64 {
    let sh = 64 - 8 * size as u32;
    (((v << sh) as i64) >> sh) as u64
}

fn movsx(c: &mut Cpu, d: &Insn) -> R {
    let ss = src_size(d);
    let v = sext(c.rd(d, 1, ss)? & size_mask(ss), ss);
    c.wr(d, 0, d.osize, v & size_mask(d.osize))
}

fn lea(c: &mut Cpu, d: &Insn) -> R {
    let v = c.ea(d) & size_mask(d.osize);
    c.set_reg(d.ins.op0_register(), v);
    Ok(())
}

macro_rules! alu {
    ($name:ident, |$c:ident, $s:ident, $a:ident, $b:ident| $body:expr, $write:expr) => {
        fn $name($c: &mut Cpu, d: &Insn) -> R {
            let $s = d.osize;
            let l = $c.loc(d, 0);
            let $a = $c.read_loc(l, $s)? & size_mask($s);
            let $b = $c.rd(d, 1, $s)? & size_mask($s);
            let r: u64 = $body & size_mask($s);
            if $write {
                $c.write_loc(l, $s, r)?;
            }
            Ok(())
        }
    };
}

alu!(
    add,
    |c, s, a, b| {
        let r = a.wrapping_add(b) & size_mask(s);
        c.flags.set_add(s, a, b, 0, r);
        r
    },
    true
);
alu!(
    adc,
    |c, s, a, b| {
        let cf = c.flags.cf() as u64;
        let r = a.wrapping_add(b).wrapping_add(cf) & size_mask(s);
        c.flags.set_add(s, a, b, cf, r);
        r
    },
    true
);
alu!(
    sub,
    |c, s, a, b| {
        let r = a.wrapping_sub(b) & size_mask(s);
        c.flags.set_sub(s, a, b, 0, r);
        r
    },
    true
);
alu!(
    sbb,
    |c, s, a, b| {
        let cf = c.flags.cf() as u64;
        let r = a.wrapping_sub(b).wrapping_sub(cf) & size_mask(s);
        c.flags.set_sub(s, a, b, cf, r);
        r
    },
    true
);
alu!(
    cmp,
    |c, s, a, b| {
        let r = a.wrapping_sub(b) & size_mask(s);
        c.flags.set_sub(s, a, b, 0, r);
        r
    },
    false
);
alu!(
    and,
    |c, s, a, b| {
        c.flags.set_logic(s, a & b);
        a & b
    },
    true
);
alu!(
    or,
    |c, s, a, b| {
        c.flags.set_logic(s, a | b);
        a | b
    },
    true
);
alu!(
    xor,
    |c, s, a, b| {
        c.flags.set_logic(s, a ^ b);
        a ^ b
    },
    true
);
alu!(
    test,
    |c, s, a, b| {
        c.flags.set_logic(s, a & b);
        a & b
    },
    false
);

fn inc(c: &mut Cpu, d: &Insn) -> R {
    let s = d.osize;
    let l = c.loc(d, 0);
    let r = c.read_loc(l, s)?.wrapping_add(1) & size_mask(s);
    c.write_loc(l, s, r)?;
    c.flags.set_incdec(true, s, r);
    Ok(())
}

fn dec(c: &mut Cpu, d: &Insn) -> R {
    let s = d.osize;
    let l = c.loc(d, 0);
    let r = c.read_loc(l, s)?.wrapping_sub(1) & size_mask(s);
    c.write_loc(l, s, r)?;
    c.flags.set_incdec(false, s, r);
    Ok(())
}

fn neg(c: &mut Cpu, d: &Insn) -> R {
    let s = d.osize;
    let l = c.loc(d, 0);
    let a = c.read_loc(l, s)? & size_mask(s);
    let r = 0u64.wrapping_sub(a) & size_mask(s);
    c.write_loc(l, s, r)?;
    c.flags.set_sub(s, 0, a, 0, r);
    Ok(())
}

fn not(c: &mut Cpu, d: &Insn) -> R {
    let s = d.osize;
    let l = c.loc(d, 0);
    let r = !c.read_loc(l, s)? & size_mask(s);
    c.write_loc(l, s, r)
}

/// Bytes moved by a push/pop-like instruction.
fn stack_op_size(d: &Insn) -> u8 {
    d.ins.stack_pointer_increment().unsigned_abs().min(8) as u8
}

fn push(c: &mut Cpu, d: &Insn) -> R {
    let s = stack_op_size(d);
    let v = c.rd(d, 0, s)?;
    c.push(s, v)
}

fn push_seg(c: &mut Cpu, d: &Insn) -> R {
    let s = stack_op_size(d);
    let v = c.get_reg(d.ins.op0_register());
    c.push(s, v)
}

fn pop(c: &mut Cpu, d: &Insn) -> R {
    let s = stack_op_size(d);
    let sp = c.gpr[reg::RSP];
    let v = c.pop(s)?;
    // The destination's address is computed after RSP is incremented.
    if let Err(e) = c.wr(d, 0, s, v) {
        c.gpr[reg::RSP] = sp;
        return Err(e);
    }
    Ok(())
}

fn branch(c: &mut Cpu, target: u64) -> R {
    let t = target & c.ip_mask();
    if !c.mode64() && t > c.seg[super::CS].limit as u64 {
        return Err(Exc::gp(0));
    }
    if c.mode64() && !canonical(t) {
        return Err(Exc::gp(0));
    }
    c.rip = t;
    Ok(())
}

/// True for a canonical 48-bit address.
pub(crate) fn canonical(a: u64) -> bool {
    ((a as i64) << 16 >> 16) as u64 == a
}

fn jmp_rel(c: &mut Cpu, d: &Insn) -> R {
    branch(c, d.imm)
}

fn jmp_ind(c: &mut Cpu, d: &Insn) -> R {
    let s = d.osize;
    let t = c.rd(d, 0, s)?;
    branch(c, t & size_mask(s))
}

fn call_rel(c: &mut Cpu, d: &Insn) -> R {
    let s = stack_op_size(d);
    let ret = c.rip;
    let sp = c.gpr[reg::RSP];
    c.push(s, ret)?;
    branch(c, d.imm).inspect_err(|_| c.gpr[reg::RSP] = sp)
}

fn call_ind(c: &mut Cpu, d: &Insn) -> R {
    let s = stack_op_size(d);
    let t = c.rd(d, 0, d.osize)? & size_mask(d.osize);
    let ret = c.rip;
    let sp = c.gpr[reg::RSP];
    c.push(s, ret)?;
    branch(c, t).inspect_err(|_| c.gpr[reg::RSP] = sp)
}

fn ret_near(c: &mut Cpu, d: &Insn) -> R {
    let imm = if d.ins.op_count() > 0 {
        d.ins.immediate(0)
    } else {
        0
    };
    let s = (d.ins.stack_pointer_increment() as i64 - imm as i64).clamp(2, 8) as u8;
    let sp = c.gpr[reg::RSP];
    let t = c.pop(s)?;
    let ss = c.stack_size();
    let nsp = c.gpr[reg::RSP].wrapping_add(imm);
    c.set_gpr_sized(reg::RSP, ss, nsp);
    branch(c, t).inspect_err(|_| c.gpr[reg::RSP] = sp)
}

#[inline(always)]
fn cc(d: &Insn) -> u8 {
    d.cc
}

fn jcc(c: &mut Cpu, d: &Insn) -> R {
    if c.flags.cond(cc(d)) {
        branch(c, d.imm)
    } else {
        Ok(())
    }
}

fn setcc(c: &mut Cpu, d: &Insn) -> R {
    let v = c.flags.cond(cc(d)) as u64;
    c.wr(d, 0, 1, v)
}

fn cmovcc(c: &mut Cpu, d: &Insn) -> R {
    let s = d.osize;
    let v = c.rd(d, 1, s)?;
    if c.flags.cond(cc(d)) {
        c.wr(d, 0, s, v)
    } else if s == 4 {
        // A 32-bit CMOV zero-extends its destination even when false.
        let r = d.ins.op0_register();
        let cur = c.get_reg(r);
        c.set_reg(r, cur);
        Ok(())
    } else {
        Ok(())
    }
}

/// Counter register size (CX/ECX/RCX) of LOOP/JCXZ, from the operand iced
/// reports.
fn counter_size(d: &Insn) -> u8 {
    match d.ins.op_count() {
        0 => 8,
        _ => match d.ins.op_kind(0) {
            _ if d.ins.op_count() > 1 => d.ins.op1_register().size() as u8,
            _ => match d.ins.code() {
                iced_x86::Code::Jcxz_rel8_16 | iced_x86::Code::Jcxz_rel8_32 => 2,
                iced_x86::Code::Jecxz_rel8_16
                | iced_x86::Code::Jecxz_rel8_32
                | iced_x86::Code::Jecxz_rel8_64 => 4,
                iced_x86::Code::Jrcxz_rel8_16 | iced_x86::Code::Jrcxz_rel8_64 => 8,
                _ => loop_counter_size(d),
            },
        },
    }
}

fn loop_counter_size(d: &Insn) -> u8 {
    use iced_x86::Code::*;
    match d.ins.code() {
        Loopne_rel8_16_CX | Loopne_rel8_32_CX | Loope_rel8_16_CX | Loope_rel8_32_CX
        | Loop_rel8_16_CX | Loop_rel8_32_CX => 2,
        Loopne_rel8_16_ECX | Loopne_rel8_32_ECX | Loopne_rel8_64_ECX | Loope_rel8_16_ECX
        | Loope_rel8_32_ECX | Loope_rel8_64_ECX | Loop_rel8_16_ECX | Loop_rel8_32_ECX
        | Loop_rel8_64_ECX => 4,
        _ => 8,
    }
}

fn loop_(c: &mut Cpu, d: &Insn) -> R {
    let s = loop_counter_size(d);
    let cnt = c.gpr[reg::RCX].wrapping_sub(1) & size_mask(s);
    let taken = cnt != 0
        && match d.ins.mnemonic() {
            M::Loope => c.flags.zf(),
            M::Loopne => !c.flags.zf(),
            _ => true,
        };
    if taken {
        branch(c, d.imm)?;
    }
    c.set_gpr_sized(reg::RCX, s, cnt);
    Ok(())
}

fn jcxz(c: &mut Cpu, d: &Insn) -> R {
    let s = counter_size(d);
    if c.gpr[reg::RCX] & size_mask(s) == 0 {
        branch(c, d.imm)
    } else {
        Ok(())
    }
}

fn xchg(c: &mut Cpu, d: &Insn) -> R {
    let s = d.osize;
    let l0 = c.loc(d, 0);
    let l1 = c.loc(d, 1);
    let a = c.read_loc(l0, s)?;
    let b = c.read_loc(l1, s)?;
    // Memory first so a fault leaves registers untouched.
    if let super::operand::Loc::Mem(..) = l1 {
        c.write_loc(l1, s, a)?;
        c.write_loc(l0, s, b)
    } else {
        c.write_loc(l0, s, b)?;
        c.write_loc(l1, s, a)
    }
}

/// IOPL of the current flags.
pub(crate) fn iopl(c: &Cpu) -> u8 {
    ((c.flags.get() & IOPL) >> 12) as u8
}

fn cli(c: &mut Cpu, _: &Insn) -> R {
    if c.protected() && c.cpl > iopl(c) {
        return Err(Exc::gp(0));
    }
    c.flags.set_bit(IF, false);
    Ok(())
}

fn sti(c: &mut Cpu, _: &Insn) -> R {
    if c.protected() && c.cpl > iopl(c) {
        return Err(Exc::gp(0));
    }
    if !c.flags.sys(IF) {
        c.irq_inhibit = true;
        c.stop_block = true;
    }
    c.flags.set_bit(IF, true);
    Ok(())
}

fn hlt(c: &mut Cpu, _: &Insn) -> R {
    if c.cpl != 0 {
        return Err(Exc::gp(0));
    }
    c.halted = true;
    c.stop_block = true;
    Ok(())
}

fn io_port(c: &Cpu, d: &Insn, i: u32) -> u16 {
    match d.ins.op_kind(i) {
        OpKind::Immediate8 => d.ins.immediate8() as u16,
        _ => c.gpr[reg::RDX] as u16,
    }
}

fn in_(c: &mut Cpu, d: &Insn) -> R {
    let s = d.osize;
    let port = io_port(c, d, 1);
    c.check_io(port, s)?;
    let v = c.space.pio.read_value(port as u64, s as usize);
    c.set_reg(d.ins.op0_register(), v);
    Ok(())
}

fn out(c: &mut Cpu, d: &Insn) -> R {
    let r = d.ins.op1_register();
    let s = r.size() as u8;
    let port = io_port(c, d, 0);
    c.check_io(port, s)?;
    let v = c.get_reg(r);
    c.space.pio.write_value(port as u64, s as usize, v);
    // A device may have raised an interrupt or asked to stop the machine.
    c.stop_block = true;
    Ok(())
}

fn lahf(c: &mut Cpu, _: &Insn) -> R {
    let f = c.flags.get() & 0xd7 | 2;
    c.gpr[reg::RAX] = (c.gpr[reg::RAX] & !0xff00) | (f << 8);
    Ok(())
}

fn sahf(c: &mut Cpu, _: &Insn) -> R {
    let ah = (c.gpr[reg::RAX] >> 8) & 0xd5;
    c.flags.set_masked(ah, 0xd5);
    Ok(())
}

fn pushf(c: &mut Cpu, d: &Insn) -> R {
    if c.v86() && iopl(c) < 3 {
        return Err(Exc::gp(0));
    }
    let s = stack_op_size(d);
    let f = c.flags.get() & !(flags::VM | flags::RF);
    c.push(s, f)
}

fn popf(c: &mut Cpu, d: &Insn) -> R {
    if c.v86() && iopl(c) < 3 {
        return Err(Exc::gp(0));
    }
    let s = stack_op_size(d);
    let v = c.pop(s)?;
    let mut mask: u64 = flags::ARITH | flags::TF | DF | flags::NT | flags::AC | flags::ID;
    if !c.protected() || c.cpl == 0 {
        mask |= IOPL | IF;
    } else if c.cpl <= iopl(c) {
        mask |= IF;
    }
    if s == 2 {
        mask &= 0xffff;
    }
    c.flags.set_masked(v, mask);
    // Interrupts may now be deliverable.
    c.stop_block = true;
    Ok(())
}

fn cbw(c: &mut Cpu, d: &Insn) -> R {
    let (from, to) = match d.ins.mnemonic() {
        M::Cbw => (1, 2),
        M::Cwde => (2, 4),
        _ => (4, 8),
    };
    let v = sext(c.gpr[reg::RAX] & size_mask(from), from) & size_mask(to);
    c.set_gpr_sized(reg::RAX, to, v);
    Ok(())
}

fn cwd(c: &mut Cpu, d: &Insn) -> R {
    let s = match d.ins.mnemonic() {
        M::Cwd => 2,
        M::Cdq => 4,
        _ => 8,
    };
    let neg = c.gpr[reg::RAX] & sign_bit(s) != 0;
    c.set_gpr_sized(reg::RDX, s, if neg { u64::MAX } else { 0 });
    Ok(())
}

fn leave(c: &mut Cpu, d: &Insn) -> R {
    // iced reports no stack-pointer increment for LEAVE: size from the form.
    let s = match d.ins.code() {
        iced_x86::Code::Leavew => 2,
        iced_x86::Code::Leaved => 4,
        _ => 8,
    };
    let ss = c.stack_size();
    let bp = c.gpr[reg::RBP] & size_mask(ss);
    let v = c.read_mem(super::SS, bp, s)?;
    c.set_gpr_sized(reg::RSP, ss, bp.wrapping_add(s as u64));
    c.set_gpr_sized(reg::RBP, s, v);
    Ok(())
}
