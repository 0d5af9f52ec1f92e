//! Static analysis of a sequence: which parts of the final state the
//! architecture leaves undefined, and whether the sequence is valid for
//! differential testing (it never reads an undefined value, never writes the
//! stack pointer except through the stack, never writes the base register).
//!
//! Flag effects come from iced (`rflags_read/modified/undefined`, which also
//! covers the x87 condition codes C0–C3), refined where the SDM makes them
//! depend on a value iced does not know: shift and rotate counts (SDM vol. 2
//! SAL/SAR/SHL/SHR, RCL/RCR/ROL/ROR, SHLD, SHRD: flags unaffected for a zero
//! count, OF defined only for a count of 1, CF undefined for SHL/SHR counts
//! ≥ the operand size, SHLD/SHRD results undefined for counts > the operand
//! size) and REP-prefixed CMPS/SCAS with a zero count (flags unaffected). The
//! count is known when the instruction just before is `MOV CL/ECX/RCX, imm`.
//! BSF/BSR leave their destination undefined for a zero source unless the
//! instruction just before ORs a non-zero immediate into that source.

use super::{base_reg, Coverage};
use iced_x86::{
    Code, CpuidFeature, FlowControl, Instruction, InstructionInfoFactory, Mnemonic, OpAccess,
    OpKind, Register, RflagsBits,
};

/// Undefined parts of the state after a prefix of the sequence.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Masks {
    /// Undefined bits of each GPR.
    pub gpr: [u64; 16],
    /// Undefined flags and x87 condition codes, as iced `RflagsBits`.
    pub flags: u32,
}

impl Masks {
    /// Undefined architectural RFLAGS bits.
    pub fn rflags(&self) -> u64 {
        iced_to_rflags(self.flags)
    }

    /// Undefined x87 status-word bits (C0–C3).
    pub fn x87_sw(&self) -> u16 {
        let f = self.flags;
        let mut m = 0;
        if f & RflagsBits::C0 != 0 {
            m |= 1 << 8;
        }
        if f & RflagsBits::C1 != 0 {
            m |= 1 << 9;
        }
        if f & RflagsBits::C2 != 0 {
            m |= 1 << 10;
        }
        if f & RflagsBits::C3 != 0 {
            m |= 1 << 14;
        }
        m
    }
}

/// Result of analysing a sequence.
#[derive(Debug, Clone, Default)]
pub struct Analysis {
    /// `masks[k]`: undefined state after the first `k` instructions.
    pub masks: Vec<Masks>,
    /// Which extended state the comparison covers.
    pub coverage: Coverage,
}

impl Analysis {
    /// The masks at the end of the sequence.
    pub fn end(&self) -> Masks {
        self.masks.last().copied().unwrap_or_default()
    }
}

/// Converts iced `RflagsBits` to architectural RFLAGS bits.
pub fn iced_to_rflags(f: u32) -> u64 {
    let map = [
        (RflagsBits::OF, 1u64 << 11),
        (RflagsBits::SF, 1 << 7),
        (RflagsBits::ZF, 1 << 6),
        (RflagsBits::AF, 1 << 4),
        (RflagsBits::CF, 1),
        (RflagsBits::PF, 1 << 2),
        (RflagsBits::DF, 1 << 10),
    ];
    map.iter()
        .filter(|(i, _)| f & i != 0)
        .fold(0, |a, (_, r)| a | r)
}

const ARITH: u32 = RflagsBits::OF
    | RflagsBits::SF
    | RflagsBits::ZF
    | RflagsBits::AF
    | RflagsBits::CF
    | RflagsBits::PF;
const C_BITS: u32 = RflagsBits::C0 | RflagsBits::C1 | RflagsBits::C2 | RflagsBits::C3;

/// Bits of its full register that `r` covers.
pub fn reg_bits(r: Register) -> u64 {
    if (Register::AH..=Register::BH).contains(&r) {
        return 0xff00;
    }
    match r.size() {
        1 => 0xff,
        2 => 0xffff,
        4 => 0xffff_ffff,
        _ => u64::MAX,
    }
}

/// Index (RAX = 0 … R15 = 15) of a GPR.
pub fn gpr_index(r: Register) -> Option<usize> {
    if !r.is_gpr() {
        return None;
    }
    let f = r.full_register();
    Some(f as usize - Register::RAX as usize)
}

