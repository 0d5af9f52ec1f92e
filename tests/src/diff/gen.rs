//! Random test-case generator.
//!
//! Each [`Category`] is a whitelist of mnemonics; every legacy-encoded iced
//! `Code` with one of those mnemonics that is valid in the bitness, runs on
//! the host (CPUID) and has operands this module can fill becomes a form.
//! A case is 1–20 forms with random operands (registers other than the stack
//! pointer and the base register, immediates, memory operands inside the
//! data buffer), each preceded when needed by setup instructions (shift
//! counts in CL, REP counts and string pointers, dividends, non-zero BSF/BSR
//! sources, in-range bit offsets and index registers). After each addition
//! the [`Analyzer`] checks that no undefined value is read; candidates that
//! would are regenerated.

use super::analysis::Analyzer;
use super::{base_reg, Case, InitState, X87State, CODE_ADDR, DATA_ADDR, DATA_SIZE};
use iced_x86::{
    Code, CpuidFeature, EncodingKind, Instruction, MemoryOperand, Mnemonic, OpCodeOperandKind as K,
    Register, RepPrefixKind,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Groups of instructions tested together.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Category {
    /// ADD ADC SUB SBB CMP AND OR XOR TEST INC DEC NEG NOT (+ CLC STC CMC).
    Alu,
    /// MOV MOVZX MOVSX MOVSXD LEA XCHG PUSH POP CBW… LAHF SAHF PUSHF flags.
    Mov,
    /// CMOVcc SETcc.
    Cmov,
    /// XADD CMPXCHG CMPXCHG8B CMPXCHG16B, LOCKed read-modify-write.
    Atomic,
    /// SHL SHR SAR SAL ROL ROR RCL RCR SHLD SHRD.
    Shift,
    /// MUL IMUL DIV IDIV.
    MulDiv,
    /// MOVS STOS LODS CMPS SCAS with and without REP.
    String,
    /// DAA DAS AAA AAS AAM AAD (32-bit only).
    Bcd,
    /// BT BTS BTR BTC BSF BSR BSWAP POPCNT LZCNT TZCNT.
    BitOps,
    /// x87 loads, stores, arithmetic, compares, FXCH, FSTSW AX…
    X87,
    /// SSE and SSE2 packed/scalar float and integer operations.
    Sse,
    /// Basic ALU/MOV instructions whose memory operands (or stack pushes
    /// and pops) straddle or cross the edges of the data buffer into unmapped
    /// pages: the page fault must leave no partial state change.
    MemFault,
    /// Forward control transfers: Jcc, JMP, JCXZ/JECXZ/JRCXZ, LOOP/LOOPcc,
    /// CALL, RET (imm16), indirect JMP/CALL through registers and memory.
    Branch,
}

impl Category {
    /// Every category.
    pub const ALL: [Category; 13] = [
        Category::Alu,
        Category::Mov,
        Category::Cmov,
        Category::Atomic,
        Category::Shift,
        Category::MulDiv,
        Category::String,
        Category::Bcd,
        Category::BitOps,
        Category::X87,
        Category::Sse,
        Category::MemFault,
        Category::Branch,
    ];

    /// Short name.
    pub fn name(self) -> &'static str {
        match self {
            Category::Alu => "alu",
            Category::Mov => "mov",
            Category::Cmov => "cmov",
            Category::Atomic => "atomic",
            Category::Shift => "shift",
            Category::MulDiv => "muldiv",
            Category::String => "string",
            Category::Bcd => "bcd",
            Category::BitOps => "bitops",
            Category::X87 => "x87",
            Category::Sse => "sse",
            Category::MemFault => "memfault",
            Category::Branch => "branch",
        }
    }

    /// Category by name.
    pub fn from_name(s: &str) -> Option<Category> {
        Category::ALL.iter().copied().find(|c| c.name() == s)
    }

    /// Bitnesses the category runs in.
    pub fn bitnesses(self) -> &'static [u32] {
        match self {
            Category::Bcd => &[32],
            _ => &[64, 32],
        }
    }

    fn mnemonics(self) -> &'static [Mnemonic] {
        use Mnemonic as M;
        match self {
            Category::Alu | Category::MemFault => &[
                M::Add,
                M::Adc,
                M::Sub,
                M::Sbb,
                M::Cmp,
                M::And,
                M::Or,
                M::Xor,
                M::Test,
                M::Inc,
                M::Dec,
                M::Neg,
                M::Not,
                M::Clc,
                M::Stc,
                M::Cmc,
            ],
            Category::Mov => &[
                M::Mov,
                M::Movzx,
                M::Movsx,
                M::Movsxd,
                M::Lea,
                M::Xchg,
                M::Push,
                M::Pop,
                M::Cbw,
                M::Cwde,
                M::Cdqe,
                M::Cwd,
                M::Cdq,
                M::Cqo,
                M::Lahf,
                M::Sahf,
                M::Clc,
                M::Stc,
                M::Cmc,
                M::Cld,
                M::Std,
                M::Nop,
                M::Pushf,
                M::Pushfd,
                M::Pushfq,
            ],
            Category::Cmov => &[
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
            ],
            Category::Atomic => &[M::Xadd, M::Cmpxchg, M::Cmpxchg8b, M::Cmpxchg16b],
            Category::Shift => &[
                M::Shl,
                M::Sal,
                M::Shr,
                M::Sar,
                M::Rol,
                M::Ror,
                M::Rcl,
                M::Rcr,
                M::Shld,
                M::Shrd,
            ],
            Category::MulDiv => &[M::Mul, M::Imul, M::Div, M::Idiv],
            Category::String | Category::Branch => &[],
            Category::Bcd => &[M::Daa, M::Das, M::Aaa, M::Aas, M::Aam, M::Aad],
            Category::BitOps => &[
                M::Bt,
                M::Bts,
                M::Btr,
                M::Btc,
                M::Bsf,
                M::Bsr,
                M::Bswap,
                M::Popcnt,
                M::Lzcnt,
                M::Tzcnt,
            ],
            Category::X87 => &[
                M::Fld,
                M::Fst,
                M::Fstp,
                M::Fild,
                M::Fist,
                M::Fistp,
                M::Fbld,
                M::Fbstp,
                M::Fadd,
                M::Faddp,
                M::Fiadd,
                M::Fsub,
                M::Fsubp,
                M::Fisub,
                M::Fsubr,
                M::Fsubrp,
                M::Fisubr,
                M::Fmul,
                M::Fmulp,
                M::Fimul,
                M::Fdiv,
                M::Fdivp,
                M::Fidiv,
                M::Fdivr,
                M::Fdivrp,
                M::Fidivr,
                M::Fcom,
                M::Fcomp,
                M::Fcompp,
                M::Fucom,
                M::Fucomp,
                M::Fucompp,
                M::Ficom,
                M::Ficomp,
                M::Fcomi,
                M::Fcomip,
                M::Fucomi,
                M::Fucomip,
                M::Ftst,
                M::Fxam,
                M::Fxch,
                M::Fchs,
                M::Fabs,
                M::Fsqrt,
                M::Frndint,
                M::Fscale,
                M::Fxtract,
                M::Fprem,
                M::Fprem1,
                M::Fld1,
                M::Fldz,
                M::Fldpi,
                M::Fldl2e,
                M::Fldl2t,
                M::Fldlg2,
                M::Fldln2,
                M::Fincstp,
                M::Fdecstp,
                M::Ffree,
                M::Fnstsw,
                M::Fstsw,
                M::Fnstcw,
                M::Fstcw,
                M::Fldcw,
                M::Fcmovb,
                M::Fcmove,
                M::Fcmovbe,
                M::Fcmovu,
                M::Fcmovnb,
                M::Fcmovne,
                M::Fcmovnbe,
                M::Fcmovnu,
                M::Fnclex,
                M::Fninit,
                M::Fnop,
                M::Wait,
            ],
            Category::Sse => &[
                M::Addps,
                M::Addss,
                M::Addpd,
                M::Addsd,
                M::Subps,
                M::Subss,
                M::Subpd,
                M::Subsd,
                M::Mulps,
                M::Mulss,
                M::Mulpd,
                M::Mulsd,
                M::Divps,
                M::Divss,
                M::Divpd,
                M::Divsd,
                M::Minps,
                M::Minss,
                M::Minpd,
                M::Minsd,
                M::Maxps,
                M::Maxss,
                M::Maxpd,
                M::Maxsd,
                M::Sqrtps,
                M::Sqrtss,
                M::Sqrtpd,
                M::Sqrtsd,
                M::Andps,
                M::Andpd,
                M::Andnps,
                M::Andnpd,
                M::Orps,
                M::Orpd,
                M::Xorps,
                M::Xorpd,
                M::Cmpps,
                M::Cmpss,
                M::Cmppd,
                M::Cmpsd,
                M::Comiss,
                M::Ucomiss,
                M::Comisd,
                M::Ucomisd,
                M::Movaps,
                M::Movups,
                M::Movapd,
                M::Movupd,
                M::Movss,
                M::Movsd,
                M::Movlps,
                M::Movhps,
                M::Movlpd,
                M::Movhpd,
                M::Movhlps,
                M::Movlhps,
                M::Movd,
                M::Movq,
                M::Movdqa,
                M::Movdqu,
                M::Movmskps,
                M::Movmskpd,
                M::Pmovmskb,
                M::Shufps,
                M::Shufpd,
                M::Unpcklps,
                M::Unpckhps,
                M::Unpcklpd,
                M::Unpckhpd,
                M::Cvtsi2ss,
                M::Cvtsi2sd,
                M::Cvtss2si,
                M::Cvtsd2si,
                M::Cvttss2si,
                M::Cvttsd2si,
                M::Cvtss2sd,
                M::Cvtsd2ss,
                M::Cvtps2pd,
                M::Cvtpd2ps,
                M::Cvtdq2ps,
                M::Cvtps2dq,
                M::Cvttps2dq,
                M::Cvtdq2pd,
                M::Cvtpd2dq,
                M::Cvttpd2dq,
                M::Paddb,
                M::Paddw,
                M::Paddd,
                M::Paddq,
                M::Psubb,
                M::Psubw,
                M::Psubd,
                M::Psubq,
                M::Paddsb,
                M::Paddsw,
                M::Paddusb,
                M::Paddusw,
                M::Psubsb,
                M::Psubsw,
                M::Psubusb,
                M::Psubusw,
                M::Pmullw,
                M::Pmulhw,
                M::Pmulhuw,
                M::Pmuludq,
                M::Pmaddwd,
                M::Pand,
                M::Pandn,
                M::Por,
                M::Pxor,
                M::Pcmpeqb,
                M::Pcmpeqw,
                M::Pcmpeqd,
                M::Pcmpgtb,
                M::Pcmpgtw,
                M::Pcmpgtd,
                M::Psllw,
                M::Pslld,
                M::Psllq,
                M::Psrlw,
                M::Psrld,
                M::Psrlq,
                M::Psraw,
                M::Psrad,
                M::Pslldq,
                M::Psrldq,
                M::Punpcklbw,
                M::Punpcklwd,
                M::Punpckldq,
                M::Punpcklqdq,
                M::Punpckhbw,
                M::Punpckhwd,
                M::Punpckhdq,
                M::Punpckhqdq,
                M::Packsswb,
                M::Packssdw,
                M::Packuswb,
                M::Pshufd,
                M::Pshufhw,
                M::Pshuflw,
                M::Pmaxsw,
                M::Pmaxub,
                M::Pminsw,
                M::Pminub,
                M::Pavgb,
                M::Pavgw,
                M::Psadbw,
                M::Pextrw,
                M::Pinsrw,
                M::Movntps,
                M::Movntpd,
                M::Movntdq,
                M::Movnti,
                M::Stmxcsr,
                M::Ldmxcsr,
            ],
        }
    }

    /// Share of the main (category) forms; the rest are basic ALU/MOV
    /// instructions that feed them varied values and flags.
    fn main_share(self) -> f64 {
        match self {
            Category::Alu | Category::Mov | Category::MemFault => 1.0,
            Category::X87 | Category::Sse => 0.85,
            Category::Branch => 0.35,
            _ => 0.7,
        }
    }
}

