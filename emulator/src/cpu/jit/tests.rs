//! The translator against the interpreter: random blocks of 64-bit code run
//! once interpreted and once translated from the same state must leave the
//! same registers, flags, memory, exceptions and instruction count.

use crate::bus::AddressSpace;
use crate::cpu::{Cpu, CpuExit, Segment, DS, ES, FS, GS, SS};
use crate::memory::GuestRam;
use iced_x86::{
    Code, Encoder, Instruction, MemoryOperand, Mnemonic as M, OpCodeOperandKind as K, Register,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::sync::Arc;

const PML4: u64 = 0x10000;
const IDT: u64 = 0x14000;
const HANDLER: u64 = 0x15000;
const GDT: u64 = 0x16000;
const CODE: u64 = 0x20000;
/// Branch targets: HLT all over.
const LANDING: u64 = 0x21000;
const DATA: u64 = 0x30000;
// The page after DATA is not present: accesses reaching it fault.
const STACK: u64 = 0x40000;
const FS_BASE: u64 = 0x100;
/// A second virtual address of CODE's physical page, followed by LANDING's;
/// DATA's is at the same distance as from CODE.
const ALIAS: u64 = 0x100000;

/// A CPU in 64-bit mode: identity-mapped 4 KiB pages over the first 2 MiB
/// (only those the tests use), an IDT whose every exception handler halts.
fn machine() -> Cpu {
    let ram = GuestRam::new(4 << 20).expect("ram");
    ram.write_bytes(PML4, &(0x11003u64).to_le_bytes());
    ram.write_bytes(0x11000, &(0x12003u64).to_le_bytes());
    ram.write_bytes(0x12000, &(0x13003u64).to_le_bytes());
    // Only the pages the tests use are present: stray jumps and accesses
    // fault.
    let mapped = [IDT, HANDLER, GDT, CODE, LANDING, DATA, STACK];
    for p in 0..512u64 {
        let pte = if mapped.contains(&(p * 0x1000)) {
            (p * 0x1000) | 3
        } else {
            0
        };
        ram.write_bytes(0x13000 + p * 8, &pte.to_le_bytes());
    }
    for (virt, phys) in [(ALIAS, CODE), (ALIAS + 0x1000, LANDING)]
        .into_iter()
        .chain([(ALIAS + DATA - CODE, DATA)])
    {
        ram.write_bytes(0x13000 + (virt >> 12) * 8, &(phys | 3).to_le_bytes());
    }
    for v in 0..32u64 {
        let mut g = [0u8; 16];
        g[0..2].copy_from_slice(&(HANDLER as u16).to_le_bytes());
        g[2..4].copy_from_slice(&8u16.to_le_bytes());
        g[5] = 0x8e;
        g[6..8].copy_from_slice(&((HANDLER >> 16) as u16).to_le_bytes());
        ram.write_bytes(IDT + v * 16, &g);
    }
    ram.write_bytes(HANDLER, &[0xf4; 16]);
    ram.write_bytes(LANDING, &[0xf4; 0x1000]);
    ram.write_bytes(GDT + 8, &0x0020_9a00_0000_0000u64.to_le_bytes());
    ram.write_bytes(GDT + 16, &0x00cf_9200_0000_ffffu64.to_le_bytes());
    let space = Arc::new(AddressSpace::new(ram));
    let mut cpu = Cpu::new(space);
    crate::cpu::tests::enter_long_mode(&mut cpu, PML4);
    flat_data(&mut cpu, 16);
    cpu
}

/// Flat data segments (FS based at FS_BASE), the GDT and an IDT of
/// 32 gates of `gate` bytes, SSE on.
fn flat_data(cpu: &mut Cpu, gate: u16) {
    for s in [ES, SS, DS, GS] {
        cpu.seg[s] = Segment::flat32(16, false);
    }
    cpu.seg[FS] = Segment {
        base: FS_BASE,
        ..Segment::flat32(16, false)
    };
    cpu.gdtr.base = GDT;
    cpu.gdtr.limit = 23;
    cpu.idtr.base = IDT;
    cpu.idtr.limit = 32 * gate - 1;
    cpu.cr4 |= crate::cpu::cr4::OSFXSR;
    cpu.flush_tlb(false);
}

const R64: [Register; 13] = [
    Register::RAX,
    Register::RCX,
    Register::RDX,
    Register::RBX,
    Register::RBP,
    Register::RSI,
    Register::RDI,
    Register::R8,
    Register::R9,
    Register::R10,
    Register::R11,
    Register::R12,
    Register::R13,
];

thread_local! {
    /// The generator makes 32-bit protected-mode code (ESI and EDI hold
    /// the index and the data address, as R14 and R15 do in 64-bit code).
    static MODE32: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

fn mode32() -> bool {
    MODE32.with(|m| m.get())
}

fn reg(rng: &mut StdRng, size: usize) -> Register {
    if mode32() {
        let n = rng.gen_range(0..5u32);
        let n = if n == 4 { 5 } else { n }; // EAX, ECX, EDX, EBX, EBP
        return match size {
            4 | 8 => Register::EAX + n,
            2 => Register::AX + n,
            _ => {
                let n = n % 4;
                if rng.gen_bool(0.3) {
                    Register::AH + n
                } else {
                    Register::AL + n
                }
            }
        };
    }
    let r = R64[rng.gen_range(0..R64.len())];
    let n = r as usize - Register::RAX as usize;
    match size {
        8 => r,
        4 => Register::EAX + n as u32,
        2 => Register::AX + n as u32,
        _ => {
            if n < 4 && rng.gen_bool(0.3) {
                Register::AH + n as u32
            } else if n < 4 {
                Register::AL + n as u32
            } else {
                Register::SPL + (n - 4) as u32
            }
        }
    }
}

fn mem(rng: &mut StdRng) -> MemoryOperand {
    let disp = rng.gen_range(-16i64..0x1010);
    if mode32() {
        return match rng.gen_range(0..5) {
            0 => MemoryOperand::with_base_index_scale_displ_size(
                Register::EDI,
                Register::ESI,
                [1, 2, 4, 8][rng.gen_range(0..4)],
                rng.gen_range(0..0x800),
                4,
            ),
            1 => MemoryOperand::with_displ(DATA + rng.gen_range(0..0x1000), 4),
            2 => MemoryOperand::new(
                Register::EDI,
                Register::None,
                1,
                disp - FS_BASE as i64,
                4,
                false,
                Register::FS,
            ),
            _ => MemoryOperand::with_base_displ(Register::EDI, disp),
        };
    }
    match rng.gen_range(0..6) {
        0 => MemoryOperand::with_base_index_scale_displ_size(
            Register::R15,
            Register::R14,
            [1, 2, 4, 8][rng.gen_range(0..4)],
            rng.gen_range(0..0x800),
            4,
        ),
        1 => {
            MemoryOperand::with_base_displ(Register::RIP, (DATA + rng.gen_range(0..0x1000)) as i64)
        }
        2 => MemoryOperand::new(
            Register::R15,
            Register::None,
            1,
            disp - FS_BASE as i64,
            4,
            false,
            Register::FS,
        ),
        3 => MemoryOperand::with_base_displ(Register::R15D, disp),
        _ => MemoryOperand::with_base_displ(Register::R15, disp),
    }
}

#[derive(Clone, Copy)]
enum Op {
    Reg(Register),
    Mem(MemoryOperand),
    Imm(i64),
}

fn imm(rng: &mut StdRng, bits: u32) -> i64 {
    let v: i64 = match rng.gen_range(0..4) {
        0 => rng.gen_range(-2..3),
        1 => rng.gen_range(0..70),
        _ => rng.gen(),
    };
    if bits >= 64 {
        v
    } else {
        (v << (64 - bits)) >> (64 - bits)
    }
}

/// An operand for `k`, or `None` if the generator does not make such.
fn operand(rng: &mut StdRng, k: K) -> Option<Op> {
    let rm = |rng: &mut StdRng, size| {
        if rng.gen_bool(0.4) {
            Op::Mem(mem(rng))
        } else {
            Op::Reg(reg(rng, size))
        }
    };
    Some(match k {
        K::r8_or_mem => rm(rng, 1),
        K::r16_or_mem => rm(rng, 2),
        K::r32_or_mem => rm(rng, 4),
        K::r64_or_mem => rm(rng, 8),
        K::mem => Op::Mem(mem(rng)),
        K::r8_reg | K::r8_opcode => Op::Reg(reg(rng, 1)),
        K::r16_reg | K::r16_opcode | K::r16_rm => Op::Reg(reg(rng, 2)),
        K::r32_reg | K::r32_opcode | K::r32_rm => Op::Reg(reg(rng, 4)),
        K::r64_reg | K::r64_opcode | K::r64_rm => Op::Reg(reg(rng, 8)),
        K::al => Op::Reg(Register::AL),
        K::cl => Op::Reg(Register::CL),
        K::ax => Op::Reg(Register::AX),
        K::eax => Op::Reg(Register::EAX),
        K::rax => Op::Reg(Register::RAX),
        K::imm8 => Op::Imm(imm(rng, 8) & 0xff),
        K::imm8_const_1 => Op::Imm(1),
        K::imm8sex16 | K::imm8sex32 | K::imm8sex64 => Op::Imm(imm(rng, 8)),
        K::imm16 => Op::Imm(imm(rng, 16) & 0xffff),
        K::imm32 => Op::Imm(imm(rng, 32) & 0xffff_ffff),
        K::imm32sex64 => Op::Imm(imm(rng, 32)),
        K::imm64 => Op::Imm(imm(rng, 64)),
        K::xmm_reg | K::xmm_rm => Op::Reg(Register::XMM0 + rng.gen_range(0..16)),
        K::xmm_or_mem if rng.gen_bool(0.4) => {
            // Mostly 16-byte aligned, as SSE operands must be.
            let disp = rng.gen_range(-1i64..0xff) * 16 + rng.gen_range(0..4) * rng.gen_range(0..2);
            let base = if mode32() {
                Register::EDI
            } else {
                Register::R15
            };
            Op::Mem(MemoryOperand::with_base_displ(base, disp))
        }
        K::xmm_or_mem => Op::Reg(Register::XMM0 + rng.gen_range(0..16)),
        _ => return None,
    })
}

fn build(code: Code, ops: &[Op]) -> Option<Instruction> {
    use Op::*;
    let r = match *ops {
        [] => Ok(Instruction::with(code)),
        [Reg(a)] => Instruction::with1(code, a),
        [Mem(a)] => Instruction::with1(code, a),
        [Imm(a)] => Instruction::with1(code, a as i32),
        [Reg(a), Reg(b)] => Instruction::with2(code, a, b),
        [Reg(a), Mem(b)] => Instruction::with2(code, a, b),
        [Mem(a), Reg(b)] => Instruction::with2(code, a, b),
        [Reg(a), Imm(b)] if code == Code::Mov_r64_imm64 => Instruction::with2(code, a, b as u64),
        [Reg(a), Imm(b)] => Instruction::with2(code, a, b as i32),
        [Mem(a), Imm(b)] => Instruction::with2(code, a, b as i32),
        [Reg(a), Reg(b), Imm(c)] => Instruction::with3(code, a, b, c as i32),
        [Reg(a), Mem(b), Imm(c)] => Instruction::with3(code, a, b, c as i32),
        _ => return None,
    };
    r.ok()
}

/// Instructions the generator draws from: everything the translator emits
/// itself, and some it leaves to the interpreter.
fn codes() -> Vec<Code> {
    codes_for(64)
}

/// As [`codes`], for 32-bit code.
fn codes32() -> Vec<Code> {
    codes_for(32)
}

fn codes_for(bits: u32) -> Vec<Code> {
    let wanted = [
        M::Mov,
        M::Movzx,
        M::Movsx,
        M::Movsxd,
        M::Lea,
        M::Add,
        M::Sub,
        M::Cmp,
        M::And,
        M::Or,
        M::Xor,
        M::Test,
        M::Inc,
        M::Dec,
        M::Shl,
        M::Shr,
        M::Sar,
        M::Imul,
        M::Push,
        M::Pop,
        M::Seto,
        M::Setb,
        M::Sete,
        M::Setbe,
        M::Sets,
        M::Setp,
        M::Setl,
        M::Setle,
        M::Setno,
        M::Setae,
        M::Setne,
        M::Seta,
        M::Setns,
        M::Setnp,
        M::Setge,
        M::Setg,
        M::Cmovo,
        M::Cmovb,
        M::Cmove,
        M::Cmovbe,
        M::Cmovs,
        M::Cmovp,
        M::Cmovl,
        M::Cmovle,
        M::Cmovno,
        M::Cmovae,
        M::Cmovne,
        M::Cmova,
        M::Cmovns,
        M::Cmovnp,
        M::Cmovge,
        M::Cmovg,
        M::Nop,
        M::Adc,
        M::Sbb,
        M::Neg,
        M::Not,
        M::Rol,
        M::Ror,
        M::Bt,
        M::Bsf,
        M::Bsr,
        M::Bswap,
        M::Cqo,
        M::Cdq,
        M::Div,
        M::Mul,
        M::Stc,
        M::Clc,
        M::Cmc,
        M::Jmp,
        M::Call,
        M::Movdqa,
        M::Movdqu,
        M::Movaps,
        M::Movups,
        M::Movapd,
        M::Movupd,
        M::Pxor,
        M::Por,
        M::Pand,
        M::Pandn,
        M::Xorps,
        M::Xorpd,
        M::Orps,
        M::Andps,
        M::Andnps,
        M::Paddb,
        M::Paddw,
        M::Paddd,
        M::Paddq,
        M::Psubb,
        M::Psubw,
        M::Psubd,
        M::Psubq,
        M::Pcmpeqb,
        M::Pcmpeqw,
        M::Pcmpeqd,
        M::Pcmpgtb,
        M::Pcmpgtw,
        M::Pcmpgtd,
        M::Pminub,
        M::Pmaxub,
        M::Pminsw,
        M::Pmaxsw,
        M::Punpcklbw,
        M::Punpcklwd,
        M::Punpckldq,
        M::Punpcklqdq,
        M::Punpckhbw,
        M::Punpckhwd,
        M::Punpckhdq,
        M::Punpckhqdq,
        M::Pshufd,
        M::Pslldq,
        M::Psrldq,
        M::Pmovmskb,
        M::Movd,
        M::Movq,
        M::Pshufb,
    ];
    let indirect = if bits == 64 {
        [K::r64_or_mem, K::r64_reg, K::r64_rm]
    } else {
        [K::r32_or_mem, K::r32_reg, K::r32_rm]
    };
    Code::values()
        .filter(|c| wanted.contains(&c.mnemonic()))
        .filter(|c| {
            let o = c.op_code();
            let mode = if bits == 64 { o.mode64() } else { o.mode32() };
            mode && o.encoding() == iced_x86::EncodingKind::Legacy
        })
        // Near branches other than indirect ones end blocks: the
        // terminator makes those.
        .filter(|c| {
            !matches!(c.mnemonic(), M::Jmp | M::Call) || indirect.contains(&c.op_code().op_kind(0))
        })
        .collect()
}

/// The branch (or HLT, or nothing) that ends a block.
fn terminator(rng: &mut StdRng, ip: u64) -> Option<Instruction> {
    let target = LANDING + rng.gen_range(0..0x1000);
    if mode32() {
        return match rng.gen_range(0..8) {
            0 => Instruction::with_branch(Code::Jmp_rel32_32, target).ok(),
            1 => Instruction::with_branch(Code::Call_rel32_32, target).ok(),
            2 => Some(Instruction::with(Code::Retnd)),
            3 => Some(Instruction::with(Code::Hlt)),
            4 => None,
            _ => {
                let cc = [
                    Code::Jo_rel32_32,
                    Code::Jb_rel32_32,
                    Code::Je_rel32_32,
                    Code::Jbe_rel32_32,
                    Code::Js_rel32_32,
                    Code::Jp_rel32_32,
                    Code::Jl_rel32_32,
                    Code::Jle_rel32_32,
                    Code::Jne_rel32_32,
                    Code::Jg_rel32_32,
                ];
                Instruction::with_branch(cc[rng.gen_range(0..cc.len())], target).ok()
            }
        };
    }
    match rng.gen_range(0..8) {
        0 => Instruction::with_branch(Code::Jmp_rel32_64, target).ok(),
        1 => Instruction::with_branch(Code::Call_rel32_64, target).ok(),
        2 => Some(Instruction::with(Code::Retnq)),
        3 => Some(Instruction::with(Code::Hlt)),
        4 => None,
        _ => {
            let cc = [
                Code::Jo_rel32_64,
                Code::Jno_rel32_64,
                Code::Jb_rel32_64,
                Code::Jae_rel32_64,
                Code::Je_rel32_64,
                Code::Jne_rel32_64,
                Code::Jbe_rel32_64,
                Code::Ja_rel32_64,
                Code::Js_rel32_64,
                Code::Jns_rel32_64,
                Code::Jp_rel32_64,
                Code::Jnp_rel32_64,
                Code::Jl_rel32_64,
                Code::Jge_rel32_64,
                Code::Jle_rel32_64,
                Code::Jg_rel32_64,
            ];
            let _ = ip;
            Instruction::with_branch(cc[rng.gen_range(0..16)], target).ok()
        }
    }
}

/// Random machine code for one block and its instruction count.
fn random_block(rng: &mut StdRng, codes: &[Code]) -> (Vec<u8>, usize) {
    let mut enc = Encoder::new(if mode32() { 32 } else { 64 });
    let mut ip = CODE;
    let mut n = 0;
    let len = rng.gen_range(1..24);
    while n < len {
        let code = codes[rng.gen_range(0..codes.len())];
        let o = code.op_code();
        let Some(ops) = (0..o.op_count())
            .map(|i| operand(rng, o.op_kind(i)))
            .collect::<Option<Vec<_>>>()
        else {
            continue;
        };
        // Never write RSP, R14 or R15 explicitly (they hold the stack and
        // the data addresses).
        let Some(ins) = build(code, &ops) else {
            continue;
        };
        if code.mnemonic() == M::Div && rng.gen_bool(0.7) {
            continue;
        }
        if let Ok(l) = enc.encode(&ins, ip) {
            ip += l as u64;
            n += 1;
        }
    }
    if let Some(t) = terminator(rng, ip) {
        if enc.encode(&t, ip).is_ok() {
            n += 1;
        }
    }
    (enc.take_buffer(), n)
}

/// What a run leaves behind.
#[derive(Debug, PartialEq, Eq)]
struct Outcome {
    gpr: [u64; 16],
    xmm: [u128; 16],
    rip: u64,
    flags: u64,
    data: Vec<u8>,
    stack: Vec<u8>,
    exception: Option<crate::cpu::Exc>,
    cr2: u64,
    icount: u64,
    exit: CpuExit,
}

struct Start {
    gpr: [u64; 16],
    xmm: [u128; 16],
    /// CR0.TS set (SSE instructions raise #NM).
    ts: bool,
    flags: u64,
    data: Vec<u8>,
    stack: Vec<u8>,
}

fn start(rng: &mut StdRng) -> Start {
    let mut gpr: [u64; 16] = std::array::from_fn(|_| match rng.gen_range(0..4) {
        0 => rng.gen_range(0..4),
        1 => 1u64 << rng.gen_range(0..64),
        _ => rng.gen(),
    });
    gpr[4] = STACK + 0x800;
    gpr[14] = rng.gen_range(0..64);
    if let Some(v) = R13.with(|r| r.get()) {
        gpr[13] = v;
    }
    gpr[15] = DATA;
    // Some registers hold places an indirect branch may go to.
    // (Not RSP, R14 or R15.)
    for _ in 0..rng.gen_range(0..3) {
        let r = [0, 1, 2, 3, 5, 6, 7, 8, 9, 10, 11, 12, 13][rng.gen_range(0..13)];
        gpr[r] = LANDING + rng.gen_range(0..0x1000);
    }
    if mode32() {
        for (i, g) in gpr.iter_mut().enumerate() {
            *g = match i {
                4 => STACK + 0x800,
                6 => rng.gen_range(0..64),
                7 => DATA,
                _ => *g & 0xffff_ffff,
            };
        }
    }
    let xmm = std::array::from_fn(|_| match rng.gen_range(0..4) {
        0 => 0,
        1 => u128::MAX << rng.gen_range(0..128),
        _ => rng.gen(),
    });
    let ts = rng.gen_bool(0.05);
    let data: Vec<u8> = (0..0x1000).map(|_| rng.gen()).collect();
    // Return addresses: mostly into the landing area.
    let mut stack = vec![0u8; 0x1000];
    for q in stack.chunks_mut(8) {
        let v: u64 = if rng.gen_bool(0.8) {
            LANDING + rng.gen_range(0..0x1000)
        } else {
            rng.gen()
        };
        q.copy_from_slice(&v.to_le_bytes());
    }
    let flags = rng.gen::<u64>() & (crate::cpu::flags::ARITH | crate::cpu::flags::DF);
    Start {
        gpr,
        xmm,
        ts,
        flags,
        data,
        stack,
    }
}

fn run(cpu: &mut Cpu, s: &Start, budget: u64, flush_tlb: bool) -> Outcome {
    run_at(cpu, s, budget, flush_tlb, CODE)
}

/// As [`run`], entering the code at `rip`.
fn run_at(cpu: &mut Cpu, s: &Start, budget: u64, flush_tlb: bool, rip: u64) -> Outcome {
    let ram = &cpu.space.ram;
    ram.write_bytes(DATA, &s.data);
    ram.write_bytes(STACK, &s.stack);
    cpu.gpr = s.gpr;
    cpu.xmm = s.xmm;
    cpu.cr0 = if s.ts {
        cpu.cr0 | crate::cpu::cr0::TS
    } else {
        cpu.cr0 & !crate::cpu::cr0::TS
    };
    cpu.flags.set(s.flags | 2);
    cpu.rip = rip;
    cpu.halted = false;
    cpu.shutdown = false;
    cpu.last_exception = None;
    cpu.cr2 = 0;
    if flush_tlb {
        cpu.flush_tlb(false);
    }
    let before = cpu.icount;
    let pos = cpu.recent_pos;
    let exit = cpu.run(budget);
    if std::env::var("JIT_DEBUG").is_ok() {
        let blocks: Vec<String> = (pos..cpu.recent_pos)
            .map(|i| format!("{:#x}", cpu.recent_blocks[i % 16]))
            .collect();
        eprintln!("blocks {blocks:?} icount {}", cpu.icount - before);
    }
    let mut data = vec![0u8; 0x1000];
    let mut stack = vec![0u8; 0x1000];
    cpu.space.ram.read_bytes(DATA, &mut data);
    cpu.space.ram.read_bytes(STACK, &mut stack);
    Outcome {
        gpr: cpu.gpr,
        xmm: cpu.xmm,
        rip: cpu.rip,
        flags: cpu.flags.get(),
        data,
        stack,
        exception: cpu.last_exception,
        cr2: cpu.cr2,
        icount: cpu.icount - before,
        exit,
    }
}

fn disasm(code: &[u8]) -> String {
    let bits = if mode32() { 32 } else { 64 };
    let mut d = iced_x86::Decoder::with_ip(bits, code, CODE, iced_x86::DecoderOptions::NONE);
    let mut s = String::new();
    for ins in d.iter() {
        s += &format!("  {:x}: {}\n", ins.ip(), ins);
    }
    s
}

/// Checks `code` (placed at `CODE`, `n` instructions long) from `runs`
/// random start states: the interpreter against a CPU that translates every
/// block it meets (its first run of a block is interpreted, later ones and
/// loop iterations are translated, and blocks enter each other directly).
fn check(
    rng: &mut StdRng,
    reference: &mut Cpu,
    jit: &mut Cpu,
    code: &[u8],
    n: usize,
    budget: u64,
    it: usize,
) {
    for cpu in [&mut *reference, &mut *jit] {
        cpu.space.ram.write_bytes(CODE, &[0xf4; 0x1000]);
        cpu.space.ram.write_bytes(CODE, code);
        cpu.cache.clear();
    }
    let s = start(rng);
    let want = run(reference, &s, budget, true);
    for pass in 0..2 {
        let flush = pass == 0 || rng.gen_bool(0.5);
        let got = run(jit, &s, budget, flush);
        if want != got {
            let mut diff: Vec<String> = (0..16)
                .filter(|&i| want.gpr[i] != got.gpr[i])
                .map(|i| format!("r{i}: {:#x} vs {:#x}", want.gpr[i], got.gpr[i]))
                .collect();
            diff.extend(
                (0..16)
                    .filter(|&i| want.xmm[i] != got.xmm[i])
                    .map(|i| format!("xmm{i}: {:#x} vs {:#x}", want.xmm[i], got.xmm[i])),
            );
            if want.cr2 != got.cr2 {
                diff.push(format!("cr2: {:#x} vs {:#x}", want.cr2, got.cr2));
            }
            panic!(
                "iteration {it} pass {pass} ({n} instructions): translated code differs\n{}\ninterp rip={:#x} flags={:#x} exc={:?} n={} exit={:?}\njit    rip={:#x} flags={:#x} exc={:?} n={} exit={:?}\n{}\ndata same: {}, stack same: {}",
                disasm(code),
                want.rip,
                want.flags,
                want.exception,
                want.icount,
                want.exit,
                got.rip,
                got.flags,
                got.exception,
                got.icount,
                got.exit,
                diff.join("\n"),
                want.data == got.data,
                want.stack == got.stack,
            );
        }
    }
}

/// An interpreting CPU and one that translates every block it meets.
fn pair() -> (Cpu, Cpu) {
    let mut reference = machine();
    reference.set_jit(None);
    let mut jit = machine();
    jit.set_jit(Some(1));
    (reference, jit)
}

/// Checks `iters` random blocks from `seed`, calling `after` on the
/// translating CPU after each; returns that CPU.
fn random_blocks(seed: u64, iters: usize, mut after: impl FnMut(&mut Cpu)) -> Cpu {
    let codes = codes();
    assert!(codes.len() > 200, "only {} instruction forms", codes.len());
    let (mut reference, mut jit) = pair();
    let mut rng = StdRng::seed_from_u64(seed);
    for it in 0..iters {
        let (code, n) = random_block(&mut rng, &codes);
        let budget = n as u64 + 8;
        check(&mut rng, &mut reference, &mut jit, &code, n, budget, it);
        after(&mut jit);
    }
    jit
}

#[test]
fn translated_blocks_match_the_interpreter() {
    let jit = random_blocks(0x7e57_0001, 3000, |_| {});
    let n = jit.jit_blocks();
    assert!(n > 3000, "only {n} blocks translated");
}

/// One translation serves every block decoded from the same bytes: code
/// translated at CODE and then run at ALIAS (the same physical page) runs
/// the translation made at CODE, with the interpreter's results at ALIAS
/// (its branches, RIP-relative operands, return addresses and faults are
/// ALIAS's).
#[test]
fn translations_serve_every_virtual_address_of_their_code() {
    let codes = codes();
    let (mut reference, mut jit) = pair();
    let mut rng = StdRng::seed_from_u64(0x7e57_0005);
    let mut shared = 0;
    let iters = 1500;
    for it in 0..iters {
        let (code, n) = random_block(&mut rng, &codes);
        let budget = n as u64 + 8;
        for cpu in [&mut reference, &mut jit] {
            cpu.space.ram.write_bytes(CODE, &[0xf4; 0x1000]);
            cpu.space.ram.write_bytes(CODE, &code);
            cpu.cache.clear();
        }
        let s = start(&mut rng);
        // The first run interprets and translates, the second runs the
        // translations.
        run_at(&mut jit, &s, budget, true, CODE);
        run_at(&mut jit, &s, budget, false, CODE);
        let before = jit.cache.adopted;
        let want = run_at(&mut reference, &s, budget, true, ALIAS);
        let got = run_at(&mut jit, &s, budget, rng.gen_bool(0.5), ALIAS);
        if jit.cache.adopted > before {
            shared += 1;
        }
        assert!(
            want == got,
            "iteration {it}: translated code differs at the alias\n{}\ninterp rip={:#x} exc={:?} n={}\njit    rip={:#x} exc={:?} n={}",
            disasm(&code),
            want.rip,
            want.exception,
            want.icount,
            got.rip,
            got.exception,
            got.icount,
        );
    }
    assert!(
        shared > iters * 95 / 100,
        "only {shared} of {iters} runs at the alias used the translations made at CODE"
    );
}

/// Compiling on the vCPU's compiling thread (blocks hot after two runs):
/// whenever the code arrives, results stay the interpreter's; with little
/// code memory the thread asks for resets again and again.
#[test]
fn code_compiled_off_the_vcpu_thread_matches_the_interpreter() {
    let codes = codes();
    let (mut reference, mut jit) = pair();
    jit.set_jit(Some(2));
    jit.jit_max_code = 16 << 10;
    let mut rng = StdRng::seed_from_u64(0x7e57_0006);
    for it in 0..1500 {
        let (code, n) = random_block(&mut rng, &codes);
        let budget = n as u64 + 8;
        check(&mut rng, &mut reference, &mut jit, &code, n, budget, it);
        if it % 100 == 99 {
            // Let the thread catch up now and then.
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
    let n = jit.jit_blocks();
    assert!(n > 20, "only {n} blocks translated");
    let epoch = jit.jit_worker.as_ref().map_or(0, |w| w.epoch);
    assert!(epoch > 0, "the code memory was never reset");
}

/// A long loop hot on the compiling thread: the loop runs translated once
/// its code arrives, and ends as the interpreter's does.
#[test]
fn long_loop_runs_translated_once_compiled() {
    let (mut reference, mut jit) = pair();
    jit.set_jit(Some(50));
    let code = assemble(|a| {
        use iced_x86::code_asm::*;
        let mut top = a.create_label();
        a.mov(ecx, 3_000_000u32).unwrap();
        a.xor(eax, eax).unwrap();
        a.set_label(&mut top).unwrap();
        a.add(eax, ecx).unwrap();
        a.rol(eax, 3u32).unwrap();
        a.dec(ecx).unwrap();
        a.jnz(top).unwrap();
        a.hlt().unwrap();
    });
    let mut want = 0u32;
    for c in (1..=3_000_000u32).rev() {
        want = want.wrapping_add(c).rotate_left(3);
    }
    for cpu in [&mut reference, &mut jit] {
        cpu.space.ram.write_bytes(CODE, &code);
        cpu.cache.clear();
    }
    for run in 0..2 {
        for cpu in [&mut reference, &mut jit] {
            cpu.rip = CODE;
            cpu.halted = false;
            assert_eq!(cpu.run(100_000_000), CpuExit::Halted);
            assert_eq!(cpu.gpr[0] as u32, want, "run {run}");
        }
        assert_eq!(reference.icount, jit.icount);
        // The code arrives while the loop runs (or soon after).
        for _ in 0..200 {
            if jit.jit_blocks() > 0 {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert!(jit.jit_blocks() > 0, "the loop was never translated");
    }
}

/// With little code memory the translator starts afresh again and again
/// (freeing all host code between blocks); results stay the same.
#[test]
fn translator_restarts_when_its_code_memory_is_full() {
    let jit = random_blocks(0x7e57_0003, 400, |cpu| {
        if let Some(j) = cpu.jit.as_mut() {
            j.max_code = 16 << 10;
        }
    });
    let resets = jit.jit.as_ref().map_or(0, |j| j.resets);
    assert!(resets > 5, "only {resets} restarts");
}

/// Loops: a random body and `dec r13d; jnz` back to its start, so the
/// translated block enters itself directly; the budget sometimes stops it
/// half-way.
#[test]
fn translated_loops_match_the_interpreter() {
    let codes = codes();
    let (mut reference, mut jit) = pair();
    let mut rng = StdRng::seed_from_u64(0x7e57_0002);
    for it in 0..1500 {
        let (mut code, n) = loop {
            let (mut code, n) = random_block(&mut rng, &codes);
            // Drop the terminator, keep a body that leaves R13 alone.
            let mut dec =
                iced_x86::Decoder::with_ip(64, &code, CODE, iced_x86::DecoderOptions::NONE);
            let body: Vec<Instruction> = dec
                .iter()
                .filter(|i| matches!(i.flow_control(), iced_x86::FlowControl::Next))
                .collect();
            if body.iter().any(|i| {
                i.op_count() > 0
                    && i.op0_kind() == iced_x86::OpKind::Register
                    && i.op0_register().full_register() == Register::R13
            }) {
                continue;
            }
            let mut enc = Encoder::new(64);
            let mut ip = CODE;
            for i in &body {
                ip += enc.encode(i, ip).expect("re-encode") as u64;
            }
            code = enc.take_buffer();
            break (code, body.len().max(n.min(body.len())));
        };
        let ip = CODE + code.len() as u64;
        let mut enc = Encoder::new(64);
        let dec13 = Instruction::with1(Code::Dec_rm32, Register::R13D).expect("dec");
        let l = enc.encode(&dec13, ip).expect("encode") as u64;
        let jnz = Instruction::with_branch(Code::Jne_rel32_64, CODE).expect("jnz");
        enc.encode(&jnz, ip + l).expect("encode");
        code.extend(enc.take_buffer());
        let len = n + 2;
        let iters = rng.gen_range(1..12u64);
        let budget = if rng.gen_bool(0.3) {
            rng.gen_range(1..len as u64 * iters + 8)
        } else {
            len as u64 * iters + 200
        };
        // R13 counts the iterations.
        R13.with(|r| r.set(Some(iters)));
        check(&mut rng, &mut reference, &mut jit, &code, len, budget, it);
        R13.with(|r| r.set(None));
    }
}

thread_local! {
    /// A fixed start value for R13 (the loop counter), if set.
    static R13: std::cell::Cell<Option<u64>> = const { std::cell::Cell::new(None) };
}

/// Assembles 64-bit code at `CODE` with iced's assembler.
fn assemble(f: impl FnOnce(&mut iced_x86::code_asm::CodeAssembler)) -> Vec<u8> {
    let mut a = iced_x86::code_asm::CodeAssembler::new(64).expect("assembler");
    f(&mut a);
    a.assemble(CODE).expect("assemble")
}

/// A translated loop that rewrites an immediate in its own block on every
/// iteration sees the new value on the next one, as the interpreter does
/// (the store leaves translated code; the block is dropped and rebuilt).
#[test]
fn translated_loop_sees_its_own_code_change() {
    use iced_x86::code_asm::*;
    let code = assemble(|a| {
        let mut top = a.create_label();
        a.mov(ecx, 100u32).unwrap();
        a.xor(ebx, ebx).unwrap();
        a.set_label(&mut top).unwrap();
        a.mov(eax, 0x11u32).unwrap(); // at CODE + 7: b8 11 00 00 00
        a.add(rbx, rax).unwrap();
        a.mov(byte_ptr(CODE + 8), cl).unwrap();
        a.dec(ecx).unwrap();
        a.jnz(top).unwrap();
        a.hlt().unwrap();
    });
    assert_eq!(code[7..9], [0xb8, 0x11]);
    let (mut reference, mut jit) = pair();
    let mut sum = [0u64; 2];
    for (i, cpu) in [&mut reference, &mut jit].into_iter().enumerate() {
        cpu.space.ram.write_bytes(CODE, &code);
        cpu.cache.clear();
        cpu.gpr[4] = STACK + 0x800;
        cpu.rip = CODE;
        assert_eq!(cpu.run(10_000), CpuExit::Halted);
        sum[i] = cpu.gpr[3];
    }
    // 0x11 first, then the count of the iteration before: 100 down to 2.
    assert_eq!(sum[0], 0x11 + (2..=100).sum::<u64>());
    assert_eq!(sum[1], sum[0]);
    assert!(jit.jit_blocks() > 50, "{} blocks", jit.jit_blocks());
}

/// An endless translated loop still answers an exit request from another
/// thread (it looks on every backward branch).
#[test]
fn exit_request_stops_an_endless_translated_loop() {
    use iced_x86::code_asm::*;
    let code = assemble(|a| {
        let mut top = a.create_label();
        a.set_label(&mut top).unwrap();
        a.add(rax, 1).unwrap();
        a.jmp(top).unwrap();
    });
    let (_, mut jit) = pair();
    jit.space.ram.write_bytes(CODE, &code);
    jit.cache.clear();
    jit.rip = CODE;
    let flag = jit.exit_request.clone();
    let t = std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_millis(100));
        flag.store(true, std::sync::atomic::Ordering::Release);
    });
    assert_eq!(jit.run(u64::MAX), CpuExit::Requested);
    t.join().expect("thread");
    assert!(jit.jit_blocks() > 0);
    // Every iteration counted: two instructions per RAX increment.
    assert_eq!(jit.icount, 2 * jit.gpr[0]);
}

/// A CPU in 32-bit protected mode with flat segments and 32-bit paging
/// mapping only the pages the tests use, an IDT whose every exception
/// handler halts.
fn machine32() -> Cpu {
    let ram = GuestRam::new(4 << 20).expect("ram");
    ram.write_bytes(0x10000, &(0x11003u32).to_le_bytes());
    // Only DATA and STACK are writable (CR0.WP): stray stores cannot
    // change the code between the runs compared.
    for p in [IDT, HANDLER, GDT, CODE, LANDING, DATA, STACK] {
        let w = if p == DATA || p == STACK { 2 } else { 0 };
        ram.write_bytes(0x11000 + (p >> 12) * 4, &((p as u32) | 1 | w).to_le_bytes());
    }
    for v in 0..32u64 {
        let gate = (HANDLER & 0xffff) | (8 << 16) | (0x8e00 << 32) | ((HANDLER >> 16) << 48);
        ram.write_bytes(IDT + v * 8, &gate.to_le_bytes());
    }
    ram.write_bytes(HANDLER, &[0xf4; 16]);
    ram.write_bytes(LANDING, &[0xf4; 0x1000]);
    ram.write_bytes(GDT + 8, &0x00cf_9a00_0000_ffffu64.to_le_bytes());
    ram.write_bytes(GDT + 16, &0x00cf_9200_0000_ffffu64.to_le_bytes());
    let space = Arc::new(AddressSpace::new(ram));
    let mut cpu = Cpu::new(space);
    cpu.cr0 |=
        crate::cpu::cr0::PE | crate::cpu::cr0::NE | crate::cpu::cr0::PG | crate::cpu::cr0::WP;
    cpu.cr3 = 0x10000;
    cpu.seg[crate::cpu::CS] = Segment::flat32(8, true);
    flat_data(&mut cpu, 8);
    cpu
}

/// 32-bit protected-mode code: random blocks run interpreted and
/// translated leave the same state, with flat segments (translated) and
/// with a DS limit that faults (the translated code leaves for the
/// interpreter).
#[test]
fn translated_32bit_blocks_match_the_interpreter() {
    MODE32.with(|m| m.set(true));
    let codes = codes32();
    assert!(codes.len() > 200, "only {} instruction forms", codes.len());
    let mut reference = machine32();
    reference.set_jit(None);
    let mut jit = machine32();
    jit.set_jit(Some(1));
    let mut rng = StdRng::seed_from_u64(0x7e57_0032);
    for it in 0..3000 {
        let (code, n) = random_block(&mut rng, &codes);
        let budget = n as u64 + 8;
        let limit = if rng.gen_bool(0.1) { 0x30800 } else { u32::MAX };
        for cpu in [&mut reference, &mut jit] {
            cpu.seg[DS].limit = limit;
        }
        check(&mut rng, &mut reference, &mut jit, &code, n, budget, it);
    }
    MODE32.with(|m| m.set(false));
    let n = jit.jit_blocks();
    assert!(n > 3000, "only {n} blocks translated");
}