/// Operand size in bytes of operand 0.
fn op0_size(ins: &Instruction) -> u32 {
    match ins.op0_kind() {
        OpKind::Register => ins.op0_register().size() as u32,
        _ => ins.memory_size().size() as u32,
    }
}

/// The immediate that `prev` (`MOV reg, imm`) puts into the low `need` bits
/// of register `full`, if it does.
fn known_value(prev: Option<&Instruction>, full: Register, need: u64) -> Option<u64> {
    let p = prev?;
    if p.mnemonic() != Mnemonic::Mov || p.op0_kind() != OpKind::Register {
        return None;
    }
    let r = p.op0_register();
    if !r.is_gpr() || r.full_register() != full || reg_bits(r) & need != need {
        return None;
    }
    match p.op1_kind() {
        OpKind::Immediate8
        | OpKind::Immediate16
        | OpKind::Immediate32
        | OpKind::Immediate64
        | OpKind::Immediate32to64 => Some(p.immediate(1) & reg_bits(r) & need),
        _ => None,
    }
}

/// Flag effect of one instruction.
struct Effect {
    read: u32,
    /// Flags that end up holding a defined value.
    defined: u32,
    /// Flags that end up undefined.
    undefined: u32,
    /// The destination register ends up undefined.
    dest_undefined: bool,
}

fn iced_effect(ins: &Instruction) -> Effect {
    let undef = ins.rflags_undefined();
    Effect {
        read: ins.rflags_read(),
        defined: ins.rflags_modified() & !undef,
        undefined: undef,
        dest_undefined: false,
    }
}

fn shift_effect(ins: &Instruction, prev: Option<&Instruction>) -> Option<Effect> {
    use Mnemonic as M;
    let m = ins.mnemonic();
    if !matches!(
        m,
        M::Shl | M::Sal | M::Shr | M::Sar | M::Rol | M::Ror | M::Rcl | M::Rcr | M::Shld | M::Shrd
    ) {
        return None;
    }
    let bits = op0_size(ins) * 8;
    let cmask = if bits == 64 { 63 } else { 31 };
    let last = ins.op_count() - 1;
    let count = match ins.op_kind(last) {
        OpKind::Immediate8 => Some(ins.immediate8() as u64),
        OpKind::Register if ins.op_register(last) == Register::CL => {
            known_value(prev, Register::RCX, 0xff)
        }
        _ => None,
    };
    let read = ins.rflags_read();
    let (of, cf, af) = (RflagsBits::OF, RflagsBits::CF, RflagsBits::AF);
    let szp = RflagsBits::SF | RflagsBits::ZF | RflagsBits::PF;
    let rot = matches!(m, M::Rol | M::Ror | M::Rcl | M::Rcr);
    let dbl = matches!(m, M::Shld | M::Shrd);
    let e = |defined, undefined, dest_undefined| Effect {
        read,
        defined,
        undefined,
        dest_undefined,
    };
    Some(match count.map(|c| (c & cmask) as u32) {
        Some(0) => e(0, 0, false),
        Some(c) => {
            let of_def = if c == 1 { of } else { 0 };
            let of_undef = of & !of_def;
            if rot {
                e(cf | of_def, of_undef, false)
            } else if dbl {
                if c > bits {
                    e(0, ARITH, true)
                } else {
                    e(cf | szp | of_def, af | of_undef, false)
                }
            } else {
                let cf_undef = if m != M::Sar && c >= bits { cf } else { 0 };
                e(
                    szp | (cf & !cf_undef) | of_def,
                    af | of_undef | cf_undef,
                    false,
                )
            }
        }
        None => {
            if rot {
                e(0, of, false)
            } else if dbl {
                if bits == 16 {
                    e(0, ARITH, true)
                } else {
                    e(0, af | of, false)
                }
            } else {
                let cf_undef = if m != M::Sar && bits < 32 { cf } else { 0 };
                e(0, af | of | cf_undef, false)
            }
        }
    })
}

fn is_rep_compare(ins: &Instruction) -> bool {
    use Mnemonic as M;
    (ins.has_repe_prefix() || ins.has_repne_prefix())
        && matches!(
            ins.mnemonic(),
            M::Cmpsb | M::Cmpsw | M::Cmpsd | M::Cmpsq | M::Scasb | M::Scasw | M::Scasd | M::Scasq
        )
}