/// An instruction form: an iced `Code` and what its operands need.
#[derive(Debug, Clone)]
struct Form {
    code: Code,
    kinds: Vec<K>,
    mem_size: usize,
}

fn supported_kind(k: K) -> bool {
    matches!(
        k,
        K::r8_or_mem
            | K::r16_or_mem
            | K::r32_or_mem
            | K::r64_or_mem
            | K::xmm_or_mem
            | K::r8_reg
            | K::r8_opcode
            | K::r16_reg
            | K::r16_rm
            | K::r16_opcode
            | K::r32_reg
            | K::r32_rm
            | K::r32_opcode
            | K::r64_reg
            | K::r64_rm
            | K::r64_opcode
            | K::xmm_reg
            | K::xmm_rm
            | K::mem
            | K::mem_offs
            | K::al
            | K::cl
            | K::ax
            | K::eax
            | K::rax
            | K::st0
            | K::sti_opcode
            | K::imm8
            | K::imm8_const_1
            | K::imm8sex16
            | K::imm8sex32
            | K::imm8sex64
            | K::imm16
            | K::imm32
            | K::imm32sex64
            | K::imm64
    )
}

fn host_has(f: CpuidFeature) -> bool {
    match f {
        CpuidFeature::INTEL8086
        | CpuidFeature::INTEL186
        | CpuidFeature::INTEL286
        | CpuidFeature::INTEL386
        | CpuidFeature::INTEL486
        | CpuidFeature::X64
        | CpuidFeature::CMOV
        | CpuidFeature::FPU
        | CpuidFeature::FPU287
        | CpuidFeature::FPU387
        | CpuidFeature::SSE
        | CpuidFeature::SSE2
        | CpuidFeature::CX8
        | CpuidFeature::MULTIBYTENOP => true,
        CpuidFeature::CMPXCHG16B => std::arch::is_x86_feature_detected!("cmpxchg16b"),
        CpuidFeature::POPCNT => std::arch::is_x86_feature_detected!("popcnt"),
        CpuidFeature::LZCNT => std::arch::is_x86_feature_detected!("lzcnt"),
        CpuidFeature::BMI1 => std::arch::is_x86_feature_detected!("bmi1"),
        _ => false,
    }
}

fn excluded(code: Code) -> bool {
    use Code as C;
    // Undefined results (BSWAP r16), implicit pointer registers (MASKMOVDQU).
    if matches!(code, C::Bswap_r16 | C::Maskmovdqu_rDI_xmm_xmm) {
        return true;
    }
    // Undocumented alias encodings: SAL /6 (iced's `Sal_*`; the documented
    // SAL is SHL /4) and the x87 register-form aliases (DC D0+i, DD C8+i,
    // DE D0+i, DF C8+i, DF D0+i, DF D8+i).
    let name = format!("{code:?}");
    code.mnemonic() == Mnemonic::Sal
        || [
            "_DCD0", "_DCD8", "_DDC8", "_DED0", "_DFC8", "_DFD0", "_DFD8",
        ]
        .iter()
        .any(|s| name.ends_with(s))
}

fn forms(mnemonics: &[Mnemonic], bitness: u32) -> Vec<Form> {
    let mut v = Vec::new();
    for code in Code::values() {
        if !mnemonics.contains(&code.mnemonic()) || excluded(code) {
            continue;
        }
        let oc = code.op_code();
        if !oc.is_instruction() || oc.encoding() != EncodingKind::Legacy || oc.decoder_option() != 0
        {
            continue;
        }
        let ok_mode = if bitness == 64 {
            oc.mode64() && oc.intel_decoder64()
        } else {
            oc.mode32() && oc.intel_decoder32()
        };
        if !ok_mode || oc.is_privileged() || oc.is_input_output() {
            continue;
        }
        if !oc.op_kinds().iter().all(|k| supported_kind(*k)) {
            continue;
        }
        let mut probe = Instruction::default();
        probe.set_code(code);
        if !probe.cpuid_features().iter().all(|f| host_has(*f)) {
            continue;
        }
        v.push(Form {
            code,
            kinds: oc.op_kinds().to_vec(),
            mem_size: probe.memory_size().size(),
        });
    }
    v
}

