//! Tests: every register and memory form the module implements is run on
//! random and special operands both through the emulator and natively on
//! the host (the same machine code, called through a small JIT wrapper),
//! and the architectural results compared; plus targeted tests for what
//! the host cannot be asked directly (unmasked exceptions, faults, x87
//! aliasing, FXSAVE).

use crate::bus::AddressSpace;
use crate::cpu::tests::{host_fpe, host_is_amd};
use crate::cpu::{
    attr, cr0, cr4, efer, reg, vec, Cpu, CpuExit, Exc, Segment, CS, DS, ES, FS, GS, SS,
};
use crate::memory::GuestRam;
use iced_x86::code_asm::*;
use iced_x86::{Code, Encoder, Instruction, MemoryOperand, Mnemonic, Register};
use std::sync::Arc;

/// Guest address of the data buffer (RSI and RDI point at it).
const DATA: u64 = 0x20000;
/// Guest address of the code.
const CODE: u64 = 0x1000;

/// Architectural state exchanged with both the emulator and the host.
#[repr(C, align(16))]
#[derive(Clone, Copy, Debug, PartialEq)]
struct St {
    xmm: [u128; 16],
    data: [u8; 512],
    mm: [u64; 8],
    gpr: [u64; 16],
    mxcsr: u32,
    host_csr: u32,
    flags: u64,
}

impl Default for St {
    fn default() -> Self {
        St {
            xmm: [0; 16],
            data: [0; 512],
            mm: [0; 8],
            gpr: [0; 16],
            mxcsr: 0x1f80,
            host_csr: 0,
            flags: 2,
        }
    }
}

/// Arithmetic flags compared (CF PF AF ZF SF OF).
const ARITH: u64 = 0x8d5;

/// GPRs the generated instructions may name (not RSP, RSI, RDI, R15).
const GPRS: [usize; 11] = [0, 1, 2, 3, 5, 8, 9, 10, 11, 12, 13];

// ---------------------------------------------------------------------------
// The emulator side.

/// A 64-bit CPU with the first 2 MiB identity-mapped, SSE enabled.
fn cpu64() -> (Cpu, Arc<AddressSpace>) {
    let ram = GuestRam::new(4 << 20).unwrap();
    let space = Arc::new(AddressSpace::new(ram));
    let mut cpu = Cpu::new(space.clone());
    // PML4 at 0x70000 → PDPT 0x71000 → PD 0x72000: two 2 MiB pages.
    space.write_phys(0x70000, 8, 0x71000 | 3);
    space.write_phys(0x71000, 8, 0x72000 | 3);
    space.write_phys(0x72000, 8, 0x83);
    space.write_phys(0x72008, 8, 0x20_0000 | 0x83);
    cpu.cr3 = 0x70000;
    cpu.cr4 = cr4::PAE | cr4::OSFXSR | cr4::OSXMMEXCPT;
    cpu.efer = efer::LME | efer::LMA;
    cpu.cr0 = cr0::PE | cr0::PG | cr0::MP | cr0::NE | cr0::ET;
    cpu.seg[CS] = Segment {
        selector: 8,
        base: 0,
        limit: 0xffff_ffff,
        attr: attr::P | attr::S | attr::L | attr::G | 0xb,
    };
    for s in [DS, ES, SS, FS, GS] {
        cpu.seg[s] = Segment::flat32(16, false);
    }
    cpu.rip = CODE;
    (cpu, space)
}

/// A 32-bit flat protected-mode CPU without paging, SSE enabled.
fn cpu32() -> (Cpu, Arc<AddressSpace>) {
    let ram = GuestRam::new(4 << 20).unwrap();
    let space = Arc::new(AddressSpace::new(ram));
    let mut cpu = Cpu::new(space.clone());
    cpu.cr0 = cr0::PE | cr0::MP | cr0::NE | cr0::ET;
    cpu.cr4 = cr4::OSFXSR | cr4::OSXMMEXCPT;
    cpu.seg[CS] = Segment::flat32(8, true);
    for s in [DS, ES, SS, FS, GS] {
        cpu.seg[s] = Segment::flat32(16, false);
    }
    cpu.rip = CODE;
    (cpu, space)
}

/// Loads `st` into `cpu`, runs `code` (followed by HLT) and returns the
/// resulting state and the exception raised, if any.
fn emu_on(cpu: &mut Cpu, space: &AddressSpace, code: &[u8], st: &St) -> (St, Option<Exc>) {
    let mut bytes = code.to_vec();
    bytes.push(0xf4);
    space.ram.write_bytes(CODE, &bytes);
    space.ram.write_bytes(DATA, &st.data);
    cpu.xmm = st.xmm;
    for i in 0..8 {
        cpu.x87.regs[i] = (st.mm[i], 0xffff);
    }
    cpu.gpr = st.gpr;
    cpu.gpr[reg::RSI] = DATA;
    cpu.gpr[reg::RDI] = DATA;
    cpu.mxcsr = st.mxcsr;
    cpu.flags.set(st.flags);
    cpu.last_exception = None;
    let exit = cpu.run(10);
    let mut out = *st;
    out.xmm = cpu.xmm;
    for i in 0..8 {
        out.mm[i] = cpu.x87.regs[i].0;
    }
    out.gpr = cpu.gpr;
    out.gpr[reg::RSI] = st.gpr[reg::RSI];
    out.gpr[reg::RDI] = st.gpr[reg::RDI];
    out.mxcsr = cpu.mxcsr;
    out.flags = cpu.flags.get() & ARITH | 2;
    space.ram.read_bytes(DATA, &mut out.data);
    let exc = match exit {
        CpuExit::Halted => None,
        _ => cpu.last_exception,
    };
    (out, exc)
}

fn emu(code: &[u8], st: &St) -> (St, Option<Exc>) {
    let (mut cpu, space) = cpu64();
    emu_on(&mut cpu, &space, code, st)
}

// ---------------------------------------------------------------------------
// The host side.