/// The counter's value for a REP instruction, when the previous instruction
/// set it.
fn rep_count(ins: &Instruction, prev: Option<&Instruction>, bitness: u32) -> Option<u64> {
    let mut asize = 4;
    for i in 0..ins.op_count() {
        match ins.op_kind(i) {
            OpKind::MemorySegRSI | OpKind::MemorySegRDI | OpKind::MemoryESRDI => asize = 8,
            OpKind::MemorySegSI | OpKind::MemorySegDI | OpKind::MemoryESDI => asize = 2,
            _ => {}
        }
    }
    let need = if asize == 8 {
        u64::MAX
    } else if asize == 2 {
        0xffff
    } else {
        0xffff_ffff
    };
    let p = prev?;
    // A 32-bit MOV zero-extends into RCX in 64-bit mode.
    if bitness == 64
        && asize == 8
        && p.op0_kind() == OpKind::Register
        && p.op0_register() == Register::ECX
    {
        return known_value(prev, Register::RCX, 0xffff_ffff);
    }
    known_value(prev, Register::RCX, need)
}

/// True when `prev` ORs a non-zero immediate into the source operand of the
/// BSF/BSR `ins` (so that the source is non-zero).
fn source_made_nonzero(ins: &Instruction, prev: Option<&Instruction>) -> bool {
    let Some(p) = prev else { return false };
    if p.mnemonic() != Mnemonic::Or || p.op_count() != 2 {
        return false;
    }
    let imm_nonzero = matches!(
        p.op1_kind(),
        OpKind::Immediate8
            | OpKind::Immediate8to16
            | OpKind::Immediate8to32
            | OpKind::Immediate8to64
            | OpKind::Immediate16
            | OpKind::Immediate32
            | OpKind::Immediate32to64
    ) && p.immediate(1) != 0;
    if !imm_nonzero {
        return false;
    }
    match (ins.op1_kind(), p.op0_kind()) {
        (OpKind::Register, OpKind::Register) => {
            let (a, b) = (ins.op1_register(), p.op0_register());
            // The OR must cover the bits the BSF reads... any overlap of a
            // non-zero value within the read width is enough when the OR is
            // at least as wide from bit 0.
            a.full_register() == b.full_register()
                && reg_bits(b) & 0xff != 0
                && reg_bits(b) <= reg_bits(a)
        }
        (OpKind::Memory, OpKind::Memory) => {
            ins.memory_base() == p.memory_base()
                && ins.memory_index() == p.memory_index()
                && ins.memory_index_scale() == p.memory_index_scale()
                && ins.memory_displacement64() == p.memory_displacement64()
                && p.memory_size().size() <= ins.memory_size().size()
        }
        _ => false,
    }
}

fn is_x87(ins: &Instruction) -> bool {
    ins.cpuid_features().iter().any(|f| {
        matches!(
            f,
            CpuidFeature::FPU | CpuidFeature::FPU287 | CpuidFeature::FPU387
        )
    })
}

fn is_sse(ins: &Instruction, info: &iced_x86::InstructionInfo) -> bool {
    ins.cpuid_features()
        .iter()
        .any(|f| matches!(f, CpuidFeature::SSE | CpuidFeature::SSE2))
        || info.used_registers().iter().any(|u| u.register().is_xmm())
}

/// Incremental analysis: feed instructions in order.
#[derive(Debug, Clone)]
pub struct Analyzer {
    bitness: u32,
    m: Masks,
    k: usize,
    coverage: Coverage,
}

impl Analyzer {
    /// An analyzer at the start of a sequence.
    pub fn new(bitness: u32) -> Analyzer {
        Analyzer {
            bitness,
            m: Masks::default(),
            k: 0,
            coverage: Coverage::default(),
        }
    }

    /// The masks after the instructions pushed so far.
    pub fn masks(&self) -> Masks {
        self.m
    }