/// An operand being built.
#[derive(Debug, Clone, Copy)]
enum Op {
    R(Register),
    I(i64),
    M(MemoryOperand),
}

fn build(code: Code, ops: &[Op]) -> Option<Instruction> {
    use Op::*;
    fn imm32(v: i64) -> i32 {
        v as i32
    }
    let r = match *ops {
        [] => Ok(Instruction::with(code)),
        [R(a)] => Instruction::with1(code, a),
        [I(a)] => Instruction::with1(code, imm32(a)),
        [M(a)] => Instruction::with1(code, a),
        [R(a), R(b)] => Instruction::with2(code, a, b),
        [R(a), I(b)] => {
            if b >= i32::MIN as i64 && b <= i32::MAX as i64 {
                Instruction::with2(code, a, b as i32)
            } else {
                Instruction::with2(code, a, b)
            }
        }
        [R(a), M(b)] => Instruction::with2(code, a, b),
        [M(a), R(b)] => Instruction::with2(code, a, b),
        [M(a), I(b)] => Instruction::with2(code, a, imm32(b)),
        [R(a), R(b), R(c)] => Instruction::with3(code, a, b, c),
        [R(a), R(b), I(c)] => Instruction::with3(code, a, b, imm32(c)),
        [R(a), M(b), I(c)] => Instruction::with3(code, a, b, imm32(c)),
        [R(a), M(b), R(c)] => Instruction::with3(code, a, b, c),
        [M(a), R(b), R(c)] => Instruction::with3(code, a, b, c),
        [M(a), R(b), I(c)] => Instruction::with3(code, a, b, imm32(c)),
        _ => return None,
    };
    r.ok()
}

/// The generator for one category and bitness.
pub struct Generator {
    /// The category.
    pub category: Category,
    /// 32 or 64.
    pub bitness: u32,
    main: Vec<Form>,
    filler: Vec<Form>,
    /// Relative branch codes (Jcc, JMP, JCXZ…, LOOP…, CALL) and whether
    /// their displacement is 8-bit.
    branches: Vec<(Code, bool)>,
}

/// Registers the generator may name as operands, by size.
fn regs(bitness: u32, size: usize) -> Vec<Register> {
    use Register as R;
    let all: Vec<Register> = match size {
        1 => {
            let mut v = vec![R::AL, R::CL, R::DL, R::BL, R::AH, R::CH, R::DH, R::BH];
            if bitness == 64 {
                v.extend([
                    R::BPL,
                    R::SIL,
                    R::DIL,
                    R::R8L,
                    R::R9L,
                    R::R10L,
                    R::R11L,
                    R::R12L,
                    R::R13L,
                    R::R14L,
                ]);
            }
            v
        }
        2 => (0..16).map(|i| reg_from(R::AX, i)).collect(),
        4 => (0..16).map(|i| reg_from(R::EAX, i)).collect(),
        _ => (0..16).map(|i| reg_from(R::RAX, i)).collect(),
    };
    let n = if bitness == 64 { 16 } else { 8 };
    let base = base_reg(bitness);
    all.into_iter()
        .filter(|r| {
            let idx = r.full_register() as usize - R::RAX as usize;
            idx < n && idx != 4 && idx != base
        })
        .collect()
}

fn reg_from(first: Register, i: usize) -> Register {
    // Register numbering is contiguous within each size class.
    Register::values()
        .nth(first as usize + i)
        .unwrap_or(Register::None)
}

fn gpr(size: usize, idx: usize) -> Register {
    match size {
        1 => [Register::AL, Register::CL, Register::DL, Register::BL][idx.min(3)],
        2 => reg_from(Register::AX, idx),
        4 => reg_from(Register::EAX, idx),
        _ => reg_from(Register::RAX, idx),
    }
}

fn interesting_u64(rng: &mut StdRng) -> u64 {
    match rng.gen_range(0..16) {
        0 => 0,
        1 => 1,
        2 => u64::MAX,
        3 => rng.gen_range(0..256),
        4 => (rng.gen_range(-256i64..256)) as u64,
        5 => 0x8000_0000_0000_0000 | rng.gen_range(0..4),
        6 => 0x7fff_ffff_ffff_ffff - rng.gen_range(0..4),
        7 => 0x8000_0000 + rng.gen_range(0..4) - 2,
        8 => 0xffff_ffff - rng.gen_range(0..4),
        9 => 0x7fff + rng.gen_range(0..4) - 2,
        10 => 0xff + rng.gen_range(0..4) - 2,
        11 => 1u64 << rng.gen_range(0..64),
        12 => (rng.gen::<u32>()) as u64,
        _ => rng.gen(),
    }
}

fn random_f32(rng: &mut StdRng) -> u32 {
    match rng.gen_range(0..16) {
        0 => 0,
        1 => 0x8000_0000,
        2 => 0x3f80_0000,
        3 => 0xbf80_0000,
        4 => 0x7f80_0000,
        5 => 0xff80_0000,
        6 => 0x7fc0_0000 | rng.gen_range(0..0x40_0000),
        7 => 0x7f80_0001 + rng.gen_range(0..0x3f_ffff),
        8 => rng.gen_range(1..0x80_0000),
        9 => 0x7f7f_ffff,
        10 => 0x0080_0000,
        11 => (rng.gen_range(-1000i32..1000) as f32).to_bits(),
        12 => (rng.gen::<f32>() * 10.0 - 5.0).to_bits(),
        _ => rng.gen(),
    }
}

fn random_f64(rng: &mut StdRng) -> u64 {
    match rng.gen_range(0..16) {
        0 => 0,
        1 => 0x8000_0000_0000_0000,
        2 => 1.0f64.to_bits(),
        3 => (-1.0f64).to_bits(),
        4 => 0x7ff0_0000_0000_0000,
        5 => 0xfff0_0000_0000_0000,
        6 => 0x7ff8_0000_0000_0000 | rng.gen_range(0..1u64 << 51),
        7 => 0x7ff0_0000_0000_0001 + rng.gen_range(0..(1u64 << 51) - 1),
        8 => rng.gen_range(1..1u64 << 52),
        9 => f64::MAX.to_bits(),
        10 => f64::MIN_POSITIVE.to_bits(),
        11 => (rng.gen_range(-100000i64..100000) as f64).to_bits(),
        12 => (rng.gen::<f64>() * 1e6 - 5e5).to_bits(),
        13 => (rng.gen_range(-1i64 << 62..1i64 << 62) as f64).to_bits(),
        _ => rng.gen(),
    }
}

/// A random 80-bit extended value (significand, sign|exponent).
fn random_f80(rng: &mut StdRng) -> (u64, u16) {
    let sign = if rng.gen_bool(0.3) { 0x8000 } else { 0 };
    let (m, e) = match rng.gen_range(0..14) {
        0 => (0, 0),
        1 => (1 << 63, 0x3fff),
        2 => (0xc90f_daa2_2168_c235, 0x4000),
        3 => (1 << 63, 0x7fff),
        4 => (0xc000_0000_0000_0000 | rng.gen_range(0..1u64 << 62), 0x7fff),
        5 => ((1 << 63) | rng.gen_range(1..1u64 << 62), 0x7fff),
        6 => (rng.gen_range(1..1u64 << 63), 0),
        7 => (rng.gen_range(0..1u64 << 63), rng.gen_range(1..0x7fff)),
        8 => ((1 << 63) | rng.gen::<u64>(), rng.gen_range(0x3f00..0x4100)),
        9 => ((1 << 63) | rng.gen::<u64>(), rng.gen_range(1..0x7fff)),
        10 => {
            let v = rng.gen_range(-100000i64..100000);
            return f80_from_i64(v);
        }
        _ => (
            (1 << 63) | (rng.gen::<u64>() & !0x7ff),
            rng.gen_range(0x3ff0..0x4010),
        ),
    };
    (m, e | sign)
}