/// Builds the native wrapper around `insn`: loads `St` (pointer in RDI),
/// runs the instruction, stores `St` back.
fn wrapper(insn: &[u8]) -> Vec<u8> {
    let off = |o: usize| o as i32;
    let o_xmm = off(std::mem::offset_of!(St, xmm));
    let o_mm = off(std::mem::offset_of!(St, mm));
    let o_gpr = off(std::mem::offset_of!(St, gpr));
    let o_csr = off(std::mem::offset_of!(St, mxcsr));
    let o_host = off(std::mem::offset_of!(St, host_csr));
    let o_flags = off(std::mem::offset_of!(St, flags));
    let o_data = off(std::mem::offset_of!(St, data));
    let xmms = [
        xmm0, xmm1, xmm2, xmm3, xmm4, xmm5, xmm6, xmm7, xmm8, xmm9, xmm10, xmm11, xmm12, xmm13,
        xmm14, xmm15,
    ];
    let mms = [mm0, mm1, mm2, mm3, mm4, mm5, mm6, mm7];
    let gprs = [
        (0, rax),
        (1, rcx),
        (2, rdx),
        (3, rbx),
        (5, rbp),
        (8, r8),
        (9, r9),
        (10, r10),
        (11, r11),
        (12, r12),
        (13, r13),
        (14, r14),
    ];
    let mut a = CodeAssembler::new(64).unwrap();
    for r in [rbx, rbp, r12, r13, r14, r15] {
        a.push(r).unwrap();
    }
    a.mov(r15, rdi).unwrap();
    a.stmxcsr(dword_ptr(r15 + o_host)).unwrap();
    for (i, x) in xmms.iter().enumerate() {
        a.movdqu(*x, xmmword_ptr(r15 + o_xmm + 16 * i as i32))
            .unwrap();
    }
    for (i, m) in mms.iter().enumerate() {
        a.movq(*m, qword_ptr(r15 + o_mm + 8 * i as i32)).unwrap();
    }
    for (i, r) in gprs {
        a.mov(r, qword_ptr(r15 + o_gpr + 8 * i)).unwrap();
    }
    a.lea(rsi, qword_ptr(r15 + o_data)).unwrap();
    a.lea(rdi, qword_ptr(r15 + o_data)).unwrap();
    a.push(qword_ptr(r15 + o_flags)).unwrap();
    a.popfq().unwrap();
    a.ldmxcsr(dword_ptr(r15 + o_csr)).unwrap();
    a.db(insn).unwrap();
    a.stmxcsr(dword_ptr(r15 + o_csr)).unwrap();
    a.ldmxcsr(dword_ptr(r15 + o_host)).unwrap();
    a.pushfq().unwrap();
    a.pop(qword_ptr(r15 + o_flags)).unwrap();
    for (i, x) in xmms.iter().enumerate() {
        a.movdqu(xmmword_ptr(r15 + o_xmm + 16 * i as i32), *x)
            .unwrap();
    }
    for (i, m) in mms.iter().enumerate() {
        a.movq(qword_ptr(r15 + o_mm + 8 * i as i32), *m).unwrap();
    }
    for (i, r) in gprs {
        a.mov(qword_ptr(r15 + o_gpr + 8 * i), r).unwrap();
    }
    a.fninit().unwrap();
    a.emms().unwrap();
    for r in [r15, r14, r13, r12, rbp, rbx] {
        a.pop(r).unwrap();
    }
    a.ret().unwrap();
    a.assemble(0).unwrap()
}

/// Runs `insn` natively on `st`; returns the state and whether a SIMD
/// floating-point exception was raised (then the instruction is skipped).
fn host(insn: &[u8], st: &St) -> (St, bool) {
    host_fpe::arm(insn.len());
    let code = wrapper(insn);
    let mut out = *st;
    // SAFETY: a fresh private anonymous mapping, checked for failure; it is
    // filled while writable, then made read+execute before being called, and
    // unmapped afterwards. The wrapper follows the SysV ABI (saves the
    // callee-saved registers it uses, restores the host MXCSR, leaves the
    // x87 empty) and only touches `out` through the pointer passed in RDI.
    unsafe {
        let len = 4096;
        let p = libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        );
        assert_ne!(p, libc::MAP_FAILED);
        std::ptr::copy_nonoverlapping(code.as_ptr(), p as *mut u8, code.len());
        assert_eq!(libc::mprotect(p, len, libc::PROT_READ | libc::PROT_EXEC), 0);
        let f: extern "C" fn(*mut St) = std::mem::transmute(p);
        f(&mut out);
        libc::munmap(p, len);
    }
    out.flags = out.flags & ARITH | 2;
    out.host_csr = st.host_csr;
    (out, host_fpe::hit())
}

// ---------------------------------------------------------------------------
// Random operands.

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn pick<T: Copy>(&mut self, v: &[T]) -> T {
        v[self.below(v.len() as u64) as usize]
    }
}

const F32S: [u32; 28] = [
    0,
    0x8000_0000,
    0x7f80_0000,
    0xff80_0000,
    0x7fc0_0000,
    0xffc0_0000,
    0x7fa0_0000,
    0xff80_0001,
    0x7fc1_2345,
    1,
    0x8000_0001,
    0x007f_ffff,
    0x0080_0000,
    0x8080_0000,
    0x7f7f_ffff,
    0xff7f_ffff,
    0x3f80_0000,
    0xbf80_0000,
    0x4f00_0000,
    0xcf00_0000,
    0x4eff_ffff,
    0x5f00_0000,
    0xdf00_0000,
    0x3fc0_0000,
    0x4020_0000,
    0x3f00_0000,
    0xbfc0_0000,
    0x4b00_0001,
];

const F64S: [u64; 24] = [
    0,
    1 << 63,
    0x7ff0_0000_0000_0000,
    0xfff0_0000_0000_0000,
    0x7ff8_0000_0000_0000,
    0xfff8_0000_0000_0000,
    0x7ff4_0000_0000_0000,
    0x7ff0_0000_0000_0001,
    1,
    0x000f_ffff_ffff_ffff,
    0x0010_0000_0000_0000,
    0x7fef_ffff_ffff_ffff,
    0x3ff0_0000_0000_0000,
    0xbff0_0000_0000_0000,
    0x41e0_0000_0000_0000,
    0xc1e0_0000_0000_0000,
    0x41df_ffff_ffe0_0000,
    0x43e0_0000_0000_0000,
    0xc3e0_0000_0000_0000,
    0x3ff8_0000_0000_0000,
    0x4004_0000_0000_0000,
    0x47f0_0000_0000_0000,
    0x3800_0000_0000_0000,
    0x36a0_0000_0000_0000,
];

fn rand_f32(r: &mut Rng) -> u64 {
    match r.below(4) {
        0 => r.pick(&F32S) as u64,
        // Near the overflow and underflow thresholds.
        1 => {
            let e = r.pick(&[0u64, 1, 2, 3, 100, 126, 127, 128, 150, 250, 253, 254]);
            (r.next() & 0x807f_ffff) | (e << 23)
        }
        2 => (r.next() & 0x8000_0000) | ((120 + r.below(16)) << 23) | (r.next() & 0x7f_ffff),
        _ => r.next() & 0xffff_ffff,
    }
}

fn rand_f64(r: &mut Rng) -> u64 {
    match r.below(4) {
        0 => r.pick(&F64S),
        1 => {
            let e = r.pick(&[
                0u64, 1, 2, 0x36a, 0x380, 0x381, 0x3ff, 0x41e, 0x43e, 0x47e, 0x47f, 0x7fe,
            ]);
            (r.next() & 0x800f_ffff_ffff_ffff) | (e << 52)
        }
        2 => (r.next() & (1 << 63)) | ((1015 + r.below(16)) << 52) | (r.next() & ((1 << 52) - 1)),
        _ => r.next(),
    }
}