    /// Adds `ins` (preceded by `prev`); fails, leaving the state unchanged,
    /// when the sequence would read an undefined value or break a rule.
    pub fn push(&mut self, ins: &Instruction, prev: Option<&Instruction>) -> Result<(), String> {
        let mut fac = InstructionInfoFactory::new();
        let k = self.k;
        let bitness = self.bitness;
        let base = base_reg(bitness);
        let mut m = self.m;
        if ins.code() == Code::INVALID {
            // Raises #UD on both sides; nothing after it runs.
            self.k += 1;
            return Ok(());
        }
        let info = fac.info(ins);
        let x87 = is_x87(ins);
        let sse = is_sse(ins, info);
        let mut eff = shift_effect(ins, prev).unwrap_or_else(|| iced_effect(ins));
        if is_rep_compare(ins) {
            match rep_count(ins, prev, bitness) {
                Some(0) => {
                    eff.defined = 0;
                    eff.undefined = 0;
                }
                Some(_) => {}
                None => eff.defined = 0,
            }
        }
        // Undefined flags read: only FNSTSW/FSTSW AX may (they copy the
        // undefined condition codes into AX).
        let bad_read = eff.read & m.flags;
        let sw_to_ax = matches!(ins.code(), Code::Fnstsw_AX | Code::Fstsw_AX);
        if bad_read != 0 && !sw_to_ax {
            return Err(format!(
                "instruction {k} reads undefined flags {bad_read:#x}"
            ));
        }
        // Registers.
        let mut writes: Vec<(usize, u64, bool)> = Vec::new();
        for u in info.used_registers() {
            let r = u.register();
            let Some(idx) = gpr_index(r) else { continue };
            let bits = reg_bits(r);
            let acc = u.access();
            let reads = matches!(
                acc,
                OpAccess::Read | OpAccess::ReadWrite | OpAccess::CondRead | OpAccess::ReadCondWrite
            );
            let w = matches!(
                acc,
                OpAccess::Write
                    | OpAccess::ReadWrite
                    | OpAccess::CondWrite
                    | OpAccess::ReadCondWrite
            );
            if reads && m.gpr[idx] & bits != 0 && !sw_to_ax {
                return Err(format!("instruction {k} reads undefined bits of {r:?}"));
            }
            if w {
                if idx == base {
                    return Err(format!("instruction {k} writes the base register"));
                }
                if idx == 4 && ins.stack_pointer_increment() == 0 {
                    return Err(format!("instruction {k} writes the stack pointer"));
                }
                let full = if bitness == 64 && r.size() == 4 {
                    u64::MAX
                } else {
                    bits
                };
                let unconditional = matches!(acc, OpAccess::Write | OpAccess::ReadWrite);
                writes.push((idx, full, unconditional));
            }
        }
        for (idx, bits, unconditional) in writes {
            if unconditional {
                m.gpr[idx] &= !bits;
            }
        }
        if sw_to_ax {
            // AX = status word: C0 → bit 8, C1 → 9, C2 → 10, C3 → 14.
            let sw_undef = m.x87_sw() as u64;
            m.gpr[0] = (m.gpr[0] & !0xffff) | sw_undef;
        }
        // Destinations iced cannot know to be undefined.
        let dest_undef = eff.dest_undefined
            || (matches!(ins.mnemonic(), Mnemonic::Bsf | Mnemonic::Bsr)
                && !source_made_nonzero(ins, prev));
        if dest_undef {
            if ins.op0_kind() == OpKind::Register {
                let r = ins.op0_register();
                if let Some(idx) = gpr_index(r) {
                    let bits = if bitness == 64 && r.size() == 4 {
                        u64::MAX
                    } else {
                        reg_bits(r)
                    };
                    m.gpr[idx] |= bits;
                }
            } else {
                return Err(format!("instruction {k} leaves memory undefined"));
            }
        }
        m.flags = (m.flags & !eff.defined) | eff.undefined;
        m.flags &= ARITH | C_BITS;
        self.m = m;
        self.k += 1;
        self.coverage.x87 |= x87;
        self.coverage.sse |= sse;
        Ok(())
    }
}