fn f80_from_i64(v: i64) -> (u64, u16) {
    if v == 0 {
        return (0, 0);
    }
    let sign = if v < 0 { 0x8000 } else { 0 };
    let a = v.unsigned_abs();
    let lz = a.leading_zeros();
    (a << lz, (0x3fff + 63 - lz as u16) | sign)
}

fn fill_data(rng: &mut StdRng) -> Vec<u8> {
    let mut d = vec![0u8; DATA_SIZE];
    for chunk in d.chunks_mut(16) {
        match rng.gen_range(0..8) {
            0 => rng.fill(chunk),
            1 => {
                for i in 0..4 {
                    chunk[4 * i..4 * i + 4].copy_from_slice(&random_f32(rng).to_le_bytes());
                }
            }
            2 => {
                for i in 0..2 {
                    chunk[8 * i..8 * i + 8].copy_from_slice(&random_f64(rng).to_le_bytes());
                }
            }
            3 => {
                let (m, e) = random_f80(rng);
                chunk[..8].copy_from_slice(&m.to_le_bytes());
                chunk[8..10].copy_from_slice(&e.to_le_bytes());
                chunk[10..]
                    .copy_from_slice(&f80_from_i64(rng.gen_range(-5..5)).0.to_le_bytes()[..6]);
            }
            4 => {
                for i in 0..2 {
                    chunk[8 * i..8 * i + 8].copy_from_slice(&interesting_u64(rng).to_le_bytes());
                }
            }
            5 => {
                for i in 0..4 {
                    let v = rng.gen_range(-300i32..300);
                    chunk[4 * i..4 * i + 4].copy_from_slice(&v.to_le_bytes());
                }
            }
            6 => chunk.fill(if rng.gen_bool(0.5) { 0 } else { 0xff }),
            _ => {
                for b in chunk.iter_mut() {
                    *b = rng.gen_range(0..10)
                        | if rng.gen_bool(0.3) {
                            rng.gen_range(0..10) << 4
                        } else {
                            0
                        };
                }
            }
        }
    }
    d
}

fn random_xmm(rng: &mut StdRng) -> u128 {
    let mut b = [0u8; 16];
    match rng.gen_range(0..4) {
        0 => {
            for i in 0..4 {
                b[4 * i..4 * i + 4].copy_from_slice(&random_f32(rng).to_le_bytes());
            }
        }
        1 => {
            for i in 0..2 {
                b[8 * i..8 * i + 8].copy_from_slice(&random_f64(rng).to_le_bytes());
            }
        }
        2 => {
            for i in 0..2 {
                b[8 * i..8 * i + 8].copy_from_slice(&interesting_u64(rng).to_le_bytes());
            }
        }
        _ => rng.fill(&mut b),
    }
    u128::from_le_bytes(b)
}

/// A random x87 control word: mostly all exceptions masked.
fn random_fcw(rng: &mut StdRng) -> u16 {
    let masks = if rng.gen_bool(0.85) {
        0x3f
    } else {
        rng.gen_range(0..0x40)
    };
    // Never the reserved precision control 01b (its effect is not
    // architectural).
    let pc = [0u16, 2, 3, 3, 3][rng.gen_range(0..5)];
    let rc = rng.gen_range(0..4u16);
    masks | 0x40 | (pc << 8) | (rc << 10)
}

/// A random MXCSR: mostly all exceptions masked.
fn random_mxcsr(rng: &mut StdRng) -> u32 {
    let masks = if rng.gen_bool(0.9) {
        0x3f
    } else {
        rng.gen_range(0..0x40)
    };
    let flags = if rng.gen_bool(0.5) {
        0
    } else {
        rng.gen_range(0..0x40) & masks
    };
    let daz = if rng.gen_bool(0.2) { 0x40 } else { 0 };
    let ftz = if rng.gen_bool(0.2) { 0x8000 } else { 0 };
    flags | daz | (masks << 7) | (rng.gen_range(0..4) << 13) | ftz
}

fn random_init(rng: &mut StdRng, cat: Category, bitness: u32) -> InitState {
    let mut gpr = [0u64; 16];
    for g in gpr.iter_mut() {
        *g = interesting_u64(rng);
        if bitness == 32 {
            *g &= 0xffff_ffff;
        }
    }
    gpr[base_reg(bitness)] = DATA_ADDR;
    gpr[4] = (DATA_ADDR as i64 + 0x800 + 8 * rng.gen_range(-16i64..16)) as u64;
    if cat == Category::MemFault && rng.gen_bool(0.5) {
        gpr[4] = if rng.gen_bool(0.5) {
            DATA_ADDR + 8 * rng.gen_range(0..4)
        } else {
            DATA_ADDR + DATA_SIZE as u64 - 8 * rng.gen_range(0..4)
        };
    }
    let mut rflags = rng.gen::<u64>() & super::fl::ARITH;
    if rng.gen_bool(0.25) {
        rflags |= super::fl::DF;
    }
    let mut xmm = [0u128; 16];
    let mut mxcsr = 0x1f80;
    let mut x87 = X87State::default();
    if cat == Category::Sse {
        for x in xmm.iter_mut() {
            *x = random_xmm(rng);
        }
        mxcsr = random_mxcsr(rng);
    } else {
        for x in xmm.iter_mut() {
            *x = rng.gen();
        }
    }
    if cat == Category::X87 {
        x87.cw = random_fcw(rng);
        let top = rng.gen_range(0..8u16);
        x87.valid = match rng.gen_range(0..4) {
            0 => 0,
            1 => 0xff,
            _ => rng.gen(),
        };
        for r in x87.regs.iter_mut() {
            *r = random_f80(rng);
        }
        let cbits = rng.gen::<u16>() & 0x4700;
        let flags = if rng.gen_bool(0.5) {
            0
        } else {
            rng.gen::<u16>() & 0x3f & x87.cw
        };
        x87.sw = cbits | flags | (top << 11);
    }
    InitState {
        gpr,
        rflags,
        xmm,
        mxcsr,
        x87,
        data: fill_data(rng),
    }
}

/// What the operand filler decided.
struct Filled {
    ops: Vec<Op>,
    /// Setup instructions that must precede the instruction.
    pre: Vec<Instruction>,
}

fn mov_imm(r: Register, v: u64) -> Instruction {
    let code = match r.size() {
        1 => Code::Mov_r8_imm8,
        2 => Code::Mov_r16_imm16,
        4 => Code::Mov_r32_imm32,
        _ => Code::Mov_r64_imm64,
    };
    let v = v & super::analysis::reg_bits(r)
        >> if (Register::AH..=Register::BH).contains(&r) {
            8
        } else {
            0
        };
    let r = if r.size() == 8 {
        Instruction::with2(code, r, v)
    } else {
        Instruction::with2(code, r, v as u32)
    };
    r.unwrap_or_default()
}

impl Generator {
    /// A generator (enumerates the forms).
    pub fn new(category: Category, bitness: u32) -> Generator {
        let mut wanted = category.mnemonics().to_vec();
        if category == Category::MemFault {
            wanted.extend(Category::Mov.mnemonics());
        }
        let main = forms(&wanted, bitness);
        let mut basic: Vec<Mnemonic> = Category::Alu.mnemonics().to_vec();
        basic.extend([
            Mnemonic::Mov,
            Mnemonic::Movzx,
            Mnemonic::Movsx,
            Mnemonic::Lea,
            Mnemonic::Xchg,
        ]);
        let filler = forms(&basic, bitness);
        let branches = Code::values()
            .filter(|c| {
                let oc = c.op_code();
                let kinds = oc.op_kinds();
                let ok_mode = if bitness == 64 {
                    oc.mode64()
                } else {
                    oc.mode32()
                };
                oc.is_instruction()
                    && oc.encoding() == EncodingKind::Legacy
                    && oc.decoder_option() == 0
                    && ok_mode
                    && !matches!(c.mnemonic(), Mnemonic::Xbegin | Mnemonic::Jmpe)
                    && kinds.len() == 1
                    && matches!(
                        (bitness, kinds[0]),
                        (64, K::br64_1 | K::br64_4) | (32, K::br32_1 | K::br32_4)
                    )
            })
            .map(|c| {
                (
                    c,
                    matches!(c.op_code().op_kinds()[0], K::br64_1 | K::br32_1),
                )
            })
            .collect();
        Generator {
            category,
            bitness,
            main,
            filler,
            branches,
        }
    }