fn rand_half(r: &mut Rng) -> u64 {
    match r.below(6) {
        0 | 1 => rand_f32(r) | rand_f32(r) << 32,
        2 | 3 => rand_f64(r),
        4 => {
            let mut v = 0;
            for j in 0..8 {
                v |= r.pick(&[0u64, 1, 2, 0x7f, 0x80, 0xff, 0x7e, 0x81, 0x41, 0x5a]) << (8 * j);
            }
            v
        }
        _ => r.next(),
    }
}

fn rand_vec(r: &mut Rng) -> u128 {
    rand_half(r) as u128 | (rand_half(r) as u128) << 64
}

fn rand_state(r: &mut Rng) -> St {
    let mut st = St::default();
    for x in st.xmm.iter_mut() {
        *x = rand_vec(r);
    }
    for m in st.mm.iter_mut() {
        *m = rand_half(r);
    }
    for c in st.data.chunks_mut(16) {
        c.copy_from_slice(&rand_vec(r).to_le_bytes());
    }
    for g in st.gpr.iter_mut() {
        *g = if r.below(2) == 0 {
            r.next()
        } else {
            (r.below(41) as i64 - 20) as u64
        };
    }
    // All exceptions masked (the host would trap), random rounding, DAZ,
    // FTZ and sticky flags.
    st.mxcsr = 0x1f80 | (r.next() as u32 & 0xe07f);
    if r.below(2) == 0 {
        st.mxcsr &= !0x3f;
    }
    st.flags = r.next() & ARITH | 2;
    st
}

// ---------------------------------------------------------------------------
// Instruction forms, from iced's code names.