/// Where a register-, memory- or stack-indirect transfer goes, when the
/// instruction just before provides the target (`MOV reg, imm` before
/// `JMP/CALL reg`, `MOV [m], imm` before `JMP/CALL [m]`, `PUSH imm` before
/// `RET`).
fn indirect_target(ins: &Instruction, prev: Option<&Instruction>) -> Option<u64> {
    let p = prev?;
    let imm = |p: &Instruction| match p.op_kind(p.op_count().checked_sub(1)?) {
        OpKind::Immediate32
        | OpKind::Immediate32to64
        | OpKind::Immediate8to32
        | OpKind::Immediate8to64 => Some(p.immediate(p.op_count() - 1)),
        _ => None,
    };
    match ins.flow_control() {
        FlowControl::Return => (p.mnemonic() == Mnemonic::Push).then(|| imm(p)).flatten(),
        FlowControl::IndirectBranch | FlowControl::IndirectCall => {
            if p.mnemonic() != Mnemonic::Mov {
                return None;
            }
            match (ins.op0_kind(), p.op0_kind()) {
                (OpKind::Register, OpKind::Register)
                    if ins.op0_register().full_register() == p.op0_register().full_register() =>
                {
                    imm(p)
                }
                (OpKind::Memory, OpKind::Memory)
                    if ins.memory_base() == p.memory_base()
                        && ins.memory_index() == p.memory_index()
                        && ins.memory_index_scale() == p.memory_index_scale()
                        && ins.memory_displacement64() == p.memory_displacement64() =>
                {
                    imm(p)
                }
                _ => None,
            }
        }
        _ => None,
    }
}

fn merge(a: &mut Option<Masks>, m: &Masks) {
    let cur = a.get_or_insert_with(Masks::default);
    for (x, y) in cur.gpr.iter_mut().zip(m.gpr.iter()) {
        *x |= y;
    }
    cur.flags |= m.flags;
}

impl Analyzer {
    /// Merges the state of another path entering here (forward branch):
    /// what is undefined on either path is undefined.
    pub fn merge(&mut self, m: &Masks) {
        for (x, y) in self.m.gpr.iter_mut().zip(m.gpr.iter()) {
            *x |= y;
        }
        self.m.flags |= m.flags;
    }
}

/// Analyses `insns` (decoded or generated at their run-time addresses).
/// Returns why the sequence is invalid for differential testing, if it is.
///
/// Control flow: forward branches only. A branch target's state is the
/// merge of the paths entering it (and its "previous instruction" is
/// unknown). Indirect transfers whose target the previous instruction does
/// not give may enter anywhere later.
pub fn analyze(bitness: u32, insns: &[Instruction]) -> Result<Analysis, String> {
    let n = insns.len();
    let end = insns
        .last()
        .map(|i| i.next_ip())
        .unwrap_or(super::CODE_ADDR);
    let index_of = |ip: u64| -> Option<usize> {
        if ip == end {
            Some(n)
        } else {
            insns.iter().position(|i| i.ip() == ip)
        }
    };
    let mut incoming: Vec<Option<Masks>> = vec![None; n + 1];
    let mut anywhere: Option<Masks> = None;
    let mut a = Analyzer::new(bitness);
    let mut masks = vec![a.masks()];
    for (k, ins) in insns.iter().enumerate() {
        let mut entered = false;
        for m in [incoming[k], anywhere].into_iter().flatten() {
            a.merge(&m);
            entered = true;
        }
        let prev = if k > 0 && !entered {
            insns.get(k - 1)
        } else {
            None
        };
        a.push(ins, prev)?;
        let after = a.masks();
        let target = match ins.flow_control() {
            FlowControl::ConditionalBranch
            | FlowControl::UnconditionalBranch
            | FlowControl::Call => {
                if ins.op0_kind() == OpKind::FarBranch16 || ins.op0_kind() == OpKind::FarBranch32 {
                    return Err(format!("instruction {k} is a far branch"));
                }
                Some(ins.near_branch_target())
            }
            FlowControl::IndirectBranch | FlowControl::IndirectCall | FlowControl::Return => {
                let t = indirect_target(ins, prev);
                if t.is_none() {
                    merge(&mut anywhere, &after);
                }
                t
            }
            _ => None,
        };
        if let Some(t) = target {
            match index_of(t) {
                Some(ti) if ti > k => merge(&mut incoming[ti], &after),
                _ => {
                    return Err(format!(
                        "instruction {k} branches to {t:#x}, not forward to an instruction"
                    ))
                }
            }
        }
        masks.push(after);
    }
    let mut last = None;
    for m in [incoming[n], anywhere].into_iter().flatten() {
        merge(&mut last, &m);
    }
    if let Some(m) = last {
        a.merge(&m);
        if let Some(l) = masks.last_mut() {
            *l = a.masks();
        }
    }
    Ok(Analysis {
        masks,
        coverage: a.coverage,
    })
}