    /// Number of instruction forms in the category.
    pub fn form_count(&self) -> usize {
        if self.category == Category::String {
            return 10;
        }
        if self.category == Category::Branch {
            return self.branches.len() + 6;
        }
        self.main.len()
    }

    /// The case for `seed`.
    pub fn case(&self, seed: u64) -> Case {
        let salt = (self.category as u64) << 40 | (self.bitness as u64) << 32;
        let mut rng = StdRng::seed_from_u64(seed ^ salt ^ 0x005e_ed0f_d1ff);
        let init = random_init(&mut rng, self.category, self.bitness);
        for _ in 0..20 {
            if let Some(code) = self.sequence(&mut rng) {
                return Case {
                    bitness: self.bitness,
                    code,
                    init,
                };
            }
        }
        // Practically unreachable: an empty sequence is still a valid case.
        Case {
            bitness: self.bitness,
            code: Vec::new(),
            init,
        }
    }

    fn sequence(&self, rng: &mut StdRng) -> Option<Vec<u8>> {
        let n = rng.gen_range(1..=20);
        let mut insns: Vec<Instruction> = Vec::new();
        let mut an = Analyzer::new(self.bitness);
        let mut placed = 0;
        let mut attempts = 0;
        // Self-modifying stores: index of the MOV whose target is the
        // immediate of the instruction after it.
        let mut smc: Vec<usize> = Vec::new();
        // Forward transfers: (instruction to patch, target group, patch the
        // immediate rather than the branch target).
        let mut fixes: Vec<(usize, usize, bool)> = Vec::new();
        let mut group_start: Vec<usize> = Vec::new();
        // Paths entering group g: (g, state).
        let mut pending: Vec<(usize, super::analysis::Masks)> = Vec::new();
        let mut entered_at: Option<(usize, bool)> = None;
        while placed < n && attempts < n * 40 {
            attempts += 1;
            // Merge the paths that branch to this group (once).
            if entered_at.map(|(g, _)| g) != Some(placed) {
                let mut entered = false;
                for (_, m) in pending.iter().filter(|(g, _)| *g == placed) {
                    an.merge(m);
                    entered = true;
                }
                entered_at = Some((placed, entered));
            }
            let entered = entered_at.is_some_and(|(_, e)| e);
            let main = rng.gen_bool(self.category.main_share());
            let smc_here = self.category == Category::Mov && rng.gen_bool(0.02);
            let mut branch = None;
            let group = if smc_here {
                self.smc_group(rng)
            } else if main && self.category == Category::Branch {
                self.branch_group(rng).map(|(g, b)| {
                    branch = Some(b);
                    g
                })
            } else if main && self.category == Category::String {
                self.string_group(rng)
            } else {
                let forms = if main && !self.main.is_empty() {
                    &self.main
                } else {
                    &self.filler
                };
                let f = &forms[rng.gen_range(0..forms.len())];
                self.group(f, rng)
            };
            let Some(group) = group else { continue };
            // Every instruction must encode, and none may read an undefined value.
            if super::encode(self.bitness, &group).is_err() {
                continue;
            }
            let mut trial = an.clone();
            let mut prev = if entered { None } else { insns.last().copied() };
            let mut ok = true;
            for ins in &group {
                if trial.push(ins, prev.as_ref()).is_err() {
                    ok = false;
                    break;
                }
                prev = Some(*ins);
            }
            if !ok {
                continue;
            }
            an = trial;
            if smc_here {
                smc.push(insns.len() + group.len() - 2);
            }
            if let Some((skip, patch_imm)) = branch {
                let target = placed + 1 + skip;
                let last = insns.len() + group.len() - 1;
                fixes.push((if patch_imm { last - 1 } else { last }, target, patch_imm));
                pending.push((target, an.masks()));
            }
            group_start.push(insns.len());
            insns.extend(group);
            placed += 1;
        }
        let mut code = super::encode(self.bitness, &insns).ok()?;
        if !fixes.is_empty() {
            // Point the transfers at the start of their target groups (or
            // the end); branch and immediate sizes are fixed by their codes.
            let ips: Vec<u64> = super::decode(self.bitness, &code)
                .iter()
                .map(|i| i.ip())
                .collect();
            let end = CODE_ADDR + code.len() as u64;
            for &(i, g, imm) in &fixes {
                let t = group_start
                    .get(g)
                    .map_or(Some(end), |&k| ips.get(k).copied())?;
                if imm {
                    insns[i].set_immediate32(t as u32);
                } else if self.bitness == 64 {
                    insns[i].set_near_branch64(t);
                } else {
                    insns[i].set_near_branch32(t as u32);
                }
            }
            let again = super::encode(self.bitness, &insns).ok()?;
            if again.len() != code.len() {
                return None;
            }
            code = again;
        }
        if !smc.is_empty() {
            // Point each store at the immediate byte of the next instruction
            // (the store's length does not depend on its target).
            let ips: Vec<u64> = super::decode(self.bitness, &code)
                .iter()
                .map(|i| i.ip())
                .collect();
            for &i in &smc {
                let target = *ips.get(i + 1)? + 1;
                insns[i].set_memory_displacement64(target);
            }
            let again = super::encode(self.bitness, &insns).ok()?;
            if again.len() != code.len() {
                return None;
            }
            code = again;
        }
        // The bytes are what runs: check them again as decoded.
        let dec = super::decode(self.bitness, &code);
        if dec.len() != insns.len() || super::analysis::analyze(self.bitness, &dec).is_err() {
            return None;
        }
        Some(code)
    }

    fn regs(&self, size: usize) -> Vec<Register> {
        regs(self.bitness, size)
    }

    fn pick_reg(&self, size: usize, rng: &mut StdRng) -> Register {
        let v = self.regs(size);
        v[rng.gen_range(0..v.len())]
    }

    /// A data-buffer offset for an operand of `size` bytes.
    fn offset(&self, size: usize, align: usize, lo: usize, hi: usize, rng: &mut StdRng) -> u64 {
        let size = size.max(1);
        let hi = hi.min(DATA_SIZE - size).max(lo + 1);
        let mut o = rng.gen_range(lo..hi);
        if align > 1 {
            o &= !(align - 1);
        } else if rng.gen_bool(0.7) {
            o &= !(size.next_power_of_two().min(16) - 1);
        }
        o as u64
    }

    /// A memory operand inside the data buffer; may add a setup MOV for an
    /// index register (never one of `avoid`).
    fn mem(
        &self,
        size: usize,
        align: usize,
        avoid: &[Register],
        pre: &mut Vec<Instruction>,
        rng: &mut StdRng,
    ) -> MemoryOperand {
        self.mem_in(size, align, 0, DATA_SIZE, avoid, pre, rng)
    }