#[derive(Debug, Clone, Copy, PartialEq)]
enum Tok {
    Xmm,
    Mm,
    Gpr(u32),
    /// Register (of the given kind) or memory.
    OrMem(&'static Tok),
    Mem,
    Imm,
}

fn parse_tok(t: &str) -> Option<Tok> {
    const XMM: Tok = Tok::Xmm;
    const MM: Tok = Tok::Mm;
    const R8: Tok = Tok::Gpr(8);
    const R16: Tok = Tok::Gpr(16);
    const R32: Tok = Tok::Gpr(32);
    const R64: Tok = Tok::Gpr(64);
    Some(match t {
        "xmm" => Tok::Xmm,
        "mm" => Tok::Mm,
        "r8" => R8,
        "r16" => R16,
        "r32" => R32,
        "r64" => R64,
        "imm8" => Tok::Imm,
        "m8" | "m16" | "m32" | "m64" | "m128" => Tok::Mem,
        _ if t.starts_with("xmmm") => Tok::OrMem(&XMM),
        _ if t.starts_with("mmm") => Tok::OrMem(&MM),
        "rm8" => Tok::OrMem(&R8),
        "rm16" => Tok::OrMem(&R16),
        "rm32" | "r32m8" | "r32m16" => Tok::OrMem(&R32),
        "rm64" | "r64m8" | "r64m16" | "r64m32" => Tok::OrMem(&R64),
        _ => return None,
    })
}

fn xmm(i: u64) -> Register {
    Register::try_from(Register::XMM0 as usize + i as usize).unwrap()
}

fn mmr(i: u64) -> Register {
    Register::try_from(Register::MM0 as usize + i as usize).unwrap()
}

fn gpr(bits: u32, i: usize) -> Register {
    let base = match bits {
        8 => {
            // AL, CL, DL, BL, SPL.. (REX forms): iced numbers AL..BL, AH..BH,
            // SPL..R15L.
            return match i {
                0..=3 => Register::try_from(Register::AL as usize + i).unwrap(),
                _ => Register::try_from(Register::SPL as usize + i - 4).unwrap(),
            };
        }
        16 => Register::AX,
        32 => Register::EAX,
        _ => Register::RAX,
    };
    Register::try_from(base as usize + i).unwrap()
}

/// Operand kinds of `code`, or None for forms this harness cannot run.
fn form(code: Code) -> Option<Vec<Tok>> {
    let name = format!("{code:?}");
    let mut parts = name.split('_');
    let _mn = parts.next()?;
    parts.map(parse_tok).collect()
}

/// Builds a random instance of `code`.
fn instance(
    code: Code,
    toks: &[Tok],
    r: &mut Rng,
    use_mem: bool,
    narrow: bool,
) -> Option<Instruction> {
    let (nx, gprs): (u64, &[usize]) = if narrow { (8, &GPRS[..5]) } else { (16, &GPRS) };
    let mut ops: Vec<Result<Register, MemoryOperand>> = Vec::new();
    let mut imm = None;
    for t in toks {
        let t = match t {
            Tok::OrMem(_) if use_mem => &Tok::Mem,
            Tok::OrMem(k) => *k,
            t => t,
        };
        match t {
            Tok::Xmm => ops.push(Ok(xmm(r.below(nx)))),
            Tok::Mm => ops.push(Ok(mmr(r.below(8)))),
            Tok::Gpr(b) => ops.push(Ok(gpr(*b, r.pick(gprs)))),
            Tok::Mem => ops.push(Err(MemoryOperand::with_base(Register::RSI))),
            Tok::Imm => imm = Some(r.next() as u8 as u32),
            Tok::OrMem(_) => return None,
        }
    }
    let op = |o: &Result<Register, MemoryOperand>| *o;
    let ins = match (ops.len(), imm) {
        (0, None) => {
            let mut i = Instruction::default();
            i.set_code(code);
            i
        }
        (1, None) => match op(&ops[0]) {
            Ok(a) => Instruction::with1(code, a).ok()?,
            Err(m) => Instruction::with1(code, m).ok()?,
        },
        (2, None) => match (op(&ops[0]), op(&ops[1])) {
            (Ok(a), Ok(b)) => Instruction::with2(code, a, b).ok()?,
            (Ok(a), Err(b)) => Instruction::with2(code, a, b).ok()?,
            (Err(a), Ok(b)) => Instruction::with2(code, a, b).ok()?,
            _ => return None,
        },
        (1, Some(i)) => match op(&ops[0]) {
            Ok(a) => Instruction::with2(code, a, i).ok()?,
            Err(_) => return None,
        },
        (2, Some(i)) => match (op(&ops[0]), op(&ops[1])) {
            (Ok(a), Ok(b)) => Instruction::with3(code, a, b, i).ok()?,
            (Ok(a), Err(b)) => Instruction::with3(code, a, b, i).ok()?,
            (Err(a), Ok(b)) => Instruction::with3(code, a, b, i).ok()?,
            _ => return None,
        },
        _ => return None,
    };
    Some(ins)
}

fn encode(ins: &Instruction) -> Option<Vec<u8>> {
    encode_in(ins, 64)
}

fn encode_in(ins: &Instruction, bitness: u32) -> Option<Vec<u8>> {
    let mut e = Encoder::new(bitness);
    e.encode(ins, CODE).ok()?;
    Some(e.take_buffer())
}

/// Codes the differential test runs: everything this module claims, except
/// what the host cannot run with arbitrary data (LDMXCSR, FXRSTOR) or what
/// is not a plain operand form.
fn claimed_codes() -> Vec<(Code, Vec<Tok>)> {
    let mut v = Vec::new();
    for code in Code::values() {
        let mut ins = Instruction::default();
        ins.set_code(code);
        if ins.encoding() != iced_x86::EncodingKind::Legacy || super::lookup(&ins).is_none() {
            continue;
        }
        let name = format!("{code:?}");
        if name.starts_with("Ldmxcsr") || name.starts_with("Fx") || name.starts_with("Maskmov") {
            continue;
        }
        if let Some(t) = form(code) {
            v.push((code, t));
        }
    }
    v
}

/// DPPS/DPPD on an AMD host: which NaN comes out when several products are
/// NaN. The SDM's DPPS/DPPD Operation (vol. 2A, DP_primitive) computes one
/// sum, (t0 + t1) + (t2 + t3), for every selected lane, and AMD cores do
/// store one sum in all of them; Intel cores, which the emulator follows
/// (`fp::dp`), add in a different operand order per lane, so with two NaN
/// products lanes can propagate different NaNs (the first source's NaN wins
/// an addition, SDM vol. 1 §4.8.3.5). Neither manual specifies more. A lane
/// of the destination that is a NaN in both results is taken as equal;
/// every other lane, the other registers, MXCSR and the exception are
/// compared as they are.
fn amd_dp_nans(ins: &Instruction, got: &mut St, want: &St) {
    let dst = ins.op0_register() as usize - Register::XMM0 as usize;
    let (bits, nan): (u32, fn(u128) -> bool) = if ins.mnemonic() == Mnemonic::Dpps {
        (32, |v| v as u32 & 0x7fff_ffff > 0x7f80_0000)
    } else {
        (64, |v| v as u64 & !(1 << 63) > 0x7ff0_0000_0000_0000)
    };
    let mask = (1u128 << bits) - 1;
    for j in 0..128 / bits {
        let sh = j * bits;
        let (g, w) = ((got.xmm[dst] >> sh) & mask, (want.xmm[dst] >> sh) & mask);
        if g != w && nan(g) && nan(w) {
            got.xmm[dst] = got.xmm[dst] & !(mask << sh) | w << sh;
        }
    }
}

/// The differential test of `code` over `n` random states; returns the
/// number of cases run.
fn diff_code(code: Code, toks: &[Tok], n: u32, seed: u64, unmask: bool) -> u32 {
    let amd = host_is_amd();
    let mut r = Rng(seed | 1);
    let has_mem = toks.iter().any(|t| matches!(t, Tok::OrMem(_) | Tok::Mem));
    let mut ran = 0;
    for i in 0..n {
        let use_mem = has_mem && i % 3 == 0;
        let Some(ins) = instance(code, toks, &mut r, use_mem, false) else {
            continue;
        };
        let Some(bytes) = encode(&ins) else {
            continue;
        };
        let mut st = rand_state(&mut r);
        if unmask && r.below(2) == 0 {
            st.mxcsr &= !((r.next() as u32 & 0x3f) << 7);
        }
        let (want, fault) = host(&bytes, &st);
        let (mut got, exc) = emu(&bytes, &st);
        if amd && matches!(ins.mnemonic(), Mnemonic::Dpps | Mnemonic::Dppd) {
            amd_dp_nans(&ins, &mut got, &want);
        }
        let want_exc = fault.then_some(Exc {
            vector: vec::XM,
            code: None,
        });
        assert_eq!(
            exc, want_exc,
            "{code:?} {ins} mxcsr {:#x}: exception",
            st.mxcsr
        );
        if got != want {
            let mut msg = format!("{code:?}: {ins}\n mxcsr in {:#x}\n", st.mxcsr);
            for j in 0..16 {
                if got.xmm[j] != want.xmm[j] {
                    msg += &format!(
                        " xmm{j}: in {:032x} got {:032x} want {:032x}\n",
                        st.xmm[j], got.xmm[j], want.xmm[j]
                    );
                }
            }
            for j in 0..8 {
                if got.mm[j] != want.mm[j] {
                    msg += &format!(
                        " mm{j}: in {:016x} got {:016x} want {:016x}\n",
                        st.mm[j], got.mm[j], want.mm[j]
                    );
                }
            }
            for j in 0..16 {
                if got.gpr[j] != want.gpr[j] {
                    msg += &format!(
                        " gpr{j}: in {:x} got {:x} want {:x}\n",
                        st.gpr[j], got.gpr[j], want.gpr[j]
                    );
                }
            }
            if got.mxcsr != want.mxcsr {
                msg += &format!(" mxcsr got {:#x} want {:#x}\n", got.mxcsr, want.mxcsr);
            }
            if got.flags != want.flags {
                msg += &format!(" flags got {:#x} want {:#x}\n", got.flags, want.flags);
            }
            if got.data != want.data {
                msg += &format!(
                    " data in {:02x?}\n got {:02x?}\n want {:02x?}\n",
                    st.data, got.data, want.data
                );
            }
            panic!("{msg}");
        }
        ran += 1;
    }
    ran
}

#[test]
fn differential_all_forms() {
    let codes = claimed_codes();
    assert!(codes.len() > 300, "only {} forms", codes.len());
    // SSE_DIFF_N raises the number of cases per form; SSE_DIFF_ONLY
    // restricts the run to forms whose name contains it.
    let n = std::env::var("SSE_DIFF_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300);
    let only = std::env::var("SSE_DIFF_ONLY").unwrap_or_default();
    let seed = std::env::var("SSE_DIFF_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0u64);
    let mut total = 0;
    for (k, (code, toks)) in codes.iter().enumerate() {
        if !format!("{code:?}").contains(only.as_str()) {
            continue;
        }
        total += diff_code(
            *code,
            toks,
            n,
            seed ^ 0x9e37_79b9_7f4a_7c15 ^ (k as u64 * 0x1234_5679),
            true,
        );
    }
    eprintln!("differential: {} forms, {total} cases", codes.len());
}

/// The same forms in 32-bit protected mode (emulator) against the host
/// running the 64-bit encoding of the same operation (XMM0–7, 32-bit
/// registers only).
#[test]
fn differential_32bit_mode() {
    let mut r = Rng(0x5eed_3232);
    let mut total = 0;
    for (code, toks) in claimed_codes() {
        if toks
            .iter()
            .any(|t| matches!(t, Tok::Gpr(64) | Tok::OrMem(Tok::Gpr(64))))
        {
            continue;
        }
        let has_mem = toks.iter().any(|t| matches!(t, Tok::OrMem(_) | Tok::Mem));
        for i in 0..40 {
            let use_mem = has_mem && i % 3 == 0;
            let Some(ins) = instance(code, &toks, &mut r, use_mem, true) else {
                continue;
            };
            let mut ins32 = ins;
            if use_mem {
                ins32.set_memory_base(Register::ESI);
            }
            let (Some(b64), Some(b32)) = (encode(&ins), encode_in(&ins32, 32)) else {
                continue;
            };
            let mut st = rand_state(&mut r);
            for g in st.gpr.iter_mut() {
                *g &= 0xffff_ffff;
            }
            let (want, fault) = host(&b64, &st);
            let (mut cpu, space) = cpu32();
            let (got, exc) = emu_on(&mut cpu, &space, &b32, &st);
            assert!(!fault && exc.is_none(), "{code:?} {ins32}: {exc:?}");
            assert_eq!(&got.xmm[..8], &want.xmm[..8], "{code:?} {ins32} xmm");
            assert_eq!(got.mm, want.mm, "{code:?} {ins32} mm");
            assert_eq!(&got.gpr[..8], &want.gpr[..8], "{code:?} {ins32} gpr");
            assert_eq!(
                (got.mxcsr, got.flags),
                (want.mxcsr, want.flags),
                "{code:?} {ins32}"
            );
            assert_eq!(got.data, want.data, "{code:?} {ins32} data");
            total += 1;
        }
    }
    assert!(total > 5000, "{total}");
}

/// MASKMOVQ/MASKMOVDQU (implicit DS:RDI destination).
#[test]
fn maskmov_matches_host() {
    let mut r = Rng(77);
    for i in 0..600 {
        let ins = if i % 2 == 0 {
            Instruction::with_maskmovq(64, mmr(r.below(8)), mmr(r.below(8)), Register::None)
        } else {
            Instruction::with_maskmovdqu(64, xmm(r.below(16)), xmm(r.below(16)), Register::None)
        }
        .unwrap();
        let bytes = encode(&ins).unwrap();
        let mut st = rand_state(&mut r);
        if i % 4 < 2 {
            // Plenty of selected bytes but not all.
            st.mm[r.below(8) as usize] &= 0x80ff_0080_00ff_8000;
        }
        let (want, _) = host(&bytes, &st);
        let (got, exc) = emu(&bytes, &st);
        assert_eq!(exc, None);
        assert_eq!(got, want, "{ins}");
    }
}

/// Assembles 64-bit code at CODE.
fn asm64(f: impl FnOnce(&mut CodeAssembler) -> Result<(), iced_x86::IcedError>) -> Vec<u8> {
    let mut a = CodeAssembler::new(64).unwrap();
    f(&mut a).unwrap();
    a.assemble(CODE).unwrap()
}

/// Assembles 32-bit code at CODE.
fn asm32(f: impl FnOnce(&mut CodeAssembler) -> Result<(), iced_x86::IcedError>) -> Vec<u8> {
    let mut a = CodeAssembler::new(32).unwrap();
    f(&mut a).unwrap();
    a.assemble(CODE).unwrap()
}

/// A random FXSAVE image the host can load: valid MXCSR, no pending x87
/// exception.
fn rand_fx_image(r: &mut Rng) -> [u8; 512] {
    let mut img = [0u8; 512];
    for c in img.chunks_mut(8) {
        c.copy_from_slice(&r.next().to_le_bytes());
    }
    // FSW without exception bits, FTW abridged random, MXCSR valid, FIP
    // canonical (the host keeps only its low 56 bits).
    img[2] = 0;
    img[15] = 0;
    let csr = (r.next() as u32) & 0xffff;
    img[24..28].copy_from_slice(&csr.to_le_bytes());
    img[28..32].copy_from_slice(&0xffffu32.to_le_bytes());
    // Some registers with special encodings (zero, denormal, unnormal, NaN).
    for (slot, (m, e)) in [
        (0, (0u64, 0u16)),
        (1, (5, 0)),
        (2, (1 << 62, 0x3fff)),
        (3, (1 << 63, 0x7fff)),
    ] {
        if r.below(2) == 0 {
            let o = 32 + 16 * slot;
            img[o..o + 8].copy_from_slice(&m.to_le_bytes());
            img[o + 8..o + 10].copy_from_slice(&(e | (r.next() as u16 & 0x8000)).to_le_bytes());
        }
    }
    img
}

/// FXRSTOR64 then FXSAVE64 of random images: the saved image (x87 header,
/// registers, XMM, MXCSR) and the registers loaded match the host.
#[test]
fn fxrstor_fxsave64_match_host() {
    let code = asm64(|a| {
        a.fxrstor64(ptr(rsi))?;
        a.fxsave64(ptr(rsi))
    });
    let amd = host_is_amd();
    let mut r = Rng(1234);
    for _ in 0..300 {
        let mut st = rand_state(&mut r);
        st.data = rand_fx_image(&mut r);
        let (mut want, fault) = host(&code, &st);
        assert!(!fault);
        let (got, exc) = emu(&code, &st);
        assert_eq!(exc, None);
        assert_eq!(got.xmm, want.xmm);
        assert_eq!(got.mxcsr, want.mxcsr);
        if amd {
            // AMD cores restore and save FOP, FIP and FDP (bytes 6..24)
            // only while FSW.ES is set and write zeros otherwise (AMD APM
            // vol. 4 and 5, FXSAVE and FXRSTOR); Intel cores, as the
            // emulator, always save them (SDM vol. 2A, FXSAVE, Field
            // Definitions). The images here never have ES set, so the
            // host's pointers must be zero; the emulator's are checked
            // against the Intel layout by `fxsave_legacy_layout` and on
            // Intel hosts.
            assert_eq!(want.data[2] & 0x80, 0);
            assert!(want.data[6..24].iter().all(|&b| b == 0));
            want.data[6..24].copy_from_slice(&got.data[6..24]);
            // MXCSR_MASK: AMD cores with misaligned SSE mode
            // (CPUID Fn8000_0001_ECX[MisAlignSse]) also implement MXCSR
            // bit 17, MM, the misaligned-exception mask (AMD APM vol. 1,
            // "MXCSR Register"), which the emulated Intel CPU lacks.
            want.data[30] &= !0x02;
        }
        assert_eq!(&got.data[..], &want.data[..], "image");
    }
}

/// The full tag word FXRSTOR rebuilds from the abridged one and the
/// register contents, against the host's FNSTENV.
#[test]
fn fxrstor_full_tag_matches_host() {
    let code = asm64(|a| {
        a.fxrstor64(ptr(rsi))?;
        a.fnstenv(ptr(rsi + 448))
    });
    let run_only = asm64(|a| a.fxrstor64(ptr(rsi)));
    let mut r = Rng(99);
    for _ in 0..300 {
        let mut st = rand_state(&mut r);
        st.data = rand_fx_image(&mut r);
        let (want, _) = host(&code, &st);
        let want_tag = u16::from_le_bytes([want.data[448 + 8], want.data[448 + 9]]);
        let (mut cpu, space) = cpu64();
        let (_, exc) = emu_on(&mut cpu, &space, &run_only, &st);
        assert_eq!(exc, None);
        assert_eq!(cpu.x87.tag, want_tag, "abridged {:#04x}", st.data[4]);
        let fsw = u16::from_le_bytes([st.data[2], st.data[3]]);
        assert_eq!(cpu.x87.top as u16, (fsw >> 11) & 7);
    }
}

/// The legacy FXSAVE layout (32-bit FIP/FDP with selectors), XMM0–7 only
/// outside 64-bit mode, and TOP in FSW; FXRSTOR restores it.
#[test]
fn fxsave_legacy_layout() {
    let (mut cpu, space) = cpu32();
    cpu.x87.cw = 0x027f;
    cpu.x87.regs[0] = (0, 0);
    cpu.x87.sw = 0x4100;
    cpu.x87.top = 5;
    cpu.x87.tag = 0xfff0; // R0 and R1 (physical) non-empty.
    cpu.x87.regs[5] = (0x8000_0000_0000_0000, 0x3fff); // ST0 = 1.0
    cpu.x87.fip = 0x1234_5678_9abc;
    cpu.x87.fcs = 0x23;
    cpu.x87.fdp = 0xdead_beef;
    cpu.x87.fds = 0x2b;
    cpu.x87.fop = 0xffff;
    for i in 0..16 {
        cpu.xmm[i] = 0x1111_1111_1111_1111_1111_1111_1111_1111u128.wrapping_mul(i as u128 + 1);
    }
    let code = asm32(|a| {
        a.fxsave(ptr(esi))?;
        a.hlt()
    });
    space.ram.write_bytes(CODE, &code);
    space.ram.write_bytes(DATA, &[0xaa; 512]);
    cpu.gpr[reg::RSI] = DATA;
    assert_eq!(cpu.run(10), CpuExit::Halted);
    let mut img = [0u8; 512];
    space.ram.read_bytes(DATA, &mut img);
    let w = |o: usize| u16::from_le_bytes([img[o], img[o + 1]]);
    let d = |o: usize| u32::from_le_bytes([img[o], img[o + 1], img[o + 2], img[o + 3]]);
    assert_eq!(w(0), 0x027f);
    assert_eq!(w(2), 0x4100 | 5 << 11);
    assert_eq!(img[4], 0b0000_0011);
    assert_eq!(img[5], 0);
    assert_eq!(w(6), 0x7ff);
    assert_eq!((d(8), w(12), w(14)), (0x5678_9abc, 0x23, 0));
    assert_eq!((d(16), w(20), w(22)), (0xdead_beef, 0x2b, 0));
    assert_eq!((d(24), d(28)), (0x1f80, 0xffff));
    assert_eq!(&img[32..40], &0x8000_0000_0000_0000u64.to_le_bytes());
    assert_eq!(&img[40..48], &[0xff, 0x3f, 0, 0, 0, 0, 0, 0]);
    assert_eq!(&img[160..176], &cpu.xmm[0].to_le_bytes());
    assert_eq!(&img[272..288], &cpu.xmm[7].to_le_bytes());
    assert_eq!(
        &img[288..304],
        &[0xaa; 16],
        "XMM8 is not saved outside 64-bit mode"
    );
    // Restore into a clean CPU.
    let (mut c2, s2) = cpu32();
    let code = asm32(|a| {
        a.fxrstor(ptr(esi))?;
        a.hlt()
    });
    s2.ram.write_bytes(CODE, &code);
    s2.ram.write_bytes(DATA, &img);
    c2.gpr[reg::RSI] = DATA;
    assert_eq!(c2.run(10), CpuExit::Halted);
    assert_eq!(
        (c2.x87.cw, c2.x87.top, c2.x87.fcs, c2.x87.fds),
        (0x027f, 5, 0x23, 0x2b)
    );
    assert_eq!(
        (c2.x87.fip, c2.x87.fdp, c2.x87.fop),
        (0x5678_9abc, 0xdead_beef, 0x7ff)
    );
    // R0 and R1 hold zeros: tag "zero" (01); the rest empty.
    assert_eq!(c2.x87.tag, 0xfff5);
    assert_eq!(&c2.xmm[..8], &cpu.xmm[..8]);
    assert_eq!(c2.xmm[8], 0);
}

/// Runs `code` on a 64-bit CPU prepared by `setup`; returns the CPU and
/// the exception raised.
fn run_with(code: &[u8], setup: impl FnOnce(&mut Cpu, &AddressSpace)) -> (Cpu, Option<Exc>) {
    let (mut cpu, space) = cpu64();
    let mut bytes = code.to_vec();
    bytes.push(0xf4);
    space.ram.write_bytes(CODE, &bytes);
    cpu.gpr[reg::RSI] = DATA;
    setup(&mut cpu, &space);
    let exit = cpu.run(10);
    let exc = if exit == CpuExit::Halted {
        None
    } else {
        cpu.last_exception
    };
    (cpu, exc)
}

const UD: Option<Exc> = Some(Exc::UD);
const NM: Option<Exc> = Some(Exc::NM);
const XM: Option<Exc> = Some(Exc {
    vector: vec::XM,
    code: None,
});

fn gp0() -> Option<Exc> {
    Some(Exc::gp(0))
}

#[test]
fn control_register_checks() {
    let addps = asm64(|a| a.addps(xmm0, xmm1));
    let paddb_mm = asm64(|a| a.paddb(mm0, mm1));
    let paddq_mm = asm64(|a| a.paddq(mm0, mm1));
    let cvtpi2ps = asm64(|a| a.cvtpi2ps(xmm0, mm1));
    let fxsave = asm64(|a| a.fxsave64(ptr(rsi)));
    let ldmxcsr = asm64(|a| a.ldmxcsr(ptr(rsi)));
    let emms = asm64(|a| a.emms());
    let em = |c: &mut Cpu, _: &AddressSpace| c.cr0 |= cr0::EM;
    let ts = |c: &mut Cpu, _: &AddressSpace| c.cr0 |= cr0::TS;
    let nofx = |c: &mut Cpu, _: &AddressSpace| c.cr4 &= !cr4::OSFXSR;
    assert_eq!(run_with(&addps, em).1, UD);
    assert_eq!(run_with(&paddb_mm, em).1, UD);
    assert_eq!(run_with(&emms, em).1, UD);
    assert_eq!(run_with(&fxsave, em).1, NM);
    assert_eq!(run_with(&addps, ts).1, NM);
    assert_eq!(run_with(&paddb_mm, ts).1, NM);
    assert_eq!(run_with(&fxsave, ts).1, NM);
    assert_eq!(run_with(&cvtpi2ps, ts).1, NM);
    assert_eq!(run_with(&addps, nofx).1, UD);
    assert_eq!(run_with(&ldmxcsr, nofx).1, UD);
    assert_eq!(run_with(&cvtpi2ps, nofx).1, UD);
    assert_eq!(run_with(&paddb_mm, nofx).1, None);
    assert_eq!(run_with(&paddq_mm, nofx).1, None);
    // LOCK prefix.
    assert_eq!(run_with(&[0xf0, 0x0f, 0x58, 0xc1], |_, _| {}).1, UD);
    // A pending x87 exception: #MF for MMX and EMMS, not for SSE.
    let pending = |c: &mut Cpu, _: &AddressSpace| c.x87.sw |= 0x81;
    let mf = Some(Exc {
        vector: vec::MF,
        code: None,
    });
    assert_eq!(run_with(&paddb_mm, pending).1, mf);
    assert_eq!(run_with(&emms, pending).1, mf);
    assert_eq!(run_with(&cvtpi2ps, pending).1, mf);
    assert_eq!(run_with(&addps, pending).1, None);
}

#[test]
fn alignment_faults() {
    let mis = |c: &mut Cpu, _: &AddressSpace| c.gpr[reg::RSI] = DATA + 8;
    for code in [
        asm64(|a| a.movaps(xmm0, ptr(rsi))),
        asm64(|a| a.movaps(ptr(rsi), xmm0)),
        asm64(|a| a.movdqa(xmm0, ptr(rsi))),
        asm64(|a| a.addps(xmm0, ptr(rsi))),
        asm64(|a| a.paddb(xmm0, ptr(rsi))),
        asm64(|a| a.pshufd(xmm0, ptr(rsi), 0x1b)),
        asm64(|a| a.cvtpd2pi(mm0, ptr(rsi))),
        asm64(|a| a.movntdq(ptr(rsi), xmm0)),
        asm64(|a| a.fxsave64(ptr(rsi))),
        asm64(|a| a.fxrstor64(ptr(rsi))),
    ] {
        let (cpu, exc) = run_with(&code, mis);
        assert_eq!(exc, gp0(), "{code:02x?}");
        assert_eq!(cpu.rip, CODE);
    }
    for code in [
        asm64(|a| a.movups(xmm0, ptr(rsi))),
        asm64(|a| a.movdqu(ptr(rsi), xmm0)),
        asm64(|a| a.lddqu(xmm0, ptr(rsi))),
        asm64(|a| a.addss(xmm0, ptr(rsi))),
        asm64(|a| a.movq(xmm0, ptr(rsi))),
        asm64(|a| a.pcmpistri(xmm0, ptr(rsi), 0)),
        asm64(|a| a.paddb(mm0, ptr(rsi))),
        asm64(|a| a.pmovzxbw(xmm0, ptr(rsi))),
    ] {
        assert_eq!(run_with(&code, mis).1, None, "{code:02x?}");
    }
}

/// A 16-byte store and FXSAVE that cross into a non-present page fault
/// before writing anything.
#[test]
fn page_crossing_stores_are_atomic() {
    // PD[1] → a page table mapping only 0x200000.
    let setup = |c: &mut Cpu, s: &AddressSpace| {
        s.write_phys(0x72008, 8, 0x73000 | 3);
        s.write_phys(0x73000, 8, 0x20_0000 | 3);
        s.ram.write_bytes(0x20_0000, &[0x55; 4096]);
        c.gpr[reg::RSI] = 0x20_0ff8;
        c.gpr[reg::RDI] = 0x20_0f00;
        c.xmm[0] = u128::MAX;
    };
    for code in [
        asm64(|a| a.movups(ptr(rsi), xmm0)),
        asm64(|a| a.fxsave64(ptr(rdi))),
    ] {
        let (cpu, exc) = run_with(&code, setup);
        assert_eq!(exc.map(|e| e.vector), Some(vec::PF));
        assert_eq!(cpu.cr2, 0x20_1000);
        let mut b = [0u8; 512];
        cpu.space().ram.read_bytes(0x20_0e00, &mut b);
        assert_eq!(cpu.rip, CODE);
        assert!(b.iter().all(|&x| x == 0x55));
    }
}

#[test]
fn ldmxcsr_stmxcsr() {
    let code = asm64(|a| {
        a.ldmxcsr(ptr(rsi))?;
        a.stmxcsr(ptr(rsi + 4))
    });
    let (cpu, exc) = run_with(&code, |_, s| s.write_phys(DATA, 4, 0xffff));
    assert_eq!(exc, None);
    assert_eq!(cpu.mxcsr, 0xffff);
    assert_eq!(cpu.space().read_phys(DATA + 4, 4), 0xffff);
    let (cpu, exc) = run_with(&code, |_, s| s.write_phys(DATA, 4, 0x1_1f80));
    assert_eq!(exc, gp0());
    assert_eq!(cpu.mxcsr, 0x1f80);
}

/// MMX instructions alias the x87 registers: TOP = 0, all tags valid,
/// exponent bits all ones on the written register; EMMS empties the tags.
#[test]
fn mmx_x87_aliasing() {
    let code = asm64(|a| a.paddb(mm1, mm2));
    let (cpu, exc) = run_with(&code, |c, _| {
        c.x87.top = 3;
        c.x87.sw = 3 << 11;
        c.x87.tag = 0xffff;
        c.x87.regs[1] = (0x0102_0304_0506_0708, 0x4000);
        c.x87.regs[2] = (0x0101_0101_0101_0101, 0x1234);
    });
    assert_eq!(exc, None);
    assert_eq!((cpu.x87.top, cpu.x87.tag, cpu.x87.sw & 0x3800), (0, 0, 0));
    assert_eq!(cpu.x87.regs[1], (0x0203_0405_0607_0809, 0xffff));
    assert_eq!(cpu.x87.regs[2], (0x0101_0101_0101_0101, 0x1234));
    // A read-only use (MOVD r32, mm) transitions too.
    let code = asm64(|a| a.movd(eax, mm2));
    let (cpu, _) = run_with(&code, |c, _| {
        c.x87.top = 6;
        c.x87.tag = 0xffff;
        c.x87.regs[2] = (0xffff_ffff_8765_4321, 0x1234);
    });
    assert_eq!((cpu.x87.top, cpu.x87.tag, cpu.gpr[0]), (0, 0, 0x8765_4321));
    assert_eq!(cpu.x87.regs[2].1, 0x1234);
    let code = asm64(|a| {
        a.movq(mm0, rax)?;
        a.emms()
    });
    let (cpu, _) = run_with(&code, |c, _| c.gpr[0] = 42);
    assert_eq!((cpu.x87.tag, cpu.x87.regs[0]), (0xffff, (42, 0xffff)));
}

/// Unmasked SIMD exceptions: #XM with CR4.OSXMMEXCPT, #UD without; the
/// destination is unchanged and MXCSR holds the flags the hardware reports.
/// Expected flags were measured with a C program (SIGFPE handler reading
/// MXCSR from the signal context) on the development host.
#[test]
fn unmasked_exceptions() {
    // (a lane 0, b lane 0, mxcsr, flags after) for MULPS with the other
    // lanes 1.0.
    let cases: [(u32, u32, u32, u32); 8] = [
        (0x7f0f_bf32, 0x4000_0000, 0x1f80 & !(1 << 10), 0x08), // OE only
        (0x7000_0001, 0x5040_0000, 0x1f80 & !(1 << 10), 0x28), // OE + PE (inexact scaled)
        (0x0d83_126f, 0x2edb_e6ff, 0x1f80 & !(1 << 11), 0x30), // UE + PE
        (0x0000_0100, 0x3f00_0000, 0x1f80 & !(1 << 11), 0x12), // UE exact + DE
        (0x2000_0001, 0x1f80_0000, 0x1f80 & !(1 << 11), 0x10), // UE, exact when scaled
        (0x0000_0100, 0x3f00_0000, 0x1f80 & !(1 << 8), 0x02),  // DE only
        (0x7f0f_bf32, 0x4000_0000, 0x1f80 & !(1 << 12), 0x28), // PE unmasked, OE masked
        (
            0x7f0f_bf32,
            0x4000_0000,
            (0x1f80 & !(1 << 10)) | 0x6000,
            0x08,
        ), // OE, RZ
    ];
    let code = asm64(|a| a.mulps(xmm0, xmm1));
    for (x, y, csr, flags) in cases {
        let a = 0x3f80_0000_3f80_0000_3f80_0000_0000_0000u128 | x as u128;
        let b = 0x3f80_0000_3f80_0000_3f80_0000_0000_0000u128 | y as u128;
        let (cpu, exc) = run_with(&code, |c, _| {
            c.xmm[0] = a;
            c.xmm[1] = b;
            c.mxcsr = csr;
        });
        assert_eq!(exc, XM, "{x:#x} {y:#x}");
        assert_eq!(cpu.mxcsr, csr | flags, "{x:#x} {y:#x}");
        assert_eq!(cpu.xmm[0], a);
        assert_eq!(cpu.rip, CODE);
        // Without OSXMMEXCPT: #UD.
        let (_, exc) = run_with(&code, |c, _| {
            c.cr4 &= !cr4::OSXMMEXCPT;
            c.xmm[0] = a;
            c.xmm[1] = b;
            c.mxcsr = csr;
        });
        assert_eq!(exc, UD);
    }
    // Lane 1 divides by zero (ZE unmasked), lane 0 is inexact: only ZE.
    let code = asm64(|a| a.divps(xmm0, xmm1));
    let (cpu, exc) = run_with(&code, |c, _| {
        c.xmm[0] = 0x3f80_0000_3f80_0000_3f80_0000_3f80_0000;
        c.xmm[1] = 0x3f80_0000_3f80_0000_0000_0000_4040_0000;
        c.mxcsr = 0x1f80 & !(1 << 9);
    });
    assert_eq!((exc, cpu.mxcsr & 0x3f), (XM, 0x04));
}

/// Known results measured on the host (integer indefinite, rounding
/// control, saturation).
#[test]
fn known_values() {
    // CVTSD2SI of 2.5 in each rounding mode, of NaN, and CVTTSD2SI of -2.7.
    let code = asm64(|a| a.cvtsd2si(eax, xmm0));
    for (rc, want) in [(0, 2u64), (1, 2), (2, 3), (3, 2)] {
        let (cpu, _) = run_with(&code, |c, _| {
            c.xmm[0] = 2.5f64.to_bits() as u128;
            c.mxcsr = 0x1f80 | rc << 13;
        });
        assert_eq!(cpu.gpr[0], want);
        assert_eq!(cpu.mxcsr & 0x3f, 0x20);
    }
    let (cpu, _) = run_with(&code, |c, _| c.xmm[0] = f64::NAN.to_bits() as u128);
    assert_eq!((cpu.gpr[0], cpu.mxcsr & 0x3f), (0x8000_0000, 0x01));
    let code = asm64(|a| a.cvttsd2si(rax, xmm0));
    let (cpu, _) = run_with(&code, |c, _| c.xmm[0] = (-2.7f64).to_bits() as u128);
    assert_eq!(cpu.gpr[0] as i64, -2);
    let (cpu, _) = run_with(&code, |c, _| c.xmm[0] = 1e19f64.to_bits() as u128);
    assert_eq!(cpu.gpr[0], 0x8000_0000_0000_0000);
    // PADDSB / PACKSSWB / PADDUSW saturate.
    let code = asm64(|a| {
        a.paddsb(xmm0, xmm1)?;
        a.packsswb(xmm2, xmm3)?;
        a.paddusw(xmm4, xmm5)
    });
    let (cpu, _) = run_with(&code, |c, _| {
        c.xmm[0] = 0x7f80;
        c.xmm[1] = 0x0180 | 0xff << 16;
        c.xmm[2] = 0x8000_7fff_0100_ff80;
        c.xmm[3] = 0;
        c.xmm[4] = 0xfff0;
        c.xmm[5] = 0x0020;
    });
    assert_eq!(cpu.xmm[0], 0xff_7f80);
    assert_eq!(cpu.xmm[2], 0x807f_7f80);
    assert_eq!(cpu.xmm[4], 0xffff);
    // SQRTSS of -1: default NaN, IE.
    let code = asm64(|a| a.sqrtss(xmm0, xmm1));
    let (cpu, _) = run_with(&code, |c, _| c.xmm[1] = (-1.0f32).to_bits() as u128);
    assert_eq!((cpu.xmm[0], cpu.mxcsr & 0x3f), (0xffc0_0000, 0x01));
    // DAZ + FTZ: denormal input treated as zero, tiny result flushed.
    let code = asm64(|a| a.mulss(xmm0, xmm1));
    let (cpu, _) = run_with(&code, |c, _| {
        c.xmm[0] = 0x0000_0100;
        c.xmm[1] = 0x3f80_0000;
        c.mxcsr = 0x1f80 | 0x8040;
    });
    assert_eq!((cpu.xmm[0], cpu.mxcsr & 0x3f), (0, 0));
}

/// CRC32 with every operand size against known CRC-32C values.
#[test]
fn crc32c() {
    // CRC-32C("123456789") = 0xE3069283 (init and final XOR 0xFFFFFFFF).
    let code = asm64(|a| {
        a.mov(eax, 0xffff_ffffu32 as i32)?;
        a.crc32(eax, byte_ptr(rsi))?;
        a.crc32(eax, word_ptr(rsi + 1))?;
        a.crc32(eax, dword_ptr(rsi + 3))?;
        a.mov(rcx, qword_ptr(rsi + 7))?;
        a.crc32(rax, cl)?;
        a.crc32(eax, ch)?;
        a.not(eax)
    });
    let (cpu, exc) = run_with(&code, |_, s| {
        s.ram.write_bytes(DATA, b"123456789");
    });
    assert_eq!(exc, None);
    assert_eq!(cpu.gpr[0], 0xe306_9283);
}