    #[allow(clippy::too_many_arguments)]
    fn mem_in(
        &self,
        size: usize,
        align: usize,
        lo: usize,
        hi: usize,
        avoid: &[Register],
        pre: &mut Vec<Instruction>,
        rng: &mut StdRng,
    ) -> MemoryOperand {
        let mut t = self.offset(size, align, lo, hi, rng) as i64;
        if self.category == Category::MemFault && lo == 0 && hi == DATA_SIZE && rng.gen_bool(0.3) {
            // Straddle the end of the buffer, or lie just past it.
            t = DATA_SIZE as i64 - rng.gen_range(1..=size.max(2) as i64 - 1);
            if rng.gen_bool(0.3) {
                t = DATA_SIZE as i64 + rng.gen_range(0..64);
            }
        }
        let b64 = self.bitness == 64;
        let base = if b64 { Register::R15 } else { Register::EBP };
        let none = Register::None;
        match rng.gen_range(0..20) {
            0..=3 => {
                // [index*scale + base + disp] with the index set just before.
                let cands: Vec<Register> = self
                    .regs(if b64 { 8 } else { 4 })
                    .into_iter()
                    .filter(|r| {
                        let f = r.full_register();
                        ![Register::RAX, Register::RCX, Register::RDX].contains(&f)
                            && !avoid.iter().any(|a| a.full_register() == f)
                    })
                    .collect();
                if cands.is_empty() {
                    return MemoryOperand::new(base, none, 1, t, 1, false, none);
                }
                let idx = cands[rng.gen_range(0..cands.len())];
                let scale = [1u32, 2, 4, 8][rng.gen_range(0..4)];
                let k = rng.gen_range(0..=(t as u64 / scale as u64).min(64));
                let disp = t - (k * scale as u64) as i64;
                let idx32 = if b64 {
                    reg_from(Register::EAX, idx as usize - Register::RAX as usize)
                } else {
                    idx
                };
                pre.push(mov_imm(idx32, k));
                if rng.gen_bool(0.2) {
                    // No base: [index*scale + disp32].
                    MemoryOperand::new(none, idx, scale, DATA_ADDR as i64 + disp, 4, false, none)
                } else {
                    MemoryOperand::new(base, idx, scale, disp, 1, false, none)
                }
            }
            4 | 5 if b64 => MemoryOperand::with_base_displ(Register::RIP, (DATA_ADDR as i64) + t),
            8 | 9 if lo == 0 && hi == DATA_SIZE => {
                // Relative to the stack pointer (which stays within
                // ±0x300 of the middle of the buffer).
                let sp = if b64 { Register::RSP } else { Register::ESP };
                let d = rng.gen_range(-0x500i64..0x500) & !(align.max(1) as i64 - 1);
                MemoryOperand::new(sp, none, 1, d, 1, false, none)
            }
            10 => {
                // Segment override (flat in 32-bit code, ignored in 64-bit
                // code; CS only in 64-bit code, where it may be written).
                let n = if b64 { 4 } else { 3 };
                let seg =
                    [Register::ES, Register::SS, Register::DS, Register::CS][rng.gen_range(0..n)];
                MemoryOperand::new(base, none, 1, t, 1, false, seg)
            }
            6 => MemoryOperand::with_displ(DATA_ADDR + t as u64, 4),
            7 if b64 => MemoryOperand::new(Register::R15D, none, 1, t, 1, false, none),
            _ => {
                if t == 0 && rng.gen_bool(0.5) {
                    MemoryOperand::with_base(base)
                } else {
                    MemoryOperand::new(base, none, 1, t, 1, false, none)
                }
            }
        }
    }

    fn imm(&self, k: K, rng: &mut StdRng) -> i64 {
        let small = |rng: &mut StdRng| match rng.gen_range(0..6) {
            0 => 0,
            1 => 1,
            2 => -1,
            3 => 0x7f,
            4 => -0x80,
            _ => rng.gen_range(-128..128),
        };
        match k {
            K::imm8 => rng.gen_range(0..256),
            K::imm8_const_1 => 1,
            K::imm8sex16 | K::imm8sex32 | K::imm8sex64 => small(rng),
            K::imm16 => match rng.gen_range(0..3) {
                0 => small(rng) & 0xffff,
                1 => [0, 0x7fff, 0x8000, 0xffff][rng.gen_range(0..4)],
                _ => rng.gen_range(0..0x10000),
            },
            K::imm32 | K::imm32sex64 => match rng.gen_range(0..3) {
                0 => small(rng),
                1 => [0, 0x7fff_ffff, -0x8000_0000, -1, 0xffff][rng.gen_range(0..5)],
                _ => rng.gen::<i32>() as i64,
            },
            _ => interesting_u64(rng) as i64,
        }
    }

    /// Fills the operands of `f` generically.
    fn fill(&self, f: &Form, rng: &mut StdRng) -> Option<Filled> {
        let mut ops: Vec<Option<Op>> = vec![None; f.kinds.len()];
        let mut chosen: Vec<Register> = Vec::new();
        let mut mem_at = None;
        let nx = if self.bitness == 64 { 16 } else { 8 };
        for (i, k) in f.kinds.iter().enumerate() {
            let use_reg = rng.gen_bool(0.6);
            let r = match k {
                K::r8_or_mem | K::r16_or_mem | K::r32_or_mem | K::r64_or_mem | K::xmm_or_mem => {
                    let size = match k {
                        K::r8_or_mem => 1,
                        K::r16_or_mem => 2,
                        K::r32_or_mem => 4,
                        K::r64_or_mem => 8,
                        _ => 16,
                    };
                    if !use_reg {
                        mem_at = Some(i);
                        None
                    } else if size == 16 {
                        Some(reg_from(Register::XMM0, rng.gen_range(0..nx)))
                    } else {
                        Some(self.pick_reg(size, rng))
                    }
                }
                K::r8_reg | K::r8_opcode => Some(self.pick_reg(1, rng)),
                K::r16_reg | K::r16_rm | K::r16_opcode => Some(self.pick_reg(2, rng)),
                K::r32_reg | K::r32_rm | K::r32_opcode => Some(self.pick_reg(4, rng)),
                K::r64_reg | K::r64_rm | K::r64_opcode => Some(self.pick_reg(8, rng)),
                K::xmm_reg | K::xmm_rm => Some(reg_from(Register::XMM0, rng.gen_range(0..nx))),
                K::st0 => Some(Register::ST0),
                K::sti_opcode => Some(reg_from(Register::ST0, rng.gen_range(0..8))),
                K::al => Some(Register::AL),
                K::cl => Some(Register::CL),
                K::ax => Some(Register::AX),
                K::eax => Some(Register::EAX),
                K::rax => Some(Register::RAX),
                K::mem | K::mem_offs => {
                    mem_at = Some(i);
                    None
                }
                _ => {
                    ops[i] = Some(Op::I(self.imm(*k, rng)));
                    continue;
                }
            };
            if let Some(r) = r {
                chosen.push(r);
                ops[i] = Some(Op::R(r));
            }
        }
        let mut pre = Vec::new();
        if let Some(i) = mem_at {
            let m = if f.kinds[i] == K::mem_offs {
                let t = self.offset(f.mem_size, 1, 0, DATA_SIZE, rng);
                let wide = self.bitness == 64 && rng.gen_bool(0.7);
                MemoryOperand::with_displ(DATA_ADDR + t, if wide { 8 } else { 4 })
            } else if f.code.mnemonic() == Mnemonic::Lea {
                self.lea_mem(rng)
            } else {
                let align = self.mem_align(f, rng);
                self.mem(f.mem_size, align, &chosen, &mut pre, rng)
            };
            ops[i] = Some(Op::M(m));
        }
        Some(Filled {
            ops: ops.into_iter().collect::<Option<Vec<Op>>>()?,
            pre,
        })
    }

    /// Alignment a memory operand needs to avoid #GP (mostly respected).
    fn mem_align(&self, f: &Form, rng: &mut StdRng) -> usize {
        use Mnemonic as M;
        if rng.gen_bool(0.03) {
            return 1;
        }
        let m = f.code.mnemonic();
        if f.mem_size == 16 && !matches!(m, M::Movups | M::Movupd | M::Movdqu) {
            16
        } else {
            1
        }
    }

    /// A random LEA address (any registers: LEA does not access memory).
    fn lea_mem(&self, rng: &mut StdRng) -> MemoryOperand {
        let b64 = self.bitness == 64;
        let a32 = !b64 || rng.gen_bool(0.25);
        let n = if b64 { 16 } else { 8 };
        let first = if a32 { Register::EAX } else { Register::RAX };
        let base = if rng.gen_bool(0.85) {
            reg_from(first, rng.gen_range(0..n))
        } else {
            Register::None
        };
        let index = if rng.gen_bool(0.6) {
            let mut i = rng.gen_range(0..n);
            if i == 4 {
                i = 0;
            }
            reg_from(first, i)
        } else {
            Register::None
        };
        let scale = [1u32, 2, 4, 8][rng.gen_range(0..4)];
        let disp = match rng.gen_range(0..4) {
            0 => 0,
            1 => rng.gen_range(-128..128),
            _ => rng.gen::<i32>() as i64,
        };
        if b64 && rng.gen_bool(0.1) {
            return MemoryOperand::with_base_displ(
                Register::RIP,
                CODE_ADDR as i64 + rng.gen_range(-0x1000..0x1000),
            );
        }
        if !b64 && rng.gen_bool(0.15) {
            // 16-bit addressing: [BX|BP] + [SI|DI] + disp.
            use Register as R;
            let (b, i) = [
                (R::BX, R::SI),
                (R::BX, R::DI),
                (R::BP, R::SI),
                (R::BP, R::DI),
                (R::None, R::SI),
                (R::None, R::DI),
                (R::BP, R::None),
                (R::BX, R::None),
            ][rng.gen_range(0..8)];
            let disp = rng.gen_range(-0x8000i64..0x8000);
            return MemoryOperand::new(b, i, 1, disp, 2, false, R::None);
        }
        if base == Register::None && index == Register::None {
            return MemoryOperand::with_displ(disp as u32 as u64, 4);
        }
        let ds = if base == Register::None { 4 } else { 1 };
        MemoryOperand::new(
            base,
            index,
            if index == Register::None { 1 } else { scale },
            disp,
            ds,
            false,
            Register::None,
        )
    }

    /// Builds one instruction of form `f` with its setup instructions.
    fn group(&self, f: &Form, rng: &mut StdRng) -> Option<Vec<Instruction>> {
        use Mnemonic as M;
        let filled = self.fill(f, rng)?;
        let mut ops = filled.ops;
        let mut pre = filled.pre;
        let m = f.code.mnemonic();
        let size = |ops: &[Op]| -> usize {
            match ops.first() {
                Some(Op::R(r)) => r.size(),
                _ => f.mem_size,
            }
        };
        match m {
            M::Shl
            | M::Sal
            | M::Shr
            | M::Sar
            | M::Rol
            | M::Ror
            | M::Rcl
            | M::Rcr
            | M::Shld
            | M::Shrd => {
                let bits = size(&ops) * 8;
                let dbl16 = matches!(m, M::Shld | M::Shrd) && bits == 16;
                let count = |rng: &mut StdRng| -> u64 {
                    let c = match rng.gen_range(0..6) {
                        0 => 0,
                        1 => 1,
                        2 => bits as u64 - 1 + rng.gen_range(0..3),
                        _ => rng.gen_range(0..71),
                    };
                    if dbl16 && (c & 31) > 16 {
                        c & !31 | (c & 15)
                    } else {
                        c
                    }
                };
                let last = ops.len() - 1;
                match ops[last] {
                    Op::R(Register::CL) => pre.push(mov_imm(Register::CL, count(rng))),
                    Op::I(_) if f.kinds[last] == K::imm8 => {
                        ops[last] = Op::I(count(rng) as i64 & 0xff)
                    }
                    _ => {}
                }
            }
            M::Div | M::Idiv if rng.gen_bool(0.95) => {
                let s = size(&ops);
                if let Op::R(r) = ops[0] {
                    if matches!(r.full_register(), Register::RAX | Register::RDX) {
                        return None;
                    }
                }
                let setup = match (m, s) {
                    (M::Div, 1) => Instruction::with2(Code::Mov_r8_imm8, Register::AH, 0u32),
                    (M::Idiv, 1) => Ok(Instruction::with(Code::Cbw)),
                    (M::Div, _) => {
                        let r = gpr(s, 2);
                        let code = match s {
                            2 => Code::Xor_r16_rm16,
                            4 => Code::Xor_r32_rm32,
                            _ => Code::Xor_r64_rm64,
                        };
                        Instruction::with2(code, r, r)
                    }
                    (_, 2) => Ok(Instruction::with(Code::Cwd)),
                    (_, 4) => Ok(Instruction::with(Code::Cdq)),
                    _ => Ok(Instruction::with(Code::Cqo)),
                };
                pre.push(setup.ok()?);
            }
            M::Bsf | M::Bsr if rng.gen_bool(0.8) => {
                let s = size(&ops);
                let k = rng.gen_range(0..(s * 8).min(31));
                let code = match s {
                    2 => Code::Or_rm16_imm16,
                    4 => Code::Or_rm32_imm32,
                    _ => Code::Or_rm64_imm32,
                };
                let or = match ops[1] {
                    Op::R(r) => Instruction::with2(code, r, (1u32 << k) as i32),
                    Op::M(mm) => Instruction::with2(code, mm, (1u32 << k) as i32),
                    Op::I(_) => return None,
                };
                pre.push(or.ok()?);
            }
            M::Bt | M::Bts | M::Btr | M::Btc => {
                if let (Op::M(_), Op::R(r)) = (ops[0], ops[1]) {
                    // Register bit offsets address bytes outside the operand:
                    // keep them small and the operand away from the edges.
                    let mut p2 = Vec::new();
                    let avoid = [r];
                    ops[0] = Op::M(self.mem_in(
                        f.mem_size,
                        1,
                        128,
                        DATA_SIZE - 128,
                        &avoid,
                        &mut p2,
                        rng,
                    ));
                    pre = p2;
                    let v = rng.gen_range(-256i64..512) as u64;
                    pre.push(mov_imm(r, v));
                }
            }
            M::Cmpxchg16b => {
                if let Op::M(_) = ops[0] {
                    let mut p2 = Vec::new();
                    let align = if rng.gen_bool(0.95) { 16 } else { 8 };
                    ops[0] = Op::M(self.mem(16, align, &[], &mut p2, rng));
                    pre = p2;
                }
            }
            M::Push if rng.gen_bool(0.15) => {
                if let Op::R(r) = ops[0] {
                    ops[0] = Op::R(reg_from(
                        match r.size() {
                            2 => Register::AX,
                            4 => Register::EAX,
                            _ => Register::RAX,
                        },
                        4,
                    ));
                }
            }
            M::Aam | M::Aad => {
                let v = match rng.gen_range(0..8) {
                    0 => 0,
                    1..=4 => 10,
                    _ => rng.gen_range(1..256),
                };
                ops[0] = Op::I(v);
            }
            M::Cmpps | M::Cmpss | M::Cmppd | M::Cmpsd => {
                if let Some(Op::I(_)) = ops.last() {
                    let l = ops.len() - 1;
                    ops[l] = Op::I(rng.gen_range(0..8));
                }
            }
            M::Fldcw | M::Ldmxcsr if m == M::Fldcw || rng.gen_bool(0.85) => {
                // Load a sensible control value from the operand location
                // (for FLDCW sometimes with the reserved bits 6 and 13–15
                // flipped: they read back fixed).
                if let Op::M(mm) = ops[0] {
                    let (code, v) = if m == M::Fldcw {
                        let mut cw = random_fcw(rng);
                        if rng.gen_bool(0.2) {
                            cw ^= rng.gen::<u16>() & 0xe040;
                        }
                        (Code::Mov_rm16_imm16, cw as u32)
                    } else {
                        (Code::Mov_rm32_imm32, random_mxcsr(rng))
                    };
                    pre.push(Instruction::with2(code, mm, v).ok()?);
                }
            }
            _ => {}
        }
        let lock = matches!(ops.first(), Some(Op::M(_)))
            && f.code.op_code().can_use_lock_prefix()
            && rng.gen_bool(if self.category == Category::Atomic {
                0.4
            } else {
                0.1
            });
        let implicit_lock = m == M::Xchg && ops.iter().any(|o| matches!(o, Op::M(_)));
        if lock || implicit_lock {
            // Locked accesses stay within a cache line (no split locks).
            for o in ops.iter_mut() {
                if let Op::M(mm) = o {
                    let a = f.mem_size.next_power_of_two() as i64;
                    let abs = if mm.base == Register::RIP || mm.base == Register::None {
                        0
                    } else {
                        DATA_ADDR as i64
                    };
                    let misalign = (abs + mm.displacement).rem_euclid(a);
                    mm.displacement -= misalign;
                    if mm.index != Register::None {
                        // The index times its scale is a multiple of the
                        // scale only: drop the index to keep the address exact.
                        return None;
                    }
                }
            }
        }
        let mut ins = build(f.code, &ops)?;
        if lock {
            ins.set_has_lock_prefix(true);
        } else {
            // Prefixes that do not change a one-byte-map instruction: REP/REPNE.
            let oc = f.code.op_code();
            if oc.table() == iced_x86::OpCodeTableKind::Normal
                && oc.mandatory_prefix() == iced_x86::MandatoryPrefix::None
                && !matches!(m, M::Nop | M::Xchg)
                && rng.gen_bool(0.03)
            {
                if rng.gen_bool(0.5) {
                    ins.set_has_repe_prefix(true);
                } else {
                    ins.set_has_repne_prefix(true);
                }
            }
        }
        pre.push(ins);
        Some(pre)
    }

    /// A store into the code that changes the immediate of the next
    /// instruction (`XOR AL, imm8`); its target is fixed up once the
    /// sequence is laid out.
    fn smc_group(&self, rng: &mut StdRng) -> Option<Vec<Instruction>> {
        let m = if self.bitness == 64 {
            MemoryOperand::with_base_displ(Register::RIP, CODE_ADDR as i64)
        } else {
            MemoryOperand::with_displ(CODE_ADDR, 4)
        };
        let store = Instruction::with2(Code::Mov_rm8_imm8, m, rng.gen_range(0..256u32)).ok()?;
        let xor =
            Instruction::with2(Code::Xor_AL_imm8, Register::AL, rng.gen_range(0..256u32)).ok()?;
        Some(vec![store, xor])
    }

    /// A forward control transfer, with its setup; returns the group and
    /// (groups to skip, whether the target is the immediate of the
    /// instruction before the last one rather than the last one's branch
    /// target).
    fn branch_group(&self, rng: &mut StdRng) -> Option<(Vec<Instruction>, (usize, bool))> {
        let b64 = self.bitness == 64;
        let skip = rng.gen_range(0..4);
        let placeholder = CODE_ADDR;
        let kind = rng.gen_range(0..10);
        match kind {
            0..=5 => {
                // Relative: Jcc, JMP, JCXZ family, LOOP family, CALL.
                let short_ok = skip <= 1;
                let cands: Vec<&(Code, bool)> = self
                    .branches
                    .iter()
                    .filter(|(_, short)| short_ok || !short)
                    .collect();
                let &(code, _) = cands[rng.gen_range(0..cands.len())];
                let mut v = Vec::new();
                if matches!(
                    code.mnemonic(),
                    Mnemonic::Loop
                        | Mnemonic::Loope
                        | Mnemonic::Loopne
                        | Mnemonic::Jcxz
                        | Mnemonic::Jecxz
                        | Mnemonic::Jrcxz
                ) && rng.gen_bool(0.7)
                {
                    v.push(mov_imm(Register::ECX, rng.gen_range(0..3)));
                }
                v.push(Instruction::with_branch(code, placeholder).ok()?);
                Some((v, (skip, false)))
            }
            6 | 7 => {
                // RET (imm16) to a pushed address.
                let (push, ret, ret_imm) = if b64 {
                    (Code::Pushq_imm32, Code::Retnq, Code::Retnq_imm16)
                } else {
                    (Code::Pushd_imm32, Code::Retnd, Code::Retnd_imm16)
                };
                let p = Instruction::with1(push, placeholder as u32).ok()?;
                let r = if rng.gen_bool(0.3) {
                    Instruction::with1(ret_imm, rng.gen_range(0..5u32) * 4).ok()?
                } else {
                    Instruction::with(ret)
                };
                Some((vec![p, r], (skip, true)))
            }
            _ => {
                // Indirect JMP/CALL through a register or memory.
                let call = rng.gen_bool(0.4);
                let (jr, size) = match (b64, call) {
                    (true, false) => (Code::Jmp_rm64, 8),
                    (true, true) => (Code::Call_rm64, 8),
                    (false, false) => (Code::Jmp_rm32, 4),
                    (false, true) => (Code::Call_rm32, 4),
                };
                if rng.gen_bool(0.5) {
                    let r = self.pick_reg(4, rng);
                    let full = reg_from(
                        if b64 { Register::RAX } else { Register::EAX },
                        r.full_register() as usize - Register::RAX as usize,
                    );
                    let m = Instruction::with2(Code::Mov_r32_imm32, r, placeholder as u32).ok()?;
                    Some((vec![m, Instruction::with1(jr, full).ok()?], (skip, true)))
                } else {
                    let mut pre = Vec::new();
                    let mm = self.mem(size, 1, &[], &mut pre, rng);
                    let mov = if b64 {
                        Code::Mov_rm64_imm32
                    } else {
                        Code::Mov_rm32_imm32
                    };
                    pre.push(Instruction::with2(mov, mm, placeholder as i32).ok()?);
                    pre.push(Instruction::with1(jr, mm).ok()?);
                    Some((pre, (skip, true)))
                }
            }
        }
    }

    /// A string instruction with its pointer and counter setup.
    fn string_group(&self, rng: &mut StdRng) -> Option<Vec<Instruction>> {
        let b64 = self.bitness == 64;
        let asize = if b64 && rng.gen_bool(0.75) { 64 } else { 32 };
        let kind = rng.gen_range(0..5);
        let width = [1usize, 2, 4, 8][rng.gen_range(0..if b64 { 4 } else { 3 })];
        let rep = rng.gen_range(0..3);
        let rep_kind = match (kind, rep) {
            (_, 0) => RepPrefixKind::None,
            (3 | 4, 1) => RepPrefixKind::Repne,
            _ => RepPrefixKind::Repe,
        };
        let seg = Register::None;
        let ins = match (kind, width) {
            (0, 1) => Instruction::with_movsb(asize, seg, rep_kind),
            (0, 2) => Instruction::with_movsw(asize, seg, rep_kind),
            (0, 4) => Instruction::with_movsd(asize, seg, rep_kind),
            (0, _) => Instruction::with_movsq(asize, seg, rep_kind),
            (1, 1) => Instruction::with_stosb(asize, rep_kind),
            (1, 2) => Instruction::with_stosw(asize, rep_kind),
            (1, 4) => Instruction::with_stosd(asize, rep_kind),
            (1, _) => Instruction::with_stosq(asize, rep_kind),
            (2, 1) => Instruction::with_lodsb(asize, seg, rep_kind),
            (2, 2) => Instruction::with_lodsw(asize, seg, rep_kind),
            (2, 4) => Instruction::with_lodsd(asize, seg, rep_kind),
            (2, _) => Instruction::with_lodsq(asize, seg, rep_kind),
            (3, 1) => Instruction::with_cmpsb(asize, seg, rep_kind),
            (3, 2) => Instruction::with_cmpsw(asize, seg, rep_kind),
            (3, 4) => Instruction::with_cmpsd(asize, seg, rep_kind),
            (3, _) => Instruction::with_cmpsq(asize, seg, rep_kind),
            (_, 1) => Instruction::with_scasb(asize, rep_kind),
            (_, 2) => Instruction::with_scasw(asize, rep_kind),
            (_, 4) => Instruction::with_scasd(asize, rep_kind),
            (_, _) => Instruction::with_scasq(asize, rep_kind),
        }
        .ok()?;
        let mut v = Vec::new();
        match rng.gen_range(0..4) {
            0 => v.push(Instruction::with(Code::Std)),
            1 => v.push(Instruction::with(Code::Cld)),
            _ => {}
        }
        let (rsi, rdi, base) = if b64 {
            (Register::RSI, Register::RDI, Register::R15)
        } else {
            (Register::ESI, Register::EDI, Register::EBP)
        };
        let lea = if b64 {
            Code::Lea_r64_m
        } else {
            Code::Lea_r32_m
        };
        for r in [rsi, rdi] {
            let off = rng.gen_range(0x200..0xe00i64)
                & if rng.gen_bool(0.7) {
                    !(width as i64 - 1)
                } else {
                    !0
                };
            v.push(
                Instruction::with2(
                    lea,
                    r,
                    MemoryOperand::new(base, Register::None, 1, off, 1, false, Register::None),
                )
                .ok()?,
            );
        }
        let count = match rng.gen_range(0..4) {
            0 => 0,
            1 => 1,
            _ => rng.gen_range(2..17),
        };
        v.push(mov_imm(Register::ECX, count));
        v.push(ins);
        Some(v)
    }
}
